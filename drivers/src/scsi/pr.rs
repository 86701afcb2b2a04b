//! SCSI-3 persistent reservations (SPC-4 §5.12): PERSISTENT RESERVE OUT
//! (§6.16, opcode 0x5F) with its 24-byte basic parameter list (§6.16.3),
//! and PERSISTENT RESERVE IN (§6.15, opcode 0x5E) READ KEYS (§6.15.2) and
//! READ RESERVATION (§6.15.3) with parsers for their data.
//!
//! A registration belongs to one I_T nexus: for iSCSI the initiator port
//! is the initiator name plus the ISID (`iqn...,i,0x<isid>`), so two
//! sessions with different ISIDs are two registrations even when they
//! carry the same key. A command refused because of a reservation ends
//! with status RESERVATION CONFLICT (0x18), which
//! [`check_status`](super::check_status) turns into
//! [`Error::ReservationConflict`].

use alloc::vec::Vec;

use super::cdb::{Command, DataDir};
use crate::error::{Error, Result};

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2, table 223).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOutAction {
    /// Registers (or, with service action key 0, unregisters) the I_T
    /// nexus; the RESERVATION KEY must be the nexus's current key (0 if
    /// unregistered).
    Register = 0x00,
    /// Creates a reservation of a type, held by the RESERVATION KEY.
    Reserve = 0x01,
    /// Releases the reservation the RESERVATION KEY holds.
    Release = 0x02,
    /// Removes every registration and the reservation.
    Clear = 0x03,
    /// Removes the registrations with the SERVICE ACTION RESERVATION KEY
    /// (taking over the reservation if that key held it).
    Preempt = 0x04,
    /// PREEMPT, and aborts the preempted nexuses' tasks.
    PreemptAndAbort = 0x05,
    /// Registers with the SERVICE ACTION RESERVATION KEY whatever the
    /// nexus had before.
    RegisterAndIgnoreExistingKey = 0x06,
}

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1, table 208).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrInAction {
    ReadKeys = 0x00,
    ReadReservation = 0x01,
}

/// A persistent reservation type (SPC-4 §6.16.2, table 225).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrType(pub u8);

impl PrType {
    /// Used where the command ignores the type (REGISTER, CLEAR).
    pub const NONE: PrType = PrType(0x0);
    pub const WRITE_EXCLUSIVE: PrType = PrType(0x1);
    pub const EXCLUSIVE_ACCESS: PrType = PrType(0x3);
    /// Write Exclusive – Registrants Only: every registered I_T nexus may
    /// write, every other one may only read.
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: PrType = PrType(0x5);
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: PrType = PrType(0x6);
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: PrType = PrType(0x7);
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: PrType = PrType(0x8);
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3,
/// table 226), without TransportIDs (SPEC_I_PT is always 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrOutParams {
    /// The key the sending I_T nexus is registered with (0 if none).
    pub reservation_key: u64,
    /// The new key (REGISTER*), or the key to preempt (PREEMPT*).
    pub service_action_key: u64,
    /// ALL_TG_PT: register on every target port.
    pub all_target_ports: bool,
    /// APTPL: keep registrations and reservation through power loss.
    pub aptpl: bool,
}

/// Length of the basic parameter list.
pub const PR_OUT_PARAM_LEN: usize = 24;

impl PrOutParams {
    /// The 24 bytes (big-endian keys; byte 20: SPEC_I_PT bit 3,
    /// ALL_TG_PT bit 2, APTPL bit 0).
    pub fn to_bytes(&self) -> [u8; PR_OUT_PARAM_LEN] {
        let mut b = [0u8; PR_OUT_PARAM_LEN];
        b[0..8].copy_from_slice(&self.reservation_key.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_action_key.to_be_bytes());
        b[20] = (u8::from(self.all_target_ports) << 2) | u8::from(self.aptpl);
        b
    }
}

impl Command {
    /// PERSISTENT RESERVE OUT (SPC-4 §6.16.1): CDB `[0x5F, action, scope
    /// 0 (LU) << 4 | type, 0, 0, PARAMETER LIST LENGTH (4 bytes), 0]`,
    /// data-out the 24-byte parameter list.
    pub fn persistent_reserve_out(action: PrOutAction, ty: PrType, p: &PrOutParams) -> Self {
        let mut c = [0u8; 16];
        c[0] = 0x5f;
        c[1] = action as u8;
        c[2] = ty.0 & 0x0f;
        c[5..9].copy_from_slice(&(PR_OUT_PARAM_LEN as u32).to_be_bytes());
        Command {
            cdb: c,
            dir: DataDir::Write(p.to_bytes().to_vec()),
        }
    }

    /// PERSISTENT RESERVE IN (SPC-4 §6.15.1): CDB `[0x5E, action, 0 x5,
    /// ALLOCATION LENGTH (2 bytes), 0]`.
    pub fn persistent_reserve_in(action: PrInAction, alloc_len: u16) -> Self {
        let mut c = [0u8; 16];
        c[0] = 0x5e;
        c[1] = action as u8;
        c[7..9].copy_from_slice(&alloc_len.to_be_bytes());
        Command {
            cdb: c,
            dir: DataDir::Read(alloc_len as u32),
        }
    }
}

/// PRGENERATION and ADDITIONAL LENGTH, the header of every PERSISTENT
/// RESERVE IN answer; `b` must hold the whole additional length.
fn pr_in_header<'a>(b: &'a [u8], what: &'static str) -> Result<(u32, &'a [u8])> {
    if b.len() < 8 {
        return Err(Error::MalformedResponse(what));
    }
    let generation = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let body = b
        .get(8..)
        .and_then(|rest| rest.get(..len))
        .ok_or(Error::MalformedResponse(
            "PERSISTENT RESERVE IN additional length beyond the data",
        ))?;
    Ok((generation, body))
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// READ KEYS parameter data (SPC-4 §6.15.2): every registered key, once
/// per registered I_T nexus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrKeys {
    /// PRGENERATION: bumped by the device on registration changes.
    pub generation: u32,
    pub keys: Vec<u64>,
}

impl PrKeys {
    /// Parses READ KEYS data. A list cut short by the allocation length
    /// or not a whole number of keys is an error (a key could be missing).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let (generation, body) = pr_in_header(b, "READ KEYS data shorter than 8 bytes")?;
        if !body.len().is_multiple_of(8) {
            return Err(Error::MalformedResponse(
                "READ KEYS list not a whole number of keys",
            ));
        }
        Ok(PrKeys {
            generation,
            keys: body.chunks_exact(8).map(be64).collect(),
        })
    }

    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }
}

/// The persistent reservation READ RESERVATION reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The holder's key.
    pub key: u64,
    /// SCOPE (0 = logical unit).
    pub scope: u8,
    pub ty: PrType,
}

/// READ RESERVATION parameter data (SPC-4 §6.15.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrReservation {
    pub generation: u32,
    /// `None` when the logical unit is not reserved.
    pub reservation: Option<Reservation>,
}

impl PrReservation {
    /// Parses READ RESERVATION data: additional length 0 (no
    /// reservation) or 16 (key, obsolete, scope/type at byte 21).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let (generation, body) = pr_in_header(b, "READ RESERVATION data shorter than 8 bytes")?;
        let reservation = match body.len() {
            0 => None,
            16 => Some(Reservation {
                key: be64(body),
                scope: body[13] >> 4,
                ty: PrType(body[13] & 0x0f),
            }),
            _ => {
                return Err(Error::MalformedResponse(
                    "READ RESERVATION additional length neither 0 nor 16",
                ))
            }
        };
        Ok(PrReservation {
            generation,
            reservation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn pr_out_cdb_and_parameter_list_have_the_spc4_layout() {
        let p = PrOutParams {
            reservation_key: 0x0102_0304_0506_0708,
            service_action_key: 0x4654_0000_0000_0002,
            all_target_ports: false,
            aptpl: false,
        };
        let c = Command::persistent_reserve_out(
            PrOutAction::PreemptAndAbort,
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            &p,
        );
        assert_eq!(c.cdb[..10], [0x5f, 0x05, 0x05, 0, 0, 0, 0, 0, 24, 0]);
        assert!(c.cdb[10..].iter().all(|&b| b == 0));
        #[rustfmt::skip]
        let want: [u8; 24] = [
            1, 2, 3, 4, 5, 6, 7, 8,                 // RESERVATION KEY
            0x46, 0x54, 0, 0, 0, 0, 0, 2,           // SERVICE ACTION RESERVATION KEY
            0, 0, 0, 0,                             // obsolete
            0,                                      // SPEC_I_PT ALL_TG_PT APTPL
            0, 0, 0,
        ];
        assert_eq!(c.dir, DataDir::Write(want.to_vec()));
        let flags = PrOutParams {
            all_target_ports: true,
            aptpl: true,
            ..PrOutParams::default()
        };
        assert_eq!(flags.to_bytes()[20], 0b101);
        for (a, sa) in [
            (PrOutAction::Register, 0),
            (PrOutAction::Reserve, 1),
            (PrOutAction::Release, 2),
            (PrOutAction::Clear, 3),
            (PrOutAction::Preempt, 4),
            (PrOutAction::RegisterAndIgnoreExistingKey, 6),
        ] {
            let c = Command::persistent_reserve_out(a, PrType::NONE, &PrOutParams::default());
            assert_eq!((c.cdb[0], c.cdb[1], c.cdb[2], c.cdb[8]), (0x5f, sa, 0, 24));
        }
    }

    #[test]
    fn pr_in_cdb_has_the_spc4_layout() {
        let c = Command::persistent_reserve_in(PrInAction::ReadKeys, 0x1234);
        assert_eq!(c.cdb[..10], [0x5e, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0]);
        assert_eq!(c.dir, DataDir::Read(0x1234));
        let c = Command::persistent_reserve_in(PrInAction::ReadReservation, 24);
        assert_eq!((c.cdb[1], c.cdb[8]), (1, 24));
    }

    fn keys_data(generation: u32, keys: &[u64]) -> Vec<u8> {
        let mut b = generation.to_be_bytes().to_vec();
        b.extend_from_slice(&(keys.len() as u32 * 8).to_be_bytes());
        for k in keys {
            b.extend_from_slice(&k.to_be_bytes());
        }
        b
    }

    #[test]
    fn read_keys_parses_and_rejects_bad_data() {
        let b = keys_data(7, &[0x4654_0000_0000_0001, 0x4654_0000_0000_0002]);
        let k = PrKeys::parse(&b).unwrap();
        assert_eq!(k.generation, 7);
        assert_eq!(k.keys, [0x4654_0000_0000_0001, 0x4654_0000_0000_0002]);
        assert!(k.contains(0x4654_0000_0000_0002) && !k.contains(3));
        // Trailing bytes past the additional length (allocation padding)
        // are ignored.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0; 40]);
        assert_eq!(PrKeys::parse(&padded).unwrap(), k);
        assert_eq!(PrKeys::parse(&keys_data(0, &[])).unwrap().keys, vec![]);
        // Cut short (the list is longer than what arrived), odd length,
        // short header: errors, never a panic.
        assert!(PrKeys::parse(&b[..b.len() - 1]).is_err());
        assert!(PrKeys::parse(&b[..7]).is_err());
        assert!(PrKeys::parse(&[]).is_err());
        let mut odd = b.clone();
        odd[7] = 12;
        assert!(PrKeys::parse(&odd).is_err());
        let mut huge = b.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(PrKeys::parse(&huge).is_err());
    }

    #[test]
    fn read_reservation_parses_and_rejects_bad_data() {
        let none = [0, 0, 0, 3, 0, 0, 0, 0];
        assert_eq!(
            PrReservation::parse(&none).unwrap(),
            PrReservation {
                generation: 3,
                reservation: None
            }
        );
        let mut b = vec![0, 0, 0, 4, 0, 0, 0, 16];
        b.extend_from_slice(&0x4654_0000_0000_0001u64.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        let r = PrReservation::parse(&b).unwrap();
        assert_eq!(
            r.reservation,
            Some(Reservation {
                key: 0x4654_0000_0000_0001,
                scope: 0,
                ty: PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY
            })
        );
        assert_eq!(r.generation, 4);
        assert!(PrReservation::parse(&b[..23]).is_err());
        assert!(PrReservation::parse(&b[..5]).is_err());
        let mut eight = b.clone();
        eight[7] = 8;
        assert!(PrReservation::parse(&eight).is_err());
    }
}

//! Fencing over a fake LUN with SCSI-3 persistent reservations: one
//! shared [`Lun`] (blocks, registrations per I_T nexus, the reservation),
//! seen through several [`Nexus`]es (a node's flag session and its data
//! session are two). The rules are istgt 0.4's (`istgt_lu_disk.c`,
//! checked against the real thing in `tests/istgt.rs`); `strict` makes a
//! PREEMPT of an unregistered key conflict, as SPC-4 §5.12.11.4.3 says;
//! `shift_bug` removes registrations the way istgt 0.4 does (ports move
//! down a slot, keys stay, the entry moved is skipped).

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::*;
use crate::scsi::{PrKeys, PrReservation, Reservation};
use ft::arbitration::{arbitrate, Verdict};

#[derive(Default)]
struct Lun {
    blocks: Vec<[u8; 512]>,
    /// (key, initiator port)
    registrations: Vec<(u64, u32)>,
    /// (holder's port, key, type)
    reservation: Option<(u32, u64, PrType)>,
    generation: u32,
    strict: bool,
    shift_bug: bool,
    up: bool,
}

impl Lun {
    fn new() -> Rc<RefCell<Lun>> {
        Rc::new(RefCell::new(Lun {
            blocks: vec![[0; 512]; 4],
            up: true,
            ..Lun::default()
        }))
    }

    fn key_of(&self, port: u32) -> Option<u64> {
        self.registrations
            .iter()
            .find(|(_, p)| *p == port)
            .map(|(k, _)| *k)
    }

    /// The check istgt makes before a write (`istgt_lu_disk_check_pr`
    /// with ALLRR only): under a registrants-only type an unregistered
    /// nexus conflicts.
    fn may_write(&self, port: u32) -> Result<()> {
        match self.reservation {
            Some((holder, _, ty)) if holder != port => {
                let registrants = ty == PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY
                    || ty == PrType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
                    || ty == PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS
                    || ty == PrType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS;
                if registrants && self.key_of(port).is_some() {
                    Ok(())
                } else {
                    Err(Error::ReservationConflict)
                }
            }
            _ => Ok(()),
        }
    }

    /// Removes the registrations `gone` selects.
    fn remove(&mut self, gone: impl Fn(u64, u32) -> bool) {
        if !self.shift_bug {
            self.registrations.retain(|&(k, p)| !gone(k, p));
            return;
        }
        let mut i = 0;
        while i < self.registrations.len() {
            let (k, p) = self.registrations[i];
            if gone(k, p) {
                let n = self.registrations.len();
                for j in i..n - 1 {
                    self.registrations[j].1 = self.registrations[j + 1].1;
                }
                self.registrations.pop();
            }
            i += 1;
        }
    }

    fn pr_out(&mut self, port: u32, a: PrOutAction, ty: PrType, p: &PrOutParams) -> Result<()> {
        let mine = self.key_of(port);
        match a {
            PrOutAction::RegisterAndIgnoreExistingKey | PrOutAction::Register => {
                if a == PrOutAction::Register && mine.unwrap_or(0) != p.reservation_key {
                    return Err(Error::ReservationConflict);
                }
                self.remove(|_, q| q == port);
                if p.service_action_key != 0 {
                    self.registrations.push((p.service_action_key, port));
                }
                self.generation += 1;
                Ok(())
            }
            PrOutAction::Reserve => {
                if mine != Some(p.reservation_key) {
                    return Err(Error::ReservationConflict);
                }
                match self.reservation {
                    None => {
                        self.reservation = Some((port, p.reservation_key, ty));
                        Ok(())
                    }
                    Some((holder, key, _)) if holder == port && key == p.reservation_key => Ok(()),
                    Some(_) => Err(Error::ReservationConflict),
                }
            }
            PrOutAction::Preempt | PrOutAction::PreemptAndAbort => {
                if mine.is_none() {
                    return Err(Error::ReservationConflict);
                }
                let victim = p.service_action_key;
                let registered = self.registrations.iter().any(|(k, _)| *k == victim);
                let holds = matches!(self.reservation, Some((_, k, _)) if k == victim);
                if self.strict && !registered && !holds {
                    return Err(Error::ReservationConflict);
                }
                self.remove(|k, _| k == victim);
                if holds && mine == Some(p.reservation_key) {
                    self.reservation = Some((port, p.reservation_key, ty));
                }
                self.generation += 1;
                Ok(())
            }
            PrOutAction::Release | PrOutAction::Clear => Err(Error::Unsupported("not modelled")),
        }
    }
}

/// One I_T nexus of the fake LUN.
struct Nexus {
    lun: Rc<RefCell<Lun>>,
    port: u32,
}

fn nexus(lun: &Rc<RefCell<Lun>>, port: u32) -> Nexus {
    Nexus {
        lun: lun.clone(),
        port,
    }
}

impl Nexus {
    fn lun(&self) -> Result<core::cell::RefMut<'_, Lun>> {
        let l = self.lun.borrow_mut();
        if l.up {
            Ok(l)
        } else {
            Err(Error::ConnectionClosed)
        }
    }
}

impl FlagDisk for Nexus {
    fn read_block(&mut self, lba: u64) -> Result<Vec<u8>> {
        Ok(self.lun()?.blocks[lba as usize].to_vec())
    }
    fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        let mut l = self.lun()?;
        l.may_write(self.port)?;
        l.blocks[lba as usize].copy_from_slice(data);
        Ok(())
    }
    fn compare_and_write(&mut self, lba: u64, c: &[u8], w: &[u8]) -> Result<()> {
        let mut l = self.lun()?;
        l.may_write(self.port)?;
        if l.blocks[lba as usize][..] != *c {
            return Err(Error::Miscompare);
        }
        l.blocks[lba as usize].copy_from_slice(w);
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.lun()?.may_write(self.port)
    }
    fn reserve_out(&mut self, a: PrOutAction, ty: PrType, p: &PrOutParams) -> Result<()> {
        let port = self.port;
        self.lun()?.pr_out(port, a, ty, p)
    }
    fn read_keys(&mut self) -> Result<PrKeys> {
        let l = self.lun()?;
        Ok(PrKeys {
            generation: l.generation,
            keys: l.registrations.iter().map(|(k, _)| *k).collect(),
        })
    }
    fn read_reservation(&mut self) -> Result<PrReservation> {
        let l = self.lun()?;
        Ok(PrReservation {
            generation: l.generation,
            reservation: l
                .reservation
                .map(|(_, key, ty)| Reservation { key, scope: 0, ty }),
        })
    }
}

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
/// Ports: node N's flag session is 10 + N, its data session 20 + N.
const FLAG_A: u32 = 11;
const FLAG_B: u32 = 12;
const DATA_A: u32 = 21;
const DATA_B: u32 = 22;

/// Both nodes registered from their flag and data sessions, the flag
/// initialised: the state after both joined.
fn joined(lun: &Rc<RefCell<Lun>>) {
    let a = Arbiter::new(0);
    a.init(&mut nexus(lun, FLAG_A), NodeId(0)).unwrap();
    for (node, flag, data) in [(A, FLAG_A, DATA_A), (B, FLAG_B, DATA_B)] {
        let mut f = nexus(lun, flag);
        assert_eq!(LunFlag::new(&mut f, a).register(node), Ok(()));
        nexus(lun, data)
            .reserve_out(
                PrOutAction::RegisterAndIgnoreExistingKey,
                PrType::NONE,
                &PrOutParams {
                    service_action_key: reservation_key(node),
                    ..PrOutParams::default()
                },
            )
            .unwrap();
    }
}

#[test]
fn keys_are_a_fixed_injective_function_of_the_node() {
    assert_eq!(reservation_key(NodeId(2)), 0x4654_0000_0000_0002);
    assert_eq!(reservation_key(NodeId(0)), KEY_PREFIX);
    assert_ne!(reservation_key(NodeId(1)), reservation_key(NodeId(2)));
    assert_eq!(reservation_key(NodeId(KEY_PREFIX)), 0);
    let lun = Lun::new();
    let mut n = nexus(&lun, 1);
    let mut s = LunFlag::new(&mut n, Arbiter::new(0));
    assert_eq!(
        s.register(NodeId(KEY_PREFIX)),
        Err(FtError::WrongState("node id gives reservation key 0"))
    );
    assert!(lun.borrow().registrations.is_empty());
}

#[test]
fn register_registers_and_reserves_once() {
    let lun = Lun::new();
    joined(&lun);
    let l = lun.borrow();
    assert_eq!(
        l.registrations,
        [
            (reservation_key(A), FLAG_A),
            (reservation_key(A), DATA_A),
            (reservation_key(B), FLAG_B),
            (reservation_key(B), DATA_B)
        ]
    );
    // The first node reserved; the second found the reservation and left
    // it (a RESERVE from another nexus would have conflicted).
    assert_eq!(
        l.reservation,
        Some((FLAG_A, reservation_key(A), FENCE_TYPE))
    );
    drop(l);
    // Registering again (a rejoin) is harmless.
    let mut f = nexus(&lun, FLAG_A);
    assert_eq!(LunFlag::new(&mut f, Arbiter::new(0)).register(A), Ok(()));
    assert_eq!(lun.borrow().registrations.len(), 4);
}

#[test]
fn a_reserve_race_lost_to_the_peer_is_fine() {
    let lun = Lun::new();
    // B registered and reserved between A's READ RESERVATION and A's
    // RESERVE: modelled by B reserving from a nexus A's read did not see.
    struct Racy(Nexus, Option<Nexus>);
    impl FlagDisk for Racy {
        fn read_block(&mut self, lba: u64) -> Result<Vec<u8>> {
            self.0.read_block(lba)
        }
        fn write_block(&mut self, lba: u64, d: &[u8]) -> Result<()> {
            self.0.write_block(lba, d)
        }
        fn compare_and_write(&mut self, lba: u64, c: &[u8], w: &[u8]) -> Result<()> {
            self.0.compare_and_write(lba, c, w)
        }
        fn flush(&mut self) -> Result<()> {
            self.0.flush()
        }
        fn reserve_out(&mut self, a: PrOutAction, t: PrType, p: &PrOutParams) -> Result<()> {
            if a == PrOutAction::Reserve {
                if let Some(mut peer) = self.1.take() {
                    let mut s = LunFlag::new(&mut peer, Arbiter::new(0));
                    s.register(B).unwrap();
                }
            }
            self.0.reserve_out(a, t, p)
        }
        fn read_keys(&mut self) -> Result<PrKeys> {
            self.0.read_keys()
        }
        fn read_reservation(&mut self) -> Result<PrReservation> {
            self.0.read_reservation()
        }
    }
    let mut racy = Racy(nexus(&lun, FLAG_A), Some(nexus(&lun, FLAG_B)));
    let mut s = LunFlag::new(&mut racy, Arbiter::new(0));
    assert_eq!(s.register(A), Ok(()));
    assert_eq!(s.last_error, None);
    assert_eq!(
        lun.borrow().reservation,
        Some((FLAG_B, reservation_key(B), FENCE_TYPE))
    );
}

#[test]
fn another_reservation_type_or_no_reservations_is_unsupported() {
    let lun = Lun::new();
    let mut x = nexus(&lun, 99);
    x.reserve_out(
        PrOutAction::RegisterAndIgnoreExistingKey,
        PrType::NONE,
        &PrOutParams {
            service_action_key: 7,
            ..PrOutParams::default()
        },
    )
    .unwrap();
    x.reserve_out(
        PrOutAction::Reserve,
        PrType::EXCLUSIVE_ACCESS,
        &PrOutParams {
            reservation_key: 7,
            ..PrOutParams::default()
        },
    )
    .unwrap();
    let mut f = nexus(&lun, FLAG_A);
    let mut s = LunFlag::new(&mut f, Arbiter::new(0));
    assert_eq!(s.register(A), Err(FtError::FencingUnsupported));
    assert_eq!(
        s.last_error,
        Some((
            FlagStep::ReadReservation,
            Error::ForeignReservation { key: 7, ty: 3 }
        ))
    );
    // A disk without persistent reservations (the trait's defaults).
    struct Plain;
    impl FlagDisk for Plain {
        fn read_block(&mut self, _: u64) -> Result<Vec<u8>> {
            Ok(vec![0; 512])
        }
        fn write_block(&mut self, _: u64, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn compare_and_write(&mut self, _: u64, _: &[u8], _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }
    let mut p = Plain;
    let mut s = LunFlag::new(&mut p, Arbiter::new(0));
    assert_eq!(s.register(A), Err(FtError::FencingUnsupported));
    assert_eq!(s.fence(A, B), Err(FtError::FencingUnsupported));
    // A target that does not know the opcode.
    let sense = crate::scsi::Sense::decode(&[0x72, 0x05, 0x20, 0, 0, 0, 0, 0]).unwrap();
    let e = Error::Scsi {
        status: 2,
        sense: Some(sense),
    };
    assert_eq!(s.fail(FlagStep::Register, e), FtError::FencingUnsupported);
}

/// The scenario: both registered, the winner preempts the loser;
/// the loser's data writes (and its flag session's CAW) now conflict,
/// the winner's go through; fencing again is Ok.
#[test]
fn fence_cuts_every_nexus_of_the_loser_off() {
    for strict in [false, true] {
        let lun = Lun::new();
        lun.borrow_mut().strict = strict;
        joined(&lun);
        nexus(&lun, DATA_B).write_block(1, &[0xb; 512]).unwrap();
        let mut f = nexus(&lun, FLAG_A);
        let mut s = LunFlag::new(&mut f, Arbiter::new(0));
        assert_eq!(arbitrate(&mut s, 0, A), Verdict::Won(FlagRecord::new(1, A)));
        assert_eq!(s.fence(A, B), Ok(()), "strict={strict}");
        assert_eq!(s.last_error, None);
        // Idempotent: the loser is gone already.
        assert_eq!(s.fence(A, B), Ok(()), "strict={strict}");
        assert_eq!(
            nexus(&lun, DATA_B).write_block(1, &[0xbb; 512]),
            Err(Error::ReservationConflict)
        );
        assert_eq!(
            nexus(&lun, FLAG_B).compare_and_write(
                0,
                &FlagRecord::new(1, A).to_block(),
                &FlagRecord::new(2, B).to_block()
            ),
            Err(Error::ReservationConflict)
        );
        nexus(&lun, DATA_A).write_block(1, &[0xa; 512]).unwrap();
        assert_eq!(lun.borrow().blocks[1], [0xa; 512]);
        // Reads stay allowed: the loser learns it lost.
        let mut fb = nexus(&lun, FLAG_B);
        let mut sb = LunFlag::new(&mut fb, Arbiter::new(0));
        assert_eq!(
            arbitrate(&mut sb, 0, B),
            Verdict::Lost(FlagRecord::new(1, A))
        );
        // The fenced loser cannot fence back: it is not registered.
        assert_eq!(sb.fence(B, A), Err(FtError::Fenced));
        assert_eq!(
            sb.last_error,
            Some((FlagStep::Preempt, Error::ReservationConflict))
        );
        assert!(lun.borrow().key_of(FLAG_A).is_some());
    }
}

/// The backup (B, not the holder) wins and preempts the holder A: the
/// reservation moves to B, A is cut off.
#[test]
fn preempting_the_holder_takes_over_the_reservation() {
    let lun = Lun::new();
    joined(&lun);
    let mut f = nexus(&lun, FLAG_B);
    let mut s = LunFlag::new(&mut f, Arbiter::new(0));
    assert_eq!(arbitrate(&mut s, 0, B), Verdict::Won(FlagRecord::new(1, B)));
    assert_eq!(s.fence(B, A), Ok(()));
    assert_eq!(
        lun.borrow().reservation,
        Some((FLAG_B, reservation_key(B), FENCE_TYPE))
    );
    assert_eq!(
        nexus(&lun, DATA_A).write_block(2, &[1; 512]),
        Err(Error::ReservationConflict)
    );
    nexus(&lun, DATA_B).write_block(2, &[2; 512]).unwrap();
}

#[test]
fn fence_errors_map_to_ft() {
    let lun = Lun::new();
    joined(&lun);
    let mut f = nexus(&lun, FLAG_A);
    let mut s = LunFlag::new(&mut f, Arbiter::new(0));
    assert_eq!(
        s.fence(A, A),
        Err(FtError::WrongState("a node cannot fence itself"))
    );
    lun.borrow_mut().up = false;
    assert_eq!(s.fence(A, B), Err(FtError::StorageUnreachable));
    assert_eq!(
        s.last_error,
        Some((FlagStep::ReadKeys, Error::StorageUnreachable))
    );
    assert_eq!(s.register(A), Err(FtError::StorageUnreachable));
    assert_eq!(
        s.last_error,
        Some((FlagStep::Register, Error::StorageUnreachable))
    );
    lun.borrow_mut().up = true;
    assert_eq!(s.fence(A, B), Ok(()));
    assert_eq!(s.last_error, None);
    // A preempted by B in the meantime (B won a later generation): A's
    // fence is refused, A was fenced.
    let mut fb = nexus(&lun, FLAG_B);
    LunFlag::new(&mut fb, Arbiter::new(0)).register(B).unwrap();
    LunFlag::new(&mut fb, Arbiter::new(0)).fence(B, A).unwrap();
    for strict in [false, true] {
        lun.borrow_mut().strict = strict;
        assert_eq!(s.fence(A, B), Err(FtError::Fenced));
    }
    // A CAW refused by the reservation is fenced, not unreachable.
    assert_eq!(s.try_acquire(0, A), Err(FtError::Fenced));
    assert_eq!(
        s.last_error,
        Some((FlagStep::CompareAndWrite, Error::ReservationConflict))
    );
}

/// Both nodes joined with one nexus each (the kernel's layout when the
/// guest disk is on the LUN): the flag initialised, A then B registered.
fn joined_one_nexus_each(lun: &Rc<RefCell<Lun>>) {
    Arbiter::new(0)
        .init(&mut nexus(lun, FLAG_A), NodeId(0))
        .unwrap();
    for (node, port) in [(A, FLAG_A), (B, FLAG_B)] {
        let mut n = nexus(lun, port);
        LunFlag::new(&mut n, Arbiter::new(0))
            .register(node)
            .unwrap();
    }
}

/// istgt 0.4's table corruption (sessions move down, keys stay): with two
/// nexuses per node the fence cannot be made whole and is refused
/// (Fenced), never Ok; with one nexus per node re-registering the winner's
/// own nexus after the preempt puts the table right whichever registered
/// first, and the loser's writes conflict.
#[test]
fn a_fence_the_target_botched_is_not_ok() {
    for (winner, loser, flag) in [(A, B, FLAG_A), (B, A, FLAG_B)] {
        let lun = Lun::new();
        lun.borrow_mut().shift_bug = true;
        joined(&lun);
        let mut f = nexus(&lun, flag);
        let mut s = LunFlag::new(&mut f, Arbiter::new(0));
        assert_eq!(s.fence(winner, loser), Err(FtError::Fenced));
        assert!(
            matches!(
                s.last_error,
                Some((FlagStep::Verify, Error::FenceIneffective(_)))
            ),
            "{:?}",
            s.last_error
        );
    }
    for (winner, loser, wport, lport) in [(A, B, FLAG_A, FLAG_B), (B, A, FLAG_B, FLAG_A)] {
        let lun = Lun::new();
        lun.borrow_mut().shift_bug = true;
        joined_one_nexus_each(&lun);
        let mut w = nexus(&lun, wport);
        let r = LunFlag::new(&mut w, Arbiter::new(0)).fence(winner, loser);
        assert_eq!(r, Ok(()), "{winner:?} fences {loser:?}");
        assert_eq!(w.write_block(1, &[1; 512]), Ok(()), "the winner writes");
        assert_eq!(
            nexus(&lun, lport).write_block(1, &[2; 512]),
            Err(Error::ReservationConflict),
            "{loser:?} is cut off"
        );
    }
}

/// A target that lost every registration (istgt restarted: no APTPL):
/// the winner's fence registers again (and reserves), the loser stays out.
#[test]
fn a_fence_after_the_target_forgot_every_registration() {
    let lun = Lun::new();
    joined_one_nexus_each(&lun);
    {
        let mut l = lun.borrow_mut();
        l.registrations.clear();
        l.reservation = None;
    }
    let mut b = nexus(&lun, FLAG_B);
    assert_eq!(LunFlag::new(&mut b, Arbiter::new(0)).fence(B, A), Ok(()));
    assert_eq!(b.write_block(1, &[1; 512]), Ok(()));
    assert_eq!(
        nexus(&lun, FLAG_A).write_block(1, &[2; 512]),
        Err(Error::ReservationConflict),
        "the loser is out"
    );
    // Preempted (the loser's key present, ours gone): that is a fence of us.
    let mut a = nexus(&lun, FLAG_A);
    assert_eq!(
        LunFlag::new(&mut a, Arbiter::new(0)).fence(A, B),
        Err(FtError::Fenced)
    );
}

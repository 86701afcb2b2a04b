//! Basic Header Segment and PDU framing (RFC 7143 §11.2).
//!
//! A PDU is a 48-byte BHS, `TotalAHSLength * 4` bytes of Additional Header
//! Segments (§11.2.2; skipped here: we send none and need none), an optional
//! header digest, the data segment padded to a multiple of 4 bytes
//! (§11.2.3), and an optional data digest. Only `HeaderDigest=None` and
//! `DataDigest=None` are negotiated, so digests never appear on the wire.

use crate::error::{Error, Result};

/// Size of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Reserved Initiator/Target Task Tag value (RFC 7143 §11.2.1.8, §11.18.4).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (RFC 7143 §11.2.1.2).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// The immediate-delivery bit in byte 0 (§11.2.1.1).
pub const IMMEDIATE: u8 = 0x40;
/// The Final bit in byte 1, common to most PDUs.
pub const FINAL: u8 = 0x80;

/// A 48-byte BHS with big-endian field accessors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl core::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Bhs(op={:#04x}, flags={:#04x})",
            self.opcode(),
            self.0[1]
        )
    }
}

impl Bhs {
    /// A zeroed BHS with `opcode` and the immediate bit set as given.
    pub fn new(opcode: u8, immediate: bool) -> Self {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode | if immediate { IMMEDIATE } else { 0 };
        Bhs(b)
    }

    /// Copies the first 48 bytes of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let head = bytes.get(..BHS_LEN).ok_or(Error::Truncated {
            need: BHS_LEN,
            have: bytes.len(),
        })?;
        let mut b = [0u8; BHS_LEN];
        b.copy_from_slice(head);
        Ok(Bhs(b))
    }

    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & IMMEDIATE != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }
    /// TotalAHSLength in bytes (§11.2.1.4: the field counts 4-byte words).
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    /// DataSegmentLength without padding (§11.2.1.5).
    pub fn data_len(&self) -> usize {
        (u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])) as usize
    }
    /// Sets DataSegmentLength; values over 2^24-1 are an error.
    pub fn set_data_len(&mut self, len: usize) -> Result<()> {
        if len > 0x00ff_ffff {
            return Err(Error::DataSegmentTooLong {
                len,
                max: 0x00ff_ffff,
            });
        }
        let b = (len as u32).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..]);
        Ok(())
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_be_bytes(b)
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_be_bytes(b)
    }
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }
    /// LUN field, bytes 8..16 (§11.2.1.6).
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    /// Initiator Task Tag, bytes 16..20 (§11.2.1.8).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
}

/// Data segment length rounded up to the 4-byte boundary (§11.2.3).
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Total on-the-wire length of the PDU whose BHS is `bhs`, checking the
/// data segment against `max_data` (our MaxRecvDataSegmentLength).
pub fn wire_len(bhs: &Bhs, max_data: usize) -> Result<usize> {
    let data = bhs.data_len();
    if data > max_data {
        return Err(Error::DataSegmentTooLong {
            len: data,
            max: max_data,
        });
    }
    Ok(BHS_LEN + bhs.ahs_len() + padded(data))
}

/// Appends `bhs` and `data` (with zero padding) to `out`.
pub fn write_pdu(out: &mut alloc::vec::Vec<u8>, mut bhs: Bhs, data: &[u8]) -> Result<()> {
    bhs.set_data_len(data.len())?;
    bhs.0[4] = 0; // no AHS
    out.extend_from_slice(&bhs.0);
    out.extend_from_slice(data);
    out.resize(out.len() + padded(data.len()) - data.len(), 0);
    Ok(())
}

/// Splits one complete PDU into its BHS and data segment (AHS skipped,
/// padding dropped). `bytes` must hold exactly [`wire_len`] bytes or more.
pub fn split_pdu(bytes: &[u8], max_data: usize) -> Result<(Bhs, &[u8])> {
    let bhs = Bhs::from_slice(bytes)?;
    let total = wire_len(&bhs, max_data)?;
    if bytes.len() < total {
        return Err(Error::Truncated {
            need: total,
            have: bytes.len(),
        });
    }
    let start = BHS_LEN + bhs.ahs_len();
    Ok((bhs, &bytes[start..start + bhs.data_len()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn padding_rounds_to_four() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(padded), [0, 4, 4, 4, 4, 8]);
    }

    #[test]
    fn write_then_split_round_trips_and_pads() {
        let mut out = Vec::new();
        let mut bhs = Bhs::new(opcode::NOP_OUT, true);
        bhs.set_u32(16, 0x1234_5678);
        write_pdu(&mut out, bhs, b"hello").unwrap();
        assert_eq!(out.len(), 48 + 8);
        assert_eq!(&out[53..56], &[0, 0, 0]);
        let (h, data) = split_pdu(&out, 8192).unwrap();
        assert_eq!(h.opcode(), opcode::NOP_OUT);
        assert!(h.immediate());
        assert_eq!(h.itt(), 0x1234_5678);
        assert_eq!(data, b"hello");
    }

    #[test]
    fn ahs_is_skipped() {
        let mut out = Vec::new();
        write_pdu(&mut out, Bhs::new(opcode::NOP_IN, false), b"abcd").unwrap();
        out[4] = 2; // 8 bytes of AHS
        let data = out.split_off(48);
        out.extend_from_slice(&[0xAA; 8]);
        out.extend_from_slice(&data);
        let (_, d) = split_pdu(&out, 8192).unwrap();
        assert_eq!(d, b"abcd");
    }

    #[test]
    fn short_and_oversized_are_errors() {
        assert!(matches!(
            split_pdu(&[0; 47], 10),
            Err(Error::Truncated { .. })
        ));
        let mut out = Vec::new();
        write_pdu(&mut out, Bhs::new(opcode::NOP_IN, false), &[1; 100]).unwrap();
        assert_eq!(
            split_pdu(&out, 64),
            Err(Error::DataSegmentTooLong { len: 100, max: 64 })
        );
        assert!(matches!(
            split_pdu(&out[..60], 8192),
            Err(Error::Truncated { .. })
        ));
        let mut b = Bhs::new(0, false);
        assert!(b.set_data_len(1 << 24).is_err());
    }
}

//! Sense data (SPC-4 §4.5): fixed format (response codes 0x70/0x71,
//! §4.5.3) and descriptor format (0x72/0x73, §4.5.2), decoded into a
//! [`Sense`] with key, ASC/ASCQ and the INFORMATION field if present.

use core::fmt;

use crate::error::{Error, Result};

/// Sense key (SPC-4 §4.5.6, table 48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "NO SENSE",
            "RECOVERED ERROR",
            "NOT READY",
            "MEDIUM ERROR",
            "HARDWARE ERROR",
            "ILLEGAL REQUEST",
            "UNIT ATTENTION",
            "DATA PROTECT",
            "BLANK CHECK",
            "VENDOR SPECIFIC",
            "COPY ABORTED",
            "ABORTED COMMAND",
            "RESERVED",
            "VOLUME OVERFLOW",
            "MISCOMPARE",
            "COMPLETED",
        ];
        NAMES[(self.0 & 0xf) as usize]
    }
}

/// Decoded sense data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// 0x70/0x71 fixed, 0x72/0x73 descriptor (odd: deferred error).
    pub response_code: u8,
    pub key: SenseKey,
    /// Additional sense code and qualifier (SPC-4 §4.5.6, table 49).
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field when valid; for MISCOMPARE it is the offset of the
    /// first differing byte (SBC-3 §5.2).
    pub information: Option<u64>,
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sense key {:#x} ({}) ASC/ASCQ {:#04x}/{:#04x}",
            self.key.0,
            self.key.name(),
            self.asc,
            self.ascq
        )
    }
}

impl Sense {
    /// MISCOMPARE DURING VERIFY OPERATION (key 0x0E, ASC 0x1D).
    pub fn is_miscompare(&self) -> bool {
        self.key == SenseKey::MISCOMPARE && self.asc == 0x1d
    }

    /// Decodes sense bytes (without iSCSI's SenseLength prefix).
    pub fn decode(b: &[u8]) -> Result<Sense> {
        let first = *b.first().ok_or(Error::MalformedSense("empty"))?;
        let response_code = first & 0x7f;
        match response_code {
            0x70 | 0x71 => Self::fixed(b, response_code),
            0x72 | 0x73 => Self::descriptor(b, response_code),
            _ => Err(Error::MalformedSense("unknown response code")),
        }
    }

    /// Fixed format (SPC-4 §4.5.3): key in byte 2, INFORMATION in 3..7
    /// (VALID bit 7 of byte 0), ASC/ASCQ in 12/13 if the additional length
    /// reaches them.
    fn fixed(b: &[u8], response_code: u8) -> Result<Sense> {
        if b.len() < 8 {
            return Err(Error::MalformedSense("fixed format shorter than 8 bytes"));
        }
        let end = (8 + b[7] as usize).min(b.len());
        let (asc, ascq) = if end >= 14 { (b[12], b[13]) } else { (0, 0) };
        let information =
            (b[0] & 0x80 != 0).then(|| u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as u64);
        Ok(Sense {
            response_code,
            key: SenseKey(b[2] & 0x0f),
            asc,
            ascq,
            information,
        })
    }

    /// Descriptor format (SPC-4 §4.5.2): key/ASC/ASCQ in bytes 1..4,
    /// descriptors from byte 8; the Information descriptor (type 0, §4.5.2.2)
    /// carries an 8-byte INFORMATION field.
    fn descriptor(b: &[u8], response_code: u8) -> Result<Sense> {
        if b.len() < 8 {
            return Err(Error::MalformedSense(
                "descriptor format shorter than 8 bytes",
            ));
        }
        let end = 8 + b[7] as usize;
        let descs = b
            .get(8..end)
            .ok_or(Error::MalformedSense("additional length beyond data"))?;
        let mut information = None;
        let mut rest = descs;
        while !rest.is_empty() {
            if rest.len() < 2 {
                return Err(Error::MalformedSense("truncated descriptor header"));
            }
            let len = 2 + rest[1] as usize;
            let d = rest
                .get(..len)
                .ok_or(Error::MalformedSense("descriptor beyond data"))?;
            if d[0] == 0x00 {
                if d.len() < 12 {
                    return Err(Error::MalformedSense("short information descriptor"));
                }
                if d[2] & 0x80 != 0 {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&d[4..12]);
                    information = Some(u64::from_be_bytes(v));
                }
            }
            rest = &rest[len..];
        }
        Ok(Sense {
            response_code,
            key: SenseKey(b[1] & 0x0f),
            asc: b[2],
            ascq: b[3],
            information,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn fixed_miscompare_as_istgt_sends_it() {
        let mut b = [0u8; 18];
        b[0] = 0xf0; // valid + current fixed
        b[2] = 0x0e;
        b[3..7].copy_from_slice(&5u32.to_be_bytes());
        b[7] = 10;
        b[12] = 0x1d;
        let s = Sense::decode(&b).unwrap();
        assert!(s.is_miscompare());
        assert_eq!(s.information, Some(5));
        assert_eq!(s.response_code, 0x70);
        assert!(s.to_string().contains("MISCOMPARE"));
    }

    #[test]
    fn fixed_short_has_no_asc() {
        let s = Sense::decode(&[0x70, 0, 0x06, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            (s.key, s.asc, s.information),
            (SenseKey::UNIT_ATTENTION, 0, None)
        );
    }

    #[test]
    fn descriptor_with_information() {
        let mut b = alloc::vec![0x72, 0x0e, 0x1d, 0x00, 0, 0, 0, 12];
        b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
        b.extend_from_slice(&7u64.to_be_bytes());
        let s = Sense::decode(&b).unwrap();
        assert!(s.is_miscompare());
        assert_eq!(s.information, Some(7));
    }

    #[test]
    fn malformed_sense_is_rejected() {
        for bad in [
            &[][..],
            &[0x00, 0, 0, 0, 0, 0, 0, 0],
            &[0x70, 0, 5],
            &[0x72, 5, 0x20, 0, 0, 0, 0, 4, 0, 9],
            &[0x72, 5, 0x20, 0, 0, 0, 0, 3, 0, 9, 1],
            &[0x72, 5, 0x20, 0, 0, 0, 0, 4, 0x00, 2, 0x80, 0],
            &[0x72, 5, 0x20, 0, 0, 0, 0, 1, 0],
        ] {
            assert!(Sense::decode(bad).is_err(), "{bad:?}");
        }
    }
}

//! Command descriptor blocks and response parsers: TEST UNIT READY, INQUIRY
//! (SPC-4 §6.6), READ CAPACITY(16) (SBC-3 §5.16), READ(16) (§5.8),
//! WRITE(16) (§5.41), SYNCHRONIZE CACHE(16) (§5.27) and COMPARE AND WRITE
//! (§5.2: the data-out buffer is the verify block(s) followed by the write
//! block(s); the device compares and writes atomically).

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// Direction and size of a command's data phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Data-In of up to this many bytes.
    Read(u32),
    /// Data-Out of these bytes.
    Write(Vec<u8>),
}

/// A CDB (padded to 16 bytes, as iSCSI carries it) and its data phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub cdb: [u8; 16],
    pub dir: DataDir,
}

fn cdb(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

fn lba_cdb16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn blocks_of(len: usize, block_size: u32) -> Result<u32> {
    if block_size == 0 || len == 0 || !len.is_multiple_of(block_size as usize) {
        return Err(Error::InvalidArgument("data not a whole number of blocks"));
    }
    u32::try_from(len / block_size as usize).map_err(|_| Error::InvalidArgument("too many blocks"))
}

impl Command {
    /// TEST UNIT READY (SPC-4 §6.47), opcode 0x00.
    pub fn test_unit_ready() -> Self {
        Command {
            cdb: [0; 16],
            dir: DataDir::None,
        }
    }

    /// Standard INQUIRY (SPC-4 §6.6), opcode 0x12.
    pub fn inquiry(alloc_len: u16) -> Self {
        let l = alloc_len.to_be_bytes();
        Command {
            cdb: cdb(&[0x12, 0, 0, l[0], l[1], 0]),
            dir: DataDir::Read(alloc_len as u32),
        }
    }

    /// READ CAPACITY(16) (SBC-3 §5.16): SERVICE ACTION IN(16) 0x9E/0x10.
    pub fn read_capacity16() -> Self {
        let mut c = [0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x10;
        c[10..14].copy_from_slice(&32u32.to_be_bytes());
        Command {
            cdb: c,
            dir: DataDir::Read(32),
        }
    }

    /// READ(16) (SBC-3 §5.8), opcode 0x88.
    pub fn read16(lba: u64, blocks: u32, block_size: u32) -> Result<Self> {
        let len = blocks
            .checked_mul(block_size)
            .filter(|l| *l > 0)
            .ok_or(Error::InvalidArgument("read length zero or over 4 GiB"))?;
        Ok(Command {
            cdb: lba_cdb16(0x88, lba, blocks),
            dir: DataDir::Read(len),
        })
    }

    /// WRITE(16) (SBC-3 §5.41), opcode 0x8A.
    pub fn write16(lba: u64, data: Vec<u8>, block_size: u32) -> Result<Self> {
        let blocks = blocks_of(data.len(), block_size)?;
        Ok(Command {
            cdb: lba_cdb16(0x8a, lba, blocks),
            dir: DataDir::Write(data),
        })
    }

    /// SYNCHRONIZE CACHE(16) (SBC-3 §5.27), opcode 0x91; `blocks == 0`
    /// means up to the last LBA.
    pub fn synchronize_cache16(lba: u64, blocks: u32) -> Self {
        Command {
            cdb: lba_cdb16(0x91, lba, blocks),
            dir: DataDir::None,
        }
    }

    /// COMPARE AND WRITE (SBC-3 §5.2), opcode 0x89, NUMBER OF LOGICAL
    /// BLOCKS = 1: data-out is `compare` then `write`, one block each.
    pub fn compare_and_write(
        lba: u64,
        compare: &[u8],
        write: &[u8],
        block_size: u32,
    ) -> Result<Self> {
        if compare.len() != block_size as usize || write.len() != block_size as usize {
            return Err(Error::InvalidArgument(
                "COMPARE AND WRITE needs one block each",
            ));
        }
        let mut c = [0u8; 16];
        c[0] = 0x89;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = 1;
        let mut data = Vec::with_capacity(2 * compare.len());
        data.extend_from_slice(compare);
        data.extend_from_slice(write);
        Ok(Command {
            cdb: c,
            dir: DataDir::Write(data),
        })
    }
}

/// Standard INQUIRY data (SPC-4 §6.6.2), the fields we log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inquiry {
    pub peripheral_type: u8,
    pub version: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

fn ascii(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end()
        .into()
}

impl Inquiry {
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 36 {
            return Err(Error::MalformedResponse(
                "INQUIRY data shorter than 36 bytes",
            ));
        }
        Ok(Inquiry {
            peripheral_type: b[0] & 0x1f,
            version: b[2],
            vendor: ascii(&b[8..16]),
            product: ascii(&b[16..32]),
            revision: ascii(&b[32..36]),
        })
    }
}

/// READ CAPACITY(16) parameter data (SBC-3 §5.16.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCapacity16 {
    /// Number of logical blocks (RETURNED LOGICAL BLOCK ADDRESS + 1).
    pub blocks: u64,
    pub block_size: u32,
}

impl ReadCapacity16 {
    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 12 {
            return Err(Error::MalformedResponse(
                "READ CAPACITY(16) data shorter than 12 bytes",
            ));
        }
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[..8]);
        let blocks = u64::from_be_bytes(l)
            .checked_add(1)
            .ok_or(Error::MalformedResponse("last LBA overflows"))?;
        let block_size = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if block_size == 0 {
            return Err(Error::MalformedResponse("block size 0"));
        }
        Ok(ReadCapacity16 { blocks, block_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn cdbs_have_the_sbc3_layout() {
        let r = Command::read16(0x0102_0304_0506_0708, 3, 512).unwrap();
        assert_eq!(r.cdb[0], 0x88);
        assert_eq!(&r.cdb[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&r.cdb[10..14], &[0, 0, 0, 3]);
        assert_eq!(r.dir, DataDir::Read(1536));
        let w = Command::write16(9, vec![0; 1024], 512).unwrap();
        assert_eq!((w.cdb[0], w.cdb[9], w.cdb[13]), (0x8a, 9, 2));
        let c = Command::compare_and_write(7, &[1; 512], &[2; 512], 512).unwrap();
        assert_eq!((c.cdb[0], c.cdb[9], c.cdb[13]), (0x89, 7, 1));
        match c.dir {
            DataDir::Write(d) => assert!(d[..512] == [1; 512] && d[512..] == [2; 512]),
            _ => panic!(),
        }
        assert_eq!(Command::read_capacity16().cdb[..2], [0x9e, 0x10]);
        assert_eq!(Command::inquiry(96).cdb[..6], [0x12, 0, 0, 0, 96, 0]);
        assert_eq!(Command::synchronize_cache16(0, 0).cdb[0], 0x91);
        assert_eq!(Command::test_unit_ready().dir, DataDir::None);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(Command::write16(0, vec![0; 100], 512).is_err());
        assert!(Command::write16(0, vec![], 512).is_err());
        assert!(Command::read16(0, 0, 512).is_err());
        assert!(Command::read16(0, u32::MAX, 512).is_err());
        assert!(Command::compare_and_write(0, &[0; 512], &[0; 511], 512).is_err());
    }

    #[test]
    fn parses_istgt_like_responses() {
        let mut rc = [0u8; 32];
        rc[..8].copy_from_slice(&131071u64.to_be_bytes());
        rc[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            ReadCapacity16::parse(&rc).unwrap(),
            ReadCapacity16 {
                blocks: 131072,
                block_size: 512
            }
        );
        assert!(ReadCapacity16::parse(&rc[..11]).is_err());
        let mut bad = rc;
        bad[..8].fill(0xff);
        assert!(ReadCapacity16::parse(&bad).is_err());
        let mut inq = [b' '; 36];
        inq[0] = 0;
        inq[2] = 5;
        inq[8..15].copy_from_slice(b"FreeBSD");
        inq[16..26].copy_from_slice(b"iSCSI DISK");
        let i = Inquiry::parse(&inq).unwrap();
        assert_eq!(
            (i.vendor.as_str(), i.product.as_str(), i.version),
            ("FreeBSD", "iSCSI DISK", 5)
        );
        assert!(Inquiry::parse(&inq[..35]).is_err());
    }
}

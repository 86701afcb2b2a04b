//! Test-and-set arbitration on the shared LUN (DESIGN.md §1.7) with SCSI
//! COMPARE AND WRITE (SBC-3 §5.2; sense MISCOMPARE, SPC-4 §4.5.6).
//!
//! One 512-byte block at a reserved LBA holds a [`FlagRecord`]
//! `{magic, version, generation, owner, crc}`, byte for byte the layout of
//! `ft::arbitration::FlagRecord` (little-endian: magic `"FTFL"` u32 at 0,
//! version u16 at 4, generation u64 at 8, owner u64 at 16, CRC32C of bytes
//! 0..24 at 24, zeros to the end of the block).
//!
//! [`Arbiter::try_acquire_from`] is a single COMPARE AND WRITE of the
//! expected record against `(generation + 1, me)`: the device compares and
//! writes atomically, so of any number of racers exactly one succeeds and
//! the others get MISCOMPARE. After a MISCOMPARE the block is read to say
//! who won; if it already holds our own `(generation + 1, me)` (our earlier
//! CAW landed but its reply was lost and the command was retried after a
//! reconnect) that is our win. Transport failures are
//! [`Error::StorageUnreachable`]: nobody may go live on them.

use alloc::vec::Vec;

use crc::{Crc, CRC_32_ISCSI};

use crate::error::{Error, Result};
use crate::iscsi::{Clock, Initiator, Transport};

/// `"FTFL"` little-endian.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"FTFL");
/// Layout version.
pub const RECORD_VERSION: u16 = 1;
/// The record occupies one logical block of this size.
pub const BLOCK_SIZE: usize = 512;
/// Meaningful bytes at the start of the block.
pub const RECORD_LEN: usize = 28;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The arbitration record: who acquired which generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagRecord {
    pub generation: u64,
    /// Node id of the winner of `generation` (0: nobody yet).
    pub owner: u64,
}

impl FlagRecord {
    /// The full block, ready to write.
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.owner.to_le_bytes());
        let crc = CRC32C.checksum(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Validates and parses a block.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != BLOCK_SIZE {
            return Err(Error::CorruptRecord("block is not 512 bytes"));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..4] != RECORD_MAGIC.to_le_bytes() {
            return Err(Error::CorruptRecord("bad magic"));
        }
        if b[4..6] != RECORD_VERSION.to_le_bytes() {
            return Err(Error::CorruptRecord("unknown version"));
        }
        if b[6..8] != [0, 0] || b[RECORD_LEN..].iter().any(|&x| x != 0) {
            return Err(Error::CorruptRecord("reserved bytes set"));
        }
        if CRC32C.checksum(&b[..24]).to_le_bytes() != b[24..28] {
            return Err(Error::CorruptRecord("crc mismatch"));
        }
        Ok(FlagRecord {
            generation: u64_at(8),
            owner: u64_at(16),
        })
    }

    /// The record a successful acquisition by `me` writes.
    pub fn successor(&self, me: u64) -> Result<FlagRecord> {
        let generation = self
            .generation
            .checked_add(1)
            .ok_or(Error::CorruptRecord("generation exhausted"))?;
        Ok(FlagRecord {
            generation,
            owner: me,
        })
    }
}

/// The three block operations arbitration needs (an iSCSI LUN, or a fake).
pub trait FlagDisk {
    fn read_block(&mut self, lba: u64) -> Result<Vec<u8>>;
    fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()>;
    /// Atomic compare-and-write of one block; [`Error::Miscompare`] when
    /// the block differs from `compare`.
    fn compare_and_write(&mut self, lba: u64, compare: &[u8], write: &[u8]) -> Result<()>;
    fn flush(&mut self) -> Result<()>;
}

impl<T: Transport, C: Clock> FlagDisk for Initiator<T, C> {
    fn read_block(&mut self, lba: u64) -> Result<Vec<u8>> {
        self.read16(lba, 1)
    }
    fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.write16(lba, data.to_vec())
    }
    fn compare_and_write(&mut self, lba: u64, compare: &[u8], write: &[u8]) -> Result<()> {
        Initiator::compare_and_write(self, lba, compare, write)
    }
    fn flush(&mut self) -> Result<()> {
        self.synchronize_cache()
    }
}

/// Outcome of an acquisition attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// We hold this record's generation: act alone.
    Won(FlagRecord),
    /// Someone else does (the record read back after the miscompare).
    Lost(FlagRecord),
}

/// Transport-level failures mean the storage is unreachable; SCSI and
/// record errors pass through.
fn reachability(e: Error) -> Error {
    match e {
        Error::ConnectionClosed
        | Error::Timeout
        | Error::NotLoggedIn
        | Error::StorageUnreachable => Error::StorageUnreachable,
        other => other,
    }
}

/// The flag at one reserved LBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arbiter {
    pub lba: u64,
}

impl Arbiter {
    pub fn new(lba: u64) -> Self {
        Arbiter { lba }
    }

    /// Writes generation 0, owner `owner`, and flushes. Only for a fresh
    /// cluster: it overwrites whatever is there.
    pub fn init(&self, disk: &mut dyn FlagDisk, owner: u64) -> Result<FlagRecord> {
        let rec = FlagRecord {
            generation: 0,
            owner,
        };
        disk.write_block(self.lba, &rec.encode())
            .map_err(reachability)?;
        disk.flush().map_err(reachability)?;
        Ok(rec)
    }

    /// Reads and validates the record.
    pub fn read(&self, disk: &mut dyn FlagDisk) -> Result<FlagRecord> {
        FlagRecord::decode(&disk.read_block(self.lba).map_err(reachability)?)
    }

    /// One COMPARE AND WRITE: `expected` → `(expected.generation + 1, me)`.
    pub fn try_acquire_from(
        &self,
        disk: &mut dyn FlagDisk,
        expected: FlagRecord,
        me: u64,
    ) -> Result<Acquire> {
        let new = expected.successor(me)?;
        match disk.compare_and_write(self.lba, &expected.encode(), &new.encode()) {
            Ok(()) => Ok(Acquire::Won(new)),
            Err(Error::Miscompare) => {
                let current = self.read(disk)?;
                Ok(if current == new {
                    Acquire::Won(current)
                } else {
                    Acquire::Lost(current)
                })
            }
            Err(e) => Err(reachability(e)),
        }
    }

    /// Acquire generation `expected_generation + 1` if the flag still holds
    /// `expected_generation` (the `ft::arbitration::SharedStorage` contract):
    /// reads the record to learn its owner, then one COMPARE AND WRITE.
    pub fn try_acquire(
        &self,
        disk: &mut dyn FlagDisk,
        expected_generation: u64,
        me: u64,
    ) -> Result<Acquire> {
        let current = self.read(disk)?;
        if current.generation != expected_generation {
            let ours = current.owner == me
                && Some(current.generation) == expected_generation.checked_add(1);
            return Ok(if ours {
                Acquire::Won(current)
            } else {
                Acquire::Lost(current)
            });
        }
        self.try_acquire_from(disk, current, me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn record_layout_is_fixed() {
        let b = FlagRecord {
            generation: 7,
            owner: 2,
        }
        .encode();
        assert_eq!(&b[0..4], b"FTFL");
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        assert_eq!(&b[16..24], &2u64.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            CRC32C.checksum(&b[..24])
        );
        assert!(b[28..].iter().all(|&x| x == 0));
        assert_eq!(
            FlagRecord::decode(&b),
            Ok(FlagRecord {
                generation: 7,
                owner: 2
            })
        );
    }

    #[test]
    fn every_corruption_is_detected() {
        let b = FlagRecord {
            generation: 1,
            owner: 1,
        }
        .encode();
        for i in 0..BLOCK_SIZE {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert!(
                matches!(FlagRecord::decode(&bad), Err(Error::CorruptRecord(_))),
                "byte {i}"
            );
        }
        assert!(FlagRecord::decode(&b[..511]).is_err());
        assert!(
            FlagRecord::decode(&[0; 512]).is_err(),
            "blank disk is not a record"
        );
        let max = FlagRecord {
            generation: u64::MAX,
            owner: 1,
        };
        assert!(max.successor(2).is_err());
    }

    /// An in-memory disk with CAW semantics and a switch to fail.
    struct Mem {
        blocks: Vec<[u8; 512]>,
        down: bool,
        /// Apply the next CAW but report ConnectionClosed (lost reply).
        lose_reply: bool,
    }
    impl FlagDisk for Mem {
        fn read_block(&mut self, lba: u64) -> Result<Vec<u8>> {
            if self.down {
                return Err(Error::ConnectionClosed);
            }
            Ok(self.blocks[lba as usize].to_vec())
        }
        fn write_block(&mut self, lba: u64, data: &[u8]) -> Result<()> {
            if self.down {
                return Err(Error::Timeout);
            }
            self.blocks[lba as usize].copy_from_slice(data);
            Ok(())
        }
        fn compare_and_write(&mut self, lba: u64, c: &[u8], w: &[u8]) -> Result<()> {
            if self.down {
                return Err(Error::StorageUnreachable);
            }
            if self.blocks[lba as usize][..] != *c {
                return Err(Error::Miscompare);
            }
            self.blocks[lba as usize].copy_from_slice(w);
            if core::mem::take(&mut self.lose_reply) {
                return Err(Error::ConnectionClosed);
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn mem() -> Mem {
        Mem {
            blocks: vec![[0; 512]; 4],
            down: false,
            lose_reply: false,
        }
    }

    #[test]
    fn acquire_win_lose_and_stale() {
        let mut d = mem();
        let a = Arbiter::new(3);
        assert!(matches!(a.read(&mut d), Err(Error::CorruptRecord(_))));
        let r0 = a.init(&mut d, 0).unwrap();
        assert_eq!(
            a.try_acquire(&mut d, 0, 1),
            Ok(Acquire::Won(FlagRecord {
                generation: 1,
                owner: 1
            }))
        );
        // Node 2 with the stale generation loses and learns the winner.
        assert_eq!(
            a.try_acquire(&mut d, 0, 2),
            Ok(Acquire::Lost(FlagRecord {
                generation: 1,
                owner: 1
            }))
        );
        // A raw CAW with the stale record miscompares too.
        assert_eq!(
            a.try_acquire_from(&mut d, r0, 2),
            Ok(Acquire::Lost(FlagRecord {
                generation: 1,
                owner: 1
            }))
        );
        assert_eq!(
            a.try_acquire(&mut d, 1, 2),
            Ok(Acquire::Won(FlagRecord {
                generation: 2,
                owner: 2
            }))
        );
    }

    #[test]
    fn lost_reply_then_retry_is_still_a_win() {
        let mut d = mem();
        let a = Arbiter::new(0);
        let r0 = a.init(&mut d, 0).unwrap();
        d.lose_reply = true;
        assert_eq!(
            a.try_acquire_from(&mut d, r0, 5),
            Err(Error::StorageUnreachable)
        );
        assert_eq!(
            a.try_acquire_from(&mut d, r0, 5),
            Ok(Acquire::Won(FlagRecord {
                generation: 1,
                owner: 5
            }))
        );
        assert_eq!(
            a.try_acquire(&mut d, 0, 5),
            Ok(Acquire::Won(FlagRecord {
                generation: 1,
                owner: 5
            }))
        );
        assert_eq!(
            a.try_acquire(&mut d, 0, 6),
            Ok(Acquire::Lost(FlagRecord {
                generation: 1,
                owner: 5
            }))
        );
    }

    #[test]
    fn unreachable_and_corrupt_are_distinct() {
        let mut d = mem();
        let a = Arbiter::new(1);
        a.init(&mut d, 0).unwrap();
        d.down = true;
        assert_eq!(a.try_acquire(&mut d, 0, 1), Err(Error::StorageUnreachable));
        assert_eq!(a.init(&mut d, 0), Err(Error::StorageUnreachable));
        d.down = false;
        d.blocks[1][100] = 1;
        assert_eq!(
            a.try_acquire(&mut d, 0, 1),
            Err(Error::CorruptRecord("reserved bytes set"))
        );
    }
}

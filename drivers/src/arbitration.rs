//! Test-and-set arbitration on the shared LUN (DESIGN.md §1.7) with SCSI
//! COMPARE AND WRITE (SBC-3 §5.2; sense MISCOMPARE, SPC-4 §4.5.6).
//!
//! One 512-byte block at a reserved LBA holds an
//! [`ft::arbitration::FlagRecord`] in its block form
//! ([`FlagRecord::to_block`]/[`FlagRecord::from_block`]; the layout is
//! documented and pinned byte for byte in `ft::arbitration`).
//!
//! [`Arbiter::try_acquire_from`] is a single COMPARE AND WRITE of the
//! expected record against `(generation + 1, me)`: the device compares and
//! writes atomically, so of any number of racers exactly one succeeds and
//! the others get MISCOMPARE. After a MISCOMPARE the block is read to say
//! who won; if it already holds our own `(generation + 1, me)` (our earlier
//! CAW landed but its reply was lost and the command was retried after a
//! reconnect) that is our win. Transport failures are
//! [`Error::StorageUnreachable`]: nobody may go live on them.
//!
//! [`LunFlag`] is the same flag behind `ft`'s
//! [`SharedStorage`](ft::arbitration::SharedStorage), so that
//! [`ft::arbitration::arbitrate`] (with its own-win recognition) runs on a
//! real LUN.

use alloc::vec::Vec;
use core::fmt;

use ft::arbitration::{FlagRecord, NodeId, SharedStorage};
use ft::FtError;

use crate::error::{Error, Result};
use crate::iscsi::{Clock, Initiator, Transport};

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

/// A block that is not a valid flag record.
fn corrupt(e: FtError) -> Error {
    match e {
        FtError::FlagCorrupt(why) => Error::CorruptRecord(why),
        _ => Error::CorruptRecord("not a flag record"),
    }
}

/// The record a successful acquisition of `r`'s successor by `me` writes.
fn successor(r: &FlagRecord, me: NodeId) -> Result<FlagRecord> {
    r.generation
        .checked_add(1)
        .map(|g| FlagRecord::new(g, me))
        .ok_or(Error::CorruptRecord("generation exhausted"))
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
    pub fn init<D: FlagDisk + ?Sized>(&self, disk: &mut D, owner: NodeId) -> Result<FlagRecord> {
        let rec = FlagRecord::new(0, owner);
        disk.write_block(self.lba, &rec.to_block())
            .map_err(reachability)?;
        disk.flush().map_err(reachability)?;
        Ok(rec)
    }

    /// Reads and validates the record.
    pub fn read<D: FlagDisk + ?Sized>(&self, disk: &mut D) -> Result<FlagRecord> {
        FlagRecord::from_block(&disk.read_block(self.lba).map_err(reachability)?).map_err(corrupt)
    }

    /// One COMPARE AND WRITE: `expected` → `(expected.generation + 1, me)`.
    pub fn try_acquire_from<D: FlagDisk + ?Sized>(
        &self,
        disk: &mut D,
        expected: FlagRecord,
        me: NodeId,
    ) -> Result<Acquire> {
        let new = successor(&expected, me)?;
        match disk.compare_and_write(self.lba, &expected.to_block(), &new.to_block()) {
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
    /// `expected_generation`: reads the record to learn its owner, then one
    /// COMPARE AND WRITE. A flag already at our own
    /// `(expected_generation + 1, me)` is our win.
    pub fn try_acquire<D: FlagDisk + ?Sized>(
        &self,
        disk: &mut D,
        expected_generation: u64,
        me: NodeId,
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

/// Which step of a [`LunFlag`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagStep {
    /// Reading the flag block (before the COMPARE AND WRITE, or after its
    /// MISCOMPARE).
    Read,
    /// The COMPARE AND WRITE itself.
    CompareAndWrite,
}

impl fmt::Display for FlagStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagStep::Read => "reading the flag",
            FlagStep::CompareAndWrite => "COMPARE AND WRITE",
        })
    }
}

/// The flag of `arbiter` on `disk` as `ft`'s [`SharedStorage`].
///
/// [`SharedStorage::try_acquire`] reads the current record (COMPARE AND
/// WRITE compares whole blocks, so the owner must be known) and, if it
/// holds `expected_generation`, issues one COMPARE AND WRITE of it against
/// `FlagRecord::new(expected_generation + 1, me)`. It leaves the own-win
/// recognition to [`ft::arbitration::arbitrate`]. Errors map to
/// [`FtError`]: MISCOMPARE (or a stale generation) is
/// [`FtError::Miscompare`] with the record read back; a block that does
/// not parse is [`FtError::FlagCorrupt`]; every other failure (transport,
/// or a SCSI error that leaves the flag unusable) is
/// [`FtError::StorageUnreachable`]: no one may go live on it.
/// [`LunFlag::last_error`] keeps the drivers error behind the last failure.
pub struct LunFlag<'a, D: FlagDisk + ?Sized> {
    pub disk: &'a mut D,
    pub arbiter: Arbiter,
    /// The step and drivers error behind the last [`FtError`] other than a
    /// miscompare (`None` after a call that succeeded or miscompared).
    pub last_error: Option<(FlagStep, Error)>,
}

impl<'a, D: FlagDisk + ?Sized> LunFlag<'a, D> {
    pub fn new(disk: &'a mut D, arbiter: Arbiter) -> Self {
        LunFlag {
            disk,
            arbiter,
            last_error: None,
        }
    }

    /// Records `e` and maps it to `ft`'s error.
    fn fail(&mut self, step: FlagStep, e: Error) -> FtError {
        let mapped = match e {
            Error::CorruptRecord(why) => FtError::FlagCorrupt(why),
            _ => FtError::StorageUnreachable,
        };
        self.last_error = Some((step, e));
        mapped
    }

    fn read(&mut self) -> core::result::Result<FlagRecord, FtError> {
        let r = self.arbiter.read(&mut *self.disk);
        r.map_err(|e| self.fail(FlagStep::Read, e))
    }
}

impl<D: FlagDisk + ?Sized> SharedStorage for LunFlag<'_, D> {
    fn read_flag(&mut self) -> core::result::Result<FlagRecord, FtError> {
        self.last_error = None;
        self.read()
    }

    fn try_acquire(
        &mut self,
        expected_generation: u64,
        me: NodeId,
    ) -> core::result::Result<FlagRecord, FtError> {
        self.last_error = None;
        let current = self.read()?;
        if current.generation != expected_generation {
            return Err(FtError::Miscompare { current });
        }
        let new = successor(&current, me).map_err(|e| self.fail(FlagStep::CompareAndWrite, e))?;
        let lba = self.arbiter.lba;
        match self
            .disk
            .compare_and_write(lba, &current.to_block(), &new.to_block())
        {
            Ok(()) => Ok(new),
            Err(Error::Miscompare) => Err(FtError::Miscompare {
                current: self.read()?,
            }),
            Err(e) => Err(self.fail(FlagStep::CompareAndWrite, reachability(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use ft::arbitration::{arbitrate, Verdict};

    /// An in-memory disk with CAW semantics and switches to fail.
    struct Mem {
        blocks: Vec<[u8; 512]>,
        down: bool,
        /// Apply the next CAW but report ConnectionClosed (lost reply).
        lose_reply: bool,
        /// Another node's CAW lands just before ours: this block is
        /// written first (a racer between our read and our CAW).
        interloper: Option<[u8; 512]>,
        /// The next CAW fails with this error without writing.
        caw_error: Option<Error>,
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
            if let Some(e) = self.caw_error.take() {
                return Err(e);
            }
            if let Some(b) = self.interloper.take() {
                self.blocks[lba as usize] = b;
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
            interloper: None,
            caw_error: None,
        }
    }

    fn rec(generation: u64, owner: u64) -> FlagRecord {
        FlagRecord::new(generation, NodeId(owner))
    }

    #[test]
    fn init_writes_ft_block_and_corruption_is_detected() {
        let mut d = mem();
        let a = Arbiter::new(2);
        assert_eq!(a.init(&mut d, NodeId(0)), Ok(rec(0, 0)));
        assert_eq!(d.blocks[2], rec(0, 0).to_block());
        let good = d.blocks[2];
        for i in 0..512 {
            d.blocks[2] = good;
            d.blocks[2][i] ^= 0x10;
            assert!(
                matches!(a.read(&mut d), Err(Error::CorruptRecord(_))),
                "byte {i}"
            );
        }
        d.blocks[2] = [0; 512];
        assert!(a.read(&mut d).is_err(), "blank disk is not a record");
        assert_eq!(
            a.try_acquire_from(&mut d, rec(u64::MAX, 1), NodeId(2)),
            Err(Error::CorruptRecord("generation exhausted"))
        );
    }

    #[test]
    fn acquire_win_lose_and_stale() {
        let mut d = mem();
        let a = Arbiter::new(3);
        assert!(matches!(a.read(&mut d), Err(Error::CorruptRecord(_))));
        let r0 = a.init(&mut d, NodeId(0)).unwrap();
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(1)),
            Ok(Acquire::Won(rec(1, 1)))
        );
        // Node 2 with the stale generation loses and learns the winner.
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(2)),
            Ok(Acquire::Lost(rec(1, 1)))
        );
        // A raw CAW with the stale record miscompares too.
        assert_eq!(
            a.try_acquire_from(&mut d, r0, NodeId(2)),
            Ok(Acquire::Lost(rec(1, 1)))
        );
        assert_eq!(
            a.try_acquire(&mut d, 1, NodeId(2)),
            Ok(Acquire::Won(rec(2, 2)))
        );
        assert_eq!(d.blocks[3], rec(2, 2).to_block());
    }

    #[test]
    fn lost_reply_then_retry_is_still_a_win() {
        let mut d = mem();
        let a = Arbiter::new(0);
        let r0 = a.init(&mut d, NodeId(0)).unwrap();
        d.lose_reply = true;
        assert_eq!(
            a.try_acquire_from(&mut d, r0, NodeId(5)),
            Err(Error::StorageUnreachable)
        );
        assert_eq!(
            a.try_acquire_from(&mut d, r0, NodeId(5)),
            Ok(Acquire::Won(rec(1, 5)))
        );
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(5)),
            Ok(Acquire::Won(rec(1, 5)))
        );
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(6)),
            Ok(Acquire::Lost(rec(1, 5)))
        );
    }

    #[test]
    fn unreachable_and_corrupt_are_distinct() {
        let mut d = mem();
        let a = Arbiter::new(1);
        a.init(&mut d, NodeId(0)).unwrap();
        d.down = true;
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(1)),
            Err(Error::StorageUnreachable)
        );
        assert_eq!(a.init(&mut d, NodeId(0)), Err(Error::StorageUnreachable));
        d.down = false;
        d.blocks[1][100] = 1;
        assert_eq!(
            a.try_acquire(&mut d, 0, NodeId(1)),
            Err(Error::CorruptRecord("reserved bytes set"))
        );
    }

    #[test]
    fn lun_flag_is_shared_storage() {
        let mut d = mem();
        let a = Arbiter::new(1);
        a.init(&mut d, NodeId(0)).unwrap();
        let mut s = LunFlag::new(&mut d, a);
        assert_eq!(s.read_flag(), Ok(rec(0, 0)));
        assert_eq!(s.try_acquire(0, NodeId(1)), Ok(rec(1, 1)));
        assert_eq!(s.last_error, None);
        assert_eq!(s.disk.blocks[1], rec(1, 1).to_block());
        // A stale generation: the current record, nothing written.
        assert_eq!(
            s.try_acquire(0, NodeId(2)),
            Err(FtError::Miscompare { current: rec(1, 1) })
        );
        assert_eq!(s.disk.blocks[1], rec(1, 1).to_block());
        // A racer's CAW lands between our read and ours: MISCOMPARE, and
        // the record read back names the racer.
        s.disk.interloper = Some(rec(2, 3).to_block());
        assert_eq!(
            s.try_acquire(1, NodeId(2)),
            Err(FtError::Miscompare { current: rec(2, 3) })
        );
        assert_eq!(s.last_error, None);
        assert_eq!(s.read_flag(), Ok(rec(2, 3)));
    }

    #[test]
    fn lun_flag_errors_map_to_ft() {
        let mut d = mem();
        let a = Arbiter::new(0);
        let mut s = LunFlag::new(&mut d, a);
        // A blank block is corrupt, not unreachable.
        assert!(matches!(s.read_flag(), Err(FtError::FlagCorrupt(_))));
        assert!(matches!(
            s.last_error,
            Some((FlagStep::Read, Error::CorruptRecord(_)))
        ));
        a.init(&mut *s.disk, NodeId(0)).unwrap();
        s.disk.down = true;
        assert_eq!(s.read_flag(), Err(FtError::StorageUnreachable));
        assert_eq!(
            s.try_acquire(0, NodeId(1)),
            Err(FtError::StorageUnreachable)
        );
        assert_eq!(
            s.last_error,
            Some((FlagStep::Read, Error::StorageUnreachable))
        );
        s.disk.down = false;
        // A SCSI error on the CAW leaves the flag unusable: unreachable.
        let scsi = Error::Scsi {
            status: 0x08,
            sense: None,
        };
        s.disk.caw_error = Some(scsi.clone());
        assert_eq!(
            s.try_acquire(0, NodeId(1)),
            Err(FtError::StorageUnreachable)
        );
        assert_eq!(s.last_error, Some((FlagStep::CompareAndWrite, scsi)));
        assert_eq!(s.read_flag(), Ok(rec(0, 0)));
        assert_eq!(s.last_error, None);
        s.disk.blocks[0] = rec(u64::MAX, 1).to_block();
        assert_eq!(
            s.try_acquire(u64::MAX, NodeId(2)),
            Err(FtError::FlagCorrupt("generation exhausted"))
        );
    }

    /// `ft::arbitration::arbitrate` over a LUN: one winner, the loser
    /// learns it, a lost reply is still the sender's win, an unreachable
    /// LUN lets no one go live.
    #[test]
    fn arbitrate_over_lun_flag() {
        let mut d = mem();
        let a = Arbiter::new(0);
        a.init(&mut d, NodeId(0)).unwrap();
        d.lose_reply = true;
        let mut s = LunFlag::new(&mut d, a);
        assert_eq!(
            s.try_acquire(0, NodeId(2)),
            Err(FtError::StorageUnreachable)
        );
        assert_eq!(
            s.last_error,
            Some((FlagStep::CompareAndWrite, Error::StorageUnreachable))
        );
        // The CAW landed: retrying from generation 0 is node 2's win.
        assert_eq!(arbitrate(&mut s, 0, NodeId(2)), Verdict::Won(rec(1, 2)));
        assert_eq!(arbitrate(&mut s, 0, NodeId(1)), Verdict::Lost(rec(1, 2)));
        assert_eq!(arbitrate(&mut s, 1, NodeId(1)), Verdict::Won(rec(2, 1)));
        assert_eq!(s.disk.blocks[0], rec(2, 1).to_block());
        s.disk.down = true;
        assert_eq!(arbitrate(&mut s, 2, NodeId(2)), Verdict::Unreachable);
    }
}

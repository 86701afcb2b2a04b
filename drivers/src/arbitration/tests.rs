//! Arbitration over a fake disk: the flag's COMPARE AND WRITE and
//! `LunFlag` as `ft`'s `SharedStorage`.

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

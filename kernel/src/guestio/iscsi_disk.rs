//! `disk=iscsi`: the guest's virtio-blk on a region of the shared iSCSI LUN
//! (DESIGN.md §1.7: the same LUN holds the go-live flag).
//!
//! The LUN's first [`RESERVED_BLOCKS`] blocks (the test-and-set flag at LBA
//! 0 and room for more arbitration records) are never given to the guest:
//! guest sector *s* is LUN block [`RESERVED_BLOCKS`] + *s* (512-byte LUN
//! blocks; the backend refuses other block sizes rather than translate).
//!
//! Requests are queued by [`BlockBackend::submit`] and carried out at the
//! next [`BlockBackend::poll`] (a later run-loop iteration): WRITE(16),
//! READ(16) and SYNCHRONIZE CACHE(16) (SBC-3 §5.40, §5.16, §5.26), each
//! completed to the guest only once the target answered with GOOD status.
//! A failed command completes with `IOERR`; nothing is reported written
//! that the target did not acknowledge. The initiator blocks per command
//! (polling the network meanwhile), so `poll` bounds how much it carries
//! out per call ([`IscsiDisk::BUDGET`]) to keep the guest running.
//!
//! Fencing (DESIGN.md §1.7, SPC-4 persistent reservations): an FT node
//! uses this very session for its flag and its reservation
//! ([`BlockBackend::shared_lun`]: one I_T nexus per node, so that one
//! PREEMPT cuts all of it off); once the peer preempted its key, a command
//! fails with RESERVATION CONFLICT: the request completes `IOERR`, the
//! backend is [`BlockBackend::fenced`] and carries out nothing more (the
//! node halts the guest for good).
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::arbitration::FlagDisk;
use drivers::iscsi::{Clock, Initiator, Transport};

use super::disk::{BlockBackend, BlockRequest, DiskStats};
use crate::devices::virtio::blk::SECTOR_SIZE;
use crate::devices::virtio::{BlockStatus, GuestInput};

/// LUN blocks reserved for arbitration before the guest's region.
pub const RESERVED_BLOCKS: u64 = 8;

/// Why a LUN command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunError {
    /// RESERVATION CONFLICT: this nexus's key was preempted (fenced).
    Fenced(String),
    /// Anything else (transport, sense data).
    Failed(String),
}

impl LunError {
    fn text(self) -> String {
        match self {
            LunError::Fenced(s) | LunError::Failed(s) => s,
        }
    }
}

/// What the backend needs of a LUN (an iSCSI session; a fake in tests).
pub trait Lun {
    fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>, LunError>;
    fn write(&mut self, lba: u64, data: Vec<u8>) -> Result<(), LunError>;
    fn flush(&mut self) -> Result<(), LunError>;
    /// The same session for the flag and persistent reservations (`None`:
    /// a LUN that has none, e.g. a fake).
    fn flag_disk(&mut self) -> Option<&mut dyn FlagDisk> {
        None
    }
}

fn lun_error(what: String, e: drivers::Error) -> LunError {
    let text = alloc::format!("{what}: {e}");
    match e {
        drivers::Error::ReservationConflict => LunError::Fenced(text),
        _ => LunError::Failed(text),
    }
}

impl<T: Transport, C: Clock> Lun for Initiator<T, C> {
    fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>, LunError> {
        self.read16(lba, blocks)
            .map_err(|e| lun_error(alloc::format!("READ(16) lba {lba}"), e))
    }
    fn write(&mut self, lba: u64, data: Vec<u8>) -> Result<(), LunError> {
        self.write16(lba, data)
            .map_err(|e| lun_error(alloc::format!("WRITE(16) lba {lba}"), e))
    }
    fn flush(&mut self) -> Result<(), LunError> {
        self.synchronize_cache()
            .map_err(|e| lun_error("SYNCHRONIZE CACHE(16)".into(), e))
    }
    fn flag_disk(&mut self) -> Option<&mut dyn FlagDisk> {
        Some(self)
    }
}

/// The guest's disk on LUN blocks `[RESERVED_BLOCKS, RESERVED_BLOCKS +
/// capacity)`.
pub struct IscsiDisk<L: Lun> {
    lun: L,
    capacity: u64,
    queued: VecDeque<BlockRequest>,
    stats: DiskStats,
    describe: String,
    /// The last command error, for the log.
    pub last_error: Option<String>,
    /// A command met RESERVATION CONFLICT: this node is fenced.
    fenced: bool,
}

impl<L: Lun> IscsiDisk<L> {
    /// Requests carried out per [`BlockBackend::poll`].
    pub const BUDGET: usize = 4;

    /// A disk of `capacity` sectors over `lun` (whose blocks must be 512
    /// bytes); `what` names the LUN in the log.
    pub fn new(lun: L, capacity: u64, what: String) -> Self {
        IscsiDisk {
            lun,
            capacity,
            queued: VecDeque::new(),
            stats: DiskStats::default(),
            describe: what,
            last_error: None,
            fenced: false,
        }
    }

    /// Guest sectors of a LUN with `lun_blocks` blocks.
    pub fn capacity_for(lun_blocks: u64) -> u64 {
        lun_blocks.saturating_sub(RESERVED_BLOCKS)
    }

    /// The LUN block of guest `sector` for `len` bytes, if the whole
    /// request lies inside the region and is whole sectors.
    fn lba(&self, sector: u64, len: u64) -> Option<(u64, u32)> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let n = len / SECTOR_SIZE;
        let end = sector.checked_add(n)?;
        (end <= self.capacity && n <= u64::from(u32::MAX))
            .then_some((RESERVED_BLOCKS + sector, n as u32))
    }

    fn carry_out(&mut self, req: BlockRequest) -> GuestInput {
        let id = req.id();
        let r: Result<Vec<u8>, LunError> = match req {
            BlockRequest::Read { sector, len, .. } => {
                self.stats.reads += 1;
                match self.lba(sector, u64::from(len)) {
                    Some((_, 0)) => Ok(Vec::new()),
                    Some((lba, n)) => self.lun.read(lba, n).inspect(|d| {
                        self.stats.bytes_read += d.len() as u64;
                    }),
                    None => Err(LunError::Failed(alloc::format!(
                        "read outside the disk at sector {sector}"
                    ))),
                }
            }
            BlockRequest::Write { sector, data, .. } => {
                self.stats.writes += 1;
                let len = data.len() as u64;
                match self.lba(sector, len) {
                    Some((_, 0)) => Ok(Vec::new()),
                    Some((lba, _)) => self.lun.write(lba, data).map(|()| {
                        self.stats.bytes_written += len;
                        Vec::new()
                    }),
                    None => Err(LunError::Failed(alloc::format!(
                        "write outside the disk at sector {sector}"
                    ))),
                }
            }
            BlockRequest::Flush { .. } => {
                self.stats.flushes += 1;
                self.lun.flush().map(|()| Vec::new())
            }
        };
        match r {
            Ok(data) => GuestInput::BlockDone {
                id,
                status: BlockStatus::Ok,
                data,
            },
            Err(e) => {
                self.stats.errors += 1;
                self.fenced |= matches!(e, LunError::Fenced(_));
                self.last_error = Some(e.text());
                GuestInput::BlockDone {
                    id,
                    status: BlockStatus::IoErr,
                    data: Vec::new(),
                }
            }
        }
    }
}

impl<L: Lun> BlockBackend for IscsiDisk<L> {
    fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    fn submit(&mut self, req: BlockRequest) {
        self.queued.push_back(req);
    }

    fn poll(&mut self, done: &mut Vec<GuestInput>) {
        for _ in 0..Self::BUDGET {
            if self.fenced {
                // Nothing more reaches the LUN from a fenced node.
                break;
            }
            let Some(req) = self.queued.pop_front() else {
                break;
            };
            let d = self.carry_out(req);
            done.push(d);
        }
    }

    fn in_flight(&self) -> usize {
        self.queued.len()
    }

    fn stats(&self) -> DiskStats {
        self.stats
    }

    fn fenced(&self) -> bool {
        self.fenced
    }

    fn shared_lun(&mut self) -> Option<&mut dyn FlagDisk> {
        self.lun.flag_disk()
    }

    fn describe(&self) -> String {
        alloc::format!(
            "iSCSI {}, {} KiB from LUN block {RESERVED_BLOCKS} (blocks 0..{RESERVED_BLOCKS} reserved for arbitration)",
            self.describe,
            (self.capacity * SECTOR_SIZE) >> 10
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A LUN in memory that can be told to fail.
    struct FakeLun {
        blocks: Vec<u8>,
        /// `Some(false)`: the target is gone; `Some(true)`: this node is
        /// fenced (RESERVATION CONFLICT).
        fail: Option<bool>,
        flushes: u32,
        log: Vec<(char, u64)>,
    }

    impl FakeLun {
        fn check(&self) -> Result<(), LunError> {
            match self.fail {
                Some(true) => Err(LunError::Fenced("RESERVATION CONFLICT".into())),
                Some(false) => Err(LunError::Failed("target gone".into())),
                None => Ok(()),
            }
        }
    }

    impl Lun for FakeLun {
        fn read(&mut self, lba: u64, n: u32) -> Result<Vec<u8>, LunError> {
            self.log.push(('r', lba));
            self.check()?;
            let s = lba as usize * 512;
            Ok(self.blocks[s..s + n as usize * 512].to_vec())
        }
        fn write(&mut self, lba: u64, data: Vec<u8>) -> Result<(), LunError> {
            self.log.push(('w', lba));
            self.check()?;
            let s = lba as usize * 512;
            self.blocks[s..s + data.len()].copy_from_slice(&data);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), LunError> {
            self.flushes += 1;
            self.check()
        }
    }

    fn disk(lun_blocks: u64) -> IscsiDisk<FakeLun> {
        let lun = FakeLun {
            blocks: vec![0; lun_blocks as usize * 512],
            fail: None,
            flushes: 0,
            log: Vec::new(),
        };
        IscsiDisk::new(
            lun,
            IscsiDisk::<FakeLun>::capacity_for(lun_blocks),
            "t".into(),
        )
    }

    fn status(d: &GuestInput) -> (u64, BlockStatus, usize) {
        match d {
            GuestInput::BlockDone { id, status, data } => (*id, *status, data.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn region_is_offset_past_the_arbitration_blocks() {
        let mut d = disk(64);
        assert_eq!(d.capacity_sectors(), 56);
        d.submit(BlockRequest::Write {
            id: 1,
            sector: 0,
            data: vec![0xAB; 1024],
        });
        // Nothing happens at submit: completion comes from a later poll.
        assert_eq!(d.in_flight(), 1);
        assert!(d.lun.log.is_empty());
        let mut done = Vec::new();
        d.poll(&mut done);
        assert_eq!(status(&done[0]), (1, BlockStatus::Ok, 0));
        assert_eq!(d.lun.log, [('w', RESERVED_BLOCKS)]);
        assert!(d.lun.blocks[..RESERVED_BLOCKS as usize * 512]
            .iter()
            .all(|b| *b == 0));
        d.submit(BlockRequest::Read {
            id: 2,
            sector: 1,
            len: 512,
        });
        d.submit(BlockRequest::Flush { id: 3 });
        done.clear();
        d.poll(&mut done);
        assert_eq!(status(&done[0]), (2, BlockStatus::Ok, 512));
        assert_eq!(status(&done[1]), (3, BlockStatus::Ok, 0));
        assert_eq!(d.lun.flushes, 1);
        let s = d.stats();
        assert_eq!(
            (s.reads, s.writes, s.flushes, s.bytes_written),
            (1, 1, 1, 1024)
        );
    }

    #[test]
    fn out_of_range_and_failures_are_ioerr_never_acknowledged() {
        let mut d = disk(16);
        d.submit(BlockRequest::Read {
            id: 1,
            sector: 8,
            len: 512,
        });
        d.submit(BlockRequest::Write {
            id: 2,
            sector: 7,
            data: vec![1; 1024],
        });
        d.submit(BlockRequest::Write {
            id: 3,
            sector: u64::MAX,
            data: vec![1; 512],
        });
        let mut done = Vec::new();
        d.poll(&mut done);
        for (i, x) in done.iter().enumerate() {
            assert_eq!(status(x), (i as u64 + 1, BlockStatus::IoErr, 0));
        }
        assert!(
            d.lun.log.is_empty(),
            "nothing outside the region reached the LUN"
        );
        d.lun.fail = Some(false);
        d.submit(BlockRequest::Write {
            id: 4,
            sector: 0,
            data: vec![1; 512],
        });
        d.submit(BlockRequest::Flush { id: 5 });
        done.clear();
        d.poll(&mut done);
        assert_eq!(status(&done[0]), (4, BlockStatus::IoErr, 0));
        assert_eq!(status(&done[1]), (5, BlockStatus::IoErr, 0));
        assert_eq!(d.stats().errors, 5);
        assert!(d.last_error.as_deref().unwrap().contains("target gone"));
        assert!(!d.fenced(), "a target outage is not a fence");
    }

    #[test]
    fn a_fenced_node_stops_writing() {
        let mut d = disk(64);
        d.lun.fail = Some(true);
        for id in 1..=3 {
            d.submit(BlockRequest::Write {
                id,
                sector: id,
                data: vec![7; 512],
            });
        }
        let mut done = Vec::new();
        d.poll(&mut done);
        assert_eq!(done.len(), 1, "nothing after the conflict");
        assert_eq!(status(&done[0]), (1, BlockStatus::IoErr, 0));
        assert!(d.fenced());
        assert!(d
            .last_error
            .as_deref()
            .unwrap()
            .contains("RESERVATION CONFLICT"));
        // Even with the LUN answering again, the rest never goes out.
        d.lun.fail = None;
        d.poll(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.lun.log, [('w', RESERVED_BLOCKS + 1)]);
        assert!(d.shared_lun().is_none(), "the fake has no reservations");
    }

    #[test]
    fn poll_is_bounded() {
        let mut d = disk(64);
        for id in 0..10 {
            d.submit(BlockRequest::Flush { id });
        }
        let mut done = Vec::new();
        d.poll(&mut done);
        assert_eq!(done.len(), IscsiDisk::<FakeLun>::BUDGET);
        assert_eq!(d.in_flight(), 10 - IscsiDisk::<FakeLun>::BUDGET);
    }
}

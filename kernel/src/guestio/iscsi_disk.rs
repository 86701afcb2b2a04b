//! `disk=iscsi`: the guest's virtio-blk on a region of the shared iSCSI LUN
//! (DESIGN.md §1.7: the same LUN holds the go-live flag).
//!
//! The LUN's first [`RESERVED_BLOCKS`] blocks (the test-and-set flag at LBA
//! 0 and room for more arbitration records) are never given to the guest:
//! guest sector *s* is LUN block [`RESERVED_BLOCKS`] + *s* (512-byte LUN
//! blocks; the backend refuses other block sizes rather than translate).
//!
//! Requests are queued by [`BlockBackend::submit`] and started at the next
//! [`BlockBackend::poll`] (a later run-loop iteration): WRITE(16),
//! READ(16) and SYNCHRONIZE CACHE(16) (SBC-3 §5.40, §5.16, §5.26), each
//! completed to the guest only once the target answered with GOOD status.
//! A failed command completes with `IOERR`; nothing is reported written
//! that the target did not acknowledge.
//!
//! Asynchronous (issue 14): `poll` never waits for the target. It starts
//! up to [`IscsiDisk::WINDOW`] commands, moves the session along once
//! ([`Lun::pump`]: send, receive, reconnect without blocking) and
//! completes what finished; a slow or unreachable target only leaves
//! requests in flight, while the run loop goes on with the FT log's
//! heartbeats, acks and failure detection.
//!
//! Fencing (DESIGN.md §1.7, SPC-4 persistent reservations): an FT node
//! uses this very session for its flag and its reservation
//! ([`BlockBackend::shared_lun`]: one I_T nexus per node, so that one
//! PREEMPT cuts all of it off); once the peer preempted its key, a command
//! fails with RESERVATION CONFLICT: the request completes `IOERR`, the
//! backend is [`BlockBackend::fenced`] and starts nothing more (the node
//! halts the guest for good).
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::arbitration::FlagDisk;
use drivers::iscsi::{Clock, Initiator, TaskId, Transport};

use super::disk::{BlockBackend, BlockRequest, DiskStats};
use crate::devices::virtio::blk::SECTOR_SIZE;
use crate::devices::virtio::{BlockStatus, GuestInput};

/// LUN blocks reserved for arbitration before the guest's region.
pub const RESERVED_BLOCKS: u64 = 8;

/// One command for the LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunOp {
    Read { lba: u64, blocks: u32 },
    Write { lba: u64, data: Vec<u8> },
    Flush,
}

impl LunOp {
    fn describe(&self) -> String {
        match self {
            LunOp::Read { lba, .. } => alloc::format!("READ(16) lba {lba}"),
            LunOp::Write { lba, .. } => alloc::format!("WRITE(16) lba {lba}"),
            LunOp::Flush => "SYNCHRONIZE CACHE(16)".into(),
        }
    }
}

/// What finished: the handle [`Lun::start`] gave and the outcome (the data
/// read, empty for the others).
pub type LunDone = (TaskId, Result<Vec<u8>, drivers::Error>);

/// What the backend needs of a LUN (an iSCSI session; a fake in tests):
/// commands started without waiting, and a pump that never blocks.
pub trait Lun {
    /// Starts `op`; its outcome comes out of [`Lun::pump`] under the
    /// handle returned.
    fn start(&mut self, op: LunOp) -> Result<TaskId, drivers::Error>;
    /// Moves the I/O along without waiting; appends what finished.
    fn pump(&mut self, done: &mut Vec<LunDone>);
    /// The same session for the flag and persistent reservations (`None`:
    /// a LUN that has none, e.g. a fake).
    fn flag_disk(&mut self) -> Option<&mut dyn FlagDisk> {
        None
    }
}

impl<T: Transport, C: Clock> Lun for Initiator<T, C> {
    fn start(&mut self, op: LunOp) -> Result<TaskId, drivers::Error> {
        match op {
            LunOp::Read { lba, blocks } => self.start_read16(lba, blocks),
            LunOp::Write { lba, data } => self.start_write16(lba, data),
            LunOp::Flush => self.start_synchronize_cache(),
        }
    }
    fn pump(&mut self, done: &mut Vec<LunDone>) {
        Initiator::pump(self);
        while let Some(f) = self.finished() {
            done.push(f);
        }
    }
    fn flag_disk(&mut self) -> Option<&mut dyn FlagDisk> {
        Some(self)
    }
}

/// A request started on the LUN.
struct InFlight {
    handle: TaskId,
    id: u64,
    what: String,
    /// Bytes a read must return; bytes a write carries.
    len: u64,
    read: bool,
}

/// The guest's disk on LUN blocks `[RESERVED_BLOCKS, RESERVED_BLOCKS +
/// capacity)`.
pub struct IscsiDisk<L: Lun> {
    lun: L,
    capacity: u64,
    queued: VecDeque<BlockRequest>,
    started: Vec<InFlight>,
    stats: DiskStats,
    describe: String,
    /// The last command error, for the log.
    pub last_error: Option<String>,
    /// A command met RESERVATION CONFLICT: this node is fenced.
    fenced: bool,
}

impl<L: Lun> IscsiDisk<L> {
    /// Commands in flight on the LUN at most.
    pub const WINDOW: usize = 16;

    /// A disk of `capacity` sectors over `lun` (whose blocks must be 512
    /// bytes); `what` names the LUN in the log.
    pub fn new(lun: L, capacity: u64, what: String) -> Self {
        IscsiDisk {
            lun,
            capacity,
            queued: VecDeque::new(),
            started: Vec::new(),
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

    /// Starts `req` on the LUN, or completes it at once (empty, outside
    /// the region, refused by the session) into `done`.
    fn start(&mut self, req: BlockRequest, done: &mut Vec<GuestInput>) {
        let id = req.id();
        let (op, len, read) = match req {
            BlockRequest::Read { sector, len, .. } => {
                self.stats.reads += 1;
                match self.lba(sector, u64::from(len)) {
                    Some((_, 0)) => return done.push(Self::ok(id, Vec::new())),
                    Some((lba, blocks)) => (LunOp::Read { lba, blocks }, u64::from(len), true),
                    None => {
                        let e = alloc::format!("read outside the disk at sector {sector}");
                        return done.push(self.failed(id, e, false));
                    }
                }
            }
            BlockRequest::Write { sector, data, .. } => {
                self.stats.writes += 1;
                let len = data.len() as u64;
                match self.lba(sector, len) {
                    Some((_, 0)) => return done.push(Self::ok(id, Vec::new())),
                    Some((lba, _)) => (LunOp::Write { lba, data }, len, false),
                    None => {
                        let e = alloc::format!("write outside the disk at sector {sector}");
                        return done.push(self.failed(id, e, false));
                    }
                }
            }
            BlockRequest::Flush { .. } => {
                self.stats.flushes += 1;
                (LunOp::Flush, 0, false)
            }
        };
        let what = op.describe();
        match self.lun.start(op) {
            Ok(handle) => self.started.push(InFlight {
                handle,
                id,
                what,
                len,
                read,
            }),
            Err(e) => {
                let d = self.refused(id, &what, e);
                done.push(d);
            }
        }
    }

    /// `handle` finished with `r`: the guest's completion.
    fn finish(&mut self, handle: TaskId, r: Result<Vec<u8>, drivers::Error>) -> Option<GuestInput> {
        let i = self.started.iter().position(|f| f.handle == handle)?;
        let f = self.started.swap_remove(i);
        Some(match r {
            Ok(data) if f.read && data.len() as u64 != f.len => {
                let e = alloc::format!("{}: {} bytes back, {} asked", f.what, data.len(), f.len);
                self.failed(f.id, e, false)
            }
            Ok(data) if f.read => {
                self.stats.bytes_read += f.len;
                Self::ok(f.id, data)
            }
            Ok(_) => {
                self.stats.bytes_written += f.len;
                Self::ok(f.id, Vec::new())
            }
            Err(e) => self.refused(f.id, &f.what, e),
        })
    }

    fn ok(id: u64, data: Vec<u8>) -> GuestInput {
        GuestInput::BlockDone {
            id,
            status: BlockStatus::Ok,
            data,
        }
    }

    /// The LUN refused request `id` (`what`) with `e`; RESERVATION
    /// CONFLICT means this node was fenced.
    fn refused(&mut self, id: u64, what: &str, e: drivers::Error) -> GuestInput {
        let fenced = e == drivers::Error::ReservationConflict;
        self.failed(id, alloc::format!("{what}: {e}"), fenced)
    }

    fn failed(&mut self, id: u64, why: String, fenced: bool) -> GuestInput {
        self.stats.errors += 1;
        self.fenced |= fenced;
        self.last_error = Some(why);
        GuestInput::BlockDone {
            id,
            status: BlockStatus::IoErr,
            data: Vec::new(),
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
        // Nothing more reaches the LUN from a fenced node.
        while !self.fenced && self.started.len() < Self::WINDOW {
            let Some(req) = self.queued.pop_front() else {
                break;
            };
            self.start(req, done);
        }
        let mut finished = Vec::new();
        self.lun.pump(&mut finished);
        for (handle, r) in finished {
            if let Some(d) = self.finish(handle, r) {
                done.push(d);
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.started.len()
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

    /// A LUN in memory that can be told to fail or to hold its answers.
    struct FakeLun {
        blocks: Vec<u8>,
        /// `Some(false)`: the target is gone; `Some(true)`: this node is
        /// fenced (RESERVATION CONFLICT).
        fail: Option<bool>,
        /// Answers nothing while set (a slow or unreachable target).
        hold: bool,
        flushes: u32,
        /// Commands as they reached the target ('r', 'w', 'f'; LBA).
        log: Vec<(char, u64)>,
        started: Vec<(TaskId, LunOp)>,
        next: u64,
    }

    impl Lun for FakeLun {
        fn start(&mut self, op: LunOp) -> Result<TaskId, drivers::Error> {
            self.next += 1;
            self.started.push((TaskId(self.next), op));
            Ok(TaskId(self.next))
        }
        fn pump(&mut self, done: &mut Vec<LunDone>) {
            if self.hold {
                return;
            }
            for (h, op) in core::mem::take(&mut self.started) {
                let r = match self.fail {
                    Some(true) => Err(drivers::Error::ReservationConflict),
                    Some(false) => Err(drivers::Error::StorageUnreachable),
                    None => Ok(()),
                };
                let r = r.map(|()| match op {
                    LunOp::Read { lba, blocks } => {
                        self.log.push(('r', lba));
                        let s = lba as usize * 512;
                        self.blocks[s..s + blocks as usize * 512].to_vec()
                    }
                    LunOp::Write { lba, data } => {
                        self.log.push(('w', lba));
                        let s = lba as usize * 512;
                        self.blocks[s..s + data.len()].copy_from_slice(&data);
                        Vec::new()
                    }
                    LunOp::Flush => {
                        self.log.push(('f', 0));
                        self.flushes += 1;
                        Vec::new()
                    }
                });
                done.push((h, r));
            }
        }
    }

    fn disk(lun_blocks: u64) -> IscsiDisk<FakeLun> {
        let lun = FakeLun {
            blocks: vec![0; lun_blocks as usize * 512],
            fail: None,
            hold: false,
            flushes: 0,
            log: Vec::new(),
            started: Vec::new(),
            next: 0,
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
        assert!(d.lun.started.is_empty());
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
            (s.reads, s.writes, s.flushes, s.bytes_written, s.bytes_read),
            (1, 1, 1, 1024, 512)
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
            d.lun.started.is_empty() && d.lun.log.is_empty(),
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
        let e = d.last_error.as_deref().unwrap();
        assert!(
            e.contains("SYNCHRONIZE CACHE") && e.contains("unreachable"),
            "{e}"
        );
        assert!(!d.fenced(), "a target outage is not a fence");
    }

    #[test]
    fn a_fenced_node_stops_writing() {
        let mut d = disk(64);
        d.lun.fail = Some(true);
        d.submit(BlockRequest::Write {
            id: 1,
            sector: 1,
            data: vec![7; 512],
        });
        let mut done = Vec::new();
        d.poll(&mut done);
        assert_eq!(status(&done[0]), (1, BlockStatus::IoErr, 0));
        assert!(d.fenced());
        let e = d.last_error.as_deref().unwrap();
        assert!(
            e.contains("WRITE(16) lba 9") && e.contains("RESERVATION CONFLICT"),
            "{e}"
        );
        // Even with the LUN answering again, nothing more goes out.
        d.lun.fail = None;
        for id in 2..=3 {
            d.submit(BlockRequest::Write {
                id,
                sector: id,
                data: vec![7; 512],
            });
        }
        d.poll(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(d.in_flight(), 2);
        assert!(d.lun.started.is_empty() && d.lun.log.is_empty());
        assert!(d.shared_lun().is_none(), "the fake has no reservations");
    }

    /// Issue 14: a target that does not answer never holds up `poll`; the
    /// requests stay in flight (at most WINDOW on the LUN) and complete
    /// once it answers.
    #[test]
    fn a_silent_target_leaves_requests_in_flight_without_blocking() {
        let mut d = disk(64);
        d.lun.hold = true;
        for id in 0..20 {
            d.submit(BlockRequest::Write {
                id,
                sector: id,
                data: vec![id as u8; 512],
            });
        }
        let mut done = Vec::new();
        for _ in 0..3 {
            d.poll(&mut done);
        }
        assert!(done.is_empty());
        assert_eq!(d.lun.started.len(), IscsiDisk::<FakeLun>::WINDOW);
        assert_eq!(d.in_flight(), 20);
        d.lun.hold = false;
        while d.in_flight() > 0 {
            d.poll(&mut done);
        }
        let mut ids: Vec<u64> = done.iter().map(|x| status(x).0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..20).collect::<Vec<_>>());
        assert!(done.iter().all(|x| status(x).1 == BlockStatus::Ok));
        assert_eq!(d.lun.blocks[(RESERVED_BLOCKS as usize + 19) * 512], 19);
    }

    #[test]
    fn a_short_read_is_an_error() {
        let mut d = disk(64);
        d.submit(BlockRequest::Read {
            id: 1,
            sector: 0,
            len: 1024,
        });
        let mut done = Vec::new();
        let req = d.queued.pop_front().unwrap();
        d.start(req, &mut done);
        let h = d.started[0].handle;
        assert_eq!(
            status(&d.finish(h, Ok(vec![0; 512])).unwrap()),
            (1, BlockStatus::IoErr, 0)
        );
        assert!(d.last_error.as_deref().unwrap().contains("512 bytes back"));
    }
}

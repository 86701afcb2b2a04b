//! Block backends behind the guest's virtio-blk (virtio 1.2 §5.2.6): what
//! carries out the `IN`/`OUT`/`FLUSH` requests the device model emits as
//! [`GuestOutput`]s, and hands back their completions as
//! [`GuestInput::BlockDone`].
//!
//! [`BlockBackend`] is the seam: today [`RamDisk`] (a disk in hypervisor
//! RAM); the shared iSCSI LUN (`drivers::iscsi`, DESIGN.md §1.7) replaces it
//! once the kernel has a network path to the target. A backend never
//! completes a request inside [`BlockBackend::submit`]: completions come out
//! of [`BlockBackend::poll`], which the run loop calls at a later iteration,
//! as a real disk's would.
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::devices::virtio::blk::SECTOR_SIZE;
use crate::devices::virtio::{BlockStatus, GuestInput, GuestOutput};

/// A block request as the backend sees it (the block variants of
/// [`GuestOutput`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    /// Read `len` bytes at `sector`.
    Read { id: u64, sector: u64, len: u32 },
    /// Write `data` at `sector`.
    Write { id: u64, sector: u64, data: Vec<u8> },
    /// Make completed writes durable.
    Flush { id: u64 },
}

impl BlockRequest {
    /// The block request in `out`, or `out` back when it is not one.
    pub fn from_output(out: GuestOutput) -> Result<Self, GuestOutput> {
        match out {
            GuestOutput::BlockRead { id, sector, len } => Ok(Self::Read { id, sector, len }),
            GuestOutput::BlockWrite { id, sector, data } => Ok(Self::Write { id, sector, data }),
            GuestOutput::BlockFlush { id } => Ok(Self::Flush { id }),
            other => Err(other),
        }
    }

    /// The request id the completion must echo.
    pub fn id(&self) -> u64 {
        match self {
            Self::Read { id, .. } | Self::Write { id, .. } | Self::Flush { id } => *id,
        }
    }
}

/// Counters of a block backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests completed with an error status.
    pub errors: u64,
}

/// Where the guest's disk requests go.
pub trait BlockBackend {
    /// Size in 512-byte sectors (the virtio-blk `capacity`).
    fn capacity_sectors(&self) -> u64;
    /// Start a request; its completion comes out of a later
    /// [`BlockBackend::poll`].
    fn submit(&mut self, req: BlockRequest);
    /// Append the completions that are ready to `done`.
    fn poll(&mut self, done: &mut Vec<GuestInput>);
    /// Requests submitted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;
    /// Counters.
    fn stats(&self) -> DiskStats;
    /// One line for the hypervisor's log.
    fn describe(&self) -> String;
    /// Whether the shared disk refused this node (RESERVATION CONFLICT:
    /// another node preempted its key, DESIGN.md §1.7 fencing).
    fn fenced(&self) -> bool {
        false
    }
    /// A disk shared with the FT peer: its session, for the flag and the
    /// reservation (one I_T nexus per node). A disk in this hypervisor's
    /// RAM is nobody else's: `None`.
    fn shared_lun(&mut self) -> Option<&mut dyn drivers::arbitration::FlagDisk> {
        None
    }
}

/// A disk held in hypervisor RAM, zeroed at boot (`disk=ram:<size>`), or a
/// zero-capacity stand-in (`disk=none`). Requests take effect when
/// submitted and complete at the next [`BlockBackend::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamDisk {
    bytes: Vec<u8>,
    done: VecDeque<GuestInput>,
    stats: DiskStats,
}

impl RamDisk {
    /// A zeroed disk of `bytes` bytes (rounded down to whole sectors).
    pub fn new(bytes: u64) -> Self {
        let len = (bytes - bytes % SECTOR_SIZE) as usize;
        Self {
            bytes: vec![0; len],
            done: VecDeque::new(),
            stats: DiskStats::default(),
        }
    }

    /// The disk's contents.
    pub fn contents(&self) -> &[u8] {
        &self.bytes
    }

    /// Byte range of `len` bytes at `sector`, if inside the disk.
    fn span(&self, sector: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(sector.checked_mul(SECTOR_SIZE)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    fn finish(&mut self, id: u64, status: BlockStatus, data: Vec<u8>) {
        if status != BlockStatus::Ok {
            self.stats.errors += 1;
        }
        self.done
            .push_back(GuestInput::BlockDone { id, status, data });
    }
}

impl BlockBackend for RamDisk {
    fn capacity_sectors(&self) -> u64 {
        self.bytes.len() as u64 / SECTOR_SIZE
    }

    fn submit(&mut self, req: BlockRequest) {
        match req {
            BlockRequest::Read { id, sector, len } => {
                self.stats.reads += 1;
                match self.span(sector, len as usize) {
                    Some(r) => {
                        self.stats.bytes_read += u64::from(len);
                        let data = self.bytes[r].to_vec();
                        self.finish(id, BlockStatus::Ok, data);
                    }
                    None => self.finish(id, BlockStatus::IoErr, Vec::new()),
                }
            }
            BlockRequest::Write { id, sector, data } => {
                self.stats.writes += 1;
                match self.span(sector, data.len()) {
                    Some(r) => {
                        self.stats.bytes_written += data.len() as u64;
                        self.bytes[r].copy_from_slice(&data);
                        self.finish(id, BlockStatus::Ok, Vec::new());
                    }
                    None => self.finish(id, BlockStatus::IoErr, Vec::new()),
                }
            }
            BlockRequest::Flush { id } => {
                // RAM is as durable as this disk gets.
                self.stats.flushes += 1;
                self.finish(id, BlockStatus::Ok, Vec::new());
            }
        }
    }

    fn poll(&mut self, done: &mut Vec<GuestInput>) {
        done.extend(self.done.drain(..));
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn stats(&self) -> DiskStats {
        self.stats
    }

    fn describe(&self) -> String {
        if self.bytes.is_empty() {
            "none (capacity 0; every request fails)".into()
        } else {
            alloc::format!(
                "RAM disk, {} KiB in hypervisor memory (not shared, not persistent)",
                self.bytes.len() >> 10
            )
        }
    }
}

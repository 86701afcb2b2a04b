//! The virtio block device (virtio 1.2 §5.2), one request queue.
//!
//! Offered features: `VIRTIO_BLK_F_SIZE_MAX`, `VIRTIO_BLK_F_SEG_MAX`,
//! `VIRTIO_BLK_F_BLK_SIZE` (512) and `VIRTIO_BLK_F_FLUSH` (§5.2.3).
//! Configuration space (§5.2.4): `capacity` (512-byte sectors), `size_max`,
//! `seg_max`, an all-zero `geometry`, `blk_size`.
//!
//! A request (§5.2.6) is read as two byte streams, independent of how the
//! driver split it into descriptors (§2.7.4 message framing): the readable
//! stream is the 16-byte header `{type: le32, reserved: le32, sector: le64}`
//! followed by `OUT` data; the writable stream is `IN`/`GET_ID` data
//! followed by the one-byte status.
//!
//! - `IN`, `OUT`, `FLUSH` go to the backend as a [`GuestOutput`] carrying a
//!   request id; the request stays in flight until its
//!   [`GuestInput::BlockDone`] arrives (from the iSCSI target, in any order).
//! - `GET_ID` (the serial, up to 20 bytes) and invalid requests complete at
//!   once: `IOERR` for a short header, data in the wrong direction, a length
//!   that is not a multiple of 512 or above [`MAX_DATA`], or sectors beyond
//!   the capacity; `UNSUPP` for unknown types.
//! - A chain without a writable status byte, a head reused while in flight,
//!   or more requests than the queue size in flight is a driver error:
//!   `DEVICE_NEEDS_RESET`. A reset forgets requests in flight; their late
//!   completions are refused with [`InputError::UnknownRequest`].
use alloc::vec;
use alloc::vec::Vec;

use super::mmio::{Transport, VirtioDevice, INT_USED_BUFFER};
use super::queue::{Chain, QueueError};
use super::{BlockStatus, GuestInput, GuestMemory, GuestOutput, InputError, OutputSink};

/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// The request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// `size_max`: the largest segment the driver should use.
pub const SIZE_MAX: u32 = 64 * 1024;
/// `seg_max`: the most data segments per request. 15 keeps a request's
/// data (960 KiB) inside one FT log record: a read's completion carries
/// its data, and a record's payload is at most `ft::log::MAX_PAYLOAD`
/// (1 MiB); with 32 (2 MiB) Linux's 1.25 MiB reads made the recording
/// primary panic (issue 15).
pub const SEG_MAX: u32 = 15;
/// The most data one request may carry (`seg_max * size_max`); a longer
/// request is refused (`IOERR`) whatever the driver offers.
pub const MAX_DATA: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// A `DiskCompletion` record's payload besides the data: point (24),
/// vector, request id (8), status.
const COMPLETION_OVERHEAD: u64 = 24 + 1 + 8 + 1;
const _: () = assert!(
    MAX_DATA + COMPLETION_OVERHEAD <= ft::log::MAX_PAYLOAD as u64,
    "a disk request's completion must fit one log record"
);
/// Bytes of the device ID `GET_ID` returns.
pub const ID_BYTES: usize = 20;

/// `VIRTIO_BLK_F_SIZE_MAX`.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// `VIRTIO_BLK_F_SEG_MAX`.
pub const F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_BLK_SIZE`.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u64 = 1 << 9;

/// Request types (§5.2.6).
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const T_GET_ID: u32 = 8;

const HEADER: u64 = 16;

/// What a request in flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Pending {
    Read(u32, u64),
    Write(u64),
    Flush,
}

/// What decoding a request led to.
enum Outcome {
    /// Submitted; completes with a [`GuestInput::BlockDone`].
    Pending(Pending),
    /// Completed with `OK` after writing this many data bytes.
    Done(u64),
}

/// A request submitted to the backend and not yet completed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct InFlight {
    id: u64,
    chain: Chain,
    pending: Pending,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlkStats {
    /// Requests submitted to the backend.
    pub submitted: u64,
    /// Requests completed with `OK`.
    pub ok: u64,
    /// Requests completed with `IOERR` or `UNSUPP`.
    pub errors: u64,
}

/// The virtio-blk device model. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blk {
    capacity: u64,
    serial: [u8; ID_BYTES],
    next_id: u64,
    in_flight: Vec<InFlight>,
    stats: BlkStats,
}

impl Blk {
    /// A disk of `capacity` 512-byte sectors; `serial` is what `GET_ID`
    /// returns (truncated to 20 bytes, zero-padded).
    pub fn new(capacity: u64, serial: &[u8]) -> Self {
        let mut s = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        s[..n].copy_from_slice(&serial[..n]);
        Self {
            capacity,
            serial: s,
            next_id: 0,
            in_flight: Vec::new(),
            stats: BlkStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Ids of the requests in flight, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.iter().map(|r| r.id)
    }

    /// Emit every request in flight again, with its original id, oldest
    /// first: on go-live the new primary re-issues the I/O whose completion
    /// the old one never logged (DESIGN.md §1.8). Write data is read again
    /// from the guest's buffers, which the driver may not touch while the
    /// request is in flight. A request whose buffers became unreadable is
    /// skipped.
    pub fn resubmit(&self, mem: &dyn GuestMemory, sink: &mut dyn OutputSink) {
        for r in &self.in_flight {
            let id = r.id;
            sink.emit(match r.pending {
                Pending::Read(len, sector) => GuestOutput::BlockRead { id, sector, len },
                Pending::Write(sector) => {
                    let mut data = vec![0u8; (r.chain.readable_len() - HEADER) as usize];
                    if r.chain.read(mem, HEADER, &mut data).is_err() {
                        continue;
                    }
                    GuestOutput::BlockWrite { id, sector, data }
                }
                Pending::Flush => GuestOutput::BlockFlush { id },
            });
        }
    }

    /// Write the status byte (the last writable byte) and return the chain
    /// to the driver, reporting `data_len` data bytes written before it.
    fn finish(
        &mut self,
        t: &mut Transport,
        mem: &mut dyn GuestMemory,
        chain: &Chain,
        data_len: u64,
        status: BlockStatus,
    ) {
        if status == BlockStatus::Ok {
            self.stats.ok += 1;
        } else {
            self.stats.errors += 1;
        }
        let r = chain
            .write(mem, chain.writable_len() - 1, &[status as u8])
            .map_err(QueueError::from)
            .and_then(|()| t.queues[0].push_used(mem, chain.head, data_len as u32 + 1));
        match r {
            Ok(()) => t.signal(INT_USED_BUFFER),
            Err(e) => t.fail(e),
        }
    }

    /// Decode one request; `Err` is the immediate status for invalid ones.
    fn submit(
        &mut self,
        mem: &mut dyn GuestMemory,
        chain: &Chain,
        sink: &mut dyn OutputSink,
    ) -> Result<Outcome, BlockStatus> {
        let readable = chain.readable_len();
        if readable < HEADER {
            return Err(BlockStatus::IoErr);
        }
        let mut h = [0u8; HEADER as usize];
        chain.read(mem, 0, &mut h).map_err(|_| BlockStatus::IoErr)?;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let data_in = chain.writable_len() - 1;
        let data_out = readable - HEADER;
        let in_range = |len: u64| {
            len.is_multiple_of(SECTOR_SIZE)
                && len <= MAX_DATA
                && sector
                    .checked_add(len / SECTOR_SIZE)
                    .is_some_and(|end| end <= self.capacity)
        };
        let id = self.next_id;
        match kind {
            T_IN if data_out == 0 && in_range(data_in) => {
                if data_in == 0 {
                    return Ok(Outcome::Done(0));
                }
                let len = data_in as u32;
                sink.emit(GuestOutput::BlockRead { id, sector, len });
                Ok(Outcome::Pending(Pending::Read(len, sector)))
            }
            T_OUT if data_in == 0 && in_range(data_out) => {
                if data_out == 0 {
                    return Ok(Outcome::Done(0));
                }
                let mut data = vec![0u8; data_out as usize];
                chain
                    .read(mem, HEADER, &mut data)
                    .map_err(|_| BlockStatus::IoErr)?;
                sink.emit(GuestOutput::BlockWrite { id, sector, data });
                Ok(Outcome::Pending(Pending::Write(sector)))
            }
            T_FLUSH if data_in == 0 && data_out == 0 => {
                sink.emit(GuestOutput::BlockFlush { id });
                Ok(Outcome::Pending(Pending::Flush))
            }
            T_GET_ID if data_out == 0 => {
                let n = (data_in as usize).min(ID_BYTES);
                chain
                    .write(mem, 0, &self.serial[..n])
                    .map_err(|_| BlockStatus::IoErr)?;
                Ok(Outcome::Done(n as u64))
            }
            T_IN | T_OUT | T_FLUSH | T_GET_ID => Err(BlockStatus::IoErr),
            _ => Err(BlockStatus::Unsupported),
        }
    }

    fn handle(
        &mut self,
        t: &mut Transport,
        chain: Chain,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
    ) -> Result<(), QueueError> {
        if chain.writable.is_empty() {
            return Err(QueueError::WrongDirection);
        }
        if self.in_flight.len() >= usize::from(t.queues[0].size)
            || self.in_flight.iter().any(|r| r.chain.head == chain.head)
        {
            return Err(QueueError::TooManyInFlight);
        }
        match self.submit(mem, &chain, sink) {
            Ok(Outcome::Pending(pending)) => {
                self.stats.submitted += 1;
                self.in_flight.push(InFlight {
                    id: self.next_id,
                    chain,
                    pending,
                });
                self.next_id += 1;
            }
            Ok(Outcome::Done(written)) => self.finish(t, mem, &chain, written, BlockStatus::Ok),
            Err(status) => self.finish(t, mem, &chain, 0, status),
        }
        Ok(())
    }

    fn complete(
        &mut self,
        t: &mut Transport,
        mem: &mut dyn GuestMemory,
        id: u64,
        status: BlockStatus,
        data: &[u8],
    ) -> Result<(), InputError> {
        let i = self
            .in_flight
            .iter()
            .position(|r| r.id == id)
            .ok_or(InputError::UnknownRequest(id))?;
        let req = self.in_flight.remove(i);
        if !t.live() {
            return Ok(());
        }
        let mut result = Ok(());
        let (data_len, status) = match (req.pending, status) {
            (Pending::Read(len, _), BlockStatus::Ok) if data.len() != len as usize => {
                result = Err(InputError::BadReadLength {
                    id,
                    expected: len,
                    got: data.len(),
                });
                (0, BlockStatus::IoErr)
            }
            (Pending::Read(len, _), BlockStatus::Ok) => match req.chain.write(mem, 0, data) {
                Ok(()) => (u64::from(len), BlockStatus::Ok),
                Err(e) => {
                    t.fail(e.into());
                    return Ok(());
                }
            },
            (_, s) => (0, s),
        };
        self.finish(t, mem, &req.chain, data_len, status);
        result
    }
}

impl VirtioDevice for Blk {
    const DEVICE_ID: u32 = DEVICE_ID;
    const QUEUE_MAX: &'static [u16] = &[QUEUE_SIZE];

    fn features(&self) -> u64 {
        F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH
    }

    fn read_config(&self, offset: u64, out: &mut [u8]) {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        for (i, b) in out.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn reset(&mut self) {
        self.in_flight.clear();
    }

    fn process(
        &mut self,
        t: &mut Transport,
        queue: usize,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
    ) {
        if queue != 0 {
            return;
        }
        while t.live() {
            let r = match t.queues[0].pop(mem) {
                Ok(None) => return,
                Ok(Some(chain)) => self.handle(t, chain, mem, sink),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                t.fail(e);
            }
        }
    }

    fn apply(
        &mut self,
        t: &mut Transport,
        input: GuestInput,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), InputError> {
        match input {
            GuestInput::BlockDone { id, status, data } => self.complete(t, mem, id, status, &data),
            GuestInput::Frame(_) => Err(InputError::WrongDevice),
        }
    }
}

impl super::VirtioMmio<Blk> {
    /// The backend finished request `id` (shorthand for
    /// [`super::VirtioMmio::apply`] with [`GuestInput::BlockDone`]).
    pub fn complete(
        &mut self,
        id: u64,
        status: BlockStatus,
        data: Vec<u8>,
        mem: &mut dyn GuestMemory,
        irq: &mut dyn crate::devices::IrqLine,
    ) -> Result<(), InputError> {
        self.apply(GuestInput::BlockDone { id, status, data }, mem, irq)
    }
}

//! Split virtqueues, device side (virtio 1.2 §2.7): the descriptor table
//! (§2.7.5), the driver ("available") ring (§2.7.6) and the device ("used")
//! ring (§2.7.8), all in guest memory.
//!
//! Everything read from guest memory is untrusted. [`Queue::pop`] walks one
//! descriptor chain and returns it as device-readable and device-writable
//! [`Segment`] lists, or a [`QueueError`] — never a panic, never more than
//! `size` descriptor reads per chain. Indirect descriptors
//! (`VIRTIO_F_INDIRECT_DESC`) and `VIRTIO_F_EVENT_IDX` are not offered, so
//! an indirect descriptor is an error and the ring's event fields are unused.
//! The size is a power of two (§2.7.10.1), so free-running 16-bit indexes
//! taken modulo the size wrap consistently.
use alloc::vec::Vec;

use super::{GuestMemory, MemError};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Why a queue cannot be used; each one is fatal for the device
/// (`DEVICE_NEEDS_RESET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QueueError {
    /// The size is zero, above the maximum or not a power of two, or a ring
    /// is misaligned (§2.7: 16/2/4 bytes) or not in guest RAM.
    BadLayout,
    /// The driver's `idx` is more than `size` entries ahead of the device.
    BadAvailIndex {
        /// The driver ring's `idx`.
        avail: u16,
        /// The next entry the device would consume.
        next: u16,
    },
    /// A head or `next` descriptor index is not below the queue size.
    BadDescIndex(u16),
    /// A chain has more descriptors than the queue (a loop).
    ChainTooLong,
    /// A descriptor has length zero.
    ZeroLength(u16),
    /// A descriptor's buffer is not entirely guest RAM.
    OutOfRange(u16),
    /// A descriptor has `VIRTQ_DESC_F_INDIRECT` (not negotiable here).
    Indirect(u16),
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable(u16),
    /// The chain's buffers point the wrong way for this queue or request.
    WrongDirection,
    /// The driver made more requests available than the device can have in
    /// flight, or reused a head that is still in flight.
    TooManyInFlight,
    /// A guest memory access failed after validation.
    Memory(MemError),
}

impl From<MemError> for QueueError {
    fn from(e: MemError) -> Self {
        Self::Memory(e)
    }
}

/// One guest buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes (non-zero).
    pub len: u32,
}

/// A validated descriptor chain: its head index and its buffers, readable
/// ones first (§2.7.4).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chain {
    /// Index of the first descriptor (what goes into the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Walks `segs` as one byte stream from `offset`, calling `f(gpa, range)`
/// for each piece of `[offset, offset + len)`.
fn for_each_piece(
    segs: &[Segment],
    mut offset: u64,
    len: usize,
    mut f: impl FnMut(u64, core::ops::Range<usize>) -> Result<(), MemError>,
) -> Result<(), MemError> {
    let mut done = 0usize;
    for s in segs {
        if done == len {
            break;
        }
        let slen = u64::from(s.len);
        if offset >= slen {
            offset -= slen;
            continue;
        }
        let n = ((slen - offset) as usize).min(len - done);
        f(s.gpa + offset, done..done + n)?;
        done += n;
        offset = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(MemError {
            gpa: segs.first().map_or(0, |s| s.gpa),
            len: len as u64,
        })
    }
}

impl Chain {
    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }

    /// Copy readable bytes `[offset, offset + buf.len())` into `buf`.
    pub fn read(&self, mem: &dyn GuestMemory, offset: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        for_each_piece(&self.readable, offset, len, |gpa, r| {
            mem.read(gpa, &mut buf[r])
        })
    }

    /// Copy `data` into the writable bytes starting at `offset`.
    pub fn write(
        &self,
        mem: &mut dyn GuestMemory,
        offset: u64,
        data: &[u8],
    ) -> Result<(), MemError> {
        for_each_piece(&self.writable, offset, data.len(), |gpa, r| {
            mem.write(gpa, &data[r])
        })
    }
}

/// One split virtqueue's device-side state. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Queue {
    /// The largest size the device accepts (`QueueNumMax`).
    pub max_size: u16,
    /// The size the driver chose (`QueueNum`).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver (available) ring.
    pub driver: u64,
    /// Guest-physical address of the device (used) ring.
    pub device: u64,
    /// The next driver-ring entry the device will consume.
    pub next_avail: u16,
    /// The device ring's `idx` the device will publish next.
    pub next_used: u16,
}

fn read_u16(mem: &dyn GuestMemory, gpa: u64) -> Result<u16, MemError> {
    let mut b = [0; 2];
    mem.read(gpa, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

impl Queue {
    /// A queue in its reset state; its size defaults to `max_size`.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            next_avail: 0,
            next_used: 0,
        }
    }

    /// Check the size, alignment and placement of the three areas
    /// (§2.7: descriptor table 16-aligned, driver ring 2, device ring 4).
    pub fn check_layout(&self, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        let n = u64::from(self.size);
        let ok = self.size != 0
            && self.size <= self.max_size
            && self.size.is_power_of_two()
            && self.desc.is_multiple_of(16)
            && self.driver.is_multiple_of(2)
            && self.device.is_multiple_of(4)
            && mem.contains(self.desc, 16 * n)
            && mem.contains(self.driver, 6 + 2 * n)
            && mem.contains(self.device, 6 + 8 * n);
        if ok {
            Ok(())
        } else {
            Err(QueueError::BadLayout)
        }
    }

    /// The next available descriptor chain, validated, or `None` if the
    /// driver has made none available. On error nothing is consumed.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, QueueError> {
        self.check_layout(mem)?;
        let avail = read_u16(mem, self.driver + 2)?;
        let pending = avail.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::BadAvailIndex {
                avail,
                next: self.next_avail,
            });
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = read_u16(mem, self.driver + 4 + 2 * slot)?;
        let chain = self.walk(mem, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    fn walk(&self, mem: &dyn GuestMemory, head: u16) -> Result<Chain, QueueError> {
        let mut chain = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut index = head;
        for _ in 0..self.size {
            if index >= self.size {
                return Err(QueueError::BadDescIndex(index));
            }
            let mut d = [0u8; 16];
            mem.read(self.desc + 16 * u64::from(index), &mut d)?;
            let gpa = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect(index));
            }
            if len == 0 {
                return Err(QueueError::ZeroLength(index));
            }
            if !mem.contains(gpa, len.into()) {
                return Err(QueueError::OutOfRange(index));
            }
            let seg = Segment { gpa, len };
            if flags & VIRTQ_DESC_F_WRITE != 0 {
                chain.writable.push(seg);
            } else if chain.writable.is_empty() {
                chain.readable.push(seg);
            } else {
                return Err(QueueError::ReadableAfterWritable(index));
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = next;
        }
        Err(QueueError::ChainTooLong)
    }

    /// Return chain `head` to the driver with `len` bytes written (§2.7.8):
    /// the element first, then the new `idx`.
    pub fn push_used(
        &mut self,
        mem: &mut dyn GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.check_layout(mem)?;
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(self.device + 4 + 8 * slot, &elem)?;
        self.next_used = self.next_used.wrapping_add(1);
        mem.write(self.device + 2, &self.next_used.to_le_bytes())?;
        Ok(())
    }
}

//! Virtio devices for the guest: the virtio-mmio transport (virtio 1.2
//! §4.2.2, modern interface, Version 2 only), split virtqueues (§2.7), and
//! the block (§5.2) and network (§5.1) device models.
//!
//! Like the other models in [`crate::devices`], these are plain state
//! machines: `Clone + Eq` data, no globals, no clock, no hardware. Guest RAM
//! is reached through the [`GuestMemory`] trait, interrupts leave through an
//! [`IrqLine`](super::IrqLine), and everything that crosses the guest's
//! boundary goes through one narrow pair of types so that the FT layer can
//! record it on the primary and replay it on the backup (DESIGN.md §1):
//!
//! - [`GuestOutput`] — what leaves the guest: a transmitted frame, a block
//!   write, a flush, a block read request. The device hands outputs to an
//!   [`OutputSink`] while it processes a queue after a guest notification;
//!   that happens at a deterministic point (the guest's `QueueNotify` store),
//!   so the backup produces the same outputs and simply discards them. On the
//!   primary the sink applies the output rule (frames and writes wait for the
//!   backup's acknowledgement; reads need not) and submits block requests
//!   to the iSCSI backend.
//! - [`GuestInput`] — what enters the guest asynchronously: a received frame,
//!   a block request's completion (read data and status). The FT layer logs
//!   the input with its execution point and applies it with
//!   [`VirtioMmio::apply`] on both sides at that point. Applying copies the
//!   data into the guest's buffers, writes the status, updates the used ring
//!   and raises the interrupt; the interrupt is a deterministic consequence of
//!   the input at that point, so it needs no log entry of its own.
//!
//! On go-live, [`blk::Blk::resubmit`] re-emits the block requests still in
//! flight so the new primary can issue them (DESIGN.md §1.8).
//!
//! Inputs produced by guest register accesses alone (`GET_ID`, requests
//! rejected with `IOERR`/`UNSUPP`, transmit-buffer returns) complete inside
//! [`VirtioMmio::process`] and are deterministic too.
//!
//! Descriptor chains are untrusted (§1 "bad input"): a structurally broken
//! queue (bad index, loop, out-of-range address, ...) puts the device into
//! `DEVICE_NEEDS_RESET` (§2.1.2) with a configuration-change interrupt; a
//! well-formed but invalid request gets an error status. Work per call is
//! bounded by the queue size.
//!
//! Wiring (hypervisor side): register a [`VirtioMmio`] on the [`Bus`] with
//! [`mmio::MMIO_SIZE`] bytes; after every guest store to it, call
//! [`VirtioMmio::process`] (cheap when nothing was notified) with guest
//! memory, the output sink and the interrupt line; feed backend completions
//! and received frames as [`GuestInput`]s through [`VirtioMmio::apply`].
//!
//! [`Bus`]: super::Bus
use alloc::vec::Vec;

pub mod blk;
pub mod mmio;
pub mod net;
pub mod queue;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests_blk;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_net;

pub use mmio::{VirtioDevice, VirtioMmio};

/// A guest-physical range the device tried to use is not (entirely) RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemError {
    /// First guest-physical address of the access.
    pub gpa: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The guest's RAM as the device sees it (the hypervisor implements it over
/// its EPT mapping and marks written pages dirty for state transfer; tests
/// use a `Vec`).
pub trait GuestMemory {
    /// Whether `[gpa, gpa + len)` is guest RAM the device may use.
    fn contains(&self, gpa: u64, len: u64) -> bool;
    /// Copy guest bytes at `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copy `data` into guest memory at `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
}

/// The status of a completed block request (virtio 1.2 §5.2.6:
/// `VIRTIO_BLK_S_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// `VIRTIO_BLK_S_OK`.
    Ok = 0,
    /// `VIRTIO_BLK_S_IOERR`.
    IoErr = 1,
    /// `VIRTIO_BLK_S_UNSUPP`.
    Unsupported = 2,
}

/// Something that leaves the guest. On the backup the FT layer discards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestOutput {
    /// virtio-net transmitted an Ethernet frame (without the virtio header).
    /// Subject to the output rule.
    Frame(Vec<u8>),
    /// virtio-blk: read `len` bytes (a multiple of 512) at `sector`. Not
    /// visible to the world, but issued on the primary only; its completion
    /// comes back as [`GuestInput::BlockDone`] with the data.
    BlockRead {
        /// Request id, echoed by the completion.
        id: u64,
        /// First 512-byte sector.
        sector: u64,
        /// Length in bytes.
        len: u32,
    },
    /// virtio-blk: write `data` (a multiple of 512 bytes) at `sector`.
    /// Subject to the output rule.
    BlockWrite {
        /// Request id, echoed by the completion.
        id: u64,
        /// First 512-byte sector.
        sector: u64,
        /// The bytes the guest wrote.
        data: Vec<u8>,
    },
    /// virtio-blk: make every completed write durable. Subject to the output
    /// rule.
    BlockFlush {
        /// Request id, echoed by the completion.
        id: u64,
    },
}

/// Something that enters the guest asynchronously; logged by the FT layer
/// and applied with [`VirtioMmio::apply`] at the same execution point on
/// both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestInput {
    /// virtio-net received an Ethernet frame (without the virtio header).
    Frame(Vec<u8>),
    /// virtio-blk: the backend finished request `id`. `data` is the read
    /// data (exactly the requested length) for a successful read and empty
    /// otherwise.
    BlockDone {
        /// The id from the [`GuestOutput`] that submitted the request.
        id: u64,
        /// The outcome.
        status: BlockStatus,
        /// Read data.
        data: Vec<u8>,
    },
}

/// Why a [`GuestInput`] was refused. The guest is unaffected unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputError {
    /// The input is for another kind of device.
    WrongDevice,
    /// No request with this id is in flight (never submitted, already
    /// completed, or dropped by a device reset).
    UnknownRequest(u64),
    /// A successful read completed with the wrong amount of data; the guest
    /// got `VIRTIO_BLK_S_IOERR` for it.
    BadReadLength {
        /// The request.
        id: u64,
        /// Bytes requested.
        expected: u32,
        /// Bytes delivered.
        got: usize,
    },
}

/// What a device does with its [`GuestOutput`]s.
pub trait OutputSink {
    /// Take one output, in guest order.
    fn emit(&mut self, out: GuestOutput);
}

impl OutputSink for Vec<GuestOutput> {
    fn emit(&mut self, out: GuestOutput) {
        self.push(out);
    }
}

//! Test doubles: guest memory backed by a `Vec`, a recording interrupt
//! line, and a fake guest driver that lays out split virtqueues in that
//! memory and drives the device through its registers, the way Linux's
//! `virtio_mmio` + `virtio_ring` do.
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use super::mmio::{reg, status, VIRTIO_F_VERSION_1};
use super::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use super::{GuestMemory, GuestOutput, MemError, VirtioDevice, VirtioMmio};
use crate::devices::{IrqLine, MmioDevice};

/// Guest RAM of `bytes.len()` bytes at guest-physical 0; counts accesses.
#[derive(Clone)]
pub struct VecMem {
    pub bytes: Vec<u8>,
    pub accesses: Cell<u64>,
}

impl VecMem {
    pub fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len],
            accesses: Cell::new(0),
        }
    }

    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        self.accesses.set(self.accesses.get() + 1);
        let err = MemError {
            gpa,
            len: len as u64,
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        (end <= self.bytes.len()).then_some(start..end).ok_or(err)
    }

    pub fn put(&mut self, gpa: u64, data: &[u8]) {
        self.write(gpa, data).unwrap();
    }

    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.read(gpa, &mut b).unwrap();
        b
    }

    pub fn u16_at(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.get(gpa, 2).try_into().unwrap())
    }
}

impl GuestMemory for VecMem {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| end <= self.bytes.len() as u64)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(gpa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

/// Records raised vectors.
#[derive(Default, Clone)]
pub struct Irqs(pub Vec<u8>);

impl IrqLine for Irqs {
    fn raise(&mut self, vector: u8) {
        self.0.push(vector);
    }
}

pub const VECTOR: u8 = 0x41;
pub const MEM_SIZE: usize = 4 << 20;
/// Data buffers are allocated from here up.
pub const DATA_BASE: u64 = 0x8_0000;

/// The driver's view of one queue.
#[derive(Clone)]
pub struct DrvQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
}

/// A fake guest driver with its device, memory and interrupt line.
#[derive(Clone)]
pub struct Driver<D> {
    pub dev: VirtioMmio<D>,
    pub mem: VecMem,
    pub irqs: Irqs,
    pub out: Vec<GuestOutput>,
    pub queues: Vec<DrvQueue>,
    next_data: u64,
}

/// One buffer of a chain: (address, length, device-writable).
pub type Buf = (u64, u32, bool);

impl<D: VirtioDevice> Driver<D> {
    pub fn new(device: D) -> Self {
        Self {
            dev: VirtioMmio::new(device, VECTOR),
            mem: VecMem::new(MEM_SIZE),
            irqs: Irqs::default(),
            out: Vec::new(),
            queues: Vec::new(),
            next_data: DATA_BASE,
        }
    }

    pub fn read32(&mut self, off: u64) -> u32 {
        self.dev.mmio_read(off, 4, 0) as u32
    }

    /// A register store, then what the hypervisor does after one.
    pub fn write32(&mut self, off: u64, v: u32) {
        self.dev.mmio_write(off, 4, v.into(), 0);
        self.dev
            .process(&mut self.mem, &mut self.out, &mut self.irqs);
    }

    pub fn status(&mut self) -> u8 {
        self.read32(reg::STATUS) as u8
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(reg::DEVICE_FEATURES);
        self.write32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(reg::DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Reset, acknowledge, negotiate `want & offered`; returns whether
    /// `FEATURES_OK` stuck.
    pub fn negotiate(&mut self, want: u64) -> bool {
        let offered = self.device_features();
        self.negotiate_raw(want & offered)
    }

    /// Like [`Driver::negotiate`] but accepting `accept` as is.
    pub fn negotiate_raw(&mut self, accept: u64) -> bool {
        self.write32(reg::STATUS, 0);
        self.write32(reg::STATUS, status::ACKNOWLEDGE.into());
        self.write32(reg::STATUS, (status::ACKNOWLEDGE | status::DRIVER).into());
        self.write32(reg::DRIVER_FEATURES_SEL, 0);
        self.write32(reg::DRIVER_FEATURES, accept as u32);
        self.write32(reg::DRIVER_FEATURES_SEL, 1);
        self.write32(reg::DRIVER_FEATURES, (accept >> 32) as u32);
        let s = self.status();
        self.write32(reg::STATUS, u32::from(s | status::FEATURES_OK));
        self.status() & status::FEATURES_OK != 0
    }

    /// Lay out queue `q` with `size` entries and enable it.
    pub fn setup_queue(&mut self, q: u16, size: u16) {
        let base = 0x1000 + u64::from(q) * 0x10000;
        let dq = DrvQueue {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        // Fresh rings, as a driver allocates them zeroed.
        self.mem.put(base, &[0; 0x3000]);
        self.write32(reg::QUEUE_SEL, q.into());
        assert!(self.read32(reg::QUEUE_NUM_MAX) >= size.into());
        self.write32(reg::QUEUE_NUM, size.into());
        for (lo, addr) in [
            (reg::QUEUE_DESC_LOW, dq.desc),
            (reg::QUEUE_DRIVER_LOW, dq.avail),
            (reg::QUEUE_DEVICE_LOW, dq.used),
        ] {
            self.write32(lo, addr as u32);
            self.write32(lo + 4, (addr >> 32) as u32);
        }
        self.write32(reg::QUEUE_READY, 1);
        self.queues.push(dq);
    }

    /// The whole Linux-style bring-up: VERSION_1 plus `extra` features,
    /// `nq` queues of `size`, `DRIVER_OK`.
    pub fn init(&mut self, extra: u64, nq: u16, size: u16) {
        assert!(self.negotiate(VIRTIO_F_VERSION_1 | extra));
        for q in 0..nq {
            self.setup_queue(q, size);
        }
        let s = self.status();
        self.write32(reg::STATUS, u32::from(s | status::DRIVER_OK));
        assert_eq!(self.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    /// Allocate `len` bytes of buffer space (16-aligned), filled with `fill`.
    pub fn alloc(&mut self, len: usize, fill: u8) -> u64 {
        let gpa = self.next_data;
        self.next_data = (gpa + len as u64 + 15) & !15;
        if self.next_data > MEM_SIZE as u64 {
            assert!(gpa != DATA_BASE, "buffer larger than the fake RAM");
            self.next_data = DATA_BASE;
            return self.alloc(len, fill);
        }
        self.mem.put(gpa, &vec![fill; len]);
        gpa
    }

    /// Write a raw descriptor.
    pub fn put_desc(&mut self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.queues[q].desc + 16 * u64::from(i);
        self.mem.put(at, &d);
    }

    /// Make `head` available on queue `q` (no notification).
    pub fn publish(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let (avail, idx) = (dq.avail, dq.avail_idx);
        self.mem.put(slot, &head.to_le_bytes());
        self.mem.put(avail + 2, &idx.to_le_bytes());
    }

    /// Build a chain from `bufs` in fresh descriptors, publish it; no kick.
    pub fn add_chain(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % size;
            let more = k + 1 < bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if more { VIRTQ_DESC_F_NEXT } else { 0 };
            self.put_desc(q, i, addr, len, flags, (i + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.publish(q, head);
        head
    }

    pub fn kick(&mut self, q: u16) {
        self.write32(reg::QUEUE_NOTIFY, q.into());
    }

    /// New used-ring entries `(id, len)` since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let dq = &self.queues[q];
        let idx = self.mem.u16_at(dq.used + 2);
        let mut out = Vec::new();
        let mut seen = dq.used_seen;
        while seen != idx {
            let at = dq.used + 4 + 8 * u64::from(seen % dq.size);
            let e = self.mem.get(at, 8);
            out.push((
                u32::from_le_bytes(e[..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..].try_into().unwrap()),
            ));
            seen = seen.wrapping_add(1);
        }
        self.queues[q].used_seen = seen;
        out
    }

    /// Read `InterruptStatus` and acknowledge it, as the interrupt handler.
    pub fn ack(&mut self) -> u32 {
        let s = self.read32(reg::INTERRUPT_STATUS);
        self.write32(reg::INTERRUPT_ACK, s);
        s
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }
}

//! The virtio-mmio transport (virtio 1.2 §4.2.2, Table 4.1), modern
//! interface only (`Version` = 2; legacy §4.2.4 is not offered).
//!
//! - Device status (§2.1, §3.1.1): writing 0 resets the device; setting
//!   `FEATURES_OK` succeeds only if the driver accepted `VIRTIO_F_VERSION_1`
//!   and nothing the device did not offer (§2.2.2), otherwise the bit stays
//!   clear; `DRIVER_OK` without `FEATURES_OK`, a queue enabled with a bad
//!   layout, or a broken descriptor chain set `DEVICE_NEEDS_RESET` (§2.1.2)
//!   with a configuration-change interrupt, and the device stops using its
//!   queues until reset.
//! - Control registers accept only aligned 32-bit accesses (§4.2.2.1); any
//!   other access reads 0 / is ignored and is counted. The device-specific
//!   configuration space at 0x100 accepts 1-, 2-, 4- and 8-byte accesses.
//! - Queue registers are writable only while the selected queue is not
//!   ready; a `QueueSel` beyond the device's queues reads `QueueNumMax` 0.
//! - Interrupts: `InterruptStatus` bit 0 (used buffer) or bit 1
//!   (configuration change) being set raises the vector given at
//!   construction, once per event, at the end of the call that caused it
//!   ([`VirtioMmio::process`], [`VirtioMmio::apply`],
//!   [`VirtioMmio::poll_irq`]); the guest clears bits with `InterruptACK`.
use alloc::vec::Vec;

use super::queue::{Queue, QueueError};
use super::{GuestInput, GuestMemory, InputError, OutputSink};
use crate::devices::{IrqLine, MmioDevice};

/// Bytes of guest-physical space a virtio-mmio device occupies.
pub const MMIO_SIZE: u64 = 0x200;
/// `MagicValue`: "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// `VendorID` of ftvisor's devices ("ftvs").
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"ftvs");
/// Feature bit 32: `VIRTIO_F_VERSION_1`, always offered and required.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (§2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// `InterruptStatus` bit: a used ring was updated.
pub const INT_USED_BUFFER: u32 = 1;
/// `InterruptStatus` bit: the configuration changed (or `NEEDS_RESET`).
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Register offsets (§4.2.2, Table 4.1).
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00C;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0A0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0A4;
    pub const SHM_SEL: u64 = 0x0AC;
    pub const SHM_LEN_LOW: u64 = 0x0B0;
    pub const SHM_BASE_HIGH: u64 = 0x0BC;
    pub const CONFIG_GENERATION: u64 = 0x0FC;
    pub const CONFIG: u64 = 0x100;
}

/// A device type behind the transport: blk ([`super::blk::Blk`]) or net
/// ([`super::net::Net`]).
pub trait VirtioDevice {
    /// The virtio device ID (§5).
    const DEVICE_ID: u32;
    /// Maximum size of each of the device's queues.
    const QUEUE_MAX: &'static [u16];
    /// Device-specific feature bits offered (the transport adds
    /// `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Fill `out` with configuration-space bytes from `offset` (bytes past
    /// the end read 0).
    fn read_config(&self, offset: u64, out: &mut [u8]);
    /// Forget every request in flight (device reset).
    fn reset(&mut self);
    /// Handle what the driver made available on `queue`. Called only while
    /// the device is live.
    fn process(
        &mut self,
        t: &mut Transport,
        queue: usize,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
    );
    /// Apply an asynchronous input.
    fn apply(
        &mut self,
        t: &mut Transport,
        input: GuestInput,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), InputError>;
}

/// Counters and the last fatal error, for the hypervisor's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportStats {
    /// Register accesses of the wrong size or alignment, or to no register.
    pub bad_accesses: u64,
    /// Times the device entered `DEVICE_NEEDS_RESET`.
    pub fatal_errors: u64,
    /// The error that last set `DEVICE_NEEDS_RESET`.
    pub last_error: Option<QueueError>,
}

/// The transport's register state. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transport {
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    /// The device's virtqueues.
    pub queues: Vec<Queue>,
    status: u8,
    interrupt_status: u32,
    config_generation: u32,
    vector: u8,
    irq_pending: bool,
    notified: u32,
    stats: TransportStats,
}

impl Transport {
    fn new(device_features: u64, queue_max: &[u16], vector: u8) -> Self {
        Self {
            device_features: device_features | VIRTIO_F_VERSION_1,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: queue_max.iter().map(|&m| Queue::new(m)).collect(),
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            vector,
            irq_pending: false,
            notified: 0,
            stats: TransportStats::default(),
        }
    }

    fn reset(&mut self) {
        let generation = self.config_generation;
        let stats = core::mem::take(&mut self.stats);
        let max: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self::new(self.device_features, &max, self.vector);
        self.config_generation = generation;
        self.stats = stats;
    }

    /// `DRIVER_OK` is set and `DEVICE_NEEDS_RESET` is not.
    pub fn live(&self) -> bool {
        self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == status::DRIVER_OK
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features both sides agreed on (valid once `FEATURES_OK`).
    pub fn negotiated(&self) -> u64 {
        self.driver_features
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Enter `DEVICE_NEEDS_RESET` (once) and notify the driver.
    pub fn fail(&mut self, e: QueueError) {
        self.stats.last_error = Some(e);
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.stats.fatal_errors += 1;
            self.status |= status::DEVICE_NEEDS_RESET;
            self.signal(INT_CONFIG_CHANGE);
        }
    }

    /// The `InterruptStatus` register (non-zero: the interrupt line is
    /// asserted until the driver acknowledges).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// Set `InterruptStatus` bits and schedule an interrupt.
    pub fn signal(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        self.irq_pending = true;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue if its configuration may still change.
    fn selected_idle(&mut self) -> Option<&mut Queue> {
        self.selected().filter(|q| !q.ready)
    }

    fn read_reg(&self, offset: u64, device_id: u32) -> Option<u32> {
        let half = |v: u64, sel: u32| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        let q = self.queues.get(self.queue_sel as usize);
        Some(match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => device_id,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => half(self.device_features, self.device_features_sel),
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| q.max_size.into()),
            reg::QUEUE_READY => q.map_or(0, |q| q.ready.into()),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status.into(),
            // No shared memory regions: length and base read as all ones.
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        let set_low = |x: &mut u64| *x = (*x & !0xFFFF_FFFF) | u64::from(v);
        let set_high = |x: &mut u64| *x = (*x & 0xFFFF_FFFF) | (u64::from(v) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_low(&mut self.driver_features),
                        1 => set_high(&mut self.driver_features),
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_idle() {
                    q.size = v.min(u16::MAX.into()) as u16;
                }
            }
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_NOTIFY => {
                if (v as usize) < self.queues.len() {
                    self.notified |= 1 << v;
                }
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v as u8),
            reg::QUEUE_DESC_LOW => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_low(&mut q.desc)),
            reg::QUEUE_DESC_HIGH => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_high(&mut q.desc)),
            reg::QUEUE_DRIVER_LOW => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_low(&mut q.driver)),
            reg::QUEUE_DRIVER_HIGH => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_high(&mut q.driver)),
            reg::QUEUE_DEVICE_LOW => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_low(&mut q.device)),
            reg::QUEUE_DEVICE_HIGH => self
                .selected_idle()
                .into_iter()
                .for_each(|q| set_high(&mut q.device)),
            reg::SHM_SEL => {}
            _ => return false,
        }
        true
    }

    fn write_queue_ready(&mut self, v: u32) {
        let Some(q) = self.selected() else { return };
        if v & 1 == 0 {
            // §4.2.2: writing 0 stops the queue; indexes restart at 0.
            q.ready = false;
            q.next_avail = 0;
            q.next_used = 0;
            return;
        }
        let size = q.size;
        let shape_ok = size != 0
            && size <= q.max_size
            && size.is_power_of_two()
            && q.desc.is_multiple_of(16)
            && q.driver.is_multiple_of(2)
            && q.device.is_multiple_of(4);
        q.ready = true;
        if !shape_ok {
            self.fail(QueueError::BadLayout);
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (§2.1.1); NEEDS_RESET is the device's.
        let mut new = self.status | (v & !status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let f = self.driver_features;
            if f & VIRTIO_F_VERSION_1 == 0 || f & !self.device_features != 0 {
                new &= !status::FEATURES_OK;
            }
        }
        let driver_ok_now = new & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0;
        self.status = new;
        if driver_ok_now {
            if new & status::FEATURES_OK == 0 {
                self.fail(QueueError::BadLayout);
            } else {
                // Pick up whatever was made available before DRIVER_OK.
                self.notified = (0..self.queues.len().min(32)).fold(0, |m, i| m | 1 << i);
            }
        }
    }
}

/// A virtio device on the virtio-mmio transport: what the hypervisor puts on
/// its [`Bus`](crate::devices::Bus). Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioMmio<D> {
    transport: Transport,
    device: D,
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// Put `device` on a transport in its reset state; interrupts are
    /// raised as `vector`.
    pub fn new(device: D, vector: u8) -> Self {
        Self {
            transport: Transport::new(device.features(), D::QUEUE_MAX, vector),
            device,
        }
    }

    /// The transport state.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Each queue's consumed and published indices and the pending
    /// notifications and interrupt, for a report.
    pub fn queue_detail(&self) -> alloc::string::String {
        let t = &self.transport;
        let mut s = alloc::format!(
            "notified {:#x} irq_pending {} isr {:#x} queues",
            t.notified,
            t.irq_pending,
            t.interrupt_status
        );
        for q in &t.queues {
            s.push_str(&alloc::format!(
                " [avail {} used {}]",
                q.next_avail,
                q.next_used
            ));
        }
        s
    }

    /// Whether a guest notification is waiting for [`VirtioMmio::process`].
    pub fn has_work(&self) -> bool {
        self.transport.notified != 0 || self.transport.irq_pending
    }

    /// Handle the queues the guest notified, emitting [`super::GuestOutput`]s
    /// to `sink`, then raise any pending interrupt. Call after every guest
    /// store to the device.
    pub fn process(
        &mut self,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
        irq: &mut dyn IrqLine,
    ) {
        let notified = core::mem::take(&mut self.transport.notified);
        for q in 0..self.transport.queues.len() {
            let ready = self.transport.queues[q].ready;
            if notified & (1 << q) != 0 && ready && self.transport.live() {
                self.device.process(&mut self.transport, q, mem, sink);
            }
        }
        self.poll_irq(irq);
    }

    /// Apply an asynchronous [`GuestInput`] (see the module docs of
    /// [`super`]) and raise the resulting interrupt.
    pub fn apply(
        &mut self,
        input: GuestInput,
        mem: &mut dyn GuestMemory,
        irq: &mut dyn IrqLine,
    ) -> Result<(), InputError> {
        let r = self.device.apply(&mut self.transport, input, mem);
        self.poll_irq(irq);
        r
    }

    /// Raise the interrupt if an event is pending.
    pub fn poll_irq(&mut self, irq: &mut dyn IrqLine) {
        if core::mem::take(&mut self.transport.irq_pending) && self.transport.interrupt_status != 0
        {
            irq.raise(self.transport.vector);
        }
    }
}

impl<D: VirtioDevice> MmioDevice for VirtioMmio<D> {
    fn mmio_read(&mut self, offset: u64, size: u8, _now: u64) -> u64 {
        if offset >= reg::CONFIG {
            if !matches!(size, 1 | 2 | 4 | 8) {
                self.transport.stats.bad_accesses += 1;
                return 0;
            }
            let mut b = [0u8; 8];
            self.device
                .read_config(offset - reg::CONFIG, &mut b[..size as usize]);
            return u64::from_le_bytes(b);
        }
        let value = (size == 4 && offset.is_multiple_of(4))
            .then(|| self.transport.read_reg(offset, D::DEVICE_ID))
            .flatten();
        value.map_or_else(
            || {
                self.transport.stats.bad_accesses += 1;
                0
            },
            u64::from,
        )
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64, _now: u64) {
        if offset >= reg::CONFIG {
            // No writable configuration fields are offered.
            return;
        }
        let ok =
            size == 4 && offset.is_multiple_of(4) && self.transport.write_reg(offset, value as u32);
        if !ok {
            self.transport.stats.bad_accesses += 1;
        } else if offset == reg::STATUS && value as u32 == 0 {
            self.device.reset();
        }
    }
}

//! The guest's I/O path: the virtio-mmio devices ftvisor gives every guest,
//! the backends behind them, and the two narrow points through which
//! everything enters and leaves the guest (DESIGN.md §1.1, §1.4).
//!
//! # Device layout (the guest ABI)
//!
//! Fixed, identical on every host, so primary and backup present the same
//! machine:
//!
//! | slot | guest-physical | device (virtio 1.2 §5) | device ID | vector |
//! |---|---|---|---|---|
//! | 0 | `0xFEB0_0000` | virtio-blk | 2 | `0x50` |
//! | 1 | `0xFEB0_1000` | virtio-net (MAC `52:54:00:f7:00:01`) | 1 | `0x51` |
//!
//! Each slot is a virtio-mmio transport (virtio 1.2 §4.2.2, `Version` 2, no
//! legacy interface) whose registers and configuration space fill the first
//! [`MMIO_SIZE`] (0x200) bytes of a 4 KiB page; the rest of the page is not
//! claimed (an access stops the guest like any unmapped access). Interrupts
//! are fixed-delivery, edge-triggered LAPIC vectors (no IOAPIC): the guest
//! acknowledges the device with `InterruptACK` and the LAPIC with EOI.
//! A `guest=linux` guest instead finds the slots in the DSDT (`LNRO0005`,
//! [`crate::acpi::dsdt`]) with their interrupts on I/O APIC pins
//! [`Slot::gsi`] (level, active high, shared): the pin is asserted while
//! `InterruptStatus` is non-zero.
//!
//! The layout is also announced in CPUID leaf `0x4000_0001`
//! (`vmx::exit::cpuid`, within the range of leaf `0x4000_0000`):
//! EAX = guest-physical base of slot 0, EBX = number of slots, ECX = slot
//! stride, EDX = vector of slot 0 (slot *i* uses EDX + *i*). A slot's device
//! type is its `DeviceID` register.
//!
//! # Where inputs and outputs pass
//!
//! - [`GuestIo::after_access`] runs after each guest access to a device
//!   (the MMIO exit): the device processes what the guest notified
//!   ([`VirtioMmio::process`]) and every [`GuestOutput`] it emits goes
//!   through [`GuestIo::output`] — the one place outputs leave, in guest
//!   order, where the FT layer will hold them for the output rule (§1.4) and
//!   drop them on the backup (§1.5).
//! - [`GuestIo::poll`] runs once per run-loop iteration, outside any exit:
//!   backend completions and received frames become [`GuestInput`]s and go
//!   through [`GuestIo::input`] — the one place inputs enter, where the FT
//!   layer will log them with their execution point on the primary and from
//!   where the backup applies them from the log.
//!
//! Backends sit behind [`disk::BlockBackend`] and [`wire::NetBackend`];
//! device DMA into guest RAM goes through [`ram::GuestRam`] and is recorded
//! in a [`ram::DirtyLog`] for state transfer (§1.9).
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::config::{Config, DiskChoice, GuestNetChoice};
use crate::devices::virtio::blk::Blk;
use crate::devices::virtio::mmio::MMIO_SIZE;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{GuestInput, GuestOutput, InputError, VirtioMmio};
use crate::devices::{IrqLine, MmioDevice};

pub mod bridge;
pub mod disk;
pub mod iscsi_disk;
pub mod ram;
pub mod wire;

#[cfg(test)]
mod tests;

use disk::{BlockBackend, BlockRequest, RamDisk};
use ram::{DirtyLog, GuestRam};
use wire::{Loopback, NetBackend, NoWire};

/// Guest-physical address of slot 0.
pub const VIRTIO_MMIO_BASE: u64 = 0xFEB0_0000;
/// Distance between slots.
pub const SLOT_STRIDE: u64 = 0x1000;
/// Interrupt vector of slot 0; slot *i* uses `VECTOR_BASE + i`.
pub const VECTOR_BASE: u8 = 0x50;
/// I/O APIC pin (GSI) of slot 0 for a Linux guest; slot *i* uses
/// `LINUX_GSI_BASE + i` (above the 16 ISA IRQs, unused by anything else).
pub const LINUX_GSI_BASE: u32 = 16;
/// The guest NIC's MAC address (locally administered).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xF7, 0x00, 0x01];
/// What the disk answers to `VIRTIO_BLK_T_GET_ID`.
pub const DISK_SERIAL: &[u8] = b"ftvisor-disk0";
/// The CPUID leaf that announces the layout.
pub const CPUID_LEAF: u32 = 0x4000_0001;

/// The CPUID leaf [`CPUID_LEAF`] as `[eax, ebx, ecx, edx]`.
pub const fn cpuid_leaf() -> [u32; 4] {
    [
        VIRTIO_MMIO_BASE as u32,
        Slot::ALL.len() as u32,
        SLOT_STRIDE as u32,
        VECTOR_BASE as u32,
    ]
}

/// A device slot of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot 0: virtio-blk.
    Blk = 0,
    /// Slot 1: virtio-net.
    Net = 1,
}

impl Slot {
    /// Every slot, in order.
    pub const ALL: [Slot; 2] = [Slot::Blk, Slot::Net];

    /// Guest-physical base of the slot's registers.
    pub const fn base(self) -> u64 {
        VIRTIO_MMIO_BASE + self as u64 * SLOT_STRIDE
    }

    /// Bytes the slot's device claims.
    pub const fn size(self) -> u64 {
        MMIO_SIZE
    }

    /// The slot's interrupt vector.
    pub const fn vector(self) -> u8 {
        VECTOR_BASE + self as u8
    }

    /// The slot's I/O APIC pin for a Linux guest.
    pub const fn gsi(self) -> u32 {
        LINUX_GSI_BASE + self as u32
    }

    /// Name for the log.
    pub const fn name(self) -> &'static str {
        match self {
            Slot::Blk => "virtio-blk",
            Slot::Net => "virtio-net",
        }
    }
}

/// Counters of the two chokepoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Outputs routed to a backend.
    pub outputs: u64,
    /// Inputs applied.
    pub inputs: u64,
    /// Inputs a device refused ([`InputError`]).
    pub refused: u64,
    /// Outputs discarded instead of routed (replay, FT backup).
    pub discarded: u64,
    /// Completions the disk backend delivered.
    pub disk_done: u64,
    /// Frames the wire brought while detached, dropped: they belong to the
    /// primary's guest, and at go-live they would be stale input (§1.8).
    pub dropped_detached: u64,
}

/// The guest's virtio devices and their backends.
pub struct GuestIo {
    /// Slot 0.
    pub blk: VirtioMmio<Blk>,
    /// Slot 1.
    pub net: VirtioMmio<Net>,
    disk: Box<dyn BlockBackend>,
    wire: Box<dyn NetBackend>,
    /// Guest pages the devices wrote.
    pub dirty: DirtyLog,
    stats: IoStats,
    fatal_seen: [u64; 2],
    notices: Vec<String>,
    /// Replay (issue 8) or FT backup: the backends are not used; outputs
    /// are discarded (counted) and inputs come from the log.
    detached: bool,
    /// FT primary (DESIGN.md §1.4): outputs are held here until the FT
    /// layer takes them ([`GuestIo::take_gated`]) and lets each out with
    /// [`GuestIo::emit`] once the backup acknowledged the log up to it.
    gated: bool,
    gate_queue: Vec<(Slot, GuestOutput)>,
    /// Outputs taken by the FT layer and not emitted yet.
    held_outside: usize,
    /// While detached (replay, FT backup): block requests the guest
    /// submitted whose completion has not come from the log yet, by id, in
    /// submission order; re-issued when the backends are attached again
    /// (an FT backup going live, §1.7).
    pending_blk: alloc::collections::BTreeMap<u64, GuestOutput>,
    /// Guest RAM the devices address.
    ram_bytes: u64,
    /// Disk completions collected from the backend by
    /// [`GuestIo::poll_backends`], delivered at the next poll.
    early_done: Vec<GuestInput>,
}

/// What [`GuestIo::go_live`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reattached {
    /// Block requests re-issued to the real disk.
    pub reissued: usize,
    /// Whether a RARP announcing the guest's MAC went out on the wire.
    pub announced: bool,
    /// Frames dropped while detached (none reaches the guest as new input).
    pub dropped_frames: u64,
}

/// A RARP request (RFC 903) from `mac`, to broadcast: what VMware FT sends
/// when a backup goes live, so that switches learn the guest's MAC on its
/// new port (the guest's IP address is not needed).
pub fn rarp_announcement(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xFF; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // EtherType RARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet/IPv4, request reverse
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac); // target hardware address
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0); // minimum frame without FCS
    f
}

impl GuestIo {
    /// Devices in reset state over `ram_bytes` of guest RAM, with the given
    /// backends.
    pub fn new(ram_bytes: u64, disk: Box<dyn BlockBackend>, wire: Box<dyn NetBackend>) -> Self {
        Self {
            blk: VirtioMmio::new(
                Blk::new(disk.capacity_sectors(), DISK_SERIAL),
                Slot::Blk.vector(),
            ),
            net: VirtioMmio::new(Net::new(GUEST_MAC), Slot::Net.vector()),
            disk,
            wire,
            dirty: DirtyLog::new(ram_bytes),
            stats: IoStats::default(),
            fatal_seen: [0; 2],
            notices: Vec::new(),
            detached: false,
            gated: false,
            gate_queue: Vec::new(),
            held_outside: 0,
            pending_blk: Default::default(),
            ram_bytes,
            early_done: Vec::new(),
        }
    }

    /// The backends `config` asks for (`disk=`, `guest_net=`).
    pub fn from_config(ram_bytes: u64, config: &Config) -> Self {
        // `disk=iscsi` and `guest_net=bridge` need the hypervisor's NIC:
        // the kernel binary builds those backends ([`bridge`],
        // [`iscsi_disk`]) and calls [`GuestIo::new`]; here they stand in
        // as no disk and no wire.
        let disk: Box<dyn BlockBackend> = match config.disk {
            DiskChoice::None | DiskChoice::Iscsi => Box::new(RamDisk::new(0)),
            DiskChoice::Ram { bytes } => Box::new(RamDisk::new(bytes)),
        };
        let wire: Box<dyn NetBackend> = match config.guest_net {
            GuestNetChoice::None | GuestNetChoice::Bridge => Box::new(NoWire::default()),
            GuestNetChoice::Loopback => Box::new(Loopback::default()),
        };
        Self::new(ram_bytes, disk, wire)
    }

    /// Guest RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// The guest disk's capacity in 512-byte sectors.
    pub fn disk_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// The disk backend, for building a [`GuestIo`] with another wire.
    pub fn into_disk(self) -> Box<dyn BlockBackend> {
        self.disk
    }

    /// Whether the shared disk refused this node: another node preempted
    /// its reservation (DESIGN.md §1.7 fencing); it must halt.
    pub fn disk_fenced(&self) -> bool {
        self.disk.fenced()
    }

    /// The guest disk's session on the shared LUN, if the disk is there:
    /// the FT node arbitrates and fences through it (one I_T nexus per
    /// node, DESIGN.md §1.7).
    pub fn shared_lun(&mut self) -> Option<&mut dyn drivers::arbitration::FlagDisk> {
        self.disk.shared_lun()
    }

    /// The slot's device, for the bus.
    pub fn mmio_device(&mut self, slot: Slot) -> &mut dyn MmioDevice {
        match slot {
            Slot::Blk => &mut self.blk,
            Slot::Net => &mut self.net,
        }
    }

    /// The slot's `InterruptStatus` (non-zero: its interrupt line is
    /// asserted).
    pub fn interrupt_status(&self, slot: Slot) -> u32 {
        match slot {
            Slot::Blk => self.blk.transport().interrupt_status(),
            Slot::Net => self.net.transport().interrupt_status(),
        }
    }

    /// Lines describing the layout and the backends.
    pub fn describe(&self) -> [String; 2] {
        [
            alloc::format!(
                "{} at {:#x} vector {:#x}: {}",
                Slot::Blk.name(),
                Slot::Blk.base(),
                Slot::Blk.vector(),
                self.disk.describe()
            ),
            alloc::format!(
                "{} at {:#x} vector {:#x}: {}",
                Slot::Net.name(),
                Slot::Net.base(),
                Slot::Net.vector(),
                self.wire.describe()
            ),
        ]
    }

    /// After a guest access to a device: process what the guest notified and
    /// route the outputs. Cheap when nothing was notified.
    pub fn after_access(&mut self, ram: &mut [u8], irq: &mut dyn IrqLine) {
        for slot in Slot::ALL {
            let mut out: Vec<GuestOutput> = Vec::new();
            let mut mem = GuestRam::new(ram, &mut self.dirty);
            match slot {
                Slot::Blk if self.blk.has_work() => self.blk.process(&mut mem, &mut out, irq),
                Slot::Net if self.net.has_work() => self.net.process(&mut mem, &mut out, irq),
                _ => continue,
            }
            for o in out {
                self.output(slot, o);
            }
        }
        self.check_fatal();
    }

    /// Every output of every device passes here, in guest order, and goes to
    /// the slot's backend.
    pub fn output(&mut self, slot: Slot, out: GuestOutput) {
        if self.detached {
            self.stats.discarded += 1;
            if slot == Slot::Blk {
                if let Ok(req) = BlockRequest::from_output(out.clone()) {
                    self.pending_blk.insert(req.id(), out);
                }
            }
            return;
        }
        if self.gated {
            self.gate_queue.push((slot, out));
            return;
        }
        self.emit_now(slot, out);
    }

    /// FT primary: hold every output until the FT layer lets it out.
    pub fn set_gated(&mut self, gated: bool) {
        self.gated = gated;
    }

    /// FT primary: the outputs held since the last call, in guest order;
    /// each must come back through [`GuestIo::emit`] (or the guest waits
    /// for it forever).
    pub fn take_gated(&mut self) -> Vec<(Slot, GuestOutput)> {
        self.held_outside += self.gate_queue.len();
        core::mem::take(&mut self.gate_queue)
    }

    /// FT primary: an output taken with [`GuestIo::take_gated`] may leave.
    pub fn emit(&mut self, slot: Slot, out: GuestOutput) {
        self.held_outside = self.held_outside.saturating_sub(1);
        self.emit_now(slot, out);
    }

    /// An FT backup goes live (DESIGN.md §1.7): the backends are attached
    /// again, every block request the guest is still waiting for (its
    /// completion never came from the log) is re-issued, and the guest's
    /// MAC is announced on the wire.
    pub fn go_live(&mut self) -> Reattached {
        self.drop_wire_input();
        self.detached = false;
        let pending = core::mem::take(&mut self.pending_blk);
        let reissued = pending.len();
        for (_, out) in pending {
            self.emit_now(Slot::Blk, out);
        }
        let announced = self.wire.is_physical();
        if announced {
            self.wire.send(rarp_announcement(GUEST_MAC));
        }
        Reattached {
            reissued,
            announced,
            dropped_frames: self.stats.dropped_detached,
        }
    }

    /// Detached: what the wire brought is not this guest's input (the log
    /// carries that); dropped and counted, so nothing stale is queued.
    fn drop_wire_input(&mut self) {
        let mut frames = Vec::new();
        self.wire.poll(&mut frames);
        self.stats.dropped_detached += frames.len() as u64;
    }

    fn emit_now(&mut self, slot: Slot, out: GuestOutput) {
        self.stats.outputs += 1;
        match (slot, out) {
            (Slot::Net, GuestOutput::Frame(frame)) => self.wire.send(frame),
            (Slot::Blk, out) => match BlockRequest::from_output(out) {
                Ok(req) => self.disk.submit(req),
                Err(other) => self.notice(slot, alloc::format!("unroutable output {other:?}")),
            },
            (Slot::Net, other) => self.notice(slot, alloc::format!("unroutable output {other:?}")),
        }
    }

    /// Every asynchronous input enters the guest here: applied to the slot's
    /// device, which writes guest RAM and raises its vector on `irq`.
    pub fn input(
        &mut self,
        slot: Slot,
        input: GuestInput,
        ram: &mut [u8],
        irq: &mut dyn IrqLine,
    ) -> Result<(), InputError> {
        let mut mem = GuestRam::new(ram, &mut self.dirty);
        if let (Slot::Blk, GuestInput::BlockDone { id, .. }) = (slot, &input) {
            self.pending_blk.remove(id);
        }
        let r = match slot {
            Slot::Blk => self.blk.apply(input, &mut mem, irq),
            Slot::Net => self.net.apply(input, &mut mem, irq),
        };
        match r {
            Ok(()) => self.stats.inputs += 1,
            Err(e) => {
                self.stats.refused += 1;
                let what = match e {
                    InputError::WrongDevice => 1,
                    InputError::UnknownRequest(_) => 2,
                    InputError::BadReadLength { .. } => 3,
                };
                self.dirty.absorb_refusal(slot as u64, what);
                self.notice(slot, alloc::format!("input refused: {e:?}"));
            }
        }
        self.check_fatal();
        r
    }

    /// Replay or FT backup (`true`): the backends are detached — every
    /// output is discarded and counted, [`Self::poll`] delivers nothing,
    /// and inputs come only through [`Self::input`] from the log.
    pub fn set_detached(&mut self, detached: bool) {
        self.detached = detached;
    }

    /// Once per run-loop iteration: deliver what the backends finished
    /// since the last call. Returns how many inputs were delivered.
    pub fn poll(&mut self, ram: &mut [u8], irq: &mut dyn IrqLine) -> usize {
        self.poll_with(ram, irq, |_, _| {})
    }

    /// [`Self::poll`], showing each input to `seen` just before it is
    /// applied (record mode logs it there with its execution point).
    pub fn poll_with(
        &mut self,
        ram: &mut [u8],
        irq: &mut dyn IrqLine,
        mut seen: impl FnMut(Slot, &GuestInput),
    ) -> usize {
        if self.detached {
            self.drop_wire_input();
            // The disk's session is kept alive (its keep-alives answered,
            // a lost connection opened again), so that a go-live does not
            // wait for a login (issue 15). Nothing was submitted while
            // detached: nothing completes.
            let mut done = Vec::new();
            self.disk.poll(&mut done);
            return 0;
        }
        let mut done = core::mem::take(&mut self.early_done);
        self.collect_disk(&mut done);
        let mut frames = Vec::new();
        self.wire.poll(&mut frames);
        let n = done.len() + frames.len();
        for d in done {
            seen(Slot::Blk, &d);
            let _ = self.input(Slot::Blk, d, ram, irq);
        }
        for f in frames {
            let f = GuestInput::Frame(f);
            seen(Slot::Net, &f);
            let _ = self.input(Slot::Net, f, ram, irq);
        }
        n
    }

    /// Collects the disk backend's completions without delivering them
    /// (the guest is not at an input point: an FT primary waiting for its
    /// backup); the next [`Self::poll_with`] delivers them first, in
    /// order. The backend's session stays served and its progress counts
    /// ([`IoStats::disk_done`]), so a long wait is not taken for a stalled
    /// disk (issue 15: a 4 s throttle made a primary step down).
    pub fn poll_backends(&mut self) {
        if self.detached {
            return;
        }
        let mut done = core::mem::take(&mut self.early_done);
        self.collect_disk(&mut done);
        self.early_done = done;
    }

    fn collect_disk(&mut self, done: &mut Vec<GuestInput>) {
        let before = done.len();
        self.disk.poll(done);
        self.stats.disk_done += (done.len() - before) as u64;
    }

    /// Requests the disk backend holds (queued or on the medium).
    pub fn disk_in_flight(&self) -> usize {
        if self.detached {
            0
        } else {
            self.disk.in_flight()
        }
    }

    /// Whether the devices owe the guest nothing and hold nothing outside
    /// the device models: no disk request in flight or completed and not
    /// delivered, no output waiting for the output rule. A repair stops
    /// the guest only then: the new backup's devices must not wait for a
    /// completion that belongs to the old pair (issue 16).
    pub fn quiescent(&self) -> bool {
        (self.detached || self.disk.in_flight() == 0)
            && self.early_done.is_empty()
            && self.gate_queue.is_empty()
            && self.held_outside == 0
            && self.pending_blk.is_empty()
    }

    /// What the devices owe the guest, for a report: requests in flight,
    /// completions not delivered, outputs held, and each queue's indices.
    pub fn busy_detail(&self) -> String {
        alloc::format!(
            "detached {} gated {} disk in flight {} early completions {} gate queue {} held outside {} pending (detached) {} wire in flight {}; blk {}; net {}",
            self.detached,
            self.gated,
            self.disk.in_flight(),
            self.early_done.len(),
            self.gate_queue.len(),
            self.held_outside,
            self.pending_blk.len(),
            self.wire.in_flight(),
            self.blk.queue_detail(),
            self.net.queue_detail()
        )
    }

    /// Whether a backend still owes the guest an input.
    pub fn busy(&self) -> bool {
        !self.detached
            && self.disk.in_flight()
                + self.early_done.len()
                + self.wire.in_flight()
                + self.gate_queue.len()
                + self.held_outside
                > 0
    }

    /// Counters of the chokepoints.
    pub fn stats(&self) -> IoStats {
        self.stats
    }

    /// Events worth a log line since the last call (a device entering
    /// `DEVICE_NEEDS_RESET`, a refused input).
    pub fn take_notices(&mut self) -> Vec<String> {
        core::mem::take(&mut self.notices)
    }

    /// One-line counters for the end-of-run report.
    pub fn summary(&self) -> String {
        let b = self.blk.device().stats();
        let bt = self.blk.transport().stats();
        let d = self.disk.stats();
        let n = self.net.device().stats();
        let nt = self.net.transport().stats();
        let w = self.wire.stats();
        alloc::format!(
            "blk requests={} ok={} errors={} needs_reset={} bad_accesses={} | disk reads={} writes={} flushes={} read={}KiB written={}KiB | net tx={} tx_dropped={} rx={} rx_no_buffer={} needs_reset={} bad_accesses={} | wire sent={} delivered={} dropped={} | outputs discarded={} | device-dirtied pages={}",
            b.submitted,
            b.ok,
            b.errors,
            bt.fatal_errors,
            bt.bad_accesses,
            d.reads,
            d.writes,
            d.flushes,
            d.bytes_read >> 10,
            d.bytes_written >> 10,
            n.tx_frames,
            n.tx_dropped,
            n.rx_frames,
            n.rx_no_buffer,
            nt.fatal_errors,
            nt.bad_accesses,
            w.sent,
            w.delivered,
            w.dropped,
            self.stats.discarded,
            self.dirty.count(),
        )
    }

    fn notice(&mut self, slot: Slot, what: String) {
        self.notices.push(alloc::format!(
            "{} at {:#x}: {what}",
            slot.name(),
            slot.base()
        ));
    }

    /// Note each device that entered `DEVICE_NEEDS_RESET` since last time.
    fn check_fatal(&mut self) {
        for slot in Slot::ALL {
            let t = match slot {
                Slot::Blk => self.blk.transport().stats(),
                Slot::Net => self.net.transport().stats(),
            };
            let (n, last) = (t.fatal_errors, t.last_error);
            if n != self.fatal_seen[slot as usize] {
                self.fatal_seen[slot as usize] = n;
                self.notice(
                    slot,
                    alloc::format!(
                        "DEVICE_NEEDS_RESET (driver error #{n}: {last:?}); queues ignored until the guest resets the device"
                    ),
                );
            }
        }
    }
}

//! Host tests of the guest I/O path: layout, dirty log, bounds, the RAM disk
//! and loopback backends, and whole requests through [`GuestIo`] driven the
//! way the hypervisor drives it (register access, `after_access`, `poll`).
use super::*;
use crate::devices::virtio::mmio::{reg, status, INT_CONFIG_CHANGE, INT_USED_BUFFER};
use crate::devices::virtio::queue::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::devices::virtio::{BlockStatus, GuestMemory};
use alloc::vec;

#[derive(Default)]
struct Irqs(Vec<u8>);

impl IrqLine for Irqs {
    fn raise(&mut self, vector: u8) {
        self.0.push(vector);
    }
}

const RAM: usize = 1 << 20;
const QSIZE: u16 = 8;

/// Ring addresses of queue `q`.
fn rings(q: u16) -> (u64, u64, u64) {
    let base = 0x1_0000 + u64::from(q) * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

/// A minimal guest driver: registers through the bus interface, rings and
/// buffers in `ram`, `after_access` after every store, like `Machine::mmio`.
struct Guest {
    io: GuestIo,
    ram: Vec<u8>,
    irqs: Irqs,
    avail: [u16; 2],
    used_seen: [u16; 2],
}

impl Guest {
    fn new(guest_net: GuestNetChoice) -> Self {
        let config = Config {
            disk: DiskChoice::Ram { bytes: 64 << 10 },
            guest_net,
            ..Config::default()
        };
        Self {
            io: GuestIo::from_config(RAM as u64, &config),
            ram: vec![0; RAM],
            irqs: Irqs::default(),
            avail: [0; 2],
            used_seen: [0; 2],
        }
    }

    fn w(&mut self, slot: Slot, off: u64, v: u32) {
        self.io.mmio_device(slot).mmio_write(off, 4, v.into(), 0);
        self.io.after_access(&mut self.ram, &mut self.irqs);
    }

    fn r(&mut self, slot: Slot, off: u64) -> u32 {
        let v = self.io.mmio_device(slot).mmio_read(off, 4, 0) as u32;
        self.io.after_access(&mut self.ram, &mut self.irqs);
        v
    }

    fn poll(&mut self) -> usize {
        self.io.poll(&mut self.ram, &mut self.irqs)
    }

    fn put(&mut self, gpa: u64, data: &[u8]) {
        self.ram[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }

    fn get(&self, gpa: u64, len: usize) -> &[u8] {
        &self.ram[gpa as usize..gpa as usize + len]
    }

    fn init(&mut self, slot: Slot, queues: u16) {
        self.w(slot, reg::STATUS, 0);
        self.w(
            slot,
            reg::STATUS,
            u32::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        self.w(slot, reg::DRIVER_FEATURES_SEL, 1);
        self.w(slot, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        self.w(slot, reg::STATUS, u32::from(status::FEATURES_OK));
        assert_ne!(self.r(slot, reg::STATUS) as u8 & status::FEATURES_OK, 0);
        for q in 0..queues {
            let (d, a, u) = rings(q);
            self.w(slot, reg::QUEUE_SEL, q.into());
            self.w(slot, reg::QUEUE_NUM, QSIZE.into());
            self.w(slot, reg::QUEUE_DESC_LOW, d as u32);
            self.w(slot, reg::QUEUE_DRIVER_LOW, a as u32);
            self.w(slot, reg::QUEUE_DEVICE_LOW, u as u32);
            self.w(slot, reg::QUEUE_READY, 1);
        }
        self.w(slot, reg::STATUS, u32::from(status::DRIVER_OK));
        self.avail = [0; 2];
        self.used_seen = [0; 2];
    }

    /// Post a chain of `(gpa, len, writable)` buffers on queue `q` and
    /// notify; descriptors are taken from index 0 each time.
    fn post(&mut self, slot: Slot, q: u16, bufs: &[(u64, u32, bool)]) {
        let (d, a, _) = rings(q);
        for (i, &(gpa, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let mut desc = [0u8; 16];
            desc[0..8].copy_from_slice(&gpa.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.put(d + 16 * i as u64, &desc);
        }
        let idx = self.avail[q as usize];
        self.put(a + 4 + 2 * u64::from(idx % QSIZE), &0u16.to_le_bytes());
        self.avail[q as usize] = idx.wrapping_add(1);
        self.put(a + 2, &self.avail[q as usize].to_le_bytes());
        self.w(slot, reg::QUEUE_NOTIFY, q.into());
    }

    /// Used-ring entries of queue `q` not seen yet, as `(id, len)`.
    fn used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let (_, _, u) = rings(q);
        let idx = u16::from_le_bytes(self.get(u + 2, 2).try_into().unwrap());
        let mut out = vec![];
        while self.used_seen[q as usize] != idx {
            let slot = u64::from(self.used_seen[q as usize] % QSIZE);
            let e = self.get(u + 4 + 8 * slot, 8);
            out.push((
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            ));
            self.used_seen[q as usize] = self.used_seen[q as usize].wrapping_add(1);
        }
        out
    }

    /// A block request: header at 0x20000, data at 0x30000, status at
    /// 0x2F000.
    fn blk(&mut self, kind: u32, sector: u64, data_len: u32, write_data: bool) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.put(0x2_0000, &h);
        self.put(0x2_F000, &[0xFF]);
        let mut bufs = vec![(0x2_0000, 16, false)];
        if data_len > 0 {
            bufs.push((0x3_0000, data_len, !write_data));
        }
        bufs.push((0x2_F000, 1, true));
        self.post(Slot::Blk, 0, &bufs);
    }
}

#[test]
fn layout_is_the_announced_one() {
    assert_eq!(cpuid_leaf(), vmx::exit::cpuid::VIRTIO_LAYOUT);
    assert_eq!(vmx::exit::cpuid::model(CPUID_LEAF, 0), cpuid_leaf());
    assert_eq!(Slot::Blk.base(), 0xFEB0_0000);
    assert_eq!(Slot::Net.base(), 0xFEB0_1000);
    assert_eq!((Slot::Blk.vector(), Slot::Net.vector()), (0x50, 0x51));
    assert!(Slot::Blk.base() + Slot::Blk.size() <= Slot::Net.base());
    let mut g = Guest::new(GuestNetChoice::None);
    assert_eq!(g.r(Slot::Blk, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(g.r(Slot::Blk, reg::DEVICE_ID), 2);
    assert_eq!(g.r(Slot::Net, reg::DEVICE_ID), 1);
    // capacity (64 KiB = 128 sectors) in blk config space
    assert_eq!(g.r(Slot::Blk, reg::CONFIG), 128);
}

#[test]
fn dirty_log_marks_pages_once_and_clamps_to_ram() {
    let mut d = DirtyLog::new(10 * ram::PAGE);
    d.mark(0, 0);
    assert_eq!(d.count(), 0);
    d.mark(4095, 2); // straddles pages 0 and 1
    d.mark(100, 1);
    assert_eq!(d.count(), 2);
    assert!(d.is_dirty(0) && d.is_dirty(1) && !d.is_dirty(2));
    d.mark(9 * ram::PAGE, u64::MAX); // clamped to the last page
    d.mark(u64::MAX - 1, 1); // entirely outside
    assert_eq!(d.take(), vec![0, 1, 9]);
    assert_eq!(d.count(), 0);
    assert!(d.take().is_empty());
    // A pre-copy's rounds are their own: `take` did not clear them, and
    // taking a round leaves the counts alone.
    assert_eq!(d.take_round(), vec![0, 1, 9]);
    assert!(d.take_round().is_empty());
    d.mark(3 * ram::PAGE, 1);
    assert_eq!((d.take_round(), d.count()), (vec![3], 1));
}

#[test]
fn guest_ram_is_bounds_checked_and_logs_writes() {
    let mut ram = vec![0u8; 3 * ram::PAGE as usize];
    let mut dirty = DirtyLog::new(ram.len() as u64);
    let mut m = GuestRam::new(&mut ram, &mut dirty);
    assert!(m.contains(0, 3 * ram::PAGE));
    assert!(!m.contains(1, 3 * ram::PAGE));
    assert!(!m.contains(u64::MAX, 2));
    assert!(m.write(3 * ram::PAGE - 1, &[1, 2]).is_err());
    assert!(m.write(u64::MAX, &[1]).is_err());
    let mut b = [0u8; 4];
    assert!(m.read(3 * ram::PAGE - 2, &mut b).is_err());
    m.write(ram::PAGE + 5, &[7; 4]).unwrap();
    m.read(ram::PAGE + 4, &mut b).unwrap();
    assert_eq!(b, [0, 7, 7, 7]);
    assert_eq!(dirty.take(), vec![1]);
}

#[test]
fn the_device_write_digest_tells_data_and_places_apart_and_survives_take() {
    let digest = |writes: &[(u64, &[u8])]| {
        let mut ram = vec![0u8; 2 * ram::PAGE as usize];
        let mut dirty = DirtyLog::new(ram.len() as u64);
        let mut m = GuestRam::new(&mut ram, &mut dirty);
        for (gpa, data) in writes {
            m.write(*gpa, data).unwrap();
        }
        let before = dirty.digest();
        let _ = dirty.take();
        assert_eq!(dirty.digest(), before, "taking the dirty pages keeps it");
        before
    };
    let a = digest(&[(8, &[1, 2, 3]), (100, &[4])]);
    assert_eq!(a, digest(&[(8, &[1, 2, 3]), (100, &[4])]), "deterministic");
    assert_ne!(a, digest(&[(8, &[1, 2, 9]), (100, &[4])]), "one byte");
    assert_ne!(a, digest(&[(9, &[1, 2, 3]), (100, &[4])]), "another place");
    assert_ne!(a, digest(&[(100, &[4]), (8, &[1, 2, 3])]), "another order");
    assert_ne!(a, digest(&[]), "no writes");
}

#[test]
fn ram_disk_completes_at_the_next_poll_only() {
    let mut d = RamDisk::new(4096 + 100);
    assert_eq!(d.capacity_sectors(), 8);
    d.submit(BlockRequest::Write {
        id: 1,
        sector: 7,
        data: vec![0xAB; 512],
    });
    d.submit(BlockRequest::Read {
        id: 2,
        sector: 7,
        len: 1024,
    });
    d.submit(BlockRequest::Read {
        id: 3,
        sector: 6,
        len: 1024,
    });
    d.submit(BlockRequest::Flush { id: 4 });
    assert_eq!(d.in_flight(), 4);
    let mut done = vec![];
    d.poll(&mut done);
    assert_eq!(d.in_flight(), 0);
    let ok = |id| GuestInput::BlockDone {
        id,
        status: BlockStatus::Ok,
        data: vec![],
    };
    let mut read = vec![0u8; 1024];
    read[512..].fill(0xAB);
    assert_eq!(
        done,
        vec![
            ok(1),
            GuestInput::BlockDone {
                id: 2,
                status: BlockStatus::IoErr,
                data: vec![]
            },
            GuestInput::BlockDone {
                id: 3,
                status: BlockStatus::Ok,
                data: read
            },
            ok(4),
        ]
    );
    let s = d.stats();
    assert_eq!((s.reads, s.writes, s.flushes, s.errors), (2, 1, 1, 1));
    assert_eq!(
        BlockRequest::from_output(GuestOutput::Frame(vec![1])),
        Err(GuestOutput::Frame(vec![1]))
    );
}

#[test]
fn block_write_flush_read_through_the_chokepoints() {
    let mut g = Guest::new(GuestNetChoice::None);
    g.init(Slot::Blk, 1);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    g.put(0x3_0000, &pattern);
    g.blk(1, 5, 1024, true); // OUT, sectors 5..7
                             // Submitted in the notify exit, not completed there.
    assert!(g.used(0).is_empty());
    assert!(g.irqs.0.is_empty());
    assert!(g.io.busy());
    assert_eq!(g.io.stats().outputs, 1);
    assert_eq!(g.poll(), 1);
    assert!(!g.io.busy());
    assert_eq!(g.used(0), vec![(0, 1)]);
    assert_eq!(g.get(0x2_F000, 1), &[0]); // VIRTIO_BLK_S_OK
    assert_eq!(g.irqs.0, vec![Slot::Blk.vector()]);
    assert_eq!(g.r(Slot::Blk, reg::INTERRUPT_STATUS), INT_USED_BUFFER);
    g.w(Slot::Blk, reg::INTERRUPT_ACK, INT_USED_BUFFER);

    g.blk(4, 0, 0, false); // FLUSH
    g.poll();
    assert_eq!(g.used(0), vec![(0, 1)]);
    assert_eq!(g.get(0x2_F000, 1), &[0]);

    g.put(0x3_0000, &[0; 1024]);
    g.io.dirty.take();
    g.blk(0, 5, 1024, false); // IN
    g.poll();
    assert_eq!(g.used(0), vec![(0, 1025)]);
    assert_eq!(g.get(0x3_0000, 1024), &pattern[..]);
    // The device wrote the data page, the status byte and the used ring.
    let dirty = g.io.dirty.take();
    let (_, _, used) = rings(0);
    for page in [0x3_0000 / ram::PAGE, 0x2_F000 / ram::PAGE, used / ram::PAGE] {
        assert!(dirty.contains(&page), "page {page:#x} not dirty: {dirty:?}");
    }
    assert_eq!(g.io.stats().inputs, 3);
    assert!(g.io.take_notices().is_empty());
    assert!(g.io.summary().contains("disk reads=1 writes=1 flushes=1"));
}

#[test]
fn loopback_reflects_frames_and_no_wire_drops_them() {
    for (choice, back) in [
        (GuestNetChoice::Loopback, true),
        (GuestNetChoice::None, false),
    ] {
        let mut g = Guest::new(choice);
        g.init(Slot::Net, 2);
        g.post(Slot::Net, 0, &[(0x4_0000, 2048, true)]); // rx buffer
        let mut frame = vec![0u8; 12 + 60];
        frame[12..18].copy_from_slice(&GUEST_MAC);
        frame[24..26].copy_from_slice(&0x88B5u16.to_be_bytes());
        frame[26..].fill(0x5A);
        g.put(0x5_0000, &frame);
        g.post(Slot::Net, 1, &[(0x5_0000, frame.len() as u32, false)]);
        assert_eq!(g.used(1), vec![(0, 0)]); // tx buffer returned at once
        assert!(g.used(0).is_empty()); // nothing received inside the exit
        g.poll();
        if back {
            assert_eq!(g.used(0), vec![(0, frame.len() as u32)]);
            assert_eq!(g.get(0x4_0000 + 12, 60), &frame[12..]);
        } else {
            assert!(g.used(0).is_empty());
            assert!(g.io.summary().contains("wire sent=1 delivered=0 dropped=1"));
        }
        assert!(g.irqs.0.iter().all(|&v| v == Slot::Net.vector()));
    }
}

#[test]
fn detached_backends_discard_outputs_and_take_inputs_only_through_input() {
    // Replay / FT backup (issue 8): a frame the guest sends is discarded
    // and counted, nothing comes back from the loopback; the logged frame
    // enters through `input` and lands like a received one.
    let mut g = Guest::new(GuestNetChoice::Loopback);
    g.io.set_detached(true);
    g.init(Slot::Net, 2);
    g.post(Slot::Net, 0, &[(0x4_0000, 2048, true)]);
    let mut frame = vec![0u8; 12 + 60];
    frame[12..18].copy_from_slice(&GUEST_MAC);
    frame[26..].fill(0x5A);
    g.put(0x5_0000, &frame);
    g.post(Slot::Net, 1, &[(0x5_0000, frame.len() as u32, false)]);
    assert_eq!(g.used(1), vec![(0, 0)]); // the device still returns tx
    assert_eq!(g.poll(), 0);
    assert!(!g.io.busy());
    assert!(g.used(0).is_empty());
    assert_eq!(g.io.stats().discarded, 1);
    assert_eq!(g.io.stats().outputs, 0);
    assert!(g.io.summary().contains("wire sent=0"));
    let logged = GuestInput::Frame(frame[12..].to_vec());
    g.io.input(Slot::Net, logged, &mut g.ram, &mut g.irqs)
        .unwrap();
    assert_eq!(g.used(0), vec![(0, frame.len() as u32)]);
    assert_eq!(g.get(0x4_0000 + 12, 60), &frame[12..]);
}

#[test]
fn hostile_queue_is_reported_and_the_device_recovers_after_reset() {
    let mut g = Guest::new(GuestNetChoice::None);
    g.init(Slot::Blk, 1);
    // Bad avail index: 100 entries ahead of an 8-entry queue.
    let (_, a, _) = rings(0);
    g.put(a + 2, &100u16.to_le_bytes());
    g.w(Slot::Blk, reg::QUEUE_NOTIFY, 0);
    let st = g.r(Slot::Blk, reg::STATUS) as u8;
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        g.r(Slot::Blk, reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE,
        INT_CONFIG_CHANGE
    );
    assert_eq!(g.irqs.0, vec![Slot::Blk.vector()]);
    let notices = g.io.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("virtio-blk at 0xfeb00000: DEVICE_NEEDS_RESET"),
        "{}",
        notices[0]
    );
    assert!(notices[0].contains("BadAvailIndex"), "{}", notices[0]);
    // Reset and use it again.
    g.put(a + 2, &0u16.to_le_bytes());
    g.init(Slot::Blk, 1);
    g.put(0x3_0000, &[0x11; 512]);
    g.blk(1, 0, 512, true);
    g.poll();
    assert_eq!(g.used(0), vec![(0, 1)]);
    assert_eq!(g.get(0x2_F000, 1), &[0]);
    assert!(g.io.take_notices().is_empty());
}

#[test]
fn stale_completion_after_reset_is_refused_with_a_notice() {
    let mut g = Guest::new(GuestNetChoice::None);
    g.init(Slot::Blk, 1);
    g.blk(0, 0, 512, false);
    g.w(Slot::Blk, reg::STATUS, 0); // reset with the read in flight
    g.poll();
    let notices = g.io.take_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("UnknownRequest"), "{}", notices[0]);
    assert_eq!(g.io.stats().refused, 1);
}

#[test]
fn completions_collected_early_count_as_progress_and_reach_the_guest_at_the_next_poll() {
    let mut g = Guest::new(GuestNetChoice::None);
    g.init(Slot::Blk, 1);
    g.put(0x3_0000, &[0x22; 512]);
    g.blk(1, 0, 512, true);
    assert_eq!(g.io.disk_in_flight(), 1);
    // An FT primary waiting for its backup: collected, not delivered.
    g.io.poll_backends();
    assert_eq!((g.io.stats().disk_done, g.io.disk_in_flight()), (1, 0));
    assert!(g.used(0).is_empty(), "not delivered while the guest waits");
    assert!(g.io.busy(), "still owed to the guest");
    // The next input point delivers it, counted once.
    g.poll();
    assert_eq!(g.used(0), vec![(0, 1)]);
    assert_eq!(g.io.stats().disk_done, 1);
    assert!(!g.io.busy());
}

#[test]
fn a_refused_input_changes_the_checkpoint_digest() {
    // The same input refused on one side and taken on the other must
    // not leave both with the same device-write digest (issue 15).
    let mut g = Guest::new(GuestNetChoice::None);
    g.init(Slot::Blk, 1);
    let before = g.io.dirty.digest();
    let stale = GuestInput::BlockDone {
        id: 999,
        status: crate::devices::virtio::BlockStatus::Ok,
        data: Vec::new(),
    };
    assert!(g
        .io
        .input(Slot::Blk, stale, &mut g.ram, &mut g.irqs)
        .is_err());
    assert_ne!(g.io.dirty.digest(), before);
}

mod ft_gate {
    use super::super::*;
    use crate::devices::virtio::{BlockStatus, GuestInput, GuestOutput};

    fn io() -> GuestIo {
        GuestIo::new(
            1 << 20,
            Box::new(RamDisk::new(4096)),
            Box::new(Loopback::default()),
        )
    }

    #[test]
    fn gated_outputs_wait_for_emit_and_keep_the_guest_busy() {
        let mut g = io();
        g.set_gated(true);
        g.output(Slot::Net, GuestOutput::Frame(vec![1; 60]));
        assert!(g.busy(), "a held output is owed to the guest");
        assert_eq!(g.stats().outputs, 0, "nothing left yet");
        let taken = g.take_gated();
        assert_eq!(taken.len(), 1);
        assert!(g.take_gated().is_empty());
        assert!(g.busy(), "taken but not emitted");
        let (slot, out) = taken.into_iter().next().unwrap();
        g.emit(slot, out);
        assert_eq!(g.stats().outputs, 1);
    }

    /// Issue 16: a repair stops the guest only where its devices owe it
    /// nothing: no request on the disk, no completion not yet delivered,
    /// no output held by the output rule.
    #[test]
    fn quiescent_only_when_nothing_is_owed() {
        let mut g = io();
        assert!(g.quiescent(), "fresh devices");
        g.output(Slot::Blk, GuestOutput::BlockFlush { id: 1 });
        assert!(!g.quiescent(), "a flush on the disk");
        g.poll_backends();
        assert!(!g.quiescent(), "completed, not delivered");
        let mut ram = vec![0u8; 1 << 20];
        let mut irq = super::Irqs(vec![]);
        g.poll(&mut ram, &mut irq);
        assert!(g.quiescent(), "delivered");
        g.set_gated(true);
        g.output(Slot::Net, GuestOutput::Frame(vec![1; 60]));
        assert!(!g.quiescent(), "held by the output rule");
        let taken = g.take_gated();
        assert!(!g.quiescent(), "taken, not emitted");
        for (slot, out) in taken {
            g.emit(slot, out);
        }
        assert!(g.quiescent());
    }

    #[test]
    fn detached_block_requests_are_reissued_at_go_live_unless_completed_from_the_log() {
        let mut g = io();
        g.set_detached(true);
        g.output(Slot::Blk, GuestOutput::BlockFlush { id: 7 });
        g.output(Slot::Blk, GuestOutput::BlockFlush { id: 8 });
        g.output(Slot::Net, GuestOutput::Frame(vec![2; 60]));
        assert_eq!(g.stats().discarded, 3);
        // The log completes request 7 (the guest has no such request in its
        // queue here, so the device refuses it; the bookkeeping still drops it).
        let mut ram = vec![0u8; 1 << 20];
        let mut irq = super::Irqs(vec![]);
        let _ = g.input(
            Slot::Blk,
            GuestInput::BlockDone {
                id: 7,
                status: BlockStatus::Ok,
                data: vec![],
            },
            &mut ram,
            &mut irq,
        );
        let r = g.go_live();
        assert_eq!(
            r,
            Reattached {
                reissued: 1,
                announced: false,
                dropped_frames: 0,
            },
            "only 8; loopback is not a network"
        );
        assert_eq!(g.stats().outputs, 1);
    }

    #[test]
    fn frames_that_arrive_while_detached_never_reach_the_guest_after_go_live() {
        let mut g = io();
        let mut ram = vec![0u8; 1 << 20];
        let mut irq = super::Irqs(vec![]);
        // Attached, the loopback wire queues the frame for the guest.
        g.output(Slot::Net, GuestOutput::Frame(vec![3; 60]));
        g.set_detached(true);
        assert_eq!(g.poll(&mut ram, &mut irq), 0, "detached: nothing delivered");
        let r = g.go_live();
        assert_eq!(r.dropped_frames, 1);
        assert_eq!(g.stats().dropped_detached, 1);
        assert_eq!(g.poll(&mut ram, &mut irq), 0, "the stale frame is gone");
    }

    #[test]
    fn a_detached_disk_is_still_polled_so_its_session_stays_alive() {
        struct Counting(alloc::rc::Rc<core::cell::Cell<u32>>);
        impl BlockBackend for Counting {
            fn capacity_sectors(&self) -> u64 {
                8
            }
            fn submit(&mut self, _: BlockRequest) {}
            fn poll(&mut self, _: &mut Vec<GuestInput>) {
                self.0.set(self.0.get() + 1);
            }
            fn in_flight(&self) -> usize {
                0
            }
            fn stats(&self) -> super::disk::DiskStats {
                super::disk::DiskStats::default()
            }
            fn describe(&self) -> alloc::string::String {
                "counting".into()
            }
        }
        let polls = alloc::rc::Rc::new(core::cell::Cell::new(0));
        let mut g = GuestIo::new(
            1 << 20,
            Box::new(Counting(polls.clone())),
            Box::new(Loopback::default()),
        );
        g.set_detached(true);
        let mut ram = vec![0u8; 1 << 20];
        let mut irq = super::Irqs(vec![]);
        for _ in 0..3 {
            assert_eq!(g.poll(&mut ram, &mut irq), 0);
        }
        assert_eq!(polls.get(), 3, "every poll moves the disk's session");
    }

    #[test]
    fn rarp_is_a_broadcast_reverse_request_for_the_mac() {
        let f = rarp_announcement(GUEST_MAC);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xFF; 6]);
        assert_eq!(&f[6..12], &GUEST_MAC);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3], "opcode: request reverse");
        assert_eq!(&f[22..28], &GUEST_MAC);
        assert_eq!(&f[32..38], &GUEST_MAC);
    }
}

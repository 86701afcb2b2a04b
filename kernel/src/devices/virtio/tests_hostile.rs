//! Hostile descriptor chains and randomized register/ring contents: every
//! case ends in `DEVICE_NEEDS_RESET` (with a configuration-change
//! interrupt) or an error status, never a panic or an unbounded loop.
use alloc::vec;
use alloc::vec::Vec;

use super::blk::{Blk, T_IN, T_OUT};
use super::fake::*;
use super::mmio::{reg, status, INT_CONFIG_CHANGE, VIRTIO_F_VERSION_1};
use super::net::{Net, RX, TX};
use super::queue::{QueueError, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use super::{BlockStatus, GuestInput};
use crate::devices::MmioDevice;

const NEXT: u16 = VIRTQ_DESC_F_NEXT;

fn blk() -> Driver<Blk> {
    let mut d = Driver::new(Blk::new(64, b"hostile"));
    d.init(0, 1, 8);
    d
}

/// A valid 16-byte read header at a fresh address.
fn header(d: &mut Driver<Blk>, kind: u32) -> u64 {
    let g = d.alloc(16, 0);
    d.mem.put(g, &kind.to_le_bytes());
    g
}

/// Kick queue `q` and check the device gave up with `want`, told the
/// driver, and emitted nothing.
fn assert_fatal<D: super::VirtioDevice>(d: &mut Driver<D>, q: u16, want: QueueError) {
    d.kick(q);
    assert!(d.needs_reset(), "expected NEEDS_RESET for {want:?}");
    assert_eq!(d.dev.transport().stats().last_error, Some(want));
    assert_eq!(
        d.read32(reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE,
        INT_CONFIG_CHANGE
    );
    assert_eq!(d.irqs.0.last(), Some(&VECTOR));
    assert!(d.out.is_empty());
}

#[test]
fn descriptor_loops_are_cut_at_the_queue_size() {
    let mut d = blk();
    let h = header(&mut d, T_IN);
    d.put_desc(0, 0, h, 16, NEXT, 1);
    d.put_desc(0, 1, h, 16, NEXT, 0);
    d.publish(0, 0);
    let before = d.mem.accesses.get();
    assert_fatal(&mut d, 0, QueueError::ChainTooLong);
    assert!(d.mem.accesses.get() - before < 64, "bounded work");

    let mut d = blk();
    d.put_desc(0, 5, h, 16, NEXT, 5);
    d.publish(0, 5);
    assert_fatal(&mut d, 0, QueueError::ChainTooLong);
}

#[test]
fn out_of_range_and_oversized_buffers() {
    let end = MEM_SIZE as u64;
    for (addr, len) in [(end - 8, 16), (end, 1), (u64::MAX - 3, 16), (0, u32::MAX)] {
        let mut d = blk();
        d.put_desc(0, 0, addr, len, 0, 0);
        d.publish(0, 0);
        assert_fatal(&mut d, 0, QueueError::OutOfRange(0));
    }
    let mut d = blk();
    d.put_desc(0, 0, 0x9_0000, 0, 0, 0);
    d.publish(0, 0);
    assert_fatal(&mut d, 0, QueueError::ZeroLength(0));
}

#[test]
fn bad_indexes() {
    let mut d = blk();
    d.publish(0, 8); // head == size
    assert_fatal(&mut d, 0, QueueError::BadDescIndex(8));

    let mut d = blk();
    let h = header(&mut d, T_IN);
    d.put_desc(0, 0, h, 16, NEXT, 0xFFFF);
    d.publish(0, 0);
    assert_fatal(&mut d, 0, QueueError::BadDescIndex(0xFFFF));

    let mut d = blk();
    let avail = d.queues[0].avail;
    d.mem.put(avail + 2, &9u16.to_le_bytes()); // 9 entries in a ring of 8
    assert_fatal(&mut d, 0, QueueError::BadAvailIndex { avail: 9, next: 0 });
}

#[test]
fn wrong_flags_and_directions() {
    let mut d = blk();
    let h = header(&mut d, T_IN);
    d.put_desc(0, 0, h, 16, VIRTQ_DESC_F_INDIRECT, 0);
    d.publish(0, 0);
    assert_fatal(&mut d, 0, QueueError::Indirect(0));

    let mut d = blk();
    let (h, s) = (header(&mut d, T_OUT), d.alloc(1, 0));
    d.add_chain(0, &[(s, 1, true), (h, 16, false)]);
    assert_fatal(&mut d, 0, QueueError::ReadableAfterWritable(1));

    let mut d = blk(); // no status byte
    let h = header(&mut d, T_OUT);
    d.add_chain(0, &[(h, 16, false)]);
    assert_fatal(&mut d, 0, QueueError::WrongDirection);

    let mut n = Driver::new(Net::new([2; 6]));
    n.init(0, 2, 8);
    let g = n.alloc(100, 0);
    n.add_chain(TX, &[(g, 100, true)]);
    assert_fatal(&mut n, TX as u16, QueueError::WrongDirection);

    let mut n = Driver::new(Net::new([2; 6]));
    n.init(0, 2, 8);
    let g = n.alloc(2000, 0);
    n.add_chain(RX, &[(g, 2000, false)]);
    n.dev
        .deliver_frame(&[1; 60], &mut n.mem, &mut n.irqs)
        .unwrap();
    assert!(n.needs_reset());
    assert_eq!(
        n.dev.transport().stats().last_error,
        Some(QueueError::WrongDirection)
    );
}

#[test]
fn a_head_reused_while_in_flight_is_fatal() {
    let mut d = blk();
    let (h, buf, s) = (header(&mut d, T_IN), d.alloc(512, 0), d.alloc(1, 0));
    let head = d.add_chain(0, &[(h, 16, false), (buf, 512, true), (s, 1, true)]);
    d.kick(0);
    assert_eq!(d.out.len(), 1);
    d.out.clear();
    d.publish(0, head);
    assert_fatal(&mut d, 0, QueueError::TooManyInFlight);
    // The late completion is swallowed: the device is not live.
    let before = d.mem.bytes.clone();
    d.dev
        .complete(0, BlockStatus::Ok, vec![1; 512], &mut d.mem, &mut d.irqs)
        .unwrap();
    assert!(d.mem.bytes == before);
}

#[test]
fn bad_queue_layouts() {
    for (num, desc) in [(3u32, 0x1000u32), (0, 0x1000), (512, 0x1000), (8, 0x1008)] {
        let mut d = Driver::new(Blk::new(8, b""));
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.write32(reg::QUEUE_NUM, num);
        d.write32(reg::QUEUE_DESC_LOW, desc);
        d.write32(reg::QUEUE_READY, 1);
        assert!(d.needs_reset(), "size {num} desc {desc:#x}");
    }
    // Rings outside guest RAM: found when the queue is first used.
    let mut d = Driver::new(Blk::new(8, b""));
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write32(reg::QUEUE_NUM, 8);
    d.write32(reg::QUEUE_DEVICE_HIGH, 1);
    d.write32(reg::QUEUE_READY, 1);
    let s = d.status();
    d.write32(reg::STATUS, u32::from(s | status::DRIVER_OK));
    assert!(d.needs_reset());
    assert_eq!(
        d.dev.transport().stats().last_error,
        Some(QueueError::BadLayout)
    );
}

#[test]
fn a_reset_device_works_again() {
    let mut d = blk();
    d.publish(0, 200);
    d.kick(0);
    assert!(d.needs_reset());
    // Nothing is processed while the device needs a reset.
    let h = header(&mut d, T_IN);
    d.put_desc(0, 0, h, 16, 0, 0);
    d.kick(0);
    assert_eq!(d.dev.transport().stats().fatal_errors, 1);
    d.queues.clear();
    d.init(0, 1, 8);
    let (h, buf, s) = (header(&mut d, T_IN), d.alloc(512, 0), d.alloc(1, 0));
    d.add_chain(0, &[(h, 16, false), (buf, 512, true), (s, 1, true)]);
    d.kick(0);
    assert_eq!(d.out.len(), 1);
    assert!(!d.needs_reset());
}

/// xorshift64*: reproducible pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const REGS: [u64; 20] = [
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::QUEUE_NOTIFY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::SHM_SEL,
    reg::CONFIG,
    reg::CONFIG_GENERATION,
];

/// One random step against a device: register accesses, ring and
/// descriptor scribbles (mostly plausible values, so chains get walked),
/// inputs, and now and then a proper bring-up so the device is live.
fn step<D: super::VirtioDevice>(d: &mut Driver<D>, r: &mut Rng, nq: u16, ids: &[u64]) {
    if !d.dev.transport().live() && r.below(4) == 0 {
        d.queues.clear();
        let size = 1 << r.below(9);
        d.init(0, nq, size);
        return;
    }
    match r.below(16) {
        0 => {
            let off = if r.below(4) == 0 {
                r.below(0x200)
            } else {
                REGS[r.below(20) as usize]
            };
            let size = [1, 2, 4, 4, 4, 8][r.below(6) as usize];
            let v = if r.below(2) == 0 {
                r.below(16)
            } else {
                r.next()
            };
            d.dev.mmio_write(off, size, v, 0);
            let _ = d.dev.mmio_read(r.below(0x200), size, 0);
            d.dev.process(&mut d.mem, &mut d.out, &mut d.irqs);
        }
        1 if !d.queues.is_empty() => {
            // A random descriptor in some queue.
            let q = r.below(d.queues.len() as u64) as usize;
            let size = u64::from(d.queues[q].size);
            let addr = if r.below(8) == 0 {
                r.next()
            } else {
                DATA_BASE + r.below(0x10000)
            };
            let len = if r.below(8) == 0 {
                r.next() as u32
            } else {
                r.below(4096) as u32
            };
            let flags = r.below(8) as u16;
            let next = if r.below(8) == 0 {
                r.next() as u16
            } else {
                r.below(size) as u16
            };
            d.put_desc(q, r.below(size) as u16, addr, len, flags, next);
        }
        2 if !d.queues.is_empty() => {
            let q = r.below(d.queues.len() as u64) as usize;
            let size = u64::from(d.queues[q].size);
            if r.below(8) == 0 {
                let avail = d.queues[q].avail;
                d.mem.put(avail + 2, &(r.next() as u16).to_le_bytes());
            } else {
                d.publish(q, r.below(size + 1) as u16);
            }
            d.kick(q as u16);
        }
        3 => {
            // Random bytes anywhere in the queue areas or buffers.
            let at = if r.below(2) == 0 {
                0x1000 + r.below(0x2_0000)
            } else {
                DATA_BASE + r.below(0x1_0000)
            };
            let bytes: Vec<u8> = (0..r.below(32)).map(|_| r.next() as u8).collect();
            d.mem.put(at, &bytes);
        }
        4 | 5 => {
            let len = r.below(2000) as usize;
            let _ = d
                .dev
                .apply(GuestInput::Frame(vec![0x5A; len]), &mut d.mem, &mut d.irqs);
        }
        6 | 7 => {
            let status = [
                BlockStatus::Ok,
                BlockStatus::IoErr,
                BlockStatus::Unsupported,
            ][r.below(3) as usize];
            let id = match ids.len() {
                0 => r.below(64),
                n => ids[r.below(n as u64) as usize],
            };
            let data = vec![0xA5; [0, 512, 1024, r.below(5000) as usize][r.below(4) as usize]];
            let _ = d.dev.apply(
                GuestInput::BlockDone { id, status, data },
                &mut d.mem,
                &mut d.irqs,
            );
        }
        8..=13 if !d.queues.is_empty() => {
            // A plausible chain: a request header, then readable and
            // writable buffers of sector-ish sizes.
            let q = r.below(d.queues.len() as u64) as usize;
            let mut h = [0u8; 16];
            h[0] = [0, 1, 4, 8, 3][r.below(5) as usize];
            h[8] = r.below(140) as u8;
            let g = d.alloc(16, 0);
            d.mem.put(g, &h);
            let mut bufs = vec![(g, 16, r.below(4) == 0)];
            for _ in 0..r.below(4) {
                let len = [1, 12, 60, 511, 512, 1024, 1530][r.below(7) as usize];
                bufs.push((d.alloc(len as usize, 0x33), len, r.below(2) == 0));
            }
            bufs.sort_by_key(|b| b.2);
            d.add_chain(q, &bufs);
            d.kick(q as u16);
        }
        _ => {
            let q = r.below(u64::from(nq) + 1);
            d.kick(q as u16);
        }
    }
}

#[test]
fn random_registers_and_rings_never_panic_and_work_is_bounded() {
    // Worst case per call: every entry of a 256-entry ring walks a full
    // chain of 256 descriptors, for each queue.
    let bound = 2 * 256 * (256 + 8) + 64;
    for seed in [0x9E37_79B9_7F4A_7C15, 1, 0xDEAD_BEEF] {
        let mut r = Rng(seed);
        let mut b = Driver::new(Blk::new(128, b"fuzz"));
        let mut n = Driver::new(Net::new([2; 6]));
        let mut live = [0u32; 2];
        for i in 0..5000 {
            let before = (b.mem.accesses.get(), n.mem.accesses.get());
            let ids: Vec<u64> = b.dev.device().in_flight().collect();
            step(&mut b, &mut r, 1, &ids);
            step(&mut n, &mut r, 2, &[]);
            let work = (
                b.mem.accesses.get() - before.0,
                n.mem.accesses.get() - before.1,
            );
            assert!(
                work.0 <= bound && work.1 <= bound,
                "seed {seed} step {i}: {work:?}"
            );
            assert!(b.dev.device().in_flight().count() <= 256);
            assert_eq!(b.read32(reg::INTERRUPT_STATUS) & !3, 0);
            live[0] += u32::from(b.dev.transport().live());
            live[1] += u32::from(n.dev.transport().live());
            b.out.clear();
            n.out.clear();
        }
        // The campaign reached both the working and the broken states.
        let (bs, ns) = (b.dev.device().stats(), n.dev.device().stats());
        assert!(live[0] > 1000 && live[1] > 1000, "seed {seed}: {live:?}");
        assert!(
            bs.submitted > 0 && bs.ok > 0 && bs.errors > 0,
            "seed {seed}: {bs:?}"
        );
        assert!(ns.tx_frames > 0 && ns.rx_frames > 0, "seed {seed}: {ns:?}");
        assert!(b.dev.transport().stats().fatal_errors > 50);
        assert!(n.dev.transport().stats().fatal_errors > 50);
    }
}

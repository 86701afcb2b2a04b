//! virtio-net tests through the fake guest driver.
use alloc::vec;
use alloc::vec::Vec;

use super::fake::*;
use super::mmio::{reg, INT_USED_BUFFER, VIRTIO_F_VERSION_1};
use super::net::*;
use super::{BlockStatus, GuestInput, GuestOutput, InputError};
use crate::devices::MmioDevice;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn net(size: u16) -> Driver<Net> {
    let mut d = Driver::new(Net::new(MAC));
    d.init(F_MAC | F_STATUS, 2, size);
    d
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Queue a transmit chain: the zero header, then the frame.
fn send(d: &mut Driver<Net>, f: &[u8]) -> u16 {
    let h = d.alloc(HDR_LEN, 0);
    let g = d.alloc(f.len(), 0);
    d.mem.put(g, f);
    d.add_chain(
        TX,
        &[(h, HDR_LEN as u32, false), (g, f.len() as u32, false)],
    )
}

/// Post a receive buffer of `len` bytes.
fn post_rx(d: &mut Driver<Net>, len: u32) -> (u16, u64) {
    let g = d.alloc(len as usize, 0xCC);
    (d.add_chain(RX, &[(g, len, true)]), g)
}

#[test]
fn registers_and_config_space() {
    let mut d = Driver::new(Net::new(MAC));
    assert_eq!(d.read32(reg::DEVICE_ID), DEVICE_ID);
    assert_eq!(d.device_features(), VIRTIO_F_VERSION_1 | F_MAC | F_STATUS);
    for q in [0, 1] {
        d.write32(reg::QUEUE_SEL, q);
        assert_eq!(d.read32(reg::QUEUE_NUM_MAX), QUEUE_SIZE.into());
    }
    let mac: Vec<u8> = (0..6)
        .map(|i| d.dev.mmio_read(reg::CONFIG + i, 1, 0) as u8)
        .collect();
    assert_eq!(mac, MAC);
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 6, 2, 0), u64::from(S_LINK_UP));
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 4, 4, 0), 0x0001_5634);
}

#[test]
fn transmitted_frames_leave_as_guest_output() {
    let mut d = net(16);
    let f1 = frame(60, 1);
    let f2 = frame(MAX_FRAME, 2);
    let h1 = send(&mut d, &f1);
    let h2 = send(&mut d, &f2);
    // Header and frame in one buffer.
    let g = d.alloc(HDR_LEN + 64, 0);
    d.mem.put(g + HDR_LEN as u64, &frame(64, 3));
    let h3 = d.add_chain(TX, &[(g, (HDR_LEN + 64) as u32, false)]);
    assert!(d.out.is_empty(), "nothing leaves before the kick");
    d.kick(TX as u16);
    assert_eq!(
        d.out,
        [
            GuestOutput::Frame(f1),
            GuestOutput::Frame(f2),
            GuestOutput::Frame(frame(64, 3))
        ]
    );
    assert_eq!(
        d.take_used(TX),
        [(h1.into(), 0), (h2.into(), 0), (h3.into(), 0)]
    );
    assert_eq!(d.irqs.0, [VECTOR], "one interrupt per batch");
    assert_eq!(d.ack(), INT_USED_BUFFER);
    // Runts and oversized frames are dropped, their buffers returned.
    d.out.clear();
    let a = send(&mut d, &frame(MIN_FRAME - 1, 0));
    let b = send(&mut d, &frame(MAX_FRAME + 1, 0));
    d.kick(TX as u16);
    assert!(d.out.is_empty());
    assert_eq!(d.take_used(TX), [(a.into(), 0), (b.into(), 0)]);
    let s = d.dev.device().stats();
    assert_eq!((s.tx_frames, s.tx_dropped), (3, 2));
    assert!(!d.needs_reset());
}

#[test]
fn received_frames_fill_receive_buffers() {
    let mut d = net(16);
    let (h1, g1) = post_rx(&mut d, 1526);
    // Linux's size: header + 1500-byte MTU + Ethernet + VLAN headers.
    let (h2, g2) = post_rx(&mut d, (HDR_LEN + MAX_FRAME) as u32);
    d.kick(RX as u16);
    let f = frame(98, 7);
    d.dev.deliver_frame(&f, &mut d.mem, &mut d.irqs).unwrap();
    assert_eq!(d.take_used(RX), [(h1.into(), (HDR_LEN + 98) as u32)]);
    let mut hdr = [0u8; HDR_LEN];
    hdr[10] = 1;
    assert_eq!(d.mem.get(g1, HDR_LEN), hdr);
    assert_eq!(d.mem.get(g1 + HDR_LEN as u64, 98), f);
    assert_eq!(d.mem.get(g1 + HDR_LEN as u64 + 98, 1), [0xCC]);
    assert_eq!(d.irqs.0, [VECTOR]);
    let big = frame(MAX_FRAME, 8);
    d.apply_frame(&big);
    assert_eq!(d.take_used(RX), [(h2.into(), (HDR_LEN + MAX_FRAME) as u32)]);
    assert_eq!(d.mem.get(g2 + HDR_LEN as u64, MAX_FRAME), big);
    // No buffer left: dropped and counted.
    d.apply_frame(&f);
    // Too long for any buffer: dropped before a buffer is taken.
    let (h3, _) = post_rx(&mut d, 64);
    d.apply_frame(&frame(MAX_FRAME + 1, 0));
    assert!(d.take_used(RX).is_empty());
    // The buffer is too small for this frame: returned empty.
    d.apply_frame(&f);
    assert_eq!(d.take_used(RX), [(h3.into(), 0)]);
    let s = d.dev.device().stats().clone();
    assert_eq!((s.rx_frames, s.rx_no_buffer, s.rx_bad_size), (2, 1, 2));
    assert_eq!(d.irqs.0.len(), 3);
    assert_eq!(
        d.dev.apply(
            GuestInput::BlockDone {
                id: 0,
                status: BlockStatus::Ok,
                data: vec![]
            },
            &mut d.mem,
            &mut d.irqs
        ),
        Err(InputError::WrongDevice)
    );
}

#[test]
fn frames_before_driver_ok_are_dropped() {
    let mut d = Driver::new(Net::new(MAC));
    d.apply_frame(&frame(60, 0));
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.setup_queue(0, 8);
    post_rx(&mut d, 1526);
    d.apply_frame(&frame(60, 0));
    assert_eq!(d.dev.device().stats().rx_not_ready, 2);
    assert!(d.take_used(RX).is_empty());
    assert!(d.irqs.0.is_empty());
}

#[test]
fn indexes_wrap_around_65536() {
    let mut d = net(4);
    let f = frame(60, 9);
    for i in 0..70_000u32 {
        let h = send(&mut d, &f);
        d.kick(TX as u16);
        assert_eq!(d.take_used(TX), [(h.into(), 0)], "frame {i}");
        let (h, _) = post_rx(&mut d, 128);
        d.apply_frame(&f);
        assert_eq!(d.take_used(RX), [(h.into(), 72)], "frame {i}");
        d.out.clear();
    }
    assert_eq!(d.dev.device().stats().tx_frames, 70_000);
    assert_eq!(d.dev.device().stats().rx_frames, 70_000);
    assert_eq!(
        d.dev.transport().queues[TX].next_used,
        (70_000 % 65_536) as u16
    );
    assert!(!d.needs_reset());
}

impl Driver<Net> {
    fn apply_frame(&mut self, f: &[u8]) {
        self.dev
            .deliver_frame(f, &mut self.mem, &mut self.irqs)
            .unwrap();
    }
}

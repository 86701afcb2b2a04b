//! virtio-blk and transport tests through the fake guest driver.
use alloc::vec;
use alloc::vec::Vec;

use super::blk::*;
use super::fake::*;
use super::mmio::{reg, status, INT_USED_BUFFER, MAGIC, VENDOR_ID, VIRTIO_F_VERSION_1};
use super::{BlockStatus, GuestInput, GuestOutput, InputError};
use crate::devices::MmioDevice;

const CAPACITY: u64 = 64;

fn blk() -> Driver<Blk> {
    let mut d = Driver::new(Blk::new(CAPACITY, b"ftvisor-disk-0"));
    d.init(F_FLUSH, 1, 16);
    d
}

/// Queue a request: header, then `out` (readable) or `in_len` writable
/// bytes, then the status byte. Returns (head, data gpa, status gpa).
fn request(
    d: &mut Driver<Blk>,
    kind: u32,
    sector: u64,
    out: &[u8],
    in_len: u32,
) -> (u16, u64, u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    let hdr = d.alloc(16, 0);
    d.mem.put(hdr, &h);
    let st = d.alloc(1, 0xEE);
    let mut bufs = vec![(hdr, 16, false)];
    let data = if !out.is_empty() {
        let g = d.alloc(out.len(), 0);
        d.mem.put(g, out);
        bufs.push((g, out.len() as u32, false));
        g
    } else if in_len > 0 {
        let g = d.alloc(in_len as usize, 0xCC);
        bufs.push((g, in_len, true));
        g
    } else {
        0
    };
    bufs.push((st, 1, true));
    (d.add_chain(0, &bufs), data, st)
}

fn status_at(d: &Driver<Blk>, st: u64) -> u8 {
    d.mem.get(st, 1)[0]
}

#[test]
fn registers_identify_a_modern_block_device() {
    let mut d = Driver::new(Blk::new(0x1_2345_6789, b"x"));
    assert_eq!(d.read32(reg::MAGIC_VALUE), MAGIC);
    assert_eq!(d.read32(reg::VERSION), 2);
    assert_eq!(d.read32(reg::DEVICE_ID), DEVICE_ID);
    assert_eq!(d.read32(reg::VENDOR_ID), VENDOR_ID);
    let f = d.device_features();
    assert_eq!(
        f,
        VIRTIO_F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH
    );
    d.write32(reg::QUEUE_SEL, 0);
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), QUEUE_SIZE.into());
    d.write32(reg::QUEUE_SEL, 1);
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), 0);
    // Config space: 64-bit capacity, read whole or in halves, and bytes.
    assert_eq!(d.dev.mmio_read(reg::CONFIG, 8, 0), 0x1_2345_6789);
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 4, 4, 0), 1);
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 1, 1, 0), 0x67);
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 8, 4, 0), SIZE_MAX.into());
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 12, 4, 0), SEG_MAX.into());
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 20, 4, 0), 512);
    assert_eq!(d.dev.mmio_read(reg::CONFIG + 0xF8, 8, 0), 0);
    assert_eq!(d.read32(reg::CONFIG_GENERATION), 0);
    // Wrong sizes or alignment on control registers are refused and counted.
    assert_eq!(d.dev.mmio_read(reg::MAGIC_VALUE, 2, 0), 0);
    assert_eq!(d.dev.mmio_read(reg::VERSION + 1, 4, 0), 0);
    assert_eq!(d.dev.mmio_read(0x0C8, 4, 0), 0);
    d.dev.mmio_write(reg::STATUS, 1, 1, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.dev.transport().stats().bad_accesses, 4);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    let mut d = Driver::new(Blk::new(8, b""));
    assert!(!d.negotiate_raw(F_FLUSH), "legacy drivers are refused");
    assert!(
        !d.negotiate_raw(VIRTIO_F_VERSION_1 | 1 << 28),
        "INDIRECT_DESC is not offered"
    );
    assert!(d.negotiate(VIRTIO_F_VERSION_1 | F_FLUSH));
    assert_eq!(d.dev.transport().negotiated(), VIRTIO_F_VERSION_1 | F_FLUSH);
    // Features are frozen after FEATURES_OK.
    d.write32(reg::DRIVER_FEATURES_SEL, 0);
    d.write32(reg::DRIVER_FEATURES, 0);
    assert_eq!(d.dev.transport().negotiated(), VIRTIO_F_VERSION_1 | F_FLUSH);
    // DRIVER_OK without FEATURES_OK is fatal.
    d.write32(reg::STATUS, 0);
    d.write32(
        reg::STATUS,
        u32::from(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK),
    );
    assert!(d.needs_reset());
    assert_eq!(d.irqs.0, [VECTOR]);
    // The driver cannot set or clear NEEDS_RESET; only a reset clears it.
    d.write32(reg::STATUS, 0xFF);
    assert!(d.needs_reset());
    d.write32(reg::STATUS, 0);
    assert_eq!(d.status(), 0);
}

#[test]
fn write_then_read_back_through_the_backend() {
    let mut d = blk();
    let data: Vec<u8> = (0..1024u32).map(|i| i as u8 ^ 0x5A).collect();
    let (h, _, st) = request(&mut d, T_OUT, 10, &data, 0);
    d.kick(0);
    assert_eq!(
        d.out,
        [GuestOutput::BlockWrite {
            id: 0,
            sector: 10,
            data: data.clone()
        }]
    );
    assert!(
        d.take_used(0).is_empty(),
        "a write completes only when the target acknowledged it"
    );
    assert!(d.irqs.0.is_empty());
    d.dev
        .complete(0, BlockStatus::Ok, vec![], &mut d.mem, &mut d.irqs)
        .unwrap();
    assert_eq!(d.take_used(0), [(h.into(), 1)]);
    assert_eq!(status_at(&d, st), 0);
    assert_eq!(d.irqs.0, [VECTOR]);
    assert_eq!(d.ack(), INT_USED_BUFFER);

    d.out.clear();
    let (h, buf, st) = request(&mut d, T_IN, 10, &[], 1024);
    d.kick(0);
    assert_eq!(
        d.out,
        [GuestOutput::BlockRead {
            id: 1,
            sector: 10,
            len: 1024
        }]
    );
    d.dev
        .complete(1, BlockStatus::Ok, data.clone(), &mut d.mem, &mut d.irqs)
        .unwrap();
    assert_eq!(d.take_used(0), [(h.into(), 1025)]);
    assert_eq!(d.mem.get(buf, 1024), data);
    assert_eq!(status_at(&d, st), 0);

    d.out.clear();
    let (h, _, st) = request(&mut d, T_FLUSH, 0, &[], 0);
    d.kick(0);
    assert_eq!(d.out, [GuestOutput::BlockFlush { id: 2 }]);
    d.dev
        .complete(2, BlockStatus::IoErr, vec![], &mut d.mem, &mut d.irqs)
        .unwrap();
    assert_eq!(d.take_used(0), [(h.into(), 1)]);
    assert_eq!(status_at(&d, st), 1);
    assert_eq!(
        d.dev.device().stats(),
        &BlkStats {
            submitted: 3,
            ok: 2,
            errors: 1
        }
    );
}

#[test]
fn completions_in_any_order_and_failed_reads_leave_buffers_alone() {
    let mut d = blk();
    let a = request(&mut d, T_IN, 0, &[], 512);
    let b = request(&mut d, T_IN, 1, &[], 512);
    d.kick(0);
    assert_eq!(d.dev.device().in_flight().collect::<Vec<_>>(), [0, 1]);
    d.dev
        .complete(1, BlockStatus::Ok, vec![7; 512], &mut d.mem, &mut d.irqs)
        .unwrap();
    d.dev
        .complete(0, BlockStatus::IoErr, vec![], &mut d.mem, &mut d.irqs)
        .unwrap();
    assert_eq!(d.take_used(0), [(b.0.into(), 513), (a.0.into(), 1)]);
    assert_eq!(d.mem.get(b.1, 512), vec![7; 512]);
    assert_eq!(d.mem.get(a.1, 512), vec![0xCC; 512]);
    assert_eq!((status_at(&d, a.2), status_at(&d, b.2)), (1, 0));
    assert_eq!(d.irqs.0, [VECTOR, VECTOR]);
}

#[test]
fn invalid_requests_complete_at_once_with_an_error_status() {
    let mut d = blk();
    let cases: [(u32, u64, &[u8], u32, u8); 7] = [
        (T_IN, CAPACITY - 1, &[], 1024, 1), // runs past the end
        (T_IN, u64::MAX, &[], 512, 1),      // sector overflow
        (T_IN, 0, &[], 100, 1),             // not a multiple of 512
        (T_IN, 0, &[1; 512], 0, 1),         // read with readable data
        (T_OUT, CAPACITY, &[1; 512], 0, 1), // write past the end
        (T_FLUSH, 0, &[1; 512], 0, 1),      // flush with data
        (99, 0, &[], 0, 2),                 // unknown type
    ];
    for (kind, sector, out, in_len, want) in cases {
        let (h, _, st) = request(&mut d, kind, sector, out, in_len);
        d.kick(0);
        assert_eq!(
            d.take_used(0),
            [(h.into(), 1)],
            "type {kind} sector {sector}"
        );
        assert_eq!(status_at(&d, st), want, "type {kind} sector {sector}");
    }
    assert!(d.out.is_empty(), "nothing reaches the backend");
    assert!(!d.needs_reset());
    // Too much data for one request.
    let big = (MAX_DATA + 512) as u32;
    let g = d.alloc(16, 0);
    d.mem.put(g, &T_IN.to_le_bytes());
    let buf = d.alloc(big as usize, 0);
    let st = d.alloc(1, 0xEE);
    d.add_chain(0, &[(g, 16, false), (buf, big, true), (st, 1, true)]);
    d.kick(0);
    assert_eq!(status_at(&d, st), 1);
    // A header shorter than 16 bytes.
    let (g, st) = (d.alloc(8, 0), d.alloc(1, 0xEE));
    d.add_chain(0, &[(g, 8, false), (st, 1, true)]);
    d.kick(0);
    assert_eq!(status_at(&d, st), 1);
    assert!(d.out.is_empty());
    assert_eq!(d.dev.device().stats().errors, 9);
}

#[test]
fn get_id_and_any_descriptor_layout() {
    let mut d = blk();
    let (h, buf, st) = request(&mut d, T_GET_ID, 0, &[], 20);
    d.kick(0);
    assert_eq!(d.take_used(0), [(h.into(), 21)]);
    assert_eq!(&d.mem.get(buf, 20)[..], b"ftvisor-disk-0\0\0\0\0\0\0");
    assert_eq!(status_at(&d, st), 0);
    // Header split in two, data and status in one writable buffer (§2.7.4).
    let g = d.alloc(16 + 513, 0xAA);
    let mut h = [0u8; 16];
    h[8] = 3;
    d.mem.put(g, &h);
    d.add_chain(0, &[(g, 5, false), (g + 5, 11, false), (g + 16, 513, true)]);
    d.kick(0);
    assert_eq!(
        d.out,
        [GuestOutput::BlockRead {
            id: 0,
            sector: 3,
            len: 512
        }]
    );
    d.dev
        .complete(0, BlockStatus::Ok, vec![9; 512], &mut d.mem, &mut d.irqs)
        .unwrap();
    assert_eq!(d.mem.get(g + 16, 512), vec![9; 512]);
    assert_eq!(d.mem.get(g + 16 + 512, 1), [0]);
}

#[test]
fn bad_completions_are_refused_without_touching_the_guest() {
    let mut d = blk();
    assert_eq!(
        d.dev
            .complete(5, BlockStatus::Ok, vec![], &mut d.mem, &mut d.irqs),
        Err(InputError::UnknownRequest(5))
    );
    assert_eq!(
        d.dev
            .apply(GuestInput::Frame(vec![0; 60]), &mut d.mem, &mut d.irqs),
        Err(InputError::WrongDevice)
    );
    let (_, buf, st) = request(&mut d, T_IN, 0, &[], 1024);
    d.kick(0);
    assert_eq!(
        d.dev
            .complete(0, BlockStatus::Ok, vec![1; 512], &mut d.mem, &mut d.irqs),
        Err(InputError::BadReadLength {
            id: 0,
            expected: 1024,
            got: 512
        })
    );
    assert_eq!(status_at(&d, st), 1, "the guest sees an I/O error");
    assert_eq!(d.mem.get(buf, 4), [0xCC; 4]);
    assert_eq!(
        d.dev
            .complete(0, BlockStatus::Ok, vec![], &mut d.mem, &mut d.irqs),
        Err(InputError::UnknownRequest(0)),
        "completed only once"
    );
    // A reset drops requests in flight; late completions are refused.
    let (_, buf, st) = request(&mut d, T_IN, 0, &[], 512);
    d.kick(0);
    d.write32(reg::STATUS, 0);
    let before = d.mem.bytes.clone();
    assert_eq!(
        d.dev
            .complete(1, BlockStatus::Ok, vec![3; 512], &mut d.mem, &mut d.irqs),
        Err(InputError::UnknownRequest(1))
    );
    assert!(d.mem.bytes == before);
    assert_eq!((d.mem.get(buf, 1)[0], status_at(&d, st)), (0xCC, 0xEE));
}

/// The fake iSCSI target: turns outputs into completion inputs.
fn disk_backend(disk: &mut [u8], out: &GuestOutput) -> GuestInput {
    let (id, data) = match out {
        GuestOutput::BlockRead { id, sector, len } => {
            let at = *sector as usize * 512;
            (*id, disk[at..at + *len as usize].to_vec())
        }
        GuestOutput::BlockWrite { id, sector, data } => {
            let at = *sector as usize * 512;
            disk[at..at + data.len()].copy_from_slice(data);
            (*id, vec![])
        }
        GuestOutput::BlockFlush { id } => (*id, vec![]),
        GuestOutput::Frame(_) => unreachable!(),
    };
    GuestInput::BlockDone {
        id,
        status: BlockStatus::Ok,
        data,
    }
}

/// Primary and backup start from the same state; the primary's backend
/// produces inputs that are logged; the backup discards its outputs and
/// applies the logged inputs. Both end in identical device and memory state.
#[test]
fn replaying_logged_inputs_reproduces_the_state() {
    let mut primary = blk();
    let mut backup = primary.clone();
    let mut disk = vec![0u8; CAPACITY as usize * 512];
    let mut log = Vec::new();
    for (role, d) in [(0, &mut primary), (1, &mut backup)] {
        let mut inputs = log.clone().into_iter();
        for round in 0..20u8 {
            let data = vec![round; 512];
            request(d, T_OUT, u64::from(round % 8), &data, 0);
            request(d, T_IN, u64::from((round + 3) % 8), &[], 512);
            d.kick(0);
            // The backend completes them in reverse order.
            for out in core::mem::take(&mut d.out).iter().rev() {
                let input = if role == 0 {
                    let i = disk_backend(&mut disk, out);
                    log.push(i.clone());
                    i
                } else {
                    inputs.next().unwrap()
                };
                d.dev.apply(input, &mut d.mem, &mut d.irqs).unwrap();
            }
            assert_eq!(d.take_used(0).len(), 2);
            d.ack();
        }
    }
    assert!(primary.dev == backup.dev);
    assert!(primary.mem.bytes == backup.mem.bytes);
    assert_eq!(primary.irqs.0, backup.irqs.0);
    assert_eq!(primary.dev.device().stats().ok, 40);
}

#[test]
fn requests_in_flight_can_be_resubmitted_on_go_live() {
    let mut d = blk();
    request(&mut d, T_OUT, 4, &[6; 512], 0);
    request(&mut d, T_IN, 5, &[], 1024);
    request(&mut d, T_FLUSH, 0, &[], 0);
    d.kick(0);
    let first = core::mem::take(&mut d.out);
    assert_eq!(first.len(), 3);
    d.dev
        .complete(1, BlockStatus::Ok, vec![0; 1024], &mut d.mem, &mut d.irqs)
        .unwrap();
    let mut again = Vec::new();
    d.dev.device().resubmit(&d.mem, &mut again);
    assert_eq!(again, [first[0].clone(), first[2].clone()]);
}

/// Issue 15: the largest request the device accepts completes in one FT
/// log record (its read data rides in the completion), so recording never
/// meets a completion it cannot log.
#[test]
fn the_largest_read_completes_in_one_log_record() {
    let entry = ft::log::LogEntry::DiskCompletion {
        at: ft::log::ExecPoint::new(u64::MAX, u64::MAX, u64::MAX),
        vector: 0x50,
        request_id: u64::MAX,
        status: ft::log::DiskStatus::Ok,
        data: alloc::vec![0xAB; MAX_DATA as usize],
    };
    let mut out = Vec::new();
    ft::log::encode_record(1, &entry, &mut out).expect("the largest completion fits a record");
    let (back, used) = ft::log::decode_record(&out).expect("and decodes");
    assert_eq!((back.entry, used), (entry, out.len()));
    assert_eq!(MAX_DATA, 960 * 1024);
}

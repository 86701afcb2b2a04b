//! Codec tests: every kind round-trips, sizes are what the docs promise,
//! corruption and truncation are caught, chunked streams reassemble.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::FtError;

pub(crate) fn samples() -> Vec<LogEntry> {
    let at = ExecPoint::new(123_456, 0xffff_8000_0000_1234, 7);
    vec![
        LogEntry::Hello {
            cluster_id: 42,
            generation: 3,
            guest_id: [9; 16],
            protocol_version: PROTOCOL_VERSION,
            machine: crate::log::MachineId {
                guest_mem: 192 << 20,
                disk: 2,
                disk_sectors: 131_064,
                nic: 2,
                cpu: 0x0123_4567_89ab_cdef,
            },
        },
        LogEntry::Interrupt {
            at,
            vector: 0x20,
            guest_time_ns: 0,
        },
        LogEntry::NetFrame {
            at,
            vector: 0x30,
            frame: vec![0xab; 60],
        },
        LogEntry::DiskCompletion {
            at,
            vector: 0x31,
            request_id: 77,
            status: DiskStatus::Ok,
            data: vec![1; 512],
        },
        LogEntry::DiskCompletion {
            at,
            vector: 0x31,
            request_id: 78,
            status: DiskStatus::IoError,
            data: vec![],
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Rdtsc,
            value: 1,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Rdtscp { aux: 3 },
            value: 2,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Rdrand,
            value: 3,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Rdseed,
            value: 4,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Msr { index: 0x10 },
            value: 5,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Port { port: 0x71 },
            value: 0x59,
        },
        LogEntry::NonDet {
            at,
            source: NonDetSource::Mmio { gpa: 0xFEE0_0390 },
            value: 0x1234,
        },
        LogEntry::Heartbeat {
            at,
            guest_time_ns: 99,
            acked: 7,
        },
        LogEntry::OutputMarker {
            at,
            output_id: 5,
            acked: 3,
            digest: 0xD16E57,
        },
        LogEntry::Ack {
            received: 10,
            applied: 9,
        },
        LogEntry::GoLive {
            generation: 4,
            owner: 2,
        },
        LogEntry::Goodbye {
            reason: GoodbyeReason::Shutdown,
        },
        LogEntry::Goodbye {
            reason: GoodbyeReason::Halted,
        },
        LogEntry::Goodbye {
            reason: GoodbyeReason::Superseded,
        },
        LogEntry::Goodbye {
            reason: GoodbyeReason::StorageLost,
        },
        LogEntry::Checkpoint {
            at,
            state_hash: 0xdead_beef,
        },
    ]
}

fn seq_for(e: &LogEntry) -> u64 {
    if matches!(e, LogEntry::Hello { .. }) {
        0
    } else {
        17
    }
}

#[test]
fn every_kind_roundtrips_canonically() {
    for e in samples() {
        let mut b = Vec::new();
        encode_record(seq_for(&e), &e, &mut b).unwrap();
        assert_eq!(b.len(), encoded_len(&e));
        let (rec, used) = decode_record(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(rec.entry, e);
        assert_eq!(rec.seq, seq_for(&e));
    }
}

#[test]
fn documented_sizes() {
    let at = ExecPoint::default();
    let size = |e: LogEntry| encoded_len(&e);
    assert_eq!(
        size(LogEntry::Interrupt {
            at,
            vector: 0,
            guest_time_ns: 0
        }),
        20 + 33
    );
    assert_eq!(
        size(LogEntry::NonDet {
            at,
            source: NonDetSource::Rdtsc,
            value: 0
        }),
        20 + 37
    );
    assert_eq!(
        size(LogEntry::Heartbeat {
            at,
            guest_time_ns: 0,
            acked: 0
        }),
        20 + 40
    );
    assert_eq!(
        size(LogEntry::Ack {
            received: 0,
            applied: 0
        }),
        20 + 16
    );
    assert_eq!(
        size(LogEntry::NetFrame {
            at,
            vector: 0,
            frame: vec![0; 1514]
        }),
        20 + 25 + 1514
    );
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for e in samples() {
        let mut b = Vec::new();
        encode_record(seq_for(&e), &e, &mut b).unwrap();
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode_record(&c).is_err(), "flip {i} of {e:?} accepted");
        }
    }
}

#[test]
fn truncation_asks_for_more_and_never_panics() {
    let e = LogEntry::NetFrame {
        at: ExecPoint::default(),
        vector: 1,
        frame: vec![5; 100],
    };
    let mut b = Vec::new();
    encode_record(1, &e, &mut b).unwrap();
    for n in 0..b.len() {
        assert!(
            matches!(decode_record(&b[..n]), Err(FtError::Truncated { .. })),
            "prefix {n}"
        );
    }
}

#[test]
fn sequence_zero_is_hello_only() {
    let mut b = Vec::new();
    encode_record(
        0,
        &LogEntry::Ack {
            received: 1,
            applied: 1,
        },
        &mut b,
    )
    .unwrap();
    assert!(matches!(decode_record(&b), Err(FtError::BadPayload { .. })));
}

#[test]
fn oversized_payload_is_refused_by_encoder_and_decoder() {
    let e = LogEntry::NetFrame {
        at: ExecPoint::default(),
        vector: 1,
        frame: vec![0; MAX_PAYLOAD],
    };
    let mut b = vec![1, 2, 3];
    assert!(matches!(
        encode_record(1, &e, &mut b),
        Err(FtError::TooLarge(_))
    ));
    assert_eq!(b, [1, 2, 3]);
    let mut h = vec![RECORD_MAGIC, LOG_FORMAT_VERSION, 3, 0];
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes());
    let mut d = StreamDecoder::new();
    d.push(&h);
    assert_eq!(d.next_record(), Err(FtError::TooLarge(u32::MAX)));
    assert_eq!(d.next_record(), Err(FtError::StreamPoisoned));
}

#[test]
fn stream_reassembles_any_chunking() {
    let mut all = Vec::new();
    let entries = samples();
    for (i, e) in entries.iter().enumerate() {
        let seq = if matches!(e, LogEntry::Hello { .. }) {
            0
        } else {
            i as u64 + 1
        };
        encode_record(seq, e, &mut all).unwrap();
    }
    for chunk in [1usize, 2, 3, 7, 16, 19, 64, 1000, all.len()] {
        let mut d = StreamDecoder::new();
        let mut got = Vec::new();
        for c in all.chunks(chunk) {
            d.push(c);
            while let Some(r) = d.next_record().unwrap() {
                got.push(r.entry);
            }
        }
        assert_eq!(got, entries, "chunk size {chunk}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn stream_rejects_garbage_early() {
    let mut d = StreamDecoder::new();
    d.push(b"G");
    assert_eq!(d.next_record(), Err(FtError::BadMagic(b'G')));
    let mut d = StreamDecoder::new();
    d.push(&[RECORD_MAGIC, 9]);
    assert_eq!(d.next_record(), Err(FtError::UnsupportedVersion(9)));
}

use super::*;
use alloc::vec;

fn machine() -> MachineId {
    MachineId {
        guest_mem: 16 * PAGE as u64,
        disk: 2,
        disk_sectors: 1000,
        nic: 2,
        cpu: 0xC0FFEE,
    }
}

fn expect() -> Expect {
    Expect {
        cluster: 5,
        guest_id: Some([7; 16]),
        machine: machine(),
    }
}

fn page(fill: u8) -> PageData {
    PageData::Bytes(vec![fill; PAGE])
}

fn vcpu() -> Chunk {
    Chunk::Vcpu {
        gprs: core::array::from_fn(|i| i as u64 * 3),
        fields: vec![(0x681E, 0x1000), (0x6820, 0x202), (0x4824, 0)],
        msrs: vec![(0xC000_0080, 0x500)],
        fxsave: vec![0x11; FXSAVE_LEN],
        cr2: 0xdead_b000,
        debug: [1, 2, 3, 4, 0xffff_0ff0],
    }
}

/// A whole transfer: Begin, two pre-copy rounds, the vCPU, one device,
/// the commit.
fn transfer() -> Vec<u8> {
    let mut s = Sender::new();
    let mut out = Vec::new();
    let chunks = [
        Chunk::Begin {
            cluster: 5,
            sender: 2,
            guest_id: [7; 16],
            machine: machine(),
            generation: 3,
            ram_bytes: 16 * PAGE as u64,
        },
        Chunk::Pages {
            round: 0,
            pages: (0..16)
                .map(|p| {
                    (
                        p,
                        if p % 2 == 0 {
                            PageData::Zero
                        } else {
                            page(p as u8)
                        },
                    )
                })
                .collect(),
        },
        Chunk::Pages {
            round: 1,
            pages: vec![(3, page(0xAA))],
        },
        vcpu(),
        Chunk::Device {
            id: 1,
            version: 1,
            blob: vec![1, 2, 3],
        },
        Chunk::Commit {
            at: ExecPoint::new(100, 0x1000, 5),
            guest_time_ns: 77,
            resume_seq: 42,
            chunks: 0,
            pages: 0,
            digest: 0,
        },
    ];
    for c in chunks {
        s.push(c, &mut out).unwrap();
    }
    out
}

fn receive(bytes: &[u8], split: usize) -> (Result<Progress, Refused>, Vec<Option<Vec<u8>>>) {
    let mut ram: Vec<Option<Vec<u8>>> = vec![None; 16];
    let mut r = Receiver::new(expect());
    let mut last = Ok(Progress::Receiving);
    for piece in bytes.chunks(split.max(1)) {
        last = r.push(piece, &mut |p, d| {
            ram[p as usize] = Some(d.map_or(vec![0; PAGE], |b| b.to_vec()))
        });
        if !matches!(last, Ok(Progress::Receiving)) {
            break;
        }
    }
    (last, ram)
}

#[test]
fn a_transfer_in_any_pieces_completes_with_every_page_and_the_staged_state() {
    let bytes = transfer();
    for split in [1, 7, 4096, bytes.len()] {
        let (got, ram) = receive(&bytes, split);
        let Ok(Progress::Complete(s)) = got else {
            panic!("split {split}: {got:?}");
        };
        assert_eq!((s.generation, s.resume_seq, s.guest_time_ns), (3, 42, 77));
        assert_eq!((s.pages, s.rounds), (17, 2));
        assert_eq!(s.vcpu, vcpu());
        assert_eq!(s.devices, vec![(1, 1, vec![1, 2, 3])]);
        assert_eq!(ram[3].as_deref(), Some(&[0xAA; PAGE][..]), "round 1 wins");
        assert_eq!(ram[2].as_deref(), Some(&[0; PAGE][..]));
        assert_eq!(ram[5].as_deref(), Some(&[5; PAGE][..]));
    }
}

#[test]
fn every_chunk_round_trips() {
    let bytes = transfer();
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        let (num, chunk, used) = decode_chunk(&bytes[at..]).unwrap().unwrap();
        assert_eq!(num, n);
        let mut again = Vec::new();
        encode_chunk(num, &chunk, &mut again).unwrap();
        assert_eq!(again, bytes[at..at + used], "canonical encoding");
        at += used;
        n += 1;
    }
    assert_eq!(n, 6);
    assert_eq!(
        decode_chunk(&bytes[..5]),
        Ok(None),
        "a partial header waits"
    );
}

#[test]
fn a_damaged_or_foreign_transfer_is_refused_with_the_reason_and_stays_refused() {
    let good = transfer();
    let refused = |bytes: &[u8]| match receive(bytes, 1000).0 {
        Err(Refused(why)) => why,
        other => panic!("not refused: {other:?}"),
    };
    // A flipped byte in a page: the CRC.
    let mut b = good.clone();
    b[200] ^= 1;
    assert!(refused(&b).contains("CrcMismatch"), "{}", refused(&b));
    // Another format version.
    let mut b = good.clone();
    b[1] = 9;
    assert!(refused(&b).contains("UnsupportedVersion(9)"));
    // Another guest.
    let mut r = Receiver::new(Expect {
        guest_id: Some([8; 16]),
        ..expect()
    });
    let e = r.push(&good, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("another guest"), "{e}");
    assert_eq!(r.push(&[], &mut |_, _| {}), Err(e), "sticky");
    // Another machine.
    let mut m = machine();
    m.cpu = 1;
    let mut r = Receiver::new(Expect {
        machine: m,
        ..expect()
    });
    let e = r.push(&good, &mut |_, _| {}).unwrap_err();
    assert!(e.0.contains("machine differs: virtual CPU"), "{e}");
}

#[test]
fn a_lost_reordered_or_extra_chunk_never_completes() {
    let good = transfer();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < good.len() {
        let (_, _, used) = decode_chunk(&good[at..]).unwrap().unwrap();
        spans.push(at..at + used);
        at += used;
    }
    // Chunk 2 (round 1's page) dropped: numbering catches it.
    let mut b = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        if i != 2 {
            b.extend_from_slice(&good[s.clone()]);
        }
    }
    let (got, _) = receive(&b, 64);
    assert!(
        matches!(&got, Err(Refused(w)) if w.contains("out of order")),
        "{got:?}"
    );
    // Truncated before the commit: still receiving, nothing complete.
    let (got, _) = receive(&good[..spans[5].start], 64);
    assert_eq!(got, Ok(Progress::Receiving));
    // Anything after the commit is refused.
    let mut r = Receiver::new(expect());
    assert!(matches!(
        r.push(&good, &mut |_, _| {}),
        Ok(Progress::Complete(_))
    ));
    let e = r.push(&good[spans[1].clone()], &mut |_, _| {}).unwrap_err();
    assert!(e.0.contains("after the commit"), "{e}");
}

#[test]
fn a_commit_that_does_not_match_what_arrived_is_refused() {
    // A sender that lies about its digest (a chunk altered before the CRC
    // was computed: the CRC cannot see it, the digest can).
    let mut out = Vec::new();
    let mut s = Sender::new();
    s.push(
        Chunk::Begin {
            cluster: 5,
            sender: 2,
            guest_id: [7; 16],
            machine: machine(),
            generation: 1,
            ram_bytes: 16 * PAGE as u64,
        },
        &mut out,
    )
    .unwrap();
    s.push(vcpu(), &mut out).unwrap();
    let mut commit = Vec::new();
    encode_chunk(
        2,
        &Chunk::Commit {
            at: ExecPoint::default(),
            guest_time_ns: 0,
            resume_seq: 0,
            chunks: 2,
            pages: 0,
            digest: 0xBAD,
        },
        &mut commit,
    )
    .unwrap();
    out.extend_from_slice(&commit);
    let (got, _) = receive(&out, 100);
    assert!(
        matches!(&got, Err(Refused(w)) if w.contains("does not match")),
        "{got:?}"
    );
}

#[test]
fn pages_outside_ram_and_malformed_chunks_are_refused_without_panic() {
    let mut out = Vec::new();
    let mut s = Sender::new();
    s.push(
        Chunk::Begin {
            cluster: 5,
            sender: 2,
            guest_id: [7; 16],
            machine: machine(),
            generation: 1,
            ram_bytes: 16 * PAGE as u64,
        },
        &mut out,
    )
    .unwrap();
    s.push(
        Chunk::Pages {
            round: 0,
            pages: vec![(16, PageData::Zero)],
        },
        &mut out,
    )
    .unwrap();
    let (got, _) = receive(&out, 100);
    assert!(
        matches!(&got, Err(Refused(w)) if w.contains("outside the 16 pages")),
        "{got:?}"
    );
    // The encoder refuses what the decoder would.
    let mut v = Vec::new();
    assert!(encode_chunk(
        0,
        &Chunk::Pages {
            round: 0,
            pages: vec![(0, PageData::Bytes(vec![1; 10]))]
        },
        &mut v
    )
    .is_err());
    assert!(v.is_empty());
    // Arbitrary bytes: an error or a wait, never a panic.
    let mut seed = 0x1234_5678u64;
    for _ in 0..2000 {
        let len = (seed % 300) as usize;
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if let Some(x) = b.first_mut() {
            *x = STATE_MAGIC;
        }
        if let Some(x) = b.get_mut(1) {
            *x = STATE_FORMAT_VERSION;
        }
        let _ = decode_chunk(&b);
        let _ = Receiver::new(expect()).push(&b, &mut |_, _| {});
    }
}

#[test]
fn the_summary_names_each_part_and_the_verdict() {
    let good = transfer();
    let lines = summarise(&good);
    let text = lines.join("\n");
    assert!(
        text.contains("begin: format 2, cluster 5, from node 2, guest id 0707"),
        "{text}"
    );
    assert!(text.contains("round 0: 16 pages (8 zero)"), "{text}");
    assert!(text.contains("round 1: 1 pages (0 zero)"), "{text}");
    assert!(
        text.contains("3 VMCS fields (RIP 0x1000), 1 MSRs, 512 bytes"),
        "{text}"
    );
    assert!(text.contains("device 1 (layout 1): 3 bytes"), "{text}");
    assert!(lines.last().unwrap().starts_with("accepted"), "{text}");
    let cut = summarise(&good[..good.len() - 3]);
    assert!(cut.iter().any(|l| l.contains("cut short")), "{cut:?}");
    assert!(cut.last().unwrap().starts_with("incomplete"), "{cut:?}");
}

#[test]
fn a_joiner_without_a_guest_takes_the_senders_and_checks_the_cluster() {
    let good = transfer();
    let mut r = Receiver::new(Expect {
        guest_id: None,
        ..expect()
    });
    let Ok(Progress::Complete(s)) = r.push(&good, &mut |_, _| {}) else {
        panic!("a joiner with no guest of its own accepts the sender's");
    };
    assert_eq!((s.sender, s.guest_id), (2, [7; 16]));
    let mut r = Receiver::new(Expect {
        cluster: 6,
        ..expect()
    });
    let e = r.push(&good, &mut |_, _| {}).unwrap_err();
    assert!(e.0.contains("cluster 5, this node of cluster 6"), "{e}");
}

#[test]
fn a_join_request_is_read_by_the_serving_node_and_refused_inside_a_transfer() {
    let mut out = Vec::new();
    let join = Chunk::Join {
        cluster: 5,
        node: 3,
        machine: machine(),
    };
    encode_chunk(0, &join, &mut out).unwrap();
    assert_eq!(read_join(&out[..10], 5), Ok(None), "not all there yet");
    assert_eq!(read_join(&out, 5), Ok(Some((3, machine(), out.len()))));
    let e = read_join(&out, 4).unwrap_err();
    assert!(e.0.contains("cluster 5, this node of cluster 4"), "{e}");
    let mut bad = out.clone();
    bad[14] ^= 1;
    assert!(read_join(&bad, 5).unwrap_err().0.contains("CrcMismatch"));
    let t = transfer();
    assert!(read_join(&t, 5).unwrap_err().0.contains("kind 1"));
    // Inside a transfer a join request is refused.
    let (got, _) = receive(&out, 100);
    assert!(
        matches!(&got, Err(Refused(w)) if w.contains("join request")),
        "{got:?}"
    );
}

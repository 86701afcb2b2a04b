//! Primary and backup state machines wired back to back, without a
//! simulator: the rules of DESIGN.md §1.3–§1.8 one at a time.

use alloc::vec::Vec;

use crate::arbitration::{FlagRecord, NodeId, Verdict};
use crate::backup::{Backup, BackupState};
use crate::log::{encode_record, ExecPoint, LogEntry, NonDetSource};
use crate::primary::{Primary, PrimaryState};
use crate::replay::{Due, Replayer};
use crate::{Effect, Effects, FtError, SessionConfig};

const MS: u64 = 1_000_000;

fn cfg(me: u64) -> SessionConfig {
    SessionConfig::new(7, [1; 16], NodeId(me))
}

fn sent(fx: &Effects) -> Vec<u8> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn released(fx: &Effects) -> Vec<u64> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Release(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn pt(c: u64) -> ExecPoint {
    ExecPoint::new(c, 0x1000 + c, 0)
}

/// The one replay engine fed what `b` received, and `b` told what it applied.
fn feed(b: &mut Backup, rp: &mut Replayer) {
    for r in b.take_received() {
        rp.push(r);
    }
    b.set_applied(rp.applied_seq());
    b.set_engine_backlog(if rp.must_wait() { 0 } else { rp.remaining() });
}

const REGS: crate::replay::StateVector = [0; crate::replay::STATE_WORDS];

/// A connected pair whose session started: the Hello was accepted and
/// acknowledged (the failure detectors are armed). The returned bytes are
/// the Hello, for tests that replay the connection.
fn pair() -> (Primary, Backup, Vec<u8>) {
    let mut p = Primary::new(cfg(1), 1, 0);
    let mut b = Backup::new(cfg(2), 1, 0);
    b.on_connected(0);
    let hello = sent(&p.on_connected(0));
    let ack = sent(&b.on_bytes(0, &hello));
    assert!(!ack.is_empty(), "the Hello is acknowledged");
    p.on_bytes(0, &ack);
    assert!(p.started() && b.started());
    (p, b, Vec::new())
}

#[test]
fn output_waits_for_ack_and_backup_lags_one_entry() {
    let (mut p, mut b, hello) = pair();
    let (s1, fx1) = p
        .record(
            MS,
            10,
            LogEntry::NonDet {
                at: pt(5),
                source: NonDetSource::Rdtsc,
                value: 99,
            },
        )
        .unwrap();
    let fx2 = p.output(MS, 20, pt(9), 0, 0).unwrap();
    assert_eq!(s1, 1);
    assert!(released(&fx2).is_empty(), "output released before any ack");
    assert_eq!(p.held_outputs(), 1);
    // Deliver only the hello and the first entry: the ack does not cover the output.
    let mut bytes = hello.clone();
    bytes.extend(sent(&fx1));
    let ack = sent(&b.on_bytes(2 * MS, &bytes));
    assert!(released(&p.on_bytes(2 * MS, &ack)).is_empty());
    let mut rp = Replayer::streaming();
    feed(&mut b, &mut rp);
    assert!(!rp.must_wait());
    assert_eq!(rp.landing_target(), Some(pt(5)));
    assert_eq!(rp.nondet(pt(5), NonDetSource::Rdtsc), Ok(99));
    assert!(rp.must_wait(), "nothing received beyond: the backup waits");
    let ack = sent(&b.on_bytes(3 * MS, &sent(&fx2)));
    assert_eq!(released(&p.on_bytes(3 * MS, &ack)), [0]);
    feed(&mut b, &mut rp);
    assert!(
        rp.only_soft_left(),
        "the output's marker: a point, not a check"
    );
    assert_eq!(b.applied(), 1);
}

#[test]
fn replay_divergence_is_detected() {
    let (mut p, mut b, mut bytes) = pair();
    let (_, fx) = p
        .record(
            MS,
            0,
            LogEntry::NonDet {
                at: pt(5),
                source: NonDetSource::Rdrand,
                value: 1,
            },
        )
        .unwrap();
    bytes.extend(sent(&fx));
    b.on_bytes(MS, &bytes);
    let mut rp = Replayer::streaming();
    feed(&mut b, &mut rp);
    assert!(rp.nondet(pt(4), NonDetSource::Rdrand).is_err(), "too early");
    assert!(
        rp.nondet(pt(5), NonDetSource::Rdtsc).is_err(),
        "another source"
    );
    assert!(
        rp.nondet(ExecPoint::new(5, 0, 0), NonDetSource::Rdrand)
            .is_err(),
        "another instruction at the counter"
    );
    assert!(
        rp.due(pt(6), &REGS, true).is_err(),
        "the guest ran past a guest-initiated entry it never made"
    );
    assert_eq!(
        rp.nondet(pt(5), NonDetSource::Rdrand),
        Ok(1),
        "a failed take leaves the log"
    );
}

#[test]
fn bad_session_and_gaps_reset_the_connection_and_duplicates_are_skipped() {
    let mut b = Backup::new(cfg(2), 1, 0);
    b.on_connected(0);
    let mut wrong = Vec::new();
    let hello = LogEntry::Hello {
        cluster_id: 7,
        generation: 2,
        guest_id: [1; 16],
        protocol_version: crate::log::PROTOCOL_VERSION,
        machine: crate::log::MachineId::default(),
    };
    encode_record(0, &hello, &mut wrong).unwrap();
    assert!(matches!(
        b.on_bytes(0, &wrong)[..],
        [Effect::ResetConnection(FtError::SessionMismatch(
            "generation"
        ))]
    ));
    // Another machine (issue 14): refused naming the field and both values.
    let mut b = Backup::new(cfg(2), 2, 0);
    b.on_connected(0);
    let mut other = Vec::new();
    let hello = LogEntry::Hello {
        cluster_id: 7,
        generation: 2,
        guest_id: [1; 16],
        protocol_version: crate::log::PROTOCOL_VERSION,
        machine: crate::log::MachineId {
            guest_mem: 64 << 20,
            ..Default::default()
        },
    };
    encode_record(0, &hello, &mut other).unwrap();
    let fx = b.on_bytes(0, &other);
    let [Effect::ResetConnection(e)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(
        alloc::format!("{e}"),
        "session hello mismatch: machine guest memory bytes: the primary's is 67108864 (0x4000000), ours 0 (0x0)"
    );

    let (mut p, mut b, mut bytes) = pair();
    let (_, fx) = p
        .record(
            0,
            0,
            LogEntry::Interrupt {
                at: pt(1),
                vector: 32,
                guest_time_ns: 0,
            },
        )
        .unwrap();
    bytes.extend(sent(&fx));
    b.on_bytes(0, &bytes);
    // Reconnect: the primary retransmits everything unacked; no double entries.
    b.on_connected(MS);
    b.on_bytes(MS, &sent(&p.on_connected(MS)));
    assert_eq!((b.received(), b.backlog()), (1, 1));
    // A gap is an error.
    let mut gap = Vec::new();
    encode_record(
        3,
        &LogEntry::Interrupt {
            at: pt(2),
            vector: 32,
            guest_time_ns: 0,
        },
        &mut gap,
    )
    .unwrap();
    assert!(matches!(
        b.on_bytes(MS, &gap)[..],
        [Effect::ResetConnection(FtError::OutOfOrder {
            expected: 2,
            got: 3
        })]
    ));
}

#[test]
fn lagging_backup_throttles_the_primary() {
    let (mut p, mut b, mut bytes) = pair();
    let c = cfg(1).max_lag_ns;
    for i in 1..=20 {
        let (_, fx) = p
            .record(
                i * MS,
                i * 100 * MS,
                LogEntry::Interrupt {
                    at: pt(i),
                    vector: 32,
                    guest_time_ns: 0,
                },
            )
            .unwrap();
        bytes.extend(sent(&fx));
    }
    let ack = sent(&b.on_bytes(21 * MS, &bytes));
    p.on_bytes(21 * MS, &ack);
    let fx = p.tick(21 * MS, 2000 * MS, pt(21));
    assert!(
        fx.contains(&Effect::Throttle(true)),
        "lag {} > {c}",
        p.lag_ns(2000 * MS)
    );
    let mut rp = Replayer::streaming();
    feed(&mut b, &mut rp);
    rp.end_stream();
    for c in 1..=20 {
        assert_eq!(rp.due(pt(c), &REGS, true), Ok(Due::Inject(32)));
    }
    feed(&mut b, &mut rp);
    p.on_bytes(22 * MS, &sent(&b.tick(22 * MS)));
    assert!(p
        .tick(22 * MS, 2000 * MS, pt(21))
        .contains(&Effect::Throttle(false)));
}

#[test]
fn silent_backup_primary_wins_and_releases_or_loses_and_halts() {
    for won in [true, false] {
        let (mut p, _b, _) = pair();
        p.output(MS, 0, pt(3), 41, 0).unwrap();
        assert!(p
            .tick(100 * MS, 0, pt(4))
            .iter()
            .all(|e| !matches!(e, Effect::Arbitrate { .. })));
        let fx = p.tick(2_001 * MS, 0, pt(4));
        assert!(fx.contains(&Effect::Arbitrate {
            expected_generation: 1
        }));
        assert_eq!(p.state(), PrimaryState::Arbitrating);
        // Storage unreachable: nothing happens, retry later.
        assert!(p.on_verdict(2_001 * MS, Verdict::Unreachable).is_empty());
        assert!(p.tick(2_002 * MS, 0, pt(4)).is_empty());
        assert!(p.tick(2_101 * MS, 0, pt(4)).contains(&Effect::Arbitrate {
            expected_generation: 1
        }));
        let fx = if won {
            p.on_verdict(2_101 * MS, Verdict::Won(FlagRecord::new(2, NodeId(1))))
        } else {
            p.on_verdict(2_101 * MS, Verdict::Lost(FlagRecord::new(2, NodeId(2))))
        };
        if won {
            assert_eq!(released(&fx), [41]);
            assert_eq!(p.state(), PrimaryState::Alone);
            assert_eq!(
                released(&p.output(3_000 * MS, 0, pt(9), 42, 0).unwrap()),
                [42]
            );
        } else {
            assert!(fx.contains(&Effect::Halt) && released(&fx).is_empty());
            assert_eq!(p.state(), PrimaryState::Halted);
        }
    }
}

#[test]
fn silent_primary_backup_drains_then_goes_live() {
    let (mut p, mut b, mut bytes) = pair();
    let done = LogEntry::DiskCompletion {
        at: pt(2),
        vector: 33,
        request_id: 5,
        status: crate::log::DiskStatus::Ok,
        data: alloc::vec![0; 512],
    };
    for e in [
        done,
        LogEntry::Interrupt {
            at: pt(3),
            vector: 32,
            guest_time_ns: 0,
        },
    ] {
        let (_, fx) = p.record(0, 0, e).unwrap();
        bytes.extend(sent(&fx));
    }
    b.on_bytes(MS, &bytes);
    let mut rp = Replayer::streaming();
    feed(&mut b, &mut rp);
    rp.end_stream();
    feed(&mut b, &mut rp);
    assert!(b
        .tick(1_000 * MS)
        .iter()
        .all(|e| !matches!(e, Effect::Arbitrate { .. })));
    assert!(b.tick(2_001 * MS).contains(&Effect::Arbitrate {
        expected_generation: 1
    }));
    let fx = b.on_verdict(2_001 * MS, Verdict::Won(FlagRecord::new(2, NodeId(2))));
    assert!(fx.is_empty(), "must drain the log before going live");
    assert_eq!(b.state(), BackupState::Draining);
    assert!(b.tick(2_002 * MS).is_empty(), "two entries still to apply");
    assert!(matches!(rp.due(pt(2), &REGS, true), Ok(Due::Input(_))));
    assert_eq!(rp.due(pt(3), &REGS, true), Ok(Due::Inject(32)));
    feed(&mut b, &mut rp);
    let fx = b.tick(2_003 * MS);
    let Some(Effect::GoLive(g)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert_eq!((g.generation, g.last_applied), (2, 2));
    assert_eq!(b.state(), BackupState::Live);
}

#[test]
fn external_engine_takes_records_acks_applied_and_shutdown_ends_the_log() {
    let (mut p, mut b, hello) = pair();
    let mut bytes = hello;
    for c in [5, 9] {
        let (_, fx) = p
            .record(
                MS,
                c,
                LogEntry::Interrupt {
                    at: pt(c),
                    vector: 0x40,
                    guest_time_ns: 0,
                },
            )
            .unwrap();
        bytes.extend(sent(&fx));
    }
    let fx = p.output(MS, 20, pt(12), 1, 0).unwrap();
    bytes.extend(sent(&fx));
    let ack = sent(&b.on_bytes(2 * MS, &bytes));
    let taken = b.take_received();
    assert_eq!(
        taken.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "handed over in order"
    );
    assert!(
        b.take_received().is_empty(),
        "each record is handed over once"
    );
    assert_eq!(b.backlog(), 0);
    // The ack covers reception: the output is released, nothing applied yet.
    assert_eq!(released(&p.on_bytes(2 * MS, &ack)), [1]);
    assert_eq!((p.acked(), p.applied()), (3, 0));
    b.set_applied(2);
    b.set_applied(99); // clamped to what was received
    assert_eq!(b.applied(), 3);
    let ack = sent(&b.tick(3 * MS));
    p.on_bytes(3 * MS, &ack);
    assert_eq!(p.applied(), 3);
    // Orderly end: Goodbye(Shutdown) after the last entry; the backup
    // learns the log is complete (it is not fenced by a new generation).
    let bye = sent(&p.shutdown());
    assert!(!bye.is_empty());
    assert_eq!(p.state(), PrimaryState::Halted);
    assert!(p.shutdown().is_empty(), "only once");
    let fx = b.on_bytes(4 * MS, &bye);
    assert!(
        !fx.contains(&Effect::Halt),
        "an orderly end is not a halt: the engine replays to the end"
    );
    assert_eq!(
        b.state(),
        BackupState::Halted,
        "no failure detection any more"
    );
    assert_eq!(
        b.goodbye(),
        Some(crate::log::GoodbyeReason::Shutdown),
        "the backup knows why"
    );
}

#[test]
fn nothing_follows_the_final_checkpoint() {
    let (mut p, _b, _) = pair();
    assert!(
        !sent(&p.tick(20 * MS, 0, pt(1))).is_empty(),
        "idle: heartbeat"
    );
    p.close_log();
    assert!(sent(&p.tick(40 * MS, 0, pt(1))).is_empty(), "closed: none");
}

#[test]
fn one_throttle_rule_covers_a_guest_clock_slower_than_the_hosts() {
    let (mut p, _b, _) = pair();
    // The guest's clock barely moves (Bochs): no guest-time lag at all.
    let (_, fx) = p
        .record(
            10 * MS,
            5,
            LogEntry::Interrupt {
                at: pt(1),
                vector: 32,
                guest_time_ns: 0,
            },
        )
        .unwrap();
    assert!(!sent(&fx).is_empty());
    assert!(!p.tick(500 * MS, 6, pt(2)).contains(&Effect::Throttle(true)));
    // Sent 1 s ago (this node's time) and still not applied: throttle.
    assert_eq!(p.lag_sent_ns(1_011 * MS), 1_001 * MS);
    assert!(p
        .tick(1_011 * MS, 7, pt(2))
        .contains(&Effect::Throttle(true)));
}

#[test]
fn a_won_backup_goes_live_only_once_its_external_engine_drained() {
    let (mut p, mut b, _) = pair();
    let (_, fx) = p
        .record(
            MS,
            0,
            LogEntry::Interrupt {
                at: pt(1),
                vector: 32,
                guest_time_ns: 0,
            },
        )
        .unwrap();
    b.on_bytes(MS, &sent(&fx));
    assert_eq!(b.take_received().len(), 1);
    b.set_engine_backlog(1);
    assert!(b.tick(3_000 * MS).contains(&Effect::Arbitrate {
        expected_generation: 1
    }));
    let fx = b.on_verdict(3_000 * MS, Verdict::Won(FlagRecord::new(2, NodeId(2))));
    assert!(fx.iter().all(|e| !matches!(e, Effect::GoLive(_))));
    assert_eq!(b.state(), BackupState::Draining);
    assert!(b.tick(3_001 * MS).is_empty(), "the engine still replays");
    b.set_engine_backlog(0);
    assert!(matches!(b.tick(3_002 * MS).as_slice(), [Effect::GoLive(g)] if g.generation == 2));
}

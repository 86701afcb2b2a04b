//! The simulation campaign run by `cargo test -p ft`, and the mutation
//! checks that prove the checker bites.

use super::*;

const SEEDS: u64 = 10_000;
const SHARDS: u64 = 4;

fn campaign(shard: u64) {
    let cfg = SimConfig::default();
    let mut total = Stats::default();
    let per = SEEDS / SHARDS;
    for seed in shard * per..(shard + 1) * per {
        let r = run_seed(seed, &cfg);
        if let Some(v) = r.violation {
            panic!(
                "seed {seed}: {:?} at {} ms: {}\nreproduce: cargo run -p ft --features sim --bin ftsim -- --seed {seed}",
                v.invariant,
                v.at_ns / 1_000_000,
                v.detail
            );
        }
        total.add(&r.stats);
    }
    // The schedule must actually exercise what the invariants are about.
    assert!(total.failovers > per / 20, "too few failovers: {total:?}");
    assert!(
        total.primary_alone > per / 20,
        "too few primaries alone: {total:?}"
    );
    assert!(total.halts > per / 50, "too few halts: {total:?}");
    assert!(total.repairs > per / 50, "too few repairs: {total:?}");
    assert!(
        total.liveness_met > per / 20,
        "too few liveness checks: {total:?}"
    );
    assert!(total.resets > 0, "no corruption resets: {total:?}");
    assert!(total.outputs > per * 50, "too few outputs: {total:?}");
    assert!(
        total.refused > 0,
        "no stale-generation join refused: {total:?}"
    );
    assert!(total.writes > per * 10, "too few disk writes: {total:?}");
    assert!(total.fenced_writes > 0, "no zombie write fenced: {total:?}");
    assert!(total.reconnects > per / 10, "too few reconnects: {total:?}");
    assert!(total.step_downs > 0, "no primary stepped down: {total:?}");
    assert!(
        total.ends_acknowledged > per / 50 && total.ends_identical > per / 50,
        "too few clean ends: {total:?}"
    );
    assert!(
        total.max_records > 0,
        "no record at the size limit: {total:?}"
    );
    assert!(
        total.oversize_refused > 0,
        "no oversize record refused: {total:?}"
    );
}

#[test]
fn campaign_shard_0() {
    campaign(0);
}
#[test]
fn campaign_shard_1() {
    campaign(1);
}
#[test]
fn campaign_shard_2() {
    campaign(2);
}
#[test]
fn campaign_shard_3() {
    campaign(3);
}

/// The first seed in `0..limit` whose run breaks an invariant.
fn first_violation(cfg: &SimConfig, limit: u64) -> Option<(u64, Violation)> {
    (0..limit).find_map(|s| run_seed(s, cfg).violation.map(|v| (s, v)))
}

#[test]
fn mutation_no_output_rule_is_caught() {
    let cfg = SimConfig {
        mutation: Mutation::NoOutputRule,
        ..SimConfig::default()
    };
    let (_, v) = first_violation(&cfg, 50).expect("output rule switched off, nothing caught");
    assert_eq!(v.invariant, Invariant::OutputRule, "{v:?}");
}

#[test]
fn mutation_no_output_rule_is_caught_by_world_consistency_alone() {
    // Without the direct check, only what the world saw can betray it.
    let cfg = SimConfig {
        mutation: Mutation::NoOutputRule,
        check_output_rule: false,
        ..SimConfig::default()
    };
    let (seed, v) = first_violation(&cfg, 500).expect("output rule switched off, nothing caught");
    assert!(
        matches!(
            v.invariant,
            Invariant::Extension | Invariant::SingleExecution
        ),
        "seed {seed}: {v:?}"
    );
}

#[test]
fn mutation_no_test_and_set_is_caught() {
    let cfg = SimConfig {
        mutation: Mutation::NoTestAndSet,
        ..SimConfig::default()
    };
    let (seed, v) = first_violation(&cfg, 500).expect("test-and-set switched off, nothing caught");
    assert_eq!(v.invariant, Invariant::NoSplitBrain, "seed {seed}: {v:?}");
}

/// Each deliberate bug of the FT node and its session machines is caught
/// within the default seed count, by the invariant that names its harm.
fn caught(mutation: Mutation, by: &[Invariant]) {
    let cfg = SimConfig {
        mutation,
        ..SimConfig::default()
    };
    let (seed, v) = first_violation(&cfg, SEEDS)
        .unwrap_or_else(|| panic!("{mutation:?}: nothing caught in {SEEDS} seeds"));
    assert!(
        by.contains(&v.invariant),
        "{mutation:?}: seed {seed}: {v:?}"
    );
}

#[test]
fn mutation_ack_before_queued_is_caught() {
    caught(Mutation::AckBeforeQueued, &[Invariant::OutputRule]);
}

#[test]
fn mutation_go_live_without_drain_is_caught() {
    caught(
        Mutation::GoLiveWithoutDrain,
        &[Invariant::Extension, Invariant::SingleExecution],
    );
}

#[test]
fn mutation_no_generation_check_is_caught() {
    caught(Mutation::NoGenerationCheck, &[Invariant::Liveness]);
}

#[test]
fn mutation_no_own_win_is_caught() {
    caught(Mutation::NoOwnWin, &[Invariant::Liveness]);
}

#[test]
fn mutation_no_fencing_is_caught() {
    caught(Mutation::NoFencing, &[Invariant::Durability]);
}

#[test]
fn mutation_no_reconnect_is_caught() {
    caught(Mutation::NoReconnect, &[Invariant::NoFalseFailover]);
}

#[test]
fn mutation_no_storage_step_down_is_caught() {
    caught(Mutation::NoStorageStepDown, &[Invariant::Liveness]);
}

#[test]
fn mutation_no_close_log_is_caught() {
    caught(Mutation::NoCloseLog, &[Invariant::Replay]);
}

#[test]
fn mutation_no_seam_is_caught() {
    caught(Mutation::NoSeam, &[Invariant::NoLostOutput]);
}

#[test]
fn mutation_heard_on_records_is_caught() {
    caught(Mutation::HeardOnRecords, &[Invariant::NoFalseFailover]);
}

#[test]
fn a_seed_reproduces_exactly() {
    let cfg = SimConfig::default();
    for seed in [1, 77, 4242] {
        assert_eq!(run_seed(seed, &cfg).stats, run_seed(seed, &cfg).stats);
    }
}

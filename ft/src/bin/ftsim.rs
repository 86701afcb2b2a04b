//! `ftsim`: the FT protocol's deterministic simulation campaign
//! (DESIGN.md §6 "Proven protocol").
//!
//! ```text
//! ftsim --seed N                 run one seed, print its stats or failure
//! ftsim --seeds COUNT [--start S] run COUNT seeds from S, progress + summary
//!       [--mutation NAME] [--no-output-rule-check] [--trace]
//! ```
//! Exit status 1 if any seed broke an invariant; each failure prints the
//! one command that reproduces it.

use std::process::ExitCode;
use std::time::Instant;

use ft::sim::{run_seed, Mutation, SimConfig, Stats};

fn usage() -> ExitCode {
    eprintln!("usage: ftsim (--seed N | --seeds COUNT [--start S]) [--mutation NAME] [--no-output-rule-check]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut cfg = SimConfig::default();
    let (mut one, mut count, mut start) = (None, None, 0u64);
    let mut extra = String::new();
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--seed" => one = num(),
            "--seeds" => count = num(),
            "--start" => start = num().unwrap_or(0),
            "--mutation" => {
                let m = args.next().unwrap_or_default();
                cfg.mutation = match Mutation::ALL.iter().find(|(_, n)| *n == m) {
                    Some((mutation, _)) => *mutation,
                    None => return usage(),
                };
                extra.push_str(&format!(" --mutation {m}"));
            }
            "--trace" => cfg.trace = true,
            "--no-output-rule-check" => {
                cfg.check_output_rule = false;
                extra.push_str(" --no-output-rule-check");
            }
            _ => return usage(),
        }
    }
    if let Some(seed) = one {
        let r = run_seed(seed, &cfg);
        println!("seed {seed}: {:#?}", r.stats);
        return match r.violation {
            None => {
                println!("seed {seed}: ok");
                ExitCode::SUCCESS
            }
            Some(v) => {
                println!(
                    "seed {seed}: VIOLATION {:?} at {} ms: {}",
                    v.invariant,
                    v.at_ns / 1_000_000,
                    v.detail
                );
                ExitCode::FAILURE
            }
        };
    }
    let Some(count) = count else { return usage() };
    let t0 = Instant::now();
    let mut last = t0;
    let (mut failed, mut total) = (0u64, Stats::default());
    for seed in start..start + count {
        let r = run_seed(seed, &cfg);
        if let Some(v) = &r.violation {
            failed += 1;
            println!(
                "FAIL seed {seed}: {:?} at {} ms: {}\n  reproduce: cargo run -p ft --features sim --bin ftsim -- --seed {seed}{extra}",
                v.invariant,
                v.at_ns / 1_000_000,
                v.detail
            );
        }
        total.add(&r.stats);
        if last.elapsed().as_secs() >= 2 {
            last = std::time::Instant::now();
            let done = seed - start + 1;
            eprintln!(
                "progress: {done}/{count} seeds, {failed} failed, {:.0} seeds/s",
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "summary: {count} seeds from {start} in {secs:.1} s ({:.0} seeds/s), {failed} failed",
        count as f64 / secs
    );
    println!(
        "  failovers (backup went live) {}, primaries went alone {}, halts {}, repairs {} (state transfers {}, {} cut off before their commit), arbitrations {}",
        total.failovers,
        total.primary_alone,
        total.halts,
        total.repairs,
        total.transfers,
        total.transfers_aborted,
        total.arbitrations
    );
    println!(
        "  outputs {} (duplicates {}, re-emitted at a go-live {}), liveness obligations met {}, max crash-to-live {} ms, max backup lag {} ms, connection resets {}, log bytes {}",
        total.outputs,
        total.duplicates,
        total.reemitted,
        total.liveness_met,
        total.max_takeover_ns / 1_000_000,
        total.max_lag_ns / 1_000_000,
        total.resets,
        total.log_bytes
    );
    println!(
        "  reconnects {}, stale joins refused {}, disk writes {} (refused from fenced nodes {}), primaries stepped down for a stalled disk {}",
        total.reconnects, total.refused, total.writes, total.fenced_writes, total.step_downs
    );
    println!(
        "  records of exactly the maximum payload {}, one byte over refused {}",
        total.max_records, total.oversize_refused
    );
    println!(
        "  guests powered off {} (end acknowledged {}, not in time {}; backups met the final checkpoint {})",
        total.ends, total.ends_acknowledged, total.ends_unacknowledged, total.ends_identical
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! Record/replay e2e tests (issue 8, DESIGN.md §1.1-§1.2, §3, §6), all in
//! Bochs 3.0 (VMX with MTF and the preemption timer).
//!
//! Same-boot tests (`ft=replay` without a log module): `replay-timer-mtf`,
//! `replay-mutate`, `replay-pmu-refused`. Two-boot tests: a record boot
//! (`ft=export`) writes its log to COM1 as `FTLOG <hex>` lines; the runner
//! reassembles it (length and FNV checked), writes it to
//! `build/e2e/<test>/ftlog.bin` and boots a second Bochs with the guest
//! and the log as boot modules (`ft=replay`): `replay-identical`,
//! `replay-detects-divergence`, `counter-backends-agree`.
use crate::emulator::{BootSpec, Emulator, Outcome, Run};
use crate::tests::E2eTest;
use ft::log::{LogEntry, Record};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GUEST: &str = "build/testguest.elf64";
/// The replay workload (`qemu-tests/guests/hello/src/replay.rs`).
const WORKLOAD: &str = "test=replay";
/// A short workload: few enough instructions to single-step all of them.
/// The replay workload with guest I/O (issue 8: network input and disk
/// reads): a virtio-blk sector write or read and a loopback frame every
/// round, on these hypervisor options.
const IO_WORKLOAD: &str = "test=replay io=1";
const IO_DEVICES: &str = "guest_net=loopback disk=ram:1M";
const SMALL_WORKLOAD: &str = "test=replay rounds=40 min=2000 span=6000 mem=64";
/// Bochs's `ips` in the e2e bochsrc (emulated seconds = ticks / IPS).
const BOCHS_IPS: f64 = 50e6;

pub fn tests() -> Vec<E2eTest> {
    vec![
        E2eTest {
            check: Some(check_measure),
            ..same_boot(
                "replay-timer-mtf",
                "test=timer, mtf counter: 100 timer interrupts landed at exact points; replay bit-identical; timer deltas cross-checked per exit",
                "mode=hypervisor counter=mtf ft=replay",
                "test=timer",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=mtf ft=replay replay_mutate=1",
            expect_code: 1,
            expect: vec![
                "ft: record: log entries=",
                "ft: replay_mutate: entry #",
                "ft: replay: DIVERGED at entry #",
            ],
            forbid: vec!["PANIC", "EXCEPTION", "IDENTICAL"],
            ..vmx(
                "replay-mutate",
                "one recorded interrupt moved by one instruction: the replay reports the divergence",
                "test=timer",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=pmu ft=record",
            expect_code: 3,
            expect: vec!["counter: counter backend `pmu` refused: CPUID.0AH claims PMU version"],
            ..vmx(
                "replay-pmu-refused",
                "counter=pmu in Bochs (CPUID claims a PMU, PMC0 does not count): refused with a reason",
                "test=hello",
            )
        },
        E2eTest {
            custom: Some(replay_identical),
            timeout: Duration::from_secs(300),
            ..vmx(
                "replay-identical",
                "test=replay io=1 (irregular LAPIC timer, RDTSC, RDRAND, memory, rep, virtio-blk sector writes/reads and virtio-net loopback frames on guest_net=loopback disk=ram:1M) recorded with preempt (>= 1000 entries, >= 100 checkpoints, NetFrame and DiskCompletion entries with read data), log exported; a second Bochs replays it without backends: every entry met, guest output and final state identical; closing numbers",
                IO_WORKLOAD,
            )
        },
        E2eTest {
            custom: Some(replay_detects_memory_divergence),
            timeout: Duration::from_secs(300),
            ..vmx(
                "replay-detects-memory-divergence",
                "test=replay io=1 recorded and exported; the replay's log has one byte of one received frame flipped (replay_mutate=3), so at first only guest memory differs: the second Bochs reports the divergence at the first checkpoint after that frame (its device-write digest), not at the end",
                IO_WORKLOAD,
            )
        },
        E2eTest {
            custom: Some(replay_detects_divergence),
            timeout: Duration::from_secs(300),
            ..vmx(
                "replay-detects-divergence",
                "exported log with one interrupt moved by one instruction: the second Bochs reports the divergence at that entry; with one RDTSC value changed: at a later entry",
                WORKLOAD,
            )
        },
        E2eTest {
            custom: Some(counter_backends_agree),
            timeout: Duration::from_secs(300),
            ..vmx(
                "counter-backends-agree",
                "a run recorded with counter=preempt replays exactly with counter=mtf (every logged point met single-stepping) and vice versa; same instruction counts",
                SMALL_WORKLOAD,
            )
        },
    ]
}

fn vmx(name: &'static str, about: &'static str, guest_cmdline: &'static str) -> E2eTest {
    E2eTest {
        cmdline: "mode=hypervisor",
        modules: vec![(GUEST, guest_cmdline)],
        timeout: Duration::from_secs(180),
        ..E2eTest::new(name, Emulator::Bochs, about)
    }
}

/// Record and replay in the same boot: the guest runs once recording every
/// non-deterministic input at its execution point, then again from the
/// initial snapshot replaying the in-memory log.
fn same_boot(
    name: &'static str,
    about: &'static str,
    cmdline: &'static str,
    guest: &'static str,
) -> E2eTest {
    E2eTest {
        cmdline,
        expect: vec![
            "counter: ",
            "ft: record: log entries=",
            "ft: replay: restored the initial state",
            "ft: replay: IDENTICAL",
        ],
        forbid: vec!["PANIC", "EXCEPTION", "DIVERGED", "refused"],
        check: Some(check_replay),
        ..vmx(name, about, guest)
    }
}

pub(crate) fn line_with<'a>(serial: &'a str, key: &str) -> Result<&'a str, String> {
    serial
        .lines()
        .find(|l| l.contains(key))
        .ok_or_else(|| format!("no `{key}` line"))
}

/// The record and replay final hashes and console hashes agree, and the
/// replay applied every logged entry.
fn check_replay(run: &Run) -> Result<String, String> {
    let rec = line_with(&run.serial, "ft: record: final point")?;
    let ident = line_with(&run.serial, "ft: replay: IDENTICAL")?;
    let rec_hash = rec
        .split("state hash ")
        .nth(1)
        .and_then(|t| t.split(';').next());
    let rep_hash = ident
        .split("state hash ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next());
    if rec_hash.is_none() || rec_hash != rep_hash {
        return Err(format!("state hashes differ: {rec_hash:?} vs {rep_hash:?}"));
    }
    let log = line_with(&run.serial, "ft: record: log entries=")?;
    let applied = line_with(&run.serial, "ft: replay: applied")?;
    Ok(format!(
        "({}; {})",
        log.trim_start_matches("ft: record: "),
        applied.trim_start_matches("ft: replay: ")
    ))
}

/// `key=<number>` on a line (`;` ends a value too).
pub(crate) fn count_of(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .unwrap_or(0)
}

fn check_replay_timer(run: &Run) -> Result<String, String> {
    let note = check_replay(run)?;
    let log = line_with(&run.serial, "ft: record: log entries=")?;
    let applied = line_with(&run.serial, "ft: replay: applied")?;
    let (rec, rep) = (count_of(log, "interrupt="), count_of(applied, "interrupt="));
    if rec < 100 || rec != rep {
        return Err(format!(
            "{rec} interrupts recorded, {rep} replayed (want >= 100, equal)"
        ));
    }
    Ok(note)
}

/// The mtf run's cross-check table, reported (not judged: it is the measurement).
fn check_measure(run: &Run) -> Result<String, String> {
    let note = check_replay_timer(run)?;
    let x = line_with(&run.serial, "counter: cross-check")?;
    Ok(format!("{note} [{}]", x.trim_start_matches("counter: ")))
}

// ---- two-boot record/replay ----

/// One boot of this test: `suffix` names its directory.
fn boot(
    t: &E2eTest,
    root: &Path,
    suffix: &str,
    cmdline: &str,
    guest: &str,
    log: Option<&Path>,
) -> Result<Run, String> {
    let mut spec: BootSpec = t.boot_spec(root);
    spec.name = format!("{}{suffix}", t.name);
    spec.cmdline = cmdline.to_string();
    spec.modules = vec![(root.join(GUEST), guest.to_string())];
    if let Some(l) = log {
        spec.modules.push((l.to_path_buf(), String::new()));
    }
    let run = t.emulator.boot(root, spec)?;
    if run.timed_out {
        return Err(format!("{suffix} boot: {}", run.ended));
    }
    Ok(run)
}

fn fail_with(what: String, run: &Run, dir: &str) -> Outcome {
    Outcome::Fail(format!(
        "{what}\n---- last serial lines (build/e2e/{dir}/serial.txt) ----\n{}",
        crate::tests::tail(&run.serial, 25)
    ))
}

fn code_is(run: &Run, want: u8, what: &str) -> Result<(), String> {
    match run.exit_code {
        Some(c) if c == want => Ok(()),
        other => Err(format!(
            "{what}: exit code {other:?}, expected {want}; {}",
            run.ended
        )),
    }
}

/// Record with `ft=export`, reassemble and store the log.
fn record(
    t: &E2eTest,
    root: &Path,
    counter: &str,
    guest: &str,
) -> Result<(Run, PathBuf, Vec<Record>), Outcome> {
    record_with(t, root, counter, "", guest)
}

/// [`record`] with more hypervisor options (`devices`: the guest's disk
/// and network backends).
fn record_with(
    t: &E2eTest,
    root: &Path,
    counter: &str,
    devices: &str,
    guest: &str,
) -> Result<(Run, PathBuf, Vec<Record>), Outcome> {
    let cmdline = format!("mode=hypervisor counter={counter} ft=export {devices}");
    let cmdline = cmdline.trim_end();
    let run = boot(t, root, "", cmdline, guest, None).map_err(Outcome::Fail)?;
    let dir = t.name;
    let checked = code_is(&run, 0, "record boot")
        .and_then(|_| ft::log::export::parse_export(&run.serial).map_err(|e| e.to_string()));
    let bytes = match checked {
        Ok(b) => b,
        Err(e) => return Err(fail_with(e, &run, dir)),
    };
    let records = match ft::log::export::decode_all(&bytes)
        .map_err(|(off, e)| format!("log record at byte {off}: {e}"))
    {
        Ok(r) => r,
        Err(e) => return Err(fail_with(e, &run, dir)),
    };
    let path = root.join("build/e2e").join(dir).join("ftlog.bin");
    if let Err(e) = std::fs::write(&path, &bytes) {
        return Err(Outcome::Fail(format!("{}: {e}", path.display())));
    }
    Ok((run, path, records))
}

/// The guest's own console lines (`guest: ` prefix, without the log lines).
fn guest_lines(serial: &str) -> Vec<&str> {
    serial
        .lines()
        .filter(|l| l.starts_with("guest: "))
        .collect()
}

/// Replay boot outcome: IDENTICAL, every entry applied, same guest output.
pub(crate) fn check_identical(rec: &Run, rep: &Run, records: &[Record]) -> Result<String, String> {
    code_is(rep, 0, "replay boot")?;
    if rep.serial.contains("DIVERGED") || rep.serial.contains("refused") {
        return Err("the replay diverged or its counter was refused".into());
    }
    let ident = line_with(&rep.serial, "ft: replay: IDENTICAL")?;
    let final_rec = line_with(&rec.serial, "ft: record: final point")?;
    let h = |l: &str, sep: char| {
        l.split("state hash ")
            .nth(1)
            .and_then(|t| t.split(sep).next())
            .map(|s| s.trim().to_string())
    };
    let (hr, hp) = (
        h(final_rec, ';'),
        h(ident, ' ').map(|s| s.trim_end_matches(',').to_string()),
    );
    if hr.is_none() || hr != hp {
        return Err(format!("final state hashes differ: {hr:?} vs {hp:?}"));
    }
    let applied = line_with(&rep.serial, "ft: replay: applied")?;
    let kinds = |k: fn(&LogEntry) -> bool| records.iter().filter(|r| k(&r.entry)).count() as u64;
    let want = [
        (
            "checkpoint=",
            kinds(|e| matches!(e, LogEntry::Checkpoint { .. })),
        ),
        (
            "interrupt=",
            kinds(|e| matches!(e, LogEntry::Interrupt { .. })),
        ),
        ("nondet=", kinds(|e| matches!(e, LogEntry::NonDet { .. }))),
        (
            "netframe=",
            kinds(|e| matches!(e, LogEntry::NetFrame { .. })),
        ),
        (
            "disk=",
            kinds(|e| matches!(e, LogEntry::DiskCompletion { .. })),
        ),
    ];
    for (key, n) in want {
        if count_of(applied, key) != n {
            return Err(format!(
                "replay applied {key}{} but the log holds {n}",
                count_of(applied, key)
            ));
        }
    }
    let (a, b) = (guest_lines(&rec.serial), guest_lines(&rep.serial));
    if a != b || a.is_empty() {
        return Err(format!(
            "guest output differs: record {} lines, replay {} lines",
            a.len(),
            b.len()
        ));
    }
    Ok(format!(
        "{} entries, {} checkpoints met, final state {}",
        records.len(),
        want[0].1,
        hr.unwrap_or_default()
    ))
}

/// `ft: numbers:` fields of a run.
struct Numbers {
    instructions: u64,
    exits: u64,
    host_ticks: u64,
    guest_tsc: u64,
    log_bytes: u64,
}

fn numbers(run: &Run) -> Result<Numbers, String> {
    let l = line_with(&run.serial, "ft: numbers:")?;
    Ok(Numbers {
        instructions: count_of(l, "guest_instructions="),
        exits: count_of(l, "exits="),
        host_ticks: count_of(l, "host_ticks="),
        guest_tsc: count_of(l, "guest_tsc="),
        log_bytes: count_of(l, "log_bytes="),
    })
}

/// The guest's work rate (`replay: ... rate=N steps/Mtick`).
fn guest_rate(run: &Run) -> Result<u64, String> {
    let l = line_with(&run.serial, "replay: rounds=")?;
    Ok(count_of(l, "rate="))
}

/// Log Mbit/s per guest second (virtual TSC announced at 1 GHz).
fn mbit_per_guest_s(n: &Numbers) -> f64 {
    n.log_bytes as f64 * 8.0 / 1e6 / (n.guest_tsc.max(1) as f64 / 1e9)
}

fn replay_identical(t: &E2eTest, root: &Path) -> Outcome {
    let (rec, log, records) = match record_with(t, root, "preempt", IO_DEVICES, IO_WORKLOAD) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let count = |k: fn(&LogEntry) -> bool| records.iter().filter(|r| k(&r.entry)).count();
    let checkpoints = count(|e| matches!(e, LogEntry::Checkpoint { .. }));
    let frames = count(|e| matches!(e, LogEntry::NetFrame { .. }));
    let disk = count(|e| matches!(e, LogEntry::DiskCompletion { .. }));
    let disk_reads =
        count(|e| matches!(e, LogEntry::DiskCompletion { data, .. } if !data.is_empty()));
    if records.len() < 1000 || checkpoints < 100 || frames == 0 || disk_reads == 0 {
        return fail_with(
            format!(
                "{} log entries, {checkpoints} checkpoints, {frames} frames, {disk} disk completions ({disk_reads} with read data) (want >= 1000, >= 100, > 0, > 0)",
                records.len()
            ),
            &rec,
            t.name,
        );
    }
    let cmd = format!("mode=hypervisor counter=preempt ft=replay {IO_DEVICES}");
    let rep = match boot(t, root, "-replay", &cmd, IO_WORKLOAD, Some(&log)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let note = match check_identical(&rec, &rep, &records) {
        Ok(n) => {
            format!("{n}; {frames} NetFrame, {disk} DiskCompletion ({disk_reads} with read data)")
        }
        Err(e) => return fail_with(e, &rep, &format!("{}-replay", t.name)),
    };
    // Closing numbers: the same workload without FT, and an idle guest.
    let plain_cmd = format!("mode=hypervisor {IO_DEVICES}");
    let plain = match boot(t, root, "-plain", &plain_cmd, IO_WORKLOAD, None) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let idle = match boot(
        t,
        root,
        "-idle",
        "mode=hypervisor counter=preempt ft=record",
        "test=timer",
        None,
    ) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let figures = (|| -> Result<String, String> {
        code_is(&plain, 0, "plain boot")?;
        code_is(&idle, 0, "idle boot")?;
        let (r_rec, r_plain) = (guest_rate(&rec)?, guest_rate(&plain)?);
        let (n_rec, n_rep, n_idle) = (numbers(&rec)?, numbers(&rep)?, numbers(&idle)?);
        let emu_s = |n: &Numbers| n.host_ticks as f64 / BOCHS_IPS;
        Ok(format!(
            "record/plain guest work rate {:.3} ({r_rec} vs {r_plain} steps per Mtick); \
             log {:.2} Mbit/s per guest second (workload, {} B in {:.3} guest s), idle guest {:.2} Mbit/s ({} B in {:.3} s); \
             record: {} guest instructions, {} exits, {:.1} M guest instr/s and {:.0} exits/s of Bochs wall time ({:.1}s), \
             {:.2} guest instructions per Bochs instruction; replay: {} exits, {:.1} M guest instr/s wall ({:.1}s); \
             emulated time record {:.2}s replay {:.2}s at ips=50M",
            r_rec as f64 / r_plain.max(1) as f64,
            mbit_per_guest_s(&n_rec),
            n_rec.log_bytes,
            n_rec.guest_tsc as f64 / 1e9,
            mbit_per_guest_s(&n_idle),
            n_idle.log_bytes,
            n_idle.guest_tsc as f64 / 1e9,
            n_rec.instructions,
            n_rec.exits,
            n_rec.instructions as f64 / 1e6 / rec.wall.as_secs_f64(),
            n_rec.exits as f64 / rec.wall.as_secs_f64(),
            rec.wall.as_secs_f64(),
            n_rec.instructions as f64 / n_rec.host_ticks.max(1) as f64,
            n_rep.exits,
            n_rep.instructions as f64 / 1e6 / rep.wall.as_secs_f64(),
            rep.wall.as_secs_f64(),
            emu_s(&n_rec),
            emu_s(&n_rep),
        ))
    })();
    match figures {
        Ok(f) => Outcome::Pass(format!("({note}) [{f}]")),
        Err(e) => Outcome::Fail(format!("closing numbers: {e}")),
    }
}

/// `ft: replay_mutate: entry #N ...` and `DIVERGED at entry #M`.
fn mutated_and_diverged(run: &Run) -> Result<(u64, u64, String), String> {
    let m = line_with(&run.serial, "ft: replay_mutate: entry #")?;
    let n = m
        .split("entry #")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read the mutated entry from `{m}`"))?;
    let d = line_with(&run.serial, "ft: replay: DIVERGED at entry #")?;
    let at = d
        .split("entry #")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read the divergent entry from `{d}`"))?;
    Ok((n, at, d.trim_start_matches("ft: replay: ").to_string()))
}

fn replay_detects_divergence(t: &E2eTest, root: &Path) -> Outcome {
    let (_rec, log, records) = match record(t, root, "preempt", WORKLOAD) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let by_seq = |s: u64| records.iter().find(|r| r.seq == s);
    // 1: an interrupt one instruction late. The entry names its exact
    // point (counter, RIP, RCX): one instruction later the guest is at
    // another RIP, so the moved entry itself is the first one not met.
    let cmd = "mode=hypervisor counter=preempt ft=replay replay_mutate=1";
    let moved = match boot(t, root, "-moved", cmd, WORKLOAD, Some(&log)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let dir = format!("{}-moved", t.name);
    let first = (|| -> Result<String, String> {
        code_is(&moved, 1, "replay of the moved interrupt")?;
        let (n, at, line) = mutated_and_diverged(&moved)?;
        let Some(Record {
            entry: LogEntry::Interrupt { at: p, .. },
            ..
        }) = by_seq(n)
        else {
            return Err(format!(
                "entry #{n} of the exported log is not an interrupt"
            ));
        };
        if at != n {
            return Err(format!(
                "diverged at entry #{at}, expected the moved interrupt #{n}: {line}"
            ));
        }
        let want = format!(
            "entry at (counter {}, rip {:#x}, rcx {:#x})",
            p.counter + 1,
            p.rip,
            p.rcx
        );
        if !line.contains(&want) || !line.contains(&format!("counter {}, rip", p.counter + 1)) {
            return Err(format!(
                "the report does not name the moved point `{want}`: {line}"
            ));
        }
        Ok(format!(
            "interrupt #{n} moved from counter {} to {} -> diverged at #{at}: {line}",
            p.counter,
            p.counter + 1
        ))
    })();
    let first = match first {
        Ok(n) => n,
        Err(e) => return fail_with(e, &moved, &dir),
    };
    // 2: one RDTSC value changed: diverges at a later entry, never passes.
    let cmd = "mode=hypervisor counter=preempt ft=replay replay_mutate=2";
    let changed = match boot(t, root, "-value", cmd, WORKLOAD, Some(&log)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let dir = format!("{}-value", t.name);
    let second = (|| -> Result<String, String> {
        code_is(&changed, 1, "replay of the changed RDTSC value")?;
        let (n, at, line) = mutated_and_diverged(&changed)?;
        if at <= n {
            return Err(format!("diverged at #{at}, before the changed entry #{n}"));
        }
        Ok(format!("RDTSC #{n} value +1 -> diverged at #{at}: {line}"))
    })();
    match second {
        Ok(s) => Outcome::Pass(format!("({first}; {s})")),
        Err(e) => fail_with(e, &changed, &dir),
    }
}

fn replay_detects_memory_divergence(t: &E2eTest, root: &Path) -> Outcome {
    let (_rec, log, records) = match record_with(t, root, "preempt", IO_DEVICES, IO_WORKLOAD) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let cmd = format!("mode=hypervisor counter=preempt ft=replay replay_mutate=3 {IO_DEVICES}");
    let run = match boot(t, root, "-frame", &cmd, IO_WORKLOAD, Some(&log)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let dir = format!("{}-frame", t.name);
    let judged = (|| -> Result<String, String> {
        code_is(&run, 1, "replay of the changed frame")?;
        let (n, at, line) = mutated_and_diverged(&run)?;
        if !matches!(
            records.iter().find(|r| r.seq == n).map(|r| &r.entry),
            Some(LogEntry::NetFrame { .. })
        ) {
            return Err(format!("entry #{n} of the exported log is not a frame"));
        }
        // The first checkpoint after the frame: the latest point at which
        // the device-write digest must have caught it.
        let next = records
            .iter()
            .find(|r| r.seq > n && matches!(r.entry, LogEntry::Checkpoint { .. }))
            .map(|r| r.seq)
            .ok_or("no checkpoint after the changed frame")?;
        if at <= n || at > next {
            return Err(format!(
                "diverged at #{at}; the frame is #{n} and the first checkpoint after it #{next}: {line}"
            ));
        }
        Ok(format!(
            "frame #{n} with one byte flipped -> diverged at #{at} (first checkpoint after it: #{next}): {line}"
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(format!("({note})")),
        Err(e) => fail_with(e, &run, &dir),
    }
}

fn counter_backends_agree(t: &E2eTest, root: &Path) -> Outcome {
    // preempt records, mtf replays: every logged point is met by
    // single-stepping every instruction.
    let (rec, log, records) = match record(t, root, "preempt", SMALL_WORKLOAD) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let cmd = "mode=hypervisor counter=mtf ft=replay";
    let rep = match boot(t, root, "-mtf", cmd, SMALL_WORKLOAD, Some(&log)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let counts = |r: &Run, name: &str| {
        line_with(&r.serial, &format!("counter: {name} counted "))
            .map(|l| count_of(&l.replace("counted ", "counted="), "counted="))
    };
    let one = (|| -> Result<String, String> {
        let note = check_identical(&rec, &rep, &records)?;
        let (a, b) = (counts(&rec, "preempt")?, counts(&rep, "mtf")?);
        if a != b || a == 0 {
            return Err(format!("preempt counted {a}, mtf {b}"));
        }
        Ok(format!("preempt->mtf: {note}; {a} instructions both"))
    })();
    let one = match one {
        Ok(n) => n,
        Err(e) => return fail_with(e, &rep, &format!("{}-mtf", t.name)),
    };
    // and the other way: mtf records, preempt replays.
    let t2 = E2eTest {
        name: "counter-backends-agree-2",
        ..vmx(t.name, t.about, SMALL_WORKLOAD)
    };
    let (rec2, log2, records2) = match record(&t2, root, "mtf", SMALL_WORKLOAD) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let cmd = "mode=hypervisor counter=preempt ft=replay";
    let rep2 = match boot(&t2, root, "-preempt", cmd, SMALL_WORKLOAD, Some(&log2)) {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(e),
    };
    let two = (|| -> Result<String, String> {
        let note = check_identical(&rec2, &rep2, &records2)?;
        let (a, b) = (counts(&rec2, "mtf")?, counts(&rep2, "preempt")?);
        if a != b || a == 0 {
            return Err(format!("mtf counted {a}, preempt {b}"));
        }
        Ok(format!("mtf->preempt: {note}"))
    })();
    match two {
        Ok(n) => Outcome::Pass(format!("({one}; {n})")),
        Err(e) => fail_with(e, &rep2, "counter-backends-agree-2-preempt"),
    }
}

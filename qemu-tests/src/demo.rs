//! `make run`: the FT pair demo (issue 9 item 6; DESIGN.md §1, the
//! contract with users, and §6 "Observable").
//!
//! One network namespace holds the whole cluster ([`crate::bench::Rig`]):
//! istgt (the shared disk: the arbitration flag at LBA 0, the guest's disk
//! from block 8), the primary hypervisor (Bochs, 10.0.4.11), the backup
//! (Bochs, 10.0.4.12), both running the test guest's KV service at
//! 10.0.4.20:7000, and the client (the namespace's own address,
//! 10.0.4.1). The client stores keys (`SET`, each written and flushed
//! before `OK`) and reads earlier ones back (`GET`); every second the
//! status ports of both hypervisors are polled and shown as one line each.
//! After a third of the load the primary's Bochs is SIGKILLed; the backup
//! notices the silence, wins the test-and-set on the LUN, replays what it
//! holds and goes live under the next generation; the client's TCP
//! connection carries on against the same guest. At the end every
//! acknowledged `SET` is read back, and a summary shows what was verified,
//! the failover time (kill to the first reply from the new primary), the
//! log rate and the backup lag. Exit status 0 only if everything held.
use crate::bench::{self, Rig, GUEST_ADDR, STATUS_PORTS};
use crate::emulator::{Emulator, Interaction};
use crate::tests_net::{wait_serial, Netns};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SETs the client stores in all; the primary dies after [`KILL_AFTER`].
const SETS: usize = 150;
const KILL_AFTER: usize = 50;
const PRIMARY: &str = "demo-primary";
const BACKUP: &str = "demo-backup";

/// One status-port sample.
#[derive(Clone)]
struct Sample {
    addr: String,
    fields: Option<BTreeMap<String, String>>,
}

/// What the orchestration saw (shared with the status thread).
#[derive(Default)]
struct Seen {
    samples: Vec<Sample>,
}

/// `[  12.3s]` since the demo started.
fn stamp(t0: Instant) -> String {
    format!("[{:>6.1}s]", t0.elapsed().as_secs_f64())
}

/// One compact status line of a node.
fn status_text(addr: &str, f: Option<&BTreeMap<String, String>>, why: &str) -> String {
    let host = addr.split(':').next().unwrap_or(addr);
    let Some(f) = f else {
        return format!("{host:<10} unreachable ({why})");
    };
    let g = |k: &str| f.get(k).map_or("?", String::as_str);
    let lag_ms = f
        .get("lag_us")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or("?".into(), |v| format!("{}", v / 1000));
    if g("role") == "primary" || g("state") == "live" {
        format!(
            "{host:<10} {:<7} {:<10} gen {} seq {:>6} acked {:>6} applied {:>6} lag {:>5} entries / {:>5} ms  log {:>6} Mbit/s  held {}",
            g("role"),
            g("state"),
            g("generation"),
            g("seq"),
            g("acked"),
            g("applied"),
            g("lag_entries"),
            lag_ms,
            g("log_mbit_s"),
            g("outputs_held"),
        )
    } else {
        format!(
            "{host:<10} {:<7} {:<10} gen {} seq {:>6} applied {:>6} lag {:>5} entries           log {:>6} Mbit/s  heartbeat {} ms ago",
            g("role"),
            g("state"),
            g("generation"),
            g("seq"),
            g("applied"),
            g("lag_entries"),
            g("log_mbit_s"),
            g("heartbeat_age_ms"),
        )
    }
}

/// Numbers of the primary while it was paired: (log Mbit/s, lag ms).
fn paired_figures(samples: &[Sample]) -> (Vec<f64>, Vec<f64>) {
    let paired = samples
        .iter()
        .filter_map(|s| s.fields.as_ref())
        .filter(|f| {
            f.get("role").map(String::as_str) == Some("primary")
                && f.get("state").map(String::as_str) == Some("paired")
        });
    let mut log = vec![];
    let mut lag = vec![];
    for f in paired {
        if let Some(v) = f.get("log_mbit_s").and_then(|v| v.parse().ok()) {
            log.push(v);
        }
        if let Some(v) = f.get("lag_us").and_then(|v| v.parse::<f64>().ok()) {
            lag.push(v / 1000.0);
        }
    }
    (log, lag)
}

/// Prints the backup's `ft: backup:` lines (its log connection, failure
/// detection, test-and-set, go-live, MAC announcement) as they appear on
/// its serial, until `done`.
fn follow_backup(serial: &Path, done: &AtomicBool, t0: Instant) {
    let mut shown = 0usize;
    loop {
        let last = done.load(Ordering::Relaxed);
        let text = std::fs::read(serial).unwrap_or_default();
        if let Some(end) = text.iter().rposition(|b| *b == b'\n') {
            if end + 1 > shown {
                for l in String::from_utf8_lossy(&text[shown..end]).lines() {
                    if let Some(msg) = l.trim_end_matches('\r').strip_prefix("ft: backup: ") {
                        println!("{} backup hv  {msg}", stamp(t0));
                    }
                }
                shown = end + 1;
            }
        }
        if last {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn main(root: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    println!(
        "ftvisor demo: a fault-tolerant pair (DESIGN.md §1) in two Bochs 3.0 machines with VMX"
    );
    println!("  storage  istgt at 10.0.4.1:3260, one LUN: the arbitration flag (generation 0) and the guest's disk");
    println!("  primary  ftvisor at 10.0.4.11, runs the guest, streams its log to the backup; frames and disk writes leave once the backup acknowledged them");
    println!("  backup   ftvisor at 10.0.4.12, replays the log live, one entry behind; its outputs are discarded");
    println!("  guest    the test guest's KV service at {GUEST_ADDR} (the same guest on both; SET = sector write + flush, then OK)");
    println!("  client   10.0.4.1: {SETS} SETs, each followed by a GET of an earlier key; the primary is SIGKILLed after {KILL_AFTER} acknowledged SETs");
    println!("  Hypervisor clocks run in Bochs emulated time (1 s = 50 M instructions); the client's in wall-clock time. Serial logs: build/e2e/{PRIMARY}/, build/e2e/{BACKUP}/");
    println!();
    let rig = Rig::new(root, "demo", 16 << 20)?;
    println!(
        "{} rig up: namespace {}, istgt listening; booting both hypervisors",
        stamp(t0),
        rig.ns.name
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ns = rig.ns.name.clone();
    let droot = root.to_path_buf();
    let seen2 = seen.clone();
    let orchestrate: Interaction = Box::new(move |serial: &Path| {
        wait_serial(serial, "kv: listening", Duration::from_secs(360))?;
        println!(
            "{} pair up (the backup joined, the primary started the guest); the guest listens at {GUEST_ADDR}; load starts",
            stamp(t0)
        );
        let logs = droot.join("build/e2e");
        let mut watch = bench::spawn_helper(
            &ns,
            &["ft-watch", "1000", STATUS_PORTS[0], STATUS_PORTS[1]],
            &logs.join("demo-watch.log"),
        )?;
        let out = watch.0.stdout.take();
        let seen3 = seen2.clone();
        let watcher = std::thread::spawn(move || {
            let Some(out) = out else { return };
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut w = line.splitn(3, ' ');
                let (Some(addr), Some(_ms), Some(rest)) = (w.next(), w.next(), w.next()) else {
                    continue;
                };
                let fields = bench::flat_json(rest);
                println!(
                    "{} {}",
                    stamp(t0),
                    status_text(addr, fields.as_ref(), rest.trim_start_matches("ERR "))
                );
                if let Ok(mut s) = seen3.lock() {
                    s.samples.push(Sample {
                        addr: addr.to_string(),
                        fields,
                    });
                }
            }
        });
        // The backup's own account of the failover, as it prints it.
        let done = Arc::new(AtomicBool::new(false));
        let tail = {
            let done = done.clone();
            let path = logs.join(BACKUP).join("serial.txt");
            std::thread::spawn(move || follow_backup(&path, &done, t0))
        };
        let mut load = bench::spawn_helper(
            &ns,
            &["kv-load", GUEST_ADDR, &SETS.to_string(), "demo"],
            &logs.join("demo-client.log"),
        )?;
        let kill_root = droot.clone();
        let mut acks = 0usize;
        let mut last_ack = Instant::now();
        let killed = Arc::new(AtomicBool::new(false));
        let killed2 = killed.clone();
        let mut failed_over = false;
        let tally = bench::follow_load(
            &mut load.0,
            KILL_AFTER,
            || {
                let r = bench::kill_node(&kill_root, PRIMARY);
                killed2.store(true, Ordering::Relaxed);
                match &r {
                    Ok(pid) => println!(
                        "{} *** SIGKILL the primary's Bochs (pid {pid}) after {KILL_AFTER} acknowledged SETs ***",
                        stamp(t0)
                    ),
                    Err(e) => println!("{} could not kill the primary: {e}", stamp(t0)),
                }
                r
            },
            |line| {
                let w: Vec<&str> = line.split_whitespace().collect();
                match w.first().copied() {
                    Some("ack") => {
                        acks += 1;
                        let gap = last_ack.elapsed();
                        last_ack = Instant::now();
                        if killed.load(Ordering::Relaxed) && !failed_over {
                            failed_over = true;
                            println!(
                                "{} client     SET #{acks} acknowledged by the new primary, {:.1} s after the previous reply: same TCP connection, no acknowledged write lost",
                                stamp(t0),
                                gap.as_secs_f64()
                            );
                        } else if acks.is_multiple_of(10) {
                            println!(
                                "{} client     {acks} SETs acknowledged, every GET so far correct",
                                stamp(t0)
                            );
                        }
                    }
                    Some("err") => println!(
                        "{} client     connection error, reconnecting: {}",
                        stamp(t0),
                        w.get(2..).map(|r| r.join(" ")).unwrap_or_default()
                    ),
                    Some("bad") => println!("{} client     WRONG: {line}", stamp(t0)),
                    Some("verify") => println!(
                        "{} client     read back every acknowledged SET: {} of {} correct",
                        stamp(t0),
                        w.get(2).unwrap_or(&"?"),
                        w.get(1).unwrap_or(&"?")
                    ),
                    _ => {}
                }
            },
        );
        let ok = load.0.wait().map(|s| s.success()).unwrap_or(false);
        // The last status samples of the new primary, then stop watching.
        std::thread::sleep(Duration::from_millis(2500));
        drop(watch);
        let _ = watcher.join();
        done.store(true, Ordering::Relaxed);
        let _ = tail.join();
        let bye = Netns::helper(&ns, &["bench-client", GUEST_ADDR, "shutdown"]);
        println!(
            "{} client     SHUTDOWN sent: the guest exits, the backup's hypervisor ends",
            stamp(t0)
        );
        let (kill_us, pid) = match &tally.kill {
            Some((us, Ok(pid))) => (us.to_string(), pid.to_string()),
            _ => ("none".into(), "none".into()),
        };
        let (acked, verified) = tally.verify.unwrap_or((0, 0));
        Ok(format!(
            "kill_us={kill_us} pid={pid} first_reply_us={} max_gap_us={} acked={acked} verified={verified} reconnects={} bad={} client_ok={ok} shutdown_ok={}",
            tally.failover_us().map_or("none".into(), |v| v.to_string()),
            tally.max_gap_us(),
            tally.errors.len(),
            tally.bad.len(),
            bye.is_ok()
        ))
    });
    let mut p = rig.spec(PRIMARY, 1, true, Duration::from_secs(900));
    p.interact = Some(orchestrate);
    let b = rig.spec(BACKUP, 2, true, Duration::from_secs(900));
    let runs = crate::emulator::boot_all(root, vec![(Emulator::Bochs, p), (Emulator::Bochs, b)]);
    let flag = rig.flag();
    drop(rig);
    let mut it = runs.into_iter();
    let (p, b) = match (it.next(), it.next()) {
        (Some(Ok(p)), Some(Ok(b))) => (p, b),
        (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(e),
        _ => return Err("two nodes expected".into()),
    };
    let note = match &p.interaction {
        Some(Ok(n)) => n.clone(),
        Some(Err(e)) => {
            return Err(format!(
                "the client side: {e} (see build/e2e/{PRIMARY}/serial.txt)"
            ))
        }
        None => return Err("the client did not run".into()),
    };
    let k = bench::kv_words(&note);
    let n = |key: &str| k.get(key).and_then(|v| v.parse::<u64>().ok());
    let line = |s: &str, key: &str| {
        s.lines()
            .find(|l| l.contains(key))
            .map(|l| l.trim().to_string())
    };
    let won = line(&b.serial, "ft: backup: WON the test-and-set");
    let live = line(&b.serial, "ft: backup: LIVE under generation");
    let silent = line(&b.serial, "ft: backup: peer silent");
    let samples = seen.lock().map(|s| s.samples.clone()).unwrap_or_default();
    let (log, lag) = paired_figures(&samples);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    let f1 = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
    let f0 = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
    let acked = n("acked").unwrap_or(0);
    let verified = n("verified").unwrap_or(0);
    let live_samples = samples
        .iter()
        .filter(|s| s.addr == STATUS_PORTS[1])
        .filter_map(|s| s.fields.as_ref())
        .filter(|f| f.get("state").map(String::as_str) == Some("live"))
        .count();

    // `Some(ok)`: a check (ok or FAIL); `None`: a figure shown, not judged.
    let mut checks: Vec<(Option<bool>, String)> = vec![];
    let bound = crate::tests_ftkv::FAILOVER_BOUND;
    checks.push((
        Some(acked == SETS as u64 && verified == acked && n("bad") == Some(0) && k.get("client_ok").map(String::as_str) == Some("true")),
        format!("writes    {acked} SETs acknowledged to the client; after the failover every one read back: {verified}/{acked} correct; wrong GETs during the load: {}", n("bad").unwrap_or(0)),
    ));
    let first_reply = n("first_reply_us").map(Duration::from_micros);
    checks.push((
        Some(
            first_reply.is_some_and(|d| d <= bound)
                && live.is_some()
                && n("reconnects") == Some(0),
        ),
        format!(
            "failover  primary SIGKILLed (pid {}) after {KILL_AFTER} acknowledged SETs; first reply from the new primary {} ms after the kill (wall clock; bound {} ms); client reconnects: {} (want 0: the same TCP connection)",
            k.get("pid").map_or("?", String::as_str),
            first_reply.map_or("-".into(), |d| d.as_millis().to_string()),
            bound.as_millis(),
            n("reconnects").map_or("-".into(), |r| r.to_string())
        ),
    ));
    for l in [&silent, &won, &live].into_iter().flatten() {
        checks.push((None, format!("          {l}")));
    }
    checks.push((
        Some(flag.as_ref().ok() == Some(&(1, 2))),
        format!(
            "flag      LUN block 0: {} (was generation 0; one step, owned by the backup)",
            flag.as_ref().map_or_else(
                |e| format!("unreadable: {e}"),
                |(g, o)| format!("generation {g} owner {o}")
            )
        ),
    ));
    checks.push((
        Some(b.exit_code == Some(0)),
        format!(
            "backup    ran the guest to its end alone: exit code {}; its status port said live {live_samples} time(s)",
            b.exit_code.map_or_else(|| format!("none ({})", b.ended), |c| c.to_string())
        ),
    ));
    checks.push((
        None,
        format!(
            "log       the primary's log while paired: mean {} Mbit/s, peak {} Mbit/s ({} status samples, emulated time)",
            f1(mean(&log)),
            f1(max(&log)),
            log.len()
        ),
    ));
    checks.push((
        None,
        format!(
            "lag       backup lag while paired (status port lag_us): mean {} ms, max {} ms (emulated time); DESIGN.md §5: typically < 100 ms, the primary throttled above 1 s",
            f0(mean(&lag)),
            f0(max(&lag))
        ),
    ));
    println!();
    println!("== summary ({:.0} s) ==", t0.elapsed().as_secs_f64());
    let mut all = true;
    for (ok, text) in &checks {
        all &= ok.unwrap_or(true);
        let mark = match ok {
            Some(true) => "  ok  ",
            Some(false) => "  FAIL",
            None => "      ",
        };
        println!("{mark} {text}");
    }
    if all {
        println!("PASS: no acknowledged write was lost across the failover");
        Ok(())
    } else {
        Err("see the summary above".into())
    }
}

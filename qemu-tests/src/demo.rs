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
//! connection carries on against the same guest. Then a third hypervisor
//! (Bochs, on the dead primary's address, with no guest image) asks the
//! new primary to take it as its backup: the guest's state goes over by
//! live transfer while the client keeps writing (issue 16, repair), the
//! pair is protected again, and after more load the new primary is
//! SIGKILLed too: the third node goes live. At the end every acknowledged
//! `SET` is read back, and a summary shows what was verified, both
//! failover times (kill to the first reply from the next primary), the
//! repair (bytes, guest pause), the log rate and the backup lag. Exit
//! status 0 only if everything held.
use crate::bench::{self, Rig, GUEST_ADDR, STATUS_PORTS};
use crate::emulator::{Emulator, Interaction};
use crate::tests_net::{wait_serial, Netns};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SETs the client stores in all (distinct keys; the guest's table holds
/// 4,096); the primary dies after [`KILL_AFTER`]; the repaired pair's
/// primary [`KILL2_AFTER`] replies after the repair.
const SETS: usize = 3500;
const KILL_AFTER: usize = 50;
const KILL2_AFTER: usize = 150;
const PRIMARY: &str = "demo-primary";
const BACKUP: &str = "demo-backup";
const JOINER: &str = "demo-joiner";

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

/// Prints a node's `ft:` lines of the kinds in `prefixes` (its log
/// connection, failure detection, test-and-set, go-live, MAC announcement,
/// repair) as they appear on its serial, tagged `who`, until `done`.
fn follow_node(serial: &Path, who: &str, prefixes: &[&str], done: &AtomicBool, t0: Instant) {
    let mut shown = 0usize;
    loop {
        let last = done.load(Ordering::Relaxed);
        let text = std::fs::read(serial).unwrap_or_default();
        if let Some(end) = text.iter().rposition(|b| *b == b'\n') {
            if end + 1 > shown {
                for l in String::from_utf8_lossy(&text[shown..end]).lines() {
                    let l = l.trim_end_matches('\r');
                    if let Some(msg) = prefixes.iter().find_map(|p| l.strip_prefix(p)) {
                        println!("{} {who}  {msg}", stamp(t0));
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

/// Whether a node's serial holds `line` yet.
fn said(serial: &Path, line: &str) -> bool {
    std::fs::read(serial)
        .map(|b| String::from_utf8_lossy(&b).contains(line))
        .unwrap_or(false)
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
    println!("  repair   then a third ftvisor at 10.0.4.11 with no guest image joins the new primary by live state transfer while the client writes; {KILL2_AFTER} replies after the pair is protected again, the new primary is SIGKILLed too");
    println!("  Hypervisor clocks run in Bochs emulated time (1 s = 50 M instructions); the client's in wall-clock time. Serial logs: build/e2e/{PRIMARY}/, build/e2e/{BACKUP}/, build/e2e/{JOINER}/");
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
    // The third node: a backup joining by state transfer (`ft_join=on`),
    // node id 3, on the dead primary's tap and address, no guest image.
    let mut j = rig.spec(JOINER, 1, true, Duration::from_secs(900));
    j.cmdline = j
        .cmdline
        .replace(
            "role=primary peer=10.0.4.12:7700",
            "role=backup peer=10.0.4.12:7700 ft_join=on",
        )
        .replace("iscsi_node=1", "iscsi_node=3");
    j.modules.clear();
    let joiner_spec = Arc::new(Mutex::new(Some(j)));
    let joiner_run: Arc<Mutex<Option<crate::emulator::Run>>> = Arc::new(Mutex::new(None));
    let (joiner_spec2, joiner_run2) = (joiner_spec.clone(), joiner_run.clone());
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
        // The backup's own account of the failover and the repair, as it
        // prints it; later the third node's.
        let done = Arc::new(AtomicBool::new(false));
        let tail = {
            let done = done.clone();
            let path = logs.join(BACKUP).join("serial.txt");
            std::thread::spawn(move || {
                follow_node(
                    &path,
                    "node 2 hv",
                    &["ft: backup: ", "ft: repair: "],
                    &done,
                    t0,
                )
            })
        };
        let tail3 = {
            let done = done.clone();
            let path = logs.join(JOINER).join("serial.txt");
            std::thread::spawn(move || {
                follow_node(
                    &path,
                    "node 3 hv",
                    &["ft: join: ", "ft: backup: ", "ft: repair: "],
                    &done,
                    t0,
                )
            })
        };
        let backup_serial = logs.join(BACKUP).join("serial.txt");
        let mut joiner_boot: Option<std::thread::JoinHandle<()>> = None;
        let mut protected_at: Option<usize> = None;
        let mut second_kill: Option<Instant> = None;
        let mut failover2: Option<Duration> = None;
        let mut repair_err: Option<String> = None;
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
                if let Some("ack") = w.first().copied() {
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
                        // Repair: the third hypervisor boots and asks.
                        if let Some(spec) = joiner_spec2.lock().ok().and_then(|mut g| g.take()) {
                            println!(
                                    "{} *** a third ftvisor boots at 10.0.4.11 with no guest image and asks node 2 to take it as its backup ***",
                                    stamp(t0)
                                );
                            let (root, out) = (kill_root.clone(), joiner_run2.clone());
                            joiner_boot = Some(std::thread::spawn(move || {
                                let mut r =
                                    crate::emulator::boot_all(&root, vec![(Emulator::Bochs, spec)]);
                                if let (Some(Ok(run)), Ok(mut g)) = (r.pop(), out.lock()) {
                                    *g = Some(run);
                                }
                            }));
                        }
                    } else if let (Some(k2), None) = (second_kill, failover2) {
                        failover2 = Some(k2.elapsed());
                        println!(
                                "{} client     SET #{acks} acknowledged by node 3, {:.1} s after the kill: same TCP connection again",
                                stamp(t0),
                                k2.elapsed().as_secs_f64()
                            );
                    } else if acks.is_multiple_of(10) {
                        println!(
                            "{} client     {acks} SETs acknowledged, every GET so far correct",
                            stamp(t0)
                        );
                    }
                }
                // The repair's progress, judged every 10 replies.
                if acks.is_multiple_of(10) && joiner_boot.is_some() {
                    if protected_at.is_none() && said(&backup_serial, "ft: repair: PROTECTED again")
                    {
                        protected_at = Some(acks);
                        println!(
                            "{} client     the pair is protected again at SET #{acks}; {KILL2_AFTER} more replies, then node 2 is killed too",
                            stamp(t0)
                        );
                    }
                    if second_kill.is_none()
                        && protected_at.is_some_and(|p| acks >= p + KILL2_AFTER)
                    {
                        match bench::kill_node(&kill_root, BACKUP) {
                            Ok(pid) => {
                                second_kill = Some(Instant::now());
                                println!(
                                    "{} *** SIGKILL node 2's Bochs (pid {pid}), the repaired pair's primary ***",
                                    stamp(t0)
                                );
                            }
                            Err(e) => {
                                repair_err.get_or_insert(format!("could not kill node 2: {e}"));
                            }
                        }
                    }
                }
                match w.first().copied() {
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
        if second_kill.is_none() {
            repair_err.get_or_insert(match protected_at {
                None => "the load ended before the repaired pair was protected".into(),
                Some(_) => "the load ended before node 2 was killed".into(),
            });
        }
        // The last status samples of the new primary, then stop watching.
        std::thread::sleep(Duration::from_millis(2500));
        drop(watch);
        let _ = watcher.join();
        let bye = Netns::helper(&ns, &["bench-client", GUEST_ADDR, "shutdown"]);
        println!(
            "{} client     SHUTDOWN sent: the guest exits, the live node's hypervisor ends",
            stamp(t0)
        );
        if let Some(h) = joiner_boot {
            let _ = h.join();
        }
        done.store(true, Ordering::Relaxed);
        let _ = tail.join();
        let _ = tail3.join();
        let (kill_us, pid) = match &tally.kill {
            Some((us, Ok(pid))) => (us.to_string(), pid.to_string()),
            _ => ("none".into(), "none".into()),
        };
        let (acked, verified) = tally.verify.unwrap_or((0, 0));
        Ok(format!(
            "kill_us={kill_us} pid={pid} first_reply_us={} failover2_us={} repair_err={} max_gap_us={} acked={acked} verified={verified} reconnects={} bad={} client_ok={ok} shutdown_ok={}",
            tally.failover_us().map_or("none".into(), |v| v.to_string()),
            failover2.map_or("none".into(), |d| d.as_micros().to_string()),
            repair_err.unwrap_or_else(|| "none".into()).replace(' ', "_"),
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
    let joined = joiner_run.lock().ok().and_then(|mut g| g.take());
    let j_serial = joined.as_ref().map_or("", |r| r.serial.as_str());
    let protected = line(&b.serial, "ft: repair: PROTECTED again");
    let committed = line(&b.serial, "ft: repair: committed");
    let live3 = line(j_serial, "ft: backup: LIVE under generation 3");
    let matched3 = live3
        .as_deref()
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("checkpoints_matched="))
        })
        .and_then(|w| w.trim_end_matches([')', ';']).parse::<u64>().ok())
        .unwrap_or(0);
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
        Some(protected.is_some() && committed.is_some() && k.get("repair_err").map(String::as_str) == Some("none")),
        format!(
            "repair    node 3 (no guest image) joined node 2 by live state transfer while the client wrote; node 2's status port said live {live_samples} time(s) before; {}",
            k.get("repair_err").filter(|e| *e != "none").map_or_else(
                || protected.clone().unwrap_or_else(|| "no `PROTECTED again` line".into()),
                |e| e.replace('_', " ")
            )
        ),
    ));
    if let Some(c) = &committed {
        checks.push((None, format!("          {c}")));
    }
    let failover2 = n("failover2_us").map(Duration::from_micros);
    checks.push((
        Some(failover2.is_some_and(|d| d <= bound) && live3.is_some() && matched3 > 0),
        format!(
            "failover  node 2 SIGKILLed {KILL2_AFTER} replies after the repair; first reply from node 3 {} ms after the kill (bound {} ms); node 3 had matched {matched3} of node 2's checkpoints before going live",
            failover2.map_or("-".into(), |d| d.as_millis().to_string()),
            bound.as_millis()
        ),
    ));
    if let Some(l) = &live3 {
        checks.push((None, format!("          {l}")));
    }
    checks.push((
        Some(flag.as_ref().ok() == Some(&(3, 3))),
        format!(
            "flag      LUN block 0: {} (was generation 0; one step per failover and one for the repair, owned by node 3)",
            flag.as_ref().map_or_else(
                |e| format!("unreadable: {e}"),
                |(g, o)| format!("generation {g} owner {o}")
            )
        ),
    ));
    let j_exit = joined.as_ref().and_then(|r| r.exit_code);
    checks.push((
        Some(j_exit == Some(0)),
        format!(
            "node 3    ran the guest to its end alone: exit code {}",
            j_exit.map_or_else(
                || joined
                    .as_ref()
                    .map_or("not run".into(), |r| format!("none ({})", r.ended)),
                |c| c.to_string()
            )
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
        println!("PASS: no acknowledged write was lost across two failovers and a repair");
        Ok(())
    } else {
        Err("see the summary above".into())
    }
}

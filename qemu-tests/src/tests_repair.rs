//! Repair (issue 16, "Done when"; DESIGN.md §1.9): after a failover a new
//! backup joins the running guest by state transfer, the pair is
//! protected again, and a second failover loses nothing.
//!
//! * `ft-repair`: the KV pair of `ft-kill-primary` (the rig of
//!   `crate::ftrig`, istgt's LUN at generation 0); the client (`ftkv-client
//!   overwrite`) overwrites 4 keys with increasing versions. After 20
//!   replies the primary's Bochs (node 1) is SIGKILLed; the backup (node
//!   2) wins (generation 0 -> 1) and goes live. After 10 more replies a
//!   third hypervisor boots on the dead node's tap and address with
//!   `role=backup ft_join=on iscsi_node=3` and **no guest image**: it asks
//!   node 2 for the guest, receives its RAM (pre-copy rounds while the
//!   guest runs and the client keeps writing), vCPU and devices, and
//!   becomes the backup of a new pair (node 2 takes generation 2 at the
//!   commit). After 10 replies more through the new pair and once node 2's
//!   status line shows `state=paired` with `acked` > 0 (the new backup's
//!   acks: its replay ran from the transfer's point), node 2 is SIGKILLed;
//!   node 3 wins (2 -> 3), goes live having matched at least one
//!   checkpoint of node 2's log, and serves 10 more replies. Then the
//!   client stops, reads every key back through node 3 (its last
//!   acknowledged version) and shuts the guest down. Judged also on the
//!   LUN file: the flag is generation 3 owner 3 (one step per failover
//!   and per repair), and every key holds a version the client sent, no
//!   older than its last acknowledged one.
//! * `ft-repair-primary-survives`: the same with the roles swapped: the
//!   backup (node 2) is killed first, the primary (node 1) wins (0 -> 1
//!   owner 1) and runs on alone; the third node joins on node 2's tap and
//!   address as node 1's backup (1 -> 2); node 1 is killed; node 3 goes
//!   live (2 -> 3).
//! * `ft-repair-joiner-killed`: the same, but a first joiner is SIGKILLed
//!   as soon as node 2 took its request (the transfer of ~400 KiB takes
//!   seconds over Bochs's NIC): node 2 must print that the transfer failed
//!   before its commit, keep answering (10 replies alone), take exactly
//!   two join requests and commit exactly one; the killed joiner applied
//!   nothing; the flag still advances only once per failover and per
//!   repair (0 -> 3).
use crate::emulator::{Outcome, Run};
use crate::tests::E2eTest;
use crate::tests_ftkv::{
    check_versions, lun_table, parse_last, signal_bochs, word, GUEST, GUEST_ADDR, GUEST_CMDLINE,
    LUN_BYTES, ZOMBIE_KEYS,
};
use ft::arbitration::{FlagRecord, NodeId};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WIRING: crate::ftrig::Wiring = crate::ftrig::Wiring {
    bridge: "brrp",
    taps: ["taprp1", "taprp2"],
    mac_tag: 7,
};

const CMDLINE: &str = "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=41 \
     guest_net=bridge disk=iscsi iscsi=10.0.4.1:3260 \
     iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0 heartbeat=10 ft_status=1000";

/// Replies between the events.
const BEFORE_KILL: usize = 20;
const BETWEEN: usize = 10;
/// Each wait for a node's line.
const STEP_MAX: Duration = Duration::from_secs(400);

pub fn tests() -> Vec<E2eTest> {
    let t = |name, custom, about| E2eTest {
        cmdline: CMDLINE,
        modules: vec![(GUEST, GUEST_CMDLINE)],
        timeout: Duration::from_secs(1500),
        custom: Some(custom),
        ..E2eTest::new(name, crate::emulator::Emulator::Bochs, about)
    };
    vec![
        t(
            "ft-repair",
            run_repair,
            "KV pair; the primary killed, the backup goes live; a third hypervisor with no guest image joins by live state transfer while the client writes; the new pair acknowledges; its primary killed, the third node goes live; every key's last acknowledged version reads back (service and LUN); the flag advanced once per event (0 -> 3)",
        ),
        t(
            "ft-repair-primary-survives",
            run_repair_primary,
            "as ft-repair, but the backup is killed first: the primary runs on alone, a third hypervisor with no guest image joins it by state transfer and becomes its backup; then the primary is killed and the third node goes live; every key's last acknowledged version reads back; flag 0 -> 3",
        ),
        t(
            "ft-repair-joiner-killed",
            run_repair_cut,
            "as ft-repair, but the first joining hypervisor is killed during its state transfer: the serving node ends the attempt, keeps serving alone (the flag untouched), and a second joiner then repairs the pair; the rest as ft-repair",
        ),
    ]
}

/// What the runner saw.
#[derive(Default)]
struct Seen {
    acks: Vec<Instant>,
    notes: Vec<String>,
    client_last: String,
}

fn serial(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// What a run does: which node is killed first (0: the primary, 1: the
/// backup; the other serves alone and is repaired), and whether a first
/// joiner is killed during its transfer.
#[derive(Clone, Copy)]
struct Plan {
    lost: usize,
    cut: bool,
}

impl Plan {
    /// The node that serves alone, then leads the repaired pair.
    fn survivor(self) -> usize {
        1 - self.lost
    }
}

fn run_repair(t: &E2eTest, root: &Path) -> Outcome {
    scenario(
        t,
        root,
        Plan {
            lost: 0,
            cut: false,
        },
    )
}

fn run_repair_cut(t: &E2eTest, root: &Path) -> Outcome {
    scenario(t, root, Plan { lost: 0, cut: true })
}

fn run_repair_primary(t: &E2eTest, root: &Path) -> Outcome {
    scenario(
        t,
        root,
        Plan {
            lost: 1,
            cut: false,
        },
    )
}

/// Node names in the serial files' order: the pair, the joiner that
/// completes, the joiner killed during its transfer (`cut`).
const NODES: [&str; 4] = [
    "node 1 (primary)",
    "node 2 (backup)",
    "node 3 (joiner)",
    "node 3 (first joiner, killed during its transfer)",
];

fn scenario(t: &E2eTest, root: &Path, plan: Plan) -> Outcome {
    let mut ns = match crate::ftrig::netns("ftrp", &WIRING) {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let target = match crate::ftrig::with_storage(root, t.name, &mut ns, LUN_BYTES) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let names = ["primary", "backup", "joiner", "joiner-cut"].map(|r| format!("{}-{r}", t.name));
    let dirs = names.clone().map(|n| root.join("build/e2e").join(n));
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let serials = dirs.clone().map(|d| d.join("serial.txt"));
    let bochsrc = dirs
        .clone()
        .map(|d| d.join("bochsrc").display().to_string());
    let spec = |node: usize, name: &str, extra: &str| {
        crate::ftrig::node_spec(t, root, &ns, node, name, &WIRING, extra)
    };
    let pair = vec![
        (t.emulator, spec(0, &names[0], "iscsi_node=1")),
        (t.emulator, spec(1, &names[1], "iscsi_node=2")),
    ];
    // A joining node: on the dead node's tap and address, a backup of the
    // survivor that joins by state transfer, with no guest image at all.
    let (lost, surv) = (plan.lost, plan.survivor());
    let joiner = |name: &str| {
        let mut j = spec(lost, name, "iscsi_node=3");
        let theirs = format!(
            "role={} peer=10.0.4.1{}:7700",
            crate::ftrig::ROLES[lost],
            surv + 1
        );
        j.cmdline = j.cmdline.replace(
            &theirs,
            &format!("role=backup peer=10.0.4.1{}:7700 ft_join=on", surv + 1),
        );
        j.modules.clear();
        j
    };
    let mut joiners = [None, None, Some(joiner(&names[2])), Some(joiner(&names[3]))];
    let salt = u64::from(std::process::id());
    let mut seen = Seen::default();
    let (runs, joined, conducted) = std::thread::scope(|s| {
        let boots = s.spawn(|| crate::emulator::boot_all(root, pair));
        let mut joiner_boots = Vec::new();
        let conducted = conduct(
            &ns.name,
            &serials,
            &bochsrc,
            (salt, plan),
            &mut seen,
            &mut |k: usize| {
                if let Some(spec) = joiners[k].take() {
                    joiner_boots.push((
                        k,
                        s.spawn(move || crate::emulator::boot_all(root, vec![(t.emulator, spec)])),
                    ));
                }
            },
        );
        if conducted.is_err() {
            for rc in &bochsrc {
                let _ = signal_bochs(rc, "KILL");
            }
        }
        let mut runs: Vec<Option<Result<Run, String>>> = boots
            .join()
            .unwrap_or_default()
            .into_iter()
            .map(Some)
            .collect();
        runs.resize_with(4, || None);
        let mut joined = Vec::new();
        for (k, h) in joiner_boots {
            joined.push((k, h.join().ok().and_then(|mut v| v.pop())));
        }
        (runs, joined, conducted)
    });
    let mut runs = runs;
    for (k, r) in joined {
        runs[k] = r;
    }
    let flag = target
        .read_block(0)
        .and_then(|b| FlagRecord::from_block(&b).map_err(|e| format!("flag block: {e:?}")));
    let table = lun_table(&target.lun_file());
    drop(target);
    drop(ns);
    let texts = serials.clone().map(|p| serial(&p));
    let judged = conducted.and_then(|note| {
        judge(&seen, &texts, flag, table, salt, plan).map(|j| format!("{note}; {j}"))
    });
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => {
            let mut s = why;
            if !seen.notes.is_empty() {
                s.push_str(&format!("\nhost side: {}", seen.notes.join("; ")));
            }
            s.push_str(&format!("\nclient: {}", seen.client_last));
            for (k, text) in texts.iter().enumerate() {
                let how = match &runs[k] {
                    Some(Ok(run)) => run.ended.to_string(),
                    Some(Err(e)) => e.clone(),
                    None => "not started".into(),
                };
                if runs[k].is_none() && text.is_empty() {
                    continue;
                }
                s.push_str(&format!(
                    "\n---- {}: {how}; last serial lines (build/e2e/{}/serial.txt) ----\n{}",
                    NODES[k],
                    names[k],
                    crate::tests::tail(text, 25)
                ));
            }
            Outcome::Fail(s)
        }
    }
}

/// Waits until `serial` holds `line` (the client's replies keep being
/// collected meanwhile); the time it was seen.
fn wait_line(
    path: &Path,
    line: &str,
    what: &str,
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Seen,
) -> Result<Instant, String> {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        drain(rx, seen, Duration::from_millis(200))?;
        if serial(path).contains(line) {
            return Ok(Instant::now());
        }
        if serial(path).contains("FTVISOR-EXIT") {
            return Err(format!("{what}: the node exited before `{line}`"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: no `{line}` within {} s",
                STEP_MAX.as_secs()
            ));
        }
    }
}

/// Collects client lines for up to `wait`.
fn drain(
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Seen,
    wait: Duration,
) -> Result<(), String> {
    match rx.recv_timeout(wait) {
        Ok((at, l)) => {
            if l.starts_with("ack ") {
                seen.acks.push(at);
            } else {
                seen.client_last = l;
            }
            while let Ok((at, l)) = rx.try_recv() {
                if l.starts_with("ack ") {
                    seen.acks.push(at);
                } else {
                    seen.client_last = l;
                }
            }
            Ok(())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("the client ended early: {}", seen.client_last))
        }
    }
}

/// Waits for `n` more replies than `from`.
fn wait_acks(
    n: usize,
    what: &str,
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Seen,
) -> Result<(), String> {
    let want = seen.acks.len() + n;
    let deadline = Instant::now() + STEP_MAX;
    while seen.acks.len() < want {
        drain(rx, seen, Duration::from_millis(200))?;
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: {} of {n} replies within {} s",
                n - (want - seen.acks.len()),
                STEP_MAX.as_secs()
            ));
        }
    }
    Ok(())
}

fn conduct(
    ns: &str,
    serials: &[std::path::PathBuf; 4],
    bochsrc: &[String; 4],
    (salt, plan): (u64, Plan),
    seen: &mut Seen,
    start_joiner: &mut dyn FnMut(usize),
) -> Result<String, String> {
    // The pair up: the primary prints the guest's lines once acknowledged.
    let deadline = Instant::now() + STEP_MAX;
    while !serial(&serials[0]).contains("guest: kv: listening") {
        if Instant::now() > deadline || serial(&serials[0]).contains("FTVISOR-EXIT") {
            return Err("no `guest: kv: listening` on the primary".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "ftkv-client",
            GUEST_ADDR,
            "overwrite",
            "1000000",
            &salt.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the client: {e}"))?;
    let mut client_in = child.stdin.take().ok_or("no client stdin")?;
    let (rx, _reader, err_reader) = crate::tests_ftkv::client_lines(&mut child)?;
    let result = (|| {
        let (lost, surv) = (plan.lost, plan.survivor());
        let (lost_name, surv_name) = (format!("node {}", lost + 1), format!("node {}", surv + 1));
        // A backup that won goes live; a primary that won runs on alone.
        let alone = if surv == 1 {
            "ft: backup: LIVE under generation 1"
        } else {
            "ft: primary: ALONE under generation 1"
        };
        wait_acks(BEFORE_KILL, "before the first kill", &rx, seen)?;
        let kill1 = Instant::now();
        signal_bochs(&bochsrc[lost], "KILL").map_err(|e| format!("{lost_name}'s Bochs: {e}"))?;
        let live1 = wait_line(&serials[surv], alone, &surv_name, &rx, seen)?;
        wait_acks(BETWEEN, "the survivor alone", &rx, seen)?;
        seen.notes.push(format!(
            "{lost_name} killed; {surv_name} serving alone after {:.1} s",
            (live1 - kill1).as_secs_f64()
        ));
        // Bochs has let go of the tap: the third node takes it.
        std::thread::sleep(Duration::from_secs(1));
        if plan.cut {
            // A first joiner, killed while its transfer runs (a 400 KiB
            // transfer takes seconds over Bochs's NIC; the runner looks
            // every 200 ms): node 2 must stay alone, serving, and take
            // the next joiner.
            start_joiner(3);
            let asked = wait_line(
                &serials[surv],
                "ft: repair: node 3 joins",
                &surv_name,
                &rx,
                seen,
            )?;
            signal_bochs(&bochsrc[3], "KILL")
                .map_err(|e| format!("the first joiner's Bochs: {e}"))?;
            let killed = Instant::now();
            if serial(&serials[surv]).contains("ft: repair: committed") {
                return Err("the first joiner's transfer committed before the kill (the runner was too slow to cut it)".into());
            }
            let ended = wait_line(
                &serials[surv],
                "ft: repair: the transfer failed before its commit",
                &surv_name,
                &rx,
                seen,
            )?;
            wait_acks(
                BETWEEN,
                "the survivor alone after the cut transfer",
                &rx,
                seen,
            )?;
            seen.notes.push(format!(
                "first joiner killed {:.1} s after its request; the survivor ended the attempt {:.1} s later and served on",
                (killed - asked).as_secs_f64(),
                (ended - killed).as_secs_f64()
            ));
            std::thread::sleep(Duration::from_secs(1));
        }
        let started = Instant::now();
        start_joiner(2);
        let committed = wait_line(
            &serials[surv],
            "ft: repair: committed",
            &surv_name,
            &rx,
            seen,
        )?;
        wait_line(
            &serials[2],
            "ft: join: applied the transfer",
            "node 3",
            &rx,
            seen,
        )?;
        let acks_at_commit = seen.acks.len();
        wait_acks(BETWEEN, "the repaired pair", &rx, seen)?;
        // The new backup acknowledges node 2's log (its replay runs).
        let deadline = Instant::now() + STEP_MAX;
        loop {
            let s = serial(&serials[surv]);
            let acked = s
                .lines()
                .rev()
                .find(|l| l.starts_with("ft: status: role=primary state=paired generation=2"))
                .and_then(|l| word(l, "acked="))
                .and_then(|a| a.parse::<u64>().ok());
            if acked.is_some_and(|a| a > 0) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{surv_name}'s status never showed `state=paired generation=2` with acked > 0"
                ));
            }
            drain(&rx, seen, Duration::from_millis(500))?;
        }
        seen.notes.push(format!(
            "node 3 started {:.1} s after the survivor went alone; committed {:.1} s after its start; {} replies during the transfer",
            (started - live1).as_secs_f64(),
            (committed - started).as_secs_f64(),
            acks_at_commit.saturating_sub(BEFORE_KILL + BETWEEN)
        ));
        let kill2 = Instant::now();
        signal_bochs(&bochsrc[surv], "KILL").map_err(|e| format!("{surv_name}'s Bochs: {e}"))?;
        let live2 = wait_line(
            &serials[2],
            "ft: backup: LIVE under generation 3",
            "node 3",
            &rx,
            seen,
        )?;
        wait_acks(BETWEEN, "node 3 alone", &rx, seen)?;
        seen.notes.push(format!(
            "{surv_name} killed; node 3 live after {:.1} s",
            (live2 - kill2).as_secs_f64()
        ));
        writeln!(client_in, "stop").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + STEP_MAX;
        while !seen.client_last.starts_with("stopped ") {
            drain(&rx, seen, Duration::from_millis(200))?;
            if Instant::now() > deadline {
                return Err("the client did not stop".into());
            }
        }
        writeln!(client_in, "finish").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + STEP_MAX;
        while drain(&rx, seen, Duration::from_millis(200)).is_ok() {
            if Instant::now() > deadline {
                return Err("the client did not finish its read-back".into());
            }
        }
        Ok(format!(
            "replies {} (failover 1: {:.1} s, failover 2: {:.1} s)",
            seen.acks.len(),
            (live1 - kill1).as_secs_f64(),
            (live2 - kill2).as_secs_f64()
        ))
    })();
    drop(client_in);
    let status = child.wait();
    let stderr = err_reader.join().unwrap_or_default();
    if result.is_ok() && !status.as_ref().is_ok_and(|s| s.success()) {
        return Err(format!(
            "client failed ({status:?}): {} {}",
            seen.client_last,
            stderr.trim()
        ));
    }
    result
}

fn judge(
    seen: &Seen,
    texts: &[String; 4],
    flag: Result<FlagRecord, String>,
    table: Result<std::collections::BTreeMap<String, String>, String>,
    salt: u64,
    plan: Plan,
) -> Result<String, String> {
    let client = &seen.client_last;
    if !client.starts_with("done ") {
        return Err(format!("client: `{client}` (want `done ...`)"));
    }
    // Every key read back through node 3 (the client checked each GET).
    let last = parse_last(client)?;
    let sent: u64 = word(client, "sent=")
        .and_then(|n| n.parse().ok())
        .ok_or("no `sent=` in the client's summary")?;
    if last.iter().any(Option::is_none) || last.len() != ZOMBIE_KEYS {
        return Err(format!("not every key was acknowledged: {client}"));
    }
    let table = table?;
    let on_lun = check_versions(&table, &last, sent, salt)?;
    let flag = flag?;
    if flag != FlagRecord::new(3, NodeId(3)) {
        return Err(format!(
            "the flag on the LUN is generation {} owner {}, want 3 owner 3 (one step per failover and per repair)",
            flag.generation, flag.owner.0
        ));
    }
    let [_, _, n3, first] = texts;
    let surv = plan.survivor();
    let n2 = &texts[surv];
    let sid = surv + 1;
    if plan.cut {
        // The cut transfer: applied nothing, no guest ran there.
        if first.contains("ft: join: applied") {
            return Err("the killed joiner applied a transfer".into());
        }
        if n2.matches("ft: repair: node 3 joins").count() != 2 {
            return Err(format!("node {sid} did not take exactly two join requests"));
        }
        if n2.matches("ft: repair: committed").count() != 1 {
            return Err(format!("node {sid} did not commit exactly one transfer"));
        }
    }
    let won1 = format!("WON the test-and-set: flag generation 0 -> 1 owner {sid}");
    let won2 = format!("WON the test-and-set: flag generation 1 -> 2 owner {sid}");
    for (text, line, who) in [
        (n2, won1.as_str(), "the survivor"),
        (n2, won2.as_str(), "the survivor (the repair)"),
        (
            n3,
            "WON the test-and-set: flag generation 2 -> 3 owner 3",
            "node 3",
        ),
        (n3, "ft: join: transfer complete", "node 3"),
    ] {
        if !text.contains(line) {
            return Err(format!("{who} never printed `{line}`"));
        }
    }
    let commit = n2
        .lines()
        .find(|l| l.starts_with("ft: repair: committed"))
        .unwrap_or_default()
        .to_string();
    let matched = n3
        .lines()
        .find(|l| l.contains("ft: backup: LIVE under generation 3"))
        .and_then(|l| word(l, "checkpoints_matched="))
        .and_then(|w| w.trim_end_matches([')', ';']).parse::<u64>().ok())
        .ok_or("node 3's LIVE line has no checkpoints_matched=")?;
    if matched == 0 {
        return Err(
            "node 3 went live without having matched any checkpoint of the survivor's log".into(),
        );
    }
    Ok(format!(
        "keys on the LUN at versions {on_lun:?} (last acknowledged {last:?}); flag 3 owner 3; node 3 matched {matched} checkpoints before going live; {}; {commit}",
        seen.notes.join("; ")
    ))
}

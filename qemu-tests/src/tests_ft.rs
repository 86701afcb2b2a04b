//! The FT pair's e2e tests (issue 9, first step: the logging channel live;
//! DESIGN.md §1.1-§1.6). Names are contracts (`make e2e T=<name>`).
//!
//! Two Bochs 3.0 instances (VMX, the `preempt` counter), each with an
//! e1000 on its own tap; both taps sit on a bridge inside a network
//! namespace the runner makes and removes ([`Netns`]). The primary
//! (10.0.4.11) connects to the backup's log port (10.0.4.12:7700); both
//! boot the same test guest with the same command line.
//!
//! * `ft-pair-lockstep`: `test=replay` runs to completion on the primary;
//!   the backup replays the live log entry by entry (it lags one entry)
//!   and must end IDENTICAL (every entry met, same final state hash);
//!   every guest console line of the primary appears only after the
//!   backup acknowledged its marker; the backup's lines are discarded.
//! * `ft-pair-refuses-mismatch`: the backup boots the guest with another
//!   command line: it refuses the primary's hello, naming the guest id.
//! * `ft-hostile-log`: the lockstep run again (both under `ft_generation=3`),
//!   the backup with `ft_probe=10.0.4.1` (the bridge's address); once the
//!   session runs, `qemu-tests hostile-log` connects from 10.0.4.1 to the
//!   backup's log port six times: garbage, a record cut short by a close,
//!   a hello with a bad CRC32C, a hello of generation 2, an entry before
//!   any hello, a valid hello (a second primary). Each must be reset with
//!   its own logged reason, in that order; the pair must still end
//!   IDENTICAL with every check of `ft-pair-lockstep`.
//! * `ft-kill-primary-console`: the pair with istgt serving a shared LUN
//!   in the namespace (flag generation 0 at LBA 0); once the primary
//!   released its 4th console line, its Bochs is SIGKILLed. The backup
//!   must notice the silence, win the test-and-set (generation 0 -> 1 on
//!   the LUN, exactly one step), replay what it received, go live, and
//!   run the guest to its end: its console shows the remaining lines, so
//!   that the primary's released lines and the backup's live lines
//!   together are the guest's whole output, in order.
//! * `ft-log-reconnect`: the lockstep run with a shared LUN (flag at
//!   generation 0) while the backup resets the log connection three times
//!   (`ft_test_reset=`, after every 300 entries received): each time the
//!   primary reconnects from a new port and resends what the backup had
//!   not received; no side arbitrates, the flag stays at generation 0, and
//!   the pair ends IDENTICAL with every check of `ft-pair-lockstep`, all
//!   under the default failure timeout.
//! * `ft-stale-generation`: the LUN's flag is at generation 1 (a failover
//!   happened) and both nodes are started with `ft_generation=0`: each
//!   reads the flag at join and refuses to start (exit code 2) with a
//!   message naming both generations; no guest output, the flag unchanged.
//! * `ft-console-failover` (issue 15): the guest prints 10 bursts of 250
//!   console lines; the backup's acks leave 300 ms late
//!   (`ft_test_ack_delay=`); the primary is SIGKILLed once it released
//!   its 400th line. The backup goes live; the primary's released lines
//!   and the backup's live lines hold every burst line at least once (the
//!   backup re-emits what the primary may not have printed, `ft::seam`),
//!   each side's in order.
use crate::emulator::Interaction;
use crate::emulator::{BootSpec, Emulator, Outcome, Run};
use crate::tests::E2eTest;
use crate::tests_net::{wait_serial, Netns};
use ft::arbitration::{FlagRecord as Flag, NodeId};
use std::path::Path;
use std::time::Duration;

const GUEST: &str = "build/testguest.elf64";
/// The workload: the record/replay guest with a progress line per 25
/// rounds (more outputs for the output rule).
const WORKLOAD: &str = "test=replay rounds=250 progress=25";
/// `ft-console-failover`'s workload: a burst of `BURST` lines after each
/// of the 10 progress lines.
const BURST_WORKLOAD: &str = "test=replay rounds=250 progress=25 burst=250";
const BURSTS: u64 = 10;
const BURST: u64 = 250;
/// `ft-console-failover`: the primary is killed once it released this
/// many console lines (inside the second burst).
const BURST_KILL_AFTER: u64 = 400;
/// `ft-console-failover`: the backup holds its acks this long
/// (`ft_test_ack_delay=`).
const BURST_ACK_DELAY_MS: u64 = 300;
/// `ft-hostile-log`'s workload: twice as long, so the attack ends well
/// before the pair does.
const HOSTILE_WORKLOAD: &str = "test=replay rounds=500 progress=50";

pub fn tests() -> Vec<E2eTest> {
    vec![
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 heartbeat=10 ft_status=200",
            modules: vec![(GUEST, WORKLOAD)],
            timeout: Duration::from_secs(300),
            custom: Some(run_lockstep),
            ..E2eTest::new(
                "ft-pair-lockstep",
                Emulator::Bochs,
                "FT pair in two Bochs on a bridge: the primary streams its log live over TCP, the backup replays it one entry behind to an identical final state; console lines released only after the backup's ack, the backup's discarded; lag and log Mbit/s",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9",
            modules: vec![(GUEST, "test=replay rounds=10")],
            timeout: Duration::from_secs(240),
            custom: Some(run_mismatch),
            ..E2eTest::new(
                "ft-pair-refuses-mismatch",
                Emulator::Bochs,
                "FT pair whose backup boots the guest with another command line: the backup refuses the primary's hello (guest id mismatch) and says so; the primary stops",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 heartbeat=10 ft_status=200 ft_generation=3",
            modules: vec![(GUEST, HOSTILE_WORKLOAD)],
            timeout: Duration::from_secs(300),
            custom: Some(run_hostile),
            ..E2eTest::new(
                "ft-hostile-log",
                Emulator::Bochs,
                "FT pair in lockstep while a host in the namespace (the backup's ft_probe) connects to the backup's log port with garbage, a truncated record, a bad CRC, an old-generation hello, a hello from another machine (twice the memory), an entry before the hello and a second primary's hello: each reset with its reason; the pair still ends identical",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 heartbeat=10 ft_status=500 iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
            modules: vec![(GUEST, WORKLOAD)],
            timeout: Duration::from_secs(300),
            custom: Some(run_reconnect),
            ..E2eTest::new(
                "ft-log-reconnect",
                Emulator::Bochs,
                "FT pair with a shared LUN whose backup resets the log connection 3 times (ft_test_reset): the primary reconnects and resends each time; no arbitration, the flag unchanged, the pair ends identical (default failure timeout)",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 ft_generation=0 iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
            modules: vec![(GUEST, "test=replay rounds=10")],
            timeout: Duration::from_secs(180),
            custom: Some(run_stale_generation),
            ..E2eTest::new(
                "ft-stale-generation",
                Emulator::Bochs,
                "FT pair started with ft_generation=0 while the LUN's flag is at generation 1: both refuse to join with a message naming both generations (exit code 2); no guest output; the flag unchanged",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 heartbeat=10 ft_status=500 iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
            modules: vec![(GUEST, WORKLOAD)],
            timeout: Duration::from_secs(120),
            custom: Some(run_kill_primary),
            ..E2eTest::new(
                "ft-kill-primary-console",
                Emulator::Bochs,
                "FT pair with a shared iSCSI LUN; the primary's Bochs is SIGKILLed after its 4th console line: the backup wins the test-and-set (LUN generation +1), replays what it has, goes live and runs the guest to the end, printing the remaining console lines",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 heartbeat=10 ft_status=500 iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
            modules: vec![(GUEST, BURST_WORKLOAD)],
            timeout: Duration::from_secs(300),
            custom: Some(run_console_failover),
            ..E2eTest::new(
                "ft-console-failover",
                Emulator::Bochs,
                "FT pair with a shared LUN, the backup's acks held 300 ms (ft_test_ack_delay=); the guest prints 10 bursts of 250 console lines; the primary's Bochs is SIGKILLed after it released its 400th line (inside a burst): the backup goes live, and the primary's released lines plus the backup's live lines hold every line of every burst at least once, each side's in order (duplicates counted)",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 net_timeout=5 iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
            modules: vec![(GUEST, "test=replay rounds=10")],
            timeout: Duration::from_secs(180),
            custom: Some(run_primary_alone),
            ..E2eTest::new(
                "ft-primary-alone",
                Emulator::Bochs,
                "a primary whose backup never boots: after net_timeout it arbitrates on the shared LUN, wins (flag generation 0 -> 1 owner 1, read back from the LUN), starts the guest alone and runs it to its end (exit 0, its console output released at once)",
            )
        },
    ]
}

/// `ft-primary-alone`: only the primary boots, with the shared LUN.
fn run_primary_alone(t: &E2eTest, root: &Path) -> Outcome {
    let mut ns = match rig("ftalone") {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let initial = Flag::new(0, NodeId(0));
    let target = match crate::ftrig::with_storage_flag(root, t.name, &mut ns, 4 << 20, initial) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let spec = node_spec(t, root, &ns, 1, "");
    let run = crate::emulator::boot_all(root, vec![(t.emulator, spec)]).pop();
    let flag = target
        .read_block(0)
        .and_then(|b| Flag::from_block(&b).map_err(|e| format!("{e:?}")));
    drop(target);
    drop(ns);
    let p = match run {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Outcome::Fail(e),
        None => return Outcome::Fail("no run".into()),
    };
    let judged = (|| {
        let gave_up = line_with(&p.serial, "ft: primary: no backup joined")?;
        let alone = line_with(
            &p.serial,
            "ft: primary: ALONE under generation 1: starting the guest without a backup",
        )?;
        let won = line_with(&p.serial, "WON the test-and-set")?;
        let last = line_with(&p.serial, "guest: replay: rounds=10 ")?;
        line_with(&p.serial, "ft: pair: primary done: alone")?;
        // Nothing of the guest before the flag was won.
        let first_guest = p.serial.find("guest: ").unwrap_or(usize::MAX);
        if p.serial.find(won).is_none_or(|w| w > first_guest) {
            return Err("guest output before the test-and-set was won".into());
        }
        if p.exit_code != Some(0) {
            return Err(format!("exit code {:?}, want 0", p.exit_code));
        }
        let flag = flag?;
        if (flag.generation, flag.owner) != (1, NodeId(1)) {
            return Err(format!(
                "the LUN's flag is generation {} owner {}, want 1 owner 1",
                flag.generation, flag.owner.0
            ));
        }
        Ok(format!(
            "(`{}`; `{}`; `{}`; last guest line `{}`; flag on the LUN generation 0 -> 1 owner 1; wall {:.1} s)",
            gave_up.trim(),
            won.trim(),
            alone.trim(),
            last.trim(),
            p.wall.as_secs_f64()
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => {
            let lines: Vec<&str> = p.serial.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            Outcome::Fail(format!(
                "{why}\n---- primary ({}): last serial lines ----\n{tail}",
                p.ended
            ))
        }
    }
}

const WIRING: crate::ftrig::Wiring = crate::ftrig::Wiring {
    bridge: "brft",
    taps: ["tapft1", "tapft2"],
    mac_tag: 2,
};

/// The pair's rig: a namespace with a bridge and one tap per node.
fn rig(tag: &str) -> Result<Netns, Outcome> {
    crate::ftrig::netns(tag, &WIRING)
}

/// Boot spec of one node (`node` 1 = primary, 2 = backup).
fn node_spec(t: &E2eTest, root: &Path, ns: &Netns, node: u8, extra_cmdline: &str) -> BootSpec {
    let i = usize::from(node - 1);
    let name = format!("{}-{}", t.name, crate::ftrig::ROLES[i]);
    crate::ftrig::node_spec(t, root, ns, i, &name, &WIRING, extra_cmdline)
}

/// Boots both nodes at once; `guests` are their guest command lines.
fn boot_pair(
    t: &E2eTest,
    root: &Path,
    ns: &Netns,
    guests: [&str; 2],
) -> Result<(Run, Run), String> {
    let results = crate::emulator::boot_all(
        root,
        [1u8, 2]
            .into_iter()
            .map(|node| {
                let mut spec = node_spec(t, root, ns, node, "");
                spec.modules = vec![(root.join(GUEST), guests[node as usize - 1].to_string())];
                (t.emulator, spec)
            })
            .collect(),
    );
    crate::ftrig::pair_runs(results)
}

fn fail(what: String, p: &Run, b: &Run, name: &str) -> Outcome {
    let names = crate::ftrig::ROLES.map(|role| format!("{name}-{role}"));
    Outcome::Fail(crate::ftrig::with_tails(
        what,
        [p, b],
        [&names[0], &names[1]],
    ))
}

fn line_with<'a>(serial: &'a str, key: &str) -> Result<&'a str, String> {
    serial
        .lines()
        .find(|l| l.contains(key))
        .ok_or_else(|| format!("no `{key}` line"))
}

/// `key=<number>` in a line.
fn num(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches([';', ',']).parse().ok())
}

/// `key=<text>` in a line.
fn word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// The final state hash of the primary's record and of the backup's replay.
fn state_hashes(p: &str, b: &str) -> Result<(String, String), String> {
    let rec = line_with(p, "ft: record: final point")?;
    let rep = line_with(b, "ft: replay: IDENTICAL")?;
    let h = |l: &str| {
        l.split("state hash ")
            .nth(1)
            .and_then(|t| t.split([';', ' ', ',']).next())
            .map(str::to_string)
            .unwrap_or_default()
    };
    Ok((h(rec), h(rep)))
}

/// The output rule on the primary's console: every guest line is
/// immediately followed by its release note, whose ack covers its marker.
fn check_outputs(p: &str) -> Result<(u64, u64), String> {
    let lines: Vec<&str> = p.lines().collect();
    let (mut n, mut max_hold) = (0u64, 0u64);
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with("guest: ") {
            continue;
        }
        n += 1;
        let next = lines.get(i + 1).copied().unwrap_or("");
        if !next.starts_with(&format!("ft: output #{n} released:")) {
            return Err(format!(
                "guest line {n} `{l}` not followed by its release note (`{next}`)"
            ));
        }
        let (marker, acked) = (num(next, "seq "), num(next, "acked "));
        let marker = word(next, "seq").and(marker).or_else(|| {
            next.split("marker seq ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        });
        let acked = acked.or_else(|| next.split("acked ").nth(1)?.split(' ').next()?.parse().ok());
        let (Some(m), Some(a)) = (marker, acked) else {
            return Err(format!("unparsable release note `{next}`"));
        };
        if a < m {
            return Err(format!(
                "guest line {n} released at ack {a} before its marker seq {m}"
            ));
        }
        let held: u64 = next
            .split("held ")
            .nth(1)
            .and_then(|t| t.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        max_hold = max_hold.max(held);
    }
    Ok((n, max_hold))
}

/// `probes`: the backup's refusals of `ft_probe` connections are expected.
fn judge_lockstep(p: &Run, b: &Run, probes: bool) -> Result<String, String> {
    for (role, run) in [("primary", p), ("backup", b)] {
        if run.timed_out {
            return Err(format!("{role}: {}", run.ended));
        }
        if run.exit_code != Some(0) {
            return Err(format!("{role}: exit code {:?}, want 0", run.exit_code));
        }
        for bad in ["PANIC", "EXCEPTION", "DIVERGED", "REFUSED", "refused:"] {
            if run
                .serial
                .lines()
                .any(|l| l.contains(bad) && !(probes && l.starts_with(PROBE_REFUSAL)))
            {
                return Err(format!("{role}: `{bad}` on serial"));
            }
        }
    }
    let (hp, hb) = state_hashes(&p.serial, &b.serial)?;
    if hp.is_empty() || hp != hb {
        return Err(format!(
            "final state hashes differ: primary {hp}, backup {hb}"
        ));
    }
    let pd = line_with(&p.serial, "ft: pair: primary done:")?;
    let bd = line_with(&b.serial, "ft: pair: backup done:")?;
    let entries = num(pd, "entries=").ok_or("no entries=")?;
    let applied = num(bd, "applied=").ok_or("no applied=")?;
    if entries < 1000 || applied != entries || num(bd, "pending=") != Some(0) {
        return Err(format!(
            "the primary logged {entries} entries (want >= 1000), the backup applied {applied} (want all)"
        ));
    }
    if num(pd, "acked=") != Some(entries) {
        return Err(format!(
            "the primary's log was not fully acknowledged: {pd}"
        ));
    }
    let (lines, max_hold) = check_outputs(&p.serial)?;
    let held = num(pd, "held=").unwrap_or(0);
    let released = num(pd, "released=").unwrap_or(0);
    let discarded = num(bd, "discarded=").unwrap_or(0);
    if lines < 10 || held != lines || released != lines || num(pd, "violations=") != Some(0) {
        return Err(format!(
            "outputs: {lines} guest lines on the primary, held {held}, released {released}, violations {:?}",
            num(pd, "violations=")
        ));
    }
    if discarded != lines || b.serial.lines().any(|l| l.starts_with("guest: ")) {
        return Err(format!(
            "the backup discarded {discarded} lines (want {lines}) or printed guest output"
        ));
    }
    // Each of the backup's own lines matched the primary's marker for it
    // (the content digest, issue 15).
    let checked = num(bd, "outputs_checked=").unwrap_or(0);
    if checked != lines {
        return Err(format!(
            "the backup checked {checked} of its {lines} lines against the primary's markers"
        ));
    }
    for role in ["primary", "backup"] {
        let serial = if role == "primary" {
            &p.serial
        } else {
            &b.serial
        };
        if !serial.contains(&format!("ft: status: role={role}")) {
            return Err(format!("no status line from the {role}"));
        }
    }
    let f = |k: &str| word(pd, k).unwrap_or("?").to_string();
    Ok(format!(
        "({entries} entries streamed and replayed live, final state {hp} on both; {lines} console lines held until acked, max hold {max_hold} us, {discarded} discarded by the backup; backup lag mean {} us max {} us ({} samples); log {} Mbit/s of hypervisor time, {} Mbit/s per guest second; {} log bytes; primary run {} us, guest {} us)",
        f("lag_mean_us="),
        f("lag_max_us="),
        f("lag_samples="),
        f("log_mbit_s="),
        f("log_mbit_per_guest_s="),
        f("log_bytes="),
        f("run_us="),
        f("guest_us="),
    ))
}

fn run_lockstep(t: &E2eTest, root: &Path) -> Outcome {
    let ns = match rig("ftpair") {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let (p, b) = match boot_pair(t, root, &ns, [WORKLOAD, WORKLOAD]) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    drop(ns);
    match judge_lockstep(&p, &b, false) {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

/// The pair with istgt serving the shared LUN whose flag starts as
/// `flag`; `spec` adjusts each node's boot (`node` 1 = primary). Returns
/// both runs and the flag block as the LUN held it at the end.
fn boot_with_storage(
    t: &E2eTest,
    root: &Path,
    tag: &str,
    flag: Flag,
    spec: impl Fn(u8, &mut BootSpec),
) -> Result<(Run, Run, Result<Flag, String>), Outcome> {
    let mut ns = rig(tag)?;
    let target = crate::ftrig::with_storage_flag(root, t.name, &mut ns, 4 << 20, flag)?;
    let results = crate::emulator::boot_all(
        root,
        [1u8, 2]
            .into_iter()
            .map(|node| {
                let mut s = node_spec(t, root, &ns, node, "");
                spec(node, &mut s);
                (t.emulator, s)
            })
            .collect(),
    );
    let flag = target
        .read_block(0)
        .and_then(|b| Flag::from_block(&b).map_err(|e| format!("{e:?}")));
    drop(target);
    drop(ns);
    let (p, b) = crate::ftrig::pair_runs(results).map_err(Outcome::Fail)?;
    Ok((p, b, flag))
}

/// Resets the backup makes in `ft-log-reconnect` (`ft_test_reset=`).
const RESETS: usize = 3;

fn run_reconnect(t: &E2eTest, root: &Path) -> Outcome {
    let initial = Flag::new(0, NodeId(0));
    let (p, b, flag) = match boot_with_storage(t, root, "ftrec", initial, |node, spec| {
        if node == 2 {
            spec.cmdline.push_str(" ft_test_reset=300");
        }
    }) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let judged = (|| {
        let resets = b
            .serial
            .lines()
            .filter(|l| l.starts_with("ft: backup: test: resetting the log connection"))
            .count();
        let reconnects = p
            .serial
            .lines()
            .filter(|l| l.starts_with("ft: primary: log connection re-established"))
            .count();
        if resets != RESETS || reconnects < RESETS {
            return Err(format!(
                "the backup reset the log connection {resets} times (want {RESETS}), the primary reconnected {reconnects} times (want >= {RESETS})"
            ));
        }
        for (role, run) in [("primary", &p), ("backup", &b)] {
            for bad in ["arbitrating", "test-and-set", "ALONE", "LIVE under"] {
                if let Some(l) = run.serial.lines().find(|l| l.contains(bad)) {
                    return Err(format!("{role} failed over on a reset: `{l}`"));
                }
            }
        }
        let flag = flag?;
        if flag != initial {
            return Err(format!(
                "the flag changed: {flag:?}, want generation 0 owner 0"
            ));
        }
        let note = judge_lockstep(&p, &b, false)?;
        let last = p
            .serial
            .lines()
            .rfind(|l| l.starts_with("ft: primary: log connection re-established"))
            .unwrap_or("");
        Ok(format!(
            "({resets} resets by the backup, {reconnects} reconnects by the primary, last `{}`; no arbitration, flag generation 0; {}",
            last.trim_start_matches("ft: primary: "),
            note.trim_start_matches('(')
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

fn run_stale_generation(t: &E2eTest, root: &Path) -> Outcome {
    let on_lun = Flag::new(1, NodeId(2));
    let (p, b, flag) = match boot_with_storage(t, root, "ftstale", on_lun, |_, _| {}) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let judged = (|| {
        let mut notes = Vec::new();
        for (role, run) in [("primary", &p), ("backup", &b)] {
            let want = format!(
                "ft: {role}: REFUSED to join: generation 0 is not the shared LUN's: its flag is generation 1 owned by node 2"
            );
            let line = line_with(&run.serial, &want)?;
            if run.exit_code != Some(2) {
                return Err(format!("{role}: exit code {:?}, want 2", run.exit_code));
            }
            if let Some(l) = run.serial.lines().find(|l| {
                l.starts_with("guest: ")
                    || l.contains("log connection")
                    || l.contains("test-and-set")
            }) {
                return Err(format!("{role} went on after refusing: `{l}`"));
            }
            notes.push(line.trim().to_string());
        }
        let flag = flag?;
        if flag != on_lun {
            return Err(format!("the flag changed: {flag:?}, want {on_lun:?}"));
        }
        Ok(format!("({}; flag unchanged)", notes.join("; ")))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

fn run_mismatch(t: &E2eTest, root: &Path) -> Outcome {
    let ns = match rig("ftmis") {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let (p, b) = match boot_pair(
        t,
        root,
        &ns,
        ["test=replay rounds=10", "test=replay rounds=11"],
    ) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    drop(ns);
    let judged = (|| {
        let refusal = line_with(&b.serial, "ft: backup: REFUSED the log connection:")?;
        if !refusal.contains("session hello mismatch: guest id") {
            return Err(format!("refusal does not name the guest id: {refusal}"));
        }
        if p.exit_code == Some(0) || !p.serial.contains("ft: primary:") {
            return Err(format!(
                "the primary ran on without a backup (exit code {:?})",
                p.exit_code
            ));
        }
        if p.serial
            .lines()
            .any(|l| l.starts_with("guest: replay: rounds="))
        {
            return Err("the primary's guest output reached the console unacknowledged".into());
        }
        Ok(format!("({})", refusal.trim()))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

/// How the backup logs a refused `ft_probe` connection.
const PROBE_REFUSAL: &str = "ft: backup: REFUSED a probe connection from ";

/// `ft-hostile-log`'s cases (as `qemu-tests hostile-log` sends them) and
/// the reason the backup must log for each.
const HOSTILE: [(&str, &str); 7] = [
    ("garbage", "bad record magic 0x47"),
    (
        "truncated",
        "truncated record: the connection closed with 20 bytes of an incomplete record",
    ),
    ("bad-crc", "CRC32C mismatch"),
    ("old-generation", "session hello mismatch: generation"),
    (
        "other-machine",
        "session hello mismatch: machine guest memory bytes: the primary's is",
    ),
    ("entry-before-hello", "unexpected entry kind 0x06"),
    (
        "second-primary",
        "valid session hello, but a session with the primary at 10.0.4.11 is already running",
    ),
];

fn run_hostile(t: &E2eTest, root: &Path) -> Outcome {
    let ns = match rig("fthost") {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let ns_name = ns.name.clone();
    let timeout = t.timeout;
    let results = crate::emulator::boot_all(
        root,
        [1u8, 2]
            .into_iter()
            .map(|node| {
                let extra = if node == 2 { "ft_probe=10.0.4.1" } else { "" };
                let mut spec = node_spec(t, root, &ns, node, extra);
                spec.modules = vec![(root.join(GUEST), HOSTILE_WORKLOAD.to_string())];
                if node == 2 {
                    let ns_name = ns_name.clone();
                    let attack: Interaction = Box::new(move |serial: &Path| {
                        let text = wait_serial(
                            serial,
                            "ft: backup: log connection from the primary",
                            timeout,
                        )?;
                        let id = text
                            .lines()
                            .find(|l| l.starts_with("ft: backup of cluster"))
                            .and_then(|l| l.split("guest id ").nth(1))
                            .and_then(|r| r.split_whitespace().next())
                            .ok_or("no guest id on the backup's serial")?
                            .to_string();
                        let machine = text
                            .lines()
                            .find(|l| l.starts_with("ft: backup: machine "))
                            .and_then(|l| l.split_whitespace().nth(3))
                            .ok_or("no machine on the backup's serial")?
                            .to_string();
                        Netns::helper(
                            &ns_name,
                            &["hostile-log", "10.0.4.12:7700", "9", &id, "3", &machine],
                        )
                    });
                    spec.interact = Some(attack);
                }
                (t.emulator, spec)
            })
            .collect(),
    );
    drop(ns);
    let (p, b) = match crate::ftrig::pair_runs(results) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let judged = (|| {
        let attack = match &b.interaction {
            Some(Ok(note)) => note.clone(),
            Some(Err(e)) => return Err(format!("the hostile host: {e}")),
            None => return Err("the hostile host did not run".into()),
        };
        let refusals: Vec<&str> = b
            .serial
            .lines()
            .filter(|l| l.starts_with(PROBE_REFUSAL))
            .collect();
        if refusals.len() != HOSTILE.len() {
            return Err(format!(
                "{} probe refusals on the backup, want {}: {refusals:?}",
                refusals.len(),
                HOSTILE.len()
            ));
        }
        for ((case, reason), line) in HOSTILE.iter().zip(&refusals) {
            if !line.starts_with(&format!("{PROBE_REFUSAL}10.0.4.1:")) || !line.contains(reason) {
                return Err(format!(
                    "case {case}: want a refusal of 10.0.4.1 naming `{reason}`, got `{line}`"
                ));
            }
        }
        // While the pair ran: before the primary ended the session.
        let pos = |needle: &str| b.serial.find(needle);
        let last = refusals.last().and_then(|l| pos(l));
        let ended = pos("ft: backup: the primary ended the session");
        if !matches!((last, ended), (Some(l), Some(e)) if l < e) {
            return Err("the probes were not refused while the session ran".into());
        }
        let bd = line_with(&b.serial, "ft: pair: backup done:")?;
        if num(bd, "probes_refused=") != Some(HOSTILE.len() as u64)
            || num(bd, "refused_connections=") != Some(0)
        {
            return Err(format!("backup counters: {bd}"));
        }
        let pair = judge_lockstep(&p, &b, true)?;
        let reasons: Vec<String> = refusals
            .iter()
            .map(|l| {
                let after = l.strip_prefix(PROBE_REFUSAL).unwrap_or(l);
                after.split_once(": ").map_or(after, |x| x.1).to_string()
            })
            .collect();
        Ok(format!(
            "(attacker: {attack}; backup reasons: {}; pair unaffected: {pair})",
            reasons.join(" | ")
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

/// SIGKILLs the Bochs this test started for `name` (found by its own
/// configuration file, `build/e2e/<name>/bochsrc`).
pub fn kill_bochs_of(name: &str) -> Result<u32, String> {
    let needle = format!("build/e2e/{name}/bochsrc");
    for e in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("bochs") && cmd.contains(&needle) && !cmd.starts_with("ip ") {
            return crate::bench::signal(pid, "KILL").map(|()| pid);
        }
    }
    Err(format!("no Bochs running with {needle}"))
}

/// `ft-console-failover`: the kill inside a burst of console lines; no
/// line may be lost at the seam (`ft::seam`), duplicates are counted.
fn run_console_failover(t: &E2eTest, root: &Path) -> Outcome {
    // Acks reach the primary late: when it dies, a window of lines the
    // backup acknowledged was never printed, and only the backup's seam
    // can bring them out.
    let delay = format!(" ft_test_ack_delay={BURST_ACK_DELAY_MS}");
    let (p, b, flag) = match kill_primary_after_line(t, root, "ftburst", BURST_KILL_AFTER, &delay) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let judged = (|| {
        let kill = killed_primary_survived(&p, &b)?;
        let live = line_with(&b.serial, "ft: backup: LIVE under generation 1")?;
        if flag? != Flag::new(1, NodeId(2)) {
            return Err("the flag on the LUN is not generation 1 owner 2".into());
        }
        let live_at = b.serial.find("ft: backup: LIVE").unwrap_or(0);
        // (burst, line) of each burst line, per side, in console order.
        let bursts = |lines: Vec<String>| -> Vec<(u64, u64)> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("replay: burst "))
                .filter_map(|r| {
                    let (n, j) = r.split_once(" line ")?;
                    Some((n.parse().ok()?, j.parse().ok()?))
                })
                .collect()
        };
        // The kill can cut the primary's last line short (`line 16` of
        // `line 165`): only whole lines count.
        let whole = p.serial.rfind('\n').map_or("", |i| &p.serial[..=i]);
        let before = bursts(guest_lines(whole));
        let after = bursts(guest_lines(&b.serial[live_at..]));
        for (side, v) in [("primary", &before), ("backup", &after)] {
            if let Some(w) = v.windows(2).find(|w| w[0] >= w[1]) {
                return Err(format!(
                    "the {side}'s burst lines are out of order: {:?} then {:?}",
                    w[0], w[1]
                ));
            }
        }
        let mut seen = std::collections::BTreeMap::<(u64, u64), u32>::new();
        for k in before.iter().chain(after.iter()) {
            *seen.entry(*k).or_default() += 1;
        }
        let missing: Vec<(u64, u64)> = (1..=BURSTS)
            .flat_map(|n| (1..=BURST).map(move |j| (n, j)))
            .filter(|k| !seen.contains_key(k))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} burst line(s) never reached the console, first {:?} (the primary printed {}, the backup {} after going live)",
                missing.len(),
                &missing[..missing.len().min(5)],
                before.len(),
                after.len()
            ));
        }
        let twice = seen.values().filter(|&&n| n > 1).count();
        let reemitted = b
            .serial
            .lines()
            .filter(|l| l.starts_with("ft: backup: output #") && l.contains("re-emitted"))
            .count();
        Ok(format!(
            "({kill}; backup {}; {} burst lines, every one seen: {} from the primary, {} from the backup live, {twice} printed twice at the seam, {reemitted} re-emitted by the backup)",
            live.trim_start_matches("ft: backup: ").split(';').next().unwrap_or(""),
            BURSTS * BURST,
            before.len(),
            after.len()
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

/// Guest console lines of a serial log (`guest: ` stripped).
fn guest_lines(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("guest: "))
        .map(str::to_string)
        .collect()
}

/// Boots the pair on a fresh LUN (flag at generation 0) and SIGKILLs the
/// primary's Bochs once it released console line `line`; `backup_extra`
/// goes on the backup's command line.
fn kill_primary_after_line(
    t: &E2eTest,
    root: &Path,
    tag: &str,
    line: u64,
    backup_extra: &str,
) -> Result<(Run, Run, Result<Flag, String>), Outcome> {
    let primary_name = format!("{}-primary", t.name);
    let timeout = t.timeout;
    boot_with_storage(t, root, tag, Flag::new(0, NodeId(0)), |node, spec| {
        if node == 2 {
            spec.cmdline.push_str(backup_extra);
        }
        if node == 1 {
            let name = primary_name.clone();
            let kill: Interaction = Box::new(move |serial: &Path| {
                wait_serial(serial, &format!("ft: output #{line} released"), timeout)?;
                let pid = kill_bochs_of(&name)?;
                Ok(format!(
                    "SIGKILLed the primary's Bochs (pid {pid}) after its console line {line} was released"
                ))
            });
            spec.interact = Some(kill);
        }
    })
}

/// The kill happened, before the primary ended, and the backup ran the
/// guest to its end (exit 0): the kill's note.
fn killed_primary_survived(p: &Run, b: &Run) -> Result<String, String> {
    let kill = match &p.interaction {
        Some(Ok(note)) => note.clone(),
        Some(Err(e)) => return Err(format!("killing the primary: {e}")),
        None => return Err("the kill did not run".into()),
    };
    if p.exit_code.is_some() || p.serial.contains("ft: pair: primary done:") {
        return Err("the primary finished before it was killed".into());
    }
    if b.timed_out || b.exit_code != Some(0) {
        return Err(format!(
            "backup: exit code {:?} ({}), want 0",
            b.exit_code, b.ended
        ));
    }
    Ok(kill)
}

fn run_kill_primary(t: &E2eTest, root: &Path) -> Outcome {
    let (p, b, flag) = match kill_primary_after_line(t, root, "ftkill", 4, "") {
        Ok(x) => x,
        Err(o) => return o,
    };
    let judged = (|| {
        let kill = killed_primary_survived(&p, &b)?;
        for bad in ["PANIC", "EXCEPTION", "DIVERGED", "LOST the test-and-set"] {
            if b.serial.contains(bad) {
                return Err(format!("backup: `{bad}` on serial"));
            }
        }
        let won = line_with(&b.serial, "ft: backup: WON the test-and-set")?;
        if !won.contains("flag generation 0 -> 1 owner 2") {
            return Err(format!("unexpected win: {won}"));
        }
        let live = line_with(&b.serial, "ft: backup: LIVE under generation 1")?;
        let flag = flag?;
        if flag != Flag::new(1, NodeId(2)) {
            return Err(format!(
                "flag on the LUN is {flag:?}, want generation 1 (exactly one step) owner 2"
            ));
        }
        // The console: the primary's released lines, then the backup's
        // live lines, make the guest's whole output.
        let before = guest_lines(&p.serial);
        let live_at = b.serial.find("ft: backup: LIVE").unwrap_or(0);
        let after = guest_lines(&b.serial[live_at..]);
        if !guest_lines(&b.serial[..live_at]).is_empty() {
            return Err("the backup printed guest lines before going live".into());
        }
        let last = after.last().cloned().unwrap_or_default();
        if before.len() < 4 || after.is_empty() || !last.starts_with("replay: hash=") {
            return Err(format!(
                "console: {} lines released by the primary, {} printed live by the backup (last `{last}`)",
                before.len(),
                after.len()
            ));
        }
        let all: Vec<&String> = before.iter().chain(after.iter()).collect();
        let want: Vec<u64> = (1..=10).map(|i| i * 25).collect();
        // At least once, in order: the backup re-emits the lines the
        // primary may not have released; a repeat may only be such a
        // re-emitted line at the seam, and no progress line may be lost.
        let reemitted = b
            .serial
            .lines()
            .filter(|l| l.starts_with("ft: backup: output #") && l.contains("re-emitted"))
            .count();
        // The primary's rounds are a prefix of `want`, the backup's a
        // suffix; they may overlap by the re-emitted lines, never leave a
        // hole.
        let round_of = |lines: &[String]| -> Vec<u64> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("replay: round "))
                .filter_map(|r| r.split(' ').next()?.parse().ok())
                .collect()
        };
        let (pr, br) = (round_of(&before), round_of(&after));
        let k = pr.len();
        let j = want.len() - br.len();
        let repeats = k.saturating_sub(j);
        if pr[..] != want[..k.min(want.len())]
            || br[..] != want[j..]
            || j > k
            || repeats > reemitted
        {
            return Err(format!(
                "progress lines: primary {pr:?}, backup live {br:?}, want {want:?} split between them (overlap only by the {reemitted} re-emitted lines)"
            ));
        }
        let lost = format!(
            "none lost, {reemitted} re-emitted by the backup, {repeats} printed twice at the seam"
        );
        Ok(format!(
            "({kill}; backup: {}; {}; flag on the LUN generation 0 -> 1 owner 2; console: {} lines from the primary + {} from the backup live = {}; {lost}: {:?})",
            won.trim_start_matches("ft: backup: "),
            live.trim_start_matches("ft: backup: "),
            before.len(),
            after.len(),
            all.len(),
            all
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => fail(why, &p, &b, t.name),
    }
}

//! `ft-join-under-load` (issue 14): an FT node joins only after its guest
//! is built, reads the session generation from the shared LUN, and arms
//! its failure detectors when the Hello is acknowledged; a long guest
//! setup (the Linux guest: 192 MiB, the stock kernel and initramfs) must
//! not look like a dead peer under the default failure timeout
//! (`ft_timeout` unset = 2000 ms), even with the host's CPUs busy.
//!
//! Ten pairings, one after the other, each on a fresh rig (namespace,
//! bridge, istgt serving a LUN whose flag is at generation 0), while one
//! spinning `sh` per host CPU runs for the whole test: five of the Linux
//! guest (booting to power-off: /init has nothing to serve;
//! `guest_net=bridge`) and five of the test guest (`test=replay
//! rounds=100`), alternating; both with `disk=none` (the LUN holds only
//! the flag: the join reads it; no guest disk on it, no fencing traffic). For each: both sides show the join (the
//! primary's `log connection to ... established`, the backup's `log
//! connection from the primary`), neither shows a failover line (`peer
//! silent`, `arbitrating`, `WON`, `LOST`, `ALONE`, `LIVE under`), both exit
//! 0, the backup ends `verdict=IDENTICAL`, and the flag is still at
//! generation 0 owner 0. The note gives, per pairing, the seconds from
//! each Bochs's start to its join and the pairing's total.
//!
//! It takes well over 5 minutes: `long`, left out of the default run
//! (`make e2e T=ft-join-under-load` runs it).
use crate::emulator::{Emulator, Interaction, Outcome, Run};
use crate::ftrig::{self, ROLES};
use crate::tests::E2eTest;
use crate::tests_linux::{images, LINUX_CMDLINE};
use crate::tests_net::wait_serial;
use ft::arbitration::{FlagRecord as Flag, NodeId};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WIRING: ftrig::Wiring = ftrig::Wiring {
    bridge: "brjn",
    taps: ["tapjn1", "tapjn2"],
    mac_tag: 4,
};
/// Pairings of each guest.
const PAIRINGS: usize = 5;
/// The test guest's workload: short, runs to its end.
const KV_WORKLOAD: &str = "test=replay rounds=100";
/// The Linux guest's hypervisor options (added to the test's command line).
const LINUX_OPTIONS: &str = "guest=linux guest_mem=192M watchdog=120 guest_net=bridge";
/// What each side prints once paired.
const JOINED: [&str; 2] = [
    "ft: primary: log connection to 10.0.4.12:7700 established",
    "ft: backup: log connection from the primary",
];
/// Lines of a (false) failover, on either side (guest output excluded).
const FAILOVER: [&str; 6] = [
    "peer silent",
    "arbitrating",
    "WON",
    "LOST",
    "ALONE",
    "LIVE under",
];

pub fn tests() -> Vec<E2eTest> {
    vec![E2eTest {
        cmdline: "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=11 heartbeat=10 ft_status=5000 disk=none iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
        timeout: Duration::from_secs(2400),
        long: true,
        custom: Some(run),
        ..E2eTest::new(
            "ft-join-under-load",
            Emulator::Bochs,
            "FT pair joined 5 times with the Linux guest (192 MiB, long setup) and 5 times with the test guest, default failure timeout, a CPU hog on every host CPU: every one pairs, no false failover, the backup ends identical",
        )
    }]
}

/// One spinning `sh` per host CPU, killed on drop.
struct Hog(Vec<Child>);

impl Hog {
    fn start() -> Result<Hog, String> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut hog = Hog(Vec::new());
        for _ in 0..n {
            let c = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("CPU hog: {e}"))?;
            hog.0.push(c);
        }
        Ok(hog)
    }

    /// Every hog still spinning.
    fn alive(&mut self) -> bool {
        self.0.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Guest {
    Linux,
    Kv,
}

impl Guest {
    fn tag(self) -> &'static str {
        match self {
            Guest::Linux => "linux",
            Guest::Kv => "kv",
        }
    }
}

/// The order of the pairings: Linux and the test guest alternating.
fn schedule() -> Vec<(Guest, usize)> {
    (1..=PAIRINGS)
        .flat_map(|i| [(Guest::Linux, i), (Guest::Kv, i)])
        .collect()
}

fn run(t: &E2eTest, root: &Path) -> Outcome {
    let linux = match images(root) {
        Ok(p) => p,
        Err(why) => return Outcome::Skip(why),
    };
    let mut hog = match Hog::start() {
        Ok(h) => h,
        Err(e) => return Outcome::Fail(e),
    };
    let start = Instant::now();
    let (mut notes, mut failures) = (Vec::new(), Vec::new());
    for (guest, i) in schedule() {
        let label = format!("{}{i}", guest.tag());
        let r = pairing(t, root, guest, &label, &linux);
        if !hog.alive() {
            return Outcome::Fail("a CPU hog died during the test".into());
        }
        let line = match r {
            Ok(note) => format!("{label}: {note}"),
            Err(Outcome::Skip(why)) => return Outcome::Skip(why),
            Err(Outcome::Fail(why)) => {
                let first = why.lines().next().unwrap_or_default().to_string();
                failures.push(format!("{label}: {why}"));
                format!("{label}: FAILED: {first}")
            }
            Err(Outcome::Pass(note)) => format!("{label}: {note}"),
        };
        eprintln!(
            "ft-join-under-load: {line} ({:.0} s so far)",
            start.elapsed().as_secs_f64()
        );
        notes.push(line);
    }
    drop(hog);
    let total = format!(
        "{} pairings in {:.0} s under a CPU hog on every host CPU: {}",
        notes.len(),
        start.elapsed().as_secs_f64(),
        notes.join("; ")
    );
    if failures.is_empty() {
        Outcome::Pass(total)
    } else {
        Outcome::Fail(format!(
            "{} of {} pairings failed ({total})\n{}",
            failures.len(),
            notes.len(),
            failures.join("\n")
        ))
    }
}

/// One pairing on a fresh rig; `Ok(note)` with its timings.
fn pairing(
    t: &E2eTest,
    root: &Path,
    guest: Guest,
    label: &str,
    (kernel, initrd): &(PathBuf, PathBuf),
) -> Result<String, Outcome> {
    let name = format!("{}-{label}", t.name);
    let mut ns = ftrig::netns(&format!("join{label}"), &WIRING)?;
    let target = ftrig::with_storage(root, &name, &mut ns, 4 << 20)?;
    let names = ROLES.map(|r| format!("{name}-{r}"));
    for n in &names {
        let _ = std::fs::remove_dir_all(root.join("build/e2e").join(n));
    }
    let specs = (0..2)
        .map(|node| {
            let mut extra = format!("iscsi_node={}", node + 1);
            if guest == Guest::Linux {
                extra = format!("{LINUX_OPTIONS} {extra}");
            }
            let mut spec = ftrig::node_spec(t, root, &ns, node, &names[node], &WIRING, &extra);
            spec.modules = match guest {
                Guest::Linux => vec![
                    (kernel.clone(), LINUX_CMDLINE.to_string()),
                    (initrd.clone(), String::new()),
                ],
                Guest::Kv => vec![(root.join("build/testguest.elf64"), KV_WORKLOAD.to_string())],
            };
            // Seconds from this Bochs's start to its join line.
            let timeout = t.timeout;
            let i: Interaction = Box::new(move |serial: &Path| {
                let t0 = Instant::now();
                wait_serial(serial, JOINED[node], timeout)
                    .map(|_| format!("{:.1}", t0.elapsed().as_secs_f64()))
            });
            spec.interact = Some(i);
            (t.emulator, spec)
        })
        .collect();
    let started = Instant::now();
    let runs = crate::emulator::boot_all(root, specs);
    let took = started.elapsed().as_secs_f64();
    let flag = target
        .read_block(0)
        .and_then(|b| Flag::from_block(&b).map_err(|e| format!("flag block: {e:?}")));
    drop(target);
    drop(ns);
    let (p, b) = ftrig::pair_runs(runs).map_err(Outcome::Fail)?;
    let [jp, jb] = [&p, &b].map(|r| match &r.interaction {
        Some(Ok(s)) => format!("{s} s"),
        _ => "never".to_string(),
    });
    let timing = format!("paired {jp} (primary) / {jb} (backup) after boot, {took:.1} s in all");
    judge(&p, &b, flag).map(|()| timing.clone()).map_err(|why| {
        let first = why.lines().next().unwrap_or_default().to_string();
        Outcome::Fail(format!(
            "{timing}: {first}\n{}",
            ftrig::with_tails(why, [&p, &b], [&names[0], &names[1]])
        ))
    })
}

/// The checks of one pairing.
fn judge(p: &Run, b: &Run, flag: Result<Flag, String>) -> Result<(), String> {
    for (node, run) in [p, b].into_iter().enumerate() {
        let role = ROLES[node];
        if let Some(l) = ft_lines(&run.serial).find(|l| FAILOVER.iter().any(|f| l.contains(f))) {
            return Err(format!("{role}: false failover: `{l}`"));
        }
        if !run.serial.contains(JOINED[node]) {
            return Err(format!("{role}: never joined (no `{}`)", JOINED[node]));
        }
        match &run.interaction {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{role}: {e}")),
            None => return Err(format!("{role}: no join timing")),
        }
        if run.timed_out {
            return Err(format!("{role}: {}", run.ended));
        }
        if run.exit_code != Some(0) {
            // The replay's verdict says why, if it is what failed.
            let why = run
                .serial
                .lines()
                .find(|l| l.starts_with("ft: replay: DIVERGED"))
                .unwrap_or_default();
            return Err(format!(
                "{role}: exit code {:?}, want 0 {why}",
                run.exit_code
            ));
        }
        for bad in ["PANIC", "EXCEPTION", "DIVERGED", "REFUSED", "Kernel panic"] {
            if run.serial.contains(bad) {
                return Err(format!("{role}: `{bad}` on serial"));
            }
        }
    }
    let done = b
        .serial
        .lines()
        .find(|l| l.starts_with("ft: pair: backup done:"))
        .ok_or("the backup never reported `ft: pair: backup done:`")?;
    if !done.contains("verdict=IDENTICAL") {
        return Err(format!("the backup did not end identical: `{done}`"));
    }
    if !p.serial.contains("ft: pair: primary done:") {
        return Err("the primary never reported `ft: pair: primary done:`".into());
    }
    let flag = flag.map_err(|e| format!("reading the flag: {e}"))?;
    if flag != Flag::new(0, NodeId(0)) {
        return Err(format!(
            "the flag changed: {flag:?}, want generation 0 owner 0"
        ));
    }
    Ok(())
}

/// The hypervisor's lines (the guest's console excluded).
fn ft_lines(serial: &str) -> impl Iterator<Item = &str> {
    serial.lines().filter(|l| !l.starts_with("guest: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_pairings_alternating() {
        let s = schedule();
        assert_eq!(s.len(), 2 * PAIRINGS);
        assert_eq!(
            s.iter().filter(|(g, _)| *g == Guest::Linux).count(),
            PAIRINGS
        );
        assert!(s.windows(2).all(|w| w[0].0 != w[1].0));
    }

    #[test]
    fn guest_lines_are_not_failover_lines() {
        let serial = "guest: LOST my keys\nft: status: role=backup state=following\n";
        assert_eq!(ft_lines(serial).count(), 1);
        assert!(!ft_lines(serial).any(|l| FAILOVER.iter().any(|f| l.contains(f))));
        let bad = "ft: backup: peer silent for 2004 ms (failure timeout 2000 ms): arbitrating";
        assert!(ft_lines(bad).any(|l| FAILOVER.iter().any(|f| l.contains(f))));
    }
}

//! The networking e2e tests (issue 5). Names are contracts
//! (`make e2e T=<name>`).
//!
//! Every host-side peer lives in a network namespace the runner makes for
//! the test and removes afterwards (a [`Netns`] guard, also on failure):
//! the emulator's NIC is a tap in that namespace (QEMU
//! `-netdev tap,script=no`, Bochs `ethmod=tuntap`), the echo client runs in
//! it (`ip netns exec ... qemu-tests echo-client`), and so does the iSCSI
//! target (istgt, `notes/iscsi.md`) with a file-backed LUN. Traffic never
//! leaves the namespace. Without root, `ip` or `/dev/net/tun` the tests are
//! skipped with the reason.
use crate::echo_client;
use crate::emulator::{Emulator, Interaction, Outcome, Run};
use crate::istgt::{self, Istgt};
use crate::tests::E2eTest;
use ft::arbitration::{FlagRecord, NodeId};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hypervisor's MAC on every test NIC.
const MAC: &str = "52:54:00:12:34:56";

pub fn tests() -> Vec<E2eTest> {
    let echo = |name, emulator, about, cmdline, timeout| E2eTest {
        cmdline,
        expect: vec![
            "link=up ip=10.0.2.15/24",
            "net: echo listening on tcp/udp port 7",
            "net: connection 1 from 10.0.2.2",
            "net: `quit` received",
            "net: done",
        ],
        timeout: Duration::from_secs(timeout),
        custom: Some(run_echo),
        ..E2eTest::new(name, emulator, about)
    };
    vec![
        echo(
            "net-echo-virtio",
            Emulator::QemuTcg,
            "virtio-net (virtio-drivers) + smoltcp in QEMU TCG on a tap: client in a netns echoes 10 MiB byte-exact, RTT, throughput",
            "mode=net nic=virtio ip=10.0.2.15/24 gw=none echo_port=7 net_timeout=100",
            120,
        ),
        echo(
            "net-echo-e1000-qemu",
            Emulator::QemuTcg,
            "e1000 (82540EM) + smoltcp in QEMU TCG on a tap: client in a netns echoes 10 MiB byte-exact, RTT, throughput",
            "mode=net nic=e1000 ip=10.0.2.15/24 gw=none echo_port=7 net_timeout=100",
            120,
        ),
        echo(
            "net-echo-e1000-bochs",
            Emulator::Bochs,
            "Bochs e1000 on a tap: client in a netns echoes 10 MiB byte-exact, RTT, throughput",
            "mode=net nic=e1000 ip=10.0.2.15/24 gw=none echo_port=7 net_timeout=1200",
            600,
        ),
        E2eTest {
            cmdline: "mode=iscsi nic=e1000 ip=10.0.2.15/24 gw=none iscsi=10.0.2.2:3260 \
                      iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0 iscsi_op=rw iscsi_mib=64 net_timeout=500",
            expect: vec![
                "iscsi: logged in",
                "iscsi: inquiry: vendor `FreeBSD`",
                "iscsi: capacity 163840 blocks of 512 bytes",
                "iscsi: rw: wrote 64 MiB",
                "read back and verified",
                "iscsi: PASS",
            ],
            timeout: Duration::from_secs(600),
            check: Some(check_rw),
            custom: Some(run_iscsi),
            ..E2eTest::new(
                "iscsi-rw",
                Emulator::QemuTcg,
                "iSCSI initiator on e1000 + smoltcp in QEMU TCG vs istgt in a netns: login, 64 MiB of patterned WRITE(16)s read back and verified, MB/s",
            )
        },
        E2eTest {
            cmdline: "mode=iscsi nic=e1000 gw=none iscsi=10.0.3.1:3260 \
                      iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_op=caw-race iscsi_rounds=100 \
                      iscsi_sync=10.0.3.1:7000 net_timeout=500",
            expect: vec![
                "iscsi: logged in",
                "race: node ",
                "race: round 1 expected generation 0 ",
                "race: round 100 expected generation 99 ",
                "done: 100 rounds",
                "iscsi: PASS",
            ],
            forbid: vec!["PANIC", "EXCEPTION", "race: round error", "aborted"],
            timeout: Duration::from_secs(600),
            custom: Some(run_race),
            ..E2eTest::new(
                "iscsi-caw-race",
                Emulator::QemuTcg,
                "two hypervisors (two QEMUs on a bridge with istgt) race COMPARE AND WRITE on the flag 100 rounds: exactly one winner per round, the loser MISCOMPAREs",
            )
        },
        E2eTest {
            cmdline: "mode=iscsi nic=e1000 ip=10.0.2.15/24 gw=none iscsi=10.0.2.2:3260 \
                      iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_op=loss iscsi_mib=64 net_timeout=500",
            expect: vec![
                "iscsi: logged in",
                "iscsi: loss: acked 128/",
                "iscsi: loss: error: WRITE(16) of chunk",
                "iscsi: loss: target still unreachable",
                "iscsi: loss: recovered",
                "through 1 outage(s); read back: 1024 intact, 0 lost",
                "iscsi: PASS",
            ],
            timeout: Duration::from_secs(600),
            custom: Some(run_iscsi),
            ..E2eTest::new(
                "iscsi-target-loss",
                Emulator::QemuTcg,
                "istgt killed mid-transfer: the initiator reports the failed write, logs in again once istgt is back, rewrites; every acknowledged block reads back",
            )
        },
    ]
}

/// Runs `ip` with `args`; `Err` carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` not runnable: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A private network namespace for one test, deleted on drop (with its
/// taps and bridge; processes started in it are stopped first).
pub struct Netns {
    pub name: String,
    children: Vec<std::process::Child>,
}

impl Netns {
    /// `Err` is a reason to skip (no root, no `ip`, no tun).
    pub fn new(tag: &str) -> Result<Netns, String> {
        if !Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is absent".into());
        }
        let name = format!("ftv-{tag}-{}", std::process::id());
        // A namespace left by a killed run of the same pid.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name,
            children: vec![],
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A tap for an emulator; with `addr` it carries that address itself,
    /// otherwise it is enslaved to `bridge`.
    pub fn tap(&self, name: &str, addr: Option<&str>, bridge: Option<&str>) -> Result<(), String> {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        if let Some(a) = addr {
            self.ip(&["addr", "add", a, "dev", name])?;
        }
        if let Some(b) = bridge {
            self.ip(&["link", "set", name, "master", b])?;
        }
        self.ip(&["link", "set", name, "up"])
    }

    /// A bridge carrying `addr` (the host side of the segment).
    pub fn bridge(&self, name: &str, addr: &str) -> Result<(), String> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.ip(&["addr", "add", addr, "dev", name])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// `ip netns exec <ns> program args...`, not waited for; stopped
    /// (SIGKILL) when the namespace is dropped.
    pub fn spawn(&mut self, program: &Path, args: &[&str], log: &Path) -> Result<u32, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Waits (at most `timeout`) for a child started by [`Netns::spawn`]
    /// to exit; `None` if it is still running.
    pub fn wait(&mut self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let i = self.children.iter().position(|c| c.id() == pid)?;
        loop {
            if let Ok(Some(st)) = self.children[i].try_wait() {
                let _ = self.children.remove(i).wait();
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops (SIGKILL) and reaps a child started by [`Netns::spawn`].
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs this runner's own helper subcommand inside the namespace and
    /// returns its stdout (`Err` with stdout and stderr on failure).
    pub fn helper(ns: &str, args: &[&str]) -> Result<String, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", args.join(" ")))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "{text} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Emulator arguments (QEMU) or configuration lines (Bochs) for a NIC on
/// `tap`; `device` is the QEMU model (`e1000`, `virtio-net-pci`).
pub(crate) fn nic_args(emulator: Emulator, device: &str, tap: &str, mac: &str) -> Vec<String> {
    match emulator {
        Emulator::Bochs => vec![
            "pci: enabled=1, chipset=i440fx, slot1=e1000".to_string(),
            format!("e1000: enabled=1, mac={mac}, ethmod=tuntap, ethdev=/dev/net/tun:{tap}"),
        ],
        Emulator::QemuTcg | Emulator::QemuKvm => vec![
            "-netdev".to_string(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".to_string(),
            format!("{device},netdev=n0,mac={mac}"),
        ],
    }
}

/// The QEMU device model the test's `nic=` option asks for.
fn qemu_device(cmdline: &str) -> &'static str {
    if cmdline.contains("nic=virtio") {
        "virtio-net-pci"
    } else {
        "e1000"
    }
}

/// Waits until `serial` holds `needle`; fails early when the hypervisor
/// has already exited.
pub fn wait_serial(serial: &Path, needle: &str, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if text.contains("FTVISOR-EXIT") {
            return Err(format!("the hypervisor exited before `{needle}`"));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no `{needle}` on serial within {}s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `net-echo-*`: the NIC on a tap holding 10.0.2.2 in a fresh namespace;
/// the echo client runs inside it against 10.0.2.15:7.
fn run_echo(t: &E2eTest, root: &Path) -> Outcome {
    const TAP: &str = "tapftv0";
    let ns = match Netns::new("echo") {
        Ok(ns) => ns,
        Err(why) => return Outcome::Skip(why),
    };
    if let Err(e) = ns.tap(TAP, Some("10.0.2.2/24"), None) {
        return Outcome::Skip(e);
    }
    let mut spec = t.boot_spec(root);
    spec.extra = nic_args(t.emulator, qemu_device(t.cmdline), TAP, MAC);
    spec.netns = Some(ns.name.clone());
    let name = ns.name.clone();
    let timeout = t.timeout;
    let interact: Interaction = Box::new(move |serial: &Path| {
        echo_client::wait_ready(serial, timeout)?;
        Netns::helper(&name, &["echo-client", "10.0.2.15:7"])
    });
    spec.interact = Some(interact);
    match t.emulator.boot(root, spec) {
        Ok(run) => t.verdict(&run),
        Err(e) => Outcome::Fail(e),
    }
}

/// Where a test keeps its target's files (next to, not inside, the
/// emulator's directory, which each boot recreates).
pub(crate) fn target_dir(root: &Path, name: &str) -> PathBuf {
    root.join("build/e2e").join(format!("{name}.istgt"))
}

/// The LUN of every iSCSI test: 80 MiB (the flag block, then 64 MiB of
/// data from 1 MiB on).
const LUN_BYTES: u64 = 80 << 20;

/// A namespace holding a target, shared with the interaction thread.
struct Rig {
    ns: Netns,
    target: Istgt,
}

/// `iscsi-rw`, `iscsi-target-loss`: one hypervisor on a tap (10.0.2.2 in
/// the namespace, where istgt listens).
fn run_iscsi(t: &E2eTest, root: &Path) -> Outcome {
    const TAP: &str = "tapftv0";
    if let Err(why) = istgt::available() {
        return Outcome::Skip(why);
    }
    let ns = match Netns::new("iscsi") {
        Ok(ns) => ns,
        Err(why) => return Outcome::Skip(why),
    };
    if let Err(e) = ns.tap(TAP, Some("10.0.2.2/24"), None) {
        return Outcome::Skip(e);
    }
    let target = match Istgt::configure(
        &target_dir(root, t.name),
        "10.0.2.2",
        3260,
        "10.0.2.0/24",
        LUN_BYTES,
    ) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let rig = Arc::new(Mutex::new(Rig { ns, target }));
    {
        let mut r = rig.lock().unwrap();
        let Rig { ns, target } = &mut *r;
        if let Err(e) = target.start(ns) {
            return Outcome::Fail(e);
        }
    }
    let mut spec = t.boot_spec(root);
    spec.extra = nic_args(t.emulator, qemu_device(t.cmdline), TAP, MAC);
    spec.netns = Some(rig.lock().unwrap().ns.name.clone());
    if t.cmdline.contains("iscsi_op=loss") {
        let rig = rig.clone();
        let interact: Interaction = Box::new(move |serial: &Path| target_outage(&rig, serial));
        spec.interact = Some(interact);
    }
    let run = match t.emulator.boot(root, spec) {
        Ok(run) => run,
        Err(e) => return Outcome::Fail(e),
    };
    drop(rig);
    t.verdict(&run)
}

/// `iscsi-target-loss`'s host side: kill istgt once 128 chunks are
/// acknowledged, wait for the initiator's error and a failed re-login,
/// start istgt again and wait for the recovery.
fn target_outage(rig: &Mutex<Rig>, serial: &Path) -> Result<String, String> {
    let long = Duration::from_secs(300);
    wait_serial(serial, "iscsi: loss: acked 128/", long)?;
    {
        let mut r = rig.lock().unwrap();
        let Rig { ns, target } = &mut *r;
        target.kill(ns);
    }
    let killed = Instant::now();
    wait_serial(
        serial,
        "iscsi: loss: error: WRITE(16)",
        Duration::from_secs(60),
    )?;
    let detected = killed.elapsed();
    wait_serial(
        serial,
        "iscsi: loss: target still unreachable",
        Duration::from_secs(60),
    )?;
    {
        let mut r = rig.lock().unwrap();
        let Rig { ns, target } = &mut *r;
        target.start(ns)?;
    }
    let down = killed.elapsed();
    wait_serial(serial, "iscsi: loss: recovered", Duration::from_secs(60))?;
    let back = killed.elapsed() - down;
    Ok(format!(
        "(istgt killed after 128 acknowledged 64 KiB writes; failed write reported {:.1}s later; istgt restarted after {:.1}s down; session back {:.1}s after the restart)",
        detected.as_secs_f64(),
        down.as_secs_f64(),
        back.as_secs_f64()
    ))
}

/// The `iscsi: rw:` result line, for the PASS note.
fn check_rw(run: &Run) -> Result<String, String> {
    let line = run
        .serial
        .lines()
        .find(|l| l.contains("iscsi: rw: wrote"))
        .ok_or("no `iscsi: rw: wrote` line")?;
    Ok(format!("({})", line.trim_start_matches("iscsi: rw: ")))
}

/// One racer's verdict for one round, from its serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    expected: u64,
    won: bool,
}

/// `race: round R expected generation G WON ...` / `... lost: MISCOMPARE ...`
fn race_verdicts(serial: &str) -> std::collections::BTreeMap<u32, Verdict> {
    let mut out = std::collections::BTreeMap::new();
    for l in serial.lines() {
        let Some(rest) = l.strip_prefix("race: round ") else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let (Some(r), Some(g)) = (
            w.first().and_then(|r| r.parse().ok()),
            w.get(3).and_then(|g| g.parse().ok()),
        ) else {
            continue;
        };
        let won = match (w.get(4), w.get(5)) {
            (Some(&"WON"), _) => true,
            (Some(&"lost:"), Some(&"MISCOMPARE,")) => false,
            _ => continue,
        };
        out.insert(r, Verdict { expected: g, won });
    }
    out
}

/// Every round: both nodes expected the same generation (`round - 1`),
/// exactly one won, the other saw MISCOMPARE.
fn judge_race(rounds: u32, a: &str, b: &str) -> Result<(u32, u32), String> {
    let (va, vb) = (race_verdicts(a), race_verdicts(b));
    let (mut wins_a, mut wins_b) = (0, 0);
    for r in 1..=rounds {
        let (Some(x), Some(y)) = (va.get(&r), vb.get(&r)) else {
            return Err(format!("round {r}: a verdict is missing"));
        };
        if x.expected != y.expected || x.expected != u64::from(r - 1) {
            return Err(format!(
                "round {r}: expected generations {} and {} (want {})",
                x.expected,
                y.expected,
                r - 1
            ));
        }
        match (x.won, y.won) {
            (true, false) => wins_a += 1,
            (false, true) => wins_b += 1,
            (true, true) => return Err(format!("round {r}: both nodes won (split brain)")),
            (false, false) => return Err(format!("round {r}: nobody won")),
        }
    }
    Ok((wins_a, wins_b))
}

/// `iscsi-caw-race`: two hypervisors and istgt on one bridge; the round
/// coordinator runs in the namespace too.
fn run_race(t: &E2eTest, root: &Path) -> Outcome {
    const ROUNDS: u32 = 100;
    if let Err(why) = istgt::available() {
        return Outcome::Skip(why);
    }
    let mut ns = match Netns::new("race") {
        Ok(ns) => ns,
        Err(why) => return Outcome::Skip(why),
    };
    let setup = ns.bridge("brftv", "10.0.3.1/24").and_then(|_| {
        ns.tap("tapftv1", None, Some("brftv"))?;
        ns.tap("tapftv2", None, Some("brftv"))
    });
    if let Err(e) = setup {
        return Outcome::Skip(e);
    }
    let mut target = match Istgt::configure(
        &target_dir(root, t.name),
        "10.0.3.1",
        3260,
        "10.0.3.0/24",
        LUN_BYTES,
    ) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    if let Err(e) = target
        .write_block(0, &FlagRecord::new(0, NodeId(0)).to_block())
        .and_then(|_| target.start(&mut ns))
    {
        return Outcome::Fail(e);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let coord_log = target.dir.join("coordinator.log");
    let coord = match ns.spawn(
        &exe,
        &[
            "race-coordinator",
            "10.0.3.1:7000",
            "2",
            &ROUNDS.to_string(),
        ],
        &coord_log,
    ) {
        Ok(pid) => pid,
        Err(e) => return Outcome::Fail(e),
    };
    let runs = crate::emulator::boot_all(
        root,
        [1u8, 2]
            .into_iter()
            .map(|node| {
                let mut spec = t.boot_spec(root);
                spec.name = format!("{}-node{node}", t.name);
                spec.cmdline = format!("{} ip=10.0.3.1{node}/24 iscsi_node={node}", t.cmdline);
                spec.extra = nic_args(
                    t.emulator,
                    "e1000",
                    &format!("tapftv{node}"),
                    &format!("52:54:00:12:34:1{node}"),
                );
                spec.netns = Some(ns.name.clone());
                (t.emulator, spec)
            })
            .collect(),
    );
    let coord_status = ns.wait(coord, Duration::from_secs(10));
    let coord_text = std::fs::read_to_string(&coord_log).unwrap_or_default();
    let summary = coord_text
        .lines()
        .find(|l| l.starts_with("coordinator: rounds="))
        .unwrap_or("no coordinator summary")
        .to_string();
    let mut serials = vec![];
    for (i, r) in runs.into_iter().enumerate() {
        let run = match r {
            Ok(run) => run,
            Err(e) => return Outcome::Fail(format!("node {}: {e}", i + 1)),
        };
        if let Outcome::Fail(why) = t.verdict(&run) {
            return Outcome::Fail(format!(
                "node {} (build/e2e/{}-node{}): {why}\ncoordinator: {}",
                i + 1,
                t.name,
                i + 1,
                coord_text.lines().last().unwrap_or("")
            ));
        }
        serials.push(run.serial);
    }
    if !coord_status.is_some_and(|s| s.success()) {
        return Outcome::Fail(format!(
            "coordinator failed ({coord_status:?}): {}",
            coord_text.lines().last().unwrap_or("")
        ));
    }
    let (wins1, wins2) = match judge_race(ROUNDS, &serials[0], &serials[1]) {
        Ok(w) => w,
        Err(e) => return Outcome::Fail(e),
    };
    // The flag on the LUN: generation ROUNDS, owned by the last winner.
    let last = race_verdicts(&serials[0])[&ROUNDS];
    let last_winner = if last.won { 1 } else { 2 };
    let flag = target
        .read_block(0)
        .and_then(|b| FlagRecord::from_block(&b).map_err(|e| format!("{e:?}")));
    match flag {
        Ok(f) if f.generation == u64::from(ROUNDS) && f.owner == NodeId(last_winner) => {}
        other => {
            return Outcome::Fail(format!(
                "flag on the LUN is {other:?}, want generation {ROUNDS} owner {last_winner}"
            ))
        }
    }
    Outcome::Pass(format!(
        "(race {ROUNDS}/{ROUNDS} rounds with exactly one winner, every loser MISCOMPARE; wins node1={wins1} node2={wins2}; flag generation {ROUNDS} owner {last_winner}; {summary})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn race_verdicts_are_judged() {
        let a = "race: round 1 expected generation 0 WON -> generation 1 owner 1\n\
                 race: round 2 expected generation 1 lost: MISCOMPARE, holder generation 2 owner 2\n";
        let b =
            "race: round 1 expected generation 0 lost: MISCOMPARE, holder generation 1 owner 1\n\
                 race: round 2 expected generation 1 WON -> generation 2 owner 2\n";
        assert_eq!(judge_race(2, a, b), Ok((1, 1)));
        assert!(judge_race(3, a, b).unwrap_err().contains("missing"));
        assert!(judge_race(2, a, a).unwrap_err().contains("both"));
        assert!(judge_race(2, b, b).unwrap_err().contains("nobody"));
        let stale = a.replace(
            "round 2 expected generation 1",
            "round 2 expected generation 0",
        );
        assert!(judge_race(2, &stale, b)
            .unwrap_err()
            .contains("expected generations"));
        let nobody = b.replace(
            "round 2 expected generation 1 WON -> generation 2 owner 2",
            "round 2 expected generation 1 lost: MISCOMPARE, holder generation 2 owner 2",
        );
        assert!(judge_race(2, a, &nobody).unwrap_err().contains("nobody"));
    }
}

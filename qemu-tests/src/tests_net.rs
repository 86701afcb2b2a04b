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
use crate::emulator::{Emulator, Interaction, Outcome};
use crate::tests::E2eTest;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
/// taps).
pub struct Netns {
    pub name: String,
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
        let ns = Netns { name };
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
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Emulator arguments (QEMU) or configuration lines (Bochs) for a NIC on
/// `tap`; `device` is the QEMU model (`e1000`, `virtio-net-pci`).
fn nic_args(emulator: Emulator, device: &str, tap: &str, mac: &str) -> Vec<String> {
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

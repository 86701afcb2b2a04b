//! The e2e test table. Names are part of the issues' contracts
//! (`make e2e T=<name>`).
use crate::emulator::{BootSpec, Emulator, Outcome, Run};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An extra judgement on a finished run: `Ok(note)` or `Err(reason)`.
pub type Check = fn(&Run) -> Result<String, String>;

/// A test that drives its emulator(s) itself (network rigs, several
/// machines, host-side peers); see `tests_net.rs`.
pub type CustomRun = fn(&E2eTest, &Path) -> Outcome;

pub struct E2eTest {
    pub name: &'static str,
    pub about: &'static str,
    pub emulator: Emulator,
    pub cmdline: &'static str,
    /// Boot modules relative to the repository root, with their arguments.
    pub modules: Vec<(&'static str, &'static str)>,
    pub expect_code: u8,
    /// Lines (substrings) that must appear on serial, in this order.
    pub expect: Vec<&'static str>,
    /// Substrings that must not appear.
    pub forbid: Vec<&'static str>,
    pub timeout: Duration,
    /// Extra checks on the captured run; `Err` fails the test.
    pub check: Option<Check>,
    /// Boot this image instead of the hypervisor (QEMU `-kernel`).
    pub kernel: Option<&'static str>,
    /// Runs the test instead of the single boot below (after the
    /// emulator's availability check).
    pub custom: Option<CustomRun>,
    /// Too long for the default run (`make test`, `make e2e` without `T`):
    /// left out of it, run when a filter names it.
    pub long: bool,
}

impl E2eTest {
    pub(crate) fn new(name: &'static str, emulator: Emulator, about: &'static str) -> Self {
        E2eTest {
            name,
            about,
            emulator,
            cmdline: "",
            modules: vec![],
            expect_code: 0,
            expect: vec![],
            forbid: vec!["PANIC", "EXCEPTION"],
            timeout: Duration::from_secs(60),
            check: None,
            kernel: None,
            custom: None,
            long: false,
        }
    }

    pub fn run(&self, root: &Path) -> Outcome {
        if let Err(why) = self.emulator.available() {
            return Outcome::Skip(format!("{} unavailable: {why}", self.emulator.name()));
        }
        if let Some(custom) = self.custom {
            return custom(self, root);
        }
        let run = match self.emulator.boot(root, self.boot_spec(root)) {
            Ok(r) => r,
            Err(e) => return Outcome::Fail(e),
        };
        self.verdict(&run)
    }

    /// The single boot this test describes (custom runs add to it).
    pub(crate) fn boot_spec(&self, root: &Path) -> BootSpec {
        BootSpec {
            name: self.name.to_string(),
            cmdline: self.cmdline.to_string(),
            modules: self
                .modules
                .iter()
                .map(|(f, a)| (root.join(f), a.to_string()))
                .collect::<Vec<(PathBuf, String)>>(),
            timeout: self.timeout,
            stream: std::env::var_os("E2E_VERBOSE").is_some(),
            extra: vec![],
            kernel: self.kernel.map(|k| root.join(k)),
            interact: None,
            netns: None,
        }
    }

    /// Judges a finished run; a failure carries the serial tail.
    pub(crate) fn verdict(&self, run: &Run) -> Outcome {
        match self.judge(run) {
            Ok(note) => Outcome::Pass(note),
            Err(why) => Outcome::Fail(format!(
                "{why}\n---- last serial lines (build/e2e/{}/serial.txt) ----\n{}",
                self.name,
                tail(&run.serial, 25)
            )),
        }
    }

    pub(crate) fn judge(&self, run: &Run) -> Result<String, String> {
        if let Some(Err(why)) = &run.interaction {
            return Err(format!("host side: {why}; {}", run.ended));
        }
        if run.timed_out {
            return Err(format!("{} (no verdict)", run.ended));
        }
        let Some(code) = run.exit_code else {
            return Err(format!("no `FTVISOR-EXIT` marker on serial; {}", run.ended));
        };
        if code != self.expect_code {
            return Err(format!("exit code {code}, expected {}", self.expect_code));
        }
        if matches!(self.emulator, Emulator::QemuTcg | Emulator::QemuKvm) {
            let want = 2 * code as i32 + 1;
            if run.status != Some(want) {
                return Err(format!(
                    "QEMU status {:?} disagrees with marker code {code} (want {want})",
                    run.status
                ));
            }
        }
        let mut rest = run.serial.as_str();
        for e in &self.expect {
            match rest.find(e) {
                Some(i) => rest = &rest[i + e.len()..],
                None => return Err(format!("expected `{e}` on serial (in order)")),
            }
        }
        for f in &self.forbid {
            if run.serial.contains(f) {
                return Err(format!("forbidden `{f}` on serial"));
            }
        }
        let mut extra = match self.check {
            Some(check) => check(run)?,
            None => String::new(),
        };
        match &run.interaction {
            Some(Err(why)) => return Err(format!("host side: {why}")),
            Some(Ok(note)) => extra.push_str(note),
            None => {}
        }
        Ok(format!(
            "{:.2}s in emulator {extra}",
            run.wall.as_secs_f64()
        ))
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn all() -> Vec<E2eTest> {
    let report_lines = vec![
        "ftvisor",
        "mem:",
        "cpu: vendor=",
        "cpu: pmu",
        "report: done",
    ];
    vec![
        E2eTest {
            cmdline: "mode=report",
            expect: report_lines.clone(),
            ..E2eTest::new(
                "boot-qemu-tcg",
                Emulator::QemuTcg,
                "boots under QEMU TCG, prints the CPU report",
            )
        },
        E2eTest {
            cmdline: "mode=report",
            expect: report_lines.clone(),
            ..E2eTest::new(
                "boot-qemu-kvm",
                Emulator::QemuKvm,
                "boots under QEMU with KVM, prints the CPU report",
            )
        },
        E2eTest {
            cmdline: "mode=report",
            expect: vec![
                "ftvisor",
                "cpu: vendor=GenuineIntel",
                "vmx=yes",
                "report: done",
            ],
            check: Some(check_vmx_features),
            ..E2eTest::new(
                "boot-bochs",
                Emulator::Bochs,
                "boots under Bochs 3.0 (haswell), VMX/EPT/UG/MTF/timer reported",
            )
        },
        E2eTest {
            cmdline: "",
            modules: vec![(GUEST, "test=hello")],
            expect_code: 3,
            expect: vec![
                "cpu: vmx=no",
                "no VMX on this CPU: CPUID.1:ECX.VMX[bit 5] = 0",
            ],
            ..E2eTest::new(
                "no-vmx-refusal",
                Emulator::QemuTcg,
                "refuses to run without VMX: clear message, exit code 3",
            )
        },
        E2eTest {
            cmdline: "selftest=panic",
            expect_code: 4,
            expect: vec!["PANIC at kernel/src/hv.rs:", "selftest: deliberate panic"],
            forbid: vec!["EXCEPTION"],
            ..E2eTest::new(
                "panic-exit",
                Emulator::QemuTcg,
                "a panic prints file:line:message and exits with code 4",
            )
        },
        E2eTest {
            cmdline: "selftest=fault",
            expect_code: 5,
            expect: vec![
                "EXCEPTION #PF page fault (vector 14)",
                "cr2=0x0000010000000000",
                "rip=",
            ],
            forbid: vec!["PANIC"],
            ..E2eTest::new(
                "fault-dump",
                Emulator::QemuTcg,
                "a CPU exception prints a register dump and exits with code 5",
            )
        },
        E2eTest {
            cmdline: "mode=report frobnicate=1",
            expect_code: 2,
            expect: vec!["error: unknown command-line option `frobnicate`"],
            ..E2eTest::new(
                "bad-cmdline",
                Emulator::QemuTcg,
                "an unknown option is named and refused with code 2",
            )
        },
        E2eTest {
            cmdline: "test=hello",
            expect: vec![
                "hello from the test guest",
                "hypervisor=none",
                "checksum=0x",
            ],
            kernel: Some("build/testguest.elf32"),
            ..E2eTest::new(
                "guest-native-hello",
                Emulator::QemuTcg,
                "the test guest alone in QEMU TCG (reference run)",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor",
            expect_code: 2,
            expect: vec!["error: no guest image"],
            ..E2eTest::new(
                "no-guest-module",
                Emulator::QemuTcg,
                "hypervisor mode without a guest module: clear error, code 2",
            )
        },
    ]
    .into_iter()
    .chain(vmx_tests())
    .chain(crate::tests_net::tests())
    .chain(crate::tests_guestio::tests())
    .chain(crate::tests_kv::tests())
    .chain(crate::tests_replay::tests())
    .chain(crate::tests_linux::tests())
    .chain(crate::tests_linuxft::tests())
    .chain(crate::tests_linuxbigio::tests())
    .chain(crate::tests_ft::tests())
    .chain(crate::tests_ftkv::tests())
    .chain(crate::tests_repair::tests())
    .chain(crate::tests_join::tests())
    .collect()
}

const GUEST: &str = "build/testguest.elf64";

/// A test of the test guest under the hypervisor in Bochs.
fn vmx(name: &'static str, about: &'static str, guest_cmdline: &'static str) -> E2eTest {
    E2eTest {
        cmdline: "mode=hypervisor",
        modules: vec![(GUEST, guest_cmdline)],
        timeout: Duration::from_secs(180),
        ..E2eTest::new(name, Emulator::Bochs, about)
    }
}

pub fn vmx_tests() -> Vec<E2eTest> {
    vec![
        E2eTest {
            expect: vec![
                "hypervisor: VMCS",
                "guest: hello from the test guest",
                "guest: hypervisor=ftvisor",
                "guest: rdtsc=ok",
                "guest: checksum=0x",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_checksum_matches_native),
            ..vmx(
                "vmx-guest-hello",
                "test guest under VMX: output with prefix, checksum = native QEMU run",
                "test=hello",
            )
        },
        E2eTest {
            expect: vec![
                "guest: timer: ticks=100",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_timer),
            ..vmx(
                "vmx-guest-timer",
                ">= 100 LAPIC timer interrupts at the programmed rate",
                "test=timer",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor ft_test_clone=25",
            expect: vec![
                "clone: the machine went through a state transfer",
                "guest: checksum=0x",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_clone),
            ..vmx(
                "state-transfer-clone",
                "a repair's state transfer in one boot (issue 16): from 25 ms of guest time the whole machine is sent through ft::state with a pre-copy (every page while the guest runs, then the pages it dirtied, through EPT dirty logging), the vCPU, MSRs, x87/SSE and devices with the guest stopped; wrecked, and restored from the transfer; the guest's checksum = native QEMU run",
                "test=hello",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor ept_dirty_test=20",
            expect: vec![
                "ept: dirty logging on",
                "guest: checksum=0x",
                "hypervisor: guest exited with code 0",
            ],
            check: Some(check_ept_dirty_log),
            ..vmx(
                "ept-dirty-log",
                "a repair's dirty logging in the EPT (issue 16): guest RAM write-protected in 4 KiB pages, a round every 20 ms of guest time; the guest's writes are caught and resumed, its checksum = native QEMU run",
                "test=hello",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor guest_tsc=scaled",
            expect: vec!["hypervisor: guest exited with code 0"],
            check: Some(check_tsc_scaled),
            ..vmx(
                "guest-tsc-scaled",
                "the default guest TSC: the host TSC (Bochs: 50 MHz) scaled to the 1 GHz CPUID announces, measured over the run",
                "test=replay rounds=50",
            )
        },
        E2eTest {
            expect_code: 6,
            expect: vec![
                "guest: hostile: touching unmapped memory",
                "hypervisor: guest stopped: read of unmapped guest-physical 0xf0000000",
            ],
            ..vmx(
                "vmx-hostile-unmapped",
                "guest reads outside RAM: stopped with a report",
                "test=hostile-unmapped",
            )
        },
        E2eTest {
            expect: vec![
                "guest: hostile: #GP on wrmsr",
                "hypervisor: guest exited with code 0",
            ],
            ..vmx(
                "vmx-hostile-msr",
                "guest writes VMX-reserved MSRs: gets #GP",
                "test=hostile-msr",
            )
        },
        E2eTest {
            expect: vec![
                "guest: hostile: hypercalls rejected",
                "hypervisor: guest exited with code 0",
            ],
            ..vmx(
                "vmx-hostile-hypercall",
                "bogus hypercalls get error codes",
                "test=hostile-hypercall",
            )
        },
        E2eTest {
            expect_code: 6,
            expect: vec![
                "guest: hostile: triple fault next",
                "hypervisor: guest stopped: triple fault",
            ],
            ..vmx(
                "vmx-hostile-triple",
                "guest triple-faults: stopped with a report",
                "test=hostile-triple",
            )
        },
        E2eTest {
            cmdline: "mode=hypervisor watchdog=1",
            expect_code: 6,
            expect: vec![
                "guest: hostile: cli loop",
                "hypervisor: guest stopped: watchdog",
            ],
            ..vmx(
                "vmx-hostile-cli-loop",
                "endless loop with interrupts off: watchdog stops it",
                "test=hostile-cli-loop",
            )
        },
    ]
}

fn serial_value<'a>(serial: &'a str, key: &str) -> Option<&'a str> {
    serial.lines().find_map(|l| {
        let i = l.find(key)?;
        l[i + key.len()..].split_whitespace().next()
    })
}

/// Boots the test guest natively in QEMU TCG and compares checksums.
fn check_checksum_matches_native(run: &Run) -> Result<String, String> {
    let ours = serial_value(&run.serial, "checksum=").ok_or("no checksum under the hypervisor")?;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg("qemu-system-x86_64")
        .arg("-kernel")
        .arg(root.join("build/testguest.elf32"))
        .args([
            "-append",
            "test=hello",
            "-m",
            "128",
            "-cpu",
            "max",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-monitor", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .output()
        .map_err(|e| format!("native QEMU run: {e}"))?;
    let native_serial = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let native = serial_value(&native_serial, "checksum=")
        .ok_or_else(|| format!("native QEMU run printed no checksum: {native_serial}"))?;
    if native != ours {
        return Err(format!(
            "checksum under ftvisor {ours} != native QEMU {native}"
        ));
    }
    Ok(format!("(checksum {ours} matches native QEMU)"))
}

fn check_timer(run: &Run) -> Result<String, String> {
    let line = run
        .serial
        .lines()
        .find(|l| l.contains("timer: ticks="))
        .ok_or("no timer summary")?;
    Ok(format!("({})", line.trim_start_matches("guest: ")))
}

/// `state-transfer-clone`: the guest computed what it computes natively
/// after its whole state was wrecked and restored from a transfer whose
/// round 0 carried every page of its RAM and whose later rounds carried
/// what it dirtied meanwhile (a page missed would hold stale content).
fn check_clone(run: &Run) -> Result<String, String> {
    let same = check_checksum_matches_native(run)?;
    let line = clone_line(run)?;
    let rounds = clone_rounds(line)?;
    if rounds.first() != Some(&((64 << 20) / 4096)) || rounds.len() < 2 {
        return Err(format!(
            "want round 0 = every page of 64 MiB and at least one more round: {line}"
        ));
    }
    let before = run.serial.find(line).unwrap_or(0);
    if !run.serial[before..].contains("guest: checksum=0x") {
        return Err("the checksum came before the clone: it proves nothing".into());
    }
    Ok(format!("{same}; {}", line.trim_start_matches("clone: ")))
}

/// The clone's report line.
pub(crate) fn clone_line(run: &Run) -> Result<&str, String> {
    run.serial
        .lines()
        .find(|l| l.starts_with("clone: the machine went through a state transfer"))
        .ok_or_else(|| "no `clone:` line".to_string())
}

/// The pages of each round on the clone's report line.
pub(crate) fn clone_rounds(line: &str) -> Result<Vec<u64>, String> {
    let list = line
        .split_once("pre-copy rounds of [")
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(l, _)| l)
        .ok_or_else(|| format!("no round list: {line}"))?;
    list.split(',')
        .map(|v| v.trim().parse::<u64>().map_err(|e| format!("{v}: {e}")))
        .collect()
}

/// `ept-dirty-log`: the guest computed what it computes natively (its
/// writes were faulted and resumed, none lost), and the EPT handed over
/// written pages over several rounds.
fn check_ept_dirty_log(run: &Run) -> Result<String, String> {
    let same = check_checksum_matches_native(run)?;
    let line = run
        .serial
        .lines()
        .find(|l| l.starts_with("ept: dirty logging: rounds="))
        .ok_or("no `ept: dirty logging: rounds=` line")?;
    let n = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (rounds, pages) = (n("rounds="), n("pages="));
    if rounds < 2 || pages == 0 {
        return Err(format!("want >= 2 rounds and written pages: {line}"));
    }
    Ok(format!("{same}; {}", line.trim_start_matches("ept: ")))
}

/// `guest-tsc-scaled`: guest time that passed while the host's did (the
/// run loop's guest TSC span less what idle HLTs skipped) over the host TSC ticks
/// of the run must be the announced 1 GHz over Bochs's TSC rate (its
/// `ips`, 50 MHz): 20, not 1 (the raw host TSC).
fn check_tsc_scaled(run: &Run) -> Result<String, String> {
    let line = run
        .serial
        .lines()
        .find(|l| l.starts_with("ft: numbers:"))
        .ok_or("no `ft: numbers:` line")?;
    let field = |k: &str| -> Result<f64, String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or(format!("no {k} in `{line}`"))
    };
    let host = field("host_ticks=")?;
    let guest = field("guest_tsc=")? - field("guest_tsc_start=")? - field("guest_tsc_skipped=")?;
    let want = 1e9 / crate::emulator::BOCHS_IPS as f64;
    let ratio = guest / host.max(1.0);
    if (ratio / want - 1.0).abs() > 0.05 {
        return Err(format!(
            "guest TSC ran {ratio:.3}x the host TSC (want {want:.1}x within 5%): {line}"
        ));
    }
    Ok(format!(
        "(guest TSC {ratio:.3}x the host TSC over {host:.0} host ticks, want {want:.1}x)"
    ))
}

fn check_vmx_features(run: &Run) -> Result<String, String> {
    let line = run
        .serial
        .lines()
        .find(|l| l.contains("cpu: vmx=yes"))
        .ok_or("no `cpu: vmx=yes` line")?;
    for want in [
        "ept=yes",
        "unrestricted_guest=yes",
        "mtf=yes",
        "preemption_timer=yes",
    ] {
        if !line.contains(want) {
            return Err(format!("VMX report lacks `{want}`: {line}"));
        }
    }
    Ok("(VMX, EPT, unrestricted guest, MTF, preemption timer reported)".into())
}

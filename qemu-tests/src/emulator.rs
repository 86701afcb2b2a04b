//! Booting an image in QEMU (TCG or KVM) or Bochs 3.0 and capturing COM1.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `make deps` installs Bochs 3.0 (override: `FTVISOR_BOCHS`).
pub fn bochs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FTVISOR_BOCHS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cache")
        });
    cache.join("ftvisor/bochs-3.0/bin/bochs")
}

const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const BOCHS_VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";
const EXIT_MARKER: &str = "FTVISOR-EXIT code=";
/// Bochs's emulated instructions per second (`cpu: ips=`): its TSC and
/// its PIT run at this rate of virtual time.
pub const BOCHS_IPS: u64 = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    QemuTcg,
    QemuKvm,
    Bochs,
}

/// What to boot.
pub struct BootSpec {
    pub name: String,
    pub cmdline: String,
    /// Boot modules: file and its module command line.
    pub modules: Vec<(PathBuf, String)>,
    pub timeout: Duration,
    /// Copy serial output to stdout while running (`make run`).
    pub stream: bool,
    /// Extra emulator configuration lines (Bochs) or arguments (QEMU).
    pub extra: Vec<String>,
    /// Boot this instead of the hypervisor: QEMU takes a multiboot ELF32
    /// (`-kernel`); Bochs a Linux bzImage through GRUB's `linux` command,
    /// with the first module as its initrd (native reference runs).
    pub kernel: Option<PathBuf>,
    /// Runs on its own thread while the emulator runs (given the serial
    /// file); its verdict lands in [`Run::interaction`].
    pub interact: Option<Interaction>,
    /// Run the emulator inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

/// A host-side conversation with the running machine.
pub type Interaction = Box<dyn FnOnce(&Path) -> Result<String, String> + Send>;

/// What happened.
pub struct Run {
    pub serial: String,
    /// The code from the `FTVISOR-EXIT code=N` marker.
    pub exit_code: Option<u8>,
    /// Raw process status (QEMU: `2 * code + 1` from isa-debug-exit).
    pub status: Option<i32>,
    pub timed_out: bool,
    pub ended: String,
    pub wall: Duration,
    /// The verdict of [`BootSpec::interact`], if one ran.
    pub interaction: Option<Result<String, String>>,
}

/// Verdict of one test.
pub enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

/// Boots several machines at once, one thread each (an FT pair, racing
/// initiators), and returns their runs in the order given.
pub fn boot_all(root: &Path, machines: Vec<(Emulator, BootSpec)>) -> Vec<Result<Run, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = machines
            .into_iter()
            .map(|(emulator, spec)| s.spawn(move || emulator.boot(root, spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("boot thread panicked".into()))
            })
            .collect()
    })
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

impl Emulator {
    pub fn name(&self) -> &'static str {
        match self {
            Emulator::QemuTcg => "qemu-tcg",
            Emulator::QemuKvm => "qemu-kvm",
            Emulator::Bochs => "bochs",
        }
    }

    pub fn parse(s: &str) -> Option<Emulator> {
        match s {
            "qemu-tcg" | "qemu" => Some(Emulator::QemuTcg),
            "qemu-kvm" | "kvm" => Some(Emulator::QemuKvm),
            "bochs" => Some(Emulator::Bochs),
            _ => None,
        }
    }

    /// `Ok` when this emulator can run here, else the reason it cannot.
    pub fn available(&self) -> Result<(), String> {
        match self {
            Emulator::QemuTcg => which("qemu-system-x86_64")
                .then_some(())
                .ok_or_else(|| "qemu-system-x86_64 not installed (make deps)".into()),
            Emulator::QemuKvm => {
                Emulator::QemuTcg.available()?;
                let kvm = Path::new("/dev/kvm");
                if !kvm.exists() {
                    return Err("/dev/kvm is absent".into());
                }
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(kvm)
                    .map(|_| ())
                    .map_err(|e| format!("/dev/kvm not usable: {e}"))
            }
            Emulator::Bochs => {
                let b = bochs_binary();
                if !b.is_file() {
                    return Err(format!(
                        "Bochs 3.0 not found at {} (make deps)",
                        b.display()
                    ));
                }
                for f in [BOCHS_BIOS, BOCHS_VGABIOS] {
                    if !Path::new(f).is_file() {
                        return Err(format!("{f} missing (make deps: bochsbios, vgabios)"));
                    }
                }
                which("grub-mkrescue")
                    .then_some(())
                    .ok_or_else(|| "grub-mkrescue not installed (make deps)".into())
            }
        }
    }

    pub fn boot(&self, root: &Path, mut spec: BootSpec) -> Result<Run, String> {
        let spec_interact = spec.interact.take();
        let spec = &spec;
        let dir = root.join("build/e2e").join(&spec.name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let serial = dir.join("serial.txt");
        let mut cmd = match self {
            Emulator::QemuTcg | Emulator::QemuKvm => self.qemu_command(root, spec, &serial),
            Emulator::Bochs => bochs_command(root, spec, &dir, &serial)?,
        };
        let log = fs::File::create(dir.join("emulator.log")).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .current_dir(&dir);
        let start = Instant::now();
        if let Some(ns) = &spec.netns {
            let mut wrapped = Command::new("ip");
            wrapped.args(["netns", "exec", ns]).arg(cmd.get_program());
            wrapped.args(cmd.get_args());
            if let Some(d) = cmd.get_current_dir() {
                wrapped.current_dir(d);
            }
            let log = fs::File::create(dir.join("emulator.log")).map_err(|e| e.to_string())?;
            wrapped
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            cmd = wrapped;
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name()))?;
        let interaction = spec_interact.map(|f| {
            let serial = serial.clone();
            std::thread::spawn(move || f(&serial))
        });
        let mut shown = 0usize;
        let mut timed_out = false;
        let mut stalled = false;
        // Bochs (`clock: sync=none`) burns a whole core even while its
        // guest idles, so a Bochs that uses no CPU and writes nothing is
        // stuck (seen: Bochs itself deadlocked in a futex wait). QEMU
        // sleeps while its guest halts, so it is not watched.
        let mut watch = (*self == Emulator::Bochs).then(|| StallWatch::new(STALL_WINDOW));
        let mut next_sample = Instant::now();
        let status = loop {
            if spec.stream {
                shown = stream_new(&serial, shown);
            }
            match child.try_wait() {
                Ok(Some(st)) => break st.code(),
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for emulator: {e}")),
            }
            if start.elapsed() > spec.timeout {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if let Some(w) = watch.as_mut().filter(|_| Instant::now() >= next_sample) {
                next_sample = Instant::now() + Duration::from_secs(1);
                let cpu = cpu_ticks(child.id());
                let len = fs::metadata(&serial).map_or(0, |m| m.len());
                if let Some(cpu) = cpu {
                    if w.sample(start.elapsed(), cpu, len) {
                        stall_evidence(child.id(), &dir.join("stall.txt"));
                        stalled = true;
                        timed_out = true;
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if spec.stream {
            stream_new(&serial, shown);
        }
        let wall = start.elapsed();
        let text = fs::read(&serial)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        let exit_code = text.lines().rev().find_map(|l| {
            l.find(EXIT_MARKER)
                .and_then(|i| l[i + EXIT_MARKER.len()..].trim().parse::<u8>().ok())
        });
        let ended = if stalled {
            format!(
                "emulator stalled: no CPU time and no serial output for {} s (Bochs deadlock?); killed after {:.0} s; its stacks: build/e2e/{}/stall.txt",
                STALL_WINDOW.as_secs(),
                start.elapsed().as_secs_f64(),
                spec.name
            )
        } else if timed_out {
            format!("timed out after {}s", spec.timeout.as_secs())
        } else {
            format!("emulator exited with status {status:?}")
        };
        let interaction = interaction.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the interaction thread panicked".into()))
        });
        Ok(Run {
            serial: text,
            exit_code,
            status,
            timed_out,
            ended,
            wall,
            interaction,
        })
    }

    fn qemu_command(&self, root: &Path, spec: &BootSpec, serial: &Path) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.arg("-kernel")
            .arg(
                spec.kernel
                    .clone()
                    .unwrap_or_else(|| root.join("build/ftvisor.elf32")),
            )
            .args(["-append", &spec.cmdline])
            .args([
                "-m",
                "512",
                "-display",
                "none",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        if !spec.modules.is_empty() {
            let list: Vec<String> = spec
                .modules
                .iter()
                .map(|(f, a)| {
                    let a = a.replace(',', ",,");
                    if a.is_empty() {
                        f.display().to_string()
                    } else {
                        format!("{} {a}", f.display())
                    }
                })
                .collect();
            c.arg("-initrd").arg(list.join(","));
        }
        if *self == Emulator::QemuKvm {
            // This machine's paravirtual KVM refuses MSR 0x10a (ARCH_CAPABILITIES)
            // with plain `-cpu host`.
            c.args(["-enable-kvm", "-cpu", "host,-arch-capabilities"]);
        }
        c.args(&spec.extra);
        c
    }
}

/// The hypervisor's command line in Bochs: `guest_tsc=host` unless the
/// test chose. Bochs's TSC runs at its `ips` (50 MHz here), in the same
/// virtual time as its PIT; scaled to the announced 1 GHz (the default on
/// real hosts), every guest timer would fire 20 times as often per
/// emulated instruction, and the tests and the bench are sized in
/// instructions. `guest-tsc-scaled` runs the default.
fn bochs_cmdline(spec: &BootSpec) -> String {
    if spec.kernel.is_some() || spec.cmdline.contains("guest_tsc=") {
        spec.cmdline.clone()
    } else {
        format!("{} guest_tsc=host", spec.cmdline)
    }
}

fn bochs_command(
    root: &Path,
    spec: &BootSpec,
    dir: &Path,
    serial: &Path,
) -> Result<Command, String> {
    let iso = dir.join("boot.iso");
    let mut mk = Command::new(root.join("boot/mkimage.sh"));
    match &spec.kernel {
        // Native reference runs: a Linux bzImage booted by GRUB directly.
        Some(kernel) => mk.arg("iso-linux").arg(kernel),
        None => mk.arg("iso").arg(root.join("build/ftvisor.elf64")),
    };
    mk.arg(&iso).arg(bochs_cmdline(spec));
    for (f, a) in &spec.modules {
        if a.is_empty() {
            mk.arg(f);
        } else {
            mk.arg(format!("{}={a}", f.display()));
        }
    }
    let st = mk.status().map_err(|e| format!("mkimage: {e}"))?;
    if !st.success() {
        return Err(format!("building the ISO failed ({st})"));
    }
    let rc = dir.join("bochsrc");
    let mut f = fs::File::create(&rc).map_err(|e| e.to_string())?;
    let cfg = format!(
        "display_library: nogui\n\
         megs: 512\n\
         romimage: file={BOCHS_BIOS}\n\
         vgaromimage: file={BOCHS_VGABIOS}\n\
         cpu: model=corei7_haswell_4770, count=1, ips={BOCHS_IPS}, reset_on_triple_fault=0\n\
         clock: sync=none, time0=1\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={}\n\
         log: {}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report, nogui=ignore\n\
         mouse: enabled=0\n\
         speaker: enabled=0\n\
         {}\n",
        iso.display(),
        serial.display(),
        dir.join("bochs.log").display(),
        spec.extra.join("\n")
    );
    // `nogui=ignore`: Bochs's SIGALRM handler (the once-a-second "ips ="
    // line of the nogui display) logs through `iofunctions::out`, whose
    // mutex is not recursive; when the alarm lands while the main loop is
    // itself logging (the e1000's frequent "packet too short" lines), Bochs
    // waits on that mutex forever (gdb: `bx_signal_handler` ->
    // `logfunctions::info` -> `pthread_mutex_lock(logio_mutex)` above
    // `iofunctions::out` of `bx_tuntap_pktmover_c::rx_timer`). With the
    // nogui module's info lines ignored the handler never takes the lock.
    f.write_all(cfg.as_bytes()).map_err(|e| e.to_string())?;
    let mut c = Command::new(bochs_binary());
    c.arg("-q").arg("-f").arg(&rc);
    Ok(c)
}

/// How long an emulator may sit with (almost) no CPU time and no new
/// serial output before the runner declares it stalled.
const STALL_WINDOW: Duration = Duration::from_secs(60);

/// Linux's `USER_HZ`: the unit of `utime`/`stime` in `/proc/<pid>/stat`
/// (100 on every Linux ABI this runs on).
const CLOCK_TICKS_PER_S: u64 = 100;

/// `utime + stime` of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Before a stalled emulator is killed: its threads' kernel wait
/// channels and user stacks (gdb, if installed) into `out`, so a Bochs
/// deadlock can be diagnosed afterwards.
fn stall_evidence(pid: u32, out: &Path) {
    let mut text = format!("pid {pid}\n");
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            text += &format!(
                "task {}: wchan {}; stat {}\n{}\n",
                t.file_name().to_string_lossy(),
                read("wchan").trim(),
                read("stat").trim(),
                read("stack").trim()
            );
        }
    }
    if which("gdb") {
        let bt = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = bt {
            text += &String::from_utf8_lossy(&o.stdout);
            text += &String::from_utf8_lossy(&o.stderr);
        }
    }
    let _ = fs::write(out, text);
}

/// `utime + stime` from the text of `/proc/<pid>/stat` (fields 14 and 15;
/// the command name, field 2, is parenthesised and may hold spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The stall detector: fed `(elapsed, cpu ticks, serial length)` samples,
/// it reports a stall once neither the serial file grew nor the process
/// used more than 2% of a CPU over a whole `window`.
#[derive(Debug)]
struct StallWatch {
    window: Duration,
    /// The last sample that showed activity (or the first sample).
    since: Option<(Duration, u64, u64)>,
}

impl StallWatch {
    fn new(window: Duration) -> Self {
        StallWatch {
            window,
            since: None,
        }
    }

    /// CPU ticks that count as activity within one window (2% of it).
    fn budget(&self) -> u64 {
        (self.window.as_millis() as u64 * CLOCK_TICKS_PER_S / 1000 / 50).max(1)
    }

    /// `true` when the emulator is stalled.
    fn sample(&mut self, now: Duration, cpu: u64, serial_len: u64) -> bool {
        let budget = self.budget();
        match self.since {
            Some((t, c, l)) if serial_len == l && cpu.saturating_sub(c) < budget && cpu >= c => {
                now.saturating_sub(t) >= self.window
            }
            _ => {
                self.since = Some((now, cpu, serial_len));
                false
            }
        }
    }
}

fn stream_new(serial: &Path, shown: usize) -> usize {
    let Ok(bytes) = fs::read(serial) else {
        return shown;
    };
    if bytes.len() > shown {
        let text = String::from_utf8_lossy(&bytes[shown..]).replace('\r', "");
        print!("{text}");
        let _ = std::io::stdout().flush();
        bytes.len()
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn stat_fields() {
        let stat = "4242 (bochs (x) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    7000 300 0 0 20 0 2 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(7300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn busy_emulator_is_never_stalled() {
        // A Bochs burning a core (100 ticks/s) with a silent guest.
        let mut w = StallWatch::new(secs(60));
        for s in 0..600 {
            assert!(!w.sample(secs(s), 100 * s, 4096), "at {s} s");
        }
    }

    #[test]
    fn half_a_core_is_busy() {
        // Two Bochs sharing one core with the rest of the runner.
        let mut w = StallWatch::new(secs(60));
        for s in 0..600 {
            assert!(!w.sample(secs(s), 50 * s, 0));
        }
    }

    #[test]
    fn growing_serial_is_never_stalled() {
        let mut w = StallWatch::new(secs(60));
        for s in 0..600 {
            assert!(!w.sample(secs(s), 5, s / 10));
        }
    }

    #[test]
    fn deadlock_is_stalled_after_the_window() {
        // Busy and printing for 100 s, then a futex wait: no CPU, no output.
        let mut w = StallWatch::new(secs(60));
        for s in 0..=100 {
            assert!(!w.sample(secs(s), 100 * s, 10 * s));
        }
        for s in 101..160 {
            assert!(!w.sample(secs(s), 10_000, 1000), "too early at {s} s");
        }
        assert!(w.sample(secs(160), 10_001, 1000));
    }

    #[test]
    fn a_trickle_of_cpu_is_still_a_stall() {
        // 1% of a core (the deadlocked Bochs's other threads, if any).
        let mut w = StallWatch::new(secs(60));
        let stalled = (0..200).find(|&s| w.sample(secs(s), s, 77));
        assert_eq!(stalled, Some(60));
    }

    #[test]
    fn activity_restarts_the_window() {
        let mut w = StallWatch::new(secs(60));
        assert!(!w.sample(secs(0), 0, 0));
        assert!(!w.sample(secs(59), 0, 0));
        // One serial line just in time.
        assert!(!w.sample(secs(59), 0, 80));
        assert!(!w.sample(secs(118), 1, 80));
        assert!(w.sample(secs(119), 1, 80));
    }
}

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
        let ended = if timed_out {
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
    mk.arg(&iso).arg(&spec.cmdline);
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
         cpu: model=corei7_haswell_4770, count=1, ips=50000000, reset_on_triple_fault=0\n\
         clock: sync=none, time0=1\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={}\n\
         log: {}\n\
         panic: action=fatal\n\
         error: action=report\n\
         mouse: enabled=0\n\
         speaker: enabled=0\n\
         {}\n",
        iso.display(),
        serial.display(),
        dir.join("bochs.log").display(),
        spec.extra.join("\n")
    );
    f.write_all(cfg.as_bytes()).map_err(|e| e.to_string())?;
    let mut c = Command::new(bochs_binary());
    c.arg("-q").arg("-f").arg(&rc);
    Ok(c)
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

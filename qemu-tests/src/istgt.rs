//! An iSCSI target for the e2e tests: istgt (Debian `istgt`, the target
//! that implements COMPARE AND WRITE; `tgt` does not) serving one
//! file-backed LUN on a portal inside a test's network namespace. Recipe
//! and quirks: `notes/iscsi.md` of the shared folder.
//!
//! istgt runs in the foreground (`-D`) as a child of the runner, started
//! through [`Netns::spawn`], so the namespace guard kills it on every path;
//! its configuration, LUN file and log live in `build/e2e/<test>/istgt/`.
use crate::tests_net::Netns;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ISTGT: &str = "/usr/sbin/istgt";

/// One configured target (not necessarily running).
pub struct Istgt {
    pub dir: PathBuf,
    portal: String,
    /// The running istgt's pid (a child of the namespace guard).
    pub pid: Option<u32>,
    starts: u32,
}

/// `Err` is a reason to skip.
pub fn available() -> Result<(), String> {
    if Path::new(ISTGT).is_file() {
        Ok(())
    } else {
        Err(format!("{ISTGT} not installed (make deps: istgt)"))
    }
}

impl Istgt {
    /// Writes the configuration and a sparse LUN of `lun_bytes` for a
    /// portal `ip:port` serving initiators of `netmask` (`a.b.c.d/nn`).
    pub fn configure(
        dir: &Path,
        ip: &str,
        port: u16,
        netmask: &str,
        lun_bytes: u64,
    ) -> Result<Istgt, String> {
        let err = |e: std::io::Error| format!("{}: {e}", dir.display());
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(err)?;
        fs::File::create(dir.join("disk0.img"))
            .and_then(|f| f.set_len(lun_bytes))
            .map_err(err)?;
        fs::write(dir.join("auth.conf"), "").map_err(err)?;
        let d = dir.display();
        // The unit-control portal is only reachable inside the namespace.
        let conf = format!(
            r#"[Global]
  NodeBase "iqn.2024-01.test.ftvisor"
  PidFile {d}/istgt.pid
  AuthFile {d}/auth.conf
  MediaDirectory {d}
  LogFacility "local7"
  Timeout 30
  NopInInterval 20
  DiscoveryAuthMethod None
  MaxSessions 16
  MaxConnections 4
[UnitControl]
  AuthMethod None
  Portal UC1 127.0.0.1:{uc}
  Netmask 127.0.0.1
[PortalGroup1]
  Portal DA1 {ip}:{port}
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask {netmask}
[LogicalUnit1]
  TargetName disk1
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod None
  UseDigest Auto
  UnitType Disk
  LUN0 Storage {d}/disk0.img Auto
"#,
            uc = port + 1
        );
        fs::write(dir.join("istgt.conf"), conf).map_err(err)?;
        Ok(Istgt {
            dir: dir.to_path_buf(),
            portal: format!("{ip}:{port}"),
            pid: None,
            starts: 0,
        })
    }

    pub fn lun_file(&self) -> PathBuf {
        self.dir.join("disk0.img")
    }

    /// Starts istgt in `ns` and waits (10 s at most) until the portal
    /// listens.
    pub fn start(&mut self, ns: &mut Netns) -> Result<(), String> {
        self.starts += 1;
        let conf = self.dir.join("istgt.conf");
        let log = self.dir.join(format!("istgt-{}.log", self.starts));
        let conf = conf.display().to_string();
        let pid = ns.spawn(Path::new(ISTGT), &["-c", &conf, "-D"], &log)?;
        self.pid = Some(pid);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name, "ss", "-Hltn"])
                .output()
                .map_err(|e| format!("ss: {e}"))?;
            if String::from_utf8_lossy(&out.stdout).contains(&self.portal) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "istgt did not listen on {} within 10 s (log: {})",
            self.portal,
            log.display()
        ))
    }

    /// Kills istgt (SIGKILL: the target vanishes mid-command, like a crash).
    pub fn kill(&mut self, ns: &mut Netns) {
        if let Some(pid) = self.pid.take() {
            ns.kill(pid);
        }
    }

    /// One 512-byte block of the LUN file.
    pub fn read_block(&self, lba: u64) -> Result<Vec<u8>, String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(self.lun_file()).map_err(|e| e.to_string())?;
        let mut b = vec![0u8; 512];
        f.seek(SeekFrom::Start(lba * 512))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| format!("LUN file, lba {lba}: {e}"))?;
        Ok(b)
    }

    /// Writes one 512-byte block of the LUN file (before istgt starts).
    pub fn write_block(&self, lba: u64, block: &[u8]) -> Result<(), String> {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.lun_file())
            .map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(lba * 512))
            .and_then(|_| f.write_all(block))
            .map_err(|e| e.to_string())
    }
}

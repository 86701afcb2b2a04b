//! `linux-ft-http` (issue 10; DESIGN.md §1.1-§1.8 with an unmodified
//! guest): the FT pair runs Debian's stock kernel; its initramfs (`/init`
//! with `ftvisor.http=<addr>`, `qemu-tests/linux/build.sh`) brings up the
//! virtio NIC and serves a 2.8 MB file (`seq -w 1 400000`) with
//! `busybox httpd`. A client in the namespace downloads it; once a part
//! has arrived, the primary's Bochs is SIGKILLed. The backup must win the
//! test-and-set, go live, announce the guest MAC, and the download must
//! complete byte-exact from it on the same TCP connection.
//!
//! The rig is the FT tests' (`tests_ftkv.rs`): one network namespace, a
//! bridge, one tap per Bochs, istgt serving the shared LUN whose flag
//! (LBA 0) starts at generation 0. The guest has no disk (`disk=none`):
//! the file lives in the initramfs.
use crate::emulator::{Emulator, Interaction, Outcome};
use crate::ftrig::{self, ROLES};
use crate::tests::E2eTest;
use crate::tests_linux::{images, LINUX_CMDLINE};
use crate::tests_net::wait_serial;
use ft::arbitration::FlagRecord as Flag;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WIRING: ftrig::Wiring = ftrig::Wiring {
    bridge: "brlf",
    taps: ["taplf1", "taplf2"],
    mac_tag: 3,
};
const GUEST_IP: &str = "10.0.4.20";
/// Lines of the served file (`seq -w 1 LINES`: 7 bytes each).
const LINES: u32 = 400_000;
/// Bytes of the body after which the primary is killed.
const KILL_AFTER: usize = 600 * 1024;
/// The longest the client waits for a byte (the read timeout).
const CLIENT_STALL_SECS: u64 = 60;
/// The line /init prints once httpd is about to start.
const READY: &str = "FTVISOR-LINUX-HTTP: serving";

pub fn tests() -> Vec<E2eTest> {
    vec![E2eTest {
        cmdline: "mode=hypervisor guest=linux guest_mem=192M watchdog=120 counter=preempt nic=e1000 gw=none cluster=10 heartbeat=10 ft_status=2000 guest_net=bridge disk=none iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0",
        timeout: Duration::from_secs(1500),
        custom: Some(run),
        ..E2eTest::new(
            "linux-ft-http",
            Emulator::Bochs,
            "FT pair running Debian's stock kernel: a client downloads 2.8 MB from busybox httpd while the primary's Bochs is SIGKILLed; the backup goes live and the download completes byte-exact on the same connection",
        )
    }]
}

/// Boot spec of Linux FT node `node` (0 primary, 1 backup) named `name`
/// on the rig `ns`/`w`: the test's command line with this node's iSCSI
/// node id; Debian's `kernel` with `guest_cmdline`, and `initrd`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linux_node_spec(
    t: &E2eTest,
    root: &Path,
    ns: &crate::tests_net::Netns,
    node: usize,
    name: &str,
    w: &ftrig::Wiring,
    (kernel, initrd): (&Path, &Path),
    guest_cmdline: &str,
) -> crate::emulator::BootSpec {
    let extra = format!("iscsi_node={}", node + 1);
    let mut spec = ftrig::node_spec(t, root, ns, node, name, w, &extra);
    spec.modules = vec![
        (kernel.to_path_buf(), guest_cmdline.to_string()),
        (initrd.to_path_buf(), String::new()),
    ];
    spec
}

/// What the client must receive.
fn expected_body() -> Vec<u8> {
    let mut v = Vec::with_capacity(LINES as usize * 7);
    for i in 1..=LINES {
        v.extend_from_slice(format!("{i:06}\n").as_bytes());
    }
    v
}

/// Client progress as the runner saw it.
#[derive(Default, Debug)]
struct Seen {
    killed_at: Option<Instant>,
    /// Body bytes the client had when the primary was killed.
    killed_after: usize,
    kill_note: String,
    /// First progress after the kill (bytes flowing from the backup).
    resumed_at: Option<Instant>,
    result: Option<Result<String, String>>,
}

fn run(t: &E2eTest, root: &Path) -> Outcome {
    let (kernel, initrd) = match images(root) {
        Ok(p) => p,
        Err(why) => return Outcome::Skip(why),
    };
    let mut ns = match ftrig::netns("linft", &WIRING) {
        Ok(ns) => ns,
        Err(o) => return o,
    };
    let target = match ftrig::with_storage(root, t.name, &mut ns, 4 << 20) {
        Ok(x) => x,
        Err(o) => return o,
    };
    let names = ROLES.map(|r| format!("{}-{r}", t.name));
    for n in &names {
        let _ = std::fs::remove_dir_all(root.join("build/e2e").join(n));
    }
    let guest_cmdline = format!("{LINUX_CMDLINE} ftvisor.http={GUEST_IP}");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let specs = (0..2)
        .map(|node| {
            let mut spec = linux_node_spec(
                t,
                root,
                &ns,
                node,
                &names[node],
                &WIRING,
                (&kernel, &initrd),
                &guest_cmdline,
            );
            if node == 0 {
                let (nsname, primary, backup, seen, timeout) = (
                    ns.name.clone(),
                    names[0].clone(),
                    names[1].clone(),
                    seen.clone(),
                    t.timeout,
                );
                let i: Interaction = Box::new(move |serial: &Path| {
                    let r = wait_serial(serial, READY, timeout)
                        .and_then(|_| download(&nsname, &primary, &seen));
                    // The backup serves httpd forever (or waits, if the
                    // primary never got that far): stop it once the
                    // download is over or failed (its serial holds the verdict).
                    let _ = crate::tests_ft::kill_bochs_of(&backup);
                    seen.lock().expect("seen").result = Some(r.clone());
                    r
                });
                spec.interact = Some(i);
            }
            (t.emulator, spec)
        })
        .collect();
    let runs = crate::emulator::boot_all(root, specs);
    let flag = target
        .read_block(0)
        .and_then(|b| Flag::from_block(&b).map_err(|e| format!("flag block: {e:?}")));
    drop(target);
    drop(ns);
    let (p, b) = match crate::ftrig::pair_runs(runs) {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let seen = seen.lock().expect("seen");
    let judged = (|| {
        let got = match &seen.result {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => return Err(format!("download: {e}")),
            None => return Err(format!("no download ({})", p.ended)),
        };
        let killed = seen.killed_at.ok_or("the primary was never killed")?;
        for bad in ["PANIC", "EXCEPTION", "DIVERGED"] {
            if b.serial.contains(bad) {
                return Err(format!("backup: `{bad}` on serial"));
            }
        }
        let live = b
            .serial
            .lines()
            .find(|l| l.starts_with("ft: backup: LIVE under generation"))
            .ok_or("the backup never went live")?;
        if !b.serial.contains("ft: backup: announced the guest MAC") {
            return Err("the backup did not announce the guest MAC".into());
        }
        let flag = flag.map_err(|e| format!("reading the flag: {e}"))?;
        if (flag.generation, flag.owner.0) != (1, 2) {
            return Err(format!(
                "flag generation {} owner {}, want 1 owner 2 (exactly one step, the backup)",
                flag.generation, flag.owner.0
            ));
        }
        // Bytes after the kill can only come from the backup (the
        // primary's Bochs is gone): some must have, or the test proved
        // nothing about the failover.
        let resumed = seen.resumed_at.ok_or(
            "no byte arrived after the kill: the download had ended before it (the failover was not exercised)",
        )?;
        let failover = format!("{:.1} s", resumed.duration_since(killed).as_secs_f64());
        // More arrived after the kill than any window could have held in
        // flight from the primary (the guest's and the host's TCP buffers
        // are well under 1 MiB): most of the body came from the backup.
        let total = LINES as usize * 7;
        if seen.killed_after + (1 << 20) > total {
            return Err(format!(
                "the kill came after {} of {total} bytes: less than 1 MiB was left for the backup to serve",
                seen.killed_after
            ));
        }
        Ok(format!(
            "{got}; {}; bytes flowing again {failover} after the kill; backup: {live}; flag 0 -> 1 owner 2",
            seen.kill_note
        ))
    })();
    match judged {
        Ok(note) => Outcome::Pass(note),
        Err(why) => Outcome::Fail(ftrig::with_tails(why, [&p, &b], [&names[0], &names[1]])),
    }
}

/// Runs the client in the namespace, kills the primary once `KILL_AFTER`
/// body bytes arrived, and returns the client's verdict.
fn download(ns: &str, primary: &str, seen: &std::sync::Mutex<Seen>) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["http-get", &format!("{GUEST_IP}:80"), "/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("http-get: {e}"))?;
    let out = child.stdout.take().ok_or("no client stdout")?;
    let mut last = None;
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(n) = line.strip_prefix("PROGRESS ") {
            let n: usize = n.trim().parse().unwrap_or(0);
            let mut s = seen.lock().expect("seen");
            if s.killed_at.is_none() && n >= KILL_AFTER {
                let pid = crate::tests_ft::kill_bochs_of(primary)?;
                s.killed_at = Some(Instant::now());
                s.killed_after = n;
                s.kill_note = format!("SIGKILLed the primary's Bochs (pid {pid}) after {n} bytes");
            } else if s.killed_at.is_some() && s.resumed_at.is_none() {
                s.resumed_at = Some(Instant::now());
            }
        } else {
            last = Some(line);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match (status.success(), last) {
        (true, Some(l)) => Ok(l),
        (_, l) => Err(format!("{} {}", l.unwrap_or_default(), err.trim())),
    }
}

/// `qemu-tests http-get <ip:port> <path>`: HTTP/1.0 GET, progress lines
/// (`PROGRESS <body bytes>`) every 64 KiB, then checks the body against
/// the served file. Runs inside the namespace.
pub fn client_main(args: &[String]) -> Result<String, String> {
    let (Some(addr), Some(path)) = (args.get(1), args.get(2)) else {
        return Err("usage: http-get <ip:port> <path>".into());
    };
    let sa = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let t0 = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() > Duration::from_secs(120) => {
                return Err(format!("connect {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    // Through a failover the connection stalls for the failure timeout
    // (2 s), the arbitration and the backup's catch-up (seconds in Bochs):
    // a stall longer than this is a failure, not a slow failover.
    s.set_read_timeout(Some(Duration::from_secs(CLIENT_STALL_SECS)))
        .ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let start = Instant::now();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reported = 0usize;
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read after {} bytes: {e}", data.len()))?;
        if n == 0 {
            break;
        }
        longest = longest.max(last.elapsed());
        last = Instant::now();
        data.extend_from_slice(&buf[..n]);
        if data.len() >= reported + 64 * 1024 {
            reported = data.len();
            println!("PROGRESS {}", data.len());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
        return Err(format!(
            "HTTP status: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let body = &data[head_end + 4..];
    let want = expected_body();
    if body != want.as_slice() {
        let at = body
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(body.len().min(want.len()));
        return Err(format!(
            "body differs: {} bytes, want {}; first difference at byte {at}",
            body.len(),
            want.len()
        ));
    }
    Ok(format!(
        "downloaded {} bytes byte-exact in {secs:.1} s ({:.0} KB/s), longest stall {:.1} s",
        body.len(),
        body.len() as f64 / secs / 1e3,
        longest.as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_file_is_seq_w() {
        let b = expected_body();
        assert_eq!(b.len(), 7 * LINES as usize);
        assert!(b.starts_with(b"000001\n000002\n"));
        assert!(b.ends_with(b"400000\n"));
    }
}

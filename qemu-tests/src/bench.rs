//! `make bench` (issue 9 item 7; the numbers of DESIGN.md §5, "side by side
//! in one run"): the test guest's KV service (`test=kv`,
//! `qemu-tests/guests/hello/src/kv.rs`) on the shared iSCSI disk, driven by
//! a client, with FT off (one hypervisor, no backup, the same command line
//! without `role=`/`peer=`) and on (the pair), in the same run.
//!
//! Workloads (one boot each, so that each gets its own closing
//! `ft: pair: primary done:` line; FT off and on alternate, so a change of
//! host load hits both):
//!
//! | name | guest work | client figure |
//! |---|---|---|
//! | `cpu` | `SPIN`: memory-mixing loop, no I/O, 1 kHz guest timer | steps/s |
//! | `net-rx` | `SINK`: client -> guest bulk bytes (FNV checked) | payload Mbit/s |
//! | `net-tx` | `SOURCE`: guest -> client bulk bytes (pattern checked) | payload Mbit/s |
//! | `disk` | `SET`: each a sector write + FLUSH on the LUN before `OK` | SETs/s |
//!
//! and a last FT boot that measures failover: a `SET` loop while the
//! primary's Bochs is SIGKILLed; failover time is the kill to the first
//! reply from the new primary (DESIGN.md §1.7), after which every
//! acknowledged `SET` is read back.
//!
//! Per workload: FT / non-FT throughput (client, host wall clock), log
//! Mbit/s (the primary's `ft: status:` lines during the workload), log bytes
//! per payload byte, the output delay the output rule added to frames and
//! disk writes (`io_outputs hold_mean_us`/`hold_max_us` of the primary's
//! done line) and backup lag (`lag_mean_us`/`lag_max_us`, same line).
//! Hypervisor figures are in Bochs emulated time (`clock: sync=none`,
//! `ips=50000000`: one second is 50 M emulated instructions), client
//! figures in host wall-clock seconds. Output: a table on stdout and
//! `target/bench/bench.{txt,json}` of the repository.
//!
//! The rig (shared with `make run`, [`crate::demo`]): one network namespace
//! with a bridge 10.0.4.1/24 (the storage and the client: istgt and the
//! client helpers run there), the primary's e1000 tap (10.0.4.11) and the
//! backup's (10.0.4.12), the guest at 10.0.4.20:7000.
use crate::emulator::{BootSpec, Emulator, Interaction, Run};
use crate::istgt::{self, Istgt};
use crate::tests_net::{wait_serial, Netns};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The guest and its command line (the same on every node and run).
pub const GUEST: &str = "build/testguest.elf64";
pub const GUEST_ARGS: &str = "test=kv ip=10.0.4.20/24";
pub const GUEST_ADDR: &str = "10.0.4.20:7000";
/// Every node's command line; a pair adds `role=`, `peer=`, `ip=`,
/// `iscsi_node=` (`ft_timeout` and `ft_status` in emulated ms).
pub const CMDLINE: &str = "mode=hypervisor counter=preempt nic=e1000 gw=none cluster=9 \
     heartbeat=10 ft_timeout=2000 ft_status=500 guest_net=bridge disk=iscsi \
     iscsi=10.0.4.1:3260 iscsi_target=iqn.2024-01.test.ftvisor:disk1 iscsi_lun=0";
/// `ft_status=` of [`CMDLINE`], in ms of emulated time.
const STATUS_MS: f64 = 500.0;
/// Bochs's `ips` (emulator.rs): emulated seconds = instructions / IPS.
pub const BOCHS_IPS: u64 = 50_000_000;
/// The hypervisors' status ports (`ft_status_port`, default 7701).
pub const STATUS_PORTS: [&str; 2] = ["10.0.4.11:7701", "10.0.4.12:7701"];

/// Microseconds since the Unix epoch (the clock helpers and the runner
/// share: they run on the same host).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------
// The rig: namespace, bridge, taps, istgt with the flag at generation 0.
// ---------------------------------------------------------------------

/// One namespace with storage and two node taps (see the module docs).
pub struct Rig {
    pub root: PathBuf,
    pub target: Istgt,
    /// Dropped last: stops istgt and the helpers, deletes the namespace.
    pub ns: Netns,
}

impl Rig {
    /// `tag` names the namespace and the istgt directory.
    pub fn new(root: &Path, tag: &str, lun_bytes: u64) -> Result<Rig, String> {
        istgt::available()?;
        crate::emulator::Emulator::Bochs.available()?;
        let mut ns = Netns::new(tag)?;
        ns.bridge("brft", "10.0.4.1/24")?;
        ns.tap("tapft1", None, Some("brft"))?;
        ns.tap("tapft2", None, Some("brft"))?;
        let mut target = Istgt::configure(
            &crate::tests_net::target_dir(root, tag),
            "10.0.4.1",
            3260,
            "10.0.4.0/24",
            lun_bytes,
        )?;
        let flag = ft::arbitration::FlagRecord::new(0, ft::arbitration::NodeId(0));
        target.write_block(0, &flag.to_block())?;
        target.start(&mut ns)?;
        Ok(Rig {
            root: root.to_path_buf(),
            target,
            ns,
        })
    }

    /// The flag record on the LUN (generation, owner).
    pub fn flag(&self) -> Result<(u64, u64), String> {
        let b = self.target.read_block(0)?;
        let f = ft::arbitration::FlagRecord::from_block(&b).map_err(|e| format!("{e:?}"))?;
        Ok((f.generation, f.owner.0))
    }

    /// Boot spec of node 1 (primary, or the lone hypervisor when `ft` is
    /// off) or 2 (backup); `name` is its directory under `build/e2e/`.
    pub fn spec(&self, name: &str, node: u8, ft: bool, timeout: Duration) -> BootSpec {
        let pair = match (ft, node) {
            (false, _) => String::new(),
            (true, 1) => "role=primary peer=10.0.4.12:7700".into(),
            (true, _) => "role=backup peer=10.0.4.11:7700".into(),
        };
        BootSpec {
            name: name.to_string(),
            cmdline: format!("{CMDLINE} {pair} ip=10.0.4.1{node}/24 iscsi_node={node}"),
            modules: vec![(self.root.join(GUEST), GUEST_ARGS.to_string())],
            timeout,
            stream: false,
            extra: vec![
                // Bochs's once-a-second `ips =` line is logged from a
                // SIGALRM handler that takes the log mutex; when it fires
                // while the e1000 logs a frame ("packet too short", every
                // TCP ACK) Bochs deadlocks in a futex wait. Info-level
                // logging off avoids both.
                "info: action=ignore".to_string(),
                "pci: enabled=1, chipset=i440fx, slot1=e1000".to_string(),
                format!(
                    "e1000: enabled=1, mac=52:54:00:12:34:2{node}, ethmod=tuntap, ethdev=/dev/net/tun:tapft{node}"
                ),
            ],
            kernel: None,
            interact: None,
            netns: Some(self.ns.name.clone()),
        }
    }
}

/// The pid of the Bochs that runs `build/e2e/<name>/bochsrc` of `root`
/// (started by this runner).
pub fn bochs_pid(root: &Path, name: &str) -> Option<u32> {
    let rc = root.join("build/e2e").join(name).join("bochsrc");
    let needle = format!("-f {}", rc.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("bochs") && cmd.contains(&needle) && !cmd.starts_with("ip ")).then_some(pid)
    })
}

/// SIGKILLs the Bochs of `name` (see [`bochs_pid`]); its pid.
pub fn kill_node(root: &Path, name: &str) -> Result<u32, String> {
    let pid = bochs_pid(root, name).ok_or_else(|| format!("no Bochs running for {name}"))?;
    signal(pid, "KILL").map(|()| pid)
}

/// `kill -<sig> <pid>`.
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("kill -{sig} {pid} failed"))
}

/// A helper process started by [`spawn_helper`]; killed (SIGKILL, by its
/// own pid) and reaped when dropped, so no early return leaves it running.
pub struct Helper(pub Child);

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts this runner's helper subcommand inside namespace `ns` with its
/// stdout piped (stderr to `log`).
pub fn spawn_helper(ns: &str, args: &[&str], log: &Path) -> Result<Helper, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map(Helper)
        .map_err(|e| format!("helper {}: {e}", args.join(" ")))
}

// ---------------------------------------------------------------------
// Parsing: `key=value` lines, the hypervisor's status and done lines, the
// status port's JSON.
// ---------------------------------------------------------------------

/// `key=value` words of a line (later keys win).
pub fn kv_words(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches([',', ';']).to_string()))
        .collect()
}

/// The number after `key=` in `line`, looking only after `anchor`.
pub fn num_after(line: &str, anchor: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(anchor)? + anchor.len()..];
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.trim_end_matches([',', ';']).parse().ok())
}

/// A flat JSON object of numbers and strings (the status port's line) as
/// `key -> value text`.
pub fn flat_json(s: &str) -> Option<BTreeMap<String, String>> {
    let body = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = BTreeMap::new();
    for field in body.split(',') {
        let (k, v) = field.split_once(':')?;
        let k = k.trim().strip_prefix('"')?.strip_suffix('"')?;
        out.insert(k.to_string(), v.trim().trim_matches('"').to_string());
    }
    Some(out)
}

/// One `ft: status:` line of the primary: (lag entries, lag us, log Mbit/s).
fn status_sample(line: &str) -> Option<(f64, f64, f64)> {
    let rest = line.split("lag=").nth(1)?;
    let entries: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let us: f64 = rest
        .split("entries/")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let log: f64 = line
        .split(" log=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((entries, us, log))
}

// ---------------------------------------------------------------------
// Clients (run inside the namespace as `qemu-tests <helper> ...`).
// ---------------------------------------------------------------------

/// A line-oriented connection to the guest's KV service.
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    /// Connects, retrying for `patience` (the guest may still be booting).
    pub fn open(addr: &str, patience: Duration, read_timeout: Duration) -> Result<Conn, String> {
        let sa = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let t0 = Instant::now();
        let s = loop {
            match TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > patience => return Err(format!("connect {addr}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(read_timeout)).ok();
        let w = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            w,
            r: BufReader::with_capacity(1 << 16, s),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.w.write_all(bytes).map_err(|e| format!("send: {e}"))
    }

    pub fn line(&mut self) -> Result<String, String> {
        let mut got = String::new();
        match self.r.read_line(&mut got) {
            Ok(0) => Err("connection closed by the guest".into()),
            Ok(_) => Ok(got.trim_end().to_string()),
            Err(e) => Err(format!("reply: {e}")),
        }
    }

    /// One request line, one reply line.
    pub fn ask(&mut self, req: &str) -> Result<String, String> {
        self.send(format!("{req}\n").as_bytes())?;
        self.line().map_err(|e| format!("`{req}`: {e}"))
    }
}

/// FNV-1a 64 (as the guest's `SINK` reply).
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The value the load clients store under key number `i`.
pub fn value_of(tag: &str, i: usize) -> String {
    format!(
        "{tag}-{i}-{:016x}",
        (i as u64 ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

/// `bench-client <ip:port> <workload> <args>`: one workload, then one
/// `key=value` result line (`secs` = host wall seconds of the workload).
///
/// * `spin <steps> <requests>`; `sink <bytes> <chunk>`;
///   `source <bytes> <chunk>`; `set <n>` (then every key read back,
///   untimed); `shutdown`.
pub fn client_main(args: &[String]) -> Result<String, String> {
    let usage = "usage: bench-client <ip:port> spin <steps> <reqs> | sink|source <bytes> <chunk> | set <n> | shutdown";
    let (Some(addr), Some(kind)) = (args.get(1), args.get(2)) else {
        return Err(usage.into());
    };
    let n = |i: usize| -> Result<u64, String> {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| usage.to_string())
    };
    let mut c = Conn::open(addr, Duration::from_secs(120), Duration::from_secs(600))?;
    let t0 = Instant::now();
    let out = match kind.as_str() {
        "spin" => {
            let (steps, reqs) = (n(3)?, n(4)?);
            let (mut guest_us, mut ticks) = (0u64, 0u64);
            for _ in 0..reqs {
                let r = c.ask(&format!("SPIN {steps}"))?;
                let w: Vec<&str> = r.split_whitespace().collect();
                if w.len() != 5 || w[0] != "OK" || w[1] != steps.to_string() {
                    return Err(format!("SPIN {steps}: `{r}`"));
                }
                guest_us += w[3].parse::<u64>().unwrap_or(0);
                ticks += w[4].parse::<u64>().unwrap_or(0);
            }
            format!(
                "units={} ops={reqs} guest_us={guest_us} ticks={ticks}",
                steps * reqs
            )
        }
        "sink" => {
            let (bytes, chunk) = (n(3)?, n(4)?.max(1));
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut buf = vec![0u8; chunk as usize];
            let mut done = 0;
            while done < bytes {
                let k = chunk.min(bytes - done);
                let payload = &mut buf[..k as usize];
                for b in payload.iter_mut() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = state as u8;
                }
                let want = format!("OK {k} {:016x}", fnv(FNV_START, payload));
                c.send(format!("SINK {k}\n").as_bytes())?;
                c.send(payload)?;
                let r = c.line()?;
                if r != want {
                    return Err(format!("SINK {k}: `{r}`, want `{want}`"));
                }
                done += k;
            }
            format!("units={bytes} ops={}", bytes.div_ceil(chunk))
        }
        "source" => {
            let (bytes, chunk) = (n(3)?, n(4)?.max(1));
            let mut buf = vec![0u8; chunk as usize];
            let mut done = 0;
            while done < bytes {
                let k = chunk.min(bytes - done);
                c.send(format!("SOURCE {k}\n").as_bytes())?;
                let payload = &mut buf[..k as usize];
                c.r.read_exact(payload)
                    .map_err(|e| format!("SOURCE {k}: payload: {e}"))?;
                if let Some(i) = (0..k as usize).find(|&i| payload[i] != (i % 251) as u8) {
                    return Err(format!("SOURCE {k}: byte {i} is {}", payload[i]));
                }
                let r = c.line()?;
                if r != format!("OK {k}") {
                    return Err(format!("SOURCE {k}: `{r}`"));
                }
                done += k;
            }
            format!("units={bytes} ops={}", bytes.div_ceil(chunk))
        }
        "set" => {
            let count = n(3)? as usize;
            for i in 0..count {
                let r = c.ask(&format!("SET bench{i:05} {}", value_of("b", i)))?;
                if r != "OK" {
                    return Err(format!("SET bench{i:05}: `{r}`"));
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            for i in 0..count {
                let r = c.ask(&format!("GET bench{i:05}"))?;
                if r != value_of("b", i) {
                    return Err(format!(
                        "GET bench{i:05}: `{r}`, want `{}`",
                        value_of("b", i)
                    ));
                }
            }
            return Ok(format!(
                "units={count} ops={count} secs={secs:.3} verified={count}"
            ));
        }
        "shutdown" => {
            let r = c.ask("SHUTDOWN")?;
            if r != "BYE" {
                return Err(format!("SHUTDOWN: `{r}`"));
            }
            "units=0 ops=1".into()
        }
        _ => return Err(usage.into()),
    };
    Ok(format!("{out} secs={:.3}", t0.elapsed().as_secs_f64()))
}

/// `kv-load <ip:port> <sets> <tag>`: the load client of the failover
/// measurement and of `make run`. For each i: `SET <tag>-k<i>`, then a
/// `GET` of an earlier key (checked). Prints, one line each as they
/// happen: `ack <i> <unix_us> <latency_us>` per acknowledged SET,
/// `bad <what>` on a wrong GET, `err <unix_us> <why>` when the connection
/// failed (it reconnects and repeats the SET: a SET without reply is not
/// acknowledged), then after the loop `verify <acked> <good>` (every
/// acknowledged key read back) and `done`. Exit status 1 if anything was
/// wrong.
pub fn load_main(args: &[String]) -> Result<String, String> {
    let (Some(addr), Some(sets), Some(tag)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<usize>().ok()),
        args.get(3),
    ) else {
        return Err("usage: kv-load <ip:port> <sets> <tag>".into());
    };
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    let connect = || Conn::open(addr, Duration::from_secs(300), Duration::from_secs(120));
    let mut c = connect()?;
    let mut acked = vec![false; sets];
    let mut bad = 0usize;
    let mut i = 0;
    while i < sets {
        let t = Instant::now();
        let step = (|| -> Result<(), String> {
            let r = c.ask(&format!("SET {tag}-k{i} {}", value_of(tag, i)))?;
            if r != "OK" {
                return Err(format!("SET {tag}-k{i}: `{r}`"));
            }
            acked[i] = true;
            say(format!("ack {i} {} {}", unix_us(), t.elapsed().as_micros()));
            let j = i / 2;
            let r = c.ask(&format!("GET {tag}-k{j}"))?;
            if r != value_of(tag, j) {
                bad += 1;
                say(format!("bad GET {tag}-k{j}: `{r}`"));
            }
            Ok(())
        })();
        match step {
            Ok(()) => i += 1,
            Err(why) => {
                say(format!("err {} {why}", unix_us()));
                std::thread::sleep(Duration::from_millis(200));
                c = connect()?;
            }
        }
    }
    let mut good = 0;
    for (j, _) in acked.iter().enumerate().filter(|(_, a)| **a) {
        let r = c.ask(&format!("GET {tag}-k{j}"))?;
        if r == value_of(tag, j) {
            good += 1;
        } else {
            say(format!("bad GET {tag}-k{j} after the load: `{r}`"));
        }
    }
    let n = acked.iter().filter(|a| **a).count();
    say(format!("verify {n} {good}"));
    say("done".into());
    if good == n && bad == 0 {
        Ok(String::new())
    } else {
        Err(format!(
            "{} of {n} acknowledged keys wrong, {bad} wrong GETs during the load",
            n - good
        ))
    }
}

/// `ft-watch <period_ms> <ip:port>...`: polls each status port every
/// period and prints `<ip:port> <unix_ms> <json>` (or `... ERR <why>`)
/// per poll, until stdout closes.
pub fn watch_main(args: &[String]) -> Result<String, String> {
    let period = args
        .get(1)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("usage: ft-watch <period_ms> <ip:port>...")?;
    let addrs = &args[2..];
    let out = std::io::stdout();
    loop {
        let t = Instant::now();
        for a in addrs {
            let line = match status_once(a) {
                Ok(j) => j,
                Err(e) => format!("ERR {e}"),
            };
            let mut o = out.lock();
            if writeln!(o, "{a} {} {line}", unix_us() / 1000)
                .and_then(|_| o.flush())
                .is_err()
            {
                return Ok(String::new());
            }
        }
        std::thread::sleep(Duration::from_millis(period).saturating_sub(t.elapsed()));
    }
}

/// One status-port query: the JSON line.
fn status_once(addr: &str) -> Result<String, String> {
    let sa = addr.parse().map_err(|e| format!("{e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_millis(700)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(1500))).ok();
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.starts_with('{') {
        Ok(line)
    } else {
        Err(format!("no JSON: `{line}`"))
    }
}

// ---------------------------------------------------------------------
// The bench.
// ---------------------------------------------------------------------

/// One workload: what the client runs and how its figure is named.
struct Workload {
    name: &'static str,
    about: &'static str,
    /// `bench-client` arguments after the address.
    args: Vec<String>,
    /// The throughput unit, and the factor from client units per second.
    unit: &'static str,
    scale: f64,
    /// Payload bytes on the wire (for log bytes per payload byte).
    payload: Option<u64>,
}

/// The workloads, sized so that the FT run of each takes one to three
/// minutes on a busy 2-core host and the whole bench stays under 15
/// (`quick`: a tenth, for trying the bench out).
fn workloads(quick: bool) -> Vec<Workload> {
    let q = |full: u64| if quick { full / 10 } else { full };
    let (rx, tx) = (q(1 << 20), q(3 << 20));
    let s = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>();
    let with = |name: &str, v: Vec<String>| {
        let mut a = vec![name.to_string()];
        a.extend(v);
        a
    };
    vec![
        Workload {
            name: "cpu",
            about: "SPIN: memory-mixing loop, no I/O, 1 kHz guest timer",
            args: with("spin", s(&[q(1_000_000), 8])),
            unit: "k steps/s",
            scale: 1e-3,
            payload: None,
        },
        Workload {
            name: "net-rx",
            about: "SINK: client -> guest bulk TCP, FNV-checked",
            args: with("sink", s(&[rx, 64 << 10])),
            unit: "Mbit/s",
            scale: 8e-6,
            payload: Some(rx),
        },
        Workload {
            name: "net-tx",
            about: "SOURCE: guest -> client bulk TCP, pattern-checked",
            args: with("source", s(&[tx, 128 << 10])),
            unit: "Mbit/s",
            scale: 8e-6,
            payload: Some(tx),
        },
        Workload {
            name: "disk",
            about: "SET: 512-byte sector write + FLUSH on the iSCSI LUN per request",
            args: with("set", s(&[q(300)])),
            unit: "SETs/s",
            scale: 1.0,
            payload: None,
        },
    ]
}

/// What one boot of a workload measured.
#[derive(Default)]
struct Measured {
    error: Option<String>,
    /// Client figures (`units`, `secs`, ...).
    client: BTreeMap<String, String>,
    /// Client throughput in the workload's unit.
    rate: f64,
    /// Host wall seconds of the whole boot.
    boot_wall: f64,
    /// FT: the primary's done line and the backup's verdict.
    done: Option<String>,
    verdict: Option<String>,
    /// FT: `ft: status:` samples of the primary during the workload:
    /// (lag entries, lag us, log Mbit/s).
    window: Vec<(f64, f64, f64)>,
    /// Host load average when the boot started and ended.
    load: (String, String),
}

impl Measured {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Bochs processes on this host not started by this run (other users of
/// the two cores).
fn foreign_bochs(root: &Path) -> usize {
    let mine = root.join("build/e2e").display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|p| p.parse::<u32>().is_ok())
                })
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("bochs") && c.contains("bochsrc") && !c.contains(&mine))
                .filter(|c| !c.starts_with("ip "))
                .count()
        })
        .unwrap_or(0)
}

/// Runs one workload in one boot (FT off: one node; on: the pair).
fn measure(rig: &Rig, w: &Workload, ft: bool) -> Measured {
    let mut m = Measured {
        load: (loadavg(), String::new()),
        ..Default::default()
    };
    let tag = if ft { "ft" } else { "plain" };
    let base = format!("bench-{}-{tag}", w.name);
    let names = if ft {
        vec![format!("{base}-primary"), format!("{base}-backup")]
    } else {
        vec![base.clone()]
    };
    let timeout = Duration::from_secs(420);
    let ns = rig.ns.name.clone();
    let args = w.args.clone();
    let log_dir = rig.root.join("build/e2e");
    let client_log = log_dir.join(format!("{base}-client.log"));
    let interact: Interaction = Box::new(move |serial: &Path| {
        wait_serial(serial, "kv: listening", Duration::from_secs(360))?;
        let from = std::fs::metadata(serial).map_or(0, |m| m.len()) as usize;
        let mut a = vec!["bench-client", GUEST_ADDR];
        a.extend(args.iter().map(String::as_str));
        let res = Netns::helper(&ns, &a);
        // The primary's status lines printed while the workload ran.
        let text = std::fs::read(serial).unwrap_or_default();
        let window = String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned();
        let _ = std::fs::write(&client_log, format!("{res:?}\n"));
        let bye = Netns::helper(&ns, &["bench-client", GUEST_ADDR, "shutdown"]);
        let res = res?;
        bye.map_err(|e| format!("shutdown: {e}"))?;
        let status: Vec<&str> = window
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("ft: status: role=primary"))
            .collect();
        Ok(format!("{res}\n{}", status.join("\n")))
    });
    let mut specs: Vec<(Emulator, BootSpec)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (Emulator::Bochs, rig.spec(n, i as u8 + 1, ft, timeout)))
        .collect();
    specs[0].1.interact = Some(interact);
    let t0 = Instant::now();
    let runs = crate::emulator::boot_all(&rig.root, specs);
    m.boot_wall = t0.elapsed().as_secs_f64();
    m.load.1 = loadavg();
    let runs: Vec<Run> = match runs.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(r) => r,
        Err(e) => {
            m.error = Some(e);
            return m;
        }
    };
    let p = &runs[0];
    let note = match &p.interaction {
        Some(Ok(n)) => n.clone(),
        Some(Err(e)) => {
            m.error = Some(format!("client: {e} ({}; see build/e2e/{base}*)", p.ended));
            return m;
        }
        None => {
            m.error = Some("the client did not run".into());
            return m;
        }
    };
    let mut lines = note.lines();
    m.client = kv_words(lines.next().unwrap_or(""));
    m.window = lines.filter_map(status_sample).collect();
    let f = |k: &str| m.client.get(k).and_then(|v| v.parse::<f64>().ok());
    if let (Some(units), Some(secs)) = (f("units"), f("secs")) {
        m.rate = units / secs.max(1e-9) * w.scale;
    }
    for (i, r) in runs.iter().enumerate() {
        if r.exit_code != Some(0) {
            m.error = Some(format!(
                "{}: exit code {:?} ({}); see build/e2e/{}/serial.txt",
                names[i], r.exit_code, r.ended, names[i]
            ));
        }
    }
    if ft {
        let b = &runs[1];
        m.done = p
            .serial
            .lines()
            .find(|l| l.contains("ft: pair: primary done:"))
            .map(str::to_string);
        m.verdict = b
            .serial
            .lines()
            .find(|l| l.contains("ft: pair: backup done:"))
            .and_then(|l| kv_words(l).get("verdict").cloned());
        if m.error.is_none() && m.verdict.as_deref() != Some("IDENTICAL") {
            m.error = Some(format!(
                "the backup's verdict is {:?}, want IDENTICAL",
                m.verdict
            ));
        }
        if m.error.is_none() && m.done.is_none() {
            m.error = Some("no `ft: pair: primary done:` line".into());
        }
    }
    m
}

/// The failover measurement: a SET loop, the primary SIGKILLed after
/// `kill_after` acknowledged SETs.
#[derive(Default)]
struct Failover {
    error: Option<String>,
    kill_us: u64,
    pid: u32,
    /// First reply after the kill, µs after it.
    first_reply_us: Option<u64>,
    /// The largest gap between two consecutive replies (µs).
    max_gap_us: u64,
    acked: usize,
    verified: usize,
    reconnects: usize,
    flag: Option<(u64, u64)>,
    live_line: Option<String>,
    won_line: Option<String>,
    boot_wall: f64,
}

/// Reads `kv-load`'s lines from `child`, kills the primary after
/// `kill_after` acks (0: never), and tallies. `echo` sees every line.
pub struct LoadTally {
    pub acks: Vec<(usize, u64)>,
    pub errors: Vec<String>,
    pub bad: Vec<String>,
    pub verify: Option<(usize, usize)>,
    pub kill: Option<(u64, Result<u32, String>)>,
}

pub fn follow_load(
    child: &mut Child,
    kill_after: usize,
    mut kill: impl FnMut() -> Result<u32, String>,
    mut echo: impl FnMut(&str),
) -> LoadTally {
    let mut t = LoadTally {
        acks: vec![],
        errors: vec![],
        bad: vec![],
        verify: None,
        kill: None,
    };
    let Some(out) = child.stdout.take() else {
        return t;
    };
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        echo(&line);
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("ack") if w.len() >= 3 => {
                if let (Ok(i), Ok(us)) = (w[1].parse(), w[2].parse()) {
                    t.acks.push((i, us));
                }
                if t.kill.is_none() && kill_after > 0 && t.acks.len() >= kill_after {
                    let r = kill();
                    t.kill = Some((unix_us(), r));
                }
            }
            Some("err") => t.errors.push(line.clone()),
            Some("bad") => t.bad.push(line.clone()),
            Some("verify") if w.len() >= 3 => {
                t.verify = w[1].parse().ok().zip(w[2].parse().ok());
            }
            _ => {}
        }
    }
    t
}

impl LoadTally {
    /// µs from the kill to the first acknowledged reply after it.
    pub fn failover_us(&self) -> Option<u64> {
        let (k, _) = self.kill.as_ref()?;
        self.acks.iter().find(|(_, t)| t > k).map(|(_, t)| t - k)
    }

    /// The largest gap between consecutive acks (µs).
    pub fn max_gap_us(&self) -> u64 {
        self.acks
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .max()
            .unwrap_or(0)
    }
}

fn failover(rig: &Rig, sets: usize, kill_after: usize) -> Failover {
    let mut f = Failover::default();
    let names = ["bench-failover-primary", "bench-failover-backup"];
    let timeout = Duration::from_secs(480);
    let ns = rig.ns.name.clone();
    let root = rig.root.clone();
    let log = rig.root.join("build/e2e/bench-failover-client.log");
    let interact: Interaction = Box::new(move |serial: &Path| {
        wait_serial(serial, "kv: listening", Duration::from_secs(360))?;
        let mut child = spawn_helper(&ns, &["kv-load", GUEST_ADDR, &sets.to_string(), "fo"], &log)?;
        let t = follow_load(
            &mut child.0,
            kill_after,
            || kill_node(&root, names[0]),
            |_| {},
        );
        let st = child.0.wait().map_err(|e| e.to_string())?;
        let bye = Netns::helper(&ns, &["bench-client", GUEST_ADDR, "shutdown"]);
        let (kill_us, pid) = match &t.kill {
            Some((us, Ok(pid))) => (*us, *pid),
            Some((_, Err(e))) => return Err(format!("kill: {e}")),
            None => return Err("the primary was not killed".into()),
        };
        let (acked, verified) = t.verify.unwrap_or((0, 0));
        let note = format!(
            "kill_us={kill_us} pid={pid} first_reply_us={} max_gap_us={} acked={acked} verified={verified} reconnects={} bad={} client_ok={}",
            t.failover_us().map_or("none".into(), |v| v.to_string()),
            t.max_gap_us(),
            t.errors.len(),
            t.bad.len(),
            st.success()
        );
        bye.map_err(|e| format!("shutdown: {e}; {note}"))?;
        Ok(note)
    });
    let mut specs: Vec<(Emulator, BootSpec)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (Emulator::Bochs, rig.spec(n, i as u8 + 1, true, timeout)))
        .collect();
    specs[0].1.interact = Some(interact);
    let t0 = Instant::now();
    let runs = crate::emulator::boot_all(&rig.root, specs);
    f.boot_wall = t0.elapsed().as_secs_f64();
    f.flag = rig.flag().ok();
    let runs: Vec<Run> = match runs.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(r) => r,
        Err(e) => {
            f.error = Some(e);
            return f;
        }
    };
    let (p, b) = (&runs[0], &runs[1]);
    let note = match &p.interaction {
        Some(Ok(n)) => n.clone(),
        Some(Err(e)) => {
            f.error = Some(format!("client: {e}"));
            return f;
        }
        None => {
            f.error = Some("the client did not run".into());
            return f;
        }
    };
    let k = kv_words(&note);
    let g = |key: &str| k.get(key).and_then(|v| v.parse::<u64>().ok());
    f.kill_us = g("kill_us").unwrap_or(0);
    f.pid = g("pid").unwrap_or(0) as u32;
    f.first_reply_us = g("first_reply_us");
    f.max_gap_us = g("max_gap_us").unwrap_or(0);
    f.acked = g("acked").unwrap_or(0) as usize;
    f.verified = g("verified").unwrap_or(0) as usize;
    f.reconnects = g("reconnects").unwrap_or(0) as usize;
    let line = |s: &str, key: &str| s.lines().find(|l| l.contains(key)).map(str::to_string);
    f.won_line = line(&b.serial, "ft: backup: WON the test-and-set");
    f.live_line = line(&b.serial, "ft: backup: LIVE under generation");
    let problems: Vec<String> = [
        (g("bad") != Some(0)).then(|| "wrong GETs during the load".to_string()),
        (k.get("client_ok").map(String::as_str) != Some("true"))
            .then(|| "the load client failed".to_string()),
        (f.verified != f.acked || f.acked == 0)
            .then(|| format!("{} of {} acknowledged SETs read back", f.verified, f.acked)),
        f.live_line
            .is_none()
            .then(|| "the backup did not go live".to_string()),
        (f.flag != Some((1, 2)))
            .then(|| format!("flag on the LUN {:?}, want generation 1 owner 2", f.flag)),
        (b.exit_code != Some(0))
            .then(|| format!("backup exit code {:?} ({})", b.exit_code, b.ended)),
        f.first_reply_us
            .is_none()
            .then(|| "no reply after the kill".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        f.error = Some(problems.join("; "));
    }
    f
}

// ---------------------------------------------------------------------
// Output: a text table and JSON.
// ---------------------------------------------------------------------

/// A JSON value (the bench writes a small, fixed shape).
enum J {
    B(bool),
    N(f64),
    S(String),
    O(Vec<(&'static str, J)>),
    A(Vec<J>),
    Null,
}

impl J {
    fn opt(v: Option<f64>) -> J {
        v.filter(|x| x.is_finite()).map_or(J::Null, J::N)
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = "  ".repeat(indent + 1);
        match self {
            J::B(b) => out.push_str(if *b { "true" } else { "false" }),
            J::N(x) if x.is_finite() => {
                let _ = write!(out, "{}", (x * 1000.0).round() / 1000.0);
            }
            J::N(_) | J::Null => out.push_str("null"),
            J::S(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::O(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    let _ = write!(out, "{pad}\"{k}\": ");
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}}}", "  ".repeat(indent));
            }
            J::A(items) => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    out.push_str(&pad);
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}]", "  ".repeat(indent));
            }
        }
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// Per-workload figures derived from the FT boot.
struct FtFigures {
    window_log_mbit: Option<f64>,
    window_log_bytes: Option<f64>,
    window_lag_mean_ms: Option<f64>,
    window_lag_max_ms: Option<f64>,
    done_log_mbit: Option<f64>,
    io_hold_mean_ms: Option<f64>,
    io_hold_max_ms: Option<f64>,
    io_released: Option<f64>,
    lag_mean_ms: Option<f64>,
    lag_max_ms: Option<f64>,
    throttled: Option<f64>,
    log_bytes: Option<f64>,
    entries: Option<f64>,
}

fn ft_figures(m: &Measured) -> FtFigures {
    let logs: Vec<f64> = m.window.iter().map(|s| s.2).collect();
    let lags: Vec<f64> = m.window.iter().map(|s| s.1 / 1000.0).collect();
    let d = m.done.as_deref().unwrap_or("");
    let io = |k: &str| num_after(d, "io_outputs ", k);
    let top = |k: &str| num_after(d, "primary done:", k);
    FtFigures {
        window_log_mbit: mean(&logs),
        // Each status line covers `ft_status` ms of emulated time.
        window_log_bytes: (!logs.is_empty()).then(|| {
            logs.iter()
                .map(|r| r * 1e6 / 8.0 * STATUS_MS / 1000.0)
                .sum()
        }),
        window_lag_mean_ms: mean(&lags),
        window_lag_max_ms: max(&lags),
        done_log_mbit: top("log_mbit_s="),
        io_hold_mean_ms: io("hold_mean_us=").map(|x| x / 1000.0),
        io_hold_max_ms: io("hold_max_us=").map(|x| x / 1000.0),
        io_released: io("released="),
        lag_mean_ms: top("lag_mean_us=").map(|x| x / 1000.0),
        lag_max_ms: top("lag_max_us=").map(|x| x / 1000.0),
        throttled: top("throttled="),
        log_bytes: top("log_bytes="),
        entries: top("entries="),
    }
}

/// The failover measurement as JSON.
fn failover_json(fo: &Failover) -> J {
    J::O(vec![
        ("ok", J::B(fo.error.is_none())),
        ("error", fo.error.clone().map_or(J::Null, J::S)),
        (
            "first_reply_after_kill_ms",
            J::opt(fo.first_reply_us.map(|v| v as f64 / 1000.0)),
        ),
        (
            "max_gap_between_replies_ms",
            J::N(fo.max_gap_us as f64 / 1000.0),
        ),
        ("acked_sets", J::N(fo.acked as f64)),
        ("verified_sets", J::N(fo.verified as f64)),
        ("reconnects", J::N(fo.reconnects as f64)),
        ("killed_pid", J::N(f64::from(fo.pid))),
        ("kill_unix_us", J::N(fo.kill_us as f64)),
        ("flag_generation", J::opt(fo.flag.map(|f| f.0 as f64))),
        ("flag_owner", J::opt(fo.flag.map(|f| f.1 as f64))),
        ("backup_won", fo.won_line.clone().map_or(J::Null, J::S)),
        ("backup_live", fo.live_line.clone().map_or(J::Null, J::S)),
        ("boot_wall_s", J::N(fo.boot_wall)),
    ])
}

const NOTE_TIME: &str =
    "Client throughput is host wall-clock time. In Bochs (clock: sync=none, ips=50M) \
the hypervisors' clocks are emulated-instruction time: their figures (log Mbit/s, output hold, \
backup lag, ft_timeout) count 1 s per 50 M emulated instructions, not wall seconds.";

/// `qemu-tests bench [--quick]`: runs everything, prints the table,
/// writes `target/bench/`. Exit status: failure if any measurement failed.
pub fn main(root: &Path, quick: bool, only: Option<&str>) -> Result<String, String> {
    let started = unix_us();
    let t0 = Instant::now();
    println!("bench: FT off vs on, same guest (test=kv), same disk (istgt LUN) and network (netns bridge), one boot per workload and mode");
    println!("bench: {NOTE_TIME}");
    let foreign = foreign_bochs(root);
    if foreign > 0 {
        println!("bench: note: {foreign} other Bochs process(es) are running on this host (shared cores: ratios suffer)");
    }
    let rig = Rig::new(root, "bench", 16 << 20)?;
    let mut rows = vec![];
    let selected = |name: &str| only.is_none_or(|o| o == name);
    for w in workloads(quick).into_iter().filter(|w| selected(w.name)) {
        let mut pair = vec![];
        for ft in [false, true] {
            print!(
                "bench: {:<7} FT {:<3} ... ",
                w.name,
                if ft { "on" } else { "off" }
            );
            let _ = std::io::stdout().flush();
            let m = measure(&rig, &w, ft);
            match &m.error {
                None => println!(
                    "{:.2} {} ({:.1} s of client time, boot {:.0} s)",
                    m.rate,
                    w.unit,
                    m.client
                        .get("secs")
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(0.0),
                    m.boot_wall
                ),
                Some(e) => println!("FAILED: {e}"),
            }
            pair.push(m);
        }
        let on = pair.pop().unwrap_or_default();
        let off = pair.pop().unwrap_or_default();
        rows.push((w, off, on));
    }
    let fo = selected("failover").then(|| {
        print!("bench: failover (SET loop, primary SIGKILLed after 20 acknowledged SETs) ... ");
        let _ = std::io::stdout().flush();
        let fo = failover(&rig, if quick { 40 } else { 60 }, 20);
        match &fo.error {
            None => println!(
                "{} ms to the first reply from the new primary",
                fo.first_reply_us
                    .map_or("-".into(), |v| format!("{:.0}", v as f64 / 1000.0))
            ),
            Some(e) => println!("FAILED: {e}"),
        }
        fo
    });
    drop(rig);
    let total = t0.elapsed().as_secs_f64();

    // The table.
    let mut t = String::new();
    let _ = writeln!(
        t,
        "ftvisor bench ({}): FT off vs on in one run, two Bochs 3.0 (VMX, counter=preempt) on {} host core(s); {:.0} s in all",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total
    );
    let _ = writeln!(t, "{NOTE_TIME}");
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:<8} {:>10} {:>10} {:<10} {:>7} {:>9} {:>9} {:>15} {:>15}",
        "workload",
        "FT off",
        "FT on",
        "unit",
        "on/off",
        "log Mb/s",
        "log/pay",
        "io hold ms",
        "backup lag ms"
    );
    let _ = writeln!(
        t,
        "{:<8} {:>10} {:>10} {:<10} {:>7} {:>9} {:>9} {:>15} {:>15}",
        "", "", "", "", "", "(window)", "bytes", "mean / max", "mean / max"
    );
    let mut json_rows = vec![];
    let mut failed = vec![];
    for (w, off, on) in &rows {
        let f = ft_figures(on);
        let ratio = (off.ok() && on.ok() && off.rate > 0.0).then(|| on.rate / off.rate);
        let per_payload = w.payload.zip(f.window_log_bytes).map(|(p, b)| b / p as f64);
        let _ = writeln!(
            t,
            "{:<8} {:>10} {:>10} {:<10} {:>7} {:>9} {:>9} {:>15} {:>15}",
            w.name,
            fmt(off.ok().then_some(off.rate), 2),
            fmt(on.ok().then_some(on.rate), 2),
            w.unit,
            fmt(ratio, 3),
            fmt(f.window_log_mbit, 2),
            fmt(per_payload, 2),
            format!(
                "{} / {}",
                fmt(f.io_hold_mean_ms, 1),
                fmt(f.io_hold_max_ms, 1)
            ),
            format!("{} / {}", fmt(f.lag_mean_ms, 0), fmt(f.lag_max_ms, 0)),
        );
        for (mode, m) in [("off", off), ("on", on)] {
            if let Some(e) = &m.error {
                failed.push(format!("{} FT {mode}: {e}", w.name));
            }
        }
        let side = |m: &Measured| {
            J::O(vec![
                ("ok", J::B(m.ok())),
                ("error", m.error.clone().map_or(J::Null, J::S)),
                ("rate", J::opt(m.ok().then_some(m.rate))),
                (
                    "client",
                    J::O(
                        ["units", "ops", "secs", "guest_us", "ticks", "verified"]
                            .iter()
                            .filter_map(|k| {
                                m.client
                                    .get(*k)
                                    .and_then(|v| v.parse().ok())
                                    .map(|v| (*k, J::N(v)))
                            })
                            .collect(),
                    ),
                ),
                ("boot_wall_s", J::N(m.boot_wall)),
                ("loadavg_start", J::S(m.load.0.clone())),
                ("loadavg_end", J::S(m.load.1.clone())),
            ])
        };
        json_rows.push(J::O(vec![
            ("workload", J::S(w.name.into())),
            ("about", J::S(w.about.into())),
            ("client_args", J::S(w.args.join(" "))),
            ("unit", J::S(w.unit.into())),
            ("ft_off", side(off)),
            ("ft_on", side(on)),
            ("ratio_on_off", J::opt(ratio)),
            ("log_mbit_s_window", J::opt(f.window_log_mbit)),
            ("log_bytes_window", J::opt(f.window_log_bytes)),
            ("log_bytes_per_payload_byte", J::opt(per_payload)),
            ("status_samples_window", J::N(on.window.len() as f64)),
            ("lag_window_mean_ms", J::opt(f.window_lag_mean_ms)),
            ("lag_window_max_ms", J::opt(f.window_lag_max_ms)),
            ("io_hold_mean_ms", J::opt(f.io_hold_mean_ms)),
            ("io_hold_max_ms", J::opt(f.io_hold_max_ms)),
            ("io_outputs_released", J::opt(f.io_released)),
            ("lag_mean_ms", J::opt(f.lag_mean_ms)),
            ("lag_max_ms", J::opt(f.lag_max_ms)),
            ("throttled", J::opt(f.throttled)),
            ("boot_log_mbit_s", J::opt(f.done_log_mbit)),
            ("boot_log_bytes", J::opt(f.log_bytes)),
            ("boot_log_entries", J::opt(f.entries)),
            ("primary_done_line", on.done.clone().map_or(J::Null, J::S)),
            ("backup_verdict", on.verdict.clone().map_or(J::Null, J::S)),
        ]));
    }
    if let Some(fo) = &fo {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "failover: {} ms from SIGKILL of the primary to the first reply from the new primary (wall); longest gap between replies {:.0} ms; {} of {} acknowledged SETs read back; {} reconnect(s); flag {}",
            fmt(fo.first_reply_us.map(|v| v as f64 / 1000.0), 0),
            fo.max_gap_us as f64 / 1000.0,
            fo.verified,
            fo.acked,
            fo.reconnects,
            fo.flag.map_or("unreadable".into(), |(g, o)| format!("generation {g} owner {o}")),
        );
        if let Some(e) = &fo.error {
            failed.push(format!("failover: {e}"));
        }
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "columns: FT off/on = client throughput; on/off = their ratio (DESIGN.md §5 goal >= 0.97); log Mb/s = mean of the primary's `ft: status:` log rate while the workload ran (emulated time); log/pay = log bytes per payload byte (net workloads; VMware FT: about 1 for receive); io hold = output-rule delay of guest frames and disk writes (primary done line, whole boot, emulated ms); backup lag = log entry sent -> applied on the backup (done line, emulated ms).");
    let _ = writeln!(t, "DESIGN.md §5 (VMware FT): ratio 0.94-0.99; log 1.5-18 Mbit/s; receive 604/940 Mbit/s, transmit 855; failure detected within a few seconds; backup lag < 100 ms.");
    if !failed.is_empty() {
        let _ = writeln!(t);
        for e in &failed {
            let _ = writeln!(t, "FAILED: {e}");
        }
    }
    println!();
    print!("{t}");

    let json = J::O(vec![
        ("bench", J::S("ftvisor make bench".into())),
        ("mode", J::S(if quick { "quick" } else { "full" }.into())),
        ("started_unix_us", J::N(started as f64)),
        ("total_wall_s", J::N(total)),
        ("time_bases", J::S(NOTE_TIME.into())),
        ("bochs_ips", J::N(BOCHS_IPS as f64)),
        (
            "host_cpus",
            J::N(std::thread::available_parallelism().map_or(0, |n| n.get()) as f64),
        ),
        ("foreign_bochs_at_start", J::N(foreign as f64)),
        (
            "cmdline",
            J::S(CMDLINE.split_whitespace().collect::<Vec<_>>().join(" ")),
        ),
        ("guest", J::S(GUEST_ARGS.into())),
        ("workloads", J::A(json_rows)),
        ("failover", fo.as_ref().map_or(J::Null, failover_json)),
        ("failures", J::A(failed.iter().cloned().map(J::S).collect())),
    ]);
    let mut js = String::new();
    json.write(&mut js, 0);
    js.push('\n');
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("bench.json"), js).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("bench.txt"), &t).map_err(|e| e.to_string())?;
    println!(
        "bench: wrote {} and bench.txt",
        dir.join("bench.json").display()
    );
    if failed.is_empty() {
        Ok(format!("{:.0} s", total))
    } else {
        Err(format!("{} measurement(s) failed", failed.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_done_lines() {
        let s = "ft: status: role=primary state=paired generation=0 seq=846 acked=751 applied=438 lag=408 entries/127346 us (guest 515609 us) log=3.88 Mbit/s heartbeat_age=0 ms";
        assert_eq!(status_sample(s), Some((408.0, 127346.0, 3.88)));
        assert_eq!(status_sample("ft: status: role=backup"), None);
        let d = "ft: pair: primary done: entries=10 log_bytes=99 acked=10 applied=10 outputs held=4 released=4 violations=0 hold_max_us=7 hold_mean_us=5 io_outputs held=30 released=30 violations=0 hold_max_us=900 hold_mean_us=300 lag_mean_us=42 lag_max_us=77";
        assert_eq!(num_after(d, "io_outputs ", "hold_max_us="), Some(900.0));
        assert_eq!(num_after(d, "primary done:", "hold_max_us="), Some(7.0));
        assert_eq!(num_after(d, "primary done:", "lag_max_us="), Some(77.0));
        assert_eq!(num_after(d, "nowhere", "lag_max_us="), None);
    }

    #[test]
    fn parses_the_status_port_json() {
        let j = r#"{"role":"backup","state":"live","generation":1,"seq":5,"log_mbit_s":"0.25"}"#;
        let m = flat_json(j).expect("parses");
        assert_eq!(m["role"], "backup");
        assert_eq!(m["generation"], "1");
        assert_eq!(m["log_mbit_s"], "0.25");
        assert!(flat_json("garbage").is_none());
    }

    #[test]
    fn json_writer_escapes_and_rounds() {
        let mut s = String::new();
        J::O(vec![
            ("a", J::N(1.23456)),
            ("b", J::S("x\"y\n".into())),
            ("c", J::A(vec![J::Null, J::N(f64::NAN)])),
        ])
        .write(&mut s, 0);
        assert_eq!(
            s,
            "{\n  \"a\": 1.235,\n  \"b\": \"x\\\"y\\u000a\",\n  \"c\": [\n    null,\n    null\n  ]\n}"
        );
    }

    #[test]
    fn tally_measures_failover_from_the_kill() {
        let t = LoadTally {
            acks: vec![(0, 100), (1, 200), (2, 5_300), (3, 5_400)],
            errors: vec![],
            bad: vec![],
            verify: None,
            kill: Some((250, Ok(1))),
        };
        assert_eq!(t.failover_us(), Some(5_050));
        assert_eq!(t.max_gap_us(), 5_100);
    }
}

//! The initiator against a real iSCSI target: istgt (Debian package
//! `istgt`), run in the foreground on 127.0.0.1 with a file-backed 64 MiB
//! LUN (recipe: shared/notes/iscsi.md). Skips with a message when istgt is
//! not installed. Cross-checks READ CAPACITY(16) with libiscsi's
//! `iscsi-readcapacity16` when that is installed.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use drivers::arbitration::{Acquire, Arbiter, LunFlag};
use drivers::iscsi::tcp::{StdClock, TcpTransport};
use drivers::iscsi::{Clock, Event, Initiator, SessionConfig, Transport};
use drivers::Error;
use ft::arbitration::{arbitrate, FlagRecord, NodeId, SharedStorage, Verdict};

const ISTGT: &str = "/usr/sbin/istgt";
const TARGET: &str = "iqn.2024-01.test.spike:disk1";
const FLAG_LBA: u64 = 131_000;

/// istgt child and its scratch directory; both go away on drop, also when
/// an assertion fails.
struct Istgt {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Istgt {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KEEP_ISTGT_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn start_istgt() -> Istgt {
    let pid = std::process::id();
    let port = 20_000 + (pid % 20_000) as u16 * 2;
    let dir = std::env::temp_dir().join(format!("ftvisor-istgt-{pid}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    fs::File::create(dir.join("disk0.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    fs::write(dir.join("auth.conf"), "").unwrap();
    let conf = format!(
        r#"[Global]
  NodeBase "iqn.2024-01.test.spike"
  PidFile {d}/istgt.pid
  AuthFile {d}/auth.conf
  MediaDirectory {d}
  LogFacility "local7"
  Timeout 30
  NopInInterval 1
  DiscoveryAuthMethod None
  MaxSessions 16
  MaxConnections 4
[UnitControl]
  AuthMethod None
  Portal UC1 127.0.0.1:{uc}
  Netmask 127.0.0.1
[PortalGroup1]
  Portal DA1 127.0.0.1:{port}
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.1/32
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
    fs::write(dir.join("istgt.conf"), conf).unwrap();
    let log = fs::File::create(dir.join("istgt.log")).unwrap();
    let child = Command::new(ISTGT)
        .arg("-c")
        .arg(dir.join("istgt.conf"))
        .arg("-D")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn istgt");
    let guard = Istgt { child, dir, port };
    let addr = guard.addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "istgt did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

impl Istgt {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

fn config(name: &str, isid_tail: u8) -> SessionConfig {
    let mut cfg = SessionConfig::new(
        &format!("iqn.2024-01.test.ftvisor:{name}"),
        TARGET,
        [0x80, 0x46, 0x54, 0x56, 0, isid_tail],
    );
    // Small enough that 64 KiB reads arrive as several Data-In PDUs.
    cfg.offer.max_recv_data_segment_length = 8192;
    cfg.nop_interval_ms = 1000;
    cfg.reconnect_delay_ms = 100;
    cfg
}

fn login<T: Transport>(t: T, name: &str, isid_tail: u8) -> Initiator<T, StdClock> {
    let mut ini = Initiator::login(t, StdClock::new(), config(name, isid_tail), 0).expect("login");
    ini.read_capacity16().expect("read capacity");
    ini
}

/// A transport that breaks the connection once on request: the next
/// `recv` after `break_now` reports the connection closed.
struct Flaky {
    inner: TcpTransport,
    break_now: bool,
    breaks: u32,
}

impl Transport for Flaky {
    fn send(&mut self, b: &[u8]) -> drivers::Result<usize> {
        self.inner.send(b)
    }
    fn recv(&mut self, buf: &mut [u8]) -> drivers::Result<usize> {
        if std::mem::take(&mut self.break_now) {
            self.breaks += 1;
            return Err(Error::ConnectionClosed);
        }
        self.inner.recv(buf)
    }
    fn reconnect(&mut self) -> drivers::Result<()> {
        self.inner.reconnect()
    }
}

fn libiscsi_capacity(port: u16) -> Option<(u64, u64)> {
    let url = format!("iscsi://127.0.0.1:{port}/{TARGET}/0");
    let out = Command::new("timeout")
        .args(["10", "iscsi-readcapacity16", &url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("iscsi-readcapacity16: {}", text.replace('\n', " | "));
    let num = |key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((
        num("RETURNED LOGICAL BLOCK ADDRESS")?,
        num("LOGICAL BLOCK LENGTH IN BYTES")?,
    ))
}

#[test]
fn initiator_against_istgt() {
    if !Path::new(ISTGT).exists() {
        println!(
            "SKIP: {ISTGT} not installed (apt-get install istgt); iSCSI integration test not run"
        );
        return;
    }
    let target = start_istgt();
    let addr = target.addr();
    let mut ini = login(TcpTransport::new(addr), "main", 1);
    let n = ini.session().negotiated().clone();
    println!("negotiated: {n:?}");

    let inq = ini.inquiry().unwrap();
    println!("INQUIRY: {inq:?}");
    assert_eq!(inq.vendor, "FreeBSD");
    assert_eq!(inq.peripheral_type, 0, "direct-access block device");
    ini.test_unit_ready().unwrap();

    let cap = ini.read_capacity16().unwrap();
    assert_eq!((cap.blocks, cap.block_size), (131_072, 512));
    if Path::new("/usr/bin/iscsi-readcapacity16").exists() {
        let (last, bs) = libiscsi_capacity(target.port).expect("iscsi-readcapacity16 output");
        assert_eq!(
            (last + 1, bs),
            (cap.blocks, cap.block_size as u64),
            "libiscsi agrees"
        );
    } else {
        println!("iscsi-readcapacity16 not installed: cross-check skipped");
    }

    // 1 MiB round trip: immediate data + R2T-solicited Data-Out, and many
    // Data-In PDUs (our MaxRecvDataSegmentLength is 8 KiB).
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(data.len() > n.max_send_data_segment_length as usize);
    let t0 = Instant::now();
    ini.write16(2048, data.clone()).unwrap();
    let tw = t0.elapsed();
    let t1 = Instant::now();
    let back = ini.read16(2048, (data.len() / 512) as u32).unwrap();
    let tr = t1.elapsed();
    assert!(back == data, "1 MiB read back differs");
    println!(
        "1 MiB WRITE(16) {:.1} MiB/s, READ(16) {:.1} MiB/s over loopback",
        1.0 / tw.as_secs_f64(),
        1.0 / tr.as_secs_f64()
    );
    ini.synchronize_cache().unwrap();

    // Arbitration: init, CAW success, CAW MISCOMPARE with a stale record.
    let arb = Arbiter::new(FLAG_LBA);
    let r0 = arb.init(&mut ini, NodeId(0)).unwrap();
    assert_eq!(arb.read(&mut ini).unwrap(), r0);
    let won = arb.try_acquire_from(&mut ini, r0, NodeId(1)).unwrap();
    assert_eq!(won, Acquire::Won(FlagRecord::new(1, NodeId(1))));
    assert_eq!(
        ini.compare_and_write(
            FLAG_LBA,
            &r0.to_block(),
            &FlagRecord::new(1, NodeId(2)).to_block()
        ),
        Err(Error::Miscompare),
        "stale generation must MISCOMPARE"
    );
    assert_eq!(
        arb.try_acquire(&mut ini, 0, NodeId(2)).unwrap(),
        Acquire::Lost(FlagRecord::new(1, NodeId(1)))
    );
    assert_eq!(arb.read(&mut ini).unwrap(), FlagRecord::new(1, NodeId(1)));

    // The same flag as ft's SharedStorage: ft::arbitration::arbitrate.
    {
        let mut lun = LunFlag::new(&mut ini, arb);
        assert_eq!(lun.read_flag(), Ok(FlagRecord::new(1, NodeId(1))));
        assert_eq!(
            arbitrate(&mut lun, 0, NodeId(2)),
            Verdict::Lost(FlagRecord::new(1, NodeId(1)))
        );
        assert_eq!(
            arbitrate(&mut lun, 1, NodeId(2)),
            Verdict::Won(FlagRecord::new(2, NodeId(2)))
        );
        // Node 2 again from generation 1 (as after a lost reply): its win.
        assert_eq!(
            arbitrate(&mut lun, 1, NodeId(2)),
            Verdict::Won(FlagRecord::new(2, NodeId(2)))
        );
        assert_eq!(lun.last_error, None);
    }
    // Back to generation 1 for the race below.
    arb.init(&mut ini, NodeId(0)).unwrap();
    arb.try_acquire(&mut ini, 0, NodeId(1)).unwrap();

    // Keepalive: stay idle past istgt's NopInInterval (1 s) and our NOP-Out
    // interval; the session must still work.
    std::thread::sleep(Duration::from_millis(2500));
    ini.test_unit_ready().unwrap();

    // Race: two sessions, 50 rounds, barrier per round.
    let rounds = 50u64;
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = (0..2u64)
        .map(|id| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let me = NodeId(10 + id);
                let mut ini = login(TcpTransport::new(addr), &format!("racer{id}"), 10 + id as u8);
                let mut wins = Vec::new();
                for g in 0..rounds {
                    barrier.wait();
                    let r = arb.try_acquire(&mut ini, 1 + g, me).expect("try_acquire");
                    wins.push(matches!(r, Acquire::Won(rec) if rec.owner == me && rec.generation == 2 + g));
                    barrier.wait();
                }
                ini.logout().expect("racer logout");
                wins
            })
        })
        .collect();
    let results: Vec<Vec<bool>> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    let one = (0..rounds as usize)
        .filter(|&g| results[0][g] as u8 + results[1][g] as u8 == 1)
        .count();
    let w0 = results[0].iter().filter(|&&w| w).count();
    let w1 = results[1].iter().filter(|&&w| w).count();
    println!("CAW race: rounds={rounds} exactly_one_winner={one} wins racer0={w0} racer1={w1}");
    assert_eq!(one, rounds as usize, "every round has exactly one winner");
    let fin = arb.read(&mut ini).unwrap();
    assert_eq!(fin.generation, 1 + rounds);

    // Reconnect with task retry: the connection breaks while a READ is in
    // flight; the session logs in again and re-issues it.
    let mut flaky = login(
        Flaky {
            inner: TcpTransport::new(addr),
            break_now: false,
            breaks: 0,
        },
        "flaky",
        20,
    );
    flaky.read16(2048, 16).unwrap();
    flaky_break(&mut flaky);
    let again = flaky.read16(2048, 128).unwrap();
    assert!(again == data[..128 * 512], "read after reconnect");
    assert_eq!(flaky.transport_mut().breaks, 1);
    let lost = flaky
        .take_events()
        .iter()
        .filter(|e| matches!(e, Event::ConnectionLost(_)))
        .count();
    assert_eq!(
        lost, 1,
        "one connection loss, recovered by re-login and retry"
    );
    flaky.logout().expect("flaky logout");

    let t = ini.logout().expect("logout");
    drop(t);
    let log = fs::read_to_string(target.dir.join("istgt.log")).unwrap_or_default();
    assert!(
        !log.contains("iscsi_read_pdu() failed"),
        "istgt saw a malformed PDU:\n{log}"
    );
}

fn flaky_break<C: Clock>(ini: &mut Initiator<Flaky, C>) {
    ini.transport_mut().break_now = true;
}

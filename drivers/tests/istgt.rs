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

use drivers::arbitration::{reservation_key, Acquire, Arbiter, FlagStep, LunFlag};
use drivers::iscsi::tcp::{StdClock, TcpTransport};
use drivers::iscsi::{Clock, Event, Initiator, SessionConfig, Transport};
use drivers::scsi::{PrOutAction, PrOutParams, PrType};
use drivers::Error;
use ft::arbitration::{arbitrate, FlagRecord, NodeId, SharedStorage, Verdict};
use ft::FtError;

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
        self.stop();
        if std::env::var_os("KEEP_ISTGT_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The tests of this file run in parallel: each gets its own port pair
/// and directory (`which` 0, 1, ...).
fn start_istgt() -> Istgt {
    start_istgt_n(0)
}

fn start_istgt_n(which: u16) -> Istgt {
    let pid = std::process::id();
    let port = 20_000 + (pid % 5_000) as u16 * 8 + which * 2;
    let dir = std::env::temp_dir().join(format!("ftvisor-istgt-{pid}-{which}"));
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
    let child = spawn_istgt(&dir, "istgt.log");
    let guard = Istgt { child, dir, port };
    guard.wait_listening();
    guard
}

fn spawn_istgt(dir: &Path, log: &str) -> Child {
    let log = fs::File::create(dir.join(log)).unwrap();
    Command::new(ISTGT)
        .arg("-c")
        .arg(dir.join("istgt.conf"))
        .arg("-D")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn istgt")
}

impl Istgt {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn wait_listening(&self) {
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "istgt did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    fn stop(&mut self) {
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
    }

    /// Stops istgt and starts it again on the same LUN image and port
    /// (its new log: `istgt-2.log`).
    fn restart(&mut self) {
        self.stop();
        self.child = spawn_istgt(&self.dir, "istgt-2.log");
        self.wait_listening();
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
/// `recv` after `break_now` reports the connection closed. `on_reconnect`
/// runs (once) before the next reconnect: what the world does while this
/// initiator is away.
struct Flaky {
    inner: TcpTransport,
    break_now: bool,
    breaks: u32,
    on_reconnect: Option<Box<dyn FnOnce()>>,
}

impl Flaky {
    fn new(addr: SocketAddr) -> Self {
        Flaky {
            inner: TcpTransport::new(addr),
            break_now: false,
            breaks: 0,
            on_reconnect: None,
        }
    }
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
        if let Some(f) = self.on_reconnect.take() {
            f();
        }
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
    let mut flaky = login(Flaky::new(addr), "flaky", 20);
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

const KEY_A: u64 = 0x4654_0000_0000_0001;
const KEY_B: u64 = 0x4654_0000_0000_0002;
const WERO: PrType = PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY;

fn params(reservation_key: u64, service_action_key: u64) -> PrOutParams {
    PrOutParams {
        reservation_key,
        service_action_key,
        ..PrOutParams::default()
    }
}

fn block(b: u8) -> Vec<u8> {
    vec![b; 512]
}

/// SCSI-3 persistent reservations on istgt 0.4 (issue 14), with what it
/// answers printed as `PR:` lines: two sessions A and B (different
/// initiator names and ISIDs) register, A reserves Write Exclusive -
/// Registrants Only, both write, A preempts-and-aborts B, B's writes (also
/// a retry after a reconnect) get RESERVATION CONFLICT while A's go
/// through; then the same through `LunFlag::register`/`fence`; then an
/// istgt restart (no APTPL: the registrations are gone).
#[test]
fn persistent_reservations_against_istgt() {
    if !Path::new(ISTGT).exists() {
        println!("SKIP: {ISTGT} not installed; persistent reservation test not run");
        return;
    }
    let mut target = start_istgt_n(1);
    let addr = target.addr();
    let mut a = login(TcpTransport::new(addr), "pr-a", 31);
    let mut b = login(Flaky::new(addr), "pr-b", 32);
    let mut c = login(TcpTransport::new(addr), "pr-c", 33);

    let keys = a.read_keys().unwrap();
    assert!(keys.keys.is_empty(), "{keys:?}");
    assert_eq!(a.read_reservation().unwrap().reservation, None);

    // APTPL is refused: istgt keeps registrations in memory only.
    let aptpl = PrOutParams {
        aptpl: true,
        ..params(0, KEY_A)
    };
    let r = a.persistent_reserve_out(PrOutAction::Register, PrType::NONE, &aptpl);
    println!("PR: REGISTER with APTPL=1 -> {r:?}");
    assert!(
        matches!(&r, Err(Error::Scsi { status: 2, sense: Some(s) }) if (s.key.0, s.asc, s.ascq) == (5, 0x26, 0)),
        "APTPL: {r:?}"
    );

    // Both register; A reserves WERO; B's RESERVE of the held type with
    // its own key conflicts (istgt: only the holder's key and port).
    a.register_key(KEY_A).unwrap();
    b.register_key(KEY_B).unwrap();
    let mut keys = a.read_keys().unwrap().keys;
    keys.sort();
    assert_eq!(keys, [KEY_A, KEY_B]);
    a.persistent_reserve_out(PrOutAction::Reserve, WERO, &params(KEY_A, 0))
        .unwrap();
    let rsv = b.read_reservation().unwrap().reservation.unwrap();
    assert_eq!((rsv.key, rsv.scope, rsv.ty), (KEY_A, 0, WERO));
    let r = b.persistent_reserve_out(PrOutAction::Reserve, WERO, &params(KEY_B, 0));
    println!("PR: RESERVE WERO by the other registrant while A holds it -> {r:?}");
    assert_eq!(r, Err(Error::ReservationConflict));
    // A second RESERVE by the holder is GOOD.
    a.persistent_reserve_out(PrOutAction::Reserve, WERO, &params(KEY_A, 0))
        .unwrap();

    // Both registrants write; an unregistered nexus reads but cannot write.
    a.write16(100, block(0xa1)).unwrap();
    b.write16(101, block(0xb1)).unwrap();
    b.compare_and_write(101, &block(0xb1), &block(0xb2))
        .unwrap();
    assert_eq!(c.write16(102, block(0xc1)), Err(Error::ReservationConflict));
    assert_eq!(
        c.compare_and_write(101, &block(0xb2), &block(0xc1)),
        Err(Error::ReservationConflict)
    );
    assert_eq!(c.read16(101, 1).unwrap(), block(0xb2));

    // A preempts and aborts B.
    a.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(KEY_A, KEY_B))
        .unwrap();
    assert_eq!(a.read_keys().unwrap().keys, [KEY_A]);
    let rsv = a.read_reservation().unwrap().reservation.unwrap();
    assert_eq!((rsv.key, rsv.ty), (KEY_A, WERO), "A still holds it");
    assert_eq!(b.write16(101, block(0xb3)), Err(Error::ReservationConflict));
    assert_eq!(
        b.compare_and_write(101, &block(0xb2), &block(0xb3)),
        Err(Error::ReservationConflict)
    );
    assert_eq!(b.synchronize_cache(), Err(Error::ReservationConflict));
    assert_eq!(b.read16(101, 1).unwrap(), block(0xb2), "reads stay allowed");
    a.write16(101, block(0xa2)).unwrap();
    // Preempting a key that is gone: GOOD (idempotent on istgt).
    let r = a.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(KEY_A, KEY_B));
    println!("PR: PREEMPT AND ABORT of a key no longer registered -> {r:?}");
    assert_eq!(r, Ok(()));
    // The fenced B cannot preempt back: it is not registered.
    let r = b.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(KEY_B, KEY_A));
    println!("PR: PREEMPT AND ABORT from the preempted nexus -> {r:?}");
    assert_eq!(r, Err(Error::ReservationConflict));

    // Getting back in: a REGISTER naming the old key conflicts; a REGISTER
    // from scratch (reservation key 0) and REGISTER AND IGNORE EXISTING
    // KEY are GOOD, and B writes again. Fencing holds only while the
    // fenced node does not register again.
    let r = b.persistent_reserve_out(PrOutAction::Register, PrType::NONE, &params(KEY_B, KEY_B));
    println!("PR: preempted B: REGISTER with its old key -> {r:?}");
    assert_eq!(r, Err(Error::ReservationConflict));
    let r = b.persistent_reserve_out(PrOutAction::Register, PrType::NONE, &params(0, KEY_B));
    println!("PR: preempted B: REGISTER from scratch (key 0 -> B) -> {r:?}");
    assert_eq!(r, Ok(()));
    b.write16(103, block(0xb4)).unwrap();
    b.register_key(KEY_B).unwrap();
    b.write16(103, block(0xb5)).unwrap();

    // A zombie's retry: B's WRITE is sent, its connection breaks before
    // the status arrives; while B reconnects, node A (another nexus of it,
    // registered with A's key) preempts B and writes its own data; B's
    // re-issued WRITE gets RESERVATION CONFLICT and A's data stays.
    let mut a2 = login(TcpTransport::new(addr), "pr-a-flag", 34);
    a2.register_key(KEY_A).unwrap();
    b.transport_mut().on_reconnect = Some(Box::new(move || {
        a2.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(KEY_A, KEY_B))
            .expect("preempt while B reconnects");
        a2.write16(104, block(0xa4))
            .expect("A writes while B is away");
        a2.logout().expect("a2 logout");
    }));
    b.transport_mut().break_now = true;
    let r = b.write16(104, block(0xb6));
    println!("PR: B's WRITE re-issued after a reconnect, preempted meanwhile -> {r:?}");
    assert_eq!(r, Err(Error::ReservationConflict));
    assert_eq!(b.transport_mut().breaks, 1);
    assert!(b.transport_mut().on_reconnect.is_none(), "the hook ran");
    assert_eq!(a.read16(104, 1).unwrap(), block(0xa4));

    // The same through LunFlag (what ft::node calls), one nexus per node
    // (the flag sessions): both register (the first also reserves), A
    // wins the flag and fences B, whose registration is the table's last
    // entry: clean.
    a.persistent_reserve_out(PrOutAction::Clear, PrType::NONE, &params(KEY_A, 0))
        .unwrap();
    assert!(a.read_keys().unwrap().keys.is_empty());
    assert_eq!(a.read_reservation().unwrap().reservation, None);
    let arb = Arbiter::new(FLAG_LBA);
    arb.init(&mut a, NodeId(0)).unwrap();
    let mut fa = login(TcpTransport::new(addr), "ft1", 41);
    let mut fb = login(TcpTransport::new(addr), "ft2", 42);
    let (na, nb) = (NodeId(1), NodeId(2));
    assert_eq!(reservation_key(na), KEY_A);
    assert_eq!(LunFlag::new(&mut fa, arb).register(na), Ok(()));
    assert_eq!(LunFlag::new(&mut fb, arb).register(nb), Ok(()));
    let rsv = a.read_reservation().unwrap().reservation.unwrap();
    assert_eq!(
        (rsv.key, rsv.ty),
        (KEY_A, WERO),
        "the first to register reserved"
    );
    fb.write16(111, block(0xb7)).unwrap();
    {
        let mut lun = LunFlag::new(&mut fa, arb);
        assert_eq!(
            arbitrate(&mut lun, 0, na),
            Verdict::Won(FlagRecord::new(1, na))
        );
        assert_eq!(lun.fence(na, nb), Ok(()));
        assert_eq!(lun.fence(na, nb), Ok(()), "idempotent");
        assert_eq!(lun.last_error, None);
    }
    assert_eq!(fa.read_keys().unwrap().keys, [KEY_A]);
    assert_eq!(
        fb.write16(111, block(0xb8)),
        Err(Error::ReservationConflict)
    );
    fa.write16(111, block(0xa7)).unwrap();
    {
        let mut lun = LunFlag::new(&mut fb, arb);
        assert_eq!(
            arbitrate(&mut lun, 0, nb),
            Verdict::Lost(FlagRecord::new(1, na)),
            "the fenced node still reads the flag"
        );
        assert_eq!(
            lun.try_acquire(1, nb),
            Err(FtError::Fenced),
            "its CAW conflicts"
        );
        assert_eq!(lun.fence(nb, na), Err(FtError::Fenced));
        assert_eq!(
            lun.last_error,
            Some((FlagStep::Preempt, Error::ReservationConflict))
        );
    }

    // The kernel's layout, two nexuses per node (flag session and guest
    // disk session, both with the node's key): [A:fa, B:fb, A:a, B:b].
    // B wins and fences A. istgt answers GOOD, but its table comes out as
    // [A:fb, B:a]: A's disk session is still registered (under B's key)
    // and may write. The check after the PREEMPT sees A's key and refuses.
    fa.persistent_reserve_out(PrOutAction::Clear, PrType::NONE, &params(KEY_A, 0))
        .unwrap();
    assert_eq!(LunFlag::new(&mut fa, arb).register(na), Ok(()));
    assert_eq!(LunFlag::new(&mut fb, arb).register(nb), Ok(()));
    a.register_key(KEY_A).unwrap();
    b.register_key(KEY_B).unwrap();
    assert_eq!(a.read_keys().unwrap().keys, [KEY_A, KEY_B, KEY_A, KEY_B]);
    {
        let mut lun = LunFlag::new(&mut fb, arb);
        assert_eq!(
            arbitrate(&mut lun, 1, nb),
            Verdict::Won(FlagRecord::new(2, nb))
        );
        let r = lun.fence(nb, na);
        println!(
            "PR: LunFlag::fence with two nexuses per node -> {r:?}, {:?}",
            lun.last_error
        );
        assert_eq!(r, Err(FtError::Fenced));
        assert_eq!(
            lun.last_error,
            Some((
                FlagStep::Verify,
                Error::FenceIneffective("the preempted key is still registered")
            ))
        );
    }
    assert_eq!(a.read_keys().unwrap().keys, [KEY_A, KEY_B]);
    let late = a.write16(112, block(0xa8));
    println!("PR: the loser's disk session writes after the botched fence -> {late:?}");
    assert_eq!(
        late,
        Ok(()),
        "istgt 0.4 left the loser's disk session registered"
    );
    for s in [fa.logout(), fb.logout(), c.logout()] {
        s.expect("logout");
    }
    drop(a);
    drop(b);

    // A restart loses every registration and the reservation.
    target.restart();
    let mut d = login(TcpTransport::new(addr), "pr-d", 35);
    let keys = d.read_keys().unwrap();
    let rsv = d.read_reservation().unwrap();
    println!("PR: after an istgt restart: {keys:?} {rsv:?}");
    assert!(keys.keys.is_empty());
    assert_eq!(rsv.reservation, None);
    d.write16(110, block(0xd1)).unwrap();
    d.logout().unwrap();
}

/// istgt 0.4's registration table when a registration that is not the
/// last one is removed (`istgt_lu_disk_remove_pr_key` moves the
/// initiator ports of the following entries down a slot but leaves the
/// keys where they were, and skips the entry it moved).
#[test]
fn istgt_preempt_shifts_ports_but_not_keys() {
    if !Path::new(ISTGT).exists() {
        println!("SKIP: {ISTGT} not installed");
        return;
    }
    let target = start_istgt_n(2);
    let addr = target.addr();
    let (k1, k2, k3) = (0x11, 0x22, 0x33);
    let mut p1 = login(TcpTransport::new(addr), "shift-1", 51);
    let mut p2 = login(TcpTransport::new(addr), "shift-2", 52);
    let mut p3 = login(TcpTransport::new(addr), "shift-3", 53);
    p1.register_key(k1).unwrap();
    p2.register_key(k2).unwrap();
    p3.register_key(k3).unwrap();
    p1.persistent_reserve_out(PrOutAction::Reserve, WERO, &params(k1, 0))
        .unwrap();
    // p3 preempts p1 (the first entry, and the holder).
    p3.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(k3, k1))
        .unwrap();
    let keys = p3.read_keys().unwrap().keys;
    let rsv = p3.read_reservation().unwrap().reservation;
    let w1 = p1.write16(200, block(1));
    let w2 = p2.write16(201, block(2));
    let w3 = p3.write16(202, block(3));
    println!("PR shift: after p3 preempts k1 (entry 0 of [k1:p1, k2:p2, k3:p3]): keys {keys:x?} reservation {rsv:x?}; writes p1 {w1:?} p2 {w2:?} p3 {w3:?}");
    // p3 fences again (a retry): which nexus is removed now?
    let r = p3.persistent_reserve_out(PrOutAction::PreemptAndAbort, WERO, &params(k3, k1));
    let keys = p3.read_keys().unwrap().keys;
    let w2 = p2.write16(201, block(2));
    let w3 = p3.write16(202, block(3));
    println!("PR shift: p3 preempts k1 again -> {r:?}; keys {keys:x?}; writes p2 {w2:?} p3 {w3:?}");
}

/// Pumps `ini` until every asynchronous command finished (30 s at most);
/// the outcomes by handle.
fn pump_all<T: Transport>(
    ini: &mut Initiator<T, StdClock>,
) -> Vec<(drivers::iscsi::TaskId, drivers::Result<Vec<u8>>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while ini.outstanding() > 0 {
        assert!(
            Instant::now() < deadline,
            "asynchronous commands never finished"
        );
        ini.pump();
        while let Some(f) = ini.finished() {
            out.push(f);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    out
}

/// The asynchronous path (issue 14: the guest disk must not block the FT
/// loop): many WRITE(16)s in flight at once, then READ(16)s, a blocking
/// call in between that must not swallow their completions, and a
/// connection broken with commands in flight (re-login, re-issue).
#[test]
fn asynchronous_commands_against_istgt() {
    if !Path::new(ISTGT).exists() {
        println!("SKIP: {ISTGT} not installed (apt-get install istgt)");
        return;
    }
    let target = start_istgt_n(3);
    let mut ini = login(Flaky::new(target.addr()), "async", 30);
    let chunk = |i: u64| -> Vec<u8> {
        (0..64 * 1024u64)
            .map(|b| (b.wrapping_mul(31).wrapping_add(i * 97) >> 3) as u8)
            .collect()
    };
    // Eight 64 KiB writes in flight together.
    let mut handles = Vec::new();
    for i in 0..8u64 {
        handles.push(ini.start_write16(4096 + i * 128, chunk(i)).unwrap());
    }
    assert_eq!(ini.outstanding(), 8);
    // A blocking command meanwhile: it completes, and the writes' outcomes
    // are kept for `finished`.
    ini.test_unit_ready().unwrap();
    let done = pump_all(&mut ini);
    assert_eq!(done.len(), 8, "every write finished once");
    for (h, r) in &done {
        assert!(handles.contains(h), "unknown handle {h:?}");
        assert_eq!(r, &Ok(Vec::new()), "write {h:?}");
    }
    ini.start_synchronize_cache().unwrap();
    assert_eq!(pump_all(&mut ini)[0].1, Ok(Vec::new()));

    // Reads in flight; the connection breaks under them: the session logs
    // in again and re-issues them; each returns its own data.
    let reads: Vec<_> = (0..8u64)
        .map(|i| (ini.start_read16(4096 + i * 128, 128).unwrap(), i))
        .collect();
    ini.pump();
    ini.transport_mut().break_now = true;
    let done = pump_all(&mut ini);
    assert_eq!(done.len(), 8);
    for (h, r) in done {
        let i = reads.iter().find(|(x, _)| *x == h).expect("known handle").1;
        assert!(r.as_deref() == Ok(&chunk(i)[..]), "read {i} differs");
    }
    assert_eq!(ini.transport_mut().breaks, 1, "the break happened");
    // A command outside the LUN fails alone (istgt 0.4 answers CHECK
    // CONDITION without sense), and the session goes on.
    ini.start_read16(1 << 40, 1).unwrap();
    let done = pump_all(&mut ini);
    assert!(done[0].1.is_err(), "{:?}", done[0].1);
    ini.test_unit_ready().unwrap();
    ini.logout().expect("logout");
}

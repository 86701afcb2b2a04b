//! `mode=iscsi`: the hypervisor's own iSCSI initiator (RFC 7143) over its
//! own NIC and smoltcp, against a real target, running one check chosen by
//! `iscsi_op` and exiting with its verdict (0 pass, 1 fail, 2 bad config).
//!
//! - `rw`: WRITE(16) `iscsi_mib` MiB of self-describing blocks
//!   ([`kernel::iscsi_checks`]), SYNCHRONIZE CACHE(16), READ(16) them back
//!   and verify (SBC-3 §5.40, §5.26, §5.16); MB/s both ways.
//! - `caw`: the DESIGN.md §1.7 test-and-set alone: initialise the flag,
//!   win generation 1, then a stale COMPARE AND WRITE (SBC-3 §5.2) must
//!   miscompare.
//! - `caw-race`: `iscsi_rounds` rounds against other nodes, kept in step by
//!   a coordinator at `iscsi_sync` (protocol in [`kernel::iscsi_checks`]):
//!   read the flag, report its generation, wait for `go`, then one COMPARE
//!   AND WRITE expecting that record. Each round's verdict goes to serial.
//! - `loss`: write `iscsi_mib` MiB in 64 KiB chunks while the target may
//!   vanish: a failed write is reported (not acknowledged), the initiator
//!   logs in again until the target is back, rewrites from the first
//!   unacknowledged chunk, and finally reads everything back: no
//!   acknowledged write may be missing.
use super::clock::Clock;
use super::transport::{NetStack, SharedTransport, CONNECT_TIMEOUT_MS};
use crate::arch::exit::exit;
use alloc::collections::VecDeque;
use alloc::vec;
use drivers::arbitration::{Acquire, Arbiter};
use drivers::iscsi::{Initiator, SessionConfig};
use drivers::nic::Nic;
use drivers::smoltcp::iface::SocketHandle;
use drivers::smoltcp::wire::{IpAddress, IpEndpoint};
use drivers::Error;
use ft::arbitration::{FlagRecord, NodeId};
use kernel::config::{Config, Endpoint, IscsiOp};
use kernel::exitcode;
use kernel::iscsi_checks::{
    fill_pattern, hello_line, parse_directive, ready_line, result_line, verify_pattern, Directive,
    Lines,
};

type Ini<N> = Initiator<SharedTransport<N>, Clock>;

/// TCP buffers of the iSCSI connection (each way).
const TCP_BUFFER: usize = 256 * 1024;
/// The test-and-set flag's block.
const FLAG_LBA: u64 = 0;
/// First block of the data checks (1 MiB in, clear of the flag).
const DATA_LBA: u64 = 2048;
/// Bytes per WRITE(16)/READ(16) of `rw` (the negotiated MaxBurstLength).
const RW_CHUNK: usize = 256 * 1024;
/// Bytes per WRITE(16) of `loss`.
const LOSS_CHUNK: usize = 64 * 1024;

fn endpoint(e: Endpoint) -> IpEndpoint {
    let [a, b, c, d] = e.addr;
    IpEndpoint::new(IpAddress::v4(a, b, c, d), e.port)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn mb_per_s(bytes: usize, us: u64) -> f64 {
    bytes as f64 / us.max(1) as f64
}

fn finish<N: Nic>(ini: Option<Ini<N>>, pass: bool) -> ! {
    if let Some(ini) = ini {
        match ini.logout() {
            Ok(t) => {
                println!("iscsi: logged out");
                super::print_counters(&mut t.net.borrow_mut().device.nic);
            }
            Err(e) => println!("iscsi: logout: {e}"),
        }
    }
    if pass {
        println!("iscsi: PASS");
        exit(exitcode::SUCCESS);
    }
    println!("iscsi: FAIL");
    exit(exitcode::FAILURE);
}

pub fn run<N: Nic>(config: &Config, net: NetStack<N>) -> ! {
    let ic = &config.iscsi;
    let Some(portal) = ic.portal else {
        println!("iscsi: error: mode=iscsi needs `iscsi=<portal ip[:port]>`");
        exit(exitcode::BAD_CONFIG);
    };
    if ic.target.is_empty() {
        println!("iscsi: error: mode=iscsi needs `iscsi_target=<iqn...>`");
        exit(exitcode::BAD_CONFIG);
    }
    if ic.op == IscsiOp::CawRace && ic.sync.is_none() {
        println!("iscsi: error: iscsi_op=caw-race needs `iscsi_sync=<coordinator ip:port>`");
        exit(exitcode::BAD_CONFIG);
    }
    let clock = net.clock;
    let deadline = clock.micros() + config.net.timeout_secs * 1_000_000;
    let name = alloc::format!("iqn.2024-01.org.ftvisor:node{}", ic.node);
    let [n0, n1] = ic.node.to_be_bytes();
    let mut cfg = SessionConfig::new(&name, &ic.target, [0x80, 0x46, 0x54, 0x56, n0, n1]);
    if ic.op == IscsiOp::TargetLoss {
        // Detect a dead target quickly: a second between reconnects, five
        // tries, keepalive every 2 s.
        cfg.task_timeout_ms = 10_000;
        cfg.nop_interval_ms = 2_000;
        cfg.nop_timeout_ms = 3_000;
    }
    let [a, b, c, d] = portal.addr;
    println!(
        "iscsi: node {} ({name}) logging in to {} at {a}.{b}.{c}.{d}:{} lun {}",
        ic.node, ic.target, portal.port, ic.lun
    );
    let transport = SharedTransport::new(
        alloc::rc::Rc::new(core::cell::RefCell::new(net)),
        endpoint(portal),
        TCP_BUFFER,
    );
    let t0 = clock.micros();
    let mut ini = match Initiator::login(transport, clock, cfg.clone(), ic.lun) {
        Ok(i) => i,
        Err(e) => {
            println!("iscsi: error: login failed: {e}");
            finish::<N>(None, false);
        }
    };
    let n = ini.session().negotiated().clone();
    println!(
        "iscsi: logged in in {} ms: MaxRecvDataSegmentLength(target)={} MaxBurstLength={} FirstBurstLength={} ImmediateData={} InitialR2T={}",
        (clock.micros() - t0) / 1000,
        n.max_send_data_segment_length,
        n.max_burst_length,
        n.first_burst_length,
        n.immediate_data,
        n.initial_r2t
    );
    match ini.inquiry() {
        Ok(q) => println!(
            "iscsi: inquiry: vendor `{}` product `{}` revision `{}` type {:#x}",
            q.vendor.trim(),
            q.product.trim(),
            q.revision.trim(),
            q.peripheral_type
        ),
        Err(e) => {
            println!("iscsi: error: INQUIRY: {e}");
            finish(Some(ini), false);
        }
    }
    let capacity = match ini.read_capacity16() {
        Ok(c) => c,
        Err(e) => {
            println!("iscsi: error: READ CAPACITY(16): {e}");
            finish(Some(ini), false);
        }
    };
    println!(
        "iscsi: capacity {} blocks of {} bytes ({} MiB)",
        capacity.blocks,
        capacity.block_size,
        (capacity.blocks * u64::from(capacity.block_size)) >> 20
    );
    let bytes = (ic.mib as usize) << 20;
    let needed = DATA_LBA + (bytes / capacity.block_size as usize) as u64;
    if matches!(ic.op, IscsiOp::ReadWrite | IscsiOp::TargetLoss) && needed > capacity.blocks {
        println!(
            "iscsi: error: iscsi_mib={} needs {needed} blocks, the LUN has {}",
            ic.mib, capacity.blocks
        );
        finish(Some(ini), false);
    }
    match ic.op {
        IscsiOp::ReadWrite => {
            let pass = read_write(&mut ini, bytes);
            finish(Some(ini), pass)
        }
        IscsiOp::CompareAndWrite => {
            let pass = caw_alone(&mut ini, NodeId(u64::from(ic.node)));
            finish(Some(ini), pass)
        }
        IscsiOp::CawRace => {
            let sync = ic.sync.expect("checked above");
            let pass = caw_race(&mut ini, endpoint(sync), ic.node, ic.rounds, deadline);
            finish(Some(ini), pass)
        }
        IscsiOp::TargetLoss => {
            let (ini, pass) = target_loss(ini, &cfg, ic.lun, bytes, deadline);
            finish(ini, pass)
        }
    }
}

fn seed() -> u64 {
    super::clock::rdtsc() | 1
}

/// `rw`: write, flush, read back, verify.
fn read_write<N: Nic>(ini: &mut Ini<N>, bytes: usize) -> bool {
    let clock = ini_clock(ini);
    let bs = ini.block_size() as usize;
    let seed = seed();
    let chunks = bytes.div_ceil(RW_CHUNK);
    println!(
        "iscsi: rw: writing {} MiB at lba {DATA_LBA} in {} WRITE(16)s of {} KiB (seed {seed:#x})",
        bytes >> 20,
        chunks,
        RW_CHUNK >> 10
    );
    let t0 = clock.micros();
    for c in 0..chunks {
        let len = RW_CHUNK.min(bytes - c * RW_CHUNK);
        let lba = DATA_LBA + (c * RW_CHUNK / bs) as u64;
        let mut buf = vec![0u8; len];
        fill_pattern(&mut buf, lba, bs, seed);
        if let Err(e) = ini.write16(lba, buf) {
            println!("iscsi: rw: error: WRITE(16) at lba {lba}: {e}");
            return false;
        }
        if (c + 1).is_multiple_of(64) {
            println!("iscsi: rw: written {} MiB", ((c + 1) * RW_CHUNK) >> 20);
        }
    }
    if let Err(e) = ini.synchronize_cache() {
        println!("iscsi: rw: error: SYNCHRONIZE CACHE(16): {e}");
        return false;
    }
    let write_us = clock.micros() - t0;
    let t1 = clock.micros();
    for c in 0..chunks {
        let len = RW_CHUNK.min(bytes - c * RW_CHUNK);
        let lba = DATA_LBA + (c * RW_CHUNK / bs) as u64;
        let data = match ini.read16(lba, (len / bs) as u32) {
            Ok(d) => d,
            Err(e) => {
                println!("iscsi: rw: error: READ(16) at lba {lba}: {e}");
                return false;
            }
        };
        if let Err(m) = verify_pattern(&data, lba, bs, seed) {
            println!(
                "iscsi: rw: error: block {} differs at byte {} (it claims lba {})",
                m.lba, m.offset, m.found_lba
            );
            return false;
        }
    }
    let read_us = clock.micros() - t1;
    println!(
        "iscsi: rw: wrote {} MiB in {:.2} s = {:.2} MB/s; read back and verified in {:.2} s = {:.2} MB/s",
        bytes >> 20,
        secs(write_us),
        mb_per_s(bytes, write_us),
        secs(read_us),
        mb_per_s(bytes, read_us)
    );
    true
}

fn ini_clock<N: Nic>(ini: &mut Ini<N>) -> Clock {
    ini.transport_mut().net.borrow().clock
}

/// `caw`: initialise, win, then a stale attempt must miscompare.
fn caw_alone<N: Nic>(ini: &mut Ini<N>, me: NodeId) -> bool {
    let arb = Arbiter::new(FLAG_LBA);
    let r0 = match arb.init(ini, NodeId(0)) {
        Ok(r) => r,
        Err(e) => {
            println!("iscsi: caw: error: initialising the flag: {e}");
            return false;
        }
    };
    println!("iscsi: caw: flag at lba {FLAG_LBA} initialised to generation 0");
    match arb.try_acquire(ini, 0, me) {
        Ok(Acquire::Won(r)) => println!(
            "iscsi: caw: try_acquire(generation 0) won: generation {} owner {}",
            r.generation, r.owner.0
        ),
        other => {
            println!("iscsi: caw: error: first acquisition: {other:?}");
            return false;
        }
    }
    match arb.try_acquire_from(ini, r0, NodeId(me.0 + 1)) {
        Ok(Acquire::Lost(r)) => println!(
            "iscsi: caw: stale COMPARE AND WRITE: MISCOMPARE (holder generation {} owner {})",
            r.generation, r.owner.0
        ),
        other => {
            println!("iscsi: caw: error: a stale COMPARE AND WRITE did not miscompare: {other:?}");
            return false;
        }
    }
    true
}

/// The coordinator link of `caw-race`.
struct SyncLink {
    handle: SocketHandle,
    lines: Lines,
    pending: VecDeque<Directive>,
}

impl SyncLink {
    fn send<N: Nic>(&self, net: &mut NetStack<N>, line: &str) -> Result<(), Error> {
        net.send_all(self.handle, line.as_bytes(), 10_000)
    }

    /// The next directive, waiting at most `timeout_ms`.
    fn next<N: Nic>(&mut self, net: &mut NetStack<N>, timeout_ms: u64) -> Result<Directive, Error> {
        let deadline = net.clock.micros() + timeout_ms * 1000;
        let mut buf = [0u8; 256];
        loop {
            if let Some(d) = self.pending.pop_front() {
                return Ok(d);
            }
            let n = net.recv_some(self.handle, &mut buf, 1_000)?;
            for line in self.lines.feed(&buf[..n]) {
                match line.as_deref().and_then(parse_directive) {
                    Some(d) => self.pending.push_back(d),
                    None => println!("race: ignoring coordinator line {line:?}"),
                }
            }
            if net.clock.micros() > deadline {
                return Err(Error::Timeout);
            }
        }
    }
}

/// `caw-race`: synchronised rounds of one COMPARE AND WRITE each.
fn caw_race<N: Nic>(
    ini: &mut Ini<N>,
    coordinator: IpEndpoint,
    node: u16,
    rounds: u32,
    deadline: u64,
) -> bool {
    let me = NodeId(u64::from(node));
    let arb = Arbiter::new(FLAG_LBA);
    let handle = ini.transport_mut().net.borrow_mut().add_tcp(4096);
    let mut link = SyncLink {
        handle,
        lines: Lines::default(),
        pending: VecDeque::new(),
    };
    let mut tries = 0;
    loop {
        let rc = ini.transport_mut().net.clone();
        let net = &mut *rc.borrow_mut();
        match net.connect(handle, coordinator, CONNECT_TIMEOUT_MS) {
            Ok(()) => break,
            Err(e) if tries >= 10 => {
                println!("race: error: cannot reach the coordinator {coordinator}: {e}");
                return false;
            }
            Err(_) => {
                tries += 1;
                let t = net.clock.micros() + 500_000;
                while net.clock.micros() < t {
                    net.poll();
                }
            }
        }
    }
    if let Err(e) = link.send(&mut ini.transport_mut().net.borrow_mut(), &hello_line(node)) {
        println!("race: error: coordinator link: {e}");
        return false;
    }
    println!("race: node {node} connected to the coordinator {coordinator}; {rounds} rounds");
    let (mut wins, mut losses) = (0u32, 0u32);
    for round in 1..=rounds {
        let expected: FlagRecord = match arb.read(ini) {
            Ok(r) => r,
            Err(e) => {
                println!("race: round {round} error: reading the flag: {e}");
                return false;
            }
        };
        let rc = ini.transport_mut().net.clone();
        let mut net = rc.borrow_mut();
        if net.clock.micros() > deadline {
            println!("race: error: net_timeout reached at round {round}");
            return false;
        }
        if let Err(e) = link.send(&mut net, &ready_line(round, expected.generation)) {
            println!("race: round {round} error: coordinator link: {e}");
            return false;
        }
        let directive = link.next(&mut net, 60_000);
        // The initiator below borrows the stack again.
        drop(net);
        match directive {
            Ok(Directive::Go { round: r }) if r == round => {}
            Ok(Directive::Go { round: r }) => {
                println!("race: round {round} error: coordinator said go for round {r}");
                return false;
            }
            Ok(Directive::Abort(why)) => {
                println!("race: round {round} aborted by the coordinator: {why}");
                return false;
            }
            Err(e) => {
                println!("race: round {round} error: waiting for go: {e}");
                return false;
            }
        }
        let (won, after) = match arb.try_acquire_from(ini, expected, me) {
            Ok(Acquire::Won(r)) => {
                wins += 1;
                println!(
                    "race: round {round} expected generation {} WON -> generation {} owner {}",
                    expected.generation, r.generation, r.owner.0
                );
                (true, r)
            }
            Ok(Acquire::Lost(r)) => {
                losses += 1;
                println!(
                    "race: round {round} expected generation {} lost: MISCOMPARE, holder generation {} owner {}",
                    expected.generation, r.generation, r.owner.0
                );
                (false, r)
            }
            Err(e) => {
                println!("race: round {round} error: COMPARE AND WRITE: {e}");
                return false;
            }
        };
        let rc = ini.transport_mut().net.clone();
        let net = &mut *rc.borrow_mut();
        if let Err(e) = link.send(
            net,
            &result_line(round, won, after.generation, after.owner.0),
        ) {
            println!("race: round {round} error: coordinator link: {e}");
            return false;
        }
    }
    println!("race: node {node} done: {rounds} rounds, won {wins}, lost {losses}");
    true
}

/// `loss`: keep writing through a target outage; verify at the end.
fn target_loss<N: Nic>(
    mut ini: Ini<N>,
    cfg: &SessionConfig,
    lun: u64,
    bytes: usize,
    deadline: u64,
) -> (Option<Ini<N>>, bool) {
    let clock = ini_clock(&mut ini);
    let bs = ini.block_size() as usize;
    let seed = seed();
    let chunks = bytes / LOSS_CHUNK;
    let lba_of = |c: usize| DATA_LBA + (c * LOSS_CHUNK / bs) as u64;
    println!(
        "iscsi: loss: writing {} chunks of {} KiB from lba {DATA_LBA} (seed {seed:#x})",
        chunks,
        LOSS_CHUNK >> 10
    );
    let mut next = 0usize;
    let mut outages = 0u32;
    let mut last_ack = clock.micros();
    let t0 = clock.micros();
    while next < chunks {
        let lba = lba_of(next);
        let mut buf = vec![0u8; LOSS_CHUNK];
        fill_pattern(&mut buf, lba, bs, seed);
        match ini.write16(lba, buf) {
            Ok(()) => {
                next += 1;
                last_ack = clock.micros();
                if next.is_multiple_of(16) || next == chunks {
                    println!("iscsi: loss: acked {next}/{chunks}");
                }
            }
            Err(e) => {
                outages += 1;
                println!(
                    "iscsi: loss: error: WRITE(16) of chunk {next} (lba {lba}) failed {} ms after the last acknowledged write: {e}; chunks 0..{next} are acknowledged, chunk {next} is not",
                    (clock.micros() - last_ack) / 1000
                );
                let lost_at = clock.micros();
                let mut transport = ini.into_transport();
                let mut attempts = 0u32;
                ini = loop {
                    if clock.micros() > deadline {
                        println!(
                            "iscsi: loss: error: the target did not come back before net_timeout"
                        );
                        return (None, false);
                    }
                    attempts += 1;
                    match Initiator::try_login(transport, clock, cfg.clone(), lun) {
                        Ok(mut i) => {
                            if let Err(e) = i.read_capacity16() {
                                println!("iscsi: loss: READ CAPACITY(16) after login: {e}");
                            }
                            break i;
                        }
                        Err((e, t)) => {
                            println!(
                                "iscsi: loss: target still unreachable ({} s, login attempt {attempts}: {e})",
                                (clock.micros() - lost_at) / 1_000_000
                            );
                            transport = t;
                        }
                    }
                };
                println!(
                    "iscsi: loss: recovered: logged in again after {:.1} s; rewriting from chunk {next}",
                    secs(clock.micros() - lost_at)
                );
            }
        }
    }
    let write_us = clock.micros() - t0;
    if let Err(e) = ini.synchronize_cache() {
        println!("iscsi: loss: error: SYNCHRONIZE CACHE(16): {e}");
        return (Some(ini), false);
    }
    let mut bad = 0usize;
    let mut chunk = 0usize;
    while chunk < chunks {
        let lba = lba_of(chunk);
        match ini.read16(lba, (LOSS_CHUNK / bs) as u32) {
            Ok(data) => {
                if let Err(m) = verify_pattern(&data, lba, bs, seed) {
                    if bad < 8 {
                        println!(
                            "iscsi: loss: error: acknowledged chunk {chunk} lost: block {} differs at byte {} (claims lba {})",
                            m.lba, m.offset, m.found_lba
                        );
                    }
                    bad += 1;
                }
            }
            Err(e) => {
                println!("iscsi: loss: error: READ(16) of chunk {chunk}: {e}");
                return (Some(ini), false);
            }
        }
        chunk += 1;
    }
    println!(
        "iscsi: loss: {chunks} acknowledged chunks ({} MiB) written in {:.1} s through {outages} outage(s); read back: {} intact, {bad} lost",
        bytes >> 20,
        secs(write_us),
        chunks - bad
    );
    (Some(ini), bad == 0)
}

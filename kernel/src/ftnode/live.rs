//! The FT pair's logging channel, live (issue 9; DESIGN.md §1.1-§1.6): a
//! [`Node`] drives `ft::primary::Primary` or `ft::backup::Backup` over one
//! smoltcp TCP connection on the hypervisor's own NIC, polled from the VMX
//! run loop (`crate::vmm`) through the [`Live`] hooks.
//!
//! * **Primary** (§1.1, §1.4): records like `ft=record` (the run loop's
//!   `vmx::replay::Recorder`); at every run-loop iteration the new entries
//!   go to `Primary::record` and out on the socket as they are produced.
//!   Guest console lines are its outputs for now: each gets an
//!   `OutputMarker` in the log and is printed only once the backup has
//!   acknowledged the marker (`kernel::ftnode::ConsoleGate`). Idle log:
//!   heartbeats (§1.6). A lagging backup throttles the guest.
//! * **Backup** (§1.3, §1.5): listens on the log port, verifies the
//!   session hello (cluster, guest identity, generation, protocol version;
//!   a mismatch is refused with the reason), acknowledges, and hands each
//!   received record to a streaming `vmx::replay::Replayer`: the guest
//!   only runs up to the point of the last entry received (lags one
//!   entry); its console lines are discarded and counted.
//! * Bad input (§1.5): the session socket accepts only `peer=`; with
//!   `ft_probe=` the backup opens a second listener while the session runs
//!   for that host, checks its bytes with a `Backup` of its own and resets
//!   the connection with the reason (`Node::pump_probe`, `ft-hostile-log`).
//! * Both print a status line every `ft_status` ms of hypervisor time
//!   (role, generation, seq sent/acked/applied, lag, log Mbit/s, heartbeat
//!   age; §6 "Observable").
//!
//! * Failure (§1.7): after `ft_timeout` of silence a side arbitrates on
//!   the shared LUN (`Node::settle`: iSCSI login over the same stack,
//!   read the flag, one COMPARE AND WRITE). A loser halts for good; a
//!   backup that wins replays what it received and goes live
//!   (`Live::go_live`: the run loop drops the tape and prints the guest's
//!   console from then on).
//!
//! Not yet (issue 9): a primary that wins stops instead of running on
//! alone; outputs are console lines only (frames and disk writes come with
//! guest networking). Console lines the primary may not have released
//! are re-emitted by a backup going live (at least once).
//!
//! Time: the TSC calibrated on the PIT (`crate::net` clock). In Bochs with
//! `clock: sync=none` that is emulated time, so `ft_timeout` and
//! `heartbeat` count each emulator's own instructions, not wall time.
use crate::arch::exit::exit;
use crate::net::transport::{Clock, SharedStack, SharedTransport};
use crate::net::WithNic;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use drivers::arbitration::{Arbiter, LunFlag};
use drivers::iscsi::{Initiator, Transport};
use drivers::nic::Nic;
use drivers::smoltcp::iface::SocketHandle;
use drivers::smoltcp::socket::tcp;
use drivers::smoltcp::wire::{IpAddress, IpEndpoint};
use ft::arbitration::{arbitrate, NodeId, Verdict};
use ft::backup::Backup;
use ft::log::{decode_record, ExecPoint, GoodbyeReason};
use ft::primary::{Primary, PrimaryState};
use ft::replay::{Recorder, Replayer, Tape};
use ft::{Effect, Effects, SessionConfig};
use kernel::config::{Config, Endpoint, Role};
use kernel::devices::virtio::GuestOutput;
use kernel::exitcode;
use kernel::ftnode::{guest_identity, mbit_per_s, IdHex, LagMeter, OutputGate, StatusLine};
use kernel::guestio::{GuestIo, Slot};
use vmx::caps::{PmuInfo, VmxCaps};

/// TCP buffers of the log connection (each way).
const TCP_BUFFER: usize = 256 * 1024;
/// Poll the NIC at least this often while the guest runs (µs).
const POLL_US: u64 = 500;
/// Discarded console lines a backup keeps for its go-live.
const KEEP_LINES: usize = 64;
/// TCP buffers of the iSCSI connection (arbitration only).
const ISCSI_BUFFER: usize = 16 * 1024;
/// The flag block on the shared LUN (as `mode=iscsi` uses it).
const FLAG_LBA: u64 = 0;
/// TCP buffers of a probe connection (`ft_probe=`).
const PROBE_BUFFER: usize = 16 * 1024;
/// TCP buffers of the status port.
const STATUS_BUFFER: usize = 2048;
/// The primary waits for the backup when an entry it sent this long ago
/// (µs of hypervisor time) is not applied yet (DESIGN.md §5: "primary
/// throttled above 1 s").
const THROTTLE_US: u64 = 1_000_000;

/// Output ids (DESIGN.md §1.4): console line *n* (1, 2, ...) is output
/// `2n - 1`, guest I/O output *n* (a frame, a disk request) is `2n`, so the
/// two kinds share the log's one id space and a backup can tell a line's
/// marker without counting the others.
fn line_output_id(n: u64) -> u64 {
    2 * n - 1
}

fn io_output_id(n: u64) -> u64 {
    2 * n
}

/// What the run loop calls while an FT pair runs.
pub trait Live {
    /// Top of every run-loop iteration, the guest at `at` with guest time
    /// `guest_ns`; `lines` are guest console lines captured since the last
    /// call (primary); `io`: the guest's devices, whose outputs the
    /// primary holds until the backup acknowledged them. `Err`: the
    /// session failed, stop the guest.
    fn poll(
        &mut self,
        tape: &mut Tape,
        at: ExecPoint,
        guest_ns: u64,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Result<(), String>;
    /// Just before VM entry: ship what this iteration recorded.
    fn before_entry(&mut self, tape: &mut Tape, guest_ns: u64);
    /// Backup, when the replayer holds nothing more to run to: after a
    /// won arbitration, `Some(guest time)` once: the guest goes live and
    /// its clock must not run backwards past what the log showed it.
    /// `lines`: the guest's console lines discarded since the last poll;
    /// `io`: attached again at go-live (pending disk requests re-issued,
    /// the guest's MAC announced).
    fn go_live(
        &mut self,
        replayer: &Replayer,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Option<u64>;
    /// Backup: the replayer holds nothing to run to; poll until it does.
    fn wait(&mut self, replayer: &mut Replayer) -> Result<(), String>;
    /// Primary, after the guest exited and the final checkpoint was
    /// recorded: ship the rest, release held lines on the backup's acks,
    /// end the session. `false` if the backup never acknowledged the end.
    fn end_primary(
        &mut self,
        recorder: &Recorder,
        lines: &mut Option<Vec<String>>,
        guest_ns: u64,
        io: &mut GuestIo,
    ) -> bool;
    /// Backup, after its replay ended: `verdict` is `IDENTICAL` (every
    /// entry met and the final state equal), `DIVERGED` or `HALTED` (cut
    /// short by a halt for good; every entry up to there met).
    fn end_backup(&mut self, replayer: &Replayer, discarded: u64, verdict: &str);
}

/// Boots the pair's network side, joins the session, then runs the guest.
pub fn start(
    config: &Config,
    caps: &VmxCaps,
    pmu: PmuInfo,
    image: &[u8],
    initrd: Option<&[u8]>,
    guest_cmdline: &str,
) -> ! {
    if let Err(e) = config.pair.validate() {
        println!("ft: error: {e}");
        exit(exitcode::BAD_CONFIG);
    }
    match crate::net::open_nic(
        config,
        Starter {
            caps,
            pmu,
            image,
            initrd,
            guest_cmdline,
        },
    ) {}
}

struct Starter<'a> {
    caps: &'a VmxCaps,
    pmu: PmuInfo,
    image: &'a [u8],
    initrd: Option<&'a [u8]>,
    guest_cmdline: &'a str,
}

impl WithNic for Starter<'_> {
    type Out = core::convert::Infallible;
    fn go<N: Nic + 'static>(
        self,
        config: &Config,
        clock: crate::net::transport::Clock,
        nic: N,
    ) -> Self::Out {
        // One NIC for everything (DESIGN.md §2): the guest's frames on one
        // side of the demultiplexer, the hypervisor's stack on the other
        // (log channel, arbitration, the guest disk's iSCSI session).
        let (demux, net) = crate::net::guest::share_nic(config, clock, nic);
        let io = crate::net::guest::guest_io_on(config.guest_mem, config, &demux, &net);
        let mut node = Node::new(config, net, self.image, self.initrd, self.guest_cmdline);
        node.join();
        crate::vmm::run(
            config,
            self.caps,
            self.pmu,
            self.image,
            self.guest_cmdline,
            self.initrd
                .filter(|_| config.guest == kernel::config::GuestKind::Linux)
                .as_slice(),
            Some(io),
            Some(&mut node),
        )
    }
}

fn endpoint(e: Endpoint) -> IpEndpoint {
    let [a, b, c, d] = e.addr;
    IpEndpoint::new(IpAddress::v4(a, b, c, d), e.port)
}

enum Side {
    Primary(Primary),
    Backup(Backup),
}

/// One side of the pair: the state machine, its socket and its numbers.
pub struct Node<N: Nic> {
    /// The hypervisor's smoltcp stack on the NIC, shared with the guest
    /// disk's iSCSI session (`disk=iscsi`).
    net: SharedStack<N>,
    clock: Clock,
    /// The iSCSI transport to the shared LUN (`iscsi=`; lent to an
    /// initiator only while arbitrating).
    arb: SharedTransport<N>,
    /// The status port's listening socket (`ft_status_port=`).
    status_sock: Option<SocketHandle>,
    /// Guest I/O outputs the backup acknowledged, to go out at the next
    /// poll (DESIGN.md §1.4).
    ready: Vec<(Slot, GuestOutput)>,
    /// Primary that won the test-and-set after its backup fell silent:
    /// the guest runs on alone, outputs leave at once (§1.7).
    alone: bool,
    /// The shared LUN: portal, target, LUN (`iscsi=`, `iscsi_target=`,
    /// `iscsi_lun=`); `None`: no storage, so no one may go live.
    lun: Option<(Endpoint, String, u64)>,
    me: NodeId,
    sock: SocketHandle,
    side: Side,
    sc: SessionConfig,
    /// A session was established once (the failure detector runs).
    joined: bool,
    join_deadline_us: u64,
    peer: Endpoint,
    cfg: kernel::config::FtPairConfig,
    guest_id: [u8; 16],
    outbox: Vec<u8>,
    out_off: usize,
    inbuf: Vec<u8>,
    last_pump_us: u64,
    last_tick_us: u64,
    /// Recorder bytes already handed to the primary.
    rec_off: usize,
    /// Console lines under the output rule (line number, text).
    gate: OutputGate<(u64, String)>,
    /// Frames and disk requests under the output rule.
    io_gate: OutputGate<(Slot, GuestOutput)>,
    /// Guest I/O outputs so far.
    next_io: u64,
    lag: LagMeter,
    next_line: u64,
    start_us: u64,
    bytes_sent: u64,
    bytes_recv: u64,
    heard_us: u64,
    status_due_us: u64,
    status_bytes: u64,
    status_us: u64,
    throttles: u64,
    connected: bool,
    refusals: u64,
    first_guest_ns: Option<u64>,
    last_guest_ns: u64,
    /// The flag generation both sides start under (`ft_generation=`) until
    /// arbitration on the shared LUN is wired in.
    generation: u64,
    /// Backup with `ft_probe=`: a second listener on the log port, open
    /// while the session runs, and the connection it holds (validated by
    /// its own `Backup`, never joined to the session).
    probe_sock: Option<SocketHandle>,
    probe: Option<(IpEndpoint, Backup)>,
    probes_refused: u64,
    /// Backup: won the test-and-set; goes live once everything received
    /// is replayed.
    won: bool,
    /// Backup, live: the guest runs alone.
    live: bool,
    /// Backup: the largest guest time the received log showed (RDTSC
    /// values, heartbeats).
    max_guest_tsc: u64,
    /// Backup: the guest's discarded console lines (output id = line
    /// number, as the primary counts them), the last `KEEP_LINES`.
    discarded: alloc::collections::VecDeque<(u64, String)>,
    /// Backup: when each output marker arrived (output id, µs).
    marker_rx: alloc::collections::BTreeMap<u64, u64>,
}

impl<N: Nic + 'static> Node<N> {
    fn new(
        config: &Config,
        shared: SharedStack<N>,
        image: &[u8],
        initrd: Option<&[u8]>,
        guest_cmdline: &str,
    ) -> Self {
        let mut net = shared.borrow_mut();
        let pair = config.pair;
        let role = pair.role.expect("start() runs only with a role");
        let guest_id = guest_identity(image, initrd, guest_cmdline);
        let me = match role {
            Role::Primary => NodeId(1),
            Role::Backup => NodeId(2),
        };
        let mut sc = SessionConfig::new(pair.cluster, guest_id, me);
        sc.heartbeat_interval_ns = pair.heartbeat_ms * 1_000_000;
        sc.failure_timeout_ns = pair.timeout_ms * 1_000_000;
        let now_us = net.clock.micros();
        let now = now_us * 1000;
        let side = match role {
            Role::Primary => Side::Primary(Primary::new(sc, pair.generation, now)),
            Role::Backup => Side::Backup(Backup::new(sc, pair.generation, now)),
        };
        let sock = net.add_tcp(TCP_BUFFER);
        let probe_sock = match (role, pair.probe) {
            (Role::Backup, Some(_)) => Some(net.add_tcp(PROBE_BUFFER)),
            _ => None,
        };
        // The primary writes many small records: let Nagle batch them into
        // full segments while earlier ones are unacknowledged (each frame
        // costs the emulated NIC far more than its bytes). Acks stay
        // immediate: the output rule waits for them.
        net.tcp(sock).set_nagle_enabled(role == Role::Primary);
        println!(
            "ft: {} of cluster {} generation {}, guest id {} (image {} bytes, cmdline \"{guest_cmdline}\"), protocol {}, heartbeat {} ms, failure timeout {} ms",
            role_name(role),
            pair.cluster,
            pair.generation,
            IdHex(&guest_id),
            image.len(),
            ft::log::PROTOCOL_VERSION,
            pair.heartbeat_ms,
            pair.timeout_ms
        );
        let ic = &config.iscsi;
        let lun = ic.portal.map(|p| (p, ic.target.clone(), ic.lun));
        let portal = endpoint(ic.portal.unwrap_or(pair.peer.expect("validated")));
        let clock = net.clock;
        let status_sock = (pair.status_port != 0).then(|| net.add_tcp(STATUS_BUFFER));
        drop(net);
        Node {
            arb: SharedTransport::new(shared.clone(), portal, ISCSI_BUFFER),
            net: shared,
            clock,
            status_sock,
            ready: Vec::new(),
            alone: false,
            lun,
            me,
            sock,
            side,
            sc,
            joined: false,
            join_deadline_us: now_us + config.net.timeout_secs * 1_000_000,
            peer: pair.peer.expect("validated: a role has a peer"),
            cfg: pair,
            guest_id,
            outbox: Vec::new(),
            out_off: 0,
            inbuf: vec![0; 64 * 1024],
            last_pump_us: 0,
            last_tick_us: 0,
            rec_off: 0,
            gate: OutputGate::default(),
            io_gate: OutputGate::default(),
            next_io: 0,
            lag: LagMeter::default(),
            next_line: 0,
            start_us: now_us,
            bytes_sent: 0,
            bytes_recv: 0,
            heard_us: now_us,
            status_due_us: now_us + pair.status_ms * 1000,
            status_bytes: 0,
            status_us: now_us,
            throttles: 0,
            connected: false,
            refusals: 0,
            first_guest_ns: None,
            last_guest_ns: 0,
            generation: pair.generation,
            probe_sock,
            probe: None,
            probes_refused: 0,
            won: false,
            live: false,
            max_guest_tsc: 0,
            discarded: Default::default(),
            marker_rx: Default::default(),
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.micros()
    }

    fn timeout_us(&self) -> u64 {
        self.cfg.timeout_ms * 1000
    }

    /// Primary: connect to the backup (retrying while it boots, at most
    /// `net_timeout`) and say Hello. Backup: listen for the primary.
    fn join(&mut self) {
        let ep = endpoint(self.peer);
        match &mut self.side {
            Side::Primary(_) => {
                println!("ft: primary: connecting to the backup's log port {ep}");
                let deadline = self.join_deadline_us;
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    let connected = self.net.borrow_mut().connect(self.sock, ep, 2_000);
                    match connected {
                        Ok(()) => break,
                        Err(e) if self.now_us() < deadline => {
                            if tries % 20 == 1 {
                                println!("ft: primary: backup not reachable yet ({e}); retrying");
                            }
                            let until = self.now_us() + 200_000;
                            while self.now_us() < until {
                                self.net.borrow_mut().poll();
                            }
                        }
                        Err(e) => {
                            println!(
                                "ft: primary: no backup joined at {ep} within net_timeout ({e}): arbitrating to run alone"
                            );
                            self.start_alone();
                            return;
                        }
                    }
                }
                let now = self.now_us();
                self.connected = true;
                self.joined = true;
                self.heard_us = now;
                // The failure detector starts with the session.
                let mut p = Primary::new(self.sc, self.generation, now * 1000);
                let fx = p.on_connected(now * 1000);
                self.side = Side::Primary(p);
                println!(
                    "ft: primary: log connection to {ep} established after {tries} attempt(s); hello sent; starting the guest"
                );
                self.apply(fx);
                self.pump(true);
            }
            Side::Backup(_) => {
                self.listen();
                println!(
                    "ft: backup: listening on log port {} for the primary at {}",
                    self.peer.port,
                    endpoint(Endpoint {
                        addr: self.peer.addr,
                        port: 0
                    })
                    .addr
                );
                if let Some(a) = self.cfg.probe {
                    println!(
                        "ft: backup: ft_probe: {} may open probe connections to the log port while the session runs (validated, refused, never joined)",
                        IpAddress::v4(a[0], a[1], a[2], a[3])
                    );
                }
            }
        }
    }

    /// Backup: keeps the guest's discarded console lines (the last few).
    fn keep_discarded(&mut self, lines: &mut Option<Vec<String>>) {
        if let Some(held) = lines.as_mut() {
            for text in held.drain(..) {
                self.next_line += 1;
                self.discarded.push_back((self.next_line, text));
                if self.discarded.len() > KEEP_LINES {
                    self.discarded.pop_front();
                }
            }
        }
    }

    /// Backup gone live: the log socket is closed for good.
    fn net_abort_log(&mut self) {
        self.net.borrow_mut().tcp(self.sock).abort();
        self.net.borrow_mut().poll();
        self.connected = false;
    }

    fn listen(&mut self) {
        let open = self.net.borrow_mut().tcp(self.sock).is_open();
        if open {
            self.net.borrow_mut().tcp(self.sock).abort();
            self.net.borrow_mut().poll();
        }
        if self
            .net
            .borrow_mut()
            .tcp(self.sock)
            .listen(self.peer.port)
            .is_err()
        {
            println!(
                "ft: backup: error: cannot listen on port {}",
                self.peer.port
            );
            exit(exitcode::FAILURE);
        }
        self.connected = false;
        self.outbox.clear();
        self.out_off = 0;
    }

    /// Carries out the state machine's effects.
    fn apply(&mut self, fx: Effects) {
        for e in fx {
            match e {
                Effect::Send(bytes) => {
                    if let Side::Primary(p) = &self.side {
                        // Entries (not the hello) start the lag clock.
                        if p.last_seq() > 0 {
                            self.lag.sent(p.last_seq(), self.now_us());
                        }
                    }
                    self.outbox.extend_from_slice(&bytes)
                }
                Effect::Release(id) => {
                    let (acked, now) = match &self.side {
                        Side::Primary(p) => (p.acked(), self.now_us()),
                        Side::Backup(_) => (0, self.now_us()),
                    };
                    if id % 2 == 0 {
                        if let Some(r) = self.io_gate.release(id, acked, now) {
                            self.ready.push(r.item);
                        }
                    } else if let Some(r) = self.gate.release(id, acked, now) {
                        let (n, text) = r.item;
                        println!("guest: {text}");
                        println!(
                            "ft: output #{n} released: marker seq {} acked {} held {} us",
                            r.marker_seq, r.acked, r.held_us
                        );
                    }
                }
                Effect::Throttle(on) => {
                    // Counted where the primary waits (`poll`).
                    if on {
                        println!("ft: primary: backup lags more than 1 s of guest time: throttling the guest");
                    }
                }
                Effect::ResetConnection(err) => {
                    match &mut self.side {
                        Side::Backup(b) => {
                            self.refusals += 1;
                            println!(
                            "ft: backup: REFUSED the log connection: {err} (ours: cluster {} generation {} guest id {} protocol {})",
                            self.cfg.cluster,
                            b.generation(),
                            IdHex(&self.guest_id),
                            ft::log::PROTOCOL_VERSION
                        );
                            self.listen();
                        }
                        Side::Primary(p) => {
                            println!("ft: primary: bad data from the backup: {err}; dropping the connection");
                            p.on_disconnected();
                            self.net.borrow_mut().tcp(self.sock).abort();
                            self.connected = false;
                        }
                    }
                }
                Effect::Arbitrate {
                    expected_generation,
                } => {
                    // Reported by the caller (it ends the run for now).
                    let _ = expected_generation;
                }
                Effect::GoLive(_) | Effect::Halt => {}
            }
        }
    }

    /// Moves bytes between the outbox, the socket and the state machine.
    /// `force`: poll the NIC even if it was polled very recently.
    fn pump(&mut self, force: bool) {
        let now = self.now_us();
        if !force && self.out_off == self.outbox.len() && now < self.last_pump_us + POLL_US {
            return;
        }
        self.last_pump_us = now;
        self.net.borrow_mut().poll();
        let rc = self.net.clone();
        let (state, from) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            (s.state(), s.remote_endpoint())
        };
        if let Side::Backup(_) = &self.side {
            if !self.connected && state == tcp::State::Established {
                let want = endpoint(self.peer).addr;
                match from {
                    Some(ep) if ep.addr == want => {
                        println!("ft: backup: log connection from the primary at {ep}");
                        self.connected = true;
                        self.heard_us = now;
                        if !self.joined {
                            // The failure detector starts with the session.
                            self.joined = true;
                            self.side =
                                Side::Backup(Backup::new(self.sc, self.generation, now * 1000));
                        }
                        if let Side::Backup(b) = &mut self.side {
                            b.on_connected(now * 1000);
                        }
                    }
                    other => {
                        println!("ft: backup: REFUSED a log connection from {other:?}: not the configured peer {want}");
                        self.listen();
                        return;
                    }
                }
            }
        }
        if self.out_off < self.outbox.len() && rc.borrow_mut().tcp(self.sock).may_send() {
            let sent = rc
                .borrow_mut()
                .tcp(self.sock)
                .send_slice(&self.outbox[self.out_off..]);
            if let Ok(n) = sent {
                self.out_off += n;
                self.bytes_sent += n as u64;
                self.status_bytes += n as u64;
            }
            if self.out_off == self.outbox.len() {
                self.outbox.clear();
                self.out_off = 0;
            }
            self.net.borrow_mut().poll();
        }
        loop {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            if !s.can_recv() {
                break;
            }
            let Ok(n) = s.recv_slice(&mut self.inbuf) else {
                break;
            };
            drop(net);
            if n == 0 {
                break;
            }
            self.bytes_recv += n as u64;
            self.heard_us = now;
            let bytes = self.inbuf[..n].to_vec();
            let fx = match &mut self.side {
                Side::Primary(p) => {
                    let fx = p.on_bytes(now * 1000, &bytes);
                    self.lag.applied(p.applied(), now);
                    fx
                }
                Side::Backup(b) => b.on_bytes(now * 1000, &bytes),
            };
            self.apply(fx);
        }
        let (may_recv, state) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            (s.may_recv(), s.state())
        };
        if self.connected && !may_recv && !matches!(state, tcp::State::Established) {
            match &mut self.side {
                Side::Primary(p) => {
                    if p.state() == PrimaryState::Paired {
                        println!(
                            "ft: primary: the backup closed the log connection (state {state})"
                        );
                    }
                    p.on_disconnected();
                    self.connected = false;
                }
                Side::Backup(_) => {
                    println!("ft: backup: the primary closed the log connection");
                    self.listen();
                }
            }
        }
        self.pump_probe(now);
    }

    /// Backup with `ft_probe=`: serves the probe listener. A connection
    /// from the allowed host gets a `Backup` of its own that checks its
    /// bytes exactly like the primary's (framing, CRC32C, session hello,
    /// order); the first error, a close in the middle of a record, a
    /// close before any hello or a valid hello (a session is already
    /// running) refuses it with the reason and resets it. The session
    /// with the primary never sees these bytes.
    fn pump_probe(&mut self, now: u64) {
        let (Some(h), Some(allowed)) = (self.probe_sock, self.cfg.probe) else {
            return;
        };
        let rc = self.net.clone();
        let (open, state, remote) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(h);
            (s.is_open(), s.state(), s.remote_endpoint())
        };
        if !open {
            // Listen only while a session runs: before it, every
            // connection must reach the main listener (the primary's).
            if self.connected && rc.borrow_mut().tcp(h).listen(self.peer.port).is_err() {
                println!("ft: backup: error: cannot listen for probes");
                self.probe_sock = None;
            }
            return;
        }
        if matches!(state, tcp::State::Listen | tcp::State::SynReceived) {
            return;
        }
        if self.probe.is_none() {
            let [a, b, c, d] = allowed;
            match remote {
                Some(ep) if ep.addr == IpAddress::v4(a, b, c, d) => {
                    println!("ft: backup: probe connection from {ep} (ft_probe): validating it; the session with the primary goes on");
                    let mut v = Backup::new(self.sc, self.generation, now * 1000);
                    v.on_connected(now * 1000);
                    self.probe = Some((ep, v));
                }
                other => {
                    let why = alloc::format!(
                        "not the configured peer {} nor the ft_probe host",
                        endpoint(self.peer).addr
                    );
                    self.refuse_probe(other, &why);
                    return;
                }
            }
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = {
                let mut net = rc.borrow_mut();
                let s = net.tcp(h);
                if !s.can_recv() {
                    break;
                }
                match s.recv_slice(&mut buf) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                }
            };
            let Some((ep, v)) = self.probe.as_mut() else {
                return;
            };
            let ep = *ep;
            let fx = v.on_bytes(now * 1000, &buf[..n]);
            let refused = fx.into_iter().find_map(|e| match e {
                Effect::ResetConnection(err) => Some(alloc::format!("{err}")),
                _ => None,
            });
            if let Some(why) = refused {
                self.refuse_probe(Some(ep), &why);
                return;
            }
            if v.hello_seen() {
                let why = alloc::format!(
                    "valid session hello, but a session with the primary at {} is already running",
                    endpoint(self.peer).addr
                );
                self.refuse_probe(Some(ep), &why);
                return;
            }
        }
        let may_recv = rc.borrow_mut().tcp(h).may_recv();
        if !may_recv {
            let Some((ep, v)) = self.probe.as_ref() else {
                return;
            };
            let (ep, left) = (*ep, v.buffered());
            let why = if left > 0 {
                alloc::format!(
                    "truncated record: the connection closed with {left} bytes of an incomplete record"
                )
            } else {
                "the connection closed before a session hello".into()
            };
            self.refuse_probe(Some(ep), &why);
        }
    }

    fn refuse_probe(&mut self, from: Option<IpEndpoint>, why: &str) {
        self.probes_refused += 1;
        match from {
            Some(ep) => println!("ft: backup: REFUSED a probe connection from {ep}: {why}"),
            None => println!("ft: backup: REFUSED a probe connection: {why}"),
        }
        self.probe = None;
        if let Some(h) = self.probe_sock {
            self.net.borrow_mut().tcp(h).abort();
            // Let the reset out; the listener reopens at the next pump.
            self.net.borrow_mut().poll();
        }
    }

    /// Primary: hands new recorder entries to the state machine.
    fn ship_recorded(&mut self, tape: &Tape, guest_ns: u64) -> Result<(), String> {
        let (Tape::Record(r), Side::Primary(_)) = (tape, &self.side) else {
            return Ok(());
        };
        let mut fx = Effects::new();
        while self.rec_off < r.bytes.len() {
            let (rec, used) = decode_record(&r.bytes[self.rec_off..])
                .map_err(|e| alloc::format!("the recorder's own log does not decode: {e}"))?;
            self.rec_off += used;
            let now = self.now_us() * 1000;
            let Side::Primary(p) = &mut self.side else {
                unreachable!()
            };
            let (_, more) = p
                .record(now, guest_ns, rec.entry)
                .map_err(|e| alloc::format!("primary: cannot log an entry: {e}"))?;
            fx.extend(more);
        }
        self.apply(fx);
        Ok(())
    }

    fn status(&mut self, guest_ns: u64, discarded: u64) {
        let now = self.now_us();
        if now < self.status_due_us {
            return;
        }
        self.status_due_us = now + self.cfg.status_ms * 1000;
        let rate = mbit_per_s(self.status_bytes, now - self.status_us);
        self.status_bytes = 0;
        self.status_us = now;
        println!("{}", self.status_line(guest_ns, discarded, rate));
    }

    fn status_line(
        &self,
        guest_ns: u64,
        discarded: u64,
        rate: kernel::ftnode::Centi,
    ) -> StatusLine {
        let now = self.now_us();
        let heard_ms = now.saturating_sub(self.heard_us) / 1000;
        match &self.side {
            Side::Primary(p) => StatusLine {
                role: "primary",
                state: match p.state() {
                    PrimaryState::Paired => "paired",
                    PrimaryState::Arbitrating => "arbitrating",
                    PrimaryState::Alone => "alone",
                    PrimaryState::Halted => "ended",
                },
                generation: p.generation(),
                seq: p.last_seq(),
                acked: p.acked(),
                applied: p.applied(),
                lag_entries: p.last_seq() - p.applied(),
                lag_us: self.lag.last_us.max(self.lag.pending_age_us(now)),
                lag_guest_us: p.lag_ns(guest_ns) / 1000,
                rate,
                heard_ms,
                held: self.gate.waiting() as u64,
                released: self.gate.released,
                discarded: 0,
            },
            Side::Backup(b) => StatusLine {
                role: "backup",
                state: match b.state() {
                    ft::backup::BackupState::Following => "following",
                    ft::backup::BackupState::Arbitrating => "arbitrating",
                    ft::backup::BackupState::Draining => "draining",
                    // Won, still replaying what it received: not live yet.
                    ft::backup::BackupState::Live if !self.live => "draining",
                    ft::backup::BackupState::Live => "live",
                    ft::backup::BackupState::Halted => "ended",
                },
                generation: b.generation(),
                seq: b.received(),
                acked: b.applied(),
                applied: b.applied(),
                lag_entries: b.received() - b.applied(),
                lag_us: 0,
                lag_guest_us: 0,
                rate,
                heard_ms,
                held: 0,
                released: 0,
                discarded,
            },
        }
    }

    /// Backup: received records to the replayer, applied position back.
    fn feed(&mut self, replayer: &mut Replayer) -> Result<(), String> {
        let Side::Backup(b) = &mut self.side else {
            return Ok(());
        };
        for r in b.take_received() {
            let t = match &r.entry {
                ft::log::LogEntry::NonDet {
                    source:
                        ft::log::NonDetSource::Rdtsc
                        | ft::log::NonDetSource::Rdtscp { .. }
                        | ft::log::NonDetSource::Msr { index: 0x10 },
                    value,
                    ..
                } => *value,
                ft::log::LogEntry::Heartbeat { guest_time_ns, .. } => *guest_time_ns,
                ft::log::LogEntry::OutputMarker { output_id, .. } if output_id % 2 == 1 => {
                    // A console line's marker, by line number.
                    self.marker_rx.insert(output_id.div_ceil(2), self.heard_us);
                    if self.marker_rx.len() > KEEP_LINES {
                        self.marker_rx.pop_first();
                    }
                    0
                }
                _ => 0,
            };
            self.max_guest_tsc = self.max_guest_tsc.max(t);
            replayer.push(r);
        }
        b.set_applied(replayer.applied_seq());
        if b.goodbye().is_some() && replayer.stream_open() {
            match b.goodbye() {
                Some(GoodbyeReason::Shutdown) => {
                    println!(
                        "ft: backup: the primary ended the session after seq {}; replaying to the end",
                        b.received().saturating_sub(1)
                    );
                    replayer.end_stream();
                }
                other => {
                    return Err(alloc::format!(
                        "backup: the primary said goodbye ({other:?}): halting the guest for good"
                    ))
                }
            }
        }
        if b.state() == ft::backup::BackupState::Halted && b.goodbye().is_none() {
            return Err(
                "backup: fenced by the primary's go-live: halting the guest for good".into(),
            );
        }
        if !self.joined {
            if self.clock.micros() > self.join_deadline_us {
                return Err("backup: no primary joined within net_timeout".into());
            }
            return Ok(());
        }
        // Progress acks (applied) at most every millisecond: reception is
        // acknowledged at once by `on_bytes` (the output rule waits on it).
        let now_us = self.clock.micros();
        if now_us < self.last_tick_us + 1000 {
            return Ok(());
        }
        self.last_tick_us = now_us;
        let fx = b.tick(now_us * 1000);
        let arbitrate = arbitration_asked(&fx);
        self.apply(fx);
        if let Some(expected) = arbitrate {
            self.settle(expected)?;
            self.won = true;
            // Nothing more will arrive: stop listening for the primary.
            self.net_abort_log();
            let Side::Backup(b) = &self.side else {
                unreachable!()
            };
            println!(
                "ft: backup: replaying the {} entries received ({} applied so far) before going live",
                b.received(),
                replayer.applied_seq()
            );
        }
        Ok(())
    }
}

/// The node's transport lent to an initiator for one arbitration.
struct Lent<'a, N: Nic>(&'a mut SharedTransport<N>);

impl<N: Nic> Transport for Lent<'_, N> {
    fn send(&mut self, bytes: &[u8]) -> drivers::Result<usize> {
        self.0.send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> drivers::Result<usize> {
        self.0.recv(buf)
    }
    fn reconnect(&mut self) -> drivers::Result<()> {
        self.0.reconnect()
    }
}

impl<N: Nic + 'static> Node<N> {
    /// Primary: the state machine's timers (heartbeat, lag, failure) at
    /// `now_ns`; a failure detected means arbitration ([`Self::backup_lost`]).
    fn primary_tick(&mut self, now_ns: u64, guest_ns: u64, at: ExecPoint) -> Result<(), String> {
        let Side::Primary(p) = &mut self.side else {
            unreachable!("primary_tick runs on the primary")
        };
        let fx = p.tick(now_ns, guest_ns, at);
        let arbitrate = arbitration_asked(&fx);
        self.apply(fx);
        match arbitrate {
            Some(expected) => self.backup_lost(expected),
            None => Ok(()),
        }
    }

    /// Primary: the backup fell silent past the failure timeout.
    /// Arbitrate; a win means the guest runs on alone (DESIGN.md §1.7):
    /// the held outputs are released (the state machine says so) and new
    /// ones leave at once. `Err`: lost or no storage (halt).
    fn backup_lost(&mut self, expected: u64) -> Result<(), String> {
        self.settle(expected)?;
        self.alone = true;
        self.net_abort_log();
        let Side::Primary(p) = &self.side else {
            unreachable!("only the primary loses its backup")
        };
        println!(
            "ft: primary: ALONE under generation {}: the backup is gone; {} held output(s) released, new outputs leave at once (no backup until one is added by state transfer)",
            p.generation(),
            self.ready.len() + self.gate.released as usize
        );
        Ok(())
    }

    /// Primary at the end: every output still held leaves (the backup
    /// acknowledged the whole log up to `acked`, or there is no backup).
    fn release_all(&mut self, acked: u64, io: &mut GuestIo) {
        let now = self.now_us();
        for n in 1..=self.next_line {
            if let Some(r) = self.gate.release(line_output_id(n), acked, now) {
                let (n, text) = r.item;
                println!("guest: {text}");
                println!(
                    "ft: output #{n} released: marker seq {} acked {} held {} us",
                    r.marker_seq, r.acked, r.held_us
                );
            }
        }
        for n in 1..=self.next_io {
            if let Some(r) = self.io_gate.release(io_output_id(n), acked, now) {
                self.ready.push(r.item);
            }
        }
        self.emit_ready(io);
    }

    /// Primary whose backup never joined (DESIGN.md §1.1): the guest may
    /// start alone only after winning the test-and-set; otherwise (lost,
    /// or no storage) it never starts.
    fn start_alone(&mut self) {
        let expected = self.generation;
        match self.arbitrate(expected) {
            Verdict::Won(f) => {
                let now = self.now_us() * 1000;
                self.side = Side::Primary(Primary::new_alone(self.sc, f.generation, now));
                self.alone = true;
                println!(
                    "ft: primary: WON the test-and-set: flag generation {expected} -> {} owner {}",
                    f.generation, f.owner.0
                );
                println!(
                    "ft: primary: ALONE under generation {}: starting the guest without a backup",
                    f.generation
                );
            }
            Verdict::Lost(f) => {
                println!(
                    "ft: primary: LOST the test-and-set (flag generation {} owner {}): another node runs this guest; not starting it",
                    f.generation, f.owner.0
                );
                exit(exitcode::FAILURE);
            }
            Verdict::Unreachable => {
                println!("ft: primary: shared storage unreachable: no one may go live; not starting the guest");
                exit(exitcode::FAILURE);
            }
        }
    }

    /// Primary: lets the outputs the backup acknowledged leave, in order.
    fn emit_ready(&mut self, io: &mut GuestIo) {
        for (slot, out) in self.ready.drain(..) {
            io.emit(slot, out);
        }
    }

    /// The status port (`ft_status_port=`, DESIGN.md §6): every connection
    /// gets one JSON line and is closed.
    fn serve_status(&mut self, guest_ns: u64) {
        let Some(h) = self.status_sock else {
            return;
        };
        let rc = self.net.clone();
        let state = rc.borrow_mut().tcp(h).state();
        match state {
            tcp::State::Closed if rc.borrow_mut().tcp(h).listen(self.cfg.status_port).is_err() => {
                println!(
                    "ft: error: cannot listen on the status port {}",
                    self.cfg.status_port
                );
                self.status_sock = None;
            }
            tcp::State::Established => {
                let now = self.now_us();
                let rate = mbit_per_s(self.status_bytes, now.saturating_sub(self.status_us).max(1));
                let mut line = self.status_line(guest_ns, 0, rate).json();
                line.push('\n');
                let mut net = rc.borrow_mut();
                let s = net.tcp(h);
                if s.send_slice(line.as_bytes()).is_ok() {
                    s.close();
                } else {
                    s.abort();
                }
            }
            tcp::State::CloseWait => rc.borrow_mut().tcp(h).close(),
            tcp::State::TimeWait => rc.borrow_mut().tcp(h).abort(),
            _ => {}
        }
    }

    fn role(&self) -> &'static str {
        match self.side {
            Side::Primary(_) => "primary",
            Side::Backup(_) => "backup",
        }
    }

    /// The test-and-set on the shared LUN (DESIGN.md §1.7): log in, then
    /// [`ft::arbitration::arbitrate`] on the flag ([`LunFlag`]: read it;
    /// if it still holds `expected` generation, one COMPARE AND WRITE to
    /// `expected + 1` owned by this node; a flag already at our own
    /// `expected + 1`, an earlier write whose reply was lost, is our win).
    /// Unreachable storage (or none configured) is `Verdict::Unreachable`:
    /// no one may go live.
    fn arbitrate(&mut self, expected: u64) -> Verdict {
        let role = self.role();
        let Some((portal, target, lun)) = self.lun.clone() else {
            println!("ft: {role}: no shared LUN configured (iscsi=): storage unreachable");
            return Verdict::Unreachable;
        };
        let me = self.me.0;
        let name = alloc::format!("iqn.2024-01.org.ftvisor:ft{me}");
        let cfg = drivers::iscsi::session::SessionConfig::new(
            &name,
            &target,
            [0x80, 0x46, 0x54, 0x56, 0xF7, me as u8],
        );
        let clock = self.clock;
        println!(
            "ft: {role}: arbitrating on the shared LUN at {} lun {lun} (flag at lba {FLAG_LBA}): expecting generation {expected}",
            endpoint(portal)
        );
        let mut ini = match Initiator::login(Lent(&mut self.arb), clock, cfg, lun) {
            Ok(i) => i,
            Err(e) => {
                println!("ft: {role}: iSCSI login failed: {e}: storage unreachable");
                return Verdict::Unreachable;
            }
        };
        let mut flag = LunFlag::new(&mut ini, Arbiter::new(FLAG_LBA));
        let verdict = arbitrate(&mut flag, expected, NodeId(me));
        if let (Verdict::Unreachable, Some((step, e))) = (verdict, &flag.last_error) {
            // "reading the flag failed: …" or "COMPARE AND WRITE failed: …"
            println!("ft: {role}: {step} failed: {e}");
        }
        if let Err(e) = ini.logout() {
            println!("ft: {role}: iSCSI logout: {e}");
        }
        verdict
    }

    /// The peer fell silent past `ft_timeout`: arbitrate and hand the
    /// verdict to the state machine. `Ok(true)`: this node won (the
    /// caller goes live); `Err`: it lost (halt for good) or storage is
    /// unreachable (no one may go live: halt).
    fn settle(&mut self, expected: u64) -> Result<bool, String> {
        let role = self.role();
        let silent_ms = self.now_us().saturating_sub(self.heard_us) / 1000;
        println!(
            "ft: {role}: peer silent for {silent_ms} ms (failure timeout {} ms): arbitrating",
            self.cfg.timeout_ms
        );
        let verdict = self.arbitrate(expected);
        let now = self.now_us() * 1000;
        let fx = match &mut self.side {
            Side::Primary(p) => p.on_verdict(now, verdict),
            Side::Backup(b) => b.on_verdict(now, verdict),
        };
        match verdict {
            Verdict::Won(f) => {
                println!(
                    "ft: {role}: WON the test-and-set: flag generation {expected} -> {} owner {}",
                    f.generation, f.owner.0
                );
                self.apply(fx);
                Ok(true)
            }
            Verdict::Lost(f) => {
                self.apply(fx);
                Err(alloc::format!(
                    "{role}: LOST the test-and-set (flag generation {} owner {}): halting the guest for good",
                    f.generation, f.owner.0
                ))
            }
            Verdict::Unreachable => Err(alloc::format!(
                "{role}: shared storage unreachable: no one may go live; halting"
            )),
        }
    }
}

/// The generation to arbitrate from, if `fx` asks for arbitration (the node
/// carries it out: `Node::settle`).
fn arbitration_asked(fx: &Effects) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Arbitrate {
            expected_generation,
        } => Some(*expected_generation),
        _ => None,
    })
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Backup => "backup",
    }
}

impl<N: Nic + 'static> Live for Node<N> {
    fn poll(
        &mut self,
        tape: &mut Tape,
        at: ExecPoint,
        guest_ns: u64,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Result<(), String> {
        self.first_guest_ns.get_or_insert(guest_ns);
        self.last_guest_ns = guest_ns;
        match tape {
            Tape::Record(_) => {
                self.ship_recorded(tape, guest_ns)?;
                let now = self.now_us();
                let mut fx = Effects::new();
                if let (Some(held), Side::Primary(p)) = (lines.as_mut(), &mut self.side) {
                    for text in held.drain(..) {
                        self.next_line += 1;
                        let id = line_output_id(self.next_line);
                        let more = p
                            .output(now * 1000, guest_ns, at, id)
                            .map_err(|e| alloc::format!("primary: cannot log an output: {e}"))?;
                        self.gate
                            .hold(id, (self.next_line, text), p.last_seq(), now);
                        fx.extend(more);
                    }
                }
                if let Side::Primary(p) = &mut self.side {
                    io.set_gated(true);
                    for item in io.take_gated() {
                        self.next_io += 1;
                        let id = io_output_id(self.next_io);
                        let more = p
                            .output(now * 1000, guest_ns, at, id)
                            .map_err(|e| alloc::format!("primary: cannot log an output: {e}"))?;
                        self.io_gate.hold(id, item, p.last_seq(), now);
                        fx.extend(more);
                    }
                }
                self.apply(fx);
                self.emit_ready(io);
                // Timers (heartbeat, lag/throttle, failure) every ms: the
                // lag check walks the unapplied window.
                if now < self.last_tick_us + 1000 {
                    self.pump(false);
                    return Ok(());
                }
                self.last_tick_us = now;
                self.primary_tick(now * 1000, guest_ns, at)?;
                self.pump(false);
                // A lagging backup slows the guest down: wait for acks,
                // when it lags more than 1 s of guest time (the state
                // machine's rule) or has not applied what was sent more
                // than `THROTTLE_US` of hypervisor time ago (in Bochs guest
                // time can run far slower than the emulator's clock, so the
                // first alone lets the wall-time lag grow to tens of seconds).
                let mut waited = false;
                while matches!(&self.side, Side::Primary(p) if p.throttled())
                    || (!self.alone
                        && self.connected
                        && self.lag.pending_age_us(self.now_us()) > THROTTLE_US)
                {
                    if !waited {
                        waited = true;
                        self.throttles += 1;
                    }
                    self.pump(true);
                    self.primary_tick(self.now_us() * 1000, guest_ns, at)?;
                }
                self.emit_ready(io);
                self.status(guest_ns, 0);
            }
            Tape::Replay(replayer) => {
                self.keep_discarded(lines);
                self.pump(false);
                self.feed(replayer)?;
                self.status(guest_ns, 0);
            }
            Tape::Off => {
                // A backup gone live: the stack still carries the status
                // port and ARP (its log socket is closed: nothing to move).
                self.pump(false);
            }
        }
        self.serve_status(guest_ns);
        Ok(())
    }

    fn before_entry(&mut self, tape: &mut Tape, guest_ns: u64) {
        if let Tape::Record(_) = tape {
            // Errors surface at the next poll (the same bytes decode again).
            let _ = self.ship_recorded(tape, guest_ns);
            self.pump(false);
        }
    }

    fn go_live(
        &mut self,
        replayer: &Replayer,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Option<u64> {
        self.keep_discarded(lines);
        if !self.won || self.live {
            return None;
        }
        self.live = true;
        let back = io.go_live();
        let Side::Backup(b) = &self.side else {
            return None;
        };
        println!(
            "ft: backup: LIVE under generation {}: replayed {} of {} entries received ({} held back: a trailing checkpoint); guest time not before {}; the guest runs alone, its outputs are real",
            b.generation(),
            replayer.applied_seq(),
            b.received(),
            replayer.remaining(),
            self.max_guest_tsc
        );
        // Outputs (DESIGN.md §1.4): a line whose marker never arrived was
        // never released by the primary; one whose marker arrived just
        // before the primary fell silent may not have been (its ack may
        // not have reached it). Re-emit both: at least once, a duplicate
        // at the seam rather than a loss.
        let window_us = (20 * self.cfg.heartbeat_ms).max(200) * 1000;
        let since = self.heard_us.saturating_sub(window_us);
        for (id, text) in core::mem::take(&mut self.discarded) {
            let why = match self.marker_rx.get(&id) {
                None => "its marker never reached the backup",
                Some(&t) if t >= since => {
                    "its marker arrived in the last window before the silence"
                }
                Some(_) => continue,
            };
            println!(
                "ft: backup: output #{id} re-emitted ({why}; window {} ms): the primary may not have released it",
                window_us / 1000
            );
            println!("guest: {text}");
        }
        if back.announced {
            println!(
                "ft: backup: announced the guest MAC {} (RARP) so the network finds it here",
                drivers::nic::MacDisplay(kernel::guestio::GUEST_MAC)
            );
        }
        println!(
            "ft: backup: re-issued {} pending disk request(s) the guest was waiting for",
            back.reissued
        );
        Some(self.max_guest_tsc)
    }

    fn wait(&mut self, replayer: &mut Replayer) -> Result<(), String> {
        loop {
            self.pump(true);
            self.feed(replayer)?;
            if self.won || !replayer.must_wait() {
                return Ok(());
            }
            self.status(self.last_guest_ns, 0);
        }
    }

    fn end_primary(
        &mut self,
        recorder: &Recorder,
        lines: &mut Option<Vec<String>>,
        guest_ns: u64,
        io: &mut GuestIo,
    ) -> bool {
        if self.alone {
            // No backup: everything held went out when the flag was won,
            // and everything since at once; the last lines go out now.
            let now = self.now_us();
            if let Some(held) = lines.as_mut() {
                for text in held.drain(..) {
                    self.next_line += 1;
                    let id = line_output_id(self.next_line);
                    self.gate.hold(id, (self.next_line, text), 0, now);
                }
            }
            self.release_all(0, io);
            self.emit_ready(io);
            self.net.borrow_mut().poll();
            println!(
                "ft: pair: primary done: alone (the backup was lost); outputs released={} io_released={}",
                self.gate.released, self.io_gate.released
            );
            return true;
        }
        // Ship the rest of the log, the final checkpoint last.
        let mut fx = Effects::new();
        while self.rec_off < recorder.bytes.len() {
            let Ok((rec, used)) = decode_record(&recorder.bytes[self.rec_off..]) else {
                println!("ft: primary: error: the recorder's own log does not decode");
                return false;
            };
            self.rec_off += used;
            let now = self.now_us() * 1000;
            let Side::Primary(p) = &mut self.side else {
                return false;
            };
            match p.record(now, guest_ns, rec.entry) {
                Ok((_, more)) => fx.extend(more),
                Err(e) => {
                    println!("ft: primary: error: cannot log the final entries: {e}");
                    return false;
                }
            }
        }
        self.apply(fx);
        let Side::Primary(p) = &self.side else {
            return false;
        };
        let last = p.last_seq();
        // Lines flushed after the guest's last exit: covered by the final
        // checkpoint's record.
        let now = self.now_us();
        if let Some(held) = lines.as_mut() {
            for text in held.drain(..) {
                self.next_line += 1;
                let id = line_output_id(self.next_line);
                self.gate.hold(id, (self.next_line, text), last, now);
            }
        }
        let deadline = now + self.timeout_us().max(10_000_000);
        loop {
            self.pump(true);
            let Side::Primary(p) = &self.side else {
                return false;
            };
            if p.acked() >= last {
                break;
            }
            if !self.connected || self.now_us() > deadline {
                println!(
                    "ft: primary: error: the backup did not acknowledge the end of the log (acked {} of {last})",
                    p.acked()
                );
                return false;
            }
        }
        // Everything acknowledged: the lines without a marker go out too.
        self.release_all(last, io);
        let Side::Primary(p) = &mut self.side else {
            return false;
        };
        let fx = p.shutdown();
        self.apply(fx);
        io.set_gated(false);
        let deadline = self.now_us() + 5_000_000;
        while self.now_us() < deadline {
            self.pump(true);
            let mut net = self.net.borrow_mut();
            let s = net.tcp(self.sock);
            if self.outbox.is_empty() && s.send_queue() == 0 {
                s.close();
                break;
            }
        }
        // Let the FIN out.
        let until = self.now_us() + 200_000;
        while self.now_us() < until {
            self.net.borrow_mut().poll();
        }
        let Side::Primary(p) = &self.side else {
            return false;
        };
        let run_us = self.now_us().saturating_sub(self.start_us);
        let guest_us = (self.last_guest_ns.max(guest_ns) - self.first_guest_ns.unwrap_or(0)) / 1000;
        println!(
            "ft: pair: primary done: entries={} log_bytes={} acked={} applied={} outputs held={} released={} violations={} hold_max_us={} hold_mean_us={} io_outputs held={} released={} violations={} hold_max_us={} hold_mean_us={} lag_mean_us={} lag_max_us={} lag_samples={} throttled={} run_us={run_us} guest_us={guest_us} log_mbit_s={} log_mbit_per_guest_s={}",
            p.last_seq(),
            self.bytes_sent,
            p.acked(),
            p.applied(),
            self.gate.held_total,
            self.gate.released,
            self.gate.violations,
            self.gate.max_hold_us,
            self.gate.sum_hold_us.checked_div(self.gate.released).unwrap_or(0),
            self.io_gate.held_total,
            self.io_gate.released,
            self.io_gate.violations,
            self.io_gate.max_hold_us,
            self.io_gate.sum_hold_us.checked_div(self.io_gate.released).unwrap_or(0),
            self.lag.mean_us(),
            self.lag.max_us,
            self.lag.samples,
            self.throttles,
            mbit_per_s(self.bytes_sent, run_us),
            mbit_per_s(self.bytes_sent, guest_us),
        );
        self.gate.violations == 0 && self.io_gate.violations == 0
    }

    fn end_backup(&mut self, replayer: &Replayer, discarded: u64, verdict: &str) {
        let Side::Backup(b) = &self.side else {
            return;
        };
        let run_us = self.now_us().saturating_sub(self.start_us);
        println!(
            "ft: pair: backup done: received={} applied={} pending={} outputs discarded={discarded} refused_connections={} probes_refused={} log_bytes_received={} run_us={run_us} log_mbit_s={} verdict={}",
            b.received(),
            replayer.applied_seq(),
            replayer.remaining(),
            self.refusals,
            self.probes_refused,
            self.bytes_recv,
            mbit_per_s(self.bytes_recv, run_us),
            verdict
        );
    }
}

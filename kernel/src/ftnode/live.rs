//! The FT pair's node in the hypervisor (issue 9, issue 14; DESIGN.md
//! §1.1-§1.7): the adapter around `ft::node::Node`, which makes every FT
//! decision (join, reconnect, arbitration with retry, fencing, go-live,
//! throttle, halt) and is the node the simulator runs. This file only
//! connects it to the world: one smoltcp TCP connection on the
//! hypervisor's own NIC (the log channel), the shared LUN over iSCSI
//! (`live/lun.rs`), the VMX run loop (`crate::vmm`, through the [`Live`]
//! hooks), the guest's devices (outputs under the output rule), the
//! console and the status port.
//!
//! * **Join** (after the guest is built, [`Live::join`]): the session's
//!   generation is read from the shared LUN (a configured `ft_generation`
//!   that differs is refused with both numbers); the primary connects to
//!   the backup's log port (retrying while it boots) and says Hello; the
//!   backup listens. The failure detectors arm once the Hello is
//!   acknowledged.
//! * **Primary** (§1.1, §1.4): records like `ft=record` (the run loop's
//!   `ft::replay::Recorder`); at every run-loop iteration the new entries
//!   go to the node and out on the socket. Guest console lines, frames and
//!   disk requests are outputs: each gets an `OutputMarker` and leaves
//!   only once the backup acknowledged it (`OutputGate` counts and checks
//!   what the node releases). A dropped connection is reconnected as the
//!   node asks ([`ft::node::Node::wants_connection`]), from a new port;
//!   the node resends what the backup has not received.
//! * **Backup** (§1.3, §1.5): accepts the primary's connection (only
//!   `peer=`), hands each received record to the streaming
//!   `ft::replay::Replayer`; the guest runs only up to the last entry
//!   received; its outputs are discarded and counted.
//! * Bad input (§1.5): with `ft_probe=` the backup opens a second listener
//!   while the session runs for that host, checks its bytes with a
//!   `Backup` of its own and resets the connection with the reason
//!   (`Node::pump_probe`, `ft-hostile-log`).
//! * Both print a status line every `ft_status` ms of hypervisor time
//!   and answer the status port (§6 "Observable").
//! * Failure (§1.7): the node detects the silence, arbitrates on the LUN
//!   (retried while storage is unreachable), and either halts for good,
//!   runs on alone (primary) or drains and goes live (backup:
//!   `Live::go_live`, the run loop drops the tape; pending disk requests
//!   are re-issued, the guest's MAC announced, time moved forward).
//!   Console lines the primary may not have released are re-emitted by a
//!   backup going live (at least once).
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
use drivers::nic::Nic;
use drivers::smoltcp::iface::SocketHandle;
use drivers::smoltcp::socket::tcp;
use drivers::smoltcp::wire::{IpAddress, IpEndpoint};
use ft::arbitration::{NodeId, Verdict};
use ft::backup::Backup;
use ft::log::{decode_record, ExecPoint, GoodbyeReason};
use ft::node::{join, Join, LogEnd, Node as FtNode, NodeConfig, NodeRole, NodeState, SessionEnd};
use ft::replay::{Recorder, Replayer, Tape};
use ft::seam::Unreleased;
use ft::{Effect, Effects, FtError, GoLive, SessionConfig};
use kernel::config::{Config, Endpoint, Role};
use kernel::devices::virtio::GuestOutput;
use kernel::exitcode;
use kernel::ftnode::{
    guest_identity, machine_identity, mbit_per_s, DiskStall, IdHex, LagMeter, OutputGate,
};
use kernel::guestio::{GuestIo, Slot};
use vmx::caps::{PmuInfo, VmxCaps};

/// TCP buffers of the log connection (each way).
const TCP_BUFFER: usize = 256 * 1024;
/// Poll the NIC at least this often while the guest runs (µs).
const POLL_US: u64 = 500;
/// Discarded console lines a backup keeps for its go-live at most (those
/// the primary may not have released: about a second of output, the
/// throttle's bound); beyond it the oldest are dropped, and counted.
const KEEP_LINES: usize = 4096;
/// TCP buffers of the iSCSI connection (arbitration only).
const ISCSI_BUFFER: usize = 16 * 1024;
/// TCP buffers of a probe connection (`ft_probe=`).
const PROBE_BUFFER: usize = 16 * 1024;
/// TCP buffers of the status port.
const STATUS_BUFFER: usize = 2048;
/// A primary without a log connection asks for one this often (ms).
const RECONNECT_MS: u64 = 200;
/// A connection attempt without any answer is given up after this (ms);
/// the node asks for the next one.
const CONNECT_MS: u64 = 2_000;

#[path = "live/lun.rs"]
mod lun;
#[path = "live/probe.rs"]
mod probe;
#[path = "live/status.rs"]
mod status;
use lun::{LunAddress, LunStorage};

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
    /// The guest is built and about to run: join the session (read the
    /// generation from the LUN, register this node's reservation key for
    /// the flag's and `io`'s disk sessions, connect or listen). Joining
    /// only now keeps a long guest setup from looking like a dead peer.
    fn join(&mut self, io: &mut GuestIo);
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
    /// Long hypervisor work between run-loop iterations (hashing guest
    /// RAM at the end, the guest stopped at `at`): keep the log channel
    /// alive (acks, heartbeats at `at`, failure detection) so the peer
    /// never takes the pause for a death.
    fn keepalive(&mut self, at: ExecPoint);
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
    /// Backup: still following the primary (no failure detected).
    fn following(&self) -> bool;
    /// Backup: the replayer holds nothing to run to; poll until it does.
    /// `io`: the guest's devices (their disk session may carry the flag).
    fn wait(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String>;
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

/// One side of the pair: the FT node, its socket and its numbers.
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
    /// The shared LUN; `None`: no storage, so no one may go live.
    lun: Option<LunAddress>,
    role: Role,
    sock: SocketHandle,
    /// The FT node: every decision is its.
    ft: FtNode,
    ncfg: NodeConfig,
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
    /// The log socket holds an established connection the node knows of.
    connected: bool,
    /// Primary: a connection attempt is under way (SYN sent) since this
    /// time (µs).
    connecting: Option<u64>,
    /// Primary: connection attempts so far, and whether one ever got
    /// through (the first connection is the join; later ones reconnect).
    connect_attempts: u64,
    ever_connected: bool,
    refusals: u64,
    first_guest_ns: Option<u64>,
    last_guest_ns: u64,
    /// Backup with `ft_probe=`: a second listener on the log port, open
    /// while the session runs, and the connection it holds (validated by
    /// its own `Backup`, never joined to the session).
    probe_sock: Option<SocketHandle>,
    probe: Option<(IpEndpoint, Backup)>,
    probes_refused: u64,
    /// The node's go-live, once it decided it (backup: after draining).
    golive: Option<GoLive>,
    /// Backup: the go-live sequence ran (devices attached, MAC announced).
    live: bool,
    /// Why the node halted for good, once it did.
    halted: Option<String>,
    /// Arbitrations whose outcome was reported.
    arbitrations_seen: u64,
    /// Backup: the guest's discarded console lines the primary may not
    /// have released (the node's seam judges), by output id.
    discarded: alloc::collections::BTreeMap<u64, (u64, String)>,
    /// Backup: discarded lines dropped beyond `KEEP_LINES`.
    discarded_dropped: u64,
    /// Backup: the last sequence received from the primary.
    log_received: u64,
    /// The guest's point at the last poll (heartbeats after it stopped).
    last_at: ExecPoint,
    /// Backup: log connections reset by `ft_test_reset=` so far.
    test_resets: u64,
    /// When a storage-outage retry was last reported (µs).
    retry_noted_us: u64,
    /// Primary: since when the guest disk has owed requests without
    /// progress (the node judges it: one-sided storage loss).
    disk_stall: DiskStall,
    /// Backup: the primary's step-down was reported.
    step_down_noted: bool,
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
        let (me, peer_id) = match role {
            Role::Primary => (NodeId(1), NodeId(2)),
            Role::Backup => (NodeId(2), NodeId(1)),
        };
        let mut sc = SessionConfig::new(pair.cluster, guest_id, me);
        // Memory and disk size are filled in at join (the guest is built).
        sc.machine = machine_identity(config, 0, 0);
        sc.heartbeat_interval_ns = pair.heartbeat_ms * 1_000_000;
        sc.failure_timeout_ns = pair.timeout_ms * 1_000_000;
        sc.join_timeout_ns = config.net.timeout_secs * 1_000_000_000;
        let mut ncfg = NodeConfig::new(sc, peer_id);
        ncfg.reconnect_interval_ns = RECONNECT_MS * 1_000_000;
        // The final ack may wait behind a backup hashing its RAM for the
        // verdict (192 MiB for Linux): twice the timeout, 20 s at least.
        ncfg.end_timeout_ns = (2 * pair.timeout_ms * 1_000_000).max(20_000_000_000);
        // Fencing (SCSI-3 persistent reservations on the shared LUN): both
        // nodes register; the winner of the flag preempts the loser. Only
        // a guest disk on the LUN has writes to fence.
        ncfg.fencing = config.disk == kernel::config::DiskChoice::Iscsi;
        ncfg.shared_storage = config.iscsi.portal.is_some();
        let now_us = net.clock.micros();
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
            "ft: {} of cluster {}, guest id {} (image {} bytes, cmdline \"{guest_cmdline}\"), protocol {}, heartbeat {} ms, failure timeout {} ms",
            role_name(role),
            pair.cluster,
            IdHex(&guest_id),
            image.len(),
            ft::log::PROTOCOL_VERSION,
            pair.heartbeat_ms,
            pair.timeout_ms
        );
        let ic = &config.iscsi;
        let lun = ic.portal.map(|portal| LunAddress {
            portal,
            target: ic.target.clone(),
            lun: ic.lun,
        });
        let portal = endpoint(ic.portal.unwrap_or(pair.peer.expect("validated")));
        let clock = net.clock;
        let status_sock = (pair.status_port != 0).then(|| net.add_tcp(STATUS_BUFFER));
        drop(net);
        let node_role = match role {
            Role::Primary => NodeRole::Primary,
            Role::Backup => NodeRole::Backup,
        };
        Node {
            arb: SharedTransport::new(shared.clone(), portal, ISCSI_BUFFER),
            net: shared,
            clock,
            status_sock,
            ready: Vec::new(),
            lun,
            role,
            sock,
            // Replaced at join, under the generation the join finds.
            ft: FtNode::new(ncfg, node_role, pair.generation.unwrap_or(0), now_us * 1000),
            ncfg,
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
            connecting: None,
            connect_attempts: 0,
            ever_connected: false,
            refusals: 0,
            first_guest_ns: None,
            last_guest_ns: 0,
            probe_sock,
            probe: None,
            probes_refused: 0,
            golive: None,
            live: false,
            halted: None,
            arbitrations_seen: 0,
            discarded: Default::default(),
            discarded_dropped: 0,
            log_received: 0,
            last_at: ExecPoint::default(),
            test_resets: 0,
            retry_noted_us: 0,
            disk_stall: DiskStall::default(),
            step_down_noted: false,
        }
    }

    fn now_us(&self) -> u64 {
        self.clock.micros()
    }

    /// Joins the session (DESIGN.md §1.7) through `ft::node::join`: the
    /// generation is the shared LUN's flag (a configured `ft_generation`
    /// that differs is refused with both numbers) and this node's
    /// reservation key is registered on the guest disk's session, which
    /// also carries the flag (fencing: Write Exclusive - Registrants
    /// Only); the node says when to retry (storage unreachable) and when
    /// to give up (`net_timeout`, counted from now: the guest build before
    /// the join must not eat it). Without a LUN: the configured
    /// generation, or 0.
    fn join_node(&mut self, io: &mut GuestIo) {
        let role = role_name(self.role);
        let node_role = match self.role {
            Role::Primary => NodeRole::Primary,
            Role::Backup => NodeRole::Backup,
        };
        if self.lun.is_none() {
            let g = self.cfg.generation.unwrap_or(0);
            println!(
                "ft: {role}: session generation {g} (configured; no shared LUN to read it from)"
            );
            self.ft = FtNode::new(self.ncfg, node_role, g, self.now_us() * 1000);
            return;
        }
        let since = self.now_us() * 1000;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let now = self.now_us() * 1000;
            let mut storage = LunStorage::new(
                &mut self.arb,
                self.clock,
                self.lun.as_ref(),
                self.ncfg.session.me,
                role,
                io.shared_lun(),
            );
            match join(
                &mut storage,
                self.cfg.generation,
                self.ncfg,
                node_role,
                since,
                now,
            ) {
                Join::Joined(node) => {
                    self.ft = *node;
                    println!(
                        "ft: {role}: session generation {}, read from the shared LUN's flag",
                        self.ft.generation()
                    );
                    if self.ncfg.fencing {
                        println!(
                            "ft: {role}: registered reservation key {:#018x} on the guest disk's session, which also carries the flag (fencing: Write Exclusive - Registrants Only)",
                            drivers::arbitration::reservation_key(self.ncfg.session.me)
                        );
                    }
                    return;
                }
                Join::Refused(e) => {
                    let lun = match e {
                        FtError::StaleGeneration { lun, .. } => lun,
                        _ => 0,
                    };
                    println!("ft: {role}: REFUSED to join: {e}; start the pair with ft_generation={lun} or none");
                    exit(exitcode::BAD_CONFIG);
                }
                Join::Retry(e) => {
                    if tries % 10 == 1 {
                        println!("ft: {role}: cannot join on the shared LUN yet ({e}); retrying");
                    }
                    self.idle_us(500_000);
                }
                Join::GaveUp(e) => {
                    println!("ft: {role}: cannot join on the shared LUN within net_timeout ({e}): no one may start the guest under a generation nobody checked, nor without fencing");
                    exit(exitcode::FAILURE);
                }
            }
        }
    }

    /// Polls the stack for `us` microseconds (nothing else to do).
    fn idle_us(&mut self, us: u64) {
        let until = self.now_us() + us;
        while self.now_us() < until {
            self.net.borrow_mut().poll();
        }
    }

    /// Primary: connect to the backup (retrying while it boots, at most
    /// `net_timeout`) and say Hello; no backup means the node arbitrates
    /// to run alone. Backup: listen for the primary.
    fn join_session(&mut self, io: &mut GuestIo) {
        let m = &mut self.ncfg.session.machine;
        m.guest_mem = io.ram_bytes();
        m.disk_sectors = io.disk_sectors();
        let m = *m;
        println!(
            "ft: {}: machine {m} ({})",
            role_name(self.role),
            m.fields()
                .iter()
                .map(|(k, v)| alloc::format!("{k} {v:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.join_node(io);
        self.heard_us = self.now_us();
        let ep = endpoint(self.peer);
        match self.role {
            Role::Primary => {
                // The node decides when to connect (at once, then every
                // `reconnect_interval` after a refusal) and when to give up
                // (its join timeout: arbitrate to run alone); the guest
                // starts once the log connection is up or the node is
                // alone.
                println!("ft: primary: connecting to the backup's log port {ep}");
                loop {
                    self.pump(true);
                    if self.ft.connected() {
                        self.pump(true);
                        return;
                    }
                    let now = self.now_us();
                    if let Err(why) = self.tick(now, 0, ExecPoint::default(), Some(io)) {
                        println!("ft: {why}; not starting the guest");
                        exit(exitcode::FAILURE);
                    }
                    if self.ft.state() == NodeState::Alone {
                        println!(
                            "ft: primary: ALONE under generation {}: starting the guest without a backup",
                            self.ft.generation()
                        );
                        return;
                    }
                    self.idle_us(1000);
                }
            }
            Role::Backup => {
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

    /// Backup: keeps the guest's discarded console lines the primary may
    /// not have released (`ft::seam`), for its go-live.
    fn keep_discarded(&mut self, lines: &mut Option<Vec<String>>) {
        if let Some(held) = lines.as_mut() {
            for text in held.drain(..) {
                self.next_line += 1;
                let id = line_output_id(self.next_line);
                if self.ft.seam().judge(id).is_some() {
                    self.discarded.insert(id, (self.next_line, text));
                }
                if self.discarded.len() > KEEP_LINES {
                    self.discarded.pop_first();
                    self.discarded_dropped += 1;
                    if self.discarded_dropped == 1 {
                        println!("ft: backup: warning: more than {KEEP_LINES} console lines not known to be released by the primary; the oldest are dropped (a go-live now may lose some)");
                    }
                }
            }
        }
        if let Some(r) = self.ft.seam().released_through() {
            self.discarded = self.discarded.split_off(&r.saturating_add(1));
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

    /// Carries out the node's effects.
    fn apply(&mut self, fx: Effects) {
        for e in fx {
            match e {
                Effect::Send(bytes) => {
                    if let Some(p) = self.ft.primary() {
                        // Entries (not the hello) start the lag clock.
                        if p.last_seq() > 0 {
                            self.lag.sent(p.last_seq(), self.now_us());
                        }
                    }
                    self.outbox.extend_from_slice(&bytes)
                }
                Effect::Release(id) => {
                    let acked = self.ft.primary().map_or(0, |p| p.acked());
                    let now = self.now_us();
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
                        println!(
                            "ft: primary: the backup lags more than 1 s: throttling the guest"
                        );
                    }
                }
                Effect::ResetConnection(err) => {
                    let now = self.now_us();
                    match self.role {
                        Role::Backup => {
                            self.refusals += 1;
                            println!(
                                "ft: backup: REFUSED the log connection: {err} (ours: cluster {} generation {} guest id {} protocol {})",
                                self.cfg.cluster,
                                self.ft.generation(),
                                IdHex(&self.guest_id),
                                ft::log::PROTOCOL_VERSION
                            );
                            self.ft.on_disconnected(now * 1000);
                            self.listen();
                        }
                        Role::Primary => {
                            println!("ft: primary: bad data from the backup: {err}; dropping the connection (it reconnects)");
                            self.ft.on_disconnected(now * 1000);
                            self.net.borrow_mut().tcp(self.sock).abort();
                            self.connected = false;
                            self.outbox.clear();
                            self.out_off = 0;
                        }
                    }
                }
                // The node carries out its arbitrations itself.
                Effect::Arbitrate { .. } => {}
                Effect::GoLive(g) => self.golive = Some(g),
                Effect::Halt => {
                    let why = match self.ft.last_verdict {
                        Some(Verdict::Lost(f)) => alloc::format!(
                            "{}: LOST the test-and-set (flag generation {} owner {}): halting the guest for good",
                            role_name(self.role),
                            f.generation,
                            f.owner.0
                        ),
                        _ if !self.ncfg.shared_storage => alloc::format!(
                            "{}: the peer fell silent ({} ms), and without a shared LUN (iscsi=) no one may go live: halting the guest for good",
                            role_name(self.role),
                            self.now_us().saturating_sub(self.heard_us) / 1000
                        ),
                        _ if self.ft.stepped_down() => {
                    "primary: stepped down for the backup: the shared disk stopped answering this node; halting the guest for good"
                        .into()
                }
                _ if self.ft.backup().is_some_and(|b| b.goodbye().is_none()) => {
                            "backup: fenced by the primary's go-live: halting the guest for good"
                                .into()
                        }
                        _ => alloc::format!(
                            "{}: fenced off the shared disk: halting the guest for good",
                            role_name(self.role)
                        ),
                    };
                    self.halted.get_or_insert(why);
                }
            }
        }
    }

    /// The node's timers (heartbeat, acks, lag, failure detection, and the
    /// arbitration, fencing and go-live that follow a failure) at `now_us`;
    /// reports what the node decided. `Err`: it halted for good.
    fn tick(
        &mut self,
        now_us: u64,
        guest_ns: u64,
        at: ExecPoint,
        io: Option<&mut GuestIo>,
    ) -> Result<(), String> {
        let before = self.ft.state();
        let silent_ms = now_us.saturating_sub(self.heard_us) / 1000;
        let role = role_name(self.role);
        // Said before the arbitration it leads to, if it does.
        let announce = matches!(before, NodeState::Paired | NodeState::Following).then(|| {
            if self.role == Role::Primary && !self.ever_connected {
                alloc::format!(
                    "ft: primary: no backup joined at {} within net_timeout ({} attempt(s)): arbitrating to run alone",
                    endpoint(self.peer),
                    self.connect_attempts
                )
            } else {
                alloc::format!(
                    "ft: {role}: peer silent for {silent_ms} ms (failure timeout {} ms): arbitrating",
                    self.cfg.timeout_ms
                )
            }
        });
        let quiet = matches!(self.ft.last_verdict, Some(Verdict::Unreachable))
            && !self.note_retry(self.ft.arbitrations + 1);
        let mut storage = LunStorage::new(
            &mut self.arb,
            self.clock,
            self.lun.as_ref(),
            self.ncfg.session.me,
            role,
            io.and_then(|io| io.shared_lun()),
        );
        storage.announce = announce;
        storage.quiet = quiet;
        storage.only_shared = self.ncfg.fencing;
        let fx = self.ft.tick(now_us * 1000, guest_ns, at, &mut storage);
        self.after_decision();
        self.apply(fx);
        self.settle_state()
    }

    /// Whether arbitration attempt `n` during a storage outage is worth a
    /// line: the first, every tenth, and any a second or more after the
    /// last one said (attempts through a session that retries its own
    /// connections take seconds each).
    fn note_retry(&self, n: u64) -> bool {
        n == 1 || n.is_multiple_of(10) || self.now_us() >= self.retry_noted_us + 1_000_000
    }

    /// Says what an arbitration decided.
    fn after_decision(&mut self) {
        let role = role_name(self.role);
        if self.ft.arbitrations == self.arbitrations_seen {
            return;
        }
        let attempts = self.ft.arbitrations - self.arbitrations_seen;
        self.arbitrations_seen = self.ft.arbitrations;
        match self.ft.last_verdict {
            Some(Verdict::Won(f)) => {
                println!(
                    "ft: {role}: WON the test-and-set: flag generation {} -> {} owner {}",
                    f.generation - 1,
                    f.generation,
                    f.owner.0
                );
                if self.ncfg.fencing {
                    println!(
                        "ft: {role}: fenced node {} off the shared disk (PREEMPT AND ABORT of key {:#018x}; verified with READ KEYS)",
                        self.ncfg.peer.0,
                        drivers::arbitration::reservation_key(self.ncfg.peer)
                    );
                }
            }
            // The first attempt of an outage, then every tenth.
            Some(Verdict::Unreachable) if self.note_retry(self.ft.arbitrations) => {
                self.retry_noted_us = self.now_us();
                println!(
                    "ft: {role}: shared storage unreachable: no one may go live; retrying every {} ms (attempt {}{})",
                    self.ncfg.session.arbitration_retry_ns / 1_000_000,
                    self.ft.arbitrations,
                    if attempts > 1 { ", several this tick" } else { "" }
                );
            }
            _ => {}
        }
    }

    /// What the node's state means for the hypervisor: a halt stops the
    /// guest; a node without any shared LUN cannot arbitrate at all.
    /// Primary: shows the node how the guest disk progresses; a paired
    /// primary whose disk stopped answering steps down (its Goodbye is
    /// flushed for up to 200 ms) and halts.
    fn judge_disk(&mut self, now_us: u64, io: &GuestIo) -> Result<(), String> {
        let owed = io.disk_in_flight();
        let since = self.disk_stall.observe(now_us, owed, io.stats().disk_done);
        let fx = self.ft.on_disk(now_us * 1000, since.map(|t| t * 1000));
        if fx.is_empty() {
            return Ok(());
        }
        println!(
            "ft: primary: the shared disk made no progress for {} ms with {owed} request(s) owed (failure timeout {} ms): stepping down for the backup, which takes over (Goodbye StorageLost)",
            now_us.saturating_sub(since.unwrap_or(now_us)) / 1000,
            self.cfg.timeout_ms
        );
        self.apply(fx);
        let until = self.now_us() + 200_000;
        while self.out_off < self.outbox.len() && self.now_us() < until {
            self.pump(true);
        }
        self.settle_state()
    }

    fn settle_state(&mut self) -> Result<(), String> {
        if let Some(why) = &self.halted {
            return Err(why.clone());
        }
        Ok(())
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
        match self.role {
            Role::Backup if !self.connected && state == tcp::State::Established => {
                let want = endpoint(self.peer).addr;
                match from {
                    Some(ep) if ep.addr == want => {
                        println!("ft: backup: log connection from the primary at {ep}");
                        self.connected = true;
                        self.heard_us = now;
                        let fx = self.ft.on_connected(now * 1000);
                        self.apply(fx);
                    }
                    other => {
                        println!("ft: backup: REFUSED a log connection from {other:?}: not the configured peer {want}");
                        self.listen();
                        return;
                    }
                }
            }
            Role::Primary if self.connecting.is_some() => match state {
                tcp::State::Established => {
                    self.connecting = None;
                    self.connected = true;
                    self.heard_us = now;
                    let fx = self.ft.on_connected(now * 1000);
                    if self.ever_connected {
                        println!(
                            "ft: primary: log connection re-established (reconnect {}); hello sent, resending from seq {}",
                            self.ft.reconnects,
                            self.ft.primary().map_or(0, |p| p.acked() + 1)
                        );
                    } else {
                        println!(
                            "ft: primary: log connection to {} established after {} attempt(s); hello sent; starting the guest",
                            endpoint(self.peer),
                            self.connect_attempts
                        );
                    }
                    self.ever_connected = true;
                    self.apply(fx);
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    // Refused: the node asks again later.
                    self.connecting = None;
                    self.ft.on_disconnected(now * 1000);
                    self.note_unreachable("refused");
                }
                _ if self
                    .connecting
                    .is_some_and(|t| now >= t + CONNECT_MS * 1000) =>
                {
                    // No answer (the backup's NIC is not up yet): a
                    // transport timeout, not a failure; the node asks
                    // again later, and judges the silence itself.
                    rc.borrow_mut().tcp(self.sock).abort();
                    self.connecting = None;
                    self.ft.on_disconnected(now * 1000);
                    self.note_unreachable("no answer");
                }
                _ => {}
            },
            _ => {}
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
            let fx = self.ft.on_bytes(now * 1000, &bytes);
            if let Some(p) = self.ft.primary() {
                self.lag.applied(p.applied(), now);
            }
            self.apply(fx);
            if self.test_reset_due() {
                break;
            }
        }
        let (may_recv, state) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            (s.may_recv(), s.state())
        };
        if self.connected && !may_recv && !matches!(state, tcp::State::Established) {
            // A dropped connection is not a failure (DESIGN.md §1.6): the
            // primary reconnects when the node asks, the backup listens.
            self.ft.on_disconnected(now * 1000);
            match self.role {
                Role::Primary => {
                    if self.ft.state() == NodeState::Paired {
                        println!(
                            "ft: primary: the backup closed the log connection (state {state}); reconnecting"
                        );
                    }
                    self.net.borrow_mut().tcp(self.sock).abort();
                    self.connected = false;
                    self.outbox.clear();
                    self.out_off = 0;
                }
                Role::Backup => {
                    println!("ft: backup: the primary closed the log connection");
                    self.listen();
                }
            }
        }
        if self.ft.wants_connection(now * 1000) && self.connecting.is_none() {
            let ep = endpoint(self.peer);
            if rc.borrow_mut().start_connect(self.sock, ep).is_ok() {
                self.connecting = Some(now);
                self.connect_attempts += 1;
            }
        }
        self.pump_probe(now);
    }

    /// Primary: a connection attempt failed; before the first connection
    /// (the backup may still be booting) every 20th attempt says so.
    fn note_unreachable(&self, why: &str) {
        if !self.ever_connected && self.connect_attempts % 20 == 1 {
            println!(
                "ft: primary: backup not reachable yet ({why}, attempt {}); retrying",
                self.connect_attempts
            );
        }
    }

    /// Backup with `ft_test_reset=N` (fault injection for
    /// `ft-log-reconnect`): after every N entries received, at most 3
    /// times, the log connection is reset; the primary must reconnect and
    /// resend what was lost, with no failover. `true`: it was reset now.
    fn test_reset_due(&mut self) -> bool {
        let (Some(every), Some(b)) = (self.cfg.test_reset, self.ft.backup()) else {
            return false;
        };
        if self.test_resets >= 3 || !self.connected || b.received() < every * (self.test_resets + 1)
        {
            return false;
        }
        self.test_resets += 1;
        println!(
            "ft: backup: test: resetting the log connection after {} entries received (ft_test_reset={every}, reset {} of 3)",
            b.received(),
            self.test_resets
        );
        self.ft.on_disconnected(self.now_us() * 1000);
        self.listen();
        true
    }

    /// Primary: hands new recorder entries to the state machine.
    fn ship_recorded(&mut self, tape: &Tape, guest_ns: u64) -> Result<(), String> {
        let (Tape::Record(r), Some(_)) = (tape, self.ft.primary()) else {
            return Ok(());
        };
        let mut fx = Effects::new();
        while self.rec_off < r.bytes.len() {
            let (rec, used) = decode_record(&r.bytes[self.rec_off..])
                .map_err(|e| alloc::format!("the recorder's own log does not decode: {e}"))?;
            self.rec_off += used;
            let now = self.now_us() * 1000;
            let Some(p) = self.ft.primary_mut() else {
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

    /// Backup: received records to the replayer, applied position and
    /// backlog back to the node; the node's timers.
    fn feed(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String> {
        let was_open = replayer.stream_open();
        let end = self.ft.feed(replayer);
        let Some(b) = self.ft.backup() else {
            return self.settle_state();
        };
        self.log_received = b.received();
        let last = b.received().saturating_sub(1);
        match end {
            LogEnd::Complete => {
                if was_open {
                    println!(
                        "ft: backup: the primary ended the session after seq {last}; replaying to the end"
                    );
                }
                // An orderly end: nothing to decide any more.
                return Ok(());
            }
            LogEnd::Ended(why) => {
                return Err(alloc::format!(
                    "backup: the primary said goodbye ({why:?}): halting the guest for good"
                ))
            }
            LogEnd::Open => {}
        }
        if b.goodbye() == Some(GoodbyeReason::StorageLost) && !self.step_down_noted {
            // The node arbitrates on its next tick, at once.
            self.step_down_noted = true;
            println!(
                "ft: backup: the primary stepped down after seq {last}: it lost the shared disk; taking over"
            );
        }
        // The node's timers at most every millisecond: reception is
        // acknowledged at once by `on_bytes` (the output rule waits on it).
        let now_us = self.clock.micros();
        if now_us < self.last_tick_us + 1000 {
            return self.settle_state();
        }
        self.last_tick_us = now_us;
        let before = self.ft.state();
        self.tick(now_us, 0, ExecPoint::default(), Some(io))?;
        if before != NodeState::Draining && self.ft.state() == NodeState::Draining {
            // Nothing more will arrive: stop listening for the primary.
            self.net_abort_log();
            if let Some(b) = self.ft.backup() {
                println!(
                    "ft: backup: replaying the {} entries received ({} applied so far) before going live",
                    b.received(),
                    replayer.applied_seq()
                );
            }
        }
        Ok(())
    }
}

impl<N: Nic + 'static> Node<N> {
    /// Primary: the node's timers at `now_ns`; a backup found dead and a
    /// won test-and-set mean the guest runs on alone (DESIGN.md §1.7):
    /// the held outputs are released (the node says so) and new ones
    /// leave at once. `Err`: lost, fenced or no storage at all (halt).
    fn primary_tick(
        &mut self,
        now_ns: u64,
        guest_ns: u64,
        at: ExecPoint,
        io: Option<&mut GuestIo>,
    ) -> Result<(), String> {
        let was_alone = self.ft.state() == NodeState::Alone;
        self.tick(now_ns / 1000, guest_ns, at, io)?;
        if !was_alone && self.ft.state() == NodeState::Alone {
            self.net_abort_log();
            println!(
                "ft: primary: ALONE under generation {}: the backup is gone; {} held output(s) released, new outputs leave at once (no backup until one is added by state transfer)",
                self.ft.generation(),
                self.ready.len() + self.gate.released as usize
            );
        }
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

    /// Primary: lets the outputs the backup acknowledged leave, in order.
    fn emit_ready(&mut self, io: &mut GuestIo) {
        for (slot, out) in self.ready.drain(..) {
            io.emit(slot, out);
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Backup => "backup",
    }
}

impl<N: Nic + 'static> Live for Node<N> {
    fn join(&mut self, io: &mut GuestIo) {
        self.join_session(io);
    }

    fn following(&self) -> bool {
        self.ft.state() == NodeState::Following
    }

    fn keepalive(&mut self, at: ExecPoint) {
        self.last_at = at;
        self.pump(false);
        let now = self.now_us();
        if self.ft.state() == NodeState::Paired && now >= self.last_tick_us + 1000 {
            self.last_tick_us = now;
            // A failure found here shows again where the caller next polls.
            // No guest disk at hand: an arbitration this asks for fails
            // here and is retried at the next poll.
            let _ = self.primary_tick(now * 1000, self.last_guest_ns, self.last_at, None);
        }
    }

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
        self.last_at = at;
        if io.disk_fenced() && self.halted.is_none() {
            // A write met RESERVATION CONFLICT: the peer won and cut this
            // node off the shared disk; nothing more may leave it.
            println!(
                "ft: {}: the shared disk refused a write: RESERVATION CONFLICT (this node was fenced)",
                role_name(self.role)
            );
            let fx = self.ft.on_fenced();
            self.apply(fx);
            return self.settle_state();
        }
        match tape {
            Tape::Record(_) => {
                self.ship_recorded(tape, guest_ns)?;
                let now = self.now_us();
                let mut fx = Effects::new();
                if let (Some(held), Some(p)) = (lines.as_mut(), self.ft.primary_mut()) {
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
                if let Some(p) = self.ft.primary_mut() {
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
                self.primary_tick(now * 1000, guest_ns, at, Some(io))?;
                self.pump(false);
                self.judge_disk(now, io)?;
                // A lagging backup slows the guest down: wait for acks
                // while the node says so (its one throttle rule).
                let mut waited = false;
                while self.ft.primary().is_some_and(|p| p.throttled()) {
                    if !waited {
                        waited = true;
                        self.throttles += 1;
                    }
                    self.pump(true);
                    self.primary_tick(self.now_us() * 1000, guest_ns, at, Some(io))?;
                }
                self.emit_ready(io);
                self.status(guest_ns, 0);
            }
            Tape::Replay(replayer) => {
                self.keep_discarded(lines);
                self.pump(false);
                self.feed(replayer, io)?;
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
        let generation = match &self.golive {
            Some(g) if !self.live => g.generation,
            _ => return None,
        };
        self.live = true;
        let back = io.go_live();
        println!(
            "ft: backup: LIVE under generation {generation}: replayed {} of {} entries received ({} held back: a trailing checkpoint); guest time not before {}; the guest runs alone, its outputs are real",
            replayer.applied_seq(),
            self.log_received,
            replayer.remaining(),
            self.ft.time_floor()
        );
        // Console lines at the seam (DESIGN.md §1.4, §1.8; `ft::seam`):
        // those the primary surely released stay discarded; the others
        // go out now: at least once, a duplicate at the seam rather than
        // a loss.
        for (id, (n, text)) in core::mem::take(&mut self.discarded) {
            let why = match self.ft.seam().judge(id) {
                None => continue,
                Some(Unreleased::MarkerNotReceived) => {
                    "its marker never reached the backup, so the primary never released it"
                        .into()
                }
                Some(Unreleased::AckNotSeen {
                    marker_seq,
                    primary_acked,
                }) => alloc::format!(
                    "marker seq {marker_seq} acknowledged, but the primary's last record showed acks only up to {primary_acked}: it may not have released it"
                ),
            };
            println!("ft: backup: output #{n} re-emitted ({why})");
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
        Some(self.ft.time_floor())
    }

    fn wait(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String> {
        loop {
            self.pump(true);
            self.feed(replayer, io)?;
            let won = matches!(self.ft.state(), NodeState::Draining | NodeState::Alone);
            if won || !replayer.must_wait() {
                // Let the acks this feed produced out before the caller
                // goes off to run (or hash) for a while.
                self.pump(true);
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
        if self.ft.state() == NodeState::Alone {
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
            let Some(p) = self.ft.primary_mut() else {
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
        // The node closes the log (the final checkpoint is its last
        // entry) and judges the end: acknowledged, alone, or not in time.
        let now = self.now_us();
        self.ft.end_log(now * 1000);
        let Some(p) = self.ft.primary() else {
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
        // Wait for the backup's ack of the whole log; the node keeps
        // watching it: a backup that dies now is a failure like any other
        // (arbitrate; won: the rest goes out alone; lost: halt).
        loop {
            self.pump(true);
            let now = self.now_us();
            if now >= self.last_tick_us + 1000 {
                self.last_tick_us = now;
                if let Err(why) = self.primary_tick(now * 1000, guest_ns, self.last_at, Some(io)) {
                    println!("ft: {why}");
                    return false;
                }
            }
            match self.ft.end_state(now * 1000) {
                SessionEnd::Waiting => {}
                SessionEnd::Acknowledged => break,
                SessionEnd::Alone => {
                    self.release_all(0, io);
                    println!(
                        "ft: pair: primary done: alone (the backup was lost at the end); outputs released={} io_released={}",
                        self.gate.released, self.io_gate.released
                    );
                    return true;
                }
                SessionEnd::Unacknowledged { acked, last } => {
                    println!(
                        "ft: primary: error: the backup did not acknowledge the end of the log (acked {acked} of {last})"
                    );
                    return false;
                }
                SessionEnd::Halted => return false,
            }
        }
        // Everything acknowledged: the lines without a marker go out too.
        self.release_all(last, io);
        let fx = self.ft.shutdown();
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
        let Some(p) = self.ft.primary() else {
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
        let run_us = self.now_us().saturating_sub(self.start_us);
        println!(
            "ft: pair: backup done: received={} applied={} pending={} outputs discarded={discarded} refused_connections={} probes_refused={} log_bytes_received={} run_us={run_us} log_mbit_s={} verdict={}",
            self.log_received,
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

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
//! Files: this one holds the node's state, the join and the effects;
//! `live/channel.rs` the log connection, `live/primary.rs` and
//! `live/backup.rs` each side's hooks, `live/lun.rs` the shared LUN as
//! `ft::arbitration::SharedStorage`, `live/probe.rs` the `ft_probe=`
//! listener, `live/status.rs` the status line and port.
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
use ft::seam::{Discarded, Unreleased};
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

#[path = "live/backup.rs"]
mod backup;
#[path = "live/channel.rs"]
mod channel;
#[path = "live/lun.rs"]
mod lun;
#[path = "live/primary.rs"]
mod primary;
#[path = "live/probe.rs"]
mod probe;
#[path = "live/repair.rs"]
mod repair;
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

/// The content digest a console line's output marker carries, which the
/// backup compares with its own guest's line of the same id
/// (`ft::seam::OutputCheck`; never 0, which means "not checked"). Guest
/// I/O outputs carry 0: a backup's detached devices discard them.
fn line_digest(text: &str) -> u64 {
    ft::replay::hash_bytes(0x4C49_4E45, text.as_bytes()) | 1
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
    /// Repair (issue 16), at the top of every run-loop iteration: while
    /// this node serves the guest alone, the link to a joining node (once
    /// one asked; the run loop sends it the machine); `None` otherwise.
    fn repair(&mut self) -> Option<&mut dyn crate::vmm::RepairLink>;
    /// A repair's joining node (`ft_join=on`), before its guest runs:
    /// receives the serving node's transfer, each page to `page` as it
    /// arrives, until the commit verified. `Err`: nothing may be applied.
    fn receive_state(
        &mut self,
        ram_bytes: u64,
        disk_sectors: u64,
        page: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<alloc::boxed::Box<ft::state::Staged>, String>;
    /// Backup: the replayer holds nothing to run to; poll until it does.
    /// `io`: the guest's devices (their disk session may carry the flag).
    fn wait(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String>;
    /// Primary, after the guest exited and the final checkpoint was
    /// recorded: ship the rest, release held lines on the backup's acks,
    /// end the session. `false` if the backup never acknowledged the end.
    fn end_primary(
        &mut self,
        recorder: &mut Recorder,
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
    /// Backup with `ft_test_ack_delay=`: bytes held back, with when they
    /// were made (µs).
    delayed: alloc::collections::VecDeque<(u64, Vec<u8>)>,
    out_off: usize,
    inbuf: Vec<u8>,
    last_pump_us: u64,
    last_tick_us: u64,
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
    discarded: Discarded<(u64, String)>,
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
    /// Serving alone: the repair port and a joining node's transfer.
    repair: repair::RepairConn,
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
        // The node id is the iSCSI node's (`iscsi_node=`; 1 for the
        // primary and 2 for the backup by default): the flag's owner and
        // the reservation key. A repair's joiner learns its peer from the
        // transfer.
        let me = NodeId(u64::from(config.iscsi.node));
        let peer_id = match role {
            Role::Primary => NodeId(2),
            Role::Backup => NodeId(1),
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
            delayed: Default::default(),
            out_off: 0,
            inbuf: vec![0; 64 * 1024],
            last_pump_us: 0,
            last_tick_us: 0,
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
            discarded: Discarded::new(KEEP_LINES),
            log_received: 0,
            last_at: ExecPoint::default(),
            test_resets: 0,
            retry_noted_us: 0,
            disk_stall: DiskStall::default(),
            step_down_noted: false,
            repair: Default::default(),
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
                    if self.role == Role::Backup && self.cfg.test_ack_delay_ms.is_some() {
                        self.delayed.push_back((self.now_us(), bytes));
                    } else {
                        self.outbox.extend_from_slice(&bytes)
                    }
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

    fn settle_state(&mut self) -> Result<(), String> {
        if let Some(why) = &self.halted {
            return Err(why.clone());
        }
        Ok(())
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

    fn repair(&mut self) -> Option<&mut dyn crate::vmm::RepairLink> {
        self.pump_repair();
        let serving = self.ft.state() == NodeState::Alone
            && self.halted.is_none()
            && (self.role == Role::Primary || self.live);
        (serving && self.repair.sock.is_some()).then_some(self as &mut dyn crate::vmm::RepairLink)
    }

    fn receive_state(
        &mut self,
        ram_bytes: u64,
        disk_sectors: u64,
        page: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<alloc::boxed::Box<ft::state::Staged>, String> {
        self.receive_transfer(ram_bytes, disk_sectors, page)
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
                if !self.poll_primary(tape, at, guest_ns, lines, io)? {
                    return Ok(());
                }
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
        self.backup_go_live(replayer, lines, io)
    }

    fn wait(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String> {
        self.backup_wait(replayer, io)
    }

    fn end_primary(
        &mut self,
        recorder: &mut Recorder,
        lines: &mut Option<Vec<String>>,
        guest_ns: u64,
        io: &mut GuestIo,
    ) -> bool {
        self.finish_primary(recorder, lines, guest_ns, io)
    }

    fn end_backup(&mut self, replayer: &Replayer, discarded: u64, verdict: &str) {
        self.finish_backup(replayer, discarded, verdict)
    }
}

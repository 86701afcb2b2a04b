//! The simulation loop: nodes, clients, link, storage, faults, checks.
//!
//! Each side runs the production [`Node`] (`crate::node`): join, reconnect,
//! arbitration with retry, fencing, go-live and repair are decided there;
//! this loop only plays the world around it (guest, link, storage, clocks).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::vec::Vec;

use super::faults::{in_any, Faults};
use super::guest::{GuestStop, SimGuest, NS_PER_UNIT};
use super::net::Link;
use super::rng::Rng;
use super::storage::StorageServer;
use super::world::World;
use super::{Invariant, Mutation, SeedReport, SimConfig, Stats, Violation};
use crate::arbitration::NodeId;
use crate::io::Transport;
use crate::log::{LogEntry, NonDetSource};
use crate::node::{join, Join, LogEnd, Node, NodeConfig, NodeRole, NodeState, SessionEnd};
use crate::primary::PrimaryState;
use crate::replay::{Due, Replayer};
use crate::seam::Discarded;
use crate::{Effect, Effects, FtError, SessionConfig};

mod checks;
pub(crate) mod disk;

const STEP_NS: u64 = 1_000_000;
const UNITS_PER_STEP: u64 = STEP_NS / NS_PER_UNIT;
const TIMER_UNITS: u64 = 1_000; // a timer interrupt every 10 ms of guest time
/// The largest frame a `NetFrame` record carries: its payload (point 24
/// bytes, vector 1, the frame) is then exactly `MAX_PAYLOAD`.
const MAX_FRAME: usize = crate::log::MAX_PAYLOAD - 25;

enum Role {
    /// Booting: joins at `Sim::start_at`.
    Booting(NodeRole),
    /// Running the FT node.
    Node(alloc::boxed::Box<Node>),
    Down,
    /// Restarted, empty, waiting to become a backup (§1.9).
    Spare,
    Halted,
    /// Refused to join (stale generation).
    Refused,
}

impl Role {
    fn node(&self) -> Option<&Node> {
        match self {
            Role::Node(n) => Some(n),
            _ => None,
        }
    }
    fn node_mut(&mut self) -> Option<&mut Node> {
        match self {
            Role::Node(n) => Some(n),
            _ => None,
        }
    }
}

struct SimNode {
    id: NodeId,
    role: Role,
    guest: SimGuest,
    throttled: bool,
    next_timer: u64,
    timers: u64,
    /// Output index → sequence number of its marker (paired primary).
    markers: BTreeMap<u64, u64>,
    /// Outputs let out early by [`Mutation::NoOutputRule`].
    pre_released: BTreeSet<u64>,
    /// When this node first tried to join (its own clock).
    joining_since: Option<u64>,
    /// Backup: outputs its guest produced and discarded that the primary
    /// may not have released (the node's seam judges); emitted at go-live.
    discarded: Discarded<()>,
    /// Released disk writes not landed yet: (earliest landing, block,
    /// version). They land in order, later if the node is frozen or cut
    /// off from storage (an initiator re-issuing after a reconnect).
    inflight: VecDeque<(u64, usize, u64)>,
    /// Arbitrations this node had made at the last check.
    arbitrations_seen: u64,
    /// A liveness obligation was taken for this node's stalled disk.
    stall_owed: bool,
    /// Backup: the one replay engine (the kernel's), fed by the node.
    replayer: Option<Replayer>,
    /// Primary: when its guest powered off (true time).
    ended: Option<u64>,
    /// Primary: its end was settled (acknowledged, or not in time).
    shut: bool,
}

struct Obligation {
    survivor: usize,
    crashed: usize,
    /// What happened to `crashed` ("crashed", "lost its storage").
    cause: &'static str,
    since: u64,
    deadline: u64,
    generation: u64,
}

pub(super) struct Sim<'c> {
    seed: u64,
    cfg: &'c SimConfig,
    now: u64,
    rng: Rng,
    faults: Faults,
    nodes: [SimNode; 2],
    link: Link,
    storage: StorageServer,
    world: World,
    owner: usize,
    session_received: u64,
    requests: VecDeque<(u64, Vec<u8>)>,
    obligations: Vec<Obligation>,
    spare_ready: [u64; 2],
    /// The generation the operator configured for the first join.
    configured_generation: Option<u64>,
    /// Highest version of each data block the world saw acknowledged.
    acked: Vec<u64>,
    /// When the last repair formed a new pair.
    last_repair_ns: Option<u64>,
    /// A repair's state transfer in progress: (joining spare, serving
    /// node, when its commit is due).
    transfer: Option<(usize, usize, u64)>,
    /// The flag's true generation when the current pair formed (what a
    /// survivor's test-and-set must expect).
    pair_generation: u64,
    stats: Stats,
    trace: bool,
}

fn is_in_session(role: &Role) -> bool {
    role.node().is_some_and(Node::in_session)
}

impl<'c> Sim<'c> {
    pub(super) fn new(seed: u64, cfg: &'c SimConfig) -> Self {
        let mut rng = Rng::new(seed);
        let faults = Faults::generate(&mut rng, cfg);
        let guest = SimGuest::new(seed);
        let node = |id: u64, role: Role| SimNode {
            id: NodeId(id),
            role,
            guest: guest.clone(),
            throttled: false,
            next_timer: TIMER_UNITS,
            timers: 0,
            markers: BTreeMap::new(),
            pre_released: BTreeSet::new(),
            joining_since: None,
            discarded: Discarded::new(usize::MAX),
            inflight: VecDeque::new(),
            arbitrations_seen: 0,
            stall_owed: false,
            replayer: None,
            ended: None,
            shut: false,
        };
        let configured_generation = faults.configured_generation;
        let mut storage = StorageServer::new(NodeId(1));
        storage.register(NodeId(1));
        storage.register(NodeId(2));
        let mut link = Link::new(faults.max_delay_ns, faults.corrupt_per_mille);
        link.ns_per_kib = faults.link_ns_per_kib;
        let mut requests = VecDeque::new();
        if let Some(t) = faults.big_frame_at {
            requests.push_back((t, alloc::vec![0x5A; MAX_FRAME]));
        }
        Self {
            seed,
            cfg,
            now: 0,
            link,
            faults,
            rng,
            nodes: [
                node(1, Role::Booting(NodeRole::Primary)),
                node(2, Role::Booting(NodeRole::Backup)),
            ],
            storage,
            world: World::default(),
            owner: 0,
            session_received: 0,
            requests,
            obligations: Vec::new(),
            spare_ready: [0; 2],
            configured_generation,
            acked: alloc::vec![0; super::storage::DATA_BLOCKS],
            last_repair_ns: None,
            transfer: None,
            pair_generation: 1,
            stats: Stats::default(),
            trace: cfg.trace,
        }
    }

    fn now(&self) -> u64 {
        self.now
    }

    /// Node `i`'s own clock: its own rate and origin (DESIGN.md §1.6:
    /// timeouts count each side's time).
    fn node_now(&self, i: usize) -> u64 {
        let (ppm, offset) = self.faults.clocks[i];
        (u128::from(self.now) * u128::from(ppm) / 1_000_000) as u64 + offset
    }

    fn session_cfg(&self, i: usize) -> SessionConfig {
        let mut c = SessionConfig::new(
            0xf7,
            self.seed
                .to_le_bytes()
                .repeat(2)
                .try_into()
                .unwrap_or([0; 16]),
            NodeId(i as u64 + 1),
        );
        c.heartbeat_interval_ns = self.cfg.heartbeat_ns;
        c.failure_timeout_ns = self.cfg.failure_timeout_ns;
        c.max_lag_ns = self.cfg.max_lag_ns;
        c.arbitration_retry_ns = self.cfg.retry_ns;
        c.join_timeout_ns = self.cfg.join_timeout_ns;
        c.mutation = self.cfg.mutation;
        c
    }

    fn node_cfg(&self, i: usize) -> NodeConfig {
        let mut c = NodeConfig::new(self.session_cfg(i), NodeId(2 - i as u64));
        c.reconnect_interval_ns = self.cfg.reconnect_ns;
        c
    }

    fn violation(&self, invariant: Invariant, detail: alloc::string::String) -> Violation {
        Violation {
            invariant,
            at_ns: self.now(),
            detail,
        }
    }

    pub(super) fn run(mut self) -> SeedReport {
        if self.trace {
            std::eprintln!("faults: {:?}", self.faults);
        }
        let mut violation = None;
        for _ in 0..self.cfg.duration_ms {
            self.now += STEP_NS;
            if let Err(v) = self.step() {
                violation = Some(v);
                break;
            }
        }
        self.stats.outputs = self.world.delivered;
        self.stats.duplicates = self.world.duplicates;
        self.stats.log_bytes = self.link.bytes_sent[0] + self.link.bytes_sent[1];
        SeedReport {
            seed: self.seed,
            violation,
            stats: self.stats,
        }
    }

    fn repaired_since(&self, t: u64) -> bool {
        self.last_repair_ns.is_some_and(|r| r >= t)
    }

    fn frozen(&self, i: usize) -> bool {
        in_any(&self.faults.freezes[i], self.now())
    }

    fn step(&mut self) -> Result<(), Violation> {
        if self.trace {
            let r = |i: usize| match &self.nodes[i].role {
                Role::Node(n) => format!(
                    "{:?}g{} c{} q{}{}",
                    n.state(),
                    n.generation(),
                    self.nodes[i].guest.counter(),
                    n.backup().map_or(0, |b| b.backlog()),
                    if self.frozen(i) { " FROZEN" } else { "" }
                ),
                Role::Booting(_) => "booting".into(),
                Role::Down => "down".into(),
                Role::Spare => "spare".into(),
                Role::Halted => "halted".into(),
                Role::Refused => "refused".into(),
            };
            std::eprintln!(
                "{} ms: {} | {} | link {} flag {:?} disk {:?}",
                self.now() / STEP_NS,
                r(0),
                r(1),
                self.link.up,
                self.storage.flag().map(|f| (f.generation, f.owner.0)),
                self.storage.blocks
            );
        }
        self.apply_faults();
        self.boot()?;
        self.land_writes()?;
        self.connect()?;
        self.deliver_link()?;
        self.clients()?;
        for i in 0..2 {
            if self.frozen(i) {
                continue;
            }
            match self.nodes[i].role.node().map(Node::session) {
                Some(crate::node::Session::Primary(_)) => self.run_primary(i)?,
                Some(crate::node::Session::Backup(_)) => self.run_backup(i)?,
                None => {}
            }
        }
        for i in 0..2 {
            if !self.frozen(i) {
                self.tick(i)?;
            }
        }
        self.repair()?;
        self.check()
    }

    fn due(&self, t: u64) -> bool {
        t > self.now() - STEP_NS && t <= self.now()
    }

    fn storage_reachable(&self, i: usize) -> bool {
        let now = self.now();
        !in_any(&self.faults.storage_partitions[i], now)
            && !in_any(&self.faults.storage_outages, now)
    }

    fn drop_link(&mut self) {
        let now = self.now();
        self.link.drop_connection(now, &mut self.rng);
        for i in 0..2 {
            let t = self.node_now(i);
            if let Some(n) = self.nodes[i].role.node_mut() {
                n.on_disconnected(t);
            }
        }
    }

    /// Nodes whose setup is over join: the session's generation comes from
    /// the shared LUN (a stale configured one is refused), the reservation
    /// key is registered.
    fn boot(&mut self) -> Result<(), Violation> {
        for i in 0..2 {
            let Role::Booting(role) = self.nodes[i].role else {
                continue;
            };
            if self.now() < self.faults.start_at[i] || self.frozen(i) {
                continue;
            }
            let cfg = self.node_cfg(i);
            let now = self.node_now(i);
            let since = *self.nodes[i].joining_since.get_or_insert(now);
            let reachable = self.storage_reachable(i);
            let mut view = self
                .storage
                .view(reachable, &mut self.rng, self.cfg.mutation);
            match join(&mut view, self.configured_generation, cfg, role, since, now) {
                Join::Joined(node) => self.nodes[i].role = Role::Node(node),
                Join::Refused(_) => {
                    self.stats.refused += 1;
                    self.nodes[i].role = Role::Refused;
                }
                // Storage unreachable: join again next step.
                Join::Retry(_) => {}
                Join::GaveUp(e) => {
                    return Err(protocol(self.now(), "join gave up", &e));
                }
            }
        }
        Ok(())
    }

    fn apply_faults(&mut self) {
        let now = self.now();
        self.storage.up = !in_any(&self.faults.storage_outages, now);
        for i in 0..2 {
            if self.faults.crash[i].is_some_and(|t| self.due(t)) {
                self.crash(i);
            }
            if self.faults.restart[i].is_some_and(|t| self.due(t))
                && matches!(self.nodes[i].role, Role::Down)
            {
                self.nodes[i].role = Role::Spare;
                self.nodes[i].inflight.clear();
                self.spare_ready[i] = now + 30 * STEP_NS;
            }
            // A frozen survivor owes nothing while it is frozen.
            if self.frozen(i) {
                self.obligations.retain(|o| o.survivor != i);
            }
        }
        let dropped = self.faults.drops.iter().any(|&t| self.due(t));
        if self.link.up && (dropped || in_any(&self.faults.log_partitions, now)) {
            self.drop_link();
        }
    }

    fn crash(&mut self, i: usize) {
        let s = 1 - i;
        let now = self.now();
        let started = self.nodes[s].role.node().is_some_and(Node::started);
        if started && is_in_session(&self.nodes[s].role) && is_in_session(&self.nodes[i].role) {
            let survivor = self.nodes[s].role.node();
            let generation = self.pair_generation;
            let lag_units = if survivor.and_then(Node::backup).is_some() {
                self.nodes[i]
                    .guest
                    .counter()
                    .saturating_sub(self.nodes[s].guest.counter())
            } else {
                0
            };
            self.obligations.push(Obligation {
                survivor: s,
                crashed: i,
                cause: "crashed",
                since: now,
                deadline: now + self.takeover_bound(s, lag_units),
                generation,
            });
        }
        self.nodes[i].role = Role::Down;
        self.nodes[i].throttled = false;
        self.drop_link();
    }

    /// How long survivor `s` may take to go live: its failure timeout (on
    /// its own clock, which may run slow), replaying `lag_units` at its
    /// speed, a heartbeat, the link's delay, arbitration retries, slack.
    fn takeover_bound(&self, s: usize, lag_units: u64) -> u64 {
        let replay_ns = lag_units * NS_PER_UNIT * 1000 / self.faults.speed_per_mille[s];
        let timeout = self.cfg.failure_timeout_ns * 1_000_000 / self.faults.clocks[s].0;
        timeout
            + replay_ns
            + self.cfg.heartbeat_ns
            + self.faults.max_delay_ns
            + 3 * self.cfg.retry_ns
            + 10 * STEP_NS
    }

    fn pair(&self) -> Option<(usize, usize)> {
        let ok = |a: usize, b: usize| {
            self.nodes[a]
                .role
                .node()
                .is_some_and(|n| n.wants_connection(self.node_now(a)))
                && self.nodes[b]
                    .role
                    .node()
                    .is_some_and(Node::accepts_connection)
                && !self.frozen(a)
                && !self.frozen(b)
        };
        if ok(0, 1) {
            Some((0, 1))
        } else if ok(1, 0) {
            Some((1, 0))
        } else {
            None
        }
    }

    /// The primary's node asks for a connection (first or reconnect); it
    /// comes up if the backup listens and the link is not partitioned.
    fn connect(&mut self) -> Result<(), Violation> {
        let now = self.now();
        if self.link.up
            || now < self.link.next_connect_ns
            || in_any(&self.faults.log_partitions, now)
        {
            return Ok(());
        }
        let Some((p, b)) = self.pair() else {
            return Ok(());
        };
        self.link.up = true;
        if self.nodes[p].role.node().is_some_and(|n| n.reconnects > 0) {
            self.stats.reconnects += 1;
        }
        let tb = self.node_now(b);
        if let Some(n) = self.nodes[b].role.node_mut() {
            n.on_connected(tb);
        }
        let tp = self.node_now(p);
        let fx = match self.nodes[p].role.node_mut() {
            Some(n) => n.on_connected(tp),
            None => Effects::new(),
        };
        self.apply(p, fx)
    }

    fn deliver_link(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let mut buf = [0u8; 4096];
        let mut bytes = Vec::new();
        for side in 0..2 {
            if self.frozen(side) {
                continue; // the bytes wait in its receive buffer
            }
            if in_any(&self.faults.one_way[side], now) {
                continue; // one-way partition: held up in the network
            }
            bytes.clear();
            while let Ok(n @ 1..) = self.link.end(side, now, &mut self.rng).recv(&mut buf) {
                bytes.extend_from_slice(&buf[..n]);
            }
            if !bytes.is_empty() {
                let t = self.node_now(side);
                let fx = match self.nodes[side].role.node_mut() {
                    Some(n) => {
                        let fx = n.on_bytes(t, &bytes);
                        if let Some(b) = n.backup() {
                            self.session_received = self.session_received.max(b.received());
                        }
                        fx
                    }
                    None => Effects::new(),
                };
                self.apply(side, fx)?;
            }
        }
        Ok(())
    }

    fn clients(&mut self) -> Result<(), Violation> {
        let now = self.now();
        if self.rng.chance(self.cfg.requests_per_mille) {
            // Records at the size limits (issue 14): now and then a frame
            // whose record payload is exactly MAX_PAYLOAD (it must travel,
            // be acknowledged and replayed like any), or one byte more
            // (the primary must refuse it with an error, never panic).
            let len = match self.rng.range(0, 10_000) {
                0 => MAX_FRAME,
                1 => MAX_FRAME + 1,
                _ => self.rng.range(8, 64) as usize,
            };
            let frame: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
            let at = now + self.rng.range(0, 5 * STEP_NS);
            let pos = self.requests.partition_point(|(t, _)| *t <= at);
            self.requests.insert(pos, (at, frame));
        }
        while self.requests.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, frame)) = self.requests.pop_front() else {
                break;
            };
            let i = self.owner;
            if self.frozen(i) || self.nodes[i].ended.is_some() {
                continue; // lost: the client retries on its own (not modelled)
            }
            let t = self.node_now(i);
            let n = &mut self.nodes[i];
            let Some(p) = n.role.node_mut().and_then(|x| x.primary_mut()) else {
                continue;
            };
            if p.state() == PrimaryState::Halted {
                continue;
            }
            let at = n.guest.point();
            let gt = n.guest.guest_time_ns();
            let entry = LogEntry::NetFrame {
                at,
                vector: 0x30,
                frame: frame.clone(),
            };
            let before = p.last_seq();
            let fx = match p.record(t, gt, entry) {
                Ok((_, fx)) => fx,
                Err(FtError::TooLarge(_)) if frame.len() > MAX_FRAME => {
                    // Refused whole: nothing logged, the guest never sees it.
                    if p.last_seq() != before {
                        return Err(protocol(
                            now,
                            "oversize frame",
                            &FtError::WrongState("logged"),
                        ));
                    }
                    self.stats.oversize_refused += 1;
                    continue;
                }
                Err(e) => return Err(protocol(now, "record frame", &e)),
            };
            if frame.len() == MAX_FRAME {
                self.stats.max_records += 1;
            }
            n.guest.inject_frame(&frame);
            self.apply(i, fx)?;
        }
        Ok(())
    }

    fn run_primary(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.node_now(i);
        let mut budget = UNITS_PER_STEP * self.faults.speed_per_mille[i] / 1000;
        if self.nodes[i].throttled {
            budget /= 8;
        }
        let target = self.nodes[i].guest.counter() + budget;
        let exit = self.faults.exit_counter.unwrap_or(u64::MAX);
        if self.nodes[i].ended.is_some() {
            return Ok(()); // the guest powered off
        }
        loop {
            let value = self.rng.next_u64();
            let self_now = self.now();
            let mutation = self.cfg.mutation;
            let n = &mut self.nodes[i];
            let Some(p) = n.role.node_mut().and_then(|x| x.primary_mut()) else {
                return Ok(());
            };
            if p.state() == PrimaryState::Halted {
                return Ok(());
            }
            let stop = n.guest.advance(target.min(n.next_timer).min(exit));
            let gt = n.guest.guest_time_ns();
            let mut fx = Effects::new();
            if stop == GuestStop::Reached && n.guest.counter() == exit {
                return self.end_guest(i);
            }
            match stop {
                GuestStop::Reached if n.guest.counter() < n.next_timer => return Ok(()),
                GuestStop::Reached => {
                    let at = n.guest.point();
                    let (_, f) = p
                        .record(
                            now,
                            gt,
                            LogEntry::Interrupt {
                                at,
                                vector: 0x20,
                                guest_time_ns: 0,
                            },
                        )
                        .map_err(|e| protocol(self_now, "record timer", &e))?;
                    fx.extend(f);
                    n.guest.inject_timer();
                    n.timers += 1;
                    n.next_timer += TIMER_UNITS;
                    if n.timers.is_multiple_of(10) {
                        let at = n.guest.point();
                        let entry = LogEntry::Checkpoint {
                            at,
                            state_hash: n.guest.checkpoint_hash(),
                        };
                        let (_, f) = p
                            .record(now, gt, entry)
                            .map_err(|e| protocol(self_now, "record checkpoint", &e))?;
                        fx.extend(f);
                    }
                }
                GuestStop::NonDet(at) => {
                    let entry = LogEntry::NonDet {
                        at,
                        source: NonDetSource::Rdtsc,
                        value,
                    };
                    let (_, f) = p
                        .record(now, gt, entry)
                        .map_err(|e| protocol(self_now, "record rdtsc", &e))?;
                    fx.extend(f);
                    n.guest.supply(value);
                }
                GuestStop::Output { at, index } => {
                    let digest = n.guest.output_digest(index);
                    let f = p
                        .output(now, gt, at, index, digest)
                        .map_err(|e| protocol(self_now, "output", &e))?;
                    let paired = p.state() != PrimaryState::Alone;
                    if paired {
                        n.markers.insert(index, p.last_seq());
                    }
                    fx.extend(f);
                    if mutation == Mutation::NoOutputRule && paired {
                        n.pre_released.insert(index);
                        self.release(i, index)?;
                    }
                }
            }
            self.apply(i, fx)?;
        }
    }

    /// The guest of primary `i` powered off at the exit counter: its final
    /// checkpoint is the log's last record (DESIGN.md §6), the node closes
    /// the log and waits for the backup's ack of it ([`Node::end_log`]).
    fn end_guest(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let t = self.node_now(i);
        let n = &mut self.nodes[i];
        let Some(node) = n.role.node_mut() else {
            return Ok(());
        };
        let mut fx = Effects::new();
        if let Some(p) = node.primary_mut() {
            let final_checkpoint = LogEntry::Checkpoint {
                at: n.guest.point(),
                state_hash: n.guest.checkpoint_hash(),
            };
            let (_, f) = p
                .record(t, n.guest.guest_time_ns(), final_checkpoint)
                .map_err(|e| protocol(now, "record the final checkpoint", &e))?;
            fx.extend(f);
        }
        node.end_log(t);
        n.ended = Some(now);
        self.stats.ends += 1;
        self.apply(i, fx)
    }

    /// An ended primary's end of run: once the backup acknowledged the
    /// final record it says Goodbye; not acknowledged in time is excused
    /// only by a fault near the end ([`Invariant::CleanEnd`]).
    fn settle_end(&mut self, i: usize) -> Result<(), Violation> {
        let (Some(ended), false) = (self.nodes[i].ended, self.nodes[i].shut) else {
            return Ok(());
        };
        let t = self.node_now(i);
        let Some(node) = self.nodes[i].role.node_mut() else {
            return Ok(());
        };
        match node.end_state(t) {
            SessionEnd::Waiting => Ok(()),
            SessionEnd::Acknowledged => {
                let fx = node.shutdown();
                self.nodes[i].shut = true;
                self.stats.ends_acknowledged += 1;
                self.apply(i, fx)
            }
            SessionEnd::Alone | SessionEnd::Halted => {
                self.nodes[i].shut = true;
                Ok(())
            }
            SessionEnd::Unacknowledged { acked, last } => {
                self.nodes[i].shut = true;
                self.stats.ends_unacknowledged += 1;
                let from = ended.saturating_sub(2 * self.cfg.failure_timeout_ns);
                if self.end_excused(from) {
                    return Ok(());
                }
                Err(self.violation(
                    Invariant::CleanEnd,
                    format!(
                        "node {i}'s guest powered off at {} ms with the pair whole and nothing failing; the backup acknowledged {acked} of {last} by {} ms",
                        ended / STEP_NS,
                        self.now() / STEP_NS
                    ),
                ))
            }
        }
    }

    /// Whether anything that can hold up the log overlapped `[from, now]`
    /// (a slow link's largest record: within 4 failure timeouts before).
    fn end_excused(&self, from: u64) -> bool {
        let now = self.now();
        let f = &self.faults;
        (0..2).any(|k| {
            f.crash[k].is_some_and(|c| c <= now)
                || super::faults::overlaps(&f.freezes[k], from, now)
                || super::faults::overlaps(&f.one_way[k], from, now)
                || f.start_at[k] > from
        }) || super::faults::overlaps(&f.log_partitions, from, now)
            || f.drops.iter().any(|&d| from <= d && d <= now)
            || f.corrupt_per_mille > 0
            || self.last_repair_ns.is_some()
            // A slow link carrying the largest record (2-4 failure
            // timeouts to cross, more if a drop makes it go again).
            || f
                .big_frame_at
                .is_some_and(|b| b <= now && from <= b + 4 * self.cfg.failure_timeout_ns)
    }

    /// The backup replays with the kernel's engine: the node feeds the
    /// received records to a [`Replayer`], which lands on each asynchronous
    /// entry's point, answers each RDTSC and checks each checkpoint; the
    /// guest's outputs are discarded (DESIGN.md §1.5).
    fn run_backup(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let end =
            self.nodes[i].guest.counter() + UNITS_PER_STEP * self.faults.speed_per_mille[i] / 1000;
        let replay = |what: alloc::string::String| Violation {
            invariant: Invariant::Replay,
            at_ns: now,
            detail: format!("backup node {i}: {what}"),
        };
        let n = &mut self.nodes[i];
        let Some(node) = n.role.node_mut() else {
            return Ok(());
        };
        let rp = n.replayer.get_or_insert_with(Replayer::streaming);
        if let LogEnd::Ended(_) = node.feed(rp) {
            return Ok(()); // the primary lost or was superseded: the node halts
        }
        let exit = self.faults.exit_counter.unwrap_or(u64::MAX);
        let mut finished = false;
        loop {
            if n.guest.counter() == exit {
                // The guest powered off here, as the primary's did. The
                // entries due here first (soft ones passed: a won backup
                // must not count them as replay still to do); once the log
                // is complete its last record must be the final
                // checkpoint, met here (as the kernel's backup judges).
                match rp.due(n.guest.point(), &n.guest.state_vector(), true) {
                    Err(d) => return Err(replay(format!("{d}"))),
                    Ok(Due::Inject(_)) => {
                        n.guest.inject_timer();
                        continue;
                    }
                    Ok(Due::Input(LogEntry::NetFrame { frame, .. })) => {
                        n.guest.inject_frame(&frame);
                        continue;
                    }
                    Ok(Due::Input(other)) => {
                        return Err(replay(format!("unexpected input {other:?}")))
                    }
                    Ok(Due::Nothing) => {}
                }
                if !rp.stream_open() {
                    rp.finish(n.guest.point(), n.guest.checkpoint_hash())
                        .map_err(|d| replay(format!("{d}")))?;
                    finished = true;
                }
                break;
            }
            if rp.must_wait() {
                break;
            }
            let Some(target) = rp.landing_target() else {
                break;
            };
            match n.guest.advance(target.counter.min(end).min(exit)) {
                GuestStop::Reached if n.guest.counter() == exit => {}
                GuestStop::Reached if n.guest.counter() < target.counter => break,
                GuestStop::Reached => {
                    let at = n.guest.point();
                    let applied = rp.applied_seq();
                    match rp.due(at, &n.guest.state_vector(), true) {
                        Err(d) => return Err(replay(format!("{d}"))),
                        Ok(Due::Inject(_)) => n.guest.inject_timer(),
                        Ok(Due::Input(LogEntry::NetFrame { frame, .. })) => {
                            n.guest.inject_frame(&frame)
                        }
                        Ok(Due::Input(other)) => {
                            return Err(replay(format!("unexpected input {other:?}")))
                        }
                        // Soft entries passed, or nothing more held here
                        // (at the exit point: judged at the loop's top).
                        Ok(Due::Nothing) if rp.applied_seq() != applied => {}
                        Ok(Due::Nothing) if n.guest.counter() == exit => {}
                        Ok(Due::Nothing) => break,
                    }
                }
                GuestStop::NonDet(at) => {
                    let v = rp
                        .nondet(at, NonDetSource::Rdtsc)
                        .map_err(|d| replay(format!("{d}")))?;
                    n.guest.supply(v);
                }
                // Following: discarded (§1.5), kept while the primary may
                // not have released it.
                GuestStop::Output { index, .. } => {
                    // Checked against the primary's marker; a mismatch
                    // ends the replay at the next feed (a Replay failure).
                    let _ = node.output_produced(index, n.guest.output_digest(index));
                    n.discarded.keep(node.seam(), index, ())
                }
            }
        }
        // What was applied: acks carry it; the backlog gates the go-live.
        node.feed(rp);
        n.discarded.prune(node.seam());
        if finished {
            self.stats.ends_identical += 1;
            self.nodes[i].role = Role::Halted;
            self.nodes[i].replayer = None;
        }
        Ok(())
    }

    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        let t = self.node_now(i);
        let reachable = self.storage_reachable(i);
        let n = &mut self.nodes[i];
        let Role::Node(node) = &mut n.role else {
            return Ok(());
        };
        let gt = n.guest.guest_time_ns();
        if let Some(p) = node.primary() {
            if p.state() == PrimaryState::Paired {
                self.stats.max_lag_ns = self.stats.max_lag_ns.max(p.lag_ns(gt));
            }
        }
        let before = node.state();
        // The guest disk: a released write that should have landed and
        // has not is stalled since it was due (the node's clock).
        let now = self.now;
        let stalled = n
            .inflight
            .front()
            .filter(|w| w.0 <= now)
            .map(|w| t.saturating_sub(now - w.0));
        let mut fx = node.on_disk(t, stalled);
        if node.stepped_down() && matches!(before, NodeState::Paired) {
            self.stats.step_downs += 1;
        }
        let mut view = self
            .storage
            .view(reachable, &mut self.rng, self.cfg.mutation);
        fx.extend(node.tick(t, gt, n.guest.point(), &mut view));
        let made = node.arbitrations - n.arbitrations_seen;
        n.arbitrations_seen = node.arbitrations;
        self.stats.arbitrations += made;
        // A failure detected (not an arbitration retried) must have a cause.
        if made > 0 && matches!(before, NodeState::Paired | NodeState::Following) {
            self.check_failover_justified(i)?;
        }
        self.apply(i, fx)?;
        self.owe_for_stalled_disk(i);
        self.settle_end(i)
    }

    /// A paired primary whose disk writes have been stuck for longer than
    /// its step-down threshold (`NodeConfig::disk_stall_ns`; its clock may
    /// run slow: 3% more) while its
    /// backup follows and reaches the storage: the backup owes going live
    /// (one-sided storage loss, DESIGN.md §1.7), by the crash deadline plus
    /// one more failure timeout (the step-down's Goodbye may be lost).
    fn owe_for_stalled_disk(&mut self, i: usize) {
        let now = self.now();
        let s = 1 - i;
        let stuck_for = self.nodes[i]
            .inflight
            .front()
            .filter(|w| w.0 <= now)
            .map_or(0, |w| now - w.0);
        if stuck_for == 0 {
            self.nodes[i].stall_owed = false;
            return;
        }
        let limit = self.node_cfg(i).disk_stall_ns * 103 / 100 + 2 * STEP_NS;
        let paired =
            |n: Option<&Node>, st: NodeState| n.is_some_and(|n| n.state() == st && n.started());
        if self.nodes[i].stall_owed
            || stuck_for < limit
            || !paired(self.nodes[i].role.node(), NodeState::Paired)
            || !paired(self.nodes[s].role.node(), NodeState::Following)
            || !self.storage_reachable(s)
            || self.frozen(s)
        {
            return;
        }
        self.nodes[i].stall_owed = true;
        let lag_units = self.nodes[i]
            .guest
            .counter()
            .saturating_sub(self.nodes[s].guest.counter());
        self.obligations.push(Obligation {
            survivor: s,
            crashed: i,
            cause: "lost its storage",
            since: now,
            deadline: now + self.takeover_bound(s, lag_units),
            generation: self.pair_generation,
        });
    }

    fn apply(&mut self, i: usize, fx: Effects) -> Result<(), Violation> {
        let now = self.now();
        for e in fx {
            match e {
                Effect::Send(bytes) => {
                    let _ = self.link.end(i, now, &mut self.rng).send(&bytes);
                }
                Effect::Release(id) => {
                    if !self.nodes[i].pre_released.remove(&id) {
                        self.release(i, id)?;
                    }
                }
                // The node carries out its own arbitrations (`Node::tick`).
                Effect::Arbitrate { .. } => {
                    return Err(protocol(now, "effect", &FtError::WrongState("arbitrate")))
                }
                Effect::Throttle(on) => self.nodes[i].throttled = on,
                Effect::ResetConnection(e) => {
                    if self.trace {
                        std::eprintln!("{} ms: node {i} resets the connection: {e}", now / STEP_NS);
                    }
                    self.stats.resets += 1;
                    self.drop_link();
                }
                Effect::GoLive(_) => {
                    // The node serving the world is the owner; a backup never is.
                    if self.owner != i {
                        self.stats.failovers += 1;
                        let n = &mut self.nodes[i];
                        n.replayer = None;
                        n.next_timer = (n.guest.counter() / TIMER_UNITS + 1) * TIMER_UNITS;
                        n.markers.clear();
                    } else {
                        self.stats.primary_alone += 1;
                    }
                    self.met_liveness(i);
                    self.world.go_live(now, i, &self.nodes[i].guest.outputs)?;
                    // Outputs the old primary may never have released
                    // leave now, in order (the seam, §1.8). Disk writes
                    // are not emitted again: the device model re-issues
                    // the requests its guest still waits for (the kernel's
                    // `GuestIo::go_live`), which the simulation leaves out.
                    let n = &mut self.nodes[i];
                    let unreleased = match n.role.node() {
                        Some(node) => n.discarded.take_unreleased(node.seam()),
                        None => alloc::vec::Vec::new(),
                    };
                    for (index, (), _) in unreleased {
                        if !disk::is_write(self.nodes[i].guest.outputs[index as usize]) {
                            self.stats.reemitted += 1;
                            self.release(i, index)?;
                        }
                    }
                    self.owner = i;
                    self.nodes[i].throttled = false;
                    self.drop_link();
                }
                Effect::Halt => {
                    self.stats.halts += 1;
                    self.nodes[i].role = Role::Halted;
                    self.drop_link();
                }
            }
        }
        Ok(())
    }

    /// A restarted node becomes the new backup of a node acting alone
    /// (§1.9): a state transfer that takes time (20-400 ms) while the
    /// serving node goes on alone, cut off if the serving node crashes,
    /// stops being alone or stays frozen past the commit, or the link is
    /// partitioned (the joiner then has nothing: `ft::state::Receiver`
    /// applies nothing before the commit); at the commit the guest's state
    /// is copied and the serving node takes a new generation
    /// (`Node::begin_repair`).
    fn repair(&mut self) -> Result<(), Violation> {
        let now = self.now();
        if let Some((s, l, due)) = self.transfer {
            let serving = self.nodes[l].role.node().map(Node::state) == Some(NodeState::Alone)
                && self.nodes[l].ended.is_none();
            let cut = !serving
                || !matches!(self.nodes[s].role, Role::Spare)
                || in_any(&self.faults.log_partitions, now)
                || (self.frozen(l) && now > due + self.cfg.failure_timeout_ns);
            if cut {
                self.transfer = None;
                self.stats.transfers_aborted += 1;
                self.spare_ready[s] = now + self.cfg.retry_ns;
                return Ok(());
            }
            if now < due || self.frozen(l) {
                return Ok(());
            }
            self.transfer = None;
            return self.commit_repair(s, l);
        }
        for s in 0..2 {
            let l = 1 - s;
            if !matches!(self.nodes[s].role, Role::Spare)
                || now < self.spare_ready[s]
                || self.frozen(l)
                || in_any(&self.faults.log_partitions, now)
            {
                continue;
            }
            if self.nodes[l].role.node().map(Node::state) != Some(NodeState::Alone)
                || self.nodes[l].ended.is_some()
            {
                continue;
            }
            self.stats.transfers += 1;
            self.transfer = Some((s, l, now + self.rng.range(20, 400) * STEP_NS));
            return Ok(());
        }
        Ok(())
    }

    /// The transfer from `l` to spare `s` committed: the new pair forms.
    fn commit_repair(&mut self, s: usize, l: usize) -> Result<(), Violation> {
        let now = self.now();
        {
            let t = self.node_now(l);
            let joiner = self.node_cfg(s).session.me;
            let form_within = 4 * self.cfg.failure_timeout_ns;
            let reachable = !in_any(&self.faults.storage_partitions[l], now);
            let Role::Node(live) = &mut self.nodes[l].role else {
                return Ok(());
            };
            let mut view = self
                .storage
                .view(reachable, &mut self.rng, self.cfg.mutation);
            match live.begin_repair(t, &mut view, joiner, form_within) {
                Ok(generation) => {
                    self.stats.repairs += 1;
                    self.last_repair_ns = Some(now);
                    self.pair_generation = generation;
                    let cfg = self.node_cfg(s);
                    let backup = Node::new(cfg, NodeRole::Backup, generation, self.node_now(s));
                    let mut view = self.storage.view(true, &mut self.rng, Mutation::None);
                    let _ = backup.register(&mut view);
                    self.nodes[s].guest = self.nodes[l].guest.clone();
                    self.nodes[s].role = Role::Node(alloc::boxed::Box::new(backup));
                    self.nodes[s].arbitrations_seen = 0;
                    self.nodes[s].replayer = None;
                    self.nodes[s].discarded.clear();
                    self.nodes[l].markers.clear();
                    self.session_received = 0;
                    self.drop_link();
                }
                Err(fx) if fx.is_empty() => self.spare_ready[s] = now + self.cfg.retry_ns,
                Err(fx) => self.apply(l, fx)?,
            }
        }
        Ok(())
    }
}

pub(super) fn protocol(now: u64, what: &str, e: &FtError) -> Violation {
    Violation {
        invariant: Invariant::Protocol,
        at_ns: now,
        detail: format!("{what}: {e}"),
    }
}

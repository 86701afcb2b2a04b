//! The simulation loop: nodes, clients, link, storage, faults, checks.

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
use crate::arbitration::{arbitrate, NodeId, Verdict};
use crate::backup::{Backup, BackupState, ReplayLimit};
use crate::io::{Clock, Transport};
use crate::log::{LogEntry, NonDetSource};
use crate::primary::{Primary, PrimaryState};
use crate::{Effect, Effects, FtError, SessionConfig};

mod checks;

const STEP_NS: u64 = 1_000_000;
const UNITS_PER_STEP: u64 = STEP_NS / NS_PER_UNIT;
const TIMER_UNITS: u64 = 1_000; // a timer interrupt every 10 ms of guest time

enum Role {
    Primary(Primary),
    Backup(Backup),
    Down,
    /// Restarted, empty, waiting to become a backup (§1.9).
    Spare,
    Halted,
}

struct Node {
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
}

struct Obligation {
    survivor: usize,
    crashed: usize,
    since: u64,
    deadline: u64,
    generation: u64,
}

/// The simulated time source.
struct SimClock(u64);

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.0
    }
}

pub(super) struct Sim<'c> {
    seed: u64,
    cfg: &'c SimConfig,
    clock: SimClock,
    rng: Rng,
    faults: Faults,
    nodes: [Node; 2],
    link: Link,
    storage: StorageServer,
    world: World,
    owner: usize,
    session_received: u64,
    requests: VecDeque<(u64, Vec<u8>)>,
    obligations: Vec<Obligation>,
    spare_ready: [u64; 2],
    stats: Stats,
    trace: bool,
}

fn is_in_session(role: &Role) -> bool {
    match role {
        Role::Primary(p) => matches!(p.state(), PrimaryState::Paired | PrimaryState::Arbitrating),
        Role::Backup(b) => matches!(
            b.state(),
            BackupState::Following | BackupState::Arbitrating | BackupState::Draining
        ),
        _ => false,
    }
}

impl<'c> Sim<'c> {
    pub(super) fn new(seed: u64, cfg: &'c SimConfig) -> Self {
        let mut rng = Rng::new(seed);
        let faults = Faults::generate(&mut rng, cfg);
        let guest = SimGuest::new(seed);
        let node = |id: u64, role: Role| Node {
            id: NodeId(id),
            role,
            guest: guest.clone(),
            throttled: false,
            next_timer: TIMER_UNITS,
            timers: 0,
            markers: BTreeMap::new(),
            pre_released: BTreeSet::new(),
        };
        let mut sim = Self {
            seed,
            cfg,
            clock: SimClock(0),
            link: Link::new(faults.max_delay_ns, faults.corrupt_per_mille),
            faults,
            rng,
            nodes: [node(1, Role::Down), node(2, Role::Down)],
            storage: StorageServer::new(NodeId(1)),
            world: World::default(),
            owner: 0,
            session_received: 0,
            requests: VecDeque::new(),
            obligations: Vec::new(),
            spare_ready: [0; 2],
            stats: Stats::default(),
            trace: cfg.trace,
        };
        sim.nodes[0].role = Role::Primary(Primary::new(sim.session_cfg(0), 1, 0));
        sim.nodes[1].role = Role::Backup(Backup::new(sim.session_cfg(1), 1, 0));
        sim
    }

    fn now(&self) -> u64 {
        self.clock.now_ns()
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
        let mut violation = None;
        for _ in 0..self.cfg.duration_ms {
            self.clock.0 += STEP_NS;
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

    fn step(&mut self) -> Result<(), Violation> {
        if self.trace {
            let r = |i: usize| match &self.nodes[i].role {
                Role::Primary(p) => format!(
                    "P{:?}g{} c{}",
                    p.state(),
                    p.generation(),
                    self.nodes[i].guest.counter()
                ),
                Role::Backup(b) => format!(
                    "B{:?}g{} c{} q{}",
                    b.state(),
                    b.generation(),
                    self.nodes[i].guest.counter(),
                    b.backlog()
                ),
                Role::Down => "down".into(),
                Role::Spare => "spare".into(),
                Role::Halted => "halted".into(),
            };
            std::eprintln!(
                "{} ms: {} | {} | link {} flag {:?}",
                self.now() / STEP_NS,
                r(0),
                r(1),
                self.link.up,
                self.storage.flag().map(|f| (f.generation, f.owner.0))
            );
        }
        self.apply_faults();
        self.connect()?;
        self.deliver_link()?;
        self.clients()?;
        for i in 0..2 {
            match self.nodes[i].role {
                Role::Primary(_) => self.run_primary(i)?,
                Role::Backup(_) => self.run_backup(i)?,
                _ => {}
            }
        }
        for i in 0..2 {
            self.tick(i)?;
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
        for n in &mut self.nodes {
            if let Role::Primary(p) = &mut n.role {
                p.on_disconnected();
            }
        }
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
                self.spare_ready[i] = now + 30 * STEP_NS;
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
        if is_in_session(&self.nodes[s].role) && is_in_session(&self.nodes[i].role) {
            let speed = self.faults.speed_per_mille[s];
            let (generation, lag_units) = match &self.nodes[s].role {
                Role::Primary(p) => (p.generation(), 0),
                Role::Backup(b) => (
                    b.generation(),
                    self.nodes[i]
                        .guest
                        .counter()
                        .saturating_sub(self.nodes[s].guest.counter()),
                ),
                _ => (0, 0),
            };
            let replay_ns = lag_units * NS_PER_UNIT * 1000 / speed;
            let slack = self.cfg.heartbeat_ns
                + self.faults.max_delay_ns
                + 3 * self.cfg.retry_ns
                + 10 * STEP_NS;
            self.obligations.push(Obligation {
                survivor: s,
                crashed: i,
                since: now,
                deadline: now + self.cfg.failure_timeout_ns + replay_ns + slack,
                generation,
            });
        }
        self.nodes[i].role = Role::Down;
        self.nodes[i].throttled = false;
        self.drop_link();
    }

    fn pair(&self) -> Option<(usize, usize)> {
        let ok = |a: usize, b: usize| {
            matches!(&self.nodes[a].role, Role::Primary(p) if matches!(p.state(), PrimaryState::Paired | PrimaryState::Arbitrating))
                && matches!(&self.nodes[b].role, Role::Backup(b) if b.state() == BackupState::Following)
        };
        if ok(0, 1) {
            Some((0, 1))
        } else if ok(1, 0) {
            Some((1, 0))
        } else {
            None
        }
    }

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
        if let Role::Backup(bk) = &mut self.nodes[b].role {
            bk.on_connected(now);
        }
        let fx = match &mut self.nodes[p].role {
            Role::Primary(pr) => pr.on_connected(now),
            _ => Effects::new(),
        };
        self.apply(p, fx)
    }

    fn deliver_link(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let mut buf = [0u8; 4096];
        let mut bytes = Vec::new();
        for side in 0..2 {
            bytes.clear();
            while let Ok(n @ 1..) = self.link.end(side, now, &mut self.rng).recv(&mut buf) {
                bytes.extend_from_slice(&buf[..n]);
            }
            if !bytes.is_empty() {
                let fx = match &mut self.nodes[side].role {
                    Role::Primary(p) => p.on_bytes(now, &bytes),
                    Role::Backup(b) => {
                        let fx = b.on_bytes(now, &bytes);
                        self.session_received = self.session_received.max(b.received());
                        fx
                    }
                    _ => Effects::new(),
                };
                self.apply(side, fx)?;
            }
        }
        Ok(())
    }

    fn clients(&mut self) -> Result<(), Violation> {
        let now = self.now();
        if self.rng.chance(self.cfg.requests_per_mille) {
            let len = self.rng.range(8, 64) as usize;
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
            let n = &mut self.nodes[i];
            let Role::Primary(p) = &mut n.role else {
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
            let (_, fx) = p
                .record(now, gt, entry)
                .map_err(|e| protocol(now, "record frame", &e))?;
            n.guest.inject_frame(&frame);
            self.apply(i, fx)?;
        }
        Ok(())
    }

    fn run_primary(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let mut budget = UNITS_PER_STEP * self.faults.speed_per_mille[i] / 1000;
        if self.nodes[i].throttled {
            budget /= 8;
        }
        let target = self.nodes[i].guest.counter() + budget;
        loop {
            let value = self.rng.next_u64();
            let mutation = self.cfg.mutation;
            let n = &mut self.nodes[i];
            let Role::Primary(p) = &mut n.role else {
                return Ok(());
            };
            if p.state() == PrimaryState::Halted {
                return Ok(());
            }
            let stop = n.guest.advance(target.min(n.next_timer));
            let gt = n.guest.guest_time_ns();
            let mut fx = Effects::new();
            match stop {
                GuestStop::Reached if n.guest.counter() < n.next_timer => return Ok(()),
                GuestStop::Reached => {
                    let at = n.guest.point();
                    let (_, f) = p
                        .record(now, gt, LogEntry::Interrupt { at, vector: 0x20 })
                        .map_err(|e| protocol(now, "record timer", &e))?;
                    fx.extend(f);
                    n.guest.inject_timer();
                    n.timers += 1;
                    n.next_timer += TIMER_UNITS;
                    if n.timers.is_multiple_of(10) {
                        let at = n.guest.point();
                        let entry = LogEntry::Checkpoint {
                            at,
                            state_hash: n.guest.state_hash(),
                        };
                        let (_, f) = p
                            .record(now, gt, entry)
                            .map_err(|e| protocol(now, "record checkpoint", &e))?;
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
                        .map_err(|e| protocol(now, "record rdtsc", &e))?;
                    fx.extend(f);
                    n.guest.supply(value);
                }
                GuestStop::Output { at, index } => {
                    let f = p
                        .output(now, gt, at, index)
                        .map_err(|e| protocol(now, "output", &e))?;
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

    fn run_backup(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let end =
            self.nodes[i].guest.counter() + UNITS_PER_STEP * self.faults.speed_per_mille[i] / 1000;
        loop {
            let n = &mut self.nodes[i];
            let Role::Backup(b) = &mut n.role else {
                return Ok(());
            };
            let ReplayLimit::Until(limit) = b.replay_limit() else {
                return Ok(());
            };
            let replay = |e: FtError| Violation {
                invariant: Invariant::Replay,
                at_ns: now,
                detail: format!("backup node {i}: {e}"),
            };
            match n.guest.advance(limit.counter.min(end)) {
                GuestStop::Reached if n.guest.counter() < limit.counter => return Ok(()),
                GuestStop::Reached => match b.take_async(n.guest.point()).map_err(replay)? {
                    Some(LogEntry::NetFrame { frame, .. }) => n.guest.inject_frame(&frame),
                    Some(LogEntry::Interrupt { .. }) => n.guest.inject_timer(),
                    Some(LogEntry::Checkpoint { state_hash, .. })
                        if state_hash != n.guest.state_hash() =>
                    {
                        return Err(replay(FtError::Divergence {
                            seq: b.applied(),
                            reason: "checkpoint hash differs",
                        }));
                    }
                    Some(_) => {}
                    None => {
                        return Err(replay(FtError::Divergence {
                            seq: b.applied(),
                            reason: "nothing due at limit",
                        }))
                    }
                },
                GuestStop::NonDet(at) => {
                    let v = b.take_nondet(at, NonDetSource::Rdtsc).map_err(replay)?;
                    n.guest.supply(v);
                }
                GuestStop::Output { at, index } => {
                    // Following: discarded (§1.5); the marker must match.
                    b.take_output(at, index).map_err(replay)?;
                }
            }
        }
    }

    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let n = &mut self.nodes[i];
        let fx = match &mut n.role {
            Role::Primary(p) => {
                let gt = n.guest.guest_time_ns();
                if p.state() == PrimaryState::Paired {
                    self.stats.max_lag_ns = self.stats.max_lag_ns.max(p.lag_ns(gt));
                }
                p.tick(now, gt, n.guest.point())
            }
            Role::Backup(b) => b.tick(now),
            _ => return Ok(()),
        };
        self.apply(i, fx)
    }

    fn apply(&mut self, i: usize, fx: Effects) -> Result<(), Violation> {
        let now = self.now();
        let mut work: VecDeque<Effect> = fx.into();
        while let Some(e) = work.pop_front() {
            match e {
                Effect::Send(bytes) => {
                    let _ = self.link.end(i, now, &mut self.rng).send(&bytes);
                }
                Effect::Release(id) => {
                    if !self.nodes[i].pre_released.remove(&id) {
                        self.release(i, id)?;
                    }
                }
                Effect::Arbitrate {
                    expected_generation,
                } => {
                    self.stats.arbitrations += 1;
                    let reachable = !in_any(&self.faults.storage_partitions[i], now);
                    let me = self.nodes[i].id;
                    let verdict = arbitrate(
                        &mut self
                            .storage
                            .view(reachable, &mut self.rng, self.cfg.mutation),
                        expected_generation,
                        me,
                    );
                    work.extend(match &mut self.nodes[i].role {
                        Role::Primary(p) => p.on_verdict(now, verdict),
                        Role::Backup(b) => b.on_verdict(now, verdict),
                        _ => Effects::new(),
                    });
                }
                Effect::Throttle(on) => self.nodes[i].throttled = on,
                Effect::ResetConnection(_) => {
                    self.stats.resets += 1;
                    self.drop_link();
                }
                Effect::GoLive(g) => {
                    if matches!(self.nodes[i].role, Role::Backup(_)) {
                        self.stats.failovers += 1;
                        let cfg = self.session_cfg(i);
                        self.nodes[i].role =
                            Role::Primary(Primary::new_alone(cfg, g.generation, now));
                        let n = &mut self.nodes[i];
                        n.next_timer = (n.guest.counter() / TIMER_UNITS + 1) * TIMER_UNITS;
                        n.markers.clear();
                    } else {
                        self.stats.primary_alone += 1;
                    }
                    self.met_liveness(i);
                    self.world.go_live(now, i, &self.nodes[i].guest.outputs)?;
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

    /// A restarted node becomes the new backup of a primary acting alone:
    /// state transfer (modelled as a copy), then a new generation (§1.9).
    fn repair(&mut self) -> Result<(), Violation> {
        let now = self.now();
        for s in 0..2 {
            let l = 1 - s;
            if !matches!(self.nodes[s].role, Role::Spare) || now < self.spare_ready[s] {
                continue;
            }
            let Role::Primary(p) = &self.nodes[l].role else {
                continue;
            };
            if p.state() != PrimaryState::Alone || in_any(&self.faults.log_partitions, now) {
                continue;
            }
            let (generation, me) = (p.generation(), self.nodes[l].id);
            let reachable = !in_any(&self.faults.storage_partitions[l], now);
            match arbitrate(
                &mut self
                    .storage
                    .view(reachable, &mut self.rng, self.cfg.mutation),
                generation,
                me,
            ) {
                Verdict::Won(flag) => {
                    self.stats.repairs += 1;
                    self.nodes[s].guest = self.nodes[l].guest.clone();
                    self.nodes[s].role =
                        Role::Backup(Backup::new(self.session_cfg(s), flag.generation, now));
                    self.nodes[l].role =
                        Role::Primary(Primary::new(self.session_cfg(l), flag.generation, now));
                    self.nodes[l].markers.clear();
                    self.session_received = 0;
                    self.drop_link();
                }
                Verdict::Lost(_) => {
                    self.stats.halts += 1;
                    self.nodes[l].role = Role::Halted;
                }
                Verdict::Unreachable => self.spare_ready[s] = now + self.cfg.retry_ns,
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

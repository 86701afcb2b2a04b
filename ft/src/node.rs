//! The FT node (DESIGN.md §1.6, §1.7, §1.9, §1.11): the one place that
//! makes a side's failure-time decisions, sans-IO, run as it is by the
//! kernel (`kernel/src/ftnode`) and by the deterministic simulator
//! (`crate::sim`).
//!
//! A [`Node`] owns the session machine of its role ([`Primary`] or
//! [`Backup`]: log, acks, output rule, heartbeats, failure detection) and
//! decides around it:
//!
//! * **join** ([`join`], [`session_generation`]): the session's generation
//!   is read from the shared LUN, never trusted from the command line: a
//!   configured generation that differs from the LUN's is refused with both
//!   numbers (§1.7 "the session's generation is read from the LUN at
//!   join"); the node registers its reservation key
//!   ([`SharedStorage::register`]); storage unreachable is retried up to
//!   the join timeout. A primary connects when [`Node::wants_connection`]
//!   says so, and a backup that never joins is judged by its join timeout
//!   in [`Node::tick`] (arbitrate to run alone);
//! * **reconnect** ([`Node::wants_connection`]): a dropped or reset log
//!   connection is not a failure: the primary reconnects every
//!   `reconnect_interval_ns` and resends from what the backup received
//!   (§1.6);
//! * **arbitration with retry and own-win recognition**: when the session
//!   machine asks, the node runs [`crate::arbitration::arbitrate`] on the
//!   storage it is given; storage unreachable is retried at
//!   `arbitration_retry_ns`, never final (§1.7 "a storage blip is retried");
//! * **fencing**: a winner cuts the loser off the shared disk
//!   ([`SharedStorage::fence`], SCSI-3 PREEMPT) before it acts alone; a
//!   fence that fails is retried like the test-and-set (the flag already
//!   names us, so the retry recognises its own win); a node whose write is
//!   refused as fenced halts for good ([`Node::on_fenced`]);
//! * **go-live**: a backup that won drains what it received (the session
//!   machine's `Draining`), then becomes a primary acting alone and hands
//!   the caller [`Effect::GoLive`] (re-issue pending disk requests,
//!   announce the guest, [`Node::time_floor`]); the outputs its guest
//!   produced that the primary may not have released are named by the
//!   node's [`Node::seam`] (`crate::seam`);
//! * **one-sided storage loss** ([`Node::on_disk`]): a paired primary whose
//!   disk made no progress for [`NodeConfig::disk_stall_ns`] steps down;
//! * **the end of a run** ([`Node::end_log`], [`Node::end_state`]);
//! * **repair** ([`Node::begin_repair`]): a node acting alone, once the
//!   joiner has the guest's state up to the commit (`crate::state`,
//!   `crate::repair`), takes a new generation for the new pair (§1.9); the
//!   joiner becomes the peer a later failure fences, and a pair that does
//!   not form in the time given is judged like a backup that never joined
//!   (the node arbitrates on its own flag and is alone again).
//!
//! Everything the node needs from outside comes in as arguments: `now`
//! from the caller's clock, bytes from its transport, the storage as a
//! [`SharedStorage`]. What it wants done goes out as [`Effect`]s.

use crate::arbitration::{arbitrate, FlagRecord, NodeId, SharedStorage, Verdict};
use crate::backup::{Backup, BackupState};
use crate::log::{ExecPoint, GoodbyeReason, LogEntry};
use crate::primary::{Primary, PrimaryState};
use crate::replay::Replayer;
use crate::seam::{OutputCheck, OutputMismatch, Seam};
use crate::{Effect, Effects, FtError, Mutation, SessionConfig};

/// A node's side of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Runs the guest for the world and streams the log.
    Primary,
    /// Replays the log, ready to take over.
    Backup,
}

/// How the primary's log stands for a backup's replay engine
/// ([`Node::feed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// More may come (also after the primary stepped down: the node takes
    /// over by itself).
    Open,
    /// The primary ended the session in order (`Goodbye { Shutdown }`):
    /// the log is complete, replay it to the end.
    Complete,
    /// The primary ended it otherwise (it lost the flag, or was
    /// superseded): this side halts.
    Ended(GoodbyeReason),
}

/// Where a primary's end of run stands ([`Node::end_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Not ended, or the backup has not acknowledged the final record yet.
    Waiting,
    /// The backup received the whole log: say Goodbye ([`Node::shutdown`]).
    Acknowledged,
    /// The backup was lost meanwhile and this node won: it ends alone.
    Alone,
    /// The end timeout passed without the ack (the backup has `acked` of
    /// `last`): the pair ends unprotected.
    Unacknowledged { acked: u64, last: u64 },
    /// This node lost or was fenced meanwhile.
    Halted,
}

/// Everything a node is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// The session parameters (cluster, guest, timers, this node's id).
    pub session: SessionConfig,
    /// The other node of the pair (whose reservation a winner preempts).
    pub peer: NodeId,
    /// A primary without a log connection tries again this often.
    pub reconnect_interval_ns: u64,
    /// Whether the storage fences (SCSI-3 persistent reservations). A
    /// storage that cannot is used without fencing.
    pub fencing: bool,
    /// A paired primary whose shared disk made no progress this long steps
    /// down for its backup ([`Node::on_disk`]). Longer than the failure
    /// timeout (twice, by default): a disk slow under load is not a lost
    /// one, and a step-down costs a failover.
    pub disk_stall_ns: u64,
    /// Whether the pair has shared storage at all. Without it nobody can
    /// win the test-and-set, so a node that would have to arbitrate halts
    /// at once instead of retrying forever (nobody may go live).
    pub shared_storage: bool,
    /// At the end of a run, how long the primary waits for the backup's
    /// ack of the final checkpoint ([`Node::end_log`]).
    pub end_timeout_ns: u64,
}

impl NodeConfig {
    /// Defaults: reconnect every 100 ms, fencing on.
    pub fn new(session: SessionConfig, peer: NodeId) -> Self {
        Self {
            session,
            peer,
            reconnect_interval_ns: 100_000_000,
            fencing: true,
            disk_stall_ns: 2 * session.failure_timeout_ns,
            shared_storage: true,
            end_timeout_ns: 2 * session.failure_timeout_ns,
        }
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.session.mutated(m)
    }
}

/// The session machine a node runs now. A backup that went live runs a
/// [`Primary`] acting alone.
#[derive(Debug)]
pub enum Session {
    /// Primary (paired, arbitrating, alone or halted).
    Primary(Primary),
    /// Backup (following, arbitrating, draining or halted).
    Backup(Backup),
}

/// Where the node is, for status and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Primary streaming to its backup (or waiting for it to connect).
    Paired,
    /// Backup receiving and replaying.
    Following,
    /// The peer fell silent: arbitrating on the shared storage.
    Arbitrating,
    /// A backup that won, replaying what it received before going live.
    Draining,
    /// Acting alone: the flag is ours, the peer fenced.
    Alone,
    /// Halted for good (lost, fenced or ended).
    Halted,
}

/// What the join found on the shared storage.
///
/// `configured`: the generation the operator gave (`ft_generation=`), if
/// any. The LUN's flag is the truth: a configured generation that differs
/// is refused ([`FtError::StaleGeneration`]); without one, the LUN's is
/// used. Storage unreachable at join is an error: a pair must not start
/// under a generation it cannot check.
pub fn session_generation<S: SharedStorage + ?Sized>(
    storage: &mut S,
    configured: Option<u64>,
    cfg: &NodeConfig,
) -> Result<u64, FtError> {
    let flag = storage.read_flag()?;
    match configured {
        Some(c) if c != flag.generation && !cfg.mutated(Mutation::NoGenerationCheck) => {
            Err(FtError::StaleGeneration {
                configured: c,
                lun: flag.generation,
                owner: flag.owner.0,
            })
        }
        Some(c) => Ok(c),
        None => Ok(flag.generation),
    }
}

/// The outcome of one join attempt ([`join`]).
#[derive(Debug)]
pub enum Join {
    /// The generation was read and this node registered for fencing: the
    /// node, ready to connect or listen.
    Joined(alloc::boxed::Box<Node>),
    /// The shared storage did not answer (or refused the registration):
    /// try again.
    Retry(FtError),
    /// The configured generation is not the LUN's: never start.
    Refused(FtError),
    /// Still failing a join timeout after the first attempt: give up; no
    /// guest may start under a generation nobody could check.
    GaveUp(FtError),
}

/// Joins the session (DESIGN.md §1.7): reads the generation from the
/// shared storage ([`session_generation`]), creates the node of `role`
/// under it and registers its reservation key ([`Node::register`]).
/// `since`: when this node's first attempt was; the caller retries on
/// [`Join::Retry`].
pub fn join<S: SharedStorage + ?Sized>(
    storage: &mut S,
    configured: Option<u64>,
    cfg: NodeConfig,
    role: NodeRole,
    since: u64,
    now: u64,
) -> Join {
    let again = |e: FtError| {
        if now.saturating_sub(since) >= cfg.session.join_timeout_ns {
            Join::GaveUp(e)
        } else {
            Join::Retry(e)
        }
    };
    let generation = match session_generation(storage, configured, &cfg) {
        Ok(g) => g,
        Err(e @ FtError::StaleGeneration { .. }) => return Join::Refused(e),
        Err(e) => return again(e),
    };
    let node = Node::new(cfg, role, generation, now);
    match node.register(storage) {
        Ok(()) => Join::Joined(alloc::boxed::Box::new(node)),
        Err(e) => again(e),
    }
}

/// The guest time an entry shows, if any (0: none).
fn guest_time(e: &LogEntry) -> u64 {
    match e {
        LogEntry::NonDet { source, value, .. } if source.is_guest_time() => *value,
        LogEntry::Heartbeat { guest_time_ns, .. } => *guest_time_ns,
        _ => 0,
    }
}

/// One side of the FT pair.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    session: Session,
    connected: bool,
    next_connect_ns: u64,
    /// Won the test-and-set at this flag; the loser is not fenced yet.
    unfenced: Option<FlagRecord>,
    /// Arbitrations attempted (status, tests).
    pub arbitrations: u64,
    /// Reconnects asked for after a dropped connection.
    pub reconnects: u64,
    /// Fences carried out (the loser's registration preempted).
    pub fences: u64,
    /// The outcome of the last arbitration (for messages).
    pub last_verdict: Option<Verdict>,
    /// Stepped down as primary for lost storage ([`Node::on_disk`]).
    stepped_down: bool,
    /// The end of run: the final record's sequence and the deadline of
    /// its ack ([`Node::end_log`]).
    end: Option<(u64, u64)>,
    /// Backup: which outputs the primary surely released ([`Node::seam`]).
    seam: Seam,
    /// Backup: the largest guest time the log showed ([`Node::time_floor`]).
    time_floor: u64,
    /// Backup: its guest's outputs against the primary's markers
    /// ([`Node::output_produced`]).
    outputs: OutputCheck,
    /// A mismatch the next [`Node::feed`] hands to the replay engine.
    output_mismatch: Option<OutputMismatch>,
}

impl Node {
    /// A node of `role` in a new session under `generation` (from
    /// [`session_generation`]), created at `now`.
    pub fn new(cfg: NodeConfig, role: NodeRole, generation: u64, now: u64) -> Self {
        let session = match role {
            NodeRole::Primary => Session::Primary(Primary::new(cfg.session, generation, now)),
            NodeRole::Backup => Session::Backup(Backup::new(cfg.session, generation, now)),
        };
        Self {
            cfg,
            session,
            connected: false,
            next_connect_ns: now,
            unfenced: None,
            arbitrations: 0,
            reconnects: 0,
            fences: 0,
            last_verdict: None,
            stepped_down: false,
            end: None,
            seam: if cfg.session.mutated(Mutation::NoSeam) {
                Seam::blind()
            } else {
                Seam::new()
            },
            time_floor: 0,
            outputs: OutputCheck::new(),
            output_mismatch: None,
        }
    }

    /// A primary that already holds the flag at `generation` and acts
    /// alone (no backup joined, or after its own failover).
    pub fn new_alone(cfg: NodeConfig, generation: u64, now: u64) -> Self {
        let mut n = Self::new(cfg, NodeRole::Primary, generation, now);
        n.session = Session::Primary(Primary::new_alone(cfg.session, generation, now));
        n
    }

    /// Registers this node's reservation key on the shared disk (at join,
    /// and for a new backup at repair).
    pub fn register<S: SharedStorage + ?Sized>(&self, storage: &mut S) -> Result<(), FtError> {
        if !self.cfg.fencing {
            return Ok(());
        }
        storage.register(self.cfg.session.me)
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.cfg.mutated(m)
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The session machine (read-only).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The primary's session machine, for the guest's data path (record,
    /// output, shutdown).
    pub fn primary_mut(&mut self) -> Option<&mut Primary> {
        match &mut self.session {
            Session::Primary(p) => Some(p),
            Session::Backup(_) => None,
        }
    }

    /// The primary's session machine.
    pub fn primary(&self) -> Option<&Primary> {
        match &self.session {
            Session::Primary(p) => Some(p),
            Session::Backup(_) => None,
        }
    }

    /// The backup's session machine, for the replay engine.
    pub fn backup_mut(&mut self) -> Option<&mut Backup> {
        match &mut self.session {
            Session::Backup(b) => Some(b),
            Session::Primary(_) => None,
        }
    }

    /// The backup's session machine.
    pub fn backup(&self) -> Option<&Backup> {
        match &self.session {
            Session::Backup(b) => Some(b),
            Session::Primary(_) => None,
        }
    }

    /// Where the node is.
    pub fn state(&self) -> NodeState {
        match &self.session {
            Session::Primary(p) => match p.state() {
                PrimaryState::Paired => NodeState::Paired,
                PrimaryState::Arbitrating => NodeState::Arbitrating,
                PrimaryState::Alone => NodeState::Alone,
                PrimaryState::Halted => NodeState::Halted,
            },
            Session::Backup(b) => match b.state() {
                BackupState::Following => NodeState::Following,
                BackupState::Arbitrating => NodeState::Arbitrating,
                BackupState::Draining => NodeState::Draining,
                BackupState::Live => NodeState::Alone,
                BackupState::Halted => NodeState::Halted,
            },
        }
    }

    /// The flag generation the node works under.
    pub fn generation(&self) -> u64 {
        match &self.session {
            Session::Primary(p) => p.generation(),
            Session::Backup(b) => b.generation(),
        }
    }

    /// Whether the node is still part of a pair (not alone, not halted).
    pub fn in_session(&self) -> bool {
        matches!(
            self.state(),
            NodeState::Paired | NodeState::Following | NodeState::Arbitrating | NodeState::Draining
        )
    }

    /// Whether the session really started (a Hello accepted, or
    /// acknowledged): the failure detectors run from then on.
    pub fn started(&self) -> bool {
        match &self.session {
            Session::Primary(p) => p.started(),
            Session::Backup(b) => b.started(),
        }
    }

    /// Whether a log connection is up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Primary: whether the caller should open the log connection now
    /// (first connect, or a reconnect after a drop). A backup listens; it
    /// never connects.
    pub fn wants_connection(&self, now: u64) -> bool {
        let Session::Primary(p) = &self.session else {
            return false;
        };
        if self.connected || now < self.next_connect_ns {
            return false;
        }
        if self.reconnects > 0 && self.mutated(Mutation::NoReconnect) {
            return false;
        }
        matches!(p.state(), PrimaryState::Paired | PrimaryState::Arbitrating)
    }

    /// Whether a backup should accept (listen for) a connection.
    pub fn accepts_connection(&self) -> bool {
        matches!(&self.session, Session::Backup(b) if b.state() == BackupState::Following)
    }

    /// A log connection is up: the primary says Hello and resends what the
    /// backup has not received; the backup expects a Hello.
    pub fn on_connected(&mut self, now: u64) -> Effects {
        self.connected = true;
        match &mut self.session {
            Session::Primary(p) => p.on_connected(now),
            Session::Backup(b) => {
                b.on_connected(now);
                Effects::new()
            }
        }
    }

    /// The log connection dropped (reset, closed, refused): in-flight
    /// bytes are lost; the primary reconnects after the interval.
    pub fn on_disconnected(&mut self, now: u64) {
        if self.connected {
            self.reconnects += 1;
        }
        self.connected = false;
        self.next_connect_ns = now + self.cfg.reconnect_interval_ns;
        if let Session::Primary(p) = &mut self.session {
            p.on_disconnected();
        }
    }

    /// Bytes from the peer.
    pub fn on_bytes(&mut self, now: u64, bytes: &[u8]) -> Effects {
        match &mut self.session {
            Session::Primary(p) => p.on_bytes(now, bytes),
            Session::Backup(b) => b.on_bytes(now, bytes),
        }
    }

    /// Timers: heartbeats, acks, throttle, failure detection, and the
    /// arbitration, fencing and go-live that follow a failure, on
    /// `storage`. `guest_time_ns` and `at`: the guest's clock and point
    /// (primary; a backup ignores them).
    pub fn tick<S: SharedStorage + ?Sized>(
        &mut self,
        now: u64,
        guest_time_ns: u64,
        at: ExecPoint,
        storage: &mut S,
    ) -> Effects {
        let fx = match &mut self.session {
            Session::Primary(p) => p.tick(now, guest_time_ns, at),
            Session::Backup(b) => b.tick(now),
        };
        self.carry(now, fx, storage)
    }

    /// Primary, at the end of a run: the guest ended and its final record
    /// (the final checkpoint) is logged. Closes the log (no heartbeat may
    /// follow that record: the backup checks a final checkpoint only as
    /// the log's last record) and starts waiting, at most
    /// `end_timeout_ns`, for the backup's ack of it. The node keeps
    /// watching the backup meanwhile (`tick`): one that dies now is a
    /// failure like any other.
    pub fn end_log(&mut self, now: u64) {
        let Session::Primary(p) = &mut self.session else {
            return;
        };
        if !self.cfg.mutated(Mutation::NoCloseLog) {
            p.close_log();
        }
        self.end
            .get_or_insert((p.last_seq(), now + self.cfg.end_timeout_ns));
    }

    /// Where the end of run stands at `now` (after [`Node::end_log`]).
    pub fn end_state(&self, now: u64) -> SessionEnd {
        match self.state() {
            NodeState::Alone => return SessionEnd::Alone,
            NodeState::Halted => return SessionEnd::Halted,
            _ => {}
        }
        let (Some((last, deadline)), Session::Primary(p)) = (self.end, &self.session) else {
            return SessionEnd::Waiting;
        };
        if p.acked() >= last {
            SessionEnd::Acknowledged
        } else if now > deadline {
            SessionEnd::Unacknowledged {
                acked: p.acked(),
                last,
            }
        } else {
            SessionEnd::Waiting
        }
    }

    /// Primary, once [`SessionEnd::Acknowledged`]: tells the backup the
    /// log is complete (`Goodbye { Shutdown }`); the session is over.
    pub fn shutdown(&mut self) -> Effects {
        match &mut self.session {
            Session::Primary(p) => p.shutdown(),
            Session::Backup(_) => Effects::new(),
        }
    }

    /// Backup: hands the records received since the last call to
    /// `replayer` (the one replay engine, DESIGN.md §1.3), noting in the
    /// [`Node::seam`] what the primary released and the guest time they
    /// show ([`Node::time_floor`]); tells the session what the engine applied (the acks
    /// carry it) and what it still has to run to (a won backup goes live
    /// only once that is nothing: a trailing checkpoint waits, being only
    /// a check); ends the stream when the primary ended the log in order.
    /// A primary node has nothing to feed: [`LogEnd::Open`].
    pub fn feed(&mut self, replayer: &mut Replayer) -> LogEnd {
        let Session::Backup(b) = &mut self.session else {
            return LogEnd::Open;
        };
        for r in b.take_received() {
            self.time_floor = self.time_floor.max(guest_time(&r.entry));
            self.seam.observe(&r);
            if let LogEntry::OutputMarker {
                output_id, digest, ..
            } = r.entry
            {
                if let Err(m) = self.outputs.marked(r.seq, output_id, digest) {
                    self.output_mismatch.get_or_insert(m);
                }
            }
            replayer.push(r);
        }
        // A guest that produced other output than the primary's diverged:
        // the engine ends the replay with it (DESIGN.md §6).
        if let Some(m) = self.output_mismatch {
            replayer.fail(m.seq, alloc::format!("{m}"));
        }
        b.set_applied(replayer.applied_seq());
        b.set_engine_backlog(if replayer.must_wait() {
            0
        } else {
            replayer.remaining()
        });
        match b.goodbye() {
            None | Some(GoodbyeReason::StorageLost) => LogEnd::Open,
            Some(GoodbyeReason::Shutdown) => {
                replayer.end_stream();
                LogEnd::Complete
            }
            Some(other) => LogEnd::Ended(other),
        }
    }

    /// The guest disk's progress on the shared LUN: `stalled_since` is when
    /// it last made progress while a request is outstanding (`None`: idle
    /// or progressing). A paired primary whose disk made no progress for
    /// [`NodeConfig::disk_stall_ns`] steps down for its backup (one-sided storage
    /// loss: the side that still reaches the disk serves, §1.7); the
    /// backup's fence then cuts off the write it still has in flight.
    pub fn on_disk(&mut self, now: u64, stalled_since: Option<u64>) -> Effects {
        let timeout = self.cfg.disk_stall_ns;
        match (&mut self.session, stalled_since) {
            (Session::Primary(p), Some(t))
                if now.saturating_sub(t) >= timeout
                    && !self.cfg.session.mutated(Mutation::NoStorageStepDown) =>
            {
                let fx = p.step_down();
                if !fx.is_empty() {
                    self.stepped_down = true;
                }
                fx
            }
            _ => Effects::new(),
        }
    }

    /// Backup: its guest produced output `id` (numbered as the primary
    /// numbers its outputs) with content `digest`; compared with the
    /// primary's marker for it, whichever comes second. A mismatch ends
    /// the replay as a divergence at the next [`Node::feed`] (a diverged
    /// backup must never go live); it is also returned.
    pub fn output_produced(&mut self, id: u64, digest: u64) -> Result<(), OutputMismatch> {
        match &self.session {
            Session::Backup(b) if b.state() != BackupState::Live => {}
            _ => return Ok(()),
        }
        let r = self.outputs.produced(id, digest);
        if let Err(m) = r {
            self.output_mismatch.get_or_insert(m);
        }
        r
    }

    /// Backup: outputs of its guest that matched the primary's markers.
    pub fn outputs_matched(&self) -> u64 {
        self.outputs.matched()
    }

    /// Backup, and after its go-live: which of the outputs its guest
    /// produced while following the primary surely released, from the
    /// records fed so far; a backup going live emits the others itself
    /// (console lines: `crate::seam`).
    pub fn seam(&self) -> &Seam {
        &self.seam
    }

    /// Backup: the largest guest time the received log showed (the
    /// results of RDTSC and of reads of the TSC MSR, and heartbeats' guest
    /// time; the guest's TSC counts nanoseconds). A backup going live
    /// never lets its guest's clock run below it (DESIGN.md §1.8).
    pub fn time_floor(&self) -> u64 {
        self.time_floor
    }

    /// Whether this node stepped down as primary for lost storage.
    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// The shared disk refused this node's write because another node
    /// preempted its reservation: it was fenced; halt for good.
    pub fn on_fenced(&mut self) -> Effects {
        let mut out = Effects::new();
        if self.state() != NodeState::Halted {
            match &mut self.session {
                Session::Primary(p) => p.halt(),
                Session::Backup(b) => b.halt(),
            }
            out.push(Effect::Halt);
        }
        out
    }

    /// Repair (§1.9): a node acting alone takes the next generation for a
    /// new pair with the fresh backup `joiner` (the caller has copied the
    /// guest's state to it, up to the commit). `Ok(generation)`: the node
    /// is a paired primary under it, not connected, whose peer (the node a
    /// later arbitration fences) is `joiner`; the new backup joins with
    /// [`join`] and reads that generation from the LUN. The new pair must
    /// form within `form_within_ns` (the primary's join timeout): a joiner
    /// that dies after the commit is then judged like a backup that never
    /// joined (arbitrate: the flag is ours, so the node is alone again
    /// under the generation after, and a new repair can start). A lost
    /// flag halts; unreachable storage leaves the node alone.
    pub fn begin_repair<S: SharedStorage + ?Sized>(
        &mut self,
        now: u64,
        storage: &mut S,
        joiner: NodeId,
        form_within_ns: u64,
    ) -> Result<u64, Effects> {
        if self.state() != NodeState::Alone {
            return Err(Effects::new());
        }
        self.arbitrations += 1;
        let verdict = self.run_arbitration(storage, self.generation());
        self.last_verdict = Some(verdict);
        match verdict {
            Verdict::Won(flag) => {
                self.cfg.peer = joiner;
                let mut sc = self.cfg.session;
                sc.join_timeout_ns = form_within_ns;
                self.session = Session::Primary(Primary::new(sc, flag.generation, now));
                self.connected = false;
                self.next_connect_ns = now;
                self.end = None;
                Ok(flag.generation)
            }
            Verdict::Lost(_) => Err(self.on_fenced()),
            Verdict::Unreachable => Err(Effects::new()),
        }
    }

    fn run_arbitration<S: SharedStorage + ?Sized>(
        &mut self,
        storage: &mut S,
        expected: u64,
    ) -> Verdict {
        let me = self.cfg.session.me;
        if self.mutated(Mutation::NoOwnWin) {
            return match storage.try_acquire(expected, me) {
                Ok(r) => Verdict::Won(r),
                Err(FtError::Miscompare { current }) => Verdict::Lost(current),
                Err(_) => Verdict::Unreachable,
            };
        }
        arbitrate(storage, expected, me)
    }

    /// Carries out the effects the node decides itself (arbitration,
    /// fencing, the switch to primary at go-live) and passes the rest on.
    fn carry<S: SharedStorage + ?Sized>(
        &mut self,
        now: u64,
        fx: Effects,
        storage: &mut S,
    ) -> Effects {
        let mut out = Effects::new();
        let mut work: alloc::collections::VecDeque<Effect> = fx.into();
        while let Some(e) = work.pop_front() {
            match e {
                Effect::Arbitrate { .. } if !self.cfg.shared_storage => {
                    out.extend(self.on_fenced());
                }
                Effect::Arbitrate {
                    expected_generation,
                } => {
                    self.arbitrations += 1;
                    let mut verdict = self.run_arbitration(storage, expected_generation);
                    if let Verdict::Won(flag) = verdict {
                        verdict = match self.fence(storage, flag) {
                            Ok(()) => verdict,
                            // We were fenced ourselves: someone else won.
                            Err(FtError::Fenced) => Verdict::Lost(flag),
                            // The flag is ours but the loser may still write:
                            // not alone yet. The retry recognises our win.
                            Err(_) => Verdict::Unreachable,
                        };
                    }
                    self.last_verdict = Some(verdict);
                    let more = match &mut self.session {
                        Session::Primary(p) => p.on_verdict(now, verdict),
                        Session::Backup(b) => b.on_verdict(now, verdict),
                    };
                    work.extend(more);
                }
                Effect::GoLive(g) => {
                    if let Session::Backup(_) = self.session {
                        // The backup becomes the primary, acting alone.
                        self.session = Session::Primary(Primary::new_alone(
                            self.cfg.session,
                            g.generation,
                            now,
                        ));
                    }
                    self.connected = false;
                    out.push(Effect::GoLive(g));
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Fences the peer after winning `flag` (retried with the test-and-set
    /// while it fails).
    fn fence<S: SharedStorage + ?Sized>(
        &mut self,
        storage: &mut S,
        flag: FlagRecord,
    ) -> Result<(), FtError> {
        if !self.cfg.fencing || self.mutated(Mutation::NoFencing) {
            return Ok(());
        }
        self.unfenced = Some(flag);
        storage.fence(self.cfg.session.me, self.cfg.peer)?;
        self.fences += 1;
        self.unfenced = None;
        Ok(())
    }

    /// The flag this node won whose loser it could not fence yet.
    pub fn unfenced(&self) -> Option<FlagRecord> {
        self.unfenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    /// Shared storage in memory: a flag, registrations, and switches for
    /// an outage and for a lost CAW reply.
    struct Lun {
        flag: FlagRecord,
        registered: BTreeSet<u64>,
        down: bool,
        lose_reply: bool,
    }

    impl Lun {
        fn new(generation: u64) -> Self {
            Self {
                flag: FlagRecord::new(generation, NodeId(1)),
                registered: [1, 2].into_iter().collect(),
                down: false,
                lose_reply: false,
            }
        }
        fn up(&self) -> Result<(), FtError> {
            if self.down {
                Err(FtError::StorageUnreachable)
            } else {
                Ok(())
            }
        }
    }

    impl SharedStorage for Lun {
        fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
            self.up()?;
            Ok(self.flag)
        }
        fn try_acquire(&mut self, expected: u64, me: NodeId) -> Result<FlagRecord, FtError> {
            self.up()?;
            if self.flag.generation != expected {
                return Err(FtError::Miscompare { current: self.flag });
            }
            self.flag = FlagRecord::new(expected + 1, me);
            if core::mem::take(&mut self.lose_reply) {
                return Err(FtError::StorageUnreachable);
            }
            Ok(self.flag)
        }
        fn register(&mut self, me: NodeId) -> Result<(), FtError> {
            self.up()?;
            self.registered.insert(me.0);
            Ok(())
        }
        fn fence(&mut self, me: NodeId, loser: NodeId) -> Result<(), FtError> {
            self.up()?;
            if !self.registered.contains(&me.0) {
                return Err(FtError::Fenced);
            }
            self.registered.remove(&loser.0);
            Ok(())
        }
    }

    const MS: u64 = 1_000_000;

    fn cfg(me: u64) -> NodeConfig {
        let mut s = SessionConfig::new(7, [9; 16], NodeId(me));
        s.failure_timeout_ns = 100 * MS;
        s.arbitration_retry_ns = 10 * MS;
        NodeConfig::new(s, NodeId(3 - me))
    }

    /// A backup whose session started, then whose primary fell silent.
    fn silent_backup(lun: &mut Lun) -> Node {
        let mut b = Node::new(cfg(2), NodeRole::Backup, 4, 0);
        b.on_connected(0);
        let mut hello = alloc::vec::Vec::new();
        crate::log::encode_record(
            0,
            &crate::log::LogEntry::Hello {
                cluster_id: 7,
                generation: 4,
                guest_id: [9; 16],
                protocol_version: crate::log::PROTOCOL_VERSION,
                machine: crate::log::MachineId::default(),
            },
            &mut hello,
        )
        .unwrap();
        let fx = b.on_bytes(MS, &hello);
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Send(_))),
            "the Hello is acknowledged"
        );
        assert!(b.started());
        let _ = b.tick(50 * MS, 0, ExecPoint::default(), lun);
        assert_eq!(b.state(), NodeState::Following);
        b
    }

    /// Feeds every `Send` of `fx` to `to` at `now`; returns its effects.
    fn deliver(fx: &Effects, to: &mut Node, now: u64) -> Effects {
        let mut out = Effects::new();
        for e in fx {
            if let Effect::Send(bytes) = e {
                out.extend(to.on_bytes(now, bytes));
            }
        }
        out
    }

    /// A primary and a backup whose session started (Hello acknowledged).
    fn started_pair() -> (Node, Node) {
        let mut p = Node::new(cfg(1), NodeRole::Primary, 4, 0);
        let mut b = Node::new(cfg(2), NodeRole::Backup, 4, 0);
        b.on_connected(0);
        let hello = p.on_connected(0);
        let ack = deliver(&hello, &mut b, MS);
        let _ = deliver(&ack, &mut p, 2 * MS);
        assert!(p.started() && b.started());
        (p, b)
    }

    #[test]
    fn a_primary_whose_disk_stalls_steps_down_and_the_backup_takes_over_at_once() {
        let mut lun = Lun::new(4);
        let (mut p, mut b) = started_pair();
        // Progressing, or stalled for less than twice the failure timeout
        // (100 ms here; one timeout is a slow disk, not a lost one): nothing.
        assert!(p.on_disk(50 * MS, None).is_empty());
        assert!(p.on_disk(150 * MS, Some(10 * MS)).is_empty());
        assert!(p.on_disk(209 * MS, Some(10 * MS)).is_empty());
        assert_eq!(p.state(), NodeState::Paired);
        // Stalled for twice the failure timeout: Goodbye { StorageLost }, halt.
        let fx = p.on_disk(210 * MS, Some(10 * MS));
        assert!(
            matches!(fx.as_slice(), [Effect::Send(_), Effect::Halt]),
            "{fx:?}"
        );
        assert!(p.stepped_down());
        assert_eq!(p.state(), NodeState::Halted);
        assert!(p.on_disk(500 * MS, Some(10 * MS)).is_empty(), "once");
        // The backup heard from the primary 10 ms ago, yet arbitrates on
        // its next tick (not after its own failure timeout), fences the
        // primary, drains and goes live.
        let _ = deliver(&fx, &mut b, 111 * MS);
        assert_eq!(
            b.backup().unwrap().goodbye(),
            Some(crate::log::GoodbyeReason::StorageLost)
        );
        let fx = b.tick(112 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(b.arbitrations, 1);
        assert_eq!(lun.flag, FlagRecord::new(5, NodeId(2)));
        assert!(!lun.registered.contains(&1), "the primary's key preempted");
        let fx2 = b.tick(113 * MS, 0, ExecPoint::default(), &mut lun);
        assert!(
            fx.iter()
                .chain(&fx2)
                .any(|e| matches!(e, Effect::GoLive(_))),
            "{fx:?} {fx2:?}"
        );
        assert_eq!(b.state(), NodeState::Alone);
    }

    #[test]
    fn the_end_of_run_waits_for_the_ack_of_the_final_record_then_says_goodbye() {
        let (mut p, mut b) = started_pair();
        let mut lun = Lun::new(4);
        assert_eq!(p.end_state(0), SessionEnd::Waiting, "not ended");
        let (_, fx) = p
            .primary_mut()
            .unwrap()
            .record(
                10 * MS,
                0,
                crate::log::LogEntry::Checkpoint {
                    at: ExecPoint::new(9, 9, 0),
                    state_hash: 1,
                },
            )
            .unwrap();
        p.end_log(10 * MS);
        assert_eq!(p.end_state(11 * MS), SessionEnd::Waiting);
        // Closed: no heartbeat follows the final record while it waits.
        let idle = p.tick(60 * MS, 0, ExecPoint::new(9, 9, 0), &mut lun);
        assert!(
            !idle.iter().any(|e| matches!(e, Effect::Send(_))),
            "{idle:?}"
        );
        let ack = deliver(&fx, &mut b, 61 * MS);
        let _ = deliver(&ack, &mut p, 62 * MS);
        assert_eq!(p.end_state(62 * MS), SessionEnd::Acknowledged);
        let bye = p.shutdown();
        let _ = deliver(&bye, &mut b, 63 * MS);
        assert_eq!(
            b.backup().unwrap().goodbye(),
            Some(crate::log::GoodbyeReason::Shutdown)
        );
        let mut rp = Replayer::streaming();
        assert_eq!(b.feed(&mut rp), LogEnd::Complete);
        assert!(!rp.stream_open(), "the engine replays to the end");
    }

    #[test]
    fn an_end_not_acknowledged_in_time_is_reported() {
        let (mut p, _b) = started_pair();
        let final_checkpoint = crate::log::LogEntry::Checkpoint {
            at: ExecPoint::new(9, 9, 0),
            state_hash: 1,
        };
        // Logged, never delivered: the backup never acknowledges it.
        let _ = p
            .primary_mut()
            .unwrap()
            .record(10 * MS, 0, final_checkpoint);
        p.end_log(10 * MS);
        // end_timeout is twice the failure timeout (100 ms here).
        assert_eq!(p.end_state(210 * MS), SessionEnd::Waiting);
        assert!(matches!(
            p.end_state(211 * MS),
            SessionEnd::Unacknowledged { .. }
        ));
    }

    #[test]
    fn only_a_paired_primary_whose_session_started_steps_down() {
        // Not started yet (no backup acknowledged): nobody to hand over to.
        let mut p = Node::new(cfg(1), NodeRole::Primary, 4, 0);
        assert!(p.on_disk(500 * MS, Some(0)).is_empty());
        // Alone: nobody either; a backup never steps down.
        let mut a = Node::new_alone(cfg(1), 4, 0);
        assert!(a.on_disk(500 * MS, Some(0)).is_empty());
        let (_, mut b) = started_pair();
        assert!(b.on_disk(500 * MS, Some(0)).is_empty());
        assert_eq!(b.state(), NodeState::Following);
    }

    #[test]
    fn join_reads_the_generation_from_the_lun_and_refuses_a_stale_one() {
        let mut lun = Lun::new(4);
        assert_eq!(session_generation(&mut lun, None, &cfg(1)), Ok(4));
        assert_eq!(session_generation(&mut lun, Some(4), &cfg(1)), Ok(4));
        let e = session_generation(&mut lun, Some(3), &cfg(1)).unwrap_err();
        assert_eq!(
            e,
            FtError::StaleGeneration {
                configured: 3,
                lun: 4,
                owner: 1
            }
        );
        assert!(alloc::format!("{e}").contains("generation 3 is not the shared LUN's"));
        lun.down = true;
        assert_eq!(
            session_generation(&mut lun, None, &cfg(1)),
            Err(FtError::StorageUnreachable)
        );
    }

    #[test]
    fn join_retries_an_unreachable_lun_until_the_join_timeout_and_registers() {
        let mut c = cfg(2);
        c.session.join_timeout_ns = 50 * MS;
        let mut lun = Lun::new(4);
        lun.registered.clear();
        lun.down = true;
        assert!(matches!(
            join(&mut lun, None, c, NodeRole::Backup, 0, 10 * MS),
            Join::Retry(FtError::StorageUnreachable)
        ));
        assert!(matches!(
            join(&mut lun, None, c, NodeRole::Backup, 0, 50 * MS),
            Join::GaveUp(FtError::StorageUnreachable)
        ));
        lun.down = false;
        assert!(matches!(
            join(&mut lun, Some(3), c, NodeRole::Backup, 0, 60 * MS),
            Join::Refused(FtError::StaleGeneration { .. })
        ));
        let Join::Joined(n) = join(&mut lun, Some(4), c, NodeRole::Backup, 0, 60 * MS) else {
            panic!("a reachable LUN of the configured generation joins");
        };
        assert_eq!((n.generation(), n.state()), (4, NodeState::Following));
        assert!(lun.registered.contains(&2), "registered for fencing");
    }

    #[test]
    fn a_backup_learns_the_time_floor_and_the_released_outputs_from_the_log() {
        let (mut p, mut b) = started_pair();
        let pm = p.primary_mut().unwrap();
        let (_, mut fx) = pm
            .record(
                MS,
                0,
                LogEntry::NonDet {
                    at: ExecPoint::new(5, 5, 0),
                    source: crate::log::NonDetSource::Rdtsc,
                    value: 777,
                },
            )
            .unwrap();
        fx.extend(pm.output(MS, 0, ExecPoint::new(6, 6, 0), 1, 0xC0).unwrap());
        let ack = deliver(&fx, &mut b, 2 * MS);
        let _ = deliver(&ack, &mut p, 3 * MS);
        let mut rp = Replayer::streaming();
        assert_eq!(b.feed(&mut rp), LogEnd::Open);
        assert_eq!(b.time_floor(), 777);
        // The marker arrived; no later record shows the primary saw its ack.
        assert!(b.seam().judge(1).is_some());
        let hb = p.tick(30 * MS, 900, ExecPoint::new(7, 7, 0), &mut Lun::new(4));
        let _ = deliver(&hb, &mut b, 31 * MS);
        assert_eq!(b.feed(&mut rp), LogEnd::Open);
        assert_eq!(b.seam().judge(1), None, "the heartbeat shows the ack");
        assert_eq!(b.time_floor(), 900);
        // The backup's guest made the same output 1: matched.
        assert_eq!(b.output_produced(1, 0xC0), Ok(()));
        assert_eq!(b.outputs_matched(), 1);
    }

    #[test]
    fn a_backup_whose_output_differs_from_the_marker_diverges() {
        let (mut p, mut b) = started_pair();
        let pm = p.primary_mut().unwrap();
        let fx = pm.output(MS, 0, ExecPoint::new(6, 6, 0), 1, 0xC0).unwrap();
        let _ = deliver(&fx, &mut b, 2 * MS);
        let mut rp = Replayer::streaming();
        b.feed(&mut rp);
        // Its own output 1 has other content: a divergence, which the
        // engine reports at its next step (the backup never goes live).
        let m = b.output_produced(1, 0xC1).unwrap_err();
        assert_eq!((m.id, m.primary, m.ours), (1, 0xC0, 0xC1));
        b.feed(&mut rp);
        let d = rp.due(
            ExecPoint::new(1, 1, 0),
            &[0; crate::replay::STATE_WORDS],
            true,
        );
        let d = d.unwrap_err();
        assert!(d.what.contains("output #1 differs"), "{d}");
    }

    #[test]
    fn without_shared_storage_a_failure_halts_instead_of_arbitrating() {
        let mut c = cfg(2);
        c.shared_storage = false;
        let mut lun = Lun::new(4);
        lun.down = true;
        let mut b = silent_backup(&mut lun);
        b.cfg = c;
        let fx = b.tick(500 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(fx, [Effect::Halt]);
        assert_eq!((b.state(), b.arbitrations), (NodeState::Halted, 0));
    }

    #[test]
    fn detectors_arm_only_when_the_session_started() {
        let mut lun = Lun::new(4);
        let mut p = Node::new(cfg(1), NodeRole::Primary, 4, 0);
        let mut b = Node::new(cfg(2), NodeRole::Backup, 4, 0);
        // Long guest setup on both sides: no failover before the join timeout.
        let _ = p.tick(5_000 * MS, 0, ExecPoint::default(), &mut lun);
        let _ = b.tick(5_000 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(
            (p.state(), b.state()),
            (NodeState::Paired, NodeState::Following)
        );
        assert_eq!(p.arbitrations + b.arbitrations, 0);
        // Once a backup accepted the connection, the Hello's ack is owed
        // within the failure timeout (a backup that refuses it is dead to
        // this session); reconnects do not restart that clock.
        let _ = p.on_connected(5_000 * MS);
        p.on_disconnected(5_050 * MS);
        let _ = p.on_connected(5_060 * MS);
        let _ = p.tick(5_099 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(p.state(), NodeState::Paired);
        let _ = p.tick(5_100 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!((p.state(), p.arbitrations), (NodeState::Alone, 1));
    }

    #[test]
    fn a_storage_blip_is_retried_and_the_winner_fences_then_drains_and_goes_live() {
        let mut lun = Lun::new(4);
        let mut b = silent_backup(&mut lun);
        lun.down = true;
        let fx = b.tick(200 * MS, 0, ExecPoint::default(), &mut lun);
        assert!(fx.is_empty());
        assert_eq!((b.state(), b.arbitrations), (NodeState::Arbitrating, 1));
        // Back after the blip; the CAW lands but its reply is lost.
        lun.down = false;
        lun.lose_reply = true;
        let _ = b.tick(215 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(b.state(), NodeState::Arbitrating);
        // The retry sees its own win, fences the primary, goes live.
        let fx = b.tick(230 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(b.state(), NodeState::Alone, "{fx:?}");
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::GoLive(g) if g.generation == 5)));
        assert_eq!(lun.flag, FlagRecord::new(5, NodeId(2)));
        assert!(!lun.registered.contains(&1), "the primary is fenced");
        assert_eq!(b.fences, 1);
        assert!(
            b.primary().is_some(),
            "the backup now runs a primary, alone"
        );
    }

    #[test]
    fn a_fence_that_fails_is_retried_before_acting_alone() {
        let mut lun = Lun::new(4);
        let mut b = silent_backup(&mut lun);
        // Wins the CAW but the fence cannot reach storage (down right after).
        struct FenceDown<'a>(&'a mut Lun);
        impl SharedStorage for FenceDown<'_> {
            fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
                self.0.read_flag()
            }
            fn try_acquire(&mut self, e: u64, me: NodeId) -> Result<FlagRecord, FtError> {
                self.0.try_acquire(e, me)
            }
            fn fence(&mut self, _: NodeId, _: NodeId) -> Result<(), FtError> {
                Err(FtError::StorageUnreachable)
            }
        }
        let _ = b.tick(200 * MS, 0, ExecPoint::default(), &mut FenceDown(&mut lun));
        assert_eq!(
            b.state(),
            NodeState::Arbitrating,
            "not alone while unfenced"
        );
        assert_eq!(b.unfenced(), Some(FlagRecord::new(5, NodeId(2))));
        let _ = b.tick(215 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(b.state(), NodeState::Alone);
        assert_eq!(b.unfenced(), None);
    }

    #[test]
    fn a_fenced_node_halts_and_a_loser_halts() {
        let mut lun = Lun::new(4);
        let mut b = silent_backup(&mut lun);
        lun.flag = FlagRecord::new(5, NodeId(1)); // the primary won first
        let fx = b.tick(200 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(b.state(), NodeState::Halted);
        assert!(fx.contains(&Effect::Halt));
        let mut p = Node::new(cfg(1), NodeRole::Primary, 4, 0);
        assert_eq!(p.on_fenced(), [Effect::Halt]);
        assert_eq!(p.state(), NodeState::Halted);
        assert!(p.on_fenced().is_empty(), "once");
    }

    #[test]
    fn the_primary_reconnects_after_the_interval() {
        let mut p = Node::new(cfg(1), NodeRole::Primary, 4, 0);
        assert!(p.wants_connection(0));
        let fx = p.on_connected(0);
        assert!(matches!(fx.as_slice(), [Effect::Send(_)]), "Hello");
        assert!(!p.wants_connection(MS));
        p.on_disconnected(10 * MS);
        assert!(!p.wants_connection(50 * MS));
        assert!(p.wants_connection(110 * MS));
        assert_eq!(p.reconnects, 1);
        let b = Node::new(cfg(2), NodeRole::Backup, 4, 0);
        assert!(!b.wants_connection(u64::MAX) && b.accepts_connection());
    }

    #[test]
    fn repair_takes_the_next_generation() {
        let mut lun = Lun::new(4);
        let mut n = Node::new_alone(cfg(1), 4, 0);
        assert_eq!(n.begin_repair(MS, &mut lun, NodeId(3), 50 * MS), Ok(5));
        assert_eq!((n.state(), n.generation()), (NodeState::Paired, 5));
        assert_eq!(
            n.config().peer,
            NodeId(3),
            "a later failure fences the joiner"
        );
        assert!(
            n.begin_repair(MS, &mut lun, NodeId(3), 50 * MS).is_err(),
            "only when alone"
        );
        // The joiner died after the commit: it never connects. Within the
        // time given nothing happens; then the node arbitrates, wins its
        // own flag and is alone again under the next generation.
        let _ = n.tick(50 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!(n.state(), NodeState::Paired);
        let _ = n.tick(52 * MS, 0, ExecPoint::default(), &mut lun);
        assert_eq!((n.state(), n.generation()), (NodeState::Alone, 6));
        assert_eq!(n.begin_repair(60 * MS, &mut lun, NodeId(4), 50 * MS), Ok(7));
    }
}

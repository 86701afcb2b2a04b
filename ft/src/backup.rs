//! The backup's sans-IO state machine (DESIGN.md §1.2, §1.3, §1.5, §1.7,
//! §1.8; seeds/002 "the backup goes live", seeds/003 on lagging one entry).
//!
//! Bytes from the primary go to [`Backup::on_bytes`], which verifies order
//! and CRC and acknowledges. The one replay engine
//! ([`crate::replay::Replayer`]) takes the records received
//! ([`Backup::take_received`], through `crate::node::Node::feed`), lands
//! on each entry's point itself (the backup lags one entry) and reports
//! what it applied ([`Backup::set_applied`]) and what it still has to run
//! to ([`Backup::set_engine_backlog`]). On primary silence the backup
//! arbitrates; if it wins it drains what it already has and then emits
//! [`Effect::GoLive`].

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::arbitration::Verdict;
use crate::log::{encode_record, GoodbyeReason, LogEntry, Record, StreamDecoder, PROTOCOL_VERSION};
use crate::{Effect, Effects, FtError, GoLive, Mutation, SessionConfig};

/// Where the backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    /// Receiving and replaying the primary's log.
    Following,
    /// The primary went silent; waiting for the test-and-set verdict.
    Arbitrating,
    /// Won the flag: replaying what was received, then going live.
    Draining,
    /// Went live: the node now acts as a primary alone.
    Live,
    /// Lost the flag or was fenced: the guest is halted for good.
    Halted,
}

/// The backup side of an FT session.
#[derive(Debug)]
pub struct Backup {
    cfg: SessionConfig,
    generation: u64,
    state: BackupState,
    decoder: StreamDecoder,
    hello_seen: bool,
    received: u64,
    applied: u64,
    queue: VecDeque<Record>,
    last_heard_ns: u64,
    ack_seq: u64,
    last_ack_sent: (u64, u64),
    /// When the last ack left (a keepalive follows a heartbeat interval
    /// later even without progress).
    last_ack_sent_ns: u64,
    arbitration_pending: bool,
    next_arbitration_ns: u64,
    goodbye: Option<GoodbyeReason>,
    /// The session really started (a Hello was accepted): the failure
    /// detector is armed from then on (DESIGN.md §1.6).
    started: bool,
    created_ns: u64,
    /// The Hello of the current connection still owes its ack.
    hello_unacked: bool,
    /// Records an external replay engine still has to run to (see
    /// [`Backup::set_engine_backlog`]).
    engine_backlog: usize,
}

impl Backup {
    /// A backup for a session under flag `generation`, starting from the
    /// same guest state as the primary (after state transfer).
    pub fn new(cfg: SessionConfig, generation: u64, now: u64) -> Self {
        Self {
            cfg,
            generation,
            state: BackupState::Following,
            decoder: StreamDecoder::new(),
            hello_seen: false,
            received: 0,
            applied: 0,
            queue: VecDeque::new(),
            last_heard_ns: now,
            ack_seq: 0,
            last_ack_sent: (0, 0),
            last_ack_sent_ns: now,
            arbitration_pending: false,
            next_arbitration_ns: now,
            goodbye: None,
            started: false,
            created_ns: now,
            hello_unacked: false,
            engine_backlog: 0,
        }
    }

    /// An external engine ([`Backup::take_received`]) still holds `n`
    /// records it must replay: a backup that won goes live only once it
    /// reports 0 (DESIGN.md §1.7 "finishes replaying the log it has").
    pub fn set_engine_backlog(&mut self, n: usize) {
        self.engine_backlog = n;
    }

    /// The session failed to start (no primary within the join timeout):
    /// arbitrate now.
    pub fn peer_lost(&mut self) -> Effects {
        let mut out = Effects::new();
        if self.state == BackupState::Following {
            self.state = BackupState::Arbitrating;
            self.request_arbitration(&mut out);
        }
        out
    }

    /// Whether a session hello was ever accepted (the failure detector
    /// runs only from then on).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Halts for good (fenced off the shared disk, or told to).
    pub fn halt(&mut self) {
        self.state = BackupState::Halted;
    }

    /// Current state.
    pub fn state(&self) -> BackupState {
        self.state
    }

    /// The flag generation of the session (or the one won).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Highest sequence received in order.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Highest sequence applied by the replay engine.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Entries received but not yet replayed.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of an incomplete record held by the stream decoder (a
    /// connection that closes with some is cut mid-record).
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Whether this connection's session hello was accepted.
    pub fn hello_seen(&self) -> bool {
        self.hello_seen
    }

    /// A new connection from the primary: expect a Hello first.
    pub fn on_connected(&mut self, _now: u64) {
        self.decoder = StreamDecoder::new();
        self.hello_seen = false;
        self.last_ack_sent = (0, 0);
    }

    /// Bytes from the primary. Verifies framing, CRC, session and order;
    /// queues replayable entries; acknowledges what arrived.
    pub fn on_bytes(&mut self, now: u64, bytes: &[u8]) -> Effects {
        let mut out = Effects::new();
        if self.state != BackupState::Following {
            return out;
        }
        // Bytes of a session whose Hello this connection proved are the
        // primary alive, whole record or not: one large record (a disk
        // read completion near MAX_PAYLOAD) can take longer than the
        // failure timeout to cross a slow link (DESIGN.md §1.6).
        if self.hello_seen && !bytes.is_empty() && !self.cfg.mutated(Mutation::HeardOnRecords) {
            self.last_heard_ns = now;
        }
        self.decoder.push(bytes);
        loop {
            match self.decoder.next_record() {
                Ok(Some(rec)) => {
                    if let Err(e) = self.accept(now, rec, &mut out) {
                        out.push(Effect::ResetConnection(e));
                        break;
                    }
                    if self.state != BackupState::Following {
                        return out;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Effect::ResetConnection(e));
                    break;
                }
            }
        }
        self.ack_if_changed(now, &mut out);
        out
    }

    fn accept(&mut self, now: u64, rec: Record, out: &mut Effects) -> Result<(), FtError> {
        if let LogEntry::Hello {
            cluster_id,
            generation,
            guest_id,
            protocol_version,
            machine,
        } = rec.entry
        {
            if cluster_id != self.cfg.cluster_id {
                return Err(FtError::SessionMismatch("cluster id"));
            }
            if guest_id != self.cfg.guest_id {
                return Err(FtError::SessionMismatch("guest id"));
            }
            if protocol_version != PROTOCOL_VERSION {
                return Err(FtError::SessionMismatch("protocol version"));
            }
            if let Some((field, primary, ours)) = self.cfg.machine.first_difference(&machine) {
                return Err(FtError::MachineMismatch {
                    field,
                    primary,
                    ours,
                });
            }
            if generation != self.generation
                && !self.cfg.mutated(crate::Mutation::NoGenerationCheck)
            {
                return Err(FtError::SessionMismatch("generation"));
            }
            self.hello_seen = true;
            self.hello_unacked = true;
            self.started = true;
            self.last_heard_ns = now;
            return Ok(());
        }
        if !self.hello_seen {
            return Err(FtError::UnexpectedEntry {
                kind: rec.entry.kind(),
            });
        }
        if rec.seq <= self.received {
            return Ok(()); // retransmitted after a reconnect
        }
        if rec.seq != self.received + 1 {
            return Err(FtError::OutOfOrder {
                expected: self.received + 1,
                got: rec.seq,
            });
        }
        self.received = rec.seq;
        self.last_heard_ns = now;
        match rec.entry {
            LogEntry::Goodbye {
                reason: GoodbyeReason::StorageLost,
            } => {
                // The primary lost the shared disk and stepped down: its
                // failure, known now rather than after the timeout; the
                // next tick arbitrates (the node carries arbitrations).
                self.goodbye = Some(GoodbyeReason::StorageLost);
            }
            LogEntry::Goodbye {
                reason: GoodbyeReason::Shutdown,
            } => {
                // An orderly end: the log is complete. Nothing more to
                // decide (no failure detection); the engine replays it to
                // the end and judges it (`Node::feed` says so).
                self.goodbye = Some(GoodbyeReason::Shutdown);
                self.state = BackupState::Halted;
            }
            LogEntry::GoLive { .. } | LogEntry::Goodbye { .. } => {
                // The primary holds the flag or ended the session: fenced.
                if let LogEntry::Goodbye { reason } = rec.entry {
                    self.goodbye = Some(reason);
                }
                self.state = BackupState::Halted;
                out.push(Effect::Halt);
            }
            LogEntry::Ack { .. } => {
                return Err(FtError::UnexpectedEntry {
                    kind: rec.entry.kind(),
                })
            }
            _ => self.queue.push_back(rec),
        }
        Ok(())
    }

    /// Acks what changed since the last ack; without a change, a
    /// keepalive ack once a heartbeat interval passed since the last, so
    /// that the primary hears this backup while a long record is still
    /// arriving (nothing new to ack for that long).
    fn ack_if_changed(&mut self, now: u64, out: &mut Effects) {
        // Mutation::AckBeforeQueued: a record still arriving is acked.
        let received = if self.cfg.mutated(Mutation::AckBeforeQueued) && self.decoder.buffered() > 0
        {
            self.received + 1
        } else {
            self.received
        };
        // The Hello is acknowledged too: the primary's detector arms on it.
        let keepalive = now.saturating_sub(self.last_ack_sent_ns) >= self.cfg.heartbeat_interval_ns
            && !self.cfg.mutated(Mutation::HeardOnRecords);
        if !self.hello_seen
            || (!self.hello_unacked && !keepalive && self.last_ack_sent == (received, self.applied))
        {
            return;
        }
        self.hello_unacked = false;
        self.ack_seq += 1;
        let ack = LogEntry::Ack {
            received,
            applied: self.applied,
        };
        let mut bytes = Vec::new();
        if encode_record(self.ack_seq, &ack, &mut bytes).is_ok() {
            self.last_ack_sent = (received, self.applied);
            self.last_ack_sent_ns = now;
            out.push(Effect::Send(bytes));
        }
    }

    /// Why the primary ended the session, if it said Goodbye. After a
    /// `Goodbye { Shutdown }` the log is complete: the engine replays what
    /// it has to the end instead of halting the guest.
    pub fn goodbye(&self) -> Option<GoodbyeReason> {
        self.goodbye
    }

    /// For a replay engine that keeps its own queue and lands on each
    /// entry's point itself ([`crate::replay::Replayer`]): hands
    /// over every received replayable record not taken yet, in order. The
    /// engine still may only run up to the point of the last record it
    /// holds (DESIGN.md §1.3) and reports progress with
    /// [`Backup::set_applied`]. Disk requests are not tracked for such an
    /// engine, and before acting on [`Effect::GoLive`] it must first apply
    /// everything it was handed (§1.7 "finishes replaying").
    pub fn take_received(&mut self) -> Vec<Record> {
        self.queue.drain(..).collect()
    }

    /// The external engine applied every record up to `seq` (clamped to
    /// what was received); the next ack carries it.
    pub fn set_applied(&mut self, seq: u64) {
        self.applied = self.applied.max(seq.min(self.received));
    }

    /// Timers: ack progress, failure detection, arbitration retries, and
    /// the switch to live once a won backup has drained its log.
    pub fn tick(&mut self, now: u64) -> Effects {
        let mut out = Effects::new();
        match self.state {
            BackupState::Following => {
                // Armed once the session started; before, only the join
                // timeout (a primary still building its guest is not dead).
                let stepped_down = self.goodbye == Some(GoodbyeReason::StorageLost);
                let silent = if self.started {
                    stepped_down
                        || now.saturating_sub(self.last_heard_ns) >= self.cfg.failure_timeout_ns
                } else {
                    now.saturating_sub(self.created_ns) >= self.cfg.join_timeout_ns
                };
                if silent {
                    self.state = BackupState::Arbitrating;
                    self.request_arbitration(&mut out);
                } else {
                    self.ack_if_changed(now, &mut out);
                }
            }
            BackupState::Arbitrating => {
                if !self.arbitration_pending && now >= self.next_arbitration_ns {
                    self.request_arbitration(&mut out);
                }
            }
            BackupState::Draining => {
                if self.cfg.mutated(crate::Mutation::GoLiveWithoutDrain) {
                    self.queue.clear();
                    self.engine_backlog = 0;
                }
                if self.queue.is_empty() && self.engine_backlog == 0 {
                    self.state = BackupState::Live;
                    out.push(Effect::GoLive(GoLive {
                        generation: self.generation,
                        last_applied: self.applied,
                    }));
                }
            }
            BackupState::Live | BackupState::Halted => {}
        }
        out
    }

    fn request_arbitration(&mut self, out: &mut Effects) {
        self.arbitration_pending = true;
        out.push(Effect::Arbitrate {
            expected_generation: self.generation,
        });
    }

    /// The result of an [`Effect::Arbitrate`].
    pub fn on_verdict(&mut self, now: u64, verdict: Verdict) -> Effects {
        let mut out = Effects::new();
        if self.state != BackupState::Arbitrating {
            return out;
        }
        self.arbitration_pending = false;
        match verdict {
            Verdict::Won(flag) => {
                self.state = BackupState::Draining;
                self.generation = flag.generation;
                out.extend(self.tick(now));
            }
            Verdict::Lost(_) => {
                self.state = BackupState::Halted;
                out.push(Effect::Halt);
            }
            Verdict::Unreachable => {
                self.next_arbitration_ns = now + self.cfg.arbitration_retry_ns;
            }
        }
        out
    }
}

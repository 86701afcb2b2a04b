//! The primary's sans-IO state machine (DESIGN.md §1.1, §1.4, §1.6, §1.7;
//! seeds/002 "Log Channel", seeds/003 "the output rule").
//!
//! The kernel calls [`Primary::record`] for every non-deterministic event
//! it injects, [`Primary::output`] for every guest output, feeds received
//! bytes to [`Primary::on_bytes`], calls [`Primary::tick`] periodically and
//! carries out the returned [`Effect`]s. Inputs and computation are never
//! delayed; only outputs wait for the backup's ack.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::arbitration::Verdict;
use crate::log::{
    encode_record, ExecPoint, GoodbyeReason, LogEntry, StreamDecoder, PROTOCOL_VERSION,
};
use crate::output_rule::OutputRule;
use crate::{Effect, Effects, FtError, GoLive, SessionConfig};

/// Where the primary is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryState {
    /// Streaming to a backup; outputs wait for acks.
    Paired,
    /// The backup went silent; waiting for the test-and-set verdict.
    Arbitrating,
    /// Won the flag (or never had a backup): acting alone, outputs free.
    Alone,
    /// Lost the flag: the guest is halted for good.
    Halted,
}

#[derive(Debug)]
struct Sent {
    seq: u64,
    guest_time_ns: u64,
    /// When it last went out on a connection (0: not sent yet).
    sent_ns: u64,
    bytes: Vec<u8>,
}

/// The primary side of an FT session.
#[derive(Debug)]
pub struct Primary {
    cfg: SessionConfig,
    generation: u64,
    state: PrimaryState,
    next_seq: u64,
    /// Entries not yet applied by the backup (retransmitted on reconnect
    /// from `received + 1`, used to measure lag).
    window: VecDeque<Sent>,
    received: u64,
    applied: u64,
    rule: OutputRule,
    decoder: StreamDecoder,
    connected: bool,
    last_append_ns: u64,
    last_ack_ns: u64,
    peer_seq: u64,
    throttled: bool,
    arbitration_pending: bool,
    next_arbitration_ns: u64,
    /// The backup acknowledged a Hello: the session really started and the
    /// failure detector is armed (DESIGN.md §1.6).
    started: bool,
    created_ns: u64,
    /// When the first connection came up (the backup listens by then, so
    /// its ack of the Hello is owed within the failure timeout).
    first_connect_ns: Option<u64>,
    /// The guest ended and its final checkpoint is logged: nothing more
    /// is appended (no heartbeat may follow the final checkpoint).
    log_closed: bool,
}

impl Primary {
    /// A primary paired with a backup under flag `generation`, both starting
    /// from the same guest state. Not connected yet.
    pub fn new(cfg: SessionConfig, generation: u64, now: u64) -> Self {
        Self {
            cfg,
            generation,
            state: PrimaryState::Paired,
            next_seq: 1,
            window: VecDeque::new(),
            received: 0,
            applied: 0,
            rule: OutputRule::new(),
            decoder: StreamDecoder::new(),
            connected: false,
            last_append_ns: now,
            last_ack_ns: now,
            peer_seq: 0,
            throttled: false,
            arbitration_pending: false,
            next_arbitration_ns: now,
            started: false,
            created_ns: now,
            first_connect_ns: None,
            log_closed: false,
        }
    }

    /// The guest ended and its last entry (the final checkpoint) is
    /// appended: from now on no heartbeat or entry follows it, while the
    /// acks and the failure detector go on until [`Primary::shutdown`].
    pub fn close_log(&mut self) {
        self.log_closed = true;
    }

    /// Whether the backup ever acknowledged (the session started).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Halts for good (fenced off the shared disk, or told to).
    pub fn halt(&mut self) {
        self.state = PrimaryState::Halted;
    }

    /// A primary that already holds the flag at `generation` and acts
    /// alone (after a backup's go-live, or before a backup exists).
    pub fn new_alone(cfg: SessionConfig, generation: u64, now: u64) -> Self {
        let mut p = Self::new(cfg, generation, now);
        p.state = PrimaryState::Alone;
        p
    }

    /// Current state.
    pub fn state(&self) -> PrimaryState {
        self.state
    }

    /// The flag generation this primary works under.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Highest sequence the backup acknowledged receiving.
    pub fn acked(&self) -> u64 {
        self.received
    }

    /// Highest sequence the backup reported applied (replayed).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Sequence number of the last appended entry.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Outputs waiting for an ack.
    pub fn held_outputs(&self) -> usize {
        self.rule.held()
    }

    /// Whether the guest should be slowed down.
    pub fn throttled(&self) -> bool {
        self.throttled
    }

    /// Backup lag in guest time: how far the oldest entry the backup has
    /// not applied is behind `guest_now_ns`.
    pub fn lag_ns(&self, guest_now_ns: u64) -> u64 {
        self.window
            .iter()
            .find(|s| s.seq > self.applied)
            .map_or(0, |s| guest_now_ns.saturating_sub(s.guest_time_ns))
    }

    /// Backup lag in this node's time: how long ago the oldest entry the
    /// backup has not applied went out (0 when nothing is outstanding or
    /// not connected).
    pub fn lag_sent_ns(&self, now: u64) -> u64 {
        if !self.connected {
            return 0;
        }
        self.window
            .iter()
            .find(|s| s.seq > self.applied && s.sent_ns > 0)
            .map_or(0, |s| now.saturating_sub(s.sent_ns))
    }

    /// The session failed to start or the peer is gone (no backup joined
    /// within the join timeout): arbitrate now.
    pub fn peer_lost(&mut self) -> Effects {
        let mut out = Effects::new();
        if self.state == PrimaryState::Paired {
            self.state = PrimaryState::Arbitrating;
            self.set_throttle(false, &mut out);
            self.request_arbitration(&mut out);
        }
        out
    }

    /// A new logging-channel connection is up: say Hello and retransmit
    /// everything the backup has not acknowledged.
    pub fn on_connected(&mut self, now: u64) -> Effects {
        self.connected = true;
        self.first_connect_ns.get_or_insert(now);
        self.decoder = StreamDecoder::new();
        let mut out = Effects::new();
        if !matches!(self.state, PrimaryState::Paired | PrimaryState::Arbitrating) {
            return out;
        }
        let mut bytes = Vec::new();
        let hello = LogEntry::Hello {
            cluster_id: self.cfg.cluster_id,
            generation: self.generation,
            guest_id: self.cfg.guest_id,
            protocol_version: PROTOCOL_VERSION,
            machine: self.cfg.machine,
        };
        // A Hello is 80 bytes; it cannot exceed MAX_PAYLOAD.
        let _ = encode_record(0, &hello, &mut bytes);
        for s in self.window.iter_mut().filter(|s| s.seq > self.received) {
            bytes.extend_from_slice(&s.bytes);
            s.sent_ns = now;
        }
        out.push(Effect::Send(bytes));
        out
    }

    /// The connection dropped; in-flight data is lost and will be resent.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// Appends a replayed entry (async event, non-deterministic result,
    /// checkpoint) at the guest's current point and streams it. Returns
    /// the sequence number it got (0 when acting alone: nothing is logged).
    pub fn record(
        &mut self,
        now: u64,
        guest_time_ns: u64,
        entry: LogEntry,
    ) -> Result<(u64, Effects), FtError> {
        match self.state {
            PrimaryState::Alone => return Ok((0, Effects::new())),
            PrimaryState::Halted => return Err(FtError::WrongState("primary halted")),
            PrimaryState::Paired | PrimaryState::Arbitrating => {}
        }
        if entry.exec_point().is_none() {
            return Err(FtError::UnexpectedEntry { kind: entry.kind() });
        }
        let mut out = Effects::new();
        let seq = self.append(now, guest_time_ns, &entry, &mut out)?;
        Ok((seq, out))
    }

    /// The guest produced output `output_id` at `at`, with content
    /// `digest` (0: not checked by the backup). Released at once when
    /// acting alone, else held until the backup acks its marker.
    pub fn output(
        &mut self,
        now: u64,
        guest_time_ns: u64,
        at: ExecPoint,
        output_id: u64,
        digest: u64,
    ) -> Result<Effects, FtError> {
        let mut out = Effects::new();
        match self.state {
            PrimaryState::Alone => out.push(Effect::Release(output_id)),
            PrimaryState::Halted => {}
            PrimaryState::Paired | PrimaryState::Arbitrating => {
                let marker = LogEntry::OutputMarker {
                    at,
                    output_id,
                    acked: self.acked(),
                    digest,
                };
                let seq = self.append(now, guest_time_ns, &marker, &mut out)?;
                self.rule.hold(seq, output_id, &mut out);
            }
        }
        Ok(out)
    }

    fn append(
        &mut self,
        now: u64,
        guest_time_ns: u64,
        entry: &LogEntry,
        out: &mut Effects,
    ) -> Result<u64, FtError> {
        let seq = self.next_seq;
        let mut bytes = Vec::new();
        encode_record(seq, entry, &mut bytes)?;
        self.next_seq += 1;
        self.last_append_ns = now;
        if self.connected {
            out.push(Effect::Send(bytes.clone()));
        }
        self.window.push_back(Sent {
            seq,
            guest_time_ns,
            sent_ns: if self.connected { now.max(1) } else { 0 },
            bytes,
        });
        Ok(seq)
    }

    /// Bytes from the backup (acks).
    pub fn on_bytes(&mut self, now: u64, bytes: &[u8]) -> Effects {
        let mut out = Effects::new();
        self.decoder.push(bytes);
        loop {
            let rec = match self.decoder.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) => {
                    out.push(Effect::ResetConnection(e));
                    break;
                }
            };
            if rec.seq <= self.peer_seq {
                out.push(Effect::ResetConnection(FtError::OutOfOrder {
                    expected: self.peer_seq + 1,
                    got: rec.seq,
                }));
                break;
            }
            self.peer_seq = rec.seq;
            match rec.entry {
                LogEntry::Ack { received, applied } => {
                    let appended = self.last_seq();
                    if received > appended || applied > received {
                        out.push(Effect::ResetConnection(FtError::AckBeyondLog {
                            acked: received,
                            appended,
                        }));
                        break;
                    }
                    self.last_ack_ns = now;
                    self.started = true;
                    self.received = self.received.max(received);
                    self.applied = self.applied.max(applied);
                    while self.window.front().is_some_and(|s| s.seq <= self.applied) {
                        self.window.pop_front();
                    }
                    if self.state != PrimaryState::Halted {
                        self.rule.on_ack(self.received, &mut out);
                    }
                }
                other => {
                    out.push(Effect::ResetConnection(FtError::UnexpectedEntry {
                        kind: other.kind(),
                    }));
                    break;
                }
            }
        }
        out
    }

    /// Timers: heartbeat when idle, throttle on lag, failure detection on
    /// ack silence, arbitration retries. `at` is the guest's current point.
    pub fn tick(&mut self, now: u64, guest_time_ns: u64, at: ExecPoint) -> Effects {
        let mut out = Effects::new();
        match self.state {
            PrimaryState::Paired => {
                // Armed once the backup acknowledged. Before: a backup that
                // accepted the connection owes the Hello's ack within the
                // failure timeout; one not reachable yet may still be
                // building its guest (the join timeout).
                let silent = match (self.started, self.first_connect_ns) {
                    (true, _) => {
                        now.saturating_sub(self.last_ack_ns) >= self.cfg.failure_timeout_ns
                    }
                    (false, Some(t)) => now.saturating_sub(t) >= self.cfg.failure_timeout_ns,
                    (false, None) => {
                        now.saturating_sub(self.created_ns) >= self.cfg.join_timeout_ns
                    }
                };
                if silent {
                    self.state = PrimaryState::Arbitrating;
                    self.set_throttle(false, &mut out);
                    self.request_arbitration(&mut out);
                    return out;
                }
                if self.connected
                    && !self.log_closed
                    && now.saturating_sub(self.last_append_ns) >= self.cfg.heartbeat_interval_ns
                {
                    let hb = LogEntry::Heartbeat {
                        at,
                        guest_time_ns,
                        acked: self.acked(),
                    };
                    // A heartbeat is 52 bytes; encoding cannot fail.
                    let _ = self.append(now, guest_time_ns, &hb, &mut out);
                }
                // One throttle rule (DESIGN.md §5, "throttled above 1 s"):
                // the backup is behind by more than `max_lag_ns` of guest
                // time, or has not applied an entry sent that long ago (a
                // guest clock slower than the host's hides the first).
                let lagging = self.lag_ns(guest_time_ns) > self.cfg.max_lag_ns
                    || self.lag_sent_ns(now) > self.cfg.max_lag_ns;
                self.set_throttle(lagging, &mut out);
            }
            PrimaryState::Arbitrating => {
                if !self.arbitration_pending && now >= self.next_arbitration_ns {
                    self.request_arbitration(&mut out);
                }
            }
            PrimaryState::Alone | PrimaryState::Halted => {}
        }
        out
    }

    fn set_throttle(&mut self, on: bool, out: &mut Effects) {
        if on != self.throttled {
            self.throttled = on;
            out.push(Effect::Throttle(on));
        }
    }

    fn request_arbitration(&mut self, out: &mut Effects) {
        self.arbitration_pending = true;
        out.push(Effect::Arbitrate {
            expected_generation: self.generation,
        });
    }

    /// Orderly end of the session (the guest finished): a
    /// `Goodbye { Shutdown }` after the last entry tells the backup its log
    /// is complete. Call it once every entry is acknowledged; nothing may
    /// be appended afterwards.
    pub fn shutdown(&mut self) -> Effects {
        let mut out = Effects::new();
        if self.state != PrimaryState::Paired {
            return out;
        }
        self.state = PrimaryState::Halted;
        out.extend(self.goodbye(GoodbyeReason::Shutdown));
        out
    }

    /// A `Goodbye { reason }` after the last entry, if the connection is
    /// up (a Goodbye is 17 bytes: encoding cannot fail).
    fn goodbye(&self, reason: GoodbyeReason) -> Option<Effect> {
        let mut bytes = Vec::new();
        let bye = LogEntry::Goodbye { reason };
        (self.connected && encode_record(self.next_seq, &bye, &mut bytes).is_ok())
            .then_some(Effect::Send(bytes))
    }

    /// The shared disk has not answered this primary for the failure
    /// timeout while its backup may still reach it (DESIGN.md §1.7, as
    /// vSphere FT fails over on a primary's storage loss): step down.
    /// A `Goodbye { StorageLost }` after the last entry tells the backup
    /// to take over at once (without the connection, its failure detector
    /// does it); this side halts. Only a paired primary whose session
    /// started steps down: alone, there is nobody to hand over to.
    pub fn step_down(&mut self) -> Effects {
        let mut out = Effects::new();
        if self.state != PrimaryState::Paired || !self.started {
            return out;
        }
        self.state = PrimaryState::Halted;
        out.extend(self.goodbye(GoodbyeReason::StorageLost));
        out.push(Effect::Halt);
        out
    }

    /// The result of an [`Effect::Arbitrate`].
    pub fn on_verdict(&mut self, now: u64, verdict: Verdict) -> Effects {
        let mut out = Effects::new();
        if self.state != PrimaryState::Arbitrating {
            return out;
        }
        self.arbitration_pending = false;
        match verdict {
            Verdict::Won(flag) => {
                self.state = PrimaryState::Alone;
                self.generation = flag.generation;
                // Tell a backup that might still be listening that it is fenced.
                let mut bytes = Vec::new();
                let golive = LogEntry::GoLive {
                    generation: flag.generation,
                    owner: self.cfg.me.0,
                };
                if self.connected && encode_record(self.next_seq, &golive, &mut bytes).is_ok() {
                    out.push(Effect::Send(bytes));
                }
                self.window.clear();
                self.rule.release_all(&mut out);
                out.push(Effect::GoLive(GoLive {
                    generation: flag.generation,
                    last_applied: 0,
                }));
            }
            Verdict::Lost(_) => {
                self.state = PrimaryState::Halted;
                out.extend(self.goodbye(GoodbyeReason::Halted));
                out.push(Effect::Halt);
            }
            Verdict::Unreachable => {
                self.next_arbitration_ns = now + self.cfg.arbitration_retry_ns;
            }
        }
        out
    }
}

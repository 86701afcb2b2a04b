//! Record and replay of one vCPU's non-determinism on an `ft` log
//! (DESIGN.md §1.1 what is logged, §1.2 exact execution points, §6 the
//! divergence detector): the one replay engine. The kernel's run loop
//! drives it to record, to replay and as the live FT backup; being
//! hardware-free, the simulator can drive the same code. The run loop
//! feeds it execution points and guest state (the kernel reads the
//! [`StateVector`] with `vmx::state::state_vector`); [`Tape`] either
//! appends to a [`Recorder`] or answers from a [`Replayer`].
//!
//! Entry kinds used here ([`LogEntry`]):
//! * `NonDet` — an RDTSC/RDTSCP/RDRAND/RDSEED result or a time-like MSR
//!   read, at the point of the exiting instruction ("synchronous": the
//!   replaying guest exits there by itself).
//! * `Interrupt` — an interrupt injected at a point ("asynchronous": the
//!   replay lands on the point with the execution counter and injects).
//! * `NetFrame`, `DiskCompletion` — a guest I/O input (a received frame,
//!   disk read data and completion) applied through the kernel's single
//!   input point at a point of the run loop (asynchronous, like
//!   interrupts: the replay lands there and [`Due::Input`] hands the entry
//!   back to be applied; the device's interrupt follows as its own
//!   `Interrupt` entry).
//! * `Checkpoint` — a hash of the guest registers at a point (asynchronous);
//!   the last one of a run also covers guest RAM and the console output.
//! * `Heartbeat`, `OutputMarker` — written by the live FT primary
//!   ([`crate::primary::Primary`], DESIGN.md §1.4, §1.6): *soft* points. They
//!   change nothing in the guest and are not checks: the backup may run up
//!   to them, so the last record held, if soft, is landed on; with a later
//!   record held the replay looks past them and passes them on its way
//!   (counted when passed). Landing costs single steps: a heartbeat every
//!   few milliseconds would otherwise cost more than the workload's own
//!   interrupts.
//!
//! A [`Replayer`] is either a whole log ([`Replayer::decode`]) or a live
//! stream ([`Replayer::streaming`], the FT backup, DESIGN.md §1.3): records
//! are [`Replayer::push`]ed as they arrive, and while the stream is open
//! the engine may only run up to the point of the last record it holds
//! ([`Replayer::must_wait`]).
//!
//! The replay stops at the first entry the guest does not meet exactly and
//! reports it as a [`Divergence`].
use crate::log::{decode_record, encode_record, ExecPoint, LogEntry, NonDetSource, Record};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Words of a checkpoint's state.
pub const STATE_WORDS: usize = 26;

/// The words of a checkpoint, in `vmx::state::state_vector` order: the
/// architectural registers, a digest of the x87/SSE state (the FXSAVE
/// image), then a digest of every write the hypervisor's
/// devices made into guest memory so far (DMA: received frames, read data,
/// used rings; issue 15), so that a replay whose input data differ is
/// caught at the next checkpoint, not only by the final memory hash.
pub const STATE_NAMES: [&str; STATE_WORDS] = [
    "RAX",
    "RCX",
    "RDX",
    "RBX",
    "RSP",
    "RBP",
    "RSI",
    "RDI",
    "R8",
    "R9",
    "R10",
    "R11",
    "R12",
    "R13",
    "R14",
    "R15",
    "RIP",
    "RFLAGS",
    "CR0",
    "CR3",
    "CR4",
    "EFER",
    "FS.base",
    "GS.base",
    "x87/SSE state (FXSAVE digest)",
    "device writes to guest memory (digest)",
];

/// A checkpoint's state, named by [`STATE_NAMES`] (registers read from
/// the VMCS by `vmx::state::state_vector`, the same array; the last word
/// the device-write digest its caller adds).
pub type StateVector = [u64; STATE_WORDS];

/// FNV-1a over 64-bit words (fast enough for 64 MiB of guest RAM in Bochs);
/// the same function checksums an exported log ([`crate::log::export`]).
pub use crate::log::export::{
    fnv_bytes as hash_bytes, fnv_words as hash_words, FNV_SEED as HASH_SEED,
};

/// The log being written, as encoded records (issue 15: bounded memory).
///
/// A whole-log recorder ([`Recorder::new`]: `ft=record`, `ft=export`)
/// keeps every record in [`Recorder::bytes`] and the register vector of
/// every checkpoint for a same-boot replay. A streaming one
/// ([`Recorder::streaming`]: the FT primary) keeps only the records not
/// yet taken ([`Recorder::take`]) and no side table: the primary's session
/// keeps what the backup has not applied, and nothing else stays.
pub struct Recorder {
    /// Encoded records: all of them, or those not yet taken (streaming).
    pub bytes: Vec<u8>,
    seq: u64,
    /// Entries per kind byte.
    pub by_kind: [u64; 16],
    /// Same-boot side table: the full register vector of every checkpoint,
    /// so a divergence can name registers (the log itself carries hashes).
    /// Empty when streaming.
    pub checkpoints: Vec<(u64, StateVector)>,
    streaming: bool,
    total_bytes: u64,
    hash: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder keeping the whole log and the checkpoint side table.
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            seq: 0,
            by_kind: [0; 16],
            checkpoints: Vec::new(),
            streaming: false,
            total_bytes: 0,
            hash: HASH_SEED,
        }
    }

    /// A recorder whose records the caller takes as they come.
    pub fn streaming() -> Self {
        Self {
            streaming: true,
            ..Self::new()
        }
    }

    /// Appends `entry`, which must fit one record (every entry the run
    /// loop makes does: virtio-blk's limits are checked against
    /// `MAX_PAYLOAD` at compile time).
    pub fn push(&mut self, entry: &LogEntry) {
        let start = self.bytes.len();
        encode_record(self.seq + 1, entry, &mut self.bytes)
            .expect("the devices' limits keep every entry within one record");
        self.seq += 1;
        self.by_kind[entry.kind() as usize & 15] += 1;
        self.total_bytes += (self.bytes.len() - start) as u64;
        self.hash = hash_bytes(self.hash, &self.bytes[start..]);
    }

    pub fn checkpoint(&mut self, at: ExecPoint, state: &StateVector) {
        self.push(&LogEntry::Checkpoint {
            at,
            state_hash: hash_words(HASH_SEED, state.iter().copied()),
        });
        self.note_state(state);
    }

    /// The side table's entry for the record just appended (a checkpoint
    /// whose hash covers more than `state`, such as the final one); a
    /// streaming recorder keeps none.
    pub fn note_state(&mut self, state: &StateVector) {
        if !self.streaming {
            self.checkpoints.push((self.seq, *state));
        }
    }

    /// Streaming: the records appended since the last call (whole
    /// records, in order); the recorder forgets them.
    pub fn take(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.bytes)
    }

    pub fn entries(&self) -> u64 {
        self.seq
    }

    /// Bytes of every record appended so far (taken or not).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// FNV chained over the records appended so far, one by one.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// Where replay and log parted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Sequence number of the first entry not met (0: none left).
    pub seq: u64,
    /// The entry's point, if it has one.
    pub expected: Option<ExecPoint>,
    /// Where the replaying guest was.
    pub found: ExecPoint,
    pub what: String,
}

impl core::fmt::Display for Divergence {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let p = |p: &ExecPoint| {
            format!(
                "(counter {}, rip {:#x}, rcx {:#x})",
                p.counter, p.rip, p.rcx
            )
        };
        write!(
            f,
            "entry #{}: {}; guest at {}",
            self.seq,
            self.what,
            p(&self.found)
        )?;
        if let Some(e) = &self.expected {
            write!(f, ", entry at {}", p(e))?;
        }
        Ok(())
    }
}

/// What is due at the current point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    Nothing,
    Inject(u8),
    /// A guest I/O input (`NetFrame` or `DiskCompletion`) to apply now;
    /// call [`Replayer::due`] again afterwards for the rest of the point.
    Input(LogEntry),
}

/// The log being replayed.
pub struct Replayer {
    records: Vec<Record>,
    pos: usize,
    pub applied_by_kind: [u64; 16],
    /// `Some(ended)` for a live stream; `None` for a whole log.
    stream: Option<bool>,
    applied_seq: u64,
    /// A divergence found outside the engine (the node's output check):
    /// the next [`Self::due`] or [`Self::nondet`] reports it.
    failed: Option<(u64, String)>,
}

impl Replayer {
    /// Decodes a whole in-memory log (every record CRC-checked).
    pub fn decode(mut bytes: &[u8]) -> Result<Replayer, crate::FtError> {
        let mut records = Vec::new();
        while !bytes.is_empty() {
            let (r, used) = decode_record(bytes)?;
            records.push(r);
            bytes = &bytes[used..];
        }
        Ok(Replayer {
            records,
            pos: 0,
            applied_by_kind: [0; 16],
            stream: None,
            applied_seq: 0,
            failed: None,
        })
    }

    /// An empty live stream (the FT backup): records arrive with
    /// [`Self::push`] until [`Self::end_stream`].
    pub fn streaming() -> Replayer {
        Replayer {
            records: Vec::new(),
            pos: 0,
            applied_by_kind: [0; 16],
            stream: Some(false),
            applied_seq: 0,
            failed: None,
        }
    }

    /// Appends a received record (applied records are dropped from memory
    /// now and then).
    pub fn push(&mut self, r: Record) {
        if self.pos > 4096 && self.pos * 2 > self.records.len() {
            self.records.drain(..self.pos);
            self.pos = 0;
        }
        self.records.push(r);
    }

    /// The sender said the log is complete: its last record is final.
    pub fn end_stream(&mut self) {
        if self.stream.is_some() {
            self.stream = Some(true);
        }
    }

    /// Whether this is a live stream that is still open.
    pub fn stream_open(&self) -> bool {
        self.stream == Some(false)
    }

    /// A live stream that has nothing to land on: the backup lags one
    /// entry (DESIGN.md §1.3), so the guest must not run until more
    /// arrives. A checkpoint as the last record held also waits: only the
    /// end of the stream says whether it is the final one (which hashes
    /// RAM and console and is met at the guest's exit).
    pub fn must_wait(&self) -> bool {
        self.stream_open()
            && match self.remaining() {
                0 => true,
                1 => matches!(
                    self.head().map(|r| &r.entry),
                    Some(LogEntry::Checkpoint { .. })
                ),
                _ => false,
            }
    }

    /// Whether every record still held is soft (heartbeats, output
    /// markers): nothing left that the guest must meet.
    pub fn only_soft_left(&self) -> bool {
        self.records[self.pos..].iter().all(|r| is_soft(&r.entry))
    }

    /// Sequence number of the last record applied (0: none).
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// Records held (a live stream forgets applied ones: see
    /// [`Self::applied_seq`]).
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn remaining(&self) -> usize {
        self.records.len() - self.pos
    }
    pub fn head(&self) -> Option<&Record> {
        self.records.get(self.pos)
    }
    /// The last record met (the one a [`Due`] just came from).
    pub fn last_met(&self) -> Option<&Record> {
        self.pos.checked_sub(1).and_then(|i| self.records.get(i))
    }
    /// Test hook for the mutation check: the records, editable.
    pub fn records_mut(&mut self) -> &mut Vec<Record> {
        &mut self.records
    }

    fn head_seq(&self) -> u64 {
        self.head().map_or(0, |r| r.seq)
    }

    /// A divergence seen outside the engine, at record `seq` (the node's
    /// output check, `crate::seam::OutputCheck`): the run ends with it at
    /// the next [`Self::due`] or [`Self::nondet`]. The first one stays.
    pub fn fail(&mut self, seq: u64, what: String) {
        self.failed.get_or_insert((seq, what));
    }

    fn take_failure(&mut self, found: ExecPoint) -> Result<(), Divergence> {
        match self.failed.take() {
            Some((seq, what)) => Err(Divergence {
                seq,
                expected: None,
                found,
                what,
            }),
            None => Ok(()),
        }
    }

    fn diverge(&self, found: ExecPoint, what: String) -> Divergence {
        Divergence {
            seq: self.head_seq(),
            expected: self.head().and_then(|r| r.entry.exec_point()),
            found,
            what,
        }
    }

    fn advance(&mut self) {
        if let Some((kind, seq)) = self.head().map(|r| (r.entry.kind(), r.seq)) {
            self.applied_by_kind[kind as usize & 15] += 1;
            self.applied_seq = seq;
        }
        self.pos += 1;
    }

    /// The point the guest must run to next and whether the entry there is
    /// asynchronous (landed on) or synchronous (an exiting instruction).
    /// The final checkpoint (last record) is checked by [`Self::finish`]
    /// when the guest exits, so it counts as synchronous. Soft entries
    /// followed by another record are looked past.
    pub fn target(&self) -> Option<(ExecPoint, bool)> {
        let mut i = self.pos;
        while i + 1 < self.records.len() && is_soft(&self.records[i].entry) {
            i += 1;
        }
        let r = self.records.get(i)?;
        let at = r.entry.exec_point()?;
        let last = i + 1 == self.records.len() && matches!(r.entry, LogEntry::Checkpoint { .. });
        Some((at, !matches!(r.entry, LogEntry::NonDet { .. }) && !last))
    }

    /// Passes the soft entries at the head that the guest has reached.
    fn pass_soft(&mut self, counter: u64) {
        while self.head().is_some_and(|r| {
            is_soft(&r.entry) && r.entry.exec_point().is_some_and(|p| p.counter <= counter)
        }) {
            self.advance();
        }
    }

    /// Where a replay must stop the guest next: the first asynchronous
    /// entry held. The synchronous ones before it (RDTSC, device reads)
    /// need no landing — their instructions exit by themselves on the way,
    /// and [`Self::nondet`] checks each point — and soft ones are passed on
    /// the way. With no asynchronous entry held (a live stream that has not
    /// sent it yet, or the end of the log), the last entry held: the guest
    /// must not run past what is known.
    pub fn landing_target(&self) -> Option<ExecPoint> {
        let rest = self.records.get(self.pos..)?;
        let last = rest.len().checked_sub(1)?;
        rest.iter()
            .enumerate()
            .find_map(|(i, r)| {
                let final_checkpoint = i == last && matches!(r.entry, LogEntry::Checkpoint { .. });
                let asynchronous = !matches!(r.entry, LogEntry::NonDet { .. })
                    && !is_soft(&r.entry)
                    && !final_checkpoint;
                asynchronous.then(|| r.entry.exec_point()).flatten()
            })
            .or_else(|| rest.iter().rev().find_map(|r| r.entry.exec_point()))
    }

    /// Applies the asynchronous entries due at `at` (checkpoints compared
    /// against `state`, at most one interrupt returned for injection).
    /// `exact`: the counter names single instructions, so being at the
    /// entry's counter with another RIP/RCX is a divergence.
    pub fn due(
        &mut self,
        at: ExecPoint,
        state: &StateVector,
        exact: bool,
    ) -> Result<Due, Divergence> {
        self.take_failure(at)?;
        loop {
            self.pass_soft(at.counter);
            let Some((point, asynchronous)) = self.target() else {
                return Ok(Due::Nothing);
            };
            if point.counter < at.counter {
                return Err(self.diverge(at, "the guest ran past the entry's point".into()));
            }
            if point.counter > at.counter || !asynchronous {
                if asynchronous || point.counter > at.counter || point.rip == at.rip {
                    return Ok(Due::Nothing);
                }
                return Err(self.diverge(
                    at,
                    "the guest is not at the instruction that produced the entry".into(),
                ));
            }
            if point != at {
                if exact {
                    return Err(self.diverge(at, "RIP/RCX differ at the entry's counter".into()));
                }
                return Ok(Due::Nothing);
            }
            let entry = self.head().expect("target is Some").entry.clone();
            match entry {
                LogEntry::Checkpoint { state_hash, .. } => {
                    let ours = hash_words(HASH_SEED, state.iter().copied());
                    if ours != state_hash {
                        return Err(self.diverge(
                            at,
                            format!(
                                "checkpoint: state hash (registers, x87/SSE, device writes) {ours:#018x} != recorded {state_hash:#018x}"
                            ),
                        ));
                    }
                    self.advance();
                }
                LogEntry::Interrupt { vector, .. } => {
                    self.advance();
                    return Ok(Due::Inject(vector));
                }
                LogEntry::NetFrame { .. } | LogEntry::DiskCompletion { .. } => {
                    self.advance();
                    return Ok(Due::Input(entry));
                }
                // The primary's idle heartbeat and output markers: points
                // the backup may run to; nothing to inject.
                LogEntry::Heartbeat { .. } | LogEntry::OutputMarker { .. } => self.advance(),
                _ => {
                    let what = format!("entry kind {:#x} cannot be replayed here", entry.kind());
                    return Err(self.diverge(at, what));
                }
            }
        }
    }

    /// The value a non-deterministic instruction at `at` returns.
    pub fn nondet(&mut self, at: ExecPoint, source: NonDetSource) -> Result<u64, Divergence> {
        self.take_failure(at)?;
        self.pass_soft(at.counter);
        match self.head().map(|r| &r.entry) {
            Some(LogEntry::NonDet {
                at: p,
                source: s,
                value,
            }) if *p == at && *s == source => {
                let v = *value;
                self.advance();
                Ok(v)
            }
            Some(_) => Err(self.diverge(at, format!("the guest asked for {source:?} here"))),
            None => Err(self.diverge(at, format!("log exhausted; the guest asked for {source:?}"))),
        }
    }

    /// The end of the run: the last entry must be the final checkpoint at
    /// `at` with `hash`.
    pub fn finish(&mut self, at: ExecPoint, hash: u64) -> Result<(), Divergence> {
        self.pass_soft(at.counter);
        match self.head().map(|r| &r.entry) {
            Some(LogEntry::Checkpoint { at: p, state_hash })
                if *p == at && self.remaining() == 1 =>
            {
                if *state_hash != hash {
                    return Err(self.diverge(
                        at,
                        format!("final state hash {hash:#018x} != recorded {state_hash:#018x}"),
                    ));
                }
                self.advance();
                Ok(())
            }
            _ => Err(self.diverge(at, "the guest stopped before the end of the log".into())),
        }
    }
}

/// Heartbeats and output markers: points the backup may run to, not
/// points it must stop at.
fn is_soft(e: &LogEntry) -> bool {
    matches!(
        e,
        LogEntry::Heartbeat { .. } | LogEntry::OutputMarker { .. }
    )
}

/// Record, replay, or neither.
pub enum Tape {
    Off,
    Record(Recorder),
    Replay(Replayer),
}

impl Tape {
    pub fn is_replay(&self) -> bool {
        matches!(self, Tape::Replay(_))
    }
    pub fn is_on(&self) -> bool {
        !matches!(self, Tape::Off)
    }
    /// A non-deterministic value at `at`: `live()` when recording (and
    /// logged) or off; the logged value when replaying.
    pub fn nondet(
        &mut self,
        at: ExecPoint,
        source: NonDetSource,
        live: impl FnOnce() -> u64,
    ) -> Result<u64, Divergence> {
        match self {
            Tape::Off => Ok(live()),
            Tape::Record(r) => {
                let value = live();
                r.push(&LogEntry::NonDet { at, source, value });
                Ok(value)
            }
            Tape::Replay(r) => r.nondet(at, source),
        }
    }
}

/// Log kind names for summaries, indexed by kind byte.
pub fn kind_name(kind: usize) -> &'static str {
    match kind {
        0x02 => "interrupt",
        0x03 => "netframe",
        0x04 => "disk",
        0x05 => "nondet",
        0x06 => "heartbeat",
        0x07 => "output",
        0x0B => "checkpoint",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(c: u64, rip: u64, rcx: u64) -> ExecPoint {
        ExecPoint::new(c, rip, rcx)
    }

    fn log() -> Recorder {
        let mut r = Recorder::default();
        let mut tape = Tape::Record(core::mem::take(&mut r));
        assert_eq!(
            tape.nondet(pt(10, 0x100, 0), NonDetSource::Rdtsc, || 77),
            Ok(77)
        );
        let Tape::Record(mut r) = tape else {
            unreachable!()
        };
        r.checkpoint(pt(20, 0x200, 5), &[1; STATE_WORDS]);
        r.push(&LogEntry::Interrupt {
            at: pt(20, 0x200, 5),
            vector: 0x40,
            guest_time_ns: 0,
        });
        r.push(&LogEntry::Checkpoint {
            at: pt(30, 0x300, 0),
            state_hash: 99,
        });
        r
    }

    #[test]
    fn record_then_replay_roundtrip() {
        let r = log();
        assert_eq!(r.entries(), 4);
        assert_eq!(r.by_kind[0x05], 1);
        assert_eq!(r.by_kind[0x0B], 2);
        let mut p = Replayer::decode(&r.bytes).unwrap();
        assert_eq!(p.len(), 4);
        // nothing async due before the RDTSC; target is synchronous
        assert_eq!(p.target(), Some((pt(10, 0x100, 0), false)));
        assert_eq!(
            p.due(pt(3, 0x50, 0), &[0; STATE_WORDS], true),
            Ok(Due::Nothing)
        );
        let mut tape = Tape::Replay(p);
        assert_eq!(
            tape.nondet(pt(10, 0x100, 0), NonDetSource::Rdtsc, || unreachable!()),
            Ok(77)
        );
        let Tape::Replay(mut p) = tape else {
            unreachable!()
        };
        assert_eq!(p.target(), Some((pt(20, 0x200, 5), true)));
        assert_eq!(
            p.due(pt(20, 0x200, 5), &[1; STATE_WORDS], true),
            Ok(Due::Inject(0x40))
        );
        assert_eq!(p.finish(pt(30, 0x300, 0), 99), Ok(()));
        assert_eq!(p.remaining(), 0);
    }

    #[test]
    fn landing_skips_synchronous_entries_but_not_past_the_known_end() {
        let r = log();
        let records = Replayer::decode(&r.bytes).unwrap().records;
        let mut p = Replayer::decode(&r.bytes).unwrap();
        // The RDTSC at 10 exits by itself: land on the checkpoint at 20.
        assert_eq!(p.target(), Some((pt(10, 0x100, 0), false)));
        assert_eq!(p.landing_target(), Some(pt(20, 0x200, 5)));
        assert_eq!(p.nondet(pt(10, 0x100, 0), NonDetSource::Rdtsc), Ok(77));
        assert_eq!(p.landing_target(), Some(pt(20, 0x200, 5)));
        assert_eq!(
            p.due(pt(20, 0x200, 5), &[1; STATE_WORDS], true),
            Ok(Due::Inject(0x40))
        );
        // Only the final checkpoint (synchronous: the guest's exit) is left.
        assert_eq!(p.landing_target(), Some(pt(30, 0x300, 0)));
        // A stream holding only the RDTSC lands on it, not beyond.
        let mut s = Replayer::streaming();
        assert_eq!(s.landing_target(), None);
        s.push(records[0].clone());
        assert_eq!(s.landing_target(), Some(pt(10, 0x100, 0)));
        // A soft entry last is landed on; with a later record, looked past.
        s.push(Record {
            seq: 2,
            entry: LogEntry::Heartbeat {
                at: pt(15, 0x150, 0),
                guest_time_ns: 1,
                acked: 0,
            },
        });
        assert_eq!(s.landing_target(), Some(pt(15, 0x150, 0)));
        s.push(records[1].clone());
        assert_eq!(s.landing_target(), Some(pt(20, 0x200, 5)));
    }

    #[test]
    fn divergences_name_the_entry() {
        let r = log();
        // wrong source at the right point
        let mut p = Replayer::decode(&r.bytes).unwrap();
        let d = p
            .nondet(pt(10, 0x100, 0), NonDetSource::Rdrand)
            .unwrap_err();
        assert_eq!(d.seq, 1);
        // ran past
        let d = p
            .due(pt(11, 0x104, 0), &[0; STATE_WORDS], true)
            .unwrap_err();
        assert!(d.what.contains("ran past"), "{d}");
        // at the counter of a synchronous entry with another RIP
        let d = p
            .due(pt(10, 0x999, 0), &[0; STATE_WORDS], true)
            .unwrap_err();
        assert!(d.what.contains("not at the instruction"), "{d}");
        // checkpoint mismatch names its hash
        p.nondet(pt(10, 0x100, 0), NonDetSource::Rdtsc).unwrap();
        let d = p
            .due(pt(20, 0x200, 5), &[2; STATE_WORDS], true)
            .unwrap_err();
        assert_eq!(d.seq, 2);
        assert!(d.what.contains("checkpoint"), "{d}");
        // same counter, other RCX (a `rep` iteration): divergence when exact
        let d = p
            .due(pt(20, 0x200, 4), &[1; STATE_WORDS], true)
            .unwrap_err();
        assert!(d.what.contains("RIP/RCX"), "{d}");
        assert_eq!(
            p.due(pt(20, 0x200, 4), &[1; STATE_WORDS], false),
            Ok(Due::Nothing)
        );
        assert!(d.to_string().contains("entry #2"));
    }

    #[test]
    fn finish_requires_the_whole_log() {
        let r = log();
        let mut p = Replayer::decode(&r.bytes).unwrap();
        assert!(p.finish(pt(30, 0x300, 0), 99).is_err());
        let mut bad = r.bytes.clone();
        bad[20] ^= 1;
        assert!(Replayer::decode(&bad).is_err());
    }

    #[test]
    fn only_soft_records_left() {
        let mut r = Replayer::streaming();
        assert!(r.only_soft_left(), "nothing held");
        r.push(Record {
            seq: 1,
            entry: LogEntry::Heartbeat {
                at: pt(5, 0x10, 0),
                guest_time_ns: 1,
                acked: 0,
            },
        });
        assert!(r.only_soft_left());
        r.push(Record {
            seq: 2,
            entry: LogEntry::Checkpoint {
                at: pt(5, 0x10, 0),
                state_hash: 7,
            },
        });
        assert!(!r.only_soft_left(), "a checkpoint must be met");
    }

    #[test]
    fn live_stream_waits_for_the_next_entry_and_for_its_end() {
        let r = log();
        let records = Replayer::decode(&r.bytes).unwrap().records;
        let mut p = Replayer::streaming();
        assert!(p.must_wait(), "nothing received: no guest execution");
        p.push(records[0].clone()); // the RDTSC
        assert!(!p.must_wait());
        assert_eq!(p.target(), Some((pt(10, 0x100, 0), false)));
        assert_eq!(p.nondet(pt(10, 0x100, 0), NonDetSource::Rdtsc), Ok(77));
        assert_eq!(p.applied_seq(), 1);
        assert!(p.must_wait(), "applied all it had");
        // A checkpoint as the last record waits until something follows.
        p.push(records[1].clone());
        assert!(p.must_wait());
        p.push(records[2].clone());
        assert!(!p.must_wait());
        // Heartbeats and output markers are passed where they stand.
        p.push(Record {
            seq: 5,
            entry: LogEntry::Heartbeat {
                at: pt(20, 0x200, 5),
                guest_time_ns: 1,
                acked: 0,
            },
        });
        assert_eq!(
            p.due(pt(20, 0x200, 5), &[1; STATE_WORDS], true),
            Ok(Due::Inject(0x40))
        );
        p.push(Record {
            seq: 6,
            entry: LogEntry::OutputMarker {
                at: pt(25, 0x250, 0),
                output_id: 1,
                acked: 0,
                digest: 0,
            },
        });
        // Soft entries are passed, never checked: the guest past the
        // heartbeat (it came after the interrupt at its point) is fine, and
        // the marker ahead, the last record held, is the next target.
        assert_eq!(
            p.due(pt(21, 0x204, 5), &[1; STATE_WORDS], true),
            Ok(Due::Nothing)
        );
        assert_eq!(p.target(), Some((pt(25, 0x250, 0), true)));
        // With a later record held, soft entries are looked past.
        p.push(records[3].clone());
        assert_eq!(p.target().map(|t| t.0.counter), Some(30));
        let mut p2 = Replayer::streaming();
        p2.push(Record {
            seq: 1,
            entry: LogEntry::Heartbeat {
                at: pt(3, 0x30, 0),
                guest_time_ns: 1,
                acked: 0,
            },
        });
        p2.push(Record {
            seq: 2,
            entry: LogEntry::OutputMarker {
                at: pt(3, 0x30, 0),
                output_id: 1,
                acked: 0,
                digest: 0,
            },
        });
        p2.push(records[3].clone());
        assert_eq!(
            p2.due(pt(3, 0x30, 0), &[0; STATE_WORDS], true),
            Ok(Due::Nothing)
        );
        assert_eq!((p2.applied_by_kind[6], p2.applied_by_kind[7]), (1, 1));
        assert_eq!(p2.applied_seq(), 2);
        // The final checkpoint: waits until the stream ends, then is met
        // at the exit like a whole log's.
        assert!(p2.must_wait());
        assert_eq!(p2.target(), Some((pt(30, 0x300, 0), false)));
        p2.end_stream();
        assert!(!p2.must_wait());
        assert_eq!(p2.finish(pt(30, 0x300, 0), 99), Ok(()));
    }

    #[test]
    fn inputs_land_like_interrupts() {
        let mut r = Recorder::default();
        let frame = LogEntry::NetFrame {
            at: pt(7, 0x70, 1),
            vector: 0x51,
            frame: alloc::vec![1, 2, 3],
        };
        let disk = LogEntry::DiskCompletion {
            at: pt(7, 0x70, 1),
            vector: 0x50,
            request_id: 4,
            status: crate::log::DiskStatus::Ok,
            data: alloc::vec![9; 512],
        };
        r.push(&frame);
        r.push(&disk);
        r.push(&LogEntry::Interrupt {
            at: pt(7, 0x70, 1),
            vector: 0x50,
            guest_time_ns: 0,
        });
        r.push(&LogEntry::Checkpoint {
            at: pt(9, 0x90, 0),
            state_hash: 1,
        });
        assert_eq!((r.by_kind[3], r.by_kind[4]), (1, 1));
        let mut p = Replayer::decode(&r.bytes).unwrap();
        // asynchronous: the replay lands on it
        assert_eq!(p.target(), Some((pt(7, 0x70, 1), true)));
        assert_eq!(
            p.due(pt(6, 0x6e, 1), &[0; STATE_WORDS], true),
            Ok(Due::Nothing)
        );
        assert_eq!(
            p.due(pt(7, 0x70, 1), &[0; STATE_WORDS], true),
            Ok(Due::Input(frame))
        );
        assert_eq!(
            p.due(pt(7, 0x70, 1), &[0; STATE_WORDS], true),
            Ok(Due::Input(disk))
        );
        assert_eq!(
            p.due(pt(7, 0x70, 1), &[0; STATE_WORDS], true),
            Ok(Due::Inject(0x50))
        );
        assert_eq!((p.applied_by_kind[3], p.applied_by_kind[4]), (1, 1));
        // another RIP at its counter is a divergence
        let mut p = Replayer::decode(&r.bytes).unwrap();
        assert!(p.due(pt(7, 0x71, 1), &[0; STATE_WORDS], true).is_err());
        assert_eq!(kind_name(3), "netframe");
    }

    #[test]
    fn hashes() {
        assert_ne!(hash_bytes(HASH_SEED, b"abc"), hash_bytes(HASH_SEED, b"abd"));
        assert_ne!(
            hash_bytes(HASH_SEED, &[0; 8]),
            hash_bytes(HASH_SEED, &[0; 9])
        );
        assert_eq!((STATE_NAMES[4], STATE_NAMES[16]), ("RSP", "RIP"));
    }
}

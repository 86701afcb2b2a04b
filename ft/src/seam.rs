//! Outputs at the failover seam (DESIGN.md §1.4, §1.8; issue 14, issue
//! 15): which of the outputs a backup's guest produced (and discarded)
//! while it followed must it emit itself when it goes live, because the
//! primary may never have released them?
//!
//! The primary releases output *n* only once the backup acknowledged the
//! record that marks it, and says in every `OutputMarker` and `Heartbeat`
//! which acknowledged position it had seen when it wrote the record
//! (`acked`). Releasing happens as the ack arrives, before anything the
//! primary writes later, so a record carrying `acked = A` proves that
//! every output marked at or before `A` was already out. For each output
//! the backup's guest produced, the backup therefore knows one of three
//! things:
//!
//! * its marker is at or before the largest `acked` received: released
//!   for sure, never emitted again;
//! * its marker arrived (and was acknowledged) but no later record showed
//!   the primary saw that ack: it may or may not be out, so it is emitted
//!   again (at least once: a duplicate at the seam, never a loss);
//! * its marker never arrived: the primary never released it (no ack of
//!   the backup covers it), so it is emitted for the first time.
//!
//! Markers are logged in output order, so "released for sure" is a prefix
//! of the output ids: [`Seam::released_through`]. The seam keeps only the
//! markers above it; the driver keeps the discarded outputs above it (the
//! throttle bounds both to about a second of output).
//!
//! Which outputs go through the seam is the driver's choice: console lines
//! (no one retransmits them); not network frames (TCP does), and disk
//! requests the guest still waits for are re-issued by its device model.

use alloc::collections::BTreeMap;

use crate::log::{LogEntry, Record};

/// Why an output may not have reached the world before the go-live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreleased {
    /// Its marker never reached the backup: the primary never released it.
    MarkerNotReceived,
    /// Its marker (record `marker_seq`) reached the backup, but the
    /// primary's last word showed acks only up to `primary_acked`: it may
    /// have been released or not.
    AckNotSeen { marker_seq: u64, primary_acked: u64 },
}

/// The backup's view of which outputs the primary released.
#[derive(Debug, Default)]
pub struct Seam {
    /// Markers above the released prefix: output id → record sequence.
    markers: BTreeMap<u64, u64>,
    /// The largest `acked` the primary reported.
    primary_acked: u64,
    /// Every output id up to this one was released by the primary.
    released_through: Option<u64>,
    /// Ignore what the primary reported (mutation `no-seam`: every
    /// output counts as released).
    blind: bool,
}

impl Seam {
    /// A seam that has seen nothing: every output may be unreleased.
    pub fn new() -> Self {
        Self::default()
    }

    /// A seam that takes every output as released (a broken backup, for
    /// the simulator's mutation).
    pub(crate) fn blind() -> Self {
        Self {
            blind: true,
            ..Self::default()
        }
    }

    /// A record of the primary's log reached the backup.
    pub fn observe(&mut self, record: &Record) {
        match record.entry {
            LogEntry::OutputMarker {
                output_id, acked, ..
            } => {
                self.markers.insert(output_id, record.seq);
                self.primary_saw(acked);
            }
            LogEntry::Heartbeat { acked, .. } => self.primary_saw(acked),
            _ => {}
        }
    }

    fn primary_saw(&mut self, acked: u64) {
        if acked <= self.primary_acked {
            return;
        }
        self.primary_acked = acked;
        while let Some((&id, &seq)) = self.markers.first_key_value() {
            if seq > acked {
                break;
            }
            self.markers.pop_first();
            self.released_through = Some(self.released_through.map_or(id, |r| r.max(id)));
        }
    }

    /// Every output id up to this one was released by the primary (the
    /// driver may forget those).
    pub fn released_through(&self) -> Option<u64> {
        if self.blind {
            return Some(u64::MAX);
        }
        self.released_through
    }

    /// Output `id`, produced by the backup's guest: `None` if the primary
    /// surely released it; otherwise why it may not have, so that a
    /// backup going live emits it.
    pub fn judge(&self, id: u64) -> Option<Unreleased> {
        if self.released_through().is_some_and(|r| id <= r) {
            return None;
        }
        Some(match self.markers.get(&id) {
            None => Unreleased::MarkerNotReceived,
            Some(&marker_seq) => Unreleased::AckNotSeen {
                marker_seq,
                primary_acked: self.primary_acked,
            },
        })
    }

    /// Markers kept (above the released prefix).
    pub fn pending(&self) -> usize {
        self.markers.len()
    }
}

/// The backup's own outputs against the primary's markers (issue 15,
/// "the backup checks its outputs against the primary's markers"): each
/// marker carries a digest of the output's content, and the backup's
/// guest, running the same execution, must produce the same content
/// under the same id. Either half may come first (the backup's guest can
/// produce an output before the record marking it arrives), so each
/// waits for the other here; a pair that matches is forgotten. A digest
/// of 0 is not checked (outputs the backup does not see, such as frames
/// and disk writes a detached device model discards unnumbered).
#[derive(Debug, Default)]
pub struct OutputCheck {
    marked: BTreeMap<u64, (u64, u64)>,
    produced: BTreeMap<u64, u64>,
    matched: u64,
    /// Halves forgotten unmatched because more than [`OUTPUT_CHECK_CAP`]
    /// waited (the throttle keeps the two sides closer than that).
    pub dropped: u64,
}

/// Halves of each kind an [`OutputCheck`] keeps waiting at most.
pub const OUTPUT_CHECK_CAP: usize = 1 << 16;

/// The backup's guest produced other content than the primary's under
/// output id `id` (marked by record `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputMismatch {
    pub id: u64,
    pub seq: u64,
    pub primary: u64,
    pub ours: u64,
}

impl core::fmt::Display for OutputMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "output #{} differs from the primary's: digest {:#018x}, the primary's marker (record {}) says {:#018x}",
            self.id, self.ours, self.seq, self.primary
        )
    }
}

impl OutputCheck {
    /// An empty check.
    pub fn new() -> Self {
        Self::default()
    }

    /// The primary's marker (record `seq`) for output `id` with `digest`.
    pub fn marked(&mut self, seq: u64, id: u64, digest: u64) -> Result<(), OutputMismatch> {
        if digest == 0 {
            return Ok(());
        }
        match self.produced.remove(&id) {
            Some(ours) => self.compare(id, seq, digest, ours),
            None => {
                self.marked.insert(id, (seq, digest));
                if self.marked.len() > OUTPUT_CHECK_CAP {
                    self.marked.pop_first();
                    self.dropped += 1;
                }
                Ok(())
            }
        }
    }

    /// The backup's guest produced output `id` with `digest`.
    pub fn produced(&mut self, id: u64, digest: u64) -> Result<(), OutputMismatch> {
        match self.marked.remove(&id) {
            Some((seq, primary)) => self.compare(id, seq, primary, digest),
            None => {
                self.produced.insert(id, digest);
                if self.produced.len() > OUTPUT_CHECK_CAP {
                    self.produced.pop_first();
                    self.dropped += 1;
                }
                Ok(())
            }
        }
    }

    fn compare(
        &mut self,
        id: u64,
        seq: u64,
        primary: u64,
        ours: u64,
    ) -> Result<(), OutputMismatch> {
        if primary == ours {
            self.matched += 1;
            Ok(())
        } else {
            Err(OutputMismatch {
                id,
                seq,
                primary,
                ours,
            })
        }
    }

    /// Outputs whose two halves matched so far.
    pub fn matched(&self) -> u64 {
        self.matched
    }

    /// Halves still waiting for the other (markers, the guest's outputs).
    pub fn waiting(&self) -> (usize, usize) {
        (self.marked.len(), self.produced.len())
    }
}

/// The outputs a backup's guest produced and discarded that the primary
/// may not have released, by output id, each with what the driver needs
/// to emit it (a console line's text; nothing in the simulator): kept
/// while the [`Seam`] cannot prove them released, taken at go-live.
#[derive(Debug)]
pub struct Discarded<T> {
    items: BTreeMap<u64, T>,
    cap: usize,
    /// Outputs forgotten because more than `cap` were kept.
    pub dropped: u64,
}

impl<T> Discarded<T> {
    /// Keeps at most `cap` outputs (the oldest go first, counted).
    pub fn new(cap: usize) -> Self {
        Self {
            items: BTreeMap::new(),
            cap,
            dropped: 0,
        }
    }

    /// The guest produced output `id`: kept unless `seam` shows it
    /// released; then everything `seam` shows released is forgotten.
    pub fn keep(&mut self, seam: &Seam, id: u64, item: T) {
        if seam.judge(id).is_some() {
            self.items.insert(id, item);
            if self.items.len() > self.cap {
                self.items.pop_first();
                self.dropped += 1;
            }
        }
        self.prune(seam);
    }

    /// Forgets the outputs `seam` shows released.
    pub fn prune(&mut self, seam: &Seam) {
        if let Some(r) = seam.released_through() {
            self.items = self.items.split_off(&r.saturating_add(1));
        }
    }

    /// At go-live: the kept outputs `seam` cannot show released, in
    /// output order, each with why; nothing is kept afterwards.
    pub fn take_unreleased(&mut self, seam: &Seam) -> alloc::vec::Vec<(u64, T, Unreleased)> {
        core::mem::take(&mut self.items)
            .into_iter()
            .filter_map(|(id, item)| seam.judge(id).map(|why| (id, item, why)))
            .collect()
    }

    /// Forgets everything (a new session).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Outputs kept now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::ExecPoint;

    fn marker(seq: u64, output_id: u64, acked: u64) -> Record {
        Record {
            seq,
            entry: LogEntry::OutputMarker {
                at: ExecPoint::default(),
                output_id,
                acked,
                digest: 0,
            },
        }
    }

    fn heartbeat(seq: u64, acked: u64) -> Record {
        Record {
            seq,
            entry: LogEntry::Heartbeat {
                at: ExecPoint::default(),
                guest_time_ns: 0,
                acked,
            },
        }
    }

    #[test]
    fn three_verdicts() {
        let mut s = Seam::new();
        s.observe(&marker(3, 1, 0));
        s.observe(&marker(5, 3, 2));
        s.observe(&marker(8, 5, 3));
        // Output 1's marker (3) is covered by acked 3: released.
        assert_eq!(s.judge(1), None);
        assert_eq!(s.released_through(), Some(1));
        assert_eq!(
            s.judge(3),
            Some(Unreleased::AckNotSeen {
                marker_seq: 5,
                primary_acked: 3
            })
        );
        assert_eq!(s.judge(7), Some(Unreleased::MarkerNotReceived));
        // A heartbeat shows the primary saw ack 8: 3 and 5 are out.
        s.observe(&heartbeat(9, 8));
        assert_eq!(s.judge(3), None);
        assert_eq!(s.judge(5), None);
        assert_eq!(s.released_through(), Some(5));
        assert_eq!(s.pending(), 0);
        assert_eq!(s.judge(7), Some(Unreleased::MarkerNotReceived));
    }

    #[test]
    fn stale_acks_of_resent_records_change_nothing() {
        let mut s = Seam::new();
        s.observe(&marker(4, 1, 0));
        s.observe(&heartbeat(6, 4));
        assert_eq!(s.released_through(), Some(1));
        // After a reconnect the primary resends older records.
        s.observe(&marker(4, 1, 0));
        s.observe(&heartbeat(5, 2));
        assert_eq!(s.released_through(), Some(1));
        assert_eq!(s.judge(1), None);
    }

    #[test]
    fn discarded_outputs_are_kept_until_proven_released_and_capped() {
        let mut s = Seam::new();
        let mut d = Discarded::new(3);
        s.observe(&marker(3, 1, 0));
        d.keep(&s, 1, "a");
        d.keep(&s, 3, "b");
        assert_eq!(d.len(), 2);
        // The primary saw the ack of output 1's marker: it is forgotten.
        s.observe(&heartbeat(4, 3));
        d.keep(&s, 5, "c");
        assert_eq!(d.len(), 2, "1 pruned, 3 and 5 kept");
        d.keep(&s, 7, "d");
        d.keep(&s, 9, "e");
        assert_eq!((d.len(), d.dropped), (3, 1), "3 dropped past the cap");
        let out = d.take_unreleased(&s);
        let ids: alloc::vec::Vec<u64> = out.iter().map(|o| o.0).collect();
        assert_eq!(ids, [5, 7, 9]);
        assert!(out.iter().all(|o| o.2 == Unreleased::MarkerNotReceived));
        assert!(d.is_empty());
        // Released before it was produced: never kept.
        d.keep(&s, 1, "again");
        assert!(d.is_empty());
    }

    #[test]
    fn nothing_seen_means_nothing_released() {
        let s = Seam::new();
        assert_eq!(s.released_through(), None);
        assert_eq!(s.judge(0), Some(Unreleased::MarkerNotReceived));
        assert_eq!(Seam::blind().judge(0), None);
    }

    #[test]
    fn outputs_match_in_either_order_and_a_difference_is_named() {
        let mut c = OutputCheck::new();
        // Marker first, then the backup's output; then the other order.
        assert_eq!(c.marked(10, 1, 0xAA), Ok(()));
        assert_eq!(c.produced(1, 0xAA), Ok(()));
        assert_eq!(c.produced(2, 0xBB), Ok(()));
        assert_eq!(c.marked(11, 2, 0xBB), Ok(()));
        assert_eq!((c.matched(), c.waiting()), (2, (0, 0)));
        // Digest 0: not checked, nothing kept.
        assert_eq!(c.marked(12, 3, 0), Ok(()));
        assert_eq!(c.waiting(), (0, 0));
        // Different content under the same id, in both orders.
        c.marked(13, 4, 0xCC).unwrap();
        let m = c.produced(4, 0xCD).unwrap_err();
        assert_eq!((m.id, m.seq, m.primary, m.ours), (4, 13, 0xCC, 0xCD));
        assert!(m.to_string().contains("output #4 differs"), "{m}");
        c.produced(5, 0x01).unwrap();
        assert_eq!(c.marked(14, 5, 0x02).unwrap_err().seq, 14);
    }

    #[test]
    fn output_check_is_bounded() {
        let mut c = OutputCheck::new();
        for id in 0..OUTPUT_CHECK_CAP as u64 + 3 {
            c.produced(id, 1).unwrap();
        }
        assert_eq!((c.waiting().1, c.dropped), (OUTPUT_CHECK_CAP, 3));
        // The oldest went first: a marker for it finds nothing to compare.
        c.marked(1, 0, 2).unwrap();
        assert_eq!(c.waiting().0, 1);
    }
}

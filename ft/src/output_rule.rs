//! The output rule (DESIGN.md §1.4; seeds/003 "the output rule"): an
//! output produced at log position `p` reaches the world only once the
//! backup has acknowledged receiving every entry up to `p`. Outputs are
//! released strictly in the order they were produced.

use alloc::collections::VecDeque;

use crate::{Effect, Effects};

/// Outputs held until the backup's ack covers their log position.
#[derive(Debug, Default)]
pub struct OutputRule {
    held: VecDeque<(u64, u64)>,
    acked: u64,
}

impl OutputRule {
    /// An empty rule; nothing acknowledged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds output `output_id` whose marker is log record `seq`. Released
    /// at once (into `out`) if already covered.
    pub fn hold(&mut self, seq: u64, output_id: u64, out: &mut Effects) {
        self.held.push_back((seq, output_id));
        self.release_covered(out);
    }

    /// The backup has received everything up to `acked`.
    pub fn on_ack(&mut self, acked: u64, out: &mut Effects) {
        self.acked = self.acked.max(acked);
        self.release_covered(out);
    }

    /// Acting alone: nobody else needs to have the log; release everything.
    pub fn release_all(&mut self, out: &mut Effects) {
        out.extend(self.held.drain(..).map(|(_, id)| Effect::Release(id)));
    }

    /// Number of outputs waiting.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Highest position the backup acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn release_covered(&mut self, out: &mut Effects) {
        // Head-of-line: a later output never overtakes an earlier one.
        while let Some(&(seq, id)) = self.held.front() {
            if seq > self.acked {
                break;
            }
            self.held.pop_front();
            out.push(Effect::Release(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_only_when_acked() {
        let mut r = OutputRule::new();
        let mut out = Effects::new();
        r.hold(5, 100, &mut out);
        r.hold(9, 101, &mut out);
        assert!(out.is_empty());
        r.on_ack(4, &mut out);
        assert!(out.is_empty());
        r.on_ack(8, &mut out);
        assert_eq!(out, [Effect::Release(100)]);
        r.on_ack(3, &mut out); // stale ack changes nothing
        assert_eq!(out.len(), 1);
        r.on_ack(9, &mut out);
        assert_eq!(out, [Effect::Release(100), Effect::Release(101)]);
        r.hold(9, 102, &mut out); // already covered
        assert_eq!(out.last(), Some(&Effect::Release(102)));
    }
}

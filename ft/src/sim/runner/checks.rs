//! The invariant checks of the simulation (see the `sim` module docs):
//! output release (output rule, split brain, world consistency), the
//! per-step split-brain check, the liveness obligations and the check that
//! no failover happens without a failure.

use alloc::format;

use super::{protocol, Role, Sim, STEP_NS};
use crate::node::{Node, NodeState};
use crate::primary::PrimaryState;
use crate::sim::faults::overlaps;
use crate::sim::{Invariant, Violation};

impl Sim<'_> {
    /// Output `index` of node `i` reaches the world.
    pub(super) fn release(&mut self, i: usize, index: u64) -> Result<(), Violation> {
        let n = &self.nodes[i];
        let Some(p) = n.role.node().and_then(Node::primary) else {
            return Err(self.violation(
                Invariant::Protocol,
                format!("node {i} released output {index} while not primary"),
            ));
        };
        if p.state() == PrimaryState::Alone {
            let flag = self
                .storage
                .flag()
                .map_err(|e| protocol(self.now(), "flag", &e))?;
            if p.generation() > flag.generation || flag.owner != n.id {
                return Err(self.violation(
                    Invariant::NoSplitBrain,
                    format!("node {i} released output {index} as live primary of generation {}, but the flag is generation {} of node {}", p.generation(), flag.generation, flag.owner.0),
                ));
            }
        } else if self.cfg.check_output_rule {
            let seq = n.markers.get(&index).copied().unwrap_or(u64::MAX);
            if self.session_received < seq {
                return Err(self.violation(
                    Invariant::OutputRule,
                    format!("node {i} released output {index} (marker seq {seq}) but the backup has received only up to {}", self.session_received),
                ));
            }
        }
        let now = self.now();
        self.world.release(now, i, &n.guest.outputs, index)?;
        self.issue_write(i, index);
        Ok(())
    }

    pub(super) fn met_liveness(&mut self, i: usize) {
        let now = self.now();
        let before = self.obligations.len();
        let stats = &mut self.stats;
        self.obligations.retain(|o| {
            let met = o.survivor == i;
            if met {
                stats.max_takeover_ns = stats.max_takeover_ns.max(now - o.since);
            }
            !met
        });
        self.stats.liveness_met += (before - self.obligations.len()) as u64;
    }

    pub(super) fn check(&mut self) -> Result<(), Violation> {
        let now = self.now();
        let flag = self.storage.flag().map_err(|e| protocol(now, "flag", &e))?;
        for (i, n) in self.nodes.iter().enumerate() {
            let alone = n
                .role
                .node()
                .filter(|x| matches!(x.state(), NodeState::Alone | NodeState::Draining))
                .map(Node::generation);
            if let Some(g) = alone {
                // A node's own later write (a repair whose reply was lost)
                // leaves it owner at a higher generation: still only one.
                if g > flag.generation || flag.owner != n.id {
                    return Err(self.violation(
                        Invariant::NoSplitBrain,
                        format!("node {i} acts alone under generation {g}, but the flag is generation {} of node {}", flag.generation, flag.owner.0),
                    ));
                }
            }
        }
        let mut k = 0;
        while k < self.obligations.len() {
            let o = &self.obligations[k];
            let (s, c) = (o.survivor, o.crashed);
            let live = self.nodes[s].role.node().map(Node::state) == Some(NodeState::Alone);
            if live {
                self.stats.liveness_met += 1;
                self.stats.max_takeover_ns = self.stats.max_takeover_ns.max(now - o.since);
                self.obligations.swap_remove(k);
            } else if matches!(self.nodes[s].role, Role::Down) || !self.storage_reachable(s) {
                self.obligations.swap_remove(k); // not owed: survivor died or storage was unreachable
            } else if now >= o.deadline {
                if flag.generation > o.generation && flag.owner == self.nodes[c].id {
                    self.obligations.swap_remove(k); // the crashed node had won before dying
                    continue;
                }
                let detail = format!(
                    "node {c} {} at {} ms; survivor node {s} not live by {} ms (flag generation {} of node {})",
                    o.cause,
                    o.since / STEP_NS,
                    o.deadline / STEP_NS,
                    flag.generation,
                    flag.owner.0
                );
                return Err(self.violation(Invariant::Liveness, detail));
            } else {
                k += 1;
            }
        }
        self.check_durability()
    }

    /// Node `i` just arbitrated: something must have failed (DESIGN.md
    /// §1.6: a dropped connection is not a failure). Justified by the
    /// peer down, frozen, halted, alone, arbitrating or draining, or not
    /// started, a log partition
    /// (both ways or one way), a corrupting link, or a link that dropped
    /// more than once within the detection window.
    pub(super) fn check_failover_justified(&self, i: usize) -> Result<(), Violation> {
        let now = self.now();
        let window = 2 * self.cfg.failure_timeout_ns + self.faults.max_delay_ns + 20 * STEP_NS;
        let from = now.saturating_sub(window);
        let peer = 1 - i;
        let peer_ok = self.nodes[peer].role.node().is_some_and(Node::in_session)
            && self.faults.start_at[peer] + window < now;
        let crashed = self.faults.crash[peer].is_some_and(|t| t <= now);
        // The peer already took the pair for broken (it arbitrates, or won
        // and drains): its silence is not this node's mistake. Seen with
        // a primary arbitrating through a storage outage after its guest
        // powered off: its log is closed, nothing keeps the backup fed.
        let peer_broke_off = self.nodes[peer]
            .role
            .node()
            .is_some_and(|n| matches!(n.state(), NodeState::Arbitrating | NodeState::Draining));
        // One drop must be survived by reconnecting; a link that drops
        // again before a round trip completes delivers nothing at all.
        let drops = self
            .faults
            .drops
            .iter()
            .filter(|&&t| from <= t && t <= now)
            .count();
        let excused = !peer_ok
            || crashed
            || peer_broke_off
            || overlaps(&self.faults.freezes[peer], from, now)
            || overlaps(&self.faults.freezes[i], from, now)
            || overlaps(&self.faults.log_partitions, from, now)
            || overlaps(&self.faults.one_way[0], from, now)
            || overlaps(&self.faults.one_way[1], from, now)
            || self.faults.corrupt_per_mille > 0
            || drops > 1
            || self.repaired_since(from);
        if excused {
            return Ok(());
        }
        Err(self.violation(
            Invariant::NoFalseFailover,
            format!(
                "node {i} arbitrated at {} ms with its peer up and the link whole since {} ms (only drops: it must reconnect)",
                now / STEP_NS,
                from / STEP_NS
            ),
        ))
    }
}

//! The invariant checks of the simulation (see the `sim` module docs):
//! output release (output rule, split brain, world consistency), the
//! per-step split-brain check and the liveness obligations.

use alloc::format;

use super::{protocol, Role, Sim, STEP_NS};
use crate::backup::BackupState;
use crate::primary::PrimaryState;
use crate::sim::{Invariant, Violation};

impl Sim<'_> {
    /// Output `index` of node `i` reaches the world.
    pub(super) fn release(&mut self, i: usize, index: u64) -> Result<(), Violation> {
        let n = &self.nodes[i];
        let Role::Primary(p) = &n.role else {
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
        self.world.release(now, i, &n.guest.outputs, index)
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
            let alone = match &n.role {
                Role::Primary(p) if p.state() == PrimaryState::Alone => Some(p.generation()),
                Role::Backup(b) if b.state() == BackupState::Draining => Some(b.generation()),
                _ => None,
            };
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
            let live =
                matches!(&self.nodes[s].role, Role::Primary(p) if p.state() == PrimaryState::Alone);
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
                    "node {c} crashed at {} ms; survivor node {s} not live by {} ms (flag generation {} of node {})",
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
        Ok(())
    }
}

//! The guest's data disk in the simulation (DESIGN.md §1.7 fencing, §1.8):
//! some outputs are disk writes of versioned values to a few shared blocks,
//! overwritten again and again. A released write is in flight until it
//! lands; a frozen node's writes wait and land when it resumes (a zombie),
//! unless it was fenced. The invariant: every block holds the last version
//! the world saw acknowledged, or a later one.

use alloc::format;

use super::{Sim, STEP_NS};
use crate::sim::storage::DATA_BLOCKS;
use crate::sim::{Invariant, Violation};
use crate::FtError;

/// Whether output content `c` is a disk write (not a reply).
pub(crate) fn is_write(c: u64) -> bool {
    disk_write(c).is_some()
}

/// Whether output content `c` is a disk write, and to which block.
fn disk_write(c: u64) -> Option<usize> {
    c.is_multiple_of(3)
        .then_some(((c >> 8) % DATA_BLOCKS as u64) as usize)
}

impl Sim<'_> {
    /// Output `index` of node `i` reached the world: a disk write goes in
    /// flight (version = its position in the one execution).
    pub(super) fn issue_write(&mut self, i: usize, index: u64) {
        let Some(block) = disk_write(self.nodes[i].guest.outputs[index as usize]) else {
            return;
        };
        let at = self.now() + self.rng.range(0, 4 * STEP_NS);
        self.nodes[i].inflight.push_back((at, block, index + 1));
    }

    /// Writes land in order, per node; a frozen node's and an unreachable
    /// one's wait. A refused write (fenced) halts its node.
    pub(super) fn land_writes(&mut self) -> Result<(), Violation> {
        let now = self.now();
        for i in 0..2 {
            if self.frozen(i) || !self.storage_reachable(i) {
                continue;
            }
            while let Some(&(at, block, version)) = self.nodes[i].inflight.front() {
                if at > now {
                    break;
                }
                match self.storage.write(self.nodes[i].id, block, version) {
                    Ok(()) => {
                        self.nodes[i].inflight.pop_front();
                        self.stats.writes += 1;
                        let a = &mut self.acked[block];
                        *a = (*a).max(version);
                    }
                    Err(FtError::Fenced) => {
                        self.stats.fenced_writes += 1;
                        self.nodes[i].inflight.clear();
                        let fx = match self.nodes[i].role.node_mut() {
                            Some(n) => n.on_fenced(),
                            None => break,
                        };
                        self.apply(i, fx)?;
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_durability(&self) -> Result<(), Violation> {
        for (b, (&stored, &acked)) in self.storage.blocks.iter().zip(&self.acked).enumerate() {
            if stored < acked {
                return Err(self.violation(
                    Invariant::Durability,
                    format!(
                        "block {b} holds version {stored}, but the world saw version {acked} acknowledged (a stale write landed late)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

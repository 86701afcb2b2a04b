//! The outside world's view of outputs and the consistency invariants on
//! it (DESIGN.md §1.4, §1.7, §1.8): every output the world saw belongs to
//! one single execution of the guest, and the execution a backup has at
//! go-live extends everything the world saw.

use alloc::format;
use alloc::vec::Vec;

use super::runner::disk::is_write;
use super::{Invariant, Violation};

/// Outputs that reached the world, by guest output index.
#[derive(Debug, Default)]
pub struct World {
    seen: Vec<Option<u64>>,
    /// After a go-live: the live node and how many outputs its execution
    /// had produced at that moment.
    fence: Option<(usize, usize)>,
    /// Outputs delivered (with duplicates).
    pub delivered: u64,
    /// Duplicates delivered (allowed, DESIGN.md §1.8).
    pub duplicates: u64,
    /// Outputs 0 .. this one all reached the world.
    contiguous: usize,
}

impl World {
    /// Node `node` releases output `index`; `outputs` is its execution.
    pub fn release(
        &mut self,
        now: u64,
        node: usize,
        outputs: &[u64],
        index: u64,
    ) -> Result<(), Violation> {
        let i = index as usize;
        let content = outputs[i];
        self.delivered += 1;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, None);
        }
        if let Some((live, len)) = self.fence {
            if live != node && i >= len {
                return Err(Violation {
                    invariant: Invariant::Extension,
                    at_ns: now,
                    detail: format!(
                        "node {node} released output {i} after node {live} went live with only {len} outputs in its execution"
                    ),
                });
            }
        }
        // Outputs of one execution reach the world in order: one past
        // the first never seen means an output was lost.
        // Disk writes are exempt: one the old primary never released is
        // re-issued by the device model, which the simulation leaves out.
        while self.contiguous < i
            && (self.seen[self.contiguous].is_some() || is_write(outputs[self.contiguous]))
        {
            self.contiguous += 1;
        }
        if i > self.contiguous {
            return Err(Violation {
                invariant: Invariant::NoLostOutput,
                at_ns: now,
                detail: format!(
                    "node {node} released output {i}, but output {} never reached the world",
                    self.contiguous
                ),
            });
        }
        match self.seen[i] {
            Some(c) if c != content => Err(Violation {
                invariant: Invariant::SingleExecution,
                at_ns: now,
                detail: format!(
                    "output {i} from node {node} is {content:#x}, the world already saw {c:#x}"
                ),
            }),
            Some(_) => {
                self.duplicates += 1;
                Ok(())
            }
            None => {
                self.seen[i] = Some(content);
                Ok(())
            }
        }
    }

    /// Node `node` goes live with execution `outputs`: it must contain
    /// everything the world saw.
    pub fn go_live(&mut self, now: u64, node: usize, outputs: &[u64]) -> Result<(), Violation> {
        for (i, c) in self.seen.iter().enumerate() {
            let Some(c) = c else { continue };
            if outputs.get(i) != Some(c) {
                return Err(Violation {
                    invariant: Invariant::Extension,
                    at_ns: now,
                    detail: format!(
                        "node {node} went live with {} outputs; the world saw output {i} = {c:#x}, its execution has {:?}",
                        outputs.len(),
                        outputs.get(i)
                    ),
                });
            }
        }
        self.fence = Some((node, outputs.len()));
        Ok(())
    }
}

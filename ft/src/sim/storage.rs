//! The simulated shared storage server holding the arbitration flag
//! (DESIGN.md §1.7), reached through [`SharedStorage`]. Replies can be lost
//! after the write landed; the server can be down; nodes can be cut off.

use super::rng::Rng;
use super::Mutation;
use crate::arbitration::{FlagRecord, NodeId, SharedStorage, FLAG_LEN};
use crate::FtError;

/// The storage server: one flag block.
#[derive(Debug, Clone)]
pub struct StorageServer {
    block: [u8; FLAG_LEN],
    /// Whether the server is up.
    pub up: bool,
}

impl StorageServer {
    /// A server whose flag holds generation 1, written by `owner`.
    pub fn new(owner: NodeId) -> Self {
        Self {
            block: FlagRecord::new(1, owner).to_bytes(),
            up: true,
        }
    }

    /// The stored flag (ground truth for the checker).
    pub fn flag(&self) -> Result<FlagRecord, FtError> {
        FlagRecord::from_bytes(&self.block)
    }

    /// A node's view: `reachable` is false while it is cut off.
    pub fn view<'a>(
        &'a mut self,
        reachable: bool,
        rng: &'a mut Rng,
        mutation: Mutation,
    ) -> StorageView<'a> {
        StorageView {
            server: self,
            reachable,
            rng,
            mutation,
        }
    }
}

/// One node's view of the server.
#[derive(Debug)]
pub struct StorageView<'a> {
    server: &'a mut StorageServer,
    reachable: bool,
    rng: &'a mut Rng,
    mutation: Mutation,
}

impl SharedStorage for StorageView<'_> {
    fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
        if !self.reachable || !self.server.up {
            return Err(FtError::StorageUnreachable);
        }
        self.server.flag()
    }

    fn try_acquire(&mut self, expected_generation: u64, me: NodeId) -> Result<FlagRecord, FtError> {
        if !self.reachable || !self.server.up {
            return Err(FtError::StorageUnreachable);
        }
        let current = self.server.flag()?;
        // Mutation::NoTestAndSet: a plain write instead of COMPARE AND WRITE.
        if current.generation != expected_generation && self.mutation != Mutation::NoTestAndSet {
            return Err(FtError::Miscompare { current });
        }
        let new = FlagRecord::new(expected_generation + 1, me);
        self.server.block = new.to_bytes();
        if self.rng.chance(100) {
            // The write landed but the reply was lost.
            return Err(FtError::StorageUnreachable);
        }
        Ok(new)
    }
}

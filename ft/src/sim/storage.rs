//! The simulated shared storage server (DESIGN.md §1.7): the arbitration
//! flag, reached through [`SharedStorage`], and the guest's data blocks with
//! SCSI-3 persistent reservations (Write Exclusive – Registrants Only: a
//! write from a node whose key was preempted fails with RESERVATION
//! CONFLICT). Replies can be lost after the write landed; the server can be
//! down; nodes can be cut off.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

use super::rng::Rng;
use super::Mutation;
use crate::arbitration::{FlagRecord, NodeId, SharedStorage, FLAG_LEN};
use crate::FtError;

/// Data blocks of the guest's disk.
pub const DATA_BLOCKS: usize = 8;

/// The storage server: one flag block, the data blocks, the registrations.
#[derive(Debug, Clone)]
pub struct StorageServer {
    block: [u8; FLAG_LEN],
    /// Whether the server is up.
    pub up: bool,
    /// Version last written to each data block (0: never).
    pub blocks: Vec<u64>,
    /// Nodes whose reservation key is registered.
    registered: BTreeSet<u64>,
}

impl StorageServer {
    /// A server whose flag holds generation 1, written by `owner`.
    pub fn new(owner: NodeId) -> Self {
        Self {
            block: FlagRecord::new(1, owner).to_bytes(),
            up: true,
            blocks: vec![0; DATA_BLOCKS],
            registered: BTreeSet::new(),
        }
    }

    /// Registers `node`'s key (the simulator does this for the first pair).
    pub fn register(&mut self, node: NodeId) {
        self.registered.insert(node.0);
    }

    /// A data write of `version` to `block` by `node`: refused with
    /// [`FtError::Fenced`] unless `node` is registered.
    pub fn write(&mut self, node: NodeId, block: usize, version: u64) -> Result<(), FtError> {
        if !self.up {
            return Err(FtError::StorageUnreachable);
        }
        if !self.registered.contains(&node.0) {
            return Err(FtError::Fenced);
        }
        self.blocks[block] = version;
        Ok(())
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
        if self.rng.chance(50) {
            // The write landed but the reply was lost.
            return Err(FtError::StorageUnreachable);
        }
        Ok(new)
    }

    fn register(&mut self, me: NodeId) -> Result<(), FtError> {
        if !self.reachable || !self.server.up {
            return Err(FtError::StorageUnreachable);
        }
        self.server.registered.insert(me.0);
        Ok(())
    }

    fn fence(&mut self, me: NodeId, loser: NodeId) -> Result<(), FtError> {
        if !self.reachable || !self.server.up {
            return Err(FtError::StorageUnreachable);
        }
        if !self.server.registered.contains(&me.0) {
            return Err(FtError::Fenced);
        }
        self.server.registered.remove(&loser.0);
        Ok(())
    }
}

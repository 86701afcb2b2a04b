//! What the sans-IO state machines ask their driver to do.

use alloc::vec::Vec;

use crate::FtError;

/// Going live (DESIGN.md §1.7, §1.8): the node now acts alone under
/// `generation`; its outputs are real from here on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoLive {
    /// The flag generation this node won.
    pub generation: u64,
    /// Last log sequence applied before going live (0 for a primary).
    /// The driver re-issues the disk requests the guest is still waiting
    /// for (their completion never arrived in the log): its device model
    /// knows them.
    pub last_applied: u64,
}

/// One instruction to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write these bytes to the logging channel.
    Send(Vec<u8>),
    /// Let output `output_id` reach the world (network frame, disk write).
    Release(u64),
    /// Run [`crate::arbitration::arbitrate`] with this expected generation
    /// and feed the verdict back.
    Arbitrate { expected_generation: u64 },
    /// Slow the guest down (`true`) or let it run at full speed.
    Throttle(bool),
    /// Drop the connection (the peer sent something invalid).
    ResetConnection(FtError),
    /// This node acts alone from now on.
    GoLive(GoLive),
    /// Halt the guest for good (lost arbitration or fenced).
    Halt,
}

/// The effects of one call, in order.
pub type Effects = Vec<Effect>;

//! Session parameters shared by primary and backup (DESIGN.md §1.6, §5:
//! heartbeats ~100/s, failure detected within a few seconds, primary
//! throttled above 1 s of backup lag).

use crate::arbitration::NodeId;

/// What both sides of a session must agree on, and their timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Identifies the FT pair; a Hello from another cluster is rejected.
    pub cluster_id: u64,
    /// Identifies the protected guest.
    pub guest_id: [u8; 16],
    /// This node.
    pub me: NodeId,
    /// Send a heartbeat when the log has been idle this long.
    pub heartbeat_interval_ns: u64,
    /// Peer presumed dead after this much silence.
    pub failure_timeout_ns: u64,
    /// Throttle the primary when the backup lags more guest time than this.
    pub max_lag_ns: u64,
    /// Retry an arbitration that found storage unreachable after this long.
    pub arbitration_retry_ns: u64,
}

impl SessionConfig {
    /// Defaults from DESIGN.md §1.6 and §5.
    pub const fn new(cluster_id: u64, guest_id: [u8; 16], me: NodeId) -> Self {
        Self {
            cluster_id,
            guest_id,
            me,
            heartbeat_interval_ns: 10_000_000,
            failure_timeout_ns: 2_000_000_000,
            max_lag_ns: 1_000_000_000,
            arbitration_retry_ns: 100_000_000,
        }
    }
}

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
    /// The machine the guest runs on; a backup refuses a primary whose
    /// Hello names another.
    pub machine: crate::log::MachineId,
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
    /// A side whose session never started (no Hello acknowledged) gives up
    /// waiting for its peer after this long and arbitrates to run alone.
    pub join_timeout_ns: u64,
    /// A deliberate bug for the simulator's mutation tests (compiled only
    /// with the simulator).
    #[cfg(any(test, feature = "sim"))]
    pub mutation: Mutation,
}

/// A deliberate bug, to prove the simulator's checker bites (DESIGN.md §6
/// "mutations that prove the checker bites"). Production code never holds
/// one: the fields that carry it exist only with the simulator compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The real protocol.
    None,
    /// The simulator's primary driver lets outputs out as soon as the guest
    /// produces them, ignoring the output rule.
    NoOutputRule,
    /// The storage server does a plain write instead of COMPARE AND WRITE.
    NoTestAndSet,
    /// The backup acknowledges a record whose bytes are still arriving,
    /// before it is verified and queued.
    AckBeforeQueued,
    /// A backup that won goes live at once, without replaying what it
    /// received.
    GoLiveWithoutDrain,
    /// Neither the join nor the Hello compares generations.
    NoGenerationCheck,
    /// A miscompare showing this node's own earlier win counts as lost.
    NoOwnWin,
    /// The winner does not fence the loser off the shared disk.
    NoFencing,
    /// The primary never reconnects a dropped log connection.
    NoReconnect,
    /// A paired primary cut off from the shared disk keeps the session
    /// instead of stepping down for its backup.
    NoStorageStepDown,
    /// At the end of a run the primary leaves its log open: heartbeats
    /// follow the final checkpoint.
    NoCloseLog,
    /// A backup going live takes every output its guest produced as
    /// released by the primary and emits none of them (`crate::seam`).
    NoSeam,
    /// The backup hears its primary only when a whole record arrives and
    /// acks only progress: a record that takes longer than the failure
    /// timeout to cross a slow link looks like silence on both sides.
    HeardOnRecords,
}

impl Mutation {
    /// Every mutation, with its command-line name.
    pub const ALL: [(Mutation, &'static str); 13] = [
        (Mutation::None, "none"),
        (Mutation::NoOutputRule, "no-output-rule"),
        (Mutation::NoTestAndSet, "no-test-and-set"),
        (Mutation::AckBeforeQueued, "ack-before-queued"),
        (Mutation::GoLiveWithoutDrain, "go-live-without-drain"),
        (Mutation::NoGenerationCheck, "no-generation-check"),
        (Mutation::NoOwnWin, "no-own-win"),
        (Mutation::NoFencing, "no-fencing"),
        (Mutation::NoReconnect, "no-reconnect"),
        (Mutation::NoStorageStepDown, "no-storage-step-down"),
        (Mutation::NoCloseLog, "no-close-log"),
        (Mutation::NoSeam, "no-seam"),
        (Mutation::HeardOnRecords, "heard-on-records"),
    ];
}

impl SessionConfig {
    /// Whether the simulator switched on deliberate bug `m` (never
    /// outside the simulator).
    pub(crate) fn mutated(&self, _m: Mutation) -> bool {
        #[cfg(any(test, feature = "sim"))]
        {
            self.mutation == _m
        }
        #[cfg(not(any(test, feature = "sim")))]
        {
            false
        }
    }

    /// Defaults from DESIGN.md §1.6 and §5.
    pub const fn new(cluster_id: u64, guest_id: [u8; 16], me: NodeId) -> Self {
        Self {
            cluster_id,
            guest_id,
            machine: crate::log::MachineId {
                guest_mem: 0,
                disk: 0,
                disk_sectors: 0,
                nic: 0,
                cpu: 0,
            },
            me,
            heartbeat_interval_ns: 10_000_000,
            failure_timeout_ns: 2_000_000_000,
            max_lag_ns: 1_000_000_000,
            arbitration_retry_ns: 100_000_000,
            join_timeout_ns: 30_000_000_000,
            #[cfg(any(test, feature = "sim"))]
            mutation: Mutation::None,
        }
    }
}

//! Deterministic simulation of an FT pair (DESIGN.md §4 "simulation" tier,
//! §6 "Proven protocol"; STYLE.md, TigerBeetle/FoundationDB row).
//!
//! One seed drives two production FT nodes ([`crate::node::Node`], with the
//! [`crate::primary`] and [`crate::backup`] session machines inside), a
//! deterministic guest, clients, the logging channel and the storage server
//! (flag, data blocks, reservations) through a random fault schedule
//! ([`faults::Faults`]): crashes and restarts, nodes that freeze and resume
//! with disk writes in flight (zombies), log partitions and connection
//! drops, storage partitions per node and outages, corrupting and slow
//! links, slow nodes, per-node clocks with drift, setup delays before the
//! first entry, and stale configured generations. After every 1 ms step the
//! checker asserts:
//!
//! * [`Invariant::NoSplitBrain`]: every node acting alone holds the
//!   current flag (generation and owner), so at most one does, and no node
//!   releases outputs as a live primary without holding it;
//! * [`Invariant::SingleExecution`]: all outputs the world saw, from any
//!   node, belong to one execution (duplicates allowed, §1.8);
//! * [`Invariant::Extension`]: the execution a node has at go-live contains
//!   every output the world saw, and an old primary never releases an
//!   output beyond it afterwards;
//! * [`Invariant::OutputRule`]: no output released while paired before the
//!   backup received its marker (§1.4);
//! * [`Invariant::Liveness`]: with one side crashed and storage reachable,
//!   the survivor acts alone within the failure timeout plus its lag;
//! * [`Invariant::Replay`]: the backup never diverges during replay;
//! * [`Invariant::Durability`]: every data block holds the last version the
//!   world saw acknowledged, or a later one (a zombie's late write is
//!   fenced, §1.7);
//! * [`Invariant::NoFalseFailover`]: a node arbitrates only after a real
//!   failure (a crash, a freeze, a partition, a corrupting link), never for
//!   a dropped connection it should have reconnected (§1.6);
//! * [`Invariant::NoLostOutput`]: outputs reach the world without gaps:
//!   a backup going live emits those of its execution the primary may not
//!   have released (`crate::seam`), so none the old primary held is lost;
//! * [`Invariant::CleanEnd`]: a guest that powers off (at a counter fixed
//!   per seed, the same for both replicas) with the pair whole and no
//!   fault near has its end acknowledged; the backup's guest, reaching
//!   the same point, meets the final checkpoint as the log's last record
//!   (a [`Invariant::Replay`] failure otherwise).
//!
//! A [`Mutation`] plants one bug in the node, its session machines or the
//! simulated storage (the field that carries it exists only with the
//! simulator compiled in); `sim::tests` asserts the checker catches each
//! within the default seed count.

use alloc::string::String;

pub mod faults;
pub mod guest;
pub mod net;
pub mod rng;
mod runner;
pub mod storage;
pub mod world;

pub use crate::Mutation;

/// Which rule a run broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    NoSplitBrain,
    SingleExecution,
    Extension,
    OutputRule,
    Liveness,
    Replay,
    /// A data block lost a write the world saw acknowledged.
    Durability,
    /// A node arbitrated though nothing failed.
    NoFalseFailover,
    /// The guest powered off with the pair whole and nothing failing, and
    /// the primary's end was not acknowledged in time.
    CleanEnd,
    /// An output reached the world while an earlier one never did: an
    /// output the old primary held was lost at the failover seam.
    NoLostOutput,
    /// A state machine call failed where the protocol says it cannot.
    Protocol,
}

/// A broken invariant, with when and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub invariant: Invariant,
    /// Simulated time.
    pub at_ns: u64,
    /// Human-readable detail.
    pub detail: String,
}

/// Parameters of a run (time scaled down from the real defaults so a seed
/// is cheap: 150 ms failure timeout instead of seconds).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated duration.
    pub duration_ms: u64,
    /// Failure timeout of both nodes.
    pub failure_timeout_ns: u64,
    /// Heartbeat interval.
    pub heartbeat_ns: u64,
    /// Throttle bound on backup lag (guest time).
    pub max_lag_ns: u64,
    /// Arbitration retry interval.
    pub retry_ns: u64,
    /// Join timeout: a side whose session never started arbitrates.
    pub join_timeout_ns: u64,
    /// A primary without a connection tries again this often.
    pub reconnect_ns: u64,
    /// Client request probability per ms, per mille.
    pub requests_per_mille: u64,
    /// The deliberate bug, if any.
    pub mutation: Mutation,
    /// Check [`Invariant::OutputRule`] directly (off: only the world's
    /// consistency checks can notice a broken output rule).
    pub check_output_rule: bool,
    /// Print every node's role each step to stderr.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            duration_ms: 1000,
            failure_timeout_ns: 150_000_000,
            heartbeat_ns: 10_000_000,
            max_lag_ns: 100_000_000,
            retry_ns: 20_000_000,
            join_timeout_ns: 2_000_000_000,
            reconnect_ns: 10_000_000,
            requests_per_mille: 200,
            mutation: Mutation::None,
            check_output_rule: true,
            trace: false,
        }
    }
}

/// What happened in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Backups that went live.
    pub failovers: u64,
    /// Primaries that won the flag and went on alone.
    pub primary_alone: u64,
    /// Nodes halted after losing arbitration or being fenced.
    pub halts: u64,
    /// New backups created from a live primary (§1.9).
    pub repairs: u64,
    /// State transfers of a repair started, and those cut off by a crash,
    /// a freeze past the deadline or a partition before their commit (the
    /// serving node stays alone, the joiner gets nothing).
    pub transfers: u64,
    pub transfers_aborted: u64,
    /// Connections reset on a protocol error (corruption).
    pub resets: u64,
    /// Test-and-set attempts.
    pub arbitrations: u64,
    /// Outputs delivered to the world (with duplicates).
    pub outputs: u64,
    /// Outputs a backup emitted at its go-live because the primary may
    /// not have released them (the seam).
    pub reemitted: u64,
    /// Duplicate outputs after a failover.
    pub duplicates: u64,
    /// Liveness obligations met.
    pub liveness_met: u64,
    /// Longest crash-to-live time among met obligations.
    pub max_takeover_ns: u64,
    /// Largest backup lag seen by a paired primary.
    pub max_lag_ns: u64,
    /// Log bytes primary → backup.
    pub log_bytes: u64,
    /// Joins refused for a stale generation.
    pub refused: u64,
    /// Data writes that landed on the shared disk.
    pub writes: u64,
    /// Data writes refused because the writer was fenced.
    pub fenced_writes: u64,
    /// Primaries that stepped down for a stalled shared disk.
    pub step_downs: u64,
    /// Guests that powered off on the primary, ends acknowledged by the
    /// backup, ends not acknowledged (excused by a fault), and backups
    /// whose replay met the final checkpoint.
    pub ends: u64,
    pub ends_acknowledged: u64,
    pub ends_unacknowledged: u64,
    pub ends_identical: u64,
    /// Records of exactly the maximum payload logged.
    pub max_records: u64,
    /// Frames one byte too large for a record, refused by the primary.
    pub oversize_refused: u64,
    /// Log connections re-established after a drop.
    pub reconnects: u64,
}

impl Stats {
    /// Adds another run's counters (maxima for the maxima).
    pub fn add(&mut self, s: &Stats) {
        self.failovers += s.failovers;
        self.primary_alone += s.primary_alone;
        self.halts += s.halts;
        self.repairs += s.repairs;
        self.transfers += s.transfers;
        self.transfers_aborted += s.transfers_aborted;
        self.resets += s.resets;
        self.arbitrations += s.arbitrations;
        self.outputs += s.outputs;
        self.reemitted += s.reemitted;
        self.duplicates += s.duplicates;
        self.liveness_met += s.liveness_met;
        self.max_takeover_ns = self.max_takeover_ns.max(s.max_takeover_ns);
        self.max_lag_ns = self.max_lag_ns.max(s.max_lag_ns);
        self.log_bytes += s.log_bytes;
        self.refused += s.refused;
        self.writes += s.writes;
        self.fenced_writes += s.fenced_writes;
        self.step_downs += s.step_downs;
        self.ends += s.ends;
        self.ends_acknowledged += s.ends_acknowledged;
        self.ends_unacknowledged += s.ends_unacknowledged;
        self.ends_identical += s.ends_identical;
        self.max_records += s.max_records;
        self.oversize_refused += s.oversize_refused;
        self.reconnects += s.reconnects;
    }
}

/// The result of one seed.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// Counters.
    pub stats: Stats,
}

/// Runs one seed.
pub fn run_seed(seed: u64, cfg: &SimConfig) -> SeedReport {
    runner::Sim::new(seed, cfg).run()
}

#[cfg(test)]
mod tests;

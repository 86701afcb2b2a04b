//! A seed's fault schedule: crashes and restarts of either node, log-link
//! partitions, storage partitions per node, storage outages, connection
//! drops, a slow backup, corrupting and delaying links (issue 7).

use alloc::vec::Vec;

use super::rng::Rng;
use super::SimConfig;

/// Half-open time intervals `[start, end)` in ns.
pub type Intervals = Vec<(u64, u64)>;

/// Whether `t` falls in any interval.
pub fn in_any(iv: &Intervals, t: u64) -> bool {
    iv.iter().any(|&(s, e)| s <= t && t < e)
}

/// Whether any interval meets `[from, to]`.
pub fn overlaps(iv: &Intervals, from: u64, to: u64) -> bool {
    iv.iter().any(|&(s, e)| s <= to && from < e)
}

/// Everything that will go wrong in one run.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Crash time of each node, if it crashes.
    pub crash: [Option<u64>; 2],
    /// Restart time of each node after its crash.
    pub restart: [Option<u64>; 2],
    /// Times the log link is partitioned.
    pub log_partitions: Intervals,
    /// Times bytes towards node `[to]` are held up (a one-way partition:
    /// the connection stays up, nothing arrives that way until it ends).
    pub one_way: [Intervals; 2],
    /// Times each node is cut off from storage.
    pub storage_partitions: [Intervals; 2],
    /// Times the storage server is down.
    pub storage_outages: Intervals,
    /// Times the connection is dropped.
    pub drops: Vec<u64>,
    /// Execution speed per node, per mille of nominal.
    pub speed_per_mille: [u64; 2],
    /// Largest one-way delay on the log link.
    pub max_delay_ns: u64,
    /// Link corruption probability per chunk, per mille.
    pub corrupt_per_mille: u64,
    /// Times each node is frozen (a stalled host or emulator): it runs
    /// nothing, its released writes wait, then it resumes as it was (a
    /// zombie, DESIGN.md §1.7 fencing).
    pub freezes: [Intervals; 2],
    /// Each node's clock: rate in parts per million of true time, origin.
    pub clocks: [(u64, u64); 2],
    /// When each node's setup (guest build) ends and it joins.
    pub start_at: [u64; 2],
    /// The generation the operator configured for the first join (`None`:
    /// read from the LUN); sometimes stale (DESIGN.md §1.7).
    pub configured_generation: Option<u64>,
    /// The guest powers off when its counter reaches this (both replicas
    /// at the same point: the guest decides it).
    pub exit_counter: Option<u64>,
    /// A slow log link (time per KiB each way; 0: unlimited), and when a
    /// client sends the frame of the largest record over it: crossing
    /// takes two to four failure timeouts, while both nodes are well.
    pub link_ns_per_kib: u64,
    pub big_frame_at: Option<u64>,
}

fn interval(rng: &mut Rng, end: u64, min_len: u64, max_len: u64) -> (u64, u64) {
    let s = rng.range(end / 20, end * 4 / 5);
    (s, s + rng.range(min_len, max_len))
}

impl Faults {
    /// A random schedule for a run of `cfg.duration_ms`.
    pub fn generate(rng: &mut Rng, cfg: &SimConfig) -> Self {
        let end = cfg.duration_ms * 1_000_000;
        let ft = cfg.failure_timeout_ns;
        let mut f = Faults {
            max_delay_ns: rng.range(100_000, 30_000_000),
            corrupt_per_mille: if rng.chance(100) { 5 } else { 0 },
            speed_per_mille: [1000, 1000],
            clocks: [(1_000_000, 0); 2],
            ..Faults::default()
        };
        f.configured_generation = match rng.range(0, 100) {
            0..=2 => Some(0), // stale: the flag says 1
            3..=49 => Some(1),
            _ => None,
        };
        for node in 0..2 {
            if rng.chance(350) {
                let t = rng.range(end / 10, end * 4 / 5);
                f.crash[node] = Some(t);
                if rng.chance(500) {
                    f.restart[node] = Some(t + rng.range(20_000_000, 300_000_000));
                }
            }
            if rng.chance(250) {
                f.speed_per_mille[node] = rng.range(200, 950);
            }
            if rng.chance(200) {
                f.storage_partitions[node].push(interval(rng, end, ft / 2, ft * 4));
            }
        }
        for _ in 0..rng.range(0, 3) {
            if rng.chance(300) {
                f.log_partitions.push(interval(rng, end, ft / 3, ft * 4));
            }
        }
        if rng.chance(150) {
            f.storage_outages.push(interval(rng, end, ft / 2, ft * 4));
        }
        if rng.chance(100) {
            let to = rng.range(0, 2) as usize;
            f.one_way[to].push(interval(rng, end, ft / 3, ft * 4));
        }
        for _ in 0..rng.range(0, 4) {
            f.drops.push(rng.range(0, end));
        }
        for node in 0..2 {
            if rng.chance(150) {
                f.freezes[node].push(interval(rng, end, ft / 2, ft * 4));
            }
            f.clocks[node] = (rng.range(980_000, 1_020_001), rng.range(0, 1 << 40));
            if rng.chance(300) {
                f.start_at[node] = rng.range(0, 2 * ft);
            }
        }
        // Last, so the schedule above stays what it was for each seed.
        if rng.chance(400) {
            // 100 units per ms of guest time at full speed.
            let ms = cfg.duration_ms;
            f.exit_counter = Some(100 * rng.range(ms * 5 / 10, ms * 8 / 10));
        }
        if rng.chance(60) {
            // A MAX_PAYLOAD record (1 MiB) takes 2-4 failure timeouts to
            // cross: the peer is alive all along (issue 15, reproduced
            // in Bochs with dd bs=2M reads under FT at 3.7 Mbit/s).
            f.link_ns_per_kib = rng.range(2 * ft, 4 * ft) / 1024;
            f.big_frame_at = Some(rng.range(end / 10, end / 2));
        }
        f
    }
}

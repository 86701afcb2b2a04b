//! Repair's pre-copy (issue 16 item 1; DESIGN.md §1.9, §5 "new backup
//! with < 1 s guest pause"; seeds/004 FT VMotion): which guest pages the
//! serving node sends in each round while its guest runs, and when it
//! stops the guest to send the rest with the vCPU and devices.
//!
//! Round 0 sends every page. Each later round sends the pages the guest
//! dirtied during the previous one (the driver's dirty tracking: EPT write
//! protection or dirty bits). The guest is stopped when what is left can
//! be sent within the pause budget at the bandwidth the rounds measured,
//! when the dirty set stops shrinking (a guest dirtying memory as fast as
//! the link carries it would never converge: the pause is then what it
//! is, and said), or after the last round allowed. The decision is one
//! function of the numbers the driver reports, so the simulator and the
//! kernel run the same one.

use alloc::vec::Vec;

use crate::state::PAGE;

/// The serving node's pre-copy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreCopyConfig {
    /// The longest guest pause aimed for (DESIGN.md §5: under 1 s).
    pub max_pause_ns: u64,
    /// Rounds after round 0 before the guest is stopped regardless.
    pub max_rounds: u32,
    /// A round whose dirty set is not at least this much smaller (per
    /// mille of the previous) counts as not converging.
    pub min_shrink_per_mille: u64,
}

impl Default for PreCopyConfig {
    fn default() -> Self {
        Self {
            max_pause_ns: 300_000_000,
            max_rounds: 30,
            min_shrink_per_mille: 100,
        }
    }
}

/// What the serving node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these pages with the guest running, as round `round`; report
    /// the pages dirtied meanwhile with [`PreCopy::round_done`].
    Send { round: u32, pages: Vec<u64> },
    /// Stop the guest; send these pages, then the vCPU and the devices,
    /// then the commit. `why` says which limit stopped the pre-copy, and
    /// `expected_pause_ns` what the measured bandwidth promises.
    StopAndCopy {
        round: u32,
        pages: Vec<u64>,
        why: StopReason,
        expected_pause_ns: u64,
    },
}

/// Why the pre-copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// What is left fits the pause budget.
    FitsThePause,
    /// The dirty set stopped shrinking.
    NotConverging,
    /// The last round allowed.
    RoundLimit,
}

/// The pre-copy of one repair.
#[derive(Debug, Clone)]
pub struct PreCopy {
    cfg: PreCopyConfig,
    total_pages: u64,
    round: u32,
    last_sent: u64,
    /// Bytes per second the last round achieved (0: not measured yet).
    bytes_per_s: u64,
    done: bool,
}

impl PreCopy {
    /// A pre-copy of `total_pages` guest pages.
    pub fn new(cfg: PreCopyConfig, total_pages: u64) -> Self {
        Self {
            cfg,
            total_pages,
            round: 0,
            last_sent: total_pages,
            bytes_per_s: 0,
            done: false,
        }
    }

    /// Round 0: every page.
    pub fn start(&mut self) -> Step {
        Step::Send {
            round: 0,
            pages: (0..self.total_pages).collect(),
        }
    }

    /// The round just sent took `elapsed_ns`; the guest dirtied `dirty`
    /// meanwhile (page numbers, any order, duplicates allowed). The next
    /// step; `None` once the stop-and-copy was handed out.
    pub fn round_done(&mut self, elapsed_ns: u64, mut dirty: Vec<u64>) -> Option<Step> {
        if self.done {
            return None;
        }
        dirty.sort_unstable();
        dirty.dedup();
        dirty.retain(|&p| p < self.total_pages);
        let sent_bytes = self.last_sent * PAGE as u64;
        if elapsed_ns > 0 {
            self.bytes_per_s =
                u64::try_from(u128::from(sent_bytes) * 1_000_000_000 / u128::from(elapsed_ns))
                    .unwrap_or(u64::MAX);
        }
        self.round += 1;
        let left = dirty.len() as u64;
        let pause = self.pause_for(left);
        let shrink_enough =
            left * 1000 <= self.last_sent * (1000 - self.cfg.min_shrink_per_mille.min(1000));
        let why = if pause <= self.cfg.max_pause_ns {
            Some(StopReason::FitsThePause)
        } else if self.round > 1 && !shrink_enough {
            Some(StopReason::NotConverging)
        } else if self.round > self.cfg.max_rounds {
            Some(StopReason::RoundLimit)
        } else {
            None
        };
        self.last_sent = left;
        Some(match why {
            Some(why) => {
                self.done = true;
                Step::StopAndCopy {
                    round: self.round,
                    pages: dirty,
                    why,
                    expected_pause_ns: pause,
                }
            }
            None => Step::Send {
                round: self.round,
                pages: dirty,
            },
        })
    }

    /// The time `pages` pages take at the measured bandwidth (unknown
    /// bandwidth: as long as possible).
    fn pause_for(&self, pages: u64) -> u64 {
        if pages == 0 {
            return 0;
        }
        if self.bytes_per_s == 0 {
            return u64::MAX;
        }
        let bytes = u128::from(pages) * PAGE as u128;
        u64::try_from(bytes * 1_000_000_000 / u128::from(self.bytes_per_s)).unwrap_or(u64::MAX)
    }

    /// Rounds handed out so far (round 0 included once started).
    pub fn round(&self) -> u32 {
        self.round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn pages(step: &Step) -> usize {
        match step {
            Step::Send { pages, .. } | Step::StopAndCopy { pages, .. } => pages.len(),
        }
    }

    #[test]
    fn a_quiet_guest_stops_after_one_round_within_the_pause() {
        // 64 MiB at 100 MB/s: round 0 takes ~0.67 s; 50 pages dirtied.
        let mut p = PreCopy::new(PreCopyConfig::default(), 16_384);
        assert_eq!(pages(&p.start()), 16_384);
        let s = p.round_done(671 * MS, (0..50).collect()).unwrap();
        let Step::StopAndCopy {
            round,
            why,
            expected_pause_ns,
            ..
        } = &s
        else {
            panic!("{s:?}");
        };
        assert_eq!((*round, *why, pages(&s)), (1, StopReason::FitsThePause, 50));
        assert!(*expected_pause_ns < 3 * MS, "{expected_pause_ns}");
        assert_eq!(p.round_done(MS, vec![]), None, "done");
    }

    #[test]
    fn a_busy_guest_converges_over_rounds() {
        let mut p = PreCopy::new(PreCopyConfig::default(), 16_384);
        p.start();
        // 8 MB/s: the dirty set halves each round until it fits 0.3 s.
        let mut dirty = 8_000u64;
        let mut sent = 16_384u64;
        loop {
            let elapsed = sent * PAGE as u64 * 1_000_000_000 / 8_000_000;
            match p.round_done(elapsed, (0..dirty).collect()).unwrap() {
                Step::Send { pages, .. } => {
                    sent = pages.len() as u64;
                    dirty /= 2;
                }
                Step::StopAndCopy {
                    why,
                    expected_pause_ns,
                    ..
                } => {
                    assert_eq!(why, StopReason::FitsThePause);
                    assert!(expected_pause_ns <= 300 * MS);
                    break;
                }
            }
        }
        assert!(p.round() >= 3, "rounds: {}", p.round());
    }

    #[test]
    fn a_guest_that_dirties_as_fast_as_the_link_stops_for_not_converging() {
        let mut p = PreCopy::new(PreCopyConfig::default(), 16_384);
        p.start();
        // Slow link (1 MB/s): 10,000 pages dirtied every round.
        let s1 = p.round_done(67_000 * MS, (0..10_000).collect()).unwrap();
        assert!(matches!(s1, Step::Send { round: 1, .. }), "{s1:?}");
        let s2 = p.round_done(41_000 * MS, (0..10_000).collect()).unwrap();
        assert!(
            matches!(
                s2,
                Step::StopAndCopy {
                    why: StopReason::NotConverging,
                    ..
                }
            ),
            "{s2:?}"
        );
    }

    #[test]
    fn the_round_limit_ends_a_slowly_shrinking_pre_copy() {
        let cfg = PreCopyConfig {
            max_rounds: 3,
            min_shrink_per_mille: 1,
            ..PreCopyConfig::default()
        };
        let mut p = PreCopy::new(cfg, 16_384);
        p.start();
        let mut dirty = 15_000u64;
        let mut last = None;
        for _ in 0..10 {
            let s = p.round_done(10_000 * MS, (0..dirty).collect());
            dirty -= 1_000;
            if let Some(Step::StopAndCopy { why, round, .. }) = s {
                last = Some((why, round));
                break;
            }
        }
        assert_eq!(last, Some((StopReason::RoundLimit, 4)));
    }

    #[test]
    fn dirty_lists_are_deduplicated_and_clipped_to_ram() {
        let mut p = PreCopy::new(PreCopyConfig::default(), 100);
        p.start();
        let s = p.round_done(MS, vec![5, 3, 5, 99, 100, 7_000]).unwrap();
        let (Step::Send { pages, .. } | Step::StopAndCopy { pages, .. }) = s;
        assert_eq!(pages, vec![3, 5, 99]);
    }
}

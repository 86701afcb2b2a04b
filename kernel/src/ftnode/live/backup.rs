//! The backup half of the FT node's adapter (DESIGN.md §1.3, §1.5, §1.8):
//! received records through the node to the replay engine, the guest's
//! discarded console lines kept for the seam, waiting for the log, and
//! the go-live sequence the node decided.

use super::*;

impl<N: Nic + 'static> Node<N> {
    /// Backup: received records to the replayer, applied position and
    /// backlog back to the node; the node's timers.
    pub(super) fn feed(&mut self, replayer: &mut Replayer, io: &mut GuestIo) -> Result<(), String> {
        let was_open = replayer.stream_open();
        let end = self.ft.feed(replayer);
        let Some(b) = self.ft.backup() else {
            return self.settle_state();
        };
        self.log_received = b.received();
        let last = b.received().saturating_sub(1);
        match end {
            LogEnd::Complete => {
                if was_open {
                    println!(
                        "ft: backup: the primary ended the session after seq {last}; replaying to the end"
                    );
                }
                // An orderly end: nothing to decide any more.
                return Ok(());
            }
            LogEnd::Ended(why) => {
                return Err(alloc::format!(
                    "backup: the primary said goodbye ({why:?}): halting the guest for good"
                ))
            }
            LogEnd::Open => {}
        }
        if b.goodbye() == Some(GoodbyeReason::StorageLost) && !self.step_down_noted {
            // The node arbitrates on its next tick, at once.
            self.step_down_noted = true;
            println!(
                "ft: backup: the primary stepped down after seq {last}: it lost the shared disk; taking over"
            );
        }
        // The node's timers at most every millisecond: reception is
        // acknowledged at once by `on_bytes` (the output rule waits on it).
        let now_us = self.clock.micros();
        if now_us < self.last_tick_us + 1000 {
            return self.settle_state();
        }
        self.last_tick_us = now_us;
        let before = self.ft.state();
        self.tick(now_us, 0, ExecPoint::default(), Some(io))?;
        if before != NodeState::Draining && self.ft.state() == NodeState::Draining {
            // Nothing more will arrive: stop listening for the primary.
            self.net_abort_log();
            if let Some(b) = self.ft.backup() {
                println!(
                    "ft: backup: replaying the {} entries received ({} applied so far) before going live",
                    b.received(),
                    replayer.applied_seq()
                );
            }
        }
        Ok(())
    }

    /// Backup: keeps the guest's discarded console lines the primary may
    /// not have released (`ft::seam`), for its go-live.
    pub(super) fn keep_discarded(&mut self, lines: &mut Option<Vec<String>>) {
        if let Some(held) = lines.as_mut() {
            for text in held.drain(..) {
                self.next_line += 1;
                let id = line_output_id(self.next_line);
                if let Err(m) = self.ft.output_produced(id, line_digest(&text)) {
                    // The replay ends with it at the next feed.
                    println!("ft: backup: {m}: `{text}`");
                }
                let dropped = self.discarded.dropped;
                self.discarded
                    .keep(self.ft.seam(), id, (self.next_line, text));
                if dropped == 0 && self.discarded.dropped == 1 {
                    println!("ft: backup: warning: more than {KEEP_LINES} console lines not known to be released by the primary; the oldest are dropped (a go-live now may lose some)");
                }
            }
        }
        self.discarded.prune(self.ft.seam());
    }

    pub(super) fn backup_wait(
        &mut self,
        replayer: &mut Replayer,
        io: &mut GuestIo,
    ) -> Result<(), String> {
        loop {
            self.pump(true);
            self.feed(replayer, io)?;
            let won = matches!(self.ft.state(), NodeState::Draining | NodeState::Alone);
            if won || !replayer.must_wait() {
                // Let the acks this feed produced out before the caller
                // goes off to run (or hash) for a while.
                self.pump(true);
                return Ok(());
            }
            self.status(self.last_guest_ns, 0);
        }
    }

    pub(super) fn backup_go_live(
        &mut self,
        replayer: &Replayer,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Option<u64> {
        self.keep_discarded(lines);
        let generation = match &self.golive {
            Some(g) if !self.live => g.generation,
            _ => return None,
        };
        self.live = true;
        let back = io.go_live();
        println!(
            "ft: backup: LIVE under generation {generation}: replayed {} of {} entries received ({} held back: a trailing checkpoint; checkpoints_matched={}); guest time not before {}; the guest runs alone, its outputs are real",
            replayer.applied_seq(),
            self.log_received,
            replayer.remaining(),
            replayer.applied_by_kind[0x0B],
            self.ft.time_floor()
        );
        // Console lines at the seam (DESIGN.md §1.4, §1.8; `ft::seam`):
        // those the primary surely released stay discarded; the others
        // go out now: at least once, a duplicate at the seam rather than
        // a loss.
        for (_, (n, text), why) in self.discarded.take_unreleased(self.ft.seam()) {
            let why = match why {
                Unreleased::MarkerNotReceived => {
                    "its marker never reached the backup, so the primary never released it"
                        .into()
                }
                Unreleased::AckNotSeen {
                    marker_seq,
                    primary_acked,
                } => alloc::format!(
                    "marker seq {marker_seq} acknowledged, but the primary's last record showed acks only up to {primary_acked}: it may not have released it"
                ),
            };
            println!("ft: backup: output #{n} re-emitted ({why})");
            println!("guest: {text}");
        }
        if back.announced {
            println!(
                "ft: backup: announced the guest MAC {} (RARP) so the network finds it here",
                drivers::nic::MacDisplay(kernel::guestio::GUEST_MAC)
            );
        }
        println!(
            "ft: backup: re-issued {} pending disk request(s) the guest was waiting for; dropped {} frame(s) that reached this node while it followed (the log carried the guest's input)",
            back.reissued, back.dropped_frames
        );
        Some(self.ft.time_floor())
    }

    pub(super) fn finish_backup(&mut self, replayer: &Replayer, discarded: u64, verdict: &str) {
        let run_us = self.now_us().saturating_sub(self.start_us);
        println!(
            "ft: pair: backup done: received={} applied={} pending={} outputs discarded={discarded} outputs_checked={} refused_connections={} probes_refused={} log_bytes_received={} run_us={run_us} log_mbit_s={} verdict={}",
            self.log_received,
            replayer.applied_seq(),
            replayer.remaining(),
            self.ft.outputs_matched(),
            self.refusals,
            self.probes_refused,
            self.bytes_recv,
            mbit_per_s(self.bytes_recv, run_us),
            verdict
        );
    }
}

//! The primary half of the FT node's adapter (DESIGN.md §1.1, §1.4): the
//! recorder's entries and the guest's outputs to the node, released
//! outputs to the world, the node's timers, throttle and disk judgement,
//! and the end of the run.

use super::*;

impl<N: Nic + 'static> Node<N> {
    /// Primary, at the top of a run-loop iteration (`Live::poll`): new
    /// entries and outputs to the node, released outputs out, the node's
    /// timers every millisecond, the disk judged, the throttle waited out.
    /// `Ok(false)`: the timers were not due (nothing more this time).
    pub(super) fn poll_primary(
        &mut self,
        tape: &mut Tape,
        at: ExecPoint,
        guest_ns: u64,
        lines: &mut Option<Vec<String>>,
        io: &mut GuestIo,
    ) -> Result<bool, String> {
        self.ship_recorded(tape, guest_ns)?;
        let now = self.now_us();
        let mut fx = Effects::new();
        if let (Some(held), Some(p)) = (lines.as_mut(), self.ft.primary_mut()) {
            for text in held.drain(..) {
                self.next_line += 1;
                let id = line_output_id(self.next_line);
                let more = p
                    .output(now * 1000, guest_ns, at, id, line_digest(&text))
                    .map_err(|e| alloc::format!("primary: cannot log an output: {e}"))?;
                self.gate
                    .hold(id, (self.next_line, text), p.last_seq(), now);
                fx.extend(more);
            }
        }
        if let Some(p) = self.ft.primary_mut() {
            io.set_gated(true);
            for item in io.take_gated() {
                self.next_io += 1;
                let id = io_output_id(self.next_io);
                let more = p
                    .output(now * 1000, guest_ns, at, id, 0)
                    .map_err(|e| alloc::format!("primary: cannot log an output: {e}"))?;
                self.io_gate.hold(id, item, p.last_seq(), now);
                fx.extend(more);
            }
        }
        self.apply(fx);
        self.emit_ready(io);
        // Timers (heartbeat, lag/throttle, failure) every ms: the
        // lag check walks the unapplied window.
        if now < self.last_tick_us + 1000 {
            self.pump(false);
            return Ok(false);
        }
        self.last_tick_us = now;
        self.primary_tick(now * 1000, guest_ns, at, Some(io))?;
        self.pump(false);
        self.judge_disk(now, io)?;
        // A lagging backup slows the guest down: wait for acks
        // while the node says so (its one throttle rule).
        let mut waited = false;
        while self.ft.primary().is_some_and(|p| p.throttled()) {
            if !waited {
                waited = true;
                self.throttles += 1;
            }
            self.pump(true);
            // The disk's completions are collected (delivered at the next
            // input point): the wait is not a stalled disk.
            io.poll_backends();
            self.primary_tick(self.now_us() * 1000, guest_ns, at, Some(io))?;
            // Outputs the backup acknowledged meanwhile leave now, not when
            // the throttle ends (issue 17).
            self.emit_ready(io);
        }
        self.emit_ready(io);
        self.status(guest_ns, 0);
        Ok(true)
    }

    /// Primary: hands new recorder entries to the state machine.
    pub(super) fn ship_recorded(&mut self, tape: &mut Tape, guest_ns: u64) -> Result<(), String> {
        let (Tape::Record(r), Some(_)) = (tape, self.ft.primary()) else {
            return Ok(());
        };
        // The recorder forgets what it hands over (bounded memory): the
        // node keeps what the backup has not applied.
        let bytes = r.take();
        let mut rest = &bytes[..];
        let mut fx = Effects::new();
        while !rest.is_empty() {
            let (rec, used) = decode_record(rest)
                .map_err(|e| alloc::format!("the recorder's own log does not decode: {e}"))?;
            rest = &rest[used..];
            let now = self.now_us() * 1000;
            let Some(p) = self.ft.primary_mut() else {
                unreachable!()
            };
            let (_, more) = p
                .record(now, guest_ns, rec.entry)
                .map_err(|e| alloc::format!("primary: cannot log an entry: {e}"))?;
            fx.extend(more);
        }
        self.apply(fx);
        Ok(())
    }

    /// Primary: the node's timers at `now_ns`; a backup found dead and a
    /// won test-and-set mean the guest runs on alone (DESIGN.md §1.7):
    /// the held outputs are released (the node says so) and new ones
    /// leave at once. `Err`: lost, fenced or no storage at all (halt).
    pub(super) fn primary_tick(
        &mut self,
        now_ns: u64,
        guest_ns: u64,
        at: ExecPoint,
        io: Option<&mut GuestIo>,
    ) -> Result<(), String> {
        let was_alone = self.ft.state() == NodeState::Alone;
        self.tick(now_ns / 1000, guest_ns, at, io)?;
        if !was_alone && self.ft.state() == NodeState::Alone {
            self.net_abort_log();
            println!(
                "ft: primary: ALONE under generation {}: the backup is gone; {} held output(s) released, new outputs leave at once (no backup until one is added by state transfer)",
                self.ft.generation(),
                self.ready.len() + self.gate.released as usize
            );
        }
        Ok(())
    }

    /// What the node's state means for the hypervisor: a halt stops the
    /// guest; a node without any shared LUN cannot arbitrate at all.
    /// Primary: shows the node how the guest disk progresses; a paired
    /// primary whose disk stopped answering steps down (its Goodbye is
    /// flushed for up to 200 ms) and halts.
    pub(super) fn judge_disk(&mut self, now_us: u64, io: &GuestIo) -> Result<(), String> {
        let owed = io.disk_in_flight();
        let since = self.disk_stall.observe(now_us, owed, io.stats().disk_done);
        let fx = self.ft.on_disk(now_us * 1000, since.map(|t| t * 1000));
        if fx.is_empty() {
            return Ok(());
        }
        println!(
            "ft: primary: the shared disk made no progress for {} ms with {owed} request(s) owed (step-down after {} ms, twice the failure timeout): stepping down for the backup, which takes over (Goodbye StorageLost)",
            now_us.saturating_sub(since.unwrap_or(now_us)) / 1000,
            self.ncfg.disk_stall_ns / 1_000_000
        );
        self.apply(fx);
        let until = self.now_us() + 200_000;
        while self.out_off < self.outbox.len() && self.now_us() < until {
            self.pump(true);
        }
        self.settle_state()
    }

    /// Primary at the end: every output still held leaves (the backup
    /// acknowledged the whole log up to `acked`, or there is no backup).
    pub(super) fn release_all(&mut self, acked: u64, io: &mut GuestIo) {
        let now = self.now_us();
        for n in 1..=self.next_line {
            if let Some(r) = self.gate.release(line_output_id(n), acked, now) {
                let (n, text) = r.item;
                println!("guest: {text}");
                println!(
                    "ft: output #{n} released: marker seq {} acked {} held {} us",
                    r.marker_seq, r.acked, r.held_us
                );
            }
        }
        for n in 1..=self.next_io {
            if let Some(r) = self.io_gate.release(io_output_id(n), acked, now) {
                self.ready.push(r.item);
            }
        }
        self.emit_ready(io);
    }

    /// Primary: lets the outputs the backup acknowledged leave, in order.
    pub(super) fn emit_ready(&mut self, io: &mut GuestIo) {
        for (slot, out) in self.ready.drain(..) {
            io.emit(slot, out);
        }
    }

    pub(super) fn finish_primary(
        &mut self,
        recorder: &mut Recorder,
        lines: &mut Option<Vec<String>>,
        guest_ns: u64,
        io: &mut GuestIo,
    ) -> bool {
        if self.ft.state() == NodeState::Alone {
            // No backup: everything held went out when the flag was won,
            // and everything since at once; the last lines go out now.
            let now = self.now_us();
            if let Some(held) = lines.as_mut() {
                for text in held.drain(..) {
                    self.next_line += 1;
                    let id = line_output_id(self.next_line);
                    self.gate.hold(id, (self.next_line, text), 0, now);
                }
            }
            self.release_all(0, io);
            self.emit_ready(io);
            self.net.borrow_mut().poll();
            println!(
                "ft: pair: primary done: alone (the backup was lost); outputs released={} io_released={}",
                self.gate.released, self.io_gate.released
            );
            return true;
        }
        // Ship the rest of the log, the final checkpoint last.
        let mut fx = Effects::new();
        let bytes = recorder.take();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Ok((rec, used)) = decode_record(rest) else {
                println!("ft: primary: error: the recorder's own log does not decode");
                return false;
            };
            rest = &rest[used..];
            let now = self.now_us() * 1000;
            let Some(p) = self.ft.primary_mut() else {
                return false;
            };
            match p.record(now, guest_ns, rec.entry) {
                Ok((_, more)) => fx.extend(more),
                Err(e) => {
                    println!("ft: primary: error: cannot log the final entries: {e}");
                    return false;
                }
            }
        }
        self.apply(fx);
        // The node closes the log (the final checkpoint is its last
        // entry) and judges the end: acknowledged, alone, or not in time.
        let now = self.now_us();
        self.ft.end_log(now * 1000);
        let Some(p) = self.ft.primary() else {
            return false;
        };
        let last = p.last_seq();
        // Lines flushed after the guest's last exit: covered by the final
        // checkpoint's record.
        let now = self.now_us();
        if let Some(held) = lines.as_mut() {
            for text in held.drain(..) {
                self.next_line += 1;
                let id = line_output_id(self.next_line);
                self.gate.hold(id, (self.next_line, text), last, now);
            }
        }
        // Wait for the backup's ack of the whole log; the node keeps
        // watching it: a backup that dies now is a failure like any other
        // (arbitrate; won: the rest goes out alone; lost: halt).
        loop {
            self.pump(true);
            let now = self.now_us();
            if now >= self.last_tick_us + 1000 {
                self.last_tick_us = now;
                if let Err(why) = self.primary_tick(now * 1000, guest_ns, self.last_at, Some(io)) {
                    println!("ft: {why}");
                    return false;
                }
            }
            match self.ft.end_state(now * 1000) {
                SessionEnd::Waiting => {}
                SessionEnd::Acknowledged => break,
                SessionEnd::Alone => {
                    self.release_all(0, io);
                    println!(
                        "ft: pair: primary done: alone (the backup was lost at the end); outputs released={} io_released={}",
                        self.gate.released, self.io_gate.released
                    );
                    return true;
                }
                SessionEnd::Unacknowledged { acked, last } => {
                    println!(
                        "ft: primary: error: the backup did not acknowledge the end of the log (acked {acked} of {last})"
                    );
                    return false;
                }
                SessionEnd::Halted => return false,
            }
        }
        // Everything acknowledged: the lines without a marker go out too.
        self.release_all(last, io);
        let fx = self.ft.shutdown();
        self.apply(fx);
        io.set_gated(false);
        let deadline = self.now_us() + 5_000_000;
        while self.now_us() < deadline {
            self.pump(true);
            let mut net = self.net.borrow_mut();
            let s = net.tcp(self.sock);
            if self.outbox.is_empty() && s.send_queue() == 0 {
                s.close();
                break;
            }
        }
        // Let the FIN out.
        let until = self.now_us() + 200_000;
        while self.now_us() < until {
            self.net.borrow_mut().poll();
        }
        let Some(p) = self.ft.primary() else {
            return false;
        };
        let run_us = self.now_us().saturating_sub(self.start_us);
        let guest_us = (self.last_guest_ns.max(guest_ns) - self.first_guest_ns.unwrap_or(0)) / 1000;
        println!(
            "ft: pair: primary done: entries={} log_bytes={} acked={} applied={} outputs held={} released={} violations={} hold_max_us={} hold_mean_us={} io_outputs held={} released={} violations={} hold_max_us={} hold_mean_us={} lag_mean_us={} lag_max_us={} lag_samples={} throttled={} run_us={run_us} guest_us={guest_us} log_mbit_s={} log_mbit_per_guest_s={}",
            p.last_seq(),
            self.bytes_sent,
            p.acked(),
            p.applied(),
            self.gate.held_total,
            self.gate.released,
            self.gate.violations,
            self.gate.max_hold_us,
            self.gate.sum_hold_us.checked_div(self.gate.released).unwrap_or(0),
            self.io_gate.held_total,
            self.io_gate.released,
            self.io_gate.violations,
            self.io_gate.max_hold_us,
            self.io_gate.sum_hold_us.checked_div(self.io_gate.released).unwrap_or(0),
            self.lag.mean_us(),
            self.lag.max_us,
            self.lag.samples,
            self.throttles,
            mbit_per_s(self.bytes_sent, run_us),
            mbit_per_s(self.bytes_sent, guest_us),
        );
        self.gate.violations == 0 && self.io_gate.violations == 0
    }
}

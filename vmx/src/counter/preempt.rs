//! The `preempt` backend: exact guest instruction counts in Bochs 3.0 from
//! its instruction-driven clock, the VMX-preemption timer (SDM Vol. 3C
//! §26.5.1, §27.7.4) to stop near a point and the monitor trap flag (SDM
//! Vol. 3C §26.5.2) to land on it (DESIGN.md §3, `notes/bochs.md`).
//!
//! ## What Bochs does (measured against MTF, explained by its source)
//!
//! Bochs has one clock, `time_ticks`: one tick per retired instruction
//! (host and guest alike) and per `rep` iteration. The TSC *and* the
//! preemption timer read it. But with handler chaining
//! (`--enable-all-optimizations`) the clock is only brought up to date at
//! *sync points*: the end of every trace (≤ 32 instructions, at every taken
//! branch), every 31 `rep` iterations, and the VM exit itself. Hence:
//!
//! * **Timer expiry** is seen at the first sync point at or after the
//!   deadline: the exit comes 0..~40 instructions *late* (the rest of the
//!   trace, or of a 31-iteration `rep` batch), and the saved timer value
//!   ("save VMX-preemption timer value", exit control bit 22) is then 0 —
//!   the overrun is lost. This is why "armed − 1/−2/−3" never matched.
//! * **Instruction exits** (CPUID, I/O, RDTSC, HLT, ...) happen mid-trace:
//!   the saved timer misses the guest instructions of the current trace.
//! * **The VM exit** syncs the clock before HOST_RIP runs, and counts one
//!   tick of its own; VMRESUME is the first instruction of its trace (it
//!   follows a taken `jne`), so the entry counts one tick ([`ENTRY_TICK`]).
//!   The very first entry (VMLAUNCH, reached by fall-through) counts the
//!   rest of its trace too: the "27 units for one MTF step" seen once per
//!   boot was this, not a `rep` instruction.
//! * **`rep` string instructions** tick once per iteration, in the fast
//!   (batched) path too; an interrupted `rep` keeps RIP and leaves RCX
//!   partly counted down. Under MTF, Bochs signals the MTF event at entry,
//!   so a `rep` runs exactly *one iteration* per single step. Both count an
//!   iteration as one unit, and `(counter, RIP, RCX)` names the iteration
//!   (DESIGN.md §1.2).
//!
//! ## The rule encoded here
//!
//! The world switch (`kernel/src/vmm/switch.rs`) reads the host TSC by a
//! fixed instruction sequence just before VMRESUME and as the first
//! instructions at HOST_RIP. Their difference (the *span*) is
//! `guest units + OVERHEAD`, where the overhead is a constant of the host
//! code (learned, then checked, while calibrating). So **every exit's
//! count is exact** (`span − overhead`), whatever the trace position, and
//! whatever ended the entry. Landing on a point `remaining` units ahead:
//! the timer is armed with `remaining − margin + ENTRY_TICK`
//! ([`timer_for_landing`]): it expires at least `remaining − margin` and,
//! because the lateness is bounded by the margin, at most `remaining`
//! units ahead; MTF single-steps the rest. A landing that overshoots is
//! refused (never a silent wrong point).
//!
//! On real hardware the timer and TSC follow time, not instructions: the
//! first [`Preempt::new`]`(calibrate)` units are single-stepped and every
//! step's span must equal the MTF count plus one constant; the saved timer
//! must move by exactly the MTF count (plus the entry tick). One mismatch
//! refuses the backend.
use super::{mtf_delta, set_mtf, ExecCounter, Measure, Plan, Refusal, REASON_PREEMPT};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;
use alloc::format;
use alloc::string::String;

/// Smallest timer value that lets the guest run (1 expires at the entry's
/// own tick, before any guest instruction).
pub const MIN_TIMER: u64 = 2;
/// Timer units every VM entry consumes besides the guest's instructions.
pub const ENTRY_TICK: u64 = 1;
/// Units a landing leaves to MTF: more than the largest lateness of a
/// timer exit (a trace is ≤ 32 instructions; `rep` syncs every 31
/// iterations and its batched path may follow a trace's unsynced units).
pub const LAND_MARGIN: u64 = 96;
/// Timer value armed while single-stepping (never reached).
pub const STEP_TIMER: u64 = 1_000_000;
/// The timer field is 32 bits wide.
const MAX_TIMER: u64 = u32::MAX as u64;

/// The timer value that stops a landing `remaining` units ahead at most
/// `margin` units early, or `None` when the rest must be single-stepped.
/// Timer `N` expires once the clock reaches entry + N; the entry itself is
/// [`ENTRY_TICK`], so `N − ENTRY_TICK` guest units have retired by then.
pub fn timer_for_landing(remaining: u64, margin: u64) -> Option<u64> {
    let run = remaining.checked_sub(margin).filter(|r| *r > 0)?;
    Some(run.saturating_add(ENTRY_TICK).clamp(MIN_TIMER, MAX_TIMER))
}

/// Counters of one run, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Entries that ran under the timer alone.
    pub timer_entries: u64,
    /// Units counted by TSC spans (timer entries).
    pub timer_units: u64,
    /// Single steps (calibration and landings).
    pub steps: u64,
    /// Timer expiries and how late the latest one was, at most.
    pub expiries: u64,
    pub max_late: u64,
}

pub struct Preempt {
    count: u64,
    armed: u64,
    stepping: bool,
    injected: bool,
    calibrate_until: u64,
    measure: Measure,
    /// Host TSC span of the entry that just ended (`ExecCounter::stamps`).
    span: Option<u64>,
    /// Span of a round trip without guest units (learned).
    overhead: Option<u64>,
    entries: u64,
    /// Absolute count a landing must not pass.
    limit: Option<u64>,
    margin: u64,
    stats: Stats,
}

impl Preempt {
    /// A counter that single-steps and cross-checks the first `calibrate`
    /// guest units before it trusts the timer and the TSC spans.
    pub fn new(calibrate: u64) -> Preempt {
        Preempt::with_margin(calibrate, LAND_MARGIN)
    }

    pub fn with_margin(calibrate: u64, margin: u64) -> Preempt {
        Preempt {
            count: 0,
            armed: 0,
            stepping: false,
            injected: false,
            calibrate_until: calibrate,
            measure: Measure::default(),
            span: None,
            overhead: None,
            entries: 0,
            limit: None,
            margin,
            stats: Stats::default(),
        }
    }

    fn calibrating(&self) -> bool {
        self.count < self.calibrate_until || self.overhead.is_none()
    }

    pub fn overhead(&self) -> Option<u64> {
        self.overhead
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn refuse(&self, reason: String) -> Refusal {
        Refusal {
            backend: "preempt",
            reason,
        }
    }
}

impl ExecCounter for Preempt {
    fn name(&self) -> &'static str {
        "preempt"
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn resume_at(&mut self, count: u64) {
        let owed = self.calibrate_until.saturating_sub(self.count);
        self.count = count;
        self.calibrate_until = count.saturating_add(owed);
        self.limit = None;
    }
    fn arm(&mut self, vmcs: &mut dyn VmcsAccess, plan: Plan, injecting: bool) -> Result<(), Error> {
        let (timer, step, limit) = if self.calibrating() {
            (STEP_TIMER, true, None)
        } else {
            match plan {
                Plan::Run { slice } => (slice.clamp(MIN_TIMER, MAX_TIMER), false, None),
                Plan::Land { remaining } => match timer_for_landing(remaining, self.margin) {
                    Some(t) => (t, false, Some(self.count + remaining)),
                    None => (STEP_TIMER, true, None),
                },
            }
        };
        set_mtf(vmcs, step)?;
        vmcs.write(Field::PreemptionTimerValue, timer)?;
        self.armed = timer;
        self.stepping = step;
        self.injected = injecting;
        self.limit = limit;
        self.span = None;
        Ok(())
    }
    fn stamps(&mut self, span: u64) {
        self.span = Some(span);
    }
    fn exited(&mut self, vmcs: &mut dyn VmcsAccess, reason: u16) -> Result<(), Refusal> {
        self.entries += 1;
        let first = self.entries == 1;
        let left = vmcs.get(Field::PreemptionTimerValue);
        let Some(ticked) = self.armed.checked_sub(left) else {
            return Err(self.refuse(format!(
                "the saved VMX-preemption timer grew ({} armed, {left} saved)",
                self.armed
            )));
        };
        let Some(span) = self.span.take() else {
            return Err(self.refuse("no host TSC stamps for this entry".into()));
        };
        if self.stepping {
            self.stats.steps += 1;
            let mtf = mtf_delta(reason, self.injected);
            let timer = ticked.saturating_sub(ENTRY_TICK);
            if self.calibrating() {
                self.measure.add(reason, self.injected, timer, mtf);
            }
            // The first entry (VMLAUNCH) runs a different host path.
            if !first {
                let overhead = span.checked_sub(mtf);
                match (self.overhead, overhead) {
                    (None, Some(o)) => self.overhead = Some(o),
                    (Some(o), Some(now)) if o == now => {}
                    _ => {
                        return Err(self.refuse(format!(
                            "the host TSC is not an instruction counter on this CPU: at \
                             instruction {} a single step (MTF count {mtf}, exit reason \
                             {reason}) spanned {span} TSC units, overhead {:?}",
                            self.count, self.overhead
                        )))
                    }
                }
                if timer != mtf && self.count < self.calibrate_until {
                    return Err(self.refuse(format!(
                        "the VMX-preemption timer is not an exact guest instruction counter \
                         on this CPU: at instruction {} an entry that MTF counts as {mtf} \
                         instruction(s) moved the timer by {timer} (exit reason {reason}, \
                         event injected: {})",
                        self.count, self.injected
                    )));
                }
            }
            self.count += mtf;
        } else {
            let overhead = self.overhead.expect("timer entries only after calibration");
            let Some(units) = span.checked_sub(overhead) else {
                return Err(self.refuse(format!(
                    "an entry spanned {span} host TSC units, less than the round trip ({overhead})"
                )));
            };
            if reason == REASON_PREEMPT {
                self.stats.expiries += 1;
                let due = self.armed - ENTRY_TICK;
                self.stats.max_late = self.stats.max_late.max(units.saturating_sub(due));
            }
            self.stats.timer_entries += 1;
            self.stats.timer_units += units;
            self.count += units;
            if let Some(limit) = self.limit.take() {
                if self.count > limit {
                    return Err(self.refuse(format!(
                        "a landing overshot its point by {} unit(s) (margin {}): the timer \
                         expired later than the margin allows",
                        self.count - limit,
                        self.margin
                    )));
                }
            }
        }
        Ok(())
    }
    fn emulated(&mut self) {
        self.count += 1;
    }
    fn measure(&self) -> Option<&Measure> {
        Some(&self.measure)
    }
    fn stats(&self) -> Option<String> {
        let s = &self.stats;
        Some(format!(
            "round-trip overhead {:?} TSC units; {} timer entries counted {} units; {} single steps; {} timer expiries, latest {} unit(s) late (margin {})",
            self.overhead, s.timer_entries, s.timer_units, s.steps, s.expiries, s.max_late, self.margin
        ))
    }
    fn describe(&self) -> String {
        format!(
            "preempt (Bochs clock: host TSC spans count guest instructions, the VMX-preemption timer stops {} short, MTF lands; first {} instructions single-stepped and cross-checked)",
            self.margin, self.calibrate_until
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PROC_MTF, REASON_MTF};
    use super::*;
    use crate::vmcs::FakeVmcs;

    /// Round-trip overhead of the fake host path.
    const O: u64 = 40;

    fn mtf_on(v: &FakeVmcs) -> bool {
        v.get(Field::ProcBasedControls) & PROC_MTF != 0
    }

    /// One entry: the guest retires `units`, the exit has `reason`; the
    /// saved timer and the TSC span follow Bochs's rules.
    fn entry(c: &mut Preempt, v: &mut FakeVmcs, units: u64, reason: u16) -> Result<(), Refusal> {
        let armed = v.get(Field::PreemptionTimerValue);
        v.write(
            Field::PreemptionTimerValue,
            armed.saturating_sub(units + ENTRY_TICK),
        )
        .unwrap();
        c.stamps(O + units);
        c.exited(v, reason)
    }

    /// Calibrated counter: two single steps (the first is the launch).
    fn calibrated(margin: u64) -> (Preempt, FakeVmcs) {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::with_margin(2, margin);
        for _ in 0..2 {
            c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
            assert!(mtf_on(&v));
            entry(&mut c, &mut v, 1, REASON_MTF).unwrap();
        }
        assert_eq!((c.count(), c.overhead()), (2, Some(O)));
        (c, v)
    }

    #[test]
    fn calibration_learns_the_overhead_then_counts_spans() {
        let (mut c, mut v) = calibrated(LAND_MARGIN);
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        assert!(!mtf_on(&v));
        assert_eq!(v.get(Field::PreemptionTimerValue), 1000);
        // An I/O exit after 600 instructions, 17 of them unsynced in Bochs:
        // the saved timer says 583, the span says 600 (the truth).
        v.write(Field::PreemptionTimerValue, 1000 - 583 - ENTRY_TICK)
            .unwrap();
        c.stamps(O + 600);
        c.exited(&mut v, 30).unwrap();
        c.emulated();
        assert_eq!(c.count(), 2 + 600 + 1);
        // The timer expires 23 units late: saved value 0, span exact.
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.stamps(O + 999 + 23);
        c.exited(&mut v, REASON_PREEMPT).unwrap();
        assert_eq!(c.count(), 603 + 1022);
        assert_eq!((c.stats().expiries, c.stats().max_late), (1, 23));
    }

    /// Issue 16: a repair's joining node counts on from the serving node's
    /// count at the commit; a calibration still owed keeps its length.
    #[test]
    fn resume_at_counts_on_from_the_transferred_count() {
        let (mut c, mut v) = calibrated(LAND_MARGIN);
        c.resume_at(1_000_000);
        assert_eq!(c.count(), 1_000_000);
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.stamps(O + 500);
        c.exited(&mut v, 30).unwrap();
        assert_eq!(c.count(), 1_000_500);
        // Uncalibrated: the single steps owed move with the count.
        let mut fresh = Preempt::new(10);
        fresh.resume_at(5_000);
        assert!(fresh.calibrating());
        assert_eq!(fresh.calibrate_until, 5_010);
    }

    #[test]
    fn the_launch_entry_is_not_a_sample() {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::new(10);
        // VMLAUNCH: 26 host instructions of its trace land in guest time.
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 28)
            .unwrap();
        c.stamps(O + 26 + 1);
        c.exited(&mut v, REASON_MTF).unwrap();
        assert_eq!((c.count(), c.overhead()), (1, None));
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        entry(&mut c, &mut v, 1, REASON_MTF).unwrap();
        assert_eq!(c.overhead(), Some(O));
    }

    fn stepping_counter() -> (Preempt, FakeVmcs) {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::with_margin(100, LAND_MARGIN);
        for _ in 0..2 {
            c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
            entry(&mut c, &mut v, 1, REASON_MTF).unwrap();
        }
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        (c, v)
    }

    #[test]
    fn a_time_driven_timer_or_tsc_is_refused() {
        // real hardware: a CPUID exit (nothing retired) took 300 TSC units
        let (mut c, mut v) = stepping_counter();
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 1)
            .unwrap();
        c.stamps(O + 300);
        let e = c.exited(&mut v, 10).unwrap_err();
        assert!(e.reason.contains("not an instruction counter"), "{e}");
        // the TSC agrees but the timer moved by time: refused too
        let (mut c, mut v) = stepping_counter();
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 300)
            .unwrap();
        c.stamps(O);
        let e = c.exited(&mut v, 10).unwrap_err();
        assert!(e.reason.contains("not an exact"), "{e}");
    }

    #[test]
    fn landing_arithmetic() {
        assert_eq!(timer_for_landing(1000, 96), Some(904 + ENTRY_TICK));
        assert_eq!(timer_for_landing(97, 96), Some(MIN_TIMER));
        assert_eq!(timer_for_landing(96, 96), None);
        assert_eq!(timer_for_landing(5, 96), None);
        assert_eq!(timer_for_landing(u64::MAX, 0), Some(MAX_TIMER));
        let (mut c, mut v) = calibrated(8);
        // 100 ahead: the timer for 92 (+ the entry tick), then MTF
        c.arm(&mut v, Plan::Land { remaining: 100 }, false).unwrap();
        assert!(!mtf_on(&v));
        assert_eq!(v.get(Field::PreemptionTimerValue), 93);
        // expired 5 late: 97 retired, 3 to step
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.stamps(O + 97);
        c.exited(&mut v, REASON_PREEMPT).unwrap();
        assert_eq!(c.count(), 99);
        c.arm(&mut v, Plan::Land { remaining: 3 }, false).unwrap();
        assert!(mtf_on(&v));
        for _ in 0..3 {
            entry(&mut c, &mut v, 1, REASON_MTF).unwrap();
            c.arm(&mut v, Plan::Land { remaining: 3 }, false).unwrap();
        }
        assert_eq!(c.count(), 102);
        // slices are clamped into the useful range
        c.arm(&mut v, Plan::Run { slice: 1 }, false).unwrap();
        assert_eq!(v.get(Field::PreemptionTimerValue), MIN_TIMER);
        c.arm(&mut v, Plan::Run { slice: u64::MAX }, false).unwrap();
        assert_eq!(v.get(Field::PreemptionTimerValue), MAX_TIMER);
    }

    #[test]
    fn an_overshooting_landing_is_refused() {
        let (mut c, mut v) = calibrated(8);
        c.arm(&mut v, Plan::Land { remaining: 100 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.stamps(O + 101);
        let e = c.exited(&mut v, REASON_PREEMPT).unwrap_err();
        assert!(e.reason.contains("overshot its point by 1"), "{e}");
    }

    #[test]
    fn rep_iterations_are_units_and_rcx_names_them() {
        // A `rep stosb` with RCX=50 at RIP 0x1000, reached at count 2.
        // Under the timer the clock ticks once per iteration; an expiry in
        // the middle leaves RIP at the `rep` and RCX partly counted down.
        let (mut c, mut v) = calibrated(8);
        c.arm(&mut v, Plan::Run { slice: 21 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.stamps(O + 20); // 20 iterations: RCX 50 -> 30
        c.exited(&mut v, REASON_PREEMPT).unwrap();
        let point = (c.count(), 0x1000u64, 30u64);
        assert_eq!(point, (22, 0x1000, 30));
        // Under MTF, Bochs runs one iteration per step: the same point is
        // reached after 20 steps, so both backends name (22, 0x1000, 30).
        let mut m = super::super::mtf::Mtf::new(false);
        let mut w = FakeVmcs::default();
        for _ in 0..22 {
            m.arm(&mut w, Plan::Run { slice: 1 }, false).unwrap();
            m.exited(&mut w, REASON_MTF).unwrap();
        }
        assert_eq!(m.count(), point.0);
    }

    #[test]
    fn an_interrupt_due_before_an_exiting_instruction_and_hlt() {
        // Landing 1 ahead where the next instruction is OUT: the single
        // step exits with reason 30 (nothing retired), the hypervisor
        // emulates it (+1), and the point is reached with no MTF exit.
        let (mut c, mut v) = calibrated(8);
        c.arm(&mut v, Plan::Land { remaining: 1 }, false).unwrap();
        assert!(mtf_on(&v));
        entry(&mut c, &mut v, 0, 30).unwrap();
        c.emulated();
        assert_eq!(c.count(), 3);
        // The injected interrupt's entry: delivery retires nothing; with
        // MTF the exit comes before the handler's first instruction.
        c.arm(&mut v, Plan::Land { remaining: 1 }, true).unwrap();
        entry(&mut c, &mut v, 0, REASON_MTF).unwrap();
        assert_eq!(c.count(), 3);
        // HLT exits (reason 12) and is emulated: one unit, under the timer
        c.arm(&mut v, Plan::Run { slice: 500 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 500 - 7).unwrap();
        c.stamps(O + 10);
        c.exited(&mut v, 12).unwrap();
        c.emulated();
        assert_eq!(c.count(), 3 + 10 + 1);
    }

    #[test]
    fn missing_stamps_or_a_growing_timer_are_refused() {
        let (mut c, mut v) = calibrated(8);
        c.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 11).unwrap();
        c.stamps(O);
        assert!(c.exited(&mut v, 52).is_err());
        c.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 5).unwrap();
        assert!(c.exited(&mut v, 52).unwrap_err().reason.contains("stamps"));
        c.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        c.stamps(O - 1);
        assert!(c.exited(&mut v, 52).is_err());
    }
}

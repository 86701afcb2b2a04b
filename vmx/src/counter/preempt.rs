//! The `preempt` backend: the VMX-preemption timer (SDM Vol. 3C §26.5.1) as
//! a guest instruction counter. Bochs ties the timer to its emulated
//! instruction count: armed with N ≥ 2 it exits after exactly N guest
//! instructions (`notes/bochs.md`). On real hardware it follows the TSC and
//! is *not* a counter, so the backend proves itself before it is trusted:
//! for the first [`Preempt::new`]`(calibrate)` instructions every entry is a
//! monitor-trap-flag single step (SDM §26.5.2) and the timer's movement is
//! compared with the MTF count; one disagreement refuses the backend.
//!
//! Counting: exit control bit 22 ("save VMX-preemption timer value") stores
//! the remaining value on every exit, so `armed - saved` units ran, whatever
//! the exit reason. Measured in Bochs 3.0 against MTF (`replay-timer-mtf`):
//! every entry consumes one unit more than the instructions it retired
//! ([`ENTRY_TICK`]: the VMRESUME's own tick lands in guest time), an exiting
//! instruction (CPUID, I/O, RDTSC, HLT, ...) and event delivery consume none,
//! and a `rep` string instruction consumes a *run-dependent* number of units
//! (27 in one run, 1 in the next for the same `rep stos`: Bochs's repeat
//! speed-ups), while MTF steps it as one instruction. Single steps are
//! therefore counted by MTF, timer stretches by the timer; a `rep` string
//! instruction executed under the timer is a known source of inexactness
//! (the replay detects it as a divergence, it never goes unnoticed). Landing on a point `remaining` instructions ahead: the timer
//! for `remaining - LAND_MARGIN` instructions (armed value ≥ [`MIN_TIMER`]),
//! then MTF single-steps for the rest (DESIGN.md §3).
use super::{mtf_delta, set_mtf, ExecCounter, Measure, Plan, Refusal};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;
use alloc::format;
use alloc::string::String;

/// Smallest timer value that is exact in Bochs 3.0 (N ≥ 2).
pub const MIN_TIMER: u64 = 2;
/// Timer units every VM entry consumes besides the guest's instructions.
pub const ENTRY_TICK: u64 = 1;
/// Instructions single-stepped at the end of every landing.
pub const LAND_MARGIN: u64 = 1;
/// Timer value armed while single-stepping (never reached).
pub const STEP_TIMER: u64 = 1_000_000;
/// The timer field is 32 bits wide.
const MAX_TIMER: u64 = u32::MAX as u64;

pub struct Preempt {
    count: u64,
    armed: u64,
    stepping: bool,
    injected: bool,
    calibrate_until: u64,
    measure: Measure,
}

impl Preempt {
    /// A counter that single-steps and cross-checks the first `calibrate`
    /// guest instructions before it trusts the timer alone.
    pub fn new(calibrate: u64) -> Preempt {
        Preempt {
            count: 0,
            armed: 0,
            stepping: false,
            injected: false,
            calibrate_until: calibrate,
            measure: Measure::default(),
        }
    }

    fn calibrating(&self) -> bool {
        self.count < self.calibrate_until
    }
}

impl ExecCounter for Preempt {
    fn name(&self) -> &'static str {
        "preempt"
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn arm(&mut self, vmcs: &mut dyn VmcsAccess, plan: Plan, injecting: bool) -> Result<(), Error> {
        let (timer, step) = if self.calibrating() {
            (STEP_TIMER, true)
        } else {
            match plan {
                Plan::Run { slice } => (slice.clamp(MIN_TIMER, MAX_TIMER), false),
                Plan::Land { remaining } if remaining - LAND_MARGIN + ENTRY_TICK >= MIN_TIMER => {
                    ((remaining - LAND_MARGIN + ENTRY_TICK).min(MAX_TIMER), false)
                }
                Plan::Land { .. } => (STEP_TIMER, true),
            }
        };
        set_mtf(vmcs, step)?;
        vmcs.write(Field::PreemptionTimerValue, timer)?;
        self.armed = timer;
        self.stepping = step;
        self.injected = injecting;
        Ok(())
    }
    fn exited(&mut self, vmcs: &mut dyn VmcsAccess, reason: u16) -> Result<(), Refusal> {
        let left = vmcs.get(Field::PreemptionTimerValue);
        let Some(ran) = self.armed.checked_sub(left) else {
            return Err(Refusal {
                backend: "preempt",
                reason: format!(
                    "the saved VMX-preemption timer grew ({} armed, {left} saved)",
                    self.armed
                ),
            });
        };
        let Some(ran) = ran.checked_sub(ENTRY_TICK) else {
            return Err(Refusal {
                backend: "preempt",
                reason: format!(
                    "an entry consumed no VMX-preemption timer unit (exit reason {reason})"
                ),
            });
        };
        let mtf = mtf_delta(reason, self.injected);
        if self.calibrating() && self.stepping {
            self.measure.add(reason, self.injected, ran, mtf);
            // A `rep` string instruction is one MTF step but one timer unit
            // per iteration: more units than MTF steps only on MTF exits.
            let rep_ok = reason == super::REASON_MTF && mtf == 1 && ran > 1;
            if ran != mtf && !rep_ok {
                return Err(Refusal {
                    backend: "preempt",
                    reason: format!(
                        "the VMX-preemption timer is not an exact guest instruction counter \
                         on this CPU: at instruction {} an entry that MTF counts as {mtf} \
                         instruction(s) moved the timer by {ran} (exit reason {reason}, \
                         event injected: {})",
                        self.count, self.injected
                    ),
                });
            }
        }
        // Single steps count by MTF: Bochs's timer units for a `rep` string
        // instruction vary between runs (its repeat speed-ups batch
        // iterations), the MTF step does not.
        self.count += if self.stepping { mtf } else { ran };
        Ok(())
    }
    fn emulated(&mut self) {
        self.count += 1;
    }
    fn measure(&self) -> Option<&Measure> {
        Some(&self.measure)
    }
    fn describe(&self) -> String {
        format!(
            "preempt (VMX-preemption timer counts guest instructions; MTF lands the last {LAND_MARGIN}; \
             first {} instructions single-stepped and cross-checked)",
            self.calibrate_until
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::PROC_MTF;
    use super::*;
    use crate::vmcs::FakeVmcs;

    fn mtf_on(v: &FakeVmcs) -> bool {
        v.get(Field::ProcBasedControls) & PROC_MTF != 0
    }

    #[test]
    fn calibration_steps_then_trusts_the_timer() {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::new(2);
        for _ in 0..2 {
            c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
            assert!(mtf_on(&v));
            v.write(Field::PreemptionTimerValue, STEP_TIMER - 2)
                .unwrap();
            c.exited(&mut v, 37).unwrap();
        }
        assert_eq!(c.count(), 2);
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        assert!(!mtf_on(&v));
        assert_eq!(v.get(Field::PreemptionTimerValue), 1000);
        // an I/O exit after 600 instructions (plus the entry tick)
        v.write(Field::PreemptionTimerValue, 399).unwrap();
        c.exited(&mut v, 30).unwrap();
        c.emulated();
        assert_eq!(c.count(), 603);
    }

    #[test]
    fn calibration_mismatch_refuses() {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::new(10);
        // a `rep stos` of 27 iterations: one MTF step, 27 units (+1)
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 28)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.count(), 1);
        // real hardware: the timer follows the TSC; a CPUID exit (nothing
        // retired) took 300 units
        c.arm(&mut v, Plan::Run { slice: 1000 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 300)
            .unwrap();
        let e = c.exited(&mut v, 10).unwrap_err();
        assert_eq!(e.backend, "preempt");
        assert!(e.reason.contains("not an exact"), "{e}");
    }

    #[test]
    fn landing_uses_timer_then_single_steps() {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::new(0);
        c.arm(&mut v, Plan::Land { remaining: 100 }, false).unwrap();
        assert!(!mtf_on(&v));
        // 99 instructions plus the entry tick
        assert_eq!(v.get(Field::PreemptionTimerValue), 100);
        v.write(Field::PreemptionTimerValue, 0).unwrap();
        c.exited(&mut v, 52).unwrap();
        assert_eq!(c.count(), 99);
        c.arm(&mut v, Plan::Land { remaining: 1 }, false).unwrap();
        assert!(mtf_on(&v));
        v.write(Field::PreemptionTimerValue, STEP_TIMER - 2)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.count(), 100);
        // 2 remaining: one by the timer (armed 2, exact), one stepped
        c.arm(&mut v, Plan::Land { remaining: 2 }, false).unwrap();
        assert!(!mtf_on(&v));
        assert_eq!(v.get(Field::PreemptionTimerValue), 2);
        // slices are clamped into the exact range
        c.arm(&mut v, Plan::Run { slice: 1 }, false).unwrap();
        assert_eq!(v.get(Field::PreemptionTimerValue), MIN_TIMER);
        c.arm(&mut v, Plan::Run { slice: u64::MAX }, false).unwrap();
        assert_eq!(v.get(Field::PreemptionTimerValue), MAX_TIMER);
    }

    #[test]
    fn a_growing_timer_is_refused() {
        let mut v = FakeVmcs::default();
        let mut c = Preempt::new(0);
        c.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 11).unwrap();
        assert!(c.exited(&mut v, 52).is_err());
        // no unit at all for an entry: not the Bochs timer
        c.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, 10).unwrap();
        assert!(c.exited(&mut v, 10).is_err());
    }
}

//! The `mtf` backend: every guest instruction is single-stepped with the
//! monitor trap flag (SDM Vol. 3C §26.5.2) and counted by
//! [`super::mtf_delta`]. Slow (one exit per instruction) but exact wherever
//! MTF works; the reference the other backends are checked against.
//!
//! When the CPU offers "save VMX-preemption timer value" (exit control
//! bit 22), each entry also arms the preemption timer with
//! [`CHECK_TIMER`] and the exit records how far it moved next to the MTF
//! count: the measurement table ([`super::Measure`]) that shows whether the
//! timer counts guest instructions exactly (DESIGN.md §3).
use super::{mtf_delta, set_mtf, ExecCounter, Measure, Plan, Refusal};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;
use alloc::format;
use alloc::string::String;

/// Timer value armed on every single-step entry (never reached).
pub const CHECK_TIMER: u64 = 1_000_000;

pub struct Mtf {
    count: u64,
    injected: bool,
    /// The preemption timer is saved on exit: cross-check it.
    check: bool,
    /// Entries so far: the first (VMLAUNCH, another host path whose trace
    /// lands in the timer, `preempt`) is not a sample.
    entries: u64,
    measure: Measure,
}

impl Mtf {
    /// `save_timer`: the exit control "save VMX-preemption timer value" is
    /// set in this VMCS.
    pub fn new(save_timer: bool) -> Mtf {
        Mtf {
            count: 0,
            injected: false,
            check: save_timer,
            entries: 0,
            measure: Measure::default(),
        }
    }
}

impl ExecCounter for Mtf {
    fn name(&self) -> &'static str {
        "mtf"
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn resume_at(&mut self, count: u64) {
        self.count = count;
    }
    fn arm(
        &mut self,
        vmcs: &mut dyn VmcsAccess,
        _plan: Plan,
        injecting: bool,
    ) -> Result<(), Error> {
        set_mtf(vmcs, true)?;
        if self.check {
            vmcs.write(Field::PreemptionTimerValue, CHECK_TIMER)?;
        }
        self.injected = injecting;
        Ok(())
    }
    fn exited(&mut self, vmcs: &mut dyn VmcsAccess, reason: u16) -> Result<(), Refusal> {
        let delta = mtf_delta(reason, self.injected);
        self.entries += 1;
        if self.check && self.entries > 1 {
            let left = vmcs.get(Field::PreemptionTimerValue);
            // Minus the unit every entry consumes in Bochs (`preempt`).
            let timer = CHECK_TIMER
                .saturating_sub(left)
                .saturating_sub(super::preempt::ENTRY_TICK);
            self.measure.add(reason, self.injected, timer, delta);
        }
        self.count += delta;
        Ok(())
    }
    fn emulated(&mut self) {
        self.count += 1;
    }
    fn measure(&self) -> Option<&Measure> {
        self.check.then_some(&self.measure)
    }
    fn describe(&self) -> String {
        format!(
            "mtf (single-step every guest instruction; preemption-timer cross-check {})",
            if self.check { "on" } else { "off" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn counts_mtf_exits_but_not_event_delivery_or_exiting_instructions() {
        let mut v = FakeVmcs::default();
        let mut c = Mtf::new(true);
        // the launch entry (VMLAUNCH's trace in the timer): no sample
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, CHECK_TIMER - 24)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.measure().unwrap().samples, 0);
        // one instruction retired: timer moved by 1
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        assert_ne!(v.get(Field::ProcBasedControls) & super::super::PROC_MTF, 0);
        v.write(Field::PreemptionTimerValue, CHECK_TIMER - 2)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        // CPUID exits before retiring; emulated by the hypervisor
        c.arm(&mut v, Plan::Run { slice: 5 }, false).unwrap();
        v.write(Field::PreemptionTimerValue, CHECK_TIMER - 1)
            .unwrap();
        c.exited(&mut v, 10).unwrap();
        c.emulated();
        // injected event: MTF exit before any instruction
        c.arm(&mut v, Plan::Run { slice: 5 }, true).unwrap();
        v.write(Field::PreemptionTimerValue, CHECK_TIMER - 1)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.count(), 3);
        let m = c.measure().unwrap();
        assert_eq!((m.samples, m.mismatches), (3, 0));
        // a timer that moved differently is a mismatch in the table
        c.arm(&mut v, Plan::Run { slice: 5 }, true).unwrap();
        v.write(Field::PreemptionTimerValue, CHECK_TIMER - 2)
            .unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.measure().unwrap().mismatches, 1);
        assert_eq!(c.measure().unwrap().table[&(37, true, 1, 0)], 1);
    }

    #[test]
    fn without_save_timer_no_measure() {
        let mut v = FakeVmcs::default();
        let mut c = Mtf::new(false);
        c.arm(&mut v, Plan::Land { remaining: 3 }, false).unwrap();
        c.exited(&mut v, 37).unwrap();
        assert_eq!(c.count(), 1);
        assert!(c.measure().is_none());
        assert!(!v.fields.contains_key(&Field::PreemptionTimerValue));
    }
}

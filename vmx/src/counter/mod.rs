//! Execution-counter backends: where the guest is in its instruction stream
//! (DESIGN.md §1.2 execution points `(counter, RIP, RCX)`, §3 backends).
//!
//! | backend | counts | lands on a point with |
//! |---|---|---|
//! | [`preempt::Preempt`] | Bochs's instruction clock: the host TSC read around every entry (exact per exit), cross-checked with the VMX-preemption timer saved on exit (SDM Vol. 3C §26.5.1, §27.3.4) | the timer stops a margin short, then MTF single-steps (SDM Vol. 3C §26.5.2) |
//! | [`mtf::Mtf`] | one monitor-trap-flag exit per guest instruction (SDM Vol. 3C §26.5.2) | MTF single-steps; slow, the reference |
//! | [`pmu::Pmu`] | IA32_PMC0 counting retired conditional branches (SDM Vol. 3B §20.2) | refuses to start unless the counter is shown to count |
//!
//! The counter is a number of *guest instructions*: instructions retired in
//! VMX non-root operation (each iteration of a `rep` string instruction
//! counts as one; RCX names the iteration) plus instructions the
//! hypervisor emulated on an exit (the run loop calls [`ExecCounter::emulated`] when an exit handler
//! advanced RIP). A backend that cannot be exact is refused with a
//! [`Refusal`], never used silently. Backends touch the VMCS only through
//! [`VmcsAccess`], so the logic here is tested on the host with `FakeVmcs`.
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;
use alloc::collections::BTreeMap;
use alloc::string::String;

pub mod mtf;
pub mod pmu;
pub mod preempt;

/// Primary processor-based control bit 27: monitor trap flag.
pub const PROC_MTF: u64 = 1 << 27;
/// VM-exit control bit 22: save VMX-preemption timer value.
pub const EXIT_SAVE_PREEMPTION_TIMER: u64 = 1 << 22;
/// Exit reason 37 (monitor trap flag).
pub const REASON_MTF: u16 = 37;
/// Exit reason 52 (VMX-preemption timer expired).
pub const REASON_PREEMPT: u16 = 52;

/// What the run loop wants from the next stretch of guest execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Run freely; exit after at most `slice` timer units (the run loop's
    /// time slice) or on any other exit.
    Run { slice: u64 },
    /// Stop after exactly `remaining` (≥ 1) more counted instructions, unless
    /// another exit comes first.
    Land { remaining: u64 },
}

/// Why a backend will not count for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub backend: &'static str,
    pub reason: String,
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "counter backend `{}` refused: {}",
            self.backend, self.reason
        )
    }
}

/// A guest execution counter (one per vCPU).
pub trait ExecCounter {
    fn name(&self) -> &'static str;
    /// Guest instructions counted so far.
    fn count(&self) -> u64;
    /// The guest's state was replaced by a repair's transfer (issue 16):
    /// it stands `count` units into its run, as counted by the node that
    /// sent it; count on from there (a calibration still owed keeps its
    /// length).
    fn resume_at(&mut self, count: u64);
    /// Programs the VMCS for the next VM entry. `injecting`: the entry
    /// delivers an event (SDM §26.6.2: a pending MTF exit then comes after
    /// the delivery, before any instruction).
    fn arm(&mut self, vmcs: &mut dyn VmcsAccess, plan: Plan, injecting: bool) -> Result<(), Error>;
    /// Accounts the guest instructions of the entry that just ended with
    /// exit `reason`. `Err(Refusal)`: the backend found it cannot be exact.
    fn exited(&mut self, vmcs: &mut dyn VmcsAccess, reason: u16) -> Result<(), Refusal>;
    /// The host TSC units from just before the entry that just ended to
    /// just after its exit (read by the world switch; called before
    /// [`Self::exited`]). Bochs's TSC counts instructions (`preempt`).
    fn stamps(&mut self, _span: u64) {}
    /// The hypervisor emulated (completed) one guest instruction.
    fn emulated(&mut self);
    /// Whether a count names one instruction (instruction counters) or a
    /// stretch of them (branch counters: RIP/RCX then pick the instruction).
    fn exact(&self) -> bool {
        true
    }
    /// Cross-check statistics, if the backend keeps them.
    fn measure(&self) -> Option<&Measure> {
        None
    }
    /// One line of run statistics for the report, if the backend keeps any.
    fn stats(&self) -> Option<String> {
        None
    }
    /// One line for the boot report.
    fn describe(&self) -> String;
}

/// Sets or clears the monitor trap flag in the primary controls.
pub fn set_mtf(vmcs: &mut dyn VmcsAccess, on: bool) -> Result<(), Error> {
    let proc = vmcs.get(Field::ProcBasedControls);
    let want = if on {
        proc | PROC_MTF
    } else {
        proc & !PROC_MTF
    };
    if want != proc {
        vmcs.write(Field::ProcBasedControls, want)?;
    }
    Ok(())
}

/// The measurement table: for each exit, how many preemption-timer units
/// the entry consumed next to how many instructions MTF accounting says
/// it retired. Keys: (exit reason, entry injected an event, timer delta,
/// MTF delta); values: occurrences.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Measure {
    pub table: BTreeMap<(u16, bool, u64, u64), u64>,
    pub mismatches: u64,
    pub samples: u64,
}

impl Measure {
    pub fn add(&mut self, reason: u16, injected: bool, timer: u64, mtf: u64) {
        *self
            .table
            .entry((reason, injected, timer, mtf))
            .or_default() += 1;
        self.samples += 1;
        if timer != mtf {
            self.mismatches += 1;
        }
    }
}

/// Instructions retired under MTF accounting for an entry that ended with
/// `reason`: an MTF exit after an entry that delivered no event follows
/// exactly one instruction; an MTF exit right after event delivery, and any
/// exit caused by an instruction (which did not retire), follow none.
pub fn mtf_delta(reason: u16, injected: bool) -> u64 {
    u64::from(reason == REASON_MTF && !injected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn mtf_bit_toggles() {
        let mut v = FakeVmcs::default();
        v.write(Field::ProcBasedControls, 0x80).unwrap();
        set_mtf(&mut v, true).unwrap();
        assert_eq!(v.get(Field::ProcBasedControls), 0x80 | PROC_MTF);
        set_mtf(&mut v, false).unwrap();
        assert_eq!(v.get(Field::ProcBasedControls), 0x80);
    }

    #[test]
    fn mtf_rule_and_measure() {
        assert_eq!(mtf_delta(REASON_MTF, false), 1);
        assert_eq!(mtf_delta(REASON_MTF, true), 0);
        assert_eq!(mtf_delta(10, false), 0);
        let mut m = Measure::default();
        m.add(37, false, 1, 1);
        m.add(10, false, 1, 0);
        assert_eq!((m.samples, m.mismatches), (2, 1));
    }
}

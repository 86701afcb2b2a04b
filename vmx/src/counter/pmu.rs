//! The `pmu` backend: IA32_PMC0 counts retired conditional branches
//! (event 0xC4, umask 0x01 — BR_INST_RETIRED.CONDITIONAL on Intel cores since
//! Sandy Bridge; rr uses the same event), as VMware FT and rr do
//! (DESIGN.md §3; SDM Vol. 3B §20.2 architectural performance monitoring).
//!
//! CPUID leaf 0xA is not proof: Bochs claims PMU version 3 with four
//! counters but implements none. [`Pmu::probe`] therefore needs version ≥ 2
//! *and* shows the counter counting: it programs PMC0, executes a known
//! number of conditional branches, and requires PMC0 to have moved by at
//! least that many. Otherwise the backend is refused with the reason.
//!
//! Counting reads PMC0 on every exit (the kernel keeps the counter enabled
//! in guest mode only, via IA32_PERF_GLOBAL_CTRL). Branch counts do not
//! name an instruction on their own: landing single-steps with MTF once
//! the count is reached until RIP and RCX match too ([`ExecCounter`] users
//! see [`Pmu::exact_instructions`] = false). Arming an overflow interrupt a
//! skid margin before far targets is not done yet: landings single-step all
//! the way (exact, slow).
use super::{set_mtf, ExecCounter, Plan, Refusal};
use crate::caps::PmuInfo;
use crate::vmcs::VmcsAccess;
use crate::Error;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

pub const IA32_PMC0: u32 = 0xC1;
pub const IA32_PERFEVTSEL0: u32 = 0x186;
pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38F;
/// BR_INST_RETIRED.CONDITIONAL, USR | OS | EN.
pub const EVTSEL_COND_BRANCHES: u64 = 0xC4 | (0x01 << 8) | (1 << 16) | (1 << 17) | (1 << 22);
/// Conditional branches the probe executes.
pub const PROBE_BRANCHES: u64 = 10_000;

/// MSR access for the PMU, with faults reported instead of taken, plus a
/// workload of a known number of conditional branches.
pub trait PmuHw {
    /// `None`: the MSR access faulted (#GP).
    fn rdmsr(&mut self, msr: u32) -> Option<u64>;
    /// `false`: the MSR access faulted (#GP).
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool;
    /// Executes at least `n` retired conditional branches.
    fn branches(&mut self, n: u64);
}

pub struct Pmu {
    hw: Box<dyn PmuHw>,
    count: u64,
    last: u64,
    mask: u64,
}

impl Pmu {
    /// Checks CPUID's claim and that PMC0 really counts; on success the
    /// counter is left programmed (and globally enabled) for the guest.
    pub fn probe(info: PmuInfo, mut hw: Box<dyn PmuHw>) -> Result<Pmu, Refusal> {
        let refuse = |reason: String| Refusal {
            backend: "pmu",
            reason,
        };
        if info.version < 2 || info.gp_counters == 0 || info.counter_width < 32 {
            return Err(refuse(format!(
                "no usable architectural PMU (CPUID.0AH: version {}, {} counters, {} bits; need version >= 2)",
                info.version, info.gp_counters, info.counter_width
            )));
        }
        let mask = if info.counter_width >= 64 {
            u64::MAX
        } else {
            (1u64 << info.counter_width) - 1
        };
        let ok = hw.wrmsr(IA32_PERF_GLOBAL_CTRL, 0)
            && hw.wrmsr(IA32_PERFEVTSEL0, EVTSEL_COND_BRANCHES)
            && hw.wrmsr(IA32_PMC0, 0)
            && hw.wrmsr(IA32_PERF_GLOBAL_CTRL, 1);
        if !ok {
            return Err(refuse(format!(
                "CPUID.0AH claims PMU version {} but programming PMC0/PERFEVTSEL0/PERF_GLOBAL_CTRL faulted",
                info.version
            )));
        }
        hw.branches(PROBE_BRANCHES);
        let Some(counted) = hw.rdmsr(IA32_PMC0) else {
            return Err(refuse("reading IA32_PMC0 faulted".into()));
        };
        let counted = counted & mask;
        if counted < PROBE_BRANCHES {
            hw.wrmsr(IA32_PERF_GLOBAL_CTRL, 0);
            return Err(refuse(format!(
                "CPUID.0AH claims PMU version {} but PMC0 counted {counted} of {PROBE_BRANCHES} \
                 conditional branches: the counters do not count (emulator without a PMU?)",
                info.version
            )));
        }
        hw.wrmsr(IA32_PMC0, 0);
        Ok(Pmu {
            hw,
            count: 0,
            last: 0,
            mask,
        })
    }

    /// Branch counts do not identify one instruction (DESIGN.md §1.2).
    pub fn exact_instructions(&self) -> bool {
        false
    }
}

impl ExecCounter for Pmu {
    fn name(&self) -> &'static str {
        "pmu"
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
        plan: Plan,
        _injecting: bool,
    ) -> Result<(), Error> {
        set_mtf(vmcs, matches!(plan, Plan::Land { .. }))
    }
    fn exited(&mut self, _vmcs: &mut dyn VmcsAccess, _reason: u16) -> Result<(), Refusal> {
        let now = self.hw.rdmsr(IA32_PMC0).ok_or_else(|| Refusal {
            backend: "pmu",
            reason: "reading IA32_PMC0 faulted".into(),
        })?;
        self.count += now.wrapping_sub(self.last) & self.mask;
        self.last = now;
        Ok(())
    }
    fn emulated(&mut self) {
        // An emulated instruction is never a conditional branch.
    }
    fn exact(&self) -> bool {
        self.exact_instructions()
    }
    fn describe(&self) -> String {
        "pmu (IA32_PMC0: retired conditional branches; MTF lands)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// A fake PMU: `counts` says whether PMC0 moves with branches;
    /// `faults` makes every MSR access fault.
    #[derive(Default)]
    struct Fake {
        msrs: HashMap<u32, u64>,
        counts: bool,
        faults: bool,
    }

    struct Shared(Rc<RefCell<Fake>>);

    impl PmuHw for Shared {
        fn rdmsr(&mut self, msr: u32) -> Option<u64> {
            let f = self.0.borrow();
            (!f.faults).then(|| *f.msrs.get(&msr).unwrap_or(&0))
        }
        fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
            let mut f = self.0.borrow_mut();
            if f.faults {
                return false;
            }
            f.msrs.insert(msr, value);
            true
        }
        fn branches(&mut self, n: u64) {
            let mut f = self.0.borrow_mut();
            let on = f.msrs.get(&IA32_PERF_GLOBAL_CTRL) == Some(&1)
                && f.msrs.get(&IA32_PERFEVTSEL0) == Some(&EVTSEL_COND_BRANCHES);
            if f.counts && on {
                *f.msrs.entry(IA32_PMC0).or_default() += n + 3;
            }
        }
    }

    const V3: PmuInfo = PmuInfo {
        version: 3,
        gp_counters: 4,
        counter_width: 48,
    };

    fn fake(counts: bool, faults: bool) -> (Rc<RefCell<Fake>>, Box<dyn PmuHw>) {
        let f = Rc::new(RefCell::new(Fake {
            counts,
            faults,
            ..Default::default()
        }));
        (f.clone(), Box::new(Shared(f)))
    }

    #[test]
    fn claimed_but_dead_counters_are_refused() {
        // Bochs: CPUID says version 3, the MSRs accept writes, PMC0 stays 0.
        let (_, hw) = fake(false, false);
        let e = Pmu::probe(V3, hw).err().unwrap();
        assert!(e.reason.contains("counted 0 of 10000"), "{e}");
        assert!(e.to_string().starts_with("counter backend `pmu` refused"));
    }

    #[test]
    fn faulting_msrs_and_old_versions_are_refused() {
        let (_, hw) = fake(true, true);
        assert!(Pmu::probe(V3, hw).err().unwrap().reason.contains("faulted"));
        let (_, hw) = fake(true, false);
        let v1 = PmuInfo { version: 1, ..V3 };
        assert!(Pmu::probe(v1, hw)
            .err()
            .unwrap()
            .reason
            .contains("version 1"));
    }

    #[test]
    fn a_counting_pmu_is_accepted_and_counts_deltas() {
        let (f, hw) = fake(true, false);
        let mut p = Pmu::probe(V3, hw).unwrap();
        assert!(!p.exact_instructions());
        let mut v = crate::vmcs::FakeVmcs::default();
        p.arm(&mut v, Plan::Run { slice: 10 }, false).unwrap();
        f.borrow_mut().msrs.insert(IA32_PMC0, 40);
        p.exited(&mut v, 52).unwrap();
        p.emulated();
        f.borrow_mut().msrs.insert(IA32_PMC0, 45);
        p.exited(&mut v, 52).unwrap();
        assert_eq!(p.count(), 45);
        // wrap-around at the counter width
        f.borrow_mut().msrs.insert(IA32_PMC0, 2);
        p.last = (1 << 48) - 3;
        p.exited(&mut v, 52).unwrap();
        assert_eq!(p.count(), 50);
    }
}

//! VMX capability reporting from the VMX capability MSRs (Intel SDM Vol. 3D
//! appendix A: A.1 IA32_VMX_BASIC, A.3 pin/proc-based controls, A.3.3
//! secondary controls, A.6 IA32_VMX_MISC, A.10 IA32_VMX_EPT_VPID_CAP).
//!
//! Each control MSR holds allowed-0 settings in bits 31:0 (a 1 there means
//! the control must be 1) and allowed-1 settings in bits 63:32 (a 0 there
//! means the control must be 0). When IA32_VMX_BASIC bit 55 is set, the
//! TRUE_* MSRs give the precise allowed-0 settings.
use crate::Error;

pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;

/// Reads a model-specific register. Implemented with `rdmsr` in the kernel
/// and by a table in tests. Only called after CPUID reported VMX.
pub trait MsrRead {
    fn read_msr(&mut self, msr: u32) -> u64;
}

/// Allowed settings of one VMX control register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Bits that must be 1.
    pub must_be_one: u32,
    /// Bits that may be 1.
    pub may_be_one: u32,
}

impl Allowed {
    pub fn from_msr(value: u64) -> Self {
        Allowed {
            must_be_one: value as u32,
            may_be_one: (value >> 32) as u32,
        }
    }

    pub fn supports(&self, bit: u32) -> bool {
        self.may_be_one & (1 << bit) != 0
    }

    /// Computes a control value: `wanted` bits the caller needs (error if
    /// any is not allowed), plus every bit the CPU requires (SDM A.3.1).
    pub fn compute(
        &self,
        register: &'static str,
        wanted: &[(u32, &'static str)],
    ) -> Result<u32, Error> {
        let mut value = self.must_be_one;
        for &(bit, control) in wanted {
            if !self.supports(bit) {
                return Err(Error::MissingControl { register, control });
            }
            value |= 1 << bit;
        }
        Ok(value)
    }
}

/// Control bit positions used by the report and by the VMCS setup.
pub mod bits {
    pub const PIN_EXTERNAL_INTERRUPT_EXITING: u32 = 0;
    pub const PIN_PREEMPTION_TIMER: u32 = 6;
    pub const PROC_HLT_EXITING: u32 = 7;
    pub const PROC_RDTSC_EXITING: u32 = 12;
    pub const PROC_MTF: u32 = 27;
    pub const PROC_PAUSE_EXITING: u32 = 30;
    pub const PROC_SECONDARY: u32 = 31;
    pub const PROC2_EPT: u32 = 1;
    pub const PROC2_RDTSCP: u32 = 3;
    pub const PROC2_VPID: u32 = 5;
    pub const PROC2_UNRESTRICTED_GUEST: u32 = 7;
    pub const PROC2_RDRAND_EXITING: u32 = 11;
    pub const PROC2_RDSEED_EXITING: u32 = 16;
    pub const EXIT_SAVE_PREEMPTION_TIMER: u32 = 22;
}

/// What this CPU's VMX offers, as far as ftvisor cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    pub vmcs_revision: u32,
    pub true_controls: bool,
    pub pin: Allowed,
    pub proc: Allowed,
    pub proc2: Allowed,
    pub exit: Allowed,
    pub entry: Allowed,
    pub misc: u64,
    pub ept_vpid: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

impl VmxCaps {
    /// Reads every capability MSR. The caller has checked CPUID for VMX.
    pub fn read(msr: &mut impl MsrRead) -> Self {
        let basic = msr.read_msr(IA32_VMX_BASIC);
        let true_controls = basic & (1 << 55) != 0;
        let pick = |normal, tru| if true_controls { tru } else { normal };
        let proc_raw = msr.read_msr(pick(IA32_VMX_PROCBASED_CTLS, IA32_VMX_TRUE_PROCBASED_CTLS));
        let proc = Allowed::from_msr(proc_raw);
        let proc2 = if proc.supports(bits::PROC_SECONDARY) {
            Allowed::from_msr(msr.read_msr(IA32_VMX_PROCBASED_CTLS2))
        } else {
            Allowed {
                must_be_one: 0,
                may_be_one: 0,
            }
        };
        let ept_vpid = if proc2.supports(bits::PROC2_EPT) || proc2.supports(bits::PROC2_VPID) {
            msr.read_msr(IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        VmxCaps {
            vmcs_revision: (basic & 0x7fff_ffff) as u32,
            true_controls,
            pin: Allowed::from_msr(
                msr.read_msr(pick(IA32_VMX_PINBASED_CTLS, IA32_VMX_TRUE_PINBASED_CTLS)),
            ),
            proc,
            proc2,
            exit: Allowed::from_msr(
                msr.read_msr(pick(IA32_VMX_EXIT_CTLS, IA32_VMX_TRUE_EXIT_CTLS)),
            ),
            entry: Allowed::from_msr(
                msr.read_msr(pick(IA32_VMX_ENTRY_CTLS, IA32_VMX_TRUE_ENTRY_CTLS)),
            ),
            misc: msr.read_msr(IA32_VMX_MISC),
            ept_vpid,
            cr0_fixed0: msr.read_msr(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: msr.read_msr(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: msr.read_msr(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: msr.read_msr(IA32_VMX_CR4_FIXED1),
        }
    }

    pub fn ept(&self) -> bool {
        self.proc2.supports(bits::PROC2_EPT)
    }
    pub fn vpid(&self) -> bool {
        self.proc2.supports(bits::PROC2_VPID)
    }
    pub fn unrestricted_guest(&self) -> bool {
        self.proc2.supports(bits::PROC2_UNRESTRICTED_GUEST)
    }
    pub fn mtf(&self) -> bool {
        self.proc.supports(bits::PROC_MTF)
    }
    pub fn preemption_timer(&self) -> bool {
        self.pin.supports(bits::PIN_PREEMPTION_TIMER)
    }
    /// The timer counts down once every 2^rate TSC ticks (SDM A.6).
    pub fn preemption_timer_rate(&self) -> u32 {
        (self.misc & 0x1f) as u32
    }
    pub fn save_preemption_timer(&self) -> bool {
        self.exit.supports(bits::EXIT_SAVE_PREEMPTION_TIMER)
    }
    pub fn rdrand_exiting(&self) -> bool {
        self.proc2.supports(bits::PROC2_RDRAND_EXITING)
    }
    /// EPT with 4-level walks and write-back memory type (SDM A.10).
    pub fn ept_4level_wb(&self) -> bool {
        self.ept_vpid & (1 << 6) != 0 && self.ept_vpid & (1 << 14) != 0
    }

    /// The features ftvisor cannot run without, checked in one place so the
    /// refusal names the first missing one.
    pub fn check_required(&self) -> Result<(), Error> {
        let need = [
            (
                self.proc.supports(bits::PROC_SECONDARY),
                "procbased",
                "activate secondary controls",
            ),
            (self.ept(), "procbased2", "enable EPT"),
            (
                self.unrestricted_guest(),
                "procbased2",
                "unrestricted guest",
            ),
            (self.mtf(), "procbased", "monitor trap flag"),
            (self.preemption_timer(), "pinbased", "VMX-preemption timer"),
        ];
        for (ok, register, control) in need {
            if !ok {
                return Err(Error::MissingControl { register, control });
            }
        }
        Ok(())
    }
}

/// Architectural PMU as reported by CPUID leaf 0xA (SDM Vol. 3B §20.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PmuInfo {
    pub version: u8,
    pub gp_counters: u8,
    pub counter_width: u8,
}

impl PmuInfo {
    pub fn from_cpuid_0a(eax: u32) -> Self {
        PmuInfo {
            version: eax as u8,
            gp_counters: (eax >> 8) as u8,
            counter_width: (eax >> 16) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeMsrs(HashMap<u32, u64>);
    impl MsrRead for FakeMsrs {
        fn read_msr(&mut self, msr: u32) -> u64 {
            *self
                .0
                .get(&msr)
                .unwrap_or_else(|| panic!("unexpected MSR {msr:#x}"))
        }
    }

    /// Values read off Bochs 3.0 `corei7_haswell_4770`-like settings.
    fn bochs_like() -> FakeMsrs {
        FakeMsrs(HashMap::from([
            (IA32_VMX_BASIC, 0x00da_0400_0000_0004),
            (IA32_VMX_TRUE_PINBASED_CTLS, 0x0000_007f_0000_0016),
            (IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_fffe_0400_6172),
            (IA32_VMX_PROCBASED_CTLS2, 0x0011_58ff_0000_0000),
            (IA32_VMX_TRUE_EXIT_CTLS, 0x007f_efff_0000_0000),
            (IA32_VMX_TRUE_ENTRY_CTLS, 0x0000_f3ff_0000_0000),
            (IA32_VMX_MISC, 0x6004_01e0),
            (IA32_VMX_EPT_VPID_CAP, 0x0f01_0611_4141),
            (IA32_VMX_CR0_FIXED0, 0x8000_0021),
            (IA32_VMX_CR0_FIXED1, 0xffff_ffff),
            (IA32_VMX_CR4_FIXED0, 0x2000),
            (IA32_VMX_CR4_FIXED1, 0x0037_67ff),
        ]))
    }

    #[test]
    fn reads_features() {
        let caps = VmxCaps::read(&mut bochs_like());
        assert_eq!(caps.vmcs_revision, 4);
        assert!(caps.true_controls);
        assert!(caps.ept() && caps.vpid() && caps.unrestricted_guest());
        assert!(caps.mtf() && caps.preemption_timer());
        assert_eq!(caps.preemption_timer_rate(), 0);
        assert!(caps.check_required().is_ok());
    }

    #[test]
    fn compute_sets_required_bits_and_rejects_missing() {
        let a = Allowed::from_msr(0x0000_00ff_0000_0016);
        assert_eq!(a.compute("pin", &[(0, "ext")]).unwrap(), 0x17);
        let e = a.compute("pin", &[(9, "nine")]).unwrap_err();
        assert_eq!(
            e,
            Error::MissingControl {
                register: "pin",
                control: "nine"
            }
        );
    }

    #[test]
    fn missing_mtf_is_named() {
        let mut m = bochs_like();
        m.0.insert(IA32_VMX_TRUE_PROCBASED_CTLS, 0xf7f9_fffe_0400_6172);
        let caps = VmxCaps::read(&mut m);
        assert!(!caps.mtf());
        let e = caps.check_required().unwrap_err();
        assert!(e.to_string().contains("monitor trap flag"));
    }

    #[test]
    fn no_secondary_controls_means_no_ept() {
        let mut m = bochs_like();
        m.0.insert(IA32_VMX_TRUE_PROCBASED_CTLS, 0x7ff9_fffe_0400_6172);
        m.0.remove(&IA32_VMX_PROCBASED_CTLS2);
        m.0.remove(&IA32_VMX_EPT_VPID_CAP);
        let caps = VmxCaps::read(&mut m);
        assert!(!caps.ept() && !caps.unrestricted_guest());
    }

    #[test]
    fn pmu_from_cpuid() {
        let p = PmuInfo::from_cpuid_0a(0x0730_0403);
        assert_eq!((p.version, p.gp_counters, p.counter_width), (3, 4, 48));
    }
}

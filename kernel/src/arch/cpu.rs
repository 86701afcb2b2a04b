//! CPU identification and the boot CPU report (CPUID via `raw-cpuid`, VMX
//! capability MSRs via [`vmx::caps`]). Reading VMX MSRs on a CPU without VMX
//! raises #GP, so they are read only after CPUID says VMX is there.
use raw_cpuid::CpuId;
use vmx::caps::{MsrRead, PmuInfo, VmxCaps, IA32_FEATURE_CONTROL};

pub struct Msrs;

impl MsrRead for Msrs {
    fn read_msr(&mut self, msr: u32) -> u64 {
        // SAFETY: callers read only MSRs that CPUID says exist.
        unsafe { x86::msr::rdmsr(msr) }
    }
}

/// What the report found; the hypervisor decides from it.
pub struct CpuReport {
    pub has_vmx: bool,
    pub vmx: Option<VmxCaps>,
    pub feature_control: u64,
    pub pmu: PmuInfo,
}

pub fn report() -> CpuReport {
    let cpuid = CpuId::new();
    let vendor = cpuid.get_vendor_info();
    let vendor = vendor.as_ref().map(|v| v.as_str()).unwrap_or("unknown");
    let fi = cpuid.get_feature_info();
    let (family, model, stepping) = fi
        .as_ref()
        .map(|f| (f.family_id(), f.model_id(), f.stepping_id()))
        .unwrap_or((0, 0, 0));
    let brand = cpuid.get_processor_brand_string();
    let brand = brand.as_ref().map(|b| b.as_str().trim()).unwrap_or("");
    println!(
        "cpu: vendor={} family={:#x} model={:#x} stepping={} brand=\"{}\"",
        vendor, family, model, stepping, brand
    );
    let has_vmx = fi.as_ref().is_some_and(|f| f.has_vmx());
    let pmu = cpuid
        .get_performance_monitoring_info()
        .map(|p| PmuInfo {
            version: p.version_id(),
            gp_counters: p.number_of_counters(),
            counter_width: p.counter_bit_width(),
        })
        .unwrap_or_default();
    let mut report = CpuReport {
        has_vmx,
        vmx: None,
        feature_control: 0,
        pmu,
    };
    if has_vmx {
        let caps = VmxCaps::read(&mut Msrs);
        report.feature_control = Msrs.read_msr(IA32_FEATURE_CONTROL);
        let yn = |b: bool| if b { "yes" } else { "no" };
        println!(
            "cpu: vmx=yes vmcs_revision={:#x} ept={} unrestricted_guest={} mtf={} preemption_timer={} (rate: TSC/2^{}) save_timer={} vpid={} rdrand_exiting={} ept_4level_wb={}",
            caps.vmcs_revision,
            yn(caps.ept()),
            yn(caps.unrestricted_guest()),
            yn(caps.mtf()),
            yn(caps.preemption_timer()),
            caps.preemption_timer_rate(),
            yn(caps.save_preemption_timer()),
            yn(caps.vpid()),
            yn(caps.rdrand_exiting()),
            yn(caps.ept_4level_wb()),
        );
        println!("cpu: IA32_FEATURE_CONTROL={:#x}", report.feature_control);
        report.vmx = Some(caps);
    } else {
        println!("cpu: vmx=no");
    }
    println!(
        "cpu: pmu version={} counters={} width={}",
        pmu.version, pmu.gp_counters, pmu.counter_width
    );
    report
}

/// IA32_TSC_AUX (SDM Vol. 3A §18.17.2; Vol. 2 RDPID, RDTSCP).
const IA32_TSC_AUX: u32 = 0xC000_0103;

/// Sets this CPU's IA32_TSC_AUX to the guest's value, 0 (one CPU, number
/// 0; `vmm::machine` refuses other values). RDPID does not exit under VMX
/// and reads the MSR directly: with the host's value there a guest would
/// see whatever the firmware left, different on each machine (issue 15).
/// The hypervisor itself never reads the MSR.
pub fn pin_tsc_aux() {
    let has = CpuId::new()
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|f| f.has_rdtscp());
    if has {
        // SAFETY: CPUID says the MSR exists (RDTSCP); writing it changes
        // only what RDTSCP/RDPID report.
        unsafe { x86::msr::wrmsr(IA32_TSC_AUX, 0) };
    }
}

//! MSR access that survives a #GP: for probing MSRs that CPUID claims but
//! the CPU (or emulator) may not implement, such as the PMU counters
//! (`vmx::counter::pmu`). The faulting RDMSR/WRMSR sits at a known label;
//! the #GP handler (`idt::exception_handler`) resumes at the recovery label
//! instead of stopping the machine (SDM Vol. 3A §6.15: #GP is a fault, the
//! saved RIP is the faulting instruction).
core::arch::global_asm!(
    r#"
.section .text.msr_probe, "ax"
.global ftv_rdmsr_safe
ftv_rdmsr_safe:
    mov ecx, edi
.global ftv_rdmsr_insn
ftv_rdmsr_insn:
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [rsi], rax
    xor eax, eax
    ret
.global ftv_rdmsr_fault
ftv_rdmsr_fault:
    mov eax, 1
    ret

.global ftv_wrmsr_safe
ftv_wrmsr_safe:
    mov ecx, edi
    mov rax, rsi
    mov rdx, rsi
    shr rdx, 32
.global ftv_wrmsr_insn
ftv_wrmsr_insn:
    wrmsr
    xor eax, eax
    ret
.global ftv_wrmsr_fault
ftv_wrmsr_fault:
    mov eax, 1
    ret
"#
);

extern "C" {
    fn ftv_rdmsr_safe(msr: u32, out: *mut u64) -> u64;
    fn ftv_wrmsr_safe(msr: u32, value: u64) -> u64;
    fn ftv_rdmsr_insn();
    fn ftv_rdmsr_fault();
    fn ftv_wrmsr_insn();
    fn ftv_wrmsr_fault();
}

/// Where to resume after a #GP at `rip`, if `rip` is a probing access.
pub fn gp_fixup(rip: u64) -> Option<u64> {
    if rip == ftv_rdmsr_insn as *const () as u64 {
        Some(ftv_rdmsr_fault as *const () as u64)
    } else if rip == ftv_wrmsr_insn as *const () as u64 {
        Some(ftv_wrmsr_fault as *const () as u64)
    } else {
        None
    }
}

/// RDMSR; `None` if it raised #GP.
pub fn read_safe(msr: u32) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the routine touches only ECX/EAX/EDX and `v`; a #GP on its
    // RDMSR resumes at the fault label via `gp_fixup`.
    (unsafe { ftv_rdmsr_safe(msr, &mut v) } == 0).then_some(v)
}

/// WRMSR; `false` if it raised #GP. Only for MSRs whose writing cannot
/// disturb the hypervisor (performance counters).
pub fn write_safe(msr: u32, value: u64) -> bool {
    // SAFETY: callers write only PMU MSRs, which the host does not use; a
    // #GP resumes at the fault label via `gp_fixup`.
    unsafe { ftv_wrmsr_safe(msr, value) == 0 }
}

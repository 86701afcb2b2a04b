//! The host/guest world switch: all VM entry/exit assembly in one place
//! (Intel SDM Vol. 3C §26 "VM Entries", §28.5 "Loading Host State").
//!
//! `vmx_enter(regs, launched, stamps)` saves the host's callee-saved
//! registers, writes HOST_RSP, loads the guest GPRs from `regs` (layout of
//! `vmx::exit::GuestRegs`, indexed by register number) and executes
//! VMLAUNCH or VMRESUME. A VM exit lands at `vmx_exit` (HOST_RIP), which
//! stores the guest GPRs back and returns 0. If the entry instruction
//! itself fails, it returns 1 (VMfailInvalid) or 2 (VMfailValid).
//!
//! `stamps` receives the host TSC read by a fixed instruction sequence
//! just before the entry (`[0]`) and by the first instructions at HOST_RIP
//! (`[1]`). In Bochs the TSC is the emulated instruction count, so the
//! difference is the guest's instructions plus a constant (the `preempt`
//! execution counter, `vmx::counter::preempt`); keep both paths free of
//! data-dependent branches.
use vmx::exit::GuestRegs;

core::arch::global_asm!(
    r#"
.section .text.vmx_switch, "ax"
.global vmx_enter
vmx_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdx
    push rdi
    mov r8, rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r8], rax
    mov rax, 0x6C14
    vmwrite rax, rsp
    cmp rsi, 0
    mov rax, [rdi + 0]
    mov rcx, [rdi + 8]
    mov rdx, [rdi + 16]
    mov rbx, [rdi + 24]
    mov rbp, [rdi + 40]
    mov rsi, [rdi + 48]
    mov r8,  [rdi + 64]
    mov r9,  [rdi + 72]
    mov r10, [rdi + 80]
    mov r11, [rdi + 88]
    mov r12, [rdi + 96]
    mov r13, [rdi + 104]
    mov r14, [rdi + 112]
    mov r15, [rdi + 120]
    mov rdi, [rdi + 56]
    jne vmx_do_resume
    vmlaunch
    jmp vmx_entry_failed
vmx_do_resume:
    vmresume
vmx_entry_failed:
    mov eax, 2
    mov ecx, 1
    cmovc eax, ecx
    pop rdi
    pop rdx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

.global vmx_exit
vmx_exit:
    push rax
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rdx, [rsp + 24]
    mov [rdx + 8], rax
    pop rdx
    pop rax
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0], rax
    mov [rdi + 8], rcx
    mov [rdi + 16], rdx
    mov [rdi + 24], rbx
    mov [rdi + 40], rbp
    mov [rdi + 48], rsi
    mov [rdi + 64], r8
    mov [rdi + 72], r9
    mov [rdi + 80], r10
    mov [rdi + 88], r11
    mov [rdi + 96], r12
    mov [rdi + 104], r13
    mov [rdi + 112], r14
    mov [rdi + 120], r15
    pop rax
    mov [rdi + 56], rax
    pop rdi
    pop rdx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);

extern "C" {
    fn vmx_enter(regs: *mut GuestRegs, launched: u64, stamps: *mut [u64; 2]) -> u64;
    fn vmx_exit();
}

/// Address of the VM-exit entry point (HOST_RIP).
pub fn exit_entry() -> u64 {
    vmx_exit as *const () as u64
}

/// How a VM entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The guest ran and exited; read the exit reason.
    Exited,
    /// VMLAUNCH/VMRESUME failed: VMfailInvalid.
    FailInvalid,
    /// VMLAUNCH/VMRESUME failed: VMfailValid (see VM-instruction error).
    FailValid,
}

/// Runs the guest until the next VM exit; `stamps` gets the host TSC
/// just before the entry and just after the exit.
///
/// # Safety
/// A VMCS must be current with complete, valid host state (HOST_RIP =
/// [`exit_entry`]) and the guest state must not let the guest reach host
/// memory (EPT on).
pub unsafe fn enter(regs: &mut GuestRegs, launched: bool, stamps: &mut [u64; 2]) -> Entry {
    // SAFETY: forwarded from the caller; `regs` and `stamps` outlive the
    // call and the assembly preserves every callee-saved register and the
    // stack.
    match unsafe { vmx_enter(regs, launched as u64, stamps) } {
        0 => Entry::Exited,
        1 => Entry::FailInvalid,
        _ => Entry::FailValid,
    }
}

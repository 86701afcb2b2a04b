//! The guest's x87/SSE state (issue 15, "checkpoints cover ... the FPU/SSE
//! state"; DESIGN.md §6 divergence detection).
//!
//! The hypervisor is built for `x86_64-unknown-none` (soft float: it never
//! executes an x87, MMX or SSE instruction), so the guest's x87/SSE
//! registers stay in the CPU across VM exits; no save or restore is needed
//! around them. The guest sees no XSAVE (CPUID hides it), so the legacy
//! FXSAVE image (512 bytes) is all of that state. Three things follow:
//!
//! * [`init_host`]: the hypervisor's own CR0/CR4 (loaded at every VM exit
//!   from the VMCS host fields) let FXSAVE and FXRSTOR run in VMX root
//!   operation and cover the XMM registers: CR0.EM and CR0.TS clear,
//!   CR4.OSFXSR set (SDM Vol. 1 §10.5.1: without OSFXSR, whether FXSAVE
//!   saves XMM0-15 is implementation dependent);
//! * [`reset_guest`]: every run starts its guest with the same x87/SSE
//!   state (FNINIT's, MXCSR 0x1F80, XMM zero), whatever ran before it on
//!   this CPU (firmware, or the recording before a same-boot replay);
//! * [`digest`]: a checkpoint word, so a replay whose floating-point or
//!   vector state differs diverges at the next checkpoint.

/// The legacy FXSAVE area: 512 bytes, 16-byte aligned.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// Bytes of the image that are architectural state (the x87 environment
/// and registers, MXCSR, XMM0-15); bytes 416..512 are reserved or for
/// software and FXSAVE leaves them as they were.
const STATE_BYTES: usize = 416;

/// CR0.MP, CR0.EM, CR0.TS; CR4.OSFXSR, CR4.OSXMMEXCPT.
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;

/// The hypervisor's CR0/CR4 from `cr0`/`cr4` (as the VMX fixed bits left
/// them) with the FXSAVE/FXRSTOR bits set: pure, host-tested.
pub fn host_bits(cr0: u64, cr4: u64) -> (u64, u64) {
    (
        (cr0 | CR0_MP) & !(CR0_EM | CR0_TS),
        cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT,
    )
}

/// Sets the CR0/CR4 bits FXSAVE/FXRSTOR need in VMX root operation (before
/// the VMCS host fields are written from CR0/CR4).
pub fn init_host() {
    let (cr0, cr4): (u64, u64);
    // SAFETY: reading CR0/CR4 in ring 0 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    let (new0, new4) = host_bits(cr0, cr4);
    // SAFETY: only the x87/SSE control bits change (MP set, EM and TS
    // clear, OSFXSR and OSXMMEXCPT set); paging, protection and the VMX
    // bits are written back as they were. The hypervisor itself executes
    // no x87/SSE instruction, so nothing of its own depends on them.
    unsafe {
        core::arch::asm!("mov cr0, {}", in(reg) new0, options(nostack));
        core::arch::asm!("mov cr4, {}", in(reg) new4, options(nostack));
    }
}

/// The x87/SSE state a guest starts with: FNINIT's control word 0x037F,
/// MXCSR 0x1F80 (all exceptions masked, round to nearest), everything else
/// zero (empty x87 stack, XMM0-15 zero).
fn reset_image() -> FxArea {
    let mut a = FxArea([0; 512]);
    a.0[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
    a.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
    a
}

/// Loads the reset image into the CPU: the guest about to run starts from
/// it ([`init_host`] must have run).
pub fn reset_guest() {
    let image = reset_image();
    // SAFETY: `image` is a valid, 16-byte-aligned FXSAVE image (reserved
    // MXCSR bits clear: no #GP); CR0.EM/TS are clear and CR4.OSFXSR set
    // (`init_host`), so FXRSTOR64 neither faults nor skips the XMM part.
    unsafe {
        core::arch::asm!("fxrstor64 [{}]", in(reg) image.0.as_ptr(), options(nostack, readonly));
    }
}

/// A digest of the guest's x87/SSE state now (the CPU's: the hypervisor
/// never changes it).
pub fn digest() -> u64 {
    let mut area = FxArea([0; 512]);
    // SAFETY: `area` is 512 writable bytes, 16-byte aligned; CR0.EM/TS are
    // clear (`init_host`), so FXSAVE64 does not fault.
    unsafe {
        core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack));
    }
    ft::replay::hash_bytes(ft::replay::HASH_SEED, &area.0[..STATE_BYTES])
}

/// The guest's x87/SSE state now, as the FXSAVE image (a repair's Vcpu
/// chunk carries it).
pub fn save() -> [u8; 512] {
    let mut area = FxArea([0; 512]);
    // SAFETY: as in `digest`.
    unsafe {
        core::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack));
    }
    area.0
}

/// Loads an FXSAVE image into the CPU (the guest continues with it).
/// `false`, nothing loaded, if reserved MXCSR bits are set (FXRSTOR would
/// fault: SDM Vol. 1 §10.5.1.1; MXCSR_MASK 0xFFBF is the narrowest).
pub fn restore(image: &[u8; 512]) -> bool {
    let mxcsr = u32::from_le_bytes([image[24], image[25], image[26], image[27]]);
    if mxcsr & !0xFFBF != 0 {
        return false;
    }
    let mut area = FxArea([0; 512]);
    area.0.copy_from_slice(image);
    // SAFETY: a 16-byte-aligned 512-byte image with valid MXCSR; CR0.EM/TS
    // clear and CR4.OSFXSR set (`init_host`).
    unsafe {
        core::arch::asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, readonly));
    }
    true
}

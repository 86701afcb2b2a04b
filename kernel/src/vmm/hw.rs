//! VMX hardware access: VMXON, the current VMCS through `vmread`/`vmwrite`
//! (the `x86` crate), control registers (SDM Vol. 3C §24.7 "Enabling and
//! Entering VMX Operation", §25.11 "Software Use of the VMCS").
use alloc::alloc::{alloc_zeroed, Layout};
use vmx::caps::VmxCaps;
use vmx::vmcs::{Field, VmcsAccess};
use vmx::Error;

/// The current VMCS of this CPU.
pub struct HwVmcs {
    /// Physical address of the VMCS region (kept for VMCLEAR on migration).
    pub region: u64,
}

fn alloc_page() -> u64 {
    let layout = Layout::from_size_align(4096, 4096).expect("page layout");
    // SAFETY: non-zero size layout; the allocation is never freed (VMX
    // regions live as long as the hypervisor).
    let p = unsafe { alloc_zeroed(layout) };
    assert!(!p.is_null(), "out of memory for a VMX region");
    p as u64
}

pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 in ring 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Clears CR0.CD and CR0.NW (caching on). Bochs's VM entry and exit keep
/// these two bits from the CPU's current CR0 instead of loading them from
/// the VMCS (its `VMX_KEEP_CR0_BITS`; real hardware loads them), so in
/// Bochs the guest starts with whatever the host had — the firmware's
/// CD|NW on a fresh boot, the guest's own last value after a previous
/// run. Clearing them before each run makes the guest start with the
/// CR0 its VMCS field names on both.
pub fn enable_caching() {
    const CD_NW: u64 = (1 << 30) | (1 << 29);
    let cr0 = read_cr0();
    if cr0 & CD_NW != 0 {
        // SAFETY: clearing CD/NW only turns caching on; every other bit
        // (PE, PG, NE, WP, ...) is written back unchanged.
        unsafe { core::arch::asm!("mov cr0, {}", in(reg) cr0 & !CD_NW, options(nostack)) };
    }
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 in ring 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 in ring 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// Sets the fixed bits in CR0/CR4 that VMX operation needs and executes
/// VMXON with a fresh region.
pub fn enable(caps: &VmxCaps) -> Result<(), Error> {
    let cr0 = (read_cr0() | caps.cr0_fixed0) & caps.cr0_fixed1;
    let cr4 = (read_cr4() | caps.cr4_fixed0 | (1 << 13)) & caps.cr4_fixed1;
    // SAFETY: the new values keep paging and protection as they are and add
    // only the bits VMX requires (NE, VMXE), per the fixed-bit MSRs.
    unsafe {
        core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        core::arch::asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
    // FXSAVE/FXRSTOR of the guest's x87/SSE state in root operation.
    crate::arch::fpu::init_host();
    let region = alloc_page();
    // SAFETY: `region` is a fresh, 4 KiB-aligned, identity-mapped page.
    unsafe { (region as *mut u32).write(caps.vmcs_revision) };
    // SAFETY: CR0/CR4 satisfy VMX, the region holds the revision identifier.
    unsafe { x86::bits64::vmx::vmxon(region) }.map_err(|_| Error::VmFailInvalid {
        instruction: "VMXON",
    })
}

impl HwVmcs {
    /// Allocates a VMCS, clears it and makes it current.
    pub fn new(caps: &VmxCaps) -> Result<HwVmcs, Error> {
        let region = alloc_page();
        // SAFETY: fresh 4 KiB-aligned page, owned by this VMCS.
        unsafe { (region as *mut u32).write(caps.vmcs_revision) };
        // SAFETY: VMX is on; the region is valid for VMCLEAR/VMPTRLD.
        unsafe { x86::bits64::vmx::vmclear(region) }.map_err(|_| Error::VmFailInvalid {
            instruction: "VMCLEAR",
        })?;
        // SAFETY: as above.
        unsafe { x86::bits64::vmx::vmptrld(region) }.map_err(|_| Error::VmFailInvalid {
            instruction: "VMPTRLD",
        })?;
        Ok(HwVmcs { region })
    }

    fn fail(&self, instruction: &'static str) -> Error {
        // SAFETY: reading the VM-instruction error of the current VMCS.
        match unsafe { x86::bits64::vmx::vmread(Field::VmInstructionError.encoding()) } {
            Ok(number) => Error::VmFailValid {
                instruction,
                number,
            },
            Err(_) => Error::VmFailInvalid { instruction },
        }
    }
}

impl VmcsAccess for HwVmcs {
    fn read(&self, field: Field) -> Result<u64, Error> {
        // SAFETY: this VMCS is current (made so in `new`, single CPU).
        unsafe { x86::bits64::vmx::vmread(field.encoding()) }.map_err(|_| self.fail("VMREAD"))
    }

    fn write(&mut self, field: Field, value: u64) -> Result<(), Error> {
        // SAFETY: this VMCS is current; field encodings come from the SDM.
        unsafe { x86::bits64::vmx::vmwrite(field.encoding(), value) }
            .map_err(|_| self.fail("VMWRITE"))
    }
}

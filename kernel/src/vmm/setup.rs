//! Filling the VMCS: execution controls from the capability MSRs, host
//! state of this kernel, guest state for the loader's start mode (Intel SDM
//! Vol. 3C §25.2-25.8 fields, §27.2-27.3 entry checks).
use super::hw::{read_cr0, read_cr3, read_cr4};
use crate::arch::gdt;
use kernel::loader::GuestStart;
use vmx::caps::{bits, VmxCaps};
use vmx::exit::cr::{CR0_NE, CR0_PE, CR0_PG, CR4_VMXE};
use vmx::exit::GuestRegs;
use vmx::vmcs::{Field, VmcsAccess};
use vmx::Error;

/// Control values chosen for this CPU.
#[derive(Debug, Clone, Copy)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
}

/// `save_timer`: also set exit control bit 22 "save VMX-preemption timer
/// value" (the execution counters read the timer back on every exit).
/// `pause_exiting`: PAUSE exits (when the CPU offers it), so that a guest
/// spinning on a device the output rule holds back can be parked (FT pair).
pub fn controls(caps: &VmxCaps, save_timer: bool, pause_exiting: bool) -> Result<Controls, Error> {
    let pin = caps.pin.compute(
        "pinbased",
        &[
            (
                bits::PIN_EXTERNAL_INTERRUPT_EXITING,
                "external-interrupt exiting",
            ),
            (3, "NMI exiting"),
            (bits::PIN_PREEMPTION_TIMER, "VMX-preemption timer"),
        ],
    )?;
    let mut want = alloc::vec![
        (bits::PROC_HLT_EXITING, "HLT exiting"),
        (10, "MWAIT exiting"),
        (11, "RDPMC exiting"),
        (bits::PROC_RDTSC_EXITING, "RDTSC exiting"),
        (24, "unconditional I/O exiting"),
        (29, "MONITOR exiting"),
        (bits::PROC_SECONDARY, "activate secondary controls"),
    ];
    if pause_exiting && caps.proc.supports(bits::PROC_PAUSE_EXITING) {
        want.push((bits::PROC_PAUSE_EXITING, "PAUSE exiting"));
    }
    let proc = caps.proc.compute("procbased", &want)?;
    let mut want2 = alloc::vec![
        (bits::PROC2_EPT, "enable EPT"),
        (bits::PROC2_RDTSCP, "enable RDTSCP"),
        (bits::PROC2_UNRESTRICTED_GUEST, "unrestricted guest"),
        (bits::PROC2_RDRAND_EXITING, "RDRAND exiting"),
    ];
    if caps.proc2.supports(bits::PROC2_RDSEED_EXITING) {
        want2.push((bits::PROC2_RDSEED_EXITING, "RDSEED exiting"));
    }
    let proc2 = caps.proc2.compute("procbased2", &want2)?;
    let mut want_exit = alloc::vec![
        (9, "host address-space size"),
        (15, "acknowledge interrupt on exit"),
        (18, "save IA32_PAT"),
        (19, "load IA32_PAT"),
        (20, "save IA32_EFER"),
        (21, "load IA32_EFER"),
    ];
    if save_timer {
        want_exit.push((
            bits::EXIT_SAVE_PREEMPTION_TIMER,
            "save VMX-preemption timer value",
        ));
    }
    let exit = caps.exit.compute("exit", &want_exit)?;
    let entry = caps
        .entry
        .compute("entry", &[(14, "load IA32_PAT"), (15, "load IA32_EFER")])?;
    Ok(Controls {
        pin,
        proc,
        proc2,
        exit,
        entry,
    })
}

fn sgdt_sidt() -> (u64, u64) {
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: SGDT/SIDT store 10 bytes into the buffers; no side effects.
    unsafe {
        core::arch::asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack));
    }
    let base = |b: &[u8; 10]| u64::from_le_bytes(b[2..10].try_into().expect("8 bytes"));
    (base(&gdtr), base(&idtr))
}

pub fn write_host_state(v: &mut impl VmcsAccess, exit_rip: u64) -> Result<(), Error> {
    let (gdt_base, idt_base) = sgdt_sidt();
    debug_assert_eq!(gdt_base, gdt::gdt_base());
    super::hw::enable_caching();
    v.write(Field::HostCr0, read_cr0())?;
    v.write(Field::HostCr3, read_cr3())?;
    v.write(Field::HostCr4, read_cr4())?;
    v.write(Field::HostCsSelector, gdt::KERNEL_CS as u64)?;
    for f in [
        Field::HostSsSelector,
        Field::HostDsSelector,
        Field::HostEsSelector,
    ] {
        v.write(f, gdt::KERNEL_DS as u64)?;
    }
    v.write(Field::HostFsSelector, 0)?;
    v.write(Field::HostGsSelector, 0)?;
    v.write(Field::HostTrSelector, gdt::TSS_SEL as u64)?;
    v.write(Field::HostFsBase, 0)?;
    v.write(Field::HostGsBase, 0)?;
    v.write(Field::HostTrBase, gdt::tss_base())?;
    v.write(Field::HostGdtrBase, gdt_base)?;
    v.write(Field::HostIdtrBase, idt_base)?;
    v.write(Field::HostSysenterCs, 0)?;
    v.write(Field::HostSysenterEsp, 0)?;
    v.write(Field::HostSysenterEip, 0)?;
    // SAFETY: reading IA32_EFER / IA32_PAT, architectural MSRs.
    let (efer, pat) = unsafe { (x86::msr::rdmsr(0xC000_0080), x86::msr::rdmsr(0x277)) };
    v.write(Field::HostIa32Efer, efer)?;
    v.write(Field::HostIa32Pat, pat)?;
    v.write(Field::HostRip, exit_rip)?;
    Ok(())
}

pub fn write_controls(
    v: &mut impl VmcsAccess,
    c: &Controls,
    caps: &VmxCaps,
    eptp: u64,
) -> Result<(), Error> {
    v.write(Field::PinBasedControls, c.pin as u64)?;
    v.write(Field::ProcBasedControls, c.proc as u64)?;
    v.write(Field::SecondaryControls, c.proc2 as u64)?;
    v.write(Field::ExitControls, c.exit as u64)?;
    v.write(Field::EntryControls, c.entry as u64)?;
    v.write(Field::ExceptionBitmap, 0)?;
    v.write(Field::PageFaultErrorCodeMask, 0)?;
    v.write(Field::PageFaultErrorCodeMatch, 0)?;
    v.write(Field::Cr3TargetCount, 0)?;
    v.write(Field::ExitMsrStoreCount, 0)?;
    v.write(Field::ExitMsrLoadCount, 0)?;
    v.write(Field::EntryMsrLoadCount, 0)?;
    v.write(Field::EntryInterruptionInfo, 0)?;
    v.write(Field::EptPointer, eptp)?;
    v.write(Field::VmcsLinkPointer, u64::MAX)?;
    // With unrestricted guest, PE and PG belong to the guest; every other
    // forced CR0 bit (NE) is host-owned. CR4: VMXE plus every bit the CPU
    // does not allow.
    let cr0_mask = caps.cr0_fixed0 & !(CR0_PE | CR0_PG);
    let cr4_mask = caps.cr4_fixed0 | !caps.cr4_fixed1 | CR4_VMXE;
    v.write(Field::Cr0GuestHostMask, cr0_mask)?;
    v.write(Field::Cr4GuestHostMask, cr4_mask)?;
    Ok(())
}

/// Guest state at the loader's start point: flat 32-bit protected mode,
/// paging off (Multiboot §3.2; Linux boot.rst "32-bit Boot Protocol", which
/// also wants `__BOOT_CS` = 0x10 / `__BOOT_DS` = 0x18 from a loaded GDT and
/// ESI = boot_params).
pub fn write_guest_state(
    v: &mut impl VmcsAccess,
    caps: &VmxCaps,
    start: GuestStart,
    regs: &mut GuestRegs,
) -> Result<(), Error> {
    let (entry, eax, ebx, esi, (cs, ds), (gdt_base, gdt_limit)) = match start {
        GuestStart::Protected32 { entry, eax, ebx } => (entry, eax, ebx, 0, (0x08, 0x10), (0, 0)),
        GuestStart::Linux32 {
            entry,
            boot_params,
            gdt,
        } => (entry, 0, 0, boot_params, (0x10, 0x18), (gdt, 31)),
    };
    // CD/NW clear in the guest's CR0, and (Bochs) in the CPU's: see
    // `hw::enable_caching` (a same-boot replay starts after the guest ran).
    super::hw::enable_caching();
    // The same x87/SSE state at the start of every run (`arch::fpu`).
    crate::arch::fpu::reset_guest();
    let cr0_guest = CR0_PE | (1 << 4); // PE | ET
    v.write(Field::Cr0ReadShadow, cr0_guest)?;
    v.write(
        Field::GuestCr0,
        cr0_guest | (caps.cr0_fixed0 & !(CR0_PE | CR0_PG)) | CR0_NE,
    )?;
    v.write(Field::Cr4ReadShadow, 0)?;
    v.write(Field::GuestCr4, caps.cr4_fixed0 | CR4_VMXE)?;
    v.write(Field::GuestCr3, 0)?;
    v.write(Field::GuestDr7, 0x400)?;
    v.write(Field::GuestRsp, 0)?;
    v.write(Field::GuestRip, entry as u64)?;
    v.write(Field::GuestRflags, 0x2)?;
    let code = (
        Field::GuestCsSelector,
        Field::GuestCsBase,
        Field::GuestCsLimit,
        Field::GuestCsAccessRights,
    );
    v.write(code.0, cs)?;
    v.write(code.1, 0)?;
    v.write(code.2, 0xFFFF_FFFF)?;
    v.write(code.3, 0xC09B)?;
    for (sel, base, limit, ar) in [
        (
            Field::GuestSsSelector,
            Field::GuestSsBase,
            Field::GuestSsLimit,
            Field::GuestSsAccessRights,
        ),
        (
            Field::GuestDsSelector,
            Field::GuestDsBase,
            Field::GuestDsLimit,
            Field::GuestDsAccessRights,
        ),
        (
            Field::GuestEsSelector,
            Field::GuestEsBase,
            Field::GuestEsLimit,
            Field::GuestEsAccessRights,
        ),
        (
            Field::GuestFsSelector,
            Field::GuestFsBase,
            Field::GuestFsLimit,
            Field::GuestFsAccessRights,
        ),
        (
            Field::GuestGsSelector,
            Field::GuestGsBase,
            Field::GuestGsLimit,
            Field::GuestGsAccessRights,
        ),
    ] {
        v.write(sel, ds)?;
        v.write(base, 0)?;
        v.write(limit, 0xFFFF_FFFF)?;
        v.write(ar, 0xC093)?;
    }
    v.write(Field::GuestLdtrSelector, 0)?;
    v.write(Field::GuestLdtrBase, 0)?;
    v.write(Field::GuestLdtrLimit, 0)?;
    v.write(Field::GuestLdtrAccessRights, 0x1_0000)?; // unusable
    v.write(Field::GuestTrSelector, 0)?;
    v.write(Field::GuestTrBase, 0)?;
    v.write(Field::GuestTrLimit, 0x67)?;
    v.write(Field::GuestTrAccessRights, 0x8B)?; // present, busy 32-bit TSS
    v.write(Field::GuestGdtrBase, gdt_base.into())?;
    v.write(Field::GuestGdtrLimit, gdt_limit)?;
    v.write(Field::GuestIdtrBase, 0)?;
    v.write(Field::GuestIdtrLimit, 0)?;
    v.write(Field::GuestIa32Efer, 0)?;
    v.write(Field::GuestIa32Pat, 0x0007_0406_0007_0406)?;
    v.write(Field::GuestIa32Debugctl, 0)?;
    v.write(Field::GuestSysenterCs, 0)?;
    v.write(Field::GuestSysenterEsp, 0)?;
    v.write(Field::GuestSysenterEip, 0)?;
    v.write(Field::GuestInterruptibility, 0)?;
    v.write(Field::GuestActivityState, 0)?;
    v.write(Field::GuestPendingDebugExceptions, 0)?;
    *regs = GuestRegs::default();
    regs.gpr[vmx::exit::RAX] = eax as u64;
    regs.gpr[vmx::exit::RBX] = ebx as u64;
    regs.gpr[6] = esi as u64; // RSI (x86 register number 6)
    Ok(())
}

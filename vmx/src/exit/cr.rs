//! Control-register access exits (reason 28; SDM Vol. 3C Table 28-3 exit
//! qualification, §25.6.6 guest/host masks and read shadows).
//!
//! The CR0 mask covers the bits VMX forces (NE); the CR4 mask covers VMXE and
//! every bit the CPU does not allow. A guest write that changes a masked bit
//! (as seen through the shadow) exits here and is emulated completely:
//! shadow = what the guest wrote, real = that plus the forced bits. Enabling
//! paging with EFER.LME set activates IA-32e mode (EFER.LMA and the
//! "IA-32e mode guest" entry control), as the CPU would.
use super::{inject_exception, skip_instruction, vector, Action, GuestRegs, Platform, Stop};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_VMXE: u64 = 1 << 13;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// VM-entry control bit 9.
pub const ENTRY_IA32E_MODE: u64 = 1 << 9;

fn gp(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    inject_exception(vmcs, vector::GP, Some(0))?;
    Ok(Action::Resume)
}

fn read_gpr(vmcs: &impl VmcsAccess, regs: &GuestRegs, r: usize) -> u64 {
    if r == 4 {
        vmcs.get(Field::GuestRsp)
    } else {
        regs.gpr[r]
    }
}

/// Emulates `mov cr0, value`.
pub fn write_cr0(vmcs: &mut impl VmcsAccess, value: u64) -> Result<Option<Action>, Error> {
    if value >> 32 != 0 || (value & CR0_PG != 0 && value & CR0_PE == 0) {
        return gp(vmcs).map(Some);
    }
    let old = vmcs.get(Field::GuestCr0);
    let mut efer = vmcs.get(Field::GuestIa32Efer);
    let mut entry = vmcs.get(Field::EntryControls);
    if old & CR0_PG == 0 && value & CR0_PG != 0 {
        if efer & EFER_LME != 0 {
            if vmcs.get(Field::GuestCr4) & CR4_PAE == 0 {
                return gp(vmcs).map(Some);
            }
            efer |= EFER_LMA;
            entry |= ENTRY_IA32E_MODE;
        } else if vmcs.get(Field::GuestCr4) & CR4_PAE != 0 {
            // PAE paging outside long mode needs the PDPTEs loaded from
            // guest memory (SDM §4.4.1); not emulated.
            return Ok(Some(Action::Stop(Stop::Unsupported {
                reason: super::reason::CR_ACCESS,
                what: "enabling 32-bit PAE paging through an emulated CR0 write",
                rip: vmcs.get(Field::GuestRip),
            })));
        }
    } else if old & CR0_PG != 0 && value & CR0_PG == 0 && efer & EFER_LMA != 0 {
        efer &= !EFER_LMA;
        entry &= !ENTRY_IA32E_MODE;
    }
    vmcs.write(Field::GuestIa32Efer, efer)?;
    vmcs.write(Field::EntryControls, entry)?;
    vmcs.write(Field::Cr0ReadShadow, value)?;
    vmcs.write(Field::GuestCr0, value | CR0_NE)?;
    Ok(None)
}

/// Emulates `mov cr4, value`.
pub fn write_cr4(vmcs: &mut impl VmcsAccess, value: u64) -> Result<Option<Action>, Error> {
    let mask = vmcs.get(Field::Cr4GuestHostMask);
    // Masked bits other than VMXE are bits this CPU cannot set; VMX itself
    // is not offered to the guest.
    if value & mask != 0 {
        return gp(vmcs).map(Some);
    }
    vmcs.write(Field::Cr4ReadShadow, value)?;
    vmcs.write(Field::GuestCr4, value | CR4_VMXE)?;
    Ok(None)
}

pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    _platform: &mut impl Platform,
) -> Result<Action, Error> {
    let q = vmcs.get(Field::ExitQualification);
    let cr = q & 0xf;
    let access = (q >> 4) & 3;
    let gpr = ((q >> 8) & 0xf) as usize;
    let rip = vmcs.get(Field::GuestRip);
    let unsupported = |what| {
        Ok(Action::Stop(Stop::Unsupported {
            reason: super::reason::CR_ACCESS,
            what,
            rip,
        }))
    };
    match (access, cr) {
        (0, 0) => {
            if let Some(a) = write_cr0(vmcs, read_gpr(vmcs, regs, gpr))? {
                return Ok(a);
            }
        }
        (0, 4) => {
            if let Some(a) = write_cr4(vmcs, read_gpr(vmcs, regs, gpr))? {
                return Ok(a);
            }
        }
        (0, 3) => vmcs.write(Field::GuestCr3, read_gpr(vmcs, regs, gpr))?,
        (1, 3) => {
            if gpr == 4 {
                return unsupported("mov rsp, cr3");
            }
            regs.gpr[gpr] = vmcs.get(Field::GuestCr3);
        }
        (2, _) => {
            // CLTS
            let cr0 = vmcs.get(Field::GuestCr0);
            vmcs.write(Field::GuestCr0, cr0 & !CR0_TS)?;
            let shadow = vmcs.get(Field::Cr0ReadShadow);
            vmcs.write(Field::Cr0ReadShadow, shadow & !CR0_TS)?;
        }
        (3, _) => {
            // LMSW: loads CR0[3:0] but cannot clear PE.
            let src = (q >> 16) & 0xf;
            let shadow = vmcs.get(Field::Cr0ReadShadow);
            let value = (shadow & !0xe) | (src & 0xf) | (shadow & CR0_PE);
            if let Some(a) = write_cr0(vmcs, value)? {
                return Ok(a);
            }
        }
        _ => return unsupported("control-register access"),
    }
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    fn vmcs() -> FakeVmcs {
        let mut v = FakeVmcs::default();
        v.write(Field::GuestCr0, CR0_PE | CR0_NE).unwrap();
        v.write(Field::Cr0ReadShadow, CR0_PE).unwrap();
        v.write(Field::Cr0GuestHostMask, CR0_NE).unwrap();
        v.write(Field::Cr4GuestHostMask, CR4_VMXE | (1 << 22))
            .unwrap();
        v.write(Field::GuestCr4, CR4_VMXE).unwrap();
        v.write(Field::ExitInstructionLength, 3).unwrap();
        v
    }

    #[test]
    fn enabling_paging_with_lme_enters_long_mode() {
        let mut v = vmcs();
        v.write(Field::GuestCr4, CR4_VMXE | CR4_PAE).unwrap();
        v.write(Field::GuestIa32Efer, EFER_LME).unwrap();
        let mut r = GuestRegs::default();
        r.gpr[0] = CR0_PE | CR0_NE | CR0_PG;
        // mov cr0, rax
        v.write(Field::ExitQualification, 0).unwrap();
        assert_eq!(
            handle(&mut v, &mut r, &mut FakePlatform::default()).unwrap(),
            Action::Resume
        );
        assert_eq!(v.get(Field::GuestIa32Efer), EFER_LME | EFER_LMA);
        assert_ne!(v.get(Field::EntryControls) & ENTRY_IA32E_MODE, 0);
        assert_eq!(v.get(Field::Cr0ReadShadow), CR0_PE | CR0_NE | CR0_PG);
        assert_eq!(v.get(Field::GuestRip), 3);
    }

    #[test]
    fn long_mode_without_pae_is_gp() {
        let mut v = vmcs();
        v.write(Field::GuestIa32Efer, EFER_LME).unwrap();
        let mut r = GuestRegs::default();
        r.gpr[0] = CR0_PE | CR0_PG;
        handle(&mut v, &mut r, &mut FakePlatform::default()).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
    }

    #[test]
    fn cr4_vmxe_or_unsupported_bit_is_gp_and_ne_forced() {
        let mut v = vmcs();
        let mut r = GuestRegs::default();
        r.gpr[1] = CR4_VMXE;
        v.write(Field::ExitQualification, 4 | (1 << 8)).unwrap();
        handle(&mut v, &mut r, &mut FakePlatform::default()).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
        let mut v = vmcs();
        v.write(Field::ExitQualification, 4 | (1 << 8)).unwrap();
        r.gpr[1] = CR4_PAE;
        handle(&mut v, &mut r, &mut FakePlatform::default()).unwrap();
        assert_eq!(v.get(Field::GuestCr4), CR4_PAE | CR4_VMXE);
        assert_eq!(v.get(Field::Cr4ReadShadow), CR4_PAE);
        // CR0 write clearing NE keeps it set for real
        let mut v = vmcs();
        r.gpr[0] = CR0_PE;
        v.write(Field::ExitQualification, 0).unwrap();
        handle(&mut v, &mut r, &mut FakePlatform::default()).unwrap();
        assert_eq!(v.get(Field::GuestCr0), CR0_PE | CR0_NE);
        assert_eq!(v.get(Field::Cr0ReadShadow), CR0_PE);
    }
}

//! RDMSR / WRMSR exits (reasons 31, 32). MSR bitmaps are off, so every MSR
//! access exits and goes through one explicit list:
//!
//! | MSR | handling |
//! |---|---|
//! | IA32_TIME_STAMP_COUNTER (0x10) | read: the guest TSC from the platform; write: #GP |
//! | IA32_SYSENTER_CS/ESP/EIP (0x174-0x176) | guest-state fields of the VMCS |
//! | IA32_DEBUGCTL (0x1D9) | VMCS; only 0 accepted |
//! | IA32_PAT (0x277) | VMCS guest PAT |
//! | IA32_EFER (0xC000_0080) | VMCS guest EFER; SCE/LME/NXE writable, LMA kept, other bits #GP |
//! | IA32_FS_BASE / GS_BASE (0xC000_0100/101) | VMCS segment bases |
//! | everything else | the platform's list (LAPIC, syscall MSRs, feature MSRs); unknown = #GP, as for an MSR the CPU lacks (the kernel's platform counts it and reports it once) |
use super::{
    inject_exception, skip_instruction, vector, Action, GuestRegs, Platform, RAX, RCX, RDX,
};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

pub const IA32_TSC: u32 = 0x10;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_DEBUGCTL: u32 = 0x1D9;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_EFER: u32 = 0xC000_0080;
pub const IA32_FS_BASE: u32 = 0xC000_0100;
pub const IA32_GS_BASE: u32 = 0xC000_0101;

const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

fn vmcs_field(msr: u32) -> Option<Field> {
    Some(match msr {
        IA32_SYSENTER_CS => Field::GuestSysenterCs,
        IA32_SYSENTER_ESP => Field::GuestSysenterEsp,
        IA32_SYSENTER_EIP => Field::GuestSysenterEip,
        IA32_DEBUGCTL => Field::GuestIa32Debugctl,
        IA32_PAT => Field::GuestIa32Pat,
        IA32_EFER => Field::GuestIa32Efer,
        IA32_FS_BASE => Field::GuestFsBase,
        IA32_GS_BASE => Field::GuestGsBase,
        _ => return None,
    })
}

fn is_canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

fn gp(vmcs: &mut impl VmcsAccess) -> Result<Action, Error> {
    inject_exception(vmcs, vector::GP, Some(0))?;
    Ok(Action::Resume)
}

pub fn handle_read(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    let msr = regs.gpr[RCX] as u32;
    let value = if msr == IA32_TSC {
        Some(platform.rdtsc())
    } else if let Some(f) = vmcs_field(msr) {
        Some(vmcs.get(f))
    } else {
        platform.rdmsr(msr)
    };
    let Some(value) = value else { return gp(vmcs) };
    regs.gpr[RAX] = value & 0xffff_ffff;
    regs.gpr[RDX] = value >> 32;
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

pub fn handle_write(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    let msr = regs.gpr[RCX] as u32;
    let value = (regs.gpr[RDX] << 32) | (regs.gpr[RAX] & 0xffff_ffff);
    let ok = match msr {
        IA32_TSC => false,
        IA32_EFER => {
            if value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                false
            } else {
                let old = vmcs.get(Field::GuestIa32Efer);
                // LMA is owned by the processor; changing LME while paging
                // is on is a #GP on real hardware too.
                let paging = vmcs.get(Field::GuestCr0) & (1 << 31) != 0;
                if paging && (old ^ value) & EFER_LME != 0 {
                    false
                } else {
                    vmcs.write(Field::GuestIa32Efer, (value & !EFER_LMA) | (old & EFER_LMA))?;
                    true
                }
            }
        }
        IA32_DEBUGCTL => {
            if value == 0 {
                vmcs.write(Field::GuestIa32Debugctl, 0)?;
                true
            } else {
                false
            }
        }
        IA32_FS_BASE | IA32_GS_BASE | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP => {
            if is_canonical(value) {
                vmcs.write(vmcs_field(msr).expect("listed above"), value)?;
                true
            } else {
                false
            }
        }
        IA32_SYSENTER_CS | IA32_PAT => {
            vmcs.write(vmcs_field(msr).expect("listed above"), value)?;
            true
        }
        _ => platform.wrmsr(msr, value),
    };
    if !ok {
        return gp(vmcs);
    }
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    fn regs(msr: u32, value: u64) -> GuestRegs {
        let mut r = GuestRegs::default();
        r.gpr[RCX] = msr as u64;
        r.gpr[RAX] = value & 0xffff_ffff;
        r.gpr[RDX] = value >> 32;
        r
    }

    #[test]
    fn unknown_msr_is_gp() {
        let mut v = FakeVmcs::default();
        let mut p = FakePlatform::default();
        handle_write(&mut v, &mut regs(0x480, 0), &mut p).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
        assert_eq!(v.get(Field::GuestRip), 0, "RIP not advanced on #GP");
        v.write(Field::EntryInterruptionInfo, 0).unwrap();
        handle_read(&mut v, &mut regs(0x3A, 0), &mut p).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
    }

    #[test]
    fn efer_write_keeps_lma_and_rejects_reserved() {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitInstructionLength, 2).unwrap();
        let mut p = FakePlatform::default();
        handle_write(&mut v, &mut regs(IA32_EFER, EFER_LME | EFER_SCE), &mut p).unwrap();
        assert_eq!(v.get(Field::GuestIa32Efer), EFER_LME | EFER_SCE);
        handle_write(&mut v, &mut regs(IA32_EFER, 1 << 5), &mut p).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
    }

    #[test]
    fn platform_msrs_and_tsc() {
        let mut v = FakeVmcs::default();
        let mut p = FakePlatform {
            tsc: 0x1_0000_0002,
            ..Default::default()
        };
        p.msrs.insert(0x838, 5);
        let mut r = regs(0x838, 0);
        handle_read(&mut v, &mut r, &mut p).unwrap();
        assert_eq!(r.gpr[RAX], 5);
        let mut r = regs(IA32_TSC, 0);
        handle_read(&mut v, &mut r, &mut p).unwrap();
        assert_eq!((r.gpr[RDX], r.gpr[RAX]), (1, 2));
        handle_write(&mut v, &mut regs(0x838, 9), &mut p).unwrap();
        assert_eq!(p.msrs[&0x838], 9);
    }

    #[test]
    fn non_canonical_fs_base_is_gp() {
        let mut v = FakeVmcs::default();
        let mut p = FakePlatform::default();
        handle_write(
            &mut v,
            &mut regs(IA32_FS_BASE, 0x0000_8000_0000_0000),
            &mut p,
        )
        .unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0D);
    }
}

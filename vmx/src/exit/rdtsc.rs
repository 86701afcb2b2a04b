//! RDTSC / RDTSCP exits (reasons 16, 51): the guest's time-stamp counter is
//! produced by the hypervisor (the hook record/replay uses, DESIGN.md §1.1).
use super::{skip_instruction, Action, GuestRegs, Platform, RAX, RCX, RDX};
use crate::vmcs::VmcsAccess;
use crate::Error;

pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
    rdtscp: bool,
) -> Result<Action, Error> {
    let tsc = platform.rdtsc();
    regs.gpr[RAX] = tsc & 0xffff_ffff;
    regs.gpr[RDX] = tsc >> 32;
    if rdtscp {
        regs.gpr[RCX] = platform.tsc_aux() as u64;
    }
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::{FakeVmcs, Field};

    #[test]
    fn splits_tsc_into_edx_eax() {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitInstructionLength, 2).unwrap();
        let mut p = FakePlatform {
            tsc: 0x1234_5678_9abc_def0,
            ..Default::default()
        };
        let mut r = GuestRegs::default();
        r.gpr[RCX] = 77;
        handle(&mut v, &mut r, &mut p, false).unwrap();
        assert_eq!(
            (r.gpr[RDX], r.gpr[RAX], r.gpr[RCX]),
            (0x1234_5678, 0x9abc_def0, 77)
        );
        handle(&mut v, &mut r, &mut p, true).unwrap();
        assert_eq!(r.gpr[RCX], 0);
        assert_eq!(v.get(Field::GuestRip), 4);
    }
}

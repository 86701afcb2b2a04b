//! RDRAND / RDSEED exits (reasons 57, 61; SDM Vol. 3C §28.2.5 exit
//! instruction information): the random value comes from the hypervisor and
//! CF = 1 signals success, as the instruction does.
use super::{skip_instruction, Action, GuestRegs, Platform};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

const RFLAGS_CF: u64 = 1;
const RFLAGS_STATUS: u64 = 0x8D5; // CF PF AF ZF SF OF

pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
    seed: bool,
) -> Result<Action, Error> {
    let info = vmcs.get(Field::ExitInstructionInfo);
    let reg = ((info >> 3) & 0xf) as usize;
    let size = match (info >> 11) & 3 {
        0 => 2,
        1 => 4,
        _ => 8,
    };
    let value = platform.random(seed);
    regs.gpr[reg] = match size {
        2 => (regs.gpr[reg] & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    };
    let rflags = vmcs.get(Field::GuestRflags);
    vmcs.write(Field::GuestRflags, (rflags & !RFLAGS_STATUS) | RFLAGS_CF)?;
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn writes_destination_with_operand_size_and_sets_cf() {
        let mut v = FakeVmcs::default();
        // destination RBX (3), 32-bit operand
        v.write(Field::ExitInstructionInfo, (3 << 3) | (1 << 11))
            .unwrap();
        v.write(Field::GuestRflags, 0x2 | 0x40).unwrap();
        let mut p = FakePlatform {
            rand: 0xaaaa_bbbb_cccc_dddd,
            ..Default::default()
        };
        let mut r = GuestRegs::default();
        r.gpr[3] = u64::MAX;
        handle(&mut v, &mut r, &mut p, false).unwrap();
        assert_eq!(r.gpr[3], 0xcccc_dddd);
        assert_eq!(v.get(Field::GuestRflags), 0x3);
        // 16-bit merges
        v.write(Field::ExitInstructionInfo, 3 << 3).unwrap();
        r.gpr[3] = 0x1111_2222_3333_4444;
        handle(&mut v, &mut r, &mut p, true).unwrap();
        assert_eq!(r.gpr[3], 0x1111_2222_3333_dddd);
    }
}

//! I/O instruction exits (reason 30; SDM Vol. 3C Table 28-5 exit
//! qualification for I/O instructions). IN/OUT of 1, 2 or 4 bytes go to the
//! platform's port bus. String I/O (INS/OUTS) is not emulated: the guest is
//! stopped with a clear report rather than mis-emulated.
use super::{skip_instruction, Action, GuestRegs, Platform, Stop, RAX};
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

/// The decoded exit qualification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    pub port: u16,
    pub size: u8,
    pub is_in: bool,
    pub string: bool,
}

pub fn decode(qualification: u64) -> IoExit {
    IoExit {
        size: (qualification & 7) as u8 + 1,
        is_in: qualification & (1 << 3) != 0,
        string: qualification & (1 << 4) != 0,
        port: (qualification >> 16) as u16,
    }
}

pub fn handle(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    let io = decode(vmcs.get(Field::ExitQualification));
    if io.string || !matches!(io.size, 1 | 2 | 4) {
        return Ok(Action::Stop(Stop::Unsupported {
            reason: super::reason::IO,
            what: "string I/O (INS/OUTS) or bad operand size",
            rip: vmcs.get(Field::GuestRip),
        }));
    }
    let mask: u64 = match io.size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    if io.is_in {
        let v = platform.port_in(io.port, io.size) as u64 & mask;
        regs.gpr[RAX] = if io.size == 4 {
            v // a 32-bit write zero-extends
        } else {
            (regs.gpr[RAX] & !mask) | v
        };
    } else {
        platform.port_out(io.port, io.size, (regs.gpr[RAX] & mask) as u32);
    }
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    fn exit_with(q: u64) -> FakeVmcs {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitQualification, q).unwrap();
        v.write(Field::ExitInstructionLength, 1).unwrap();
        v
    }

    #[test]
    fn out_byte_masks_rax() {
        let mut v = exit_with(0x3f8 << 16);
        let mut p = FakePlatform::default();
        let mut r = GuestRegs::default();
        r.gpr[RAX] = 0x1234_5641;
        handle(&mut v, &mut r, &mut p).unwrap();
        assert_eq!(p.out, vec![(0x3f8, 1, 0x41)]);
        assert_eq!(v.get(Field::GuestRip), 1);
    }

    #[test]
    fn in_merges_small_and_zero_extends_dword() {
        let mut p = FakePlatform::default();
        p.ports.insert(0x3fd, 0x60);
        let mut r = GuestRegs::default();
        r.gpr[RAX] = 0xffff_ffff_ffff_ffff;
        handle(&mut exit_with((0x3fd << 16) | 8), &mut r, &mut p).unwrap();
        assert_eq!(r.gpr[RAX], 0xffff_ffff_ffff_ff60);
        handle(&mut exit_with((0x3fd << 16) | 8 | 3), &mut r, &mut p).unwrap();
        assert_eq!(r.gpr[RAX], 0x60);
        // unclaimed port reads all ones
        handle(&mut exit_with((0x80 << 16) | 8 | 1), &mut r, &mut p).unwrap();
        assert_eq!(r.gpr[RAX], 0xffff);
    }

    #[test]
    fn string_io_stops_with_report() {
        let mut v = exit_with((0x3f8 << 16) | (1 << 4));
        let a = handle(
            &mut v,
            &mut GuestRegs::default(),
            &mut FakePlatform::default(),
        )
        .unwrap();
        assert!(matches!(a, Action::Stop(Stop::Unsupported { .. })));
    }
}

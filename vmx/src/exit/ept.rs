//! EPT-violation exits (reason 48; SDM Vol. 3C §28.2.1 Table 28-7 exit
//! qualification). Guest RAM is fully mapped, so a violation is either an
//! MMIO access to a device on the platform's bus (decoded and emulated,
//! RIP advanced) or an access to nothing, which stops the guest with a
//! report naming the address, the access type and RIP.
use super::{Action, GuestRegs, MmioRequest, Platform, Stop};
use crate::guest_walk::PagingMode;
use crate::vmcs::{Field, VmcsAccess};
use crate::Error;

fn access_kind(q: u64) -> &'static str {
    if q & 4 != 0 {
        "instruction fetch"
    } else if q & 2 != 0 {
        "write"
    } else {
        "read"
    }
}

/// Code-segment mode from CS access rights and EFER.LMA.
pub fn code_bits(vmcs: &impl VmcsAccess) -> u8 {
    let ar = vmcs.get(Field::GuestCsAccessRights);
    let lma = vmcs.get(Field::GuestIa32Efer) & (1 << 10) != 0;
    if lma && ar & (1 << 13) != 0 {
        64
    } else if ar & (1 << 14) != 0 {
        32
    } else {
        16
    }
}

/// The guest's paging state from CR0, CR4 and EFER.
pub fn paging_mode(vmcs: &impl VmcsAccess) -> PagingMode {
    let cr4 = vmcs.get(Field::GuestCr4);
    PagingMode {
        paging: vmcs.get(Field::GuestCr0) & (1 << 31) != 0,
        long_mode: vmcs.get(Field::GuestIa32Efer) & (1 << 10) != 0,
        pae: cr4 & (1 << 5) != 0,
        pse: cr4 & (1 << 4) != 0,
        la57: cr4 & (1 << 12) != 0,
        cr3: vmcs.get(Field::GuestCr3),
    }
}

pub fn handle_violation(
    vmcs: &mut impl VmcsAccess,
    regs: &mut GuestRegs,
    platform: &mut impl Platform,
) -> Result<Action, Error> {
    let q = vmcs.get(Field::ExitQualification);
    let gpa = vmcs.get(Field::GuestPhysicalAddress);
    let rip = vmcs.get(Field::GuestRip);
    let stop = |what| {
        Ok(Action::Stop(Stop::UnmappedAccess {
            gpa,
            access: what,
            rip,
        }))
    };
    if q & 4 != 0 {
        return stop(access_kind(q));
    }
    // A write to RAM that dirty logging protects: recorded, retried.
    if q & 2 != 0 && platform.dirty_write(gpa) {
        return Ok(Action::Resume);
    }
    regs.sync_rsp(vmcs);
    let mut req = MmioRequest {
        regs,
        rip,
        instruction_len: 0,
        is_write: q & 2 != 0,
        code_bits: code_bits(vmcs),
        cs_base: vmcs.get(Field::GuestCsBase),
        paging: paging_mode(vmcs),
    };
    match platform.mmio(gpa, &mut req) {
        None => stop(access_kind(q)),
        Some(Err(what)) => Ok(Action::Stop(Stop::Unsupported {
            reason: super::reason::EPT_VIOLATION,
            what,
            rip,
        })),
        Some(Ok(())) => {
            let len = req.instruction_len;
            let rsp = req.regs.gpr[4];
            vmcs.write(Field::GuestRsp, rsp)?;
            vmcs.write(Field::GuestRip, rip.wrapping_add(len))?;
            let intr = vmcs.get(Field::GuestInterruptibility);
            vmcs.write(Field::GuestInterruptibility, intr & !0b11)?;
            Ok(Action::Resume)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::fake::FakePlatform;
    use crate::vmcs::FakeVmcs;

    #[test]
    fn access_to_nothing_stops_with_address() {
        let mut v = FakeVmcs::default();
        v.write(Field::ExitQualification, 1).unwrap();
        v.write(Field::GuestPhysicalAddress, 0xF_0000_0000).unwrap();
        v.write(Field::GuestRip, 0x10_1234).unwrap();
        let a = handle_violation(
            &mut v,
            &mut GuestRegs::default(),
            &mut FakePlatform::default(),
        )
        .unwrap();
        assert_eq!(
            a,
            Action::Stop(Stop::UnmappedAccess {
                gpa: 0xF_0000_0000,
                access: "read",
                rip: 0x10_1234
            })
        );
    }

    #[test]
    fn modes() {
        let mut v = FakeVmcs::default();
        v.write(Field::GuestCsAccessRights, 0xA09B).unwrap();
        v.write(Field::GuestIa32Efer, 0x500).unwrap();
        assert_eq!(code_bits(&v), 64);
        v.write(Field::GuestCsAccessRights, 0xC09B).unwrap();
        v.write(Field::GuestIa32Efer, 0).unwrap();
        assert_eq!(code_bits(&v), 32);
        v.write(Field::GuestCsAccessRights, 0x9B).unwrap();
        assert_eq!(code_bits(&v), 16);
    }
}

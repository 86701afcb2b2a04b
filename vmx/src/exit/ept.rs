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

/// An exit during the delivery of an event (SDM Vol. 3C §28.2.4 "Information
/// for VM Exits That Occur During Event Delivery"): a write-protected page
/// under dirty logging (the guest's stack, its IDT or TSS) faults while an
/// interrupt is being delivered. The event was not delivered: it is set up
/// again for the next VM entry (§28.2.4 and §30.3 "Handling of
/// IDT-vectoring information"), or the guest loses it (and a LAPIC vector
/// acknowledged for it stays in service for good).
pub fn reinject_vectored_event(vmcs: &mut impl VmcsAccess) -> Result<(), Error> {
    let info = vmcs.get(Field::IdtVectoringInfo);
    if info & (1 << 31) == 0 {
        return Ok(());
    }
    // Vector, type, error-code-valid and valid (bits 30:12 reserved on entry).
    vmcs.write(Field::EntryInterruptionInfo, info & 0x8000_0FFF)?;
    if info & (1 << 11) != 0 {
        let code = vmcs.get(Field::IdtVectoringErrorCode);
        vmcs.write(Field::EntryExceptionErrorCode, code)?;
    }
    // Software interrupts and exceptions (types 4, 5, 6) carry the length
    // of the instruction that raised them.
    if matches!((info >> 8) & 7, 4..=6) {
        let len = vmcs.get(Field::ExitInstructionLength);
        vmcs.write(Field::EntryInstructionLength, len)?;
    }
    Ok(())
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
        reinject_vectored_event(vmcs)?;
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
    fn an_event_cut_off_by_a_dirty_logging_fault_is_delivered_again() {
        struct Dirty(FakePlatform);
        impl Platform for Dirty {
            fn port_in(&mut self, p: u16, s: u8) -> u32 {
                self.0.port_in(p, s)
            }
            fn port_out(&mut self, p: u16, s: u8, v: u32) {
                self.0.port_out(p, s, v)
            }
            fn rdmsr(&mut self, m: u32) -> Option<u64> {
                self.0.rdmsr(m)
            }
            fn wrmsr(&mut self, m: u32, v: u64) -> bool {
                self.0.wrmsr(m, v)
            }
            fn rdtsc(&mut self) -> u64 {
                self.0.rdtsc()
            }
            fn random(&mut self, seed: bool) -> u64 {
                self.0.random(seed)
            }
            fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Error> {
                self.0.read_guest(gpa, buf)
            }
            fn console(&mut self, t: &str) {
                self.0.console(t)
            }
            fn mmio(
                &mut self,
                gpa: u64,
                a: &mut MmioRequest<'_>,
            ) -> Option<Result<(), &'static str>> {
                self.0.mmio(gpa, a)
            }
            fn dirty_write(&mut self, _gpa: u64) -> bool {
                true
            }
        }
        let mut v = FakeVmcs::default();
        v.write(Field::ExitQualification, 2).unwrap();
        v.write(Field::GuestPhysicalAddress, 0x7000).unwrap();
        // An external interrupt, vector 0x50, being delivered.
        v.write(Field::IdtVectoringInfo, 0x8000_0050).unwrap();
        let mut p = Dirty(FakePlatform::default());
        let a = handle_violation(&mut v, &mut GuestRegs::default(), &mut p).unwrap();
        assert_eq!(a, Action::Resume);
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0050);
        // A page fault (type 3, error code 2) being delivered.
        v.write(Field::IdtVectoringInfo, 0x8000_0B0E).unwrap();
        v.write(Field::IdtVectoringErrorCode, 2).unwrap();
        handle_violation(&mut v, &mut GuestRegs::default(), &mut p).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0x8000_0B0E);
        assert_eq!(v.get(Field::EntryExceptionErrorCode), 2);
        // Nothing was being delivered: nothing is injected.
        v.write(Field::EntryInterruptionInfo, 0).unwrap();
        v.write(Field::IdtVectoringInfo, 0x50).unwrap();
        handle_violation(&mut v, &mut GuestRegs::default(), &mut p).unwrap();
        assert_eq!(v.get(Field::EntryInterruptionInfo), 0);
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

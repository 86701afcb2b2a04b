//! The guest's state vector: the architectural registers a checkpoint
//! hashes (DESIGN.md §1.1, §6). The record/replay engine that logs and
//! checks it is `ft::replay`; this is the half that reads the VMCS.
use crate::exit::GuestRegs;
use crate::vmcs::{Field, VmcsAccess};

/// The registers of a checkpoint, in this order (named by
/// `ft::replay::STATE_NAMES`): RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
/// R8-R15, RIP, RFLAGS, CR0, CR3, CR4, EFER, FS.base, GS.base.
pub type StateVector = [u64; STATE_WORDS];

/// Words of the state vector: 24 registers, then a digest of the x87/SSE
/// state and, last, the digest of the devices' writes to guest memory,
/// both of which the caller fills in (this crate reads only the VMCS and
/// knows no devices; `ft::replay::STATE_WORDS` is the same number).
pub const STATE_WORDS: usize = 26;

/// The guest's architectural registers (GPRs with RSP from the VMCS).
pub fn state_vector(vmcs: &impl VmcsAccess, regs: &GuestRegs) -> StateVector {
    let mut s = [0u64; STATE_WORDS];
    s[..16].copy_from_slice(&regs.gpr);
    s[4] = vmcs.get(Field::GuestRsp);
    for (i, f) in [
        Field::GuestRip,
        Field::GuestRflags,
        Field::GuestCr0,
        Field::GuestCr3,
        Field::GuestCr4,
        Field::GuestIa32Efer,
        Field::GuestFsBase,
        Field::GuestGsBase,
    ]
    .into_iter()
    .enumerate()
    {
        s[16 + i] = vmcs.get(f);
    }
    s
}

/// The VMCS fields that are the vCPU's architectural state, beyond the
/// general registers (SDM Vol. 3C §25.4 "Guest-State Area"; the CR0/CR4
/// read shadows are what the guest reads back): what a repair's state
/// transfer carries (issue 16, `ft::state::Chunk::Vcpu`) so that the new
/// backup's vCPU resumes exactly where the serving one stopped, with the
/// interruptibility, activity state, pending debug exceptions and an event
/// being injected included.
pub const VCPU_FIELDS: [Field; 51] = [
    Field::GuestEsSelector,
    Field::GuestCsSelector,
    Field::GuestSsSelector,
    Field::GuestDsSelector,
    Field::GuestFsSelector,
    Field::GuestGsSelector,
    Field::GuestLdtrSelector,
    Field::GuestTrSelector,
    Field::GuestIa32Debugctl,
    Field::GuestIa32Pat,
    Field::GuestIa32Efer,
    Field::GuestPdpte0,
    Field::GuestPdpte1,
    Field::GuestPdpte2,
    Field::GuestPdpte3,
    Field::EntryInterruptionInfo,
    Field::EntryExceptionErrorCode,
    Field::EntryInstructionLength,
    Field::GuestEsLimit,
    Field::GuestCsLimit,
    Field::GuestSsLimit,
    Field::GuestDsLimit,
    Field::GuestFsLimit,
    Field::GuestGsLimit,
    Field::GuestLdtrLimit,
    Field::GuestTrLimit,
    Field::GuestGdtrLimit,
    Field::GuestIdtrLimit,
    Field::GuestEsAccessRights,
    Field::GuestCsAccessRights,
    Field::GuestSsAccessRights,
    Field::GuestDsAccessRights,
    Field::GuestFsAccessRights,
    Field::GuestGsAccessRights,
    Field::GuestLdtrAccessRights,
    Field::GuestTrAccessRights,
    Field::GuestInterruptibility,
    Field::GuestActivityState,
    Field::GuestSysenterCs,
    Field::Cr0ReadShadow,
    Field::Cr4ReadShadow,
    Field::GuestCr0,
    Field::GuestCr3,
    Field::GuestCr4,
    Field::GuestDr7,
    Field::GuestRsp,
    Field::GuestRip,
    Field::GuestRflags,
    Field::GuestPendingDebugExceptions,
    Field::GuestSysenterEsp,
    Field::GuestSysenterEip,
];

/// Segment and descriptor-table bases, read like the rest.
const BASES: [Field; 10] = [
    Field::GuestEsBase,
    Field::GuestCsBase,
    Field::GuestSsBase,
    Field::GuestDsBase,
    Field::GuestFsBase,
    Field::GuestGsBase,
    Field::GuestLdtrBase,
    Field::GuestTrBase,
    Field::GuestGdtrBase,
    Field::GuestIdtrBase,
];

fn vcpu_fields() -> impl Iterator<Item = Field> {
    VCPU_FIELDS.into_iter().chain(BASES)
}

/// The vCPU's state in the VMCS, as (field encoding, value) pairs.
pub fn capture_vcpu(vmcs: &impl VmcsAccess) -> Result<alloc::vec::Vec<(u32, u64)>, crate::Error> {
    vcpu_fields()
        .map(|f| vmcs.read(f).map(|v| (f as u32, v)))
        .collect()
}

/// Writes a [`capture_vcpu`] into `vmcs`. Checked first, written after:
/// a list that names a field outside the vCPU state, or lacks one, is
/// refused before anything is written.
pub fn restore_vcpu(vmcs: &mut impl VmcsAccess, fields: &[(u32, u64)]) -> Result<(), crate::Error> {
    let mut writes = alloc::vec::Vec::with_capacity(fields.len());
    for &(encoding, value) in fields {
        let field =
            vcpu_fields()
                .find(|f| *f as u32 == encoding)
                .ok_or(crate::Error::BadVcpuState {
                    encoding,
                    missing: false,
                })?;
        writes.push((field, value));
    }
    if let Some(f) = vcpu_fields().find(|f| !writes.iter().any(|w| w.0 == *f)) {
        return Err(crate::Error::BadVcpuState {
            encoding: f as u32,
            missing: true,
        });
    }
    for (f, v) in writes {
        vmcs.write(f, v)?;
    }
    // The "IA-32e mode guest" entry control is no guest state of its own:
    // it follows EFER.LMA (SDM Vol. 3C §26.2.4), as the CR0 handler keeps
    // it. A VMCS set up for another start (a repair's joining node) gets
    // it from the restored EFER.
    let lma = vmcs.get(Field::GuestIa32Efer) & (1 << 10) != 0;
    let entry = vmcs.get(Field::EntryControls);
    let ia32e = crate::exit::cr::ENTRY_IA32E_MODE;
    vmcs.write(
        Field::EntryControls,
        if lma { entry | ia32e } else { entry & !ia32e },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ia32e_entry_control_follows_the_restored_efer() {
        let mut a = crate::vmcs::FakeVmcs::default();
        a.write(Field::GuestIa32Efer, 0x500).unwrap(); // LME | LMA
        let long = capture_vcpu(&a).unwrap();
        let mut b = crate::vmcs::FakeVmcs::default();
        b.write(Field::EntryControls, 0x11ff).unwrap();
        restore_vcpu(&mut b, &long).unwrap();
        assert_eq!(b.get(Field::EntryControls), 0x11ff | (1 << 9));
        a.write(Field::GuestIa32Efer, 0).unwrap();
        restore_vcpu(&mut b, &capture_vcpu(&a).unwrap()).unwrap();
        assert_eq!(b.get(Field::EntryControls), 0x11ff & !(1 << 9));
    }

    #[test]
    fn a_captured_vcpu_restores_into_another_vmcs_and_bad_lists_are_refused() {
        let mut a = crate::vmcs::FakeVmcs::default();
        for (i, f) in vcpu_fields().enumerate() {
            a.write(f, 0x1000 + i as u64).unwrap();
        }
        let state = capture_vcpu(&a).unwrap();
        assert_eq!(state.len(), 61);
        let mut b = crate::vmcs::FakeVmcs::default();
        restore_vcpu(&mut b, &state).unwrap();
        assert_eq!(capture_vcpu(&b).unwrap(), state);
        assert_eq!(b.get(Field::GuestRip), a.get(Field::GuestRip));
        // A host field smuggled in: refused, nothing written.
        let mut c = crate::vmcs::FakeVmcs::default();
        let mut bad = state.clone();
        bad.push((Field::HostCr3 as u32, 0xdead));
        let e = restore_vcpu(&mut c, &bad).unwrap_err();
        assert!(e.to_string().contains("not guest state"), "{e}");
        assert!(c.fields.is_empty());
        // A field missing: refused, nothing written.
        let e = restore_vcpu(&mut c, &state[1..]).unwrap_err();
        assert!(e.to_string().contains("lacks VMCS field 0x0800"), "{e}");
        assert!(c.fields.is_empty());
    }

    #[test]
    fn state_vector_takes_rsp_and_the_rest_from_the_vmcs() {
        let mut v = crate::vmcs::FakeVmcs::default();
        v.write(Field::GuestRsp, 0x8000).unwrap();
        v.write(Field::GuestRip, 0x1234).unwrap();
        let mut regs = GuestRegs::default();
        regs.gpr[0] = 5;
        let s = state_vector(&v, &regs);
        assert_eq!((s[0], s[4], s[16]), (5, 0x8000, 0x1234));
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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

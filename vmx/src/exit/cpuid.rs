//! CPUID exits (SDM Vol. 2A "CPUID"; exit reason 10): the guest sees one
//! fixed, documented CPU model, the same on every host, so a primary and a
//! backup on different machines present identical CPUs.
//!
//! The model ("ftvisor virtual CPU"): GenuineIntel family 6 model 0x3C
//! (Haswell-class baseline), one logical processor, x2APIC, invariant TSC,
//! RDRAND, RDTSCP, NX, SYSCALL, long mode; SSE through SSE4.2, POPCNT, CX16.
//! Hidden: VMX, PMU (leaf 0xA = 0), XSAVE/AVX, MCE/MCA, MTRR, SEP, monitor/
//! mwait, TSC-deadline, and everything in leaf 7. Leaf 0x4000_0000 carries
//! the signature `ftvisor-hv\0\0`; 0x4000_0001 announces the virtio-mmio
//! device layout ([`VIRTIO_LAYOUT`]); 0x4000_0010 gives the TSC and
//! LAPIC-timer frequencies in kHz. Unknown leaves return zeros.
use super::{skip_instruction, Action, GuestRegs, RAX, RBX, RCX, RDX};
use crate::vmcs::VmcsAccess;
use crate::Error;

/// Guest TSC frequency the model announces (kHz). The LAPIC timer runs at
/// the same rate (leaf 0x15 crystal = TSC, leaf 0x4000_0010).
pub const GUEST_TSC_KHZ: u32 = 1_000_000;

/// Leaf 0x4000_0001, the guest's virtio-mmio devices (kernel
/// `guestio`, which checks it against its layout): EAX = guest-physical base
/// of slot 0, EBX = number of slots, ECX = slot stride, EDX = interrupt
/// vector of slot 0 (slot i uses EDX + i).
pub const VIRTIO_LAYOUT: [u32; 4] = [0xFEB0_0000, 2, 0x1000, 0x50];

const fn sig(s: &[u8; 12]) -> [u32; 3] {
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

const VENDOR: [u32; 3] = sig(b"GenuineIntel");
/// Hypervisor signature in EBX, ECX, EDX of leaf 0x4000_0000.
pub const HV_SIGNATURE: [u32; 3] = sig(b"ftvisor-hv\0\0");
const BRAND: &[u8; 48] = b"ftvisor virtual CPU (Haswell-class)\0\0\0\0\0\0\0\0\0\0\0\0\0";

// Leaf 1 EDX: FPU DE PSE TSC MSR PAE CX8 APIC PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2
const LEAF1_EDX: u32 = (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 9)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
// Leaf 1 ECX: SSE3 SSSE3 CX16 SSE4.1 SSE4.2 x2APIC POPCNT RDRAND HYPERVISOR
const LEAF1_ECX: u32 = (1 << 0)
    | (1 << 9)
    | (1 << 13)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 23)
    | (1 << 30)
    | (1 << 31);

/// The model's answer for `(leaf, subleaf)` as `[eax, ebx, ecx, edx]`.
pub fn model(leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [0x16, VENDOR[0], VENDOR[2], VENDOR[1]],
        // family 6, model 0x3C, stepping 3; CLFLUSH 64 B, 1 logical CPU, APIC ID 0
        1 => [0x0003_06C3, (1 << 16) | (8 << 8), LEAF1_ECX, LEAF1_EDX],
        // ARAT: the LAPIC timer never stops (nothing to emulate; lets Linux
        // run without the PIT as its clock event when frequencies are known)
        6 => [1 << 2, 0, 0, 0],
        // TSC / core crystal ratio 1:1, crystal = TSC frequency in Hz
        0x15 => [1, 1, GUEST_TSC_KHZ.wrapping_mul(1000), 0],
        0x16 => [GUEST_TSC_KHZ / 1000, GUEST_TSC_KHZ / 1000, 100, 0],
        0x4000_0000 => [
            0x4000_0010,
            HV_SIGNATURE[0],
            HV_SIGNATURE[1],
            HV_SIGNATURE[2],
        ],
        0x4000_0001 => VIRTIO_LAYOUT,
        0x4000_0010 => [GUEST_TSC_KHZ, GUEST_TSC_KHZ, 0, 0],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        // LAHF/SAHF; SYSCALL, NX, RDTSCP, LM
        0x8000_0001 => [0, 0, 1, (1 << 11) | (1 << 20) | (1 << 27) | (1 << 29)],
        0x8000_0002..=0x8000_0004 => {
            let base = (leaf - 0x8000_0002) as usize * 16;
            let w = |i: usize| {
                let o = base + i * 4;
                u32::from_le_bytes([BRAND[o], BRAND[o + 1], BRAND[o + 2], BRAND[o + 3]])
            };
            [w(0), w(1), w(2), w(3)]
        }
        // invariant TSC
        0x8000_0007 => [0, 0, 0, 1 << 8],
        // 40 physical, 48 linear address bits
        0x8000_0008 => [0x3028, 0, 0, 0],
        _ => [0, 0, 0, 0],
    }
}

pub fn handle(vmcs: &mut impl VmcsAccess, regs: &mut GuestRegs) -> Result<Action, Error> {
    let leaf = regs.gpr[RAX] as u32;
    let subleaf = regs.gpr[RCX] as u32;
    let [a, b, c, d] = model(leaf, subleaf);
    regs.gpr[RAX] = a as u64;
    regs.gpr[RBX] = b as u64;
    regs.gpr[RCX] = c as u64;
    regs.gpr[RDX] = d as u64;
    skip_instruction(vmcs)?;
    Ok(Action::Resume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::{FakeVmcs, Field};

    #[test]
    fn vendor_and_signature() {
        let l0 = model(0, 0);
        let mut v = Vec::new();
        for r in [l0[1], l0[3], l0[2]] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&v, b"GenuineIntel");
        let h = model(0x4000_0000, 0);
        let mut s = Vec::new();
        for r in &h[1..] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"ftvisor-hv\0\0");
    }

    #[test]
    fn hides_vmx_pmu_xsave_and_shows_x2apic() {
        let l1 = model(1, 0);
        assert_eq!(l1[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(l1[2] & (1 << 26), 0, "XSAVE hidden");
        assert_ne!(l1[2] & (1 << 21), 0, "x2APIC shown");
        assert_eq!(model(0xA, 0), [0; 4], "no PMU");
        assert_eq!((l1[1] >> 16) & 0xff, 1, "one logical CPU");
    }

    #[test]
    fn handler_fills_registers_and_advances() {
        let mut v = FakeVmcs::default();
        v.write(Field::GuestRip, 0x100).unwrap();
        v.write(Field::ExitInstructionLength, 2).unwrap();
        let mut r = GuestRegs::default();
        r.gpr[RAX] = 0x8000_0000;
        r.gpr[RBX] = 0xdead;
        handle(&mut v, &mut r).unwrap();
        assert_eq!(r.gpr[RAX], 0x8000_0008);
        assert_eq!(r.gpr[RBX], 0);
        assert_eq!(v.get(Field::GuestRip), 0x102);
    }

    #[test]
    fn brand_string_is_readable() {
        let mut b = Vec::new();
        for leaf in 0x8000_0002..=0x8000_0004 {
            for r in model(leaf, 0) {
                b.extend_from_slice(&r.to_le_bytes());
            }
        }
        assert!(b.starts_with(b"ftvisor virtual CPU"));
    }
}

//! Entropy for the guest's RDRAND and RDSEED (issue 15 item 4; DESIGN.md
//! §1.1: their results are non-deterministic events, logged like RDTSC).
//! The value a guest gets comes from the CPU's own RDSEED/RDRAND when it
//! has them (retried as the SDM advises, Vol. 1 §7.3.17.1: ten RDRAND
//! attempts); only on a CPU without them, or one whose generator keeps
//! failing, from a seeded PRNG, which [`init`] warns about at boot.
use core::sync::atomic::{AtomicU8, Ordering};
use raw_cpuid::CpuId;

const RDRAND: u8 = 1;
const RDSEED: u8 = 2;

/// What the CPU offers, found by [`init`].
static HW: AtomicU8 = AtomicU8::new(0);

/// Looks the instructions up (CPUID.01H:ECX.RDRAND[30],
/// CPUID.(EAX=07H,ECX=0):EBX.RDSEED[18]) and says where guest randomness
/// will come from.
pub fn init() {
    let c = CpuId::new();
    let rdrand = c.get_feature_info().is_some_and(|f| f.has_rdrand());
    let rdseed = c
        .get_extended_feature_info()
        .is_some_and(|f| f.has_rdseed());
    HW.store(
        (u8::from(rdrand) * RDRAND) | (u8::from(rdseed) * RDSEED),
        Ordering::Relaxed,
    );
    match (rdrand, rdseed) {
        (true, true) => println!("entropy: the guest's RDRAND and RDSEED come from the CPU's"),
        (true, false) => println!(
            "entropy: the guest's RDRAND and RDSEED come from the CPU's RDRAND (no RDSEED)"
        ),
        _ => println!(
            "entropy: warning: this CPU has no RDRAND: the guest's RDRAND and RDSEED come from a PRNG seeded with the TSC, predictable to anyone who knows the boot time"
        ),
    }
}

/// A random value from the CPU: RDSEED for `seed` (falling back to
/// RDRAND), else RDRAND; `None` without either or if they keep failing.
pub fn hardware(seed: bool) -> Option<u64> {
    let hw = HW.load(Ordering::Relaxed);
    if seed && hw & RDSEED != 0 {
        for _ in 0..100 {
            // SAFETY: CPUID said the CPU has RDSEED.
            if let Some(v) = unsafe { rdseed() } {
                return Some(v);
            }
            core::hint::spin_loop();
        }
    }
    if hw & RDRAND != 0 {
        for _ in 0..10 {
            // SAFETY: CPUID said the CPU has RDRAND.
            if let Some(v) = unsafe { rdrand() } {
                return Some(v);
            }
        }
    }
    None
}

/// # Safety
/// The CPU must have RDRAND.
#[target_feature(enable = "rdrand")]
unsafe fn rdrand() -> Option<u64> {
    let mut v = 0u64;
    (core::arch::x86_64::_rdrand64_step(&mut v) == 1).then_some(v)
}

/// # Safety
/// The CPU must have RDSEED.
#[target_feature(enable = "rdseed")]
unsafe fn rdseed() -> Option<u64> {
    let mut v = 0u64;
    (core::arch::x86_64::_rdseed64_step(&mut v) == 1).then_some(v)
}

//! Guest registers that live in the CPU rather than in the VMCS while the
//! guest runs (SDM Vol. 3C §25.4 lists the guest state the VMCS holds; CR2
//! and DR0-DR3, DR6 are not in it): the hypervisor never writes them, so
//! between VM exits they hold the guest's values. A repair's transfer
//! (issue 16) carries them: a guest stopped between a page fault and its
//! handler's read of CR2 needs the faulting address there.

/// CR2 and DR0, DR1, DR2, DR3, DR6, as the guest left them.
pub fn save() -> (u64, [u64; 5]) {
    let (cr2, d0, d1, d2, d3, d6): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reading CR2 and the debug registers at CPL 0 has no side
    // effect; the hypervisor runs at CPL 0.
    unsafe {
        core::arch::asm!(
            "mov {cr2}, cr2",
            "mov {d0}, dr0",
            "mov {d1}, dr1",
            "mov {d2}, dr2",
            "mov {d3}, dr3",
            "mov {d6}, dr6",
            cr2 = out(reg) cr2,
            d0 = out(reg) d0,
            d1 = out(reg) d1,
            d2 = out(reg) d2,
            d3 = out(reg) d3,
            d6 = out(reg) d6,
            options(nomem, nostack, preserves_flags)
        );
    }
    (cr2, [d0, d1, d2, d3, d6])
}

/// Loads CR2 and DR0-DR3, DR6 for the guest. DR6's bits 63:32 must be 0
/// (a MOV to DR6 with them set faults, SDM Vol. 3B §18.2.3): refused
/// (`false`, nothing loaded) if they are not.
pub fn restore(cr2: u64, debug: [u64; 5]) -> bool {
    if debug[4] >> 32 != 0 {
        return false;
    }
    // SAFETY: CPL 0; CR2 takes any value; DR0-DR3 take any linear address
    // (breakpoints fire only as DR7 enables them, and DR7 is in the VMCS);
    // DR6's reserved upper half was checked above.
    unsafe {
        core::arch::asm!(
            "mov cr2, {cr2}",
            "mov dr0, {d0}",
            "mov dr1, {d1}",
            "mov dr2, {d2}",
            "mov dr3, {d3}",
            "mov dr6, {d6}",
            cr2 = in(reg) cr2,
            d0 = in(reg) debug[0],
            d1 = in(reg) debug[1],
            d2 = in(reg) debug[2],
            d3 = in(reg) debug[3],
            d6 = in(reg) debug[4],
            options(nomem, nostack, preserves_flags)
        );
    }
    true
}

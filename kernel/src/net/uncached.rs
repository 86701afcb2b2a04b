//! Marking the 2 MiB pages that hold a device's registers uncacheable.
//!
//! The boot trampoline identity-maps the first 4 GiB with write-back 2 MiB
//! pages (`boot/src/entry.S`). QEMU and Bochs do not model caches, so MMIO
//! works there either way, and on real machines the firmware's MTRRs
//! normally make the PCI hole UC (the stricter type wins). To not depend on
//! that, the NIC's BAR pages get PCD|PWT in their page-directory entry: with
//! the PAT bit clear that selects PAT entry 3, UC at power-on (Intel SDM
//! Vol. 3A §12.12.3 "Selecting a Memory Type from the PAT", Table 12-11).
const PCD: u64 = 1 << 4;
const PWT: u64 = 1 << 3;
const PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const PAGE_2M: u64 = 2 << 20;

/// Makes every 2 MiB page overlapping `[phys, phys + len)` uncacheable.
/// Returns false (changing nothing more) for a range the identity map does
/// not cover with 2 MiB pages.
pub fn mark_uncached(phys: u64, len: u64) -> bool {
    let mut page = phys & !(PAGE_2M - 1);
    let end = phys.saturating_add(len.max(1));
    while page < end {
        if page >= boot::IDENTITY_MAP_BYTES {
            return false;
        }
        let cr3: u64;
        // SAFETY: reading CR3 in ring 0 has no side effects.
        unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
        let pml4 = (cr3 & ADDR_MASK) as *const u64;
        // SAFETY: the page tables are identity mapped (they live in the
        // kernel image below 4 GiB); indices are < 512.
        let pdpte = unsafe { pml4.add(((page >> 39) & 511) as usize).read_volatile() };
        let pdpt = (pdpte & ADDR_MASK) as *const u64;
        // SAFETY: as above.
        let pde_table = unsafe { pdpt.add(((page >> 30) & 511) as usize).read_volatile() };
        let pd = (pde_table & ADDR_MASK) as *mut u64;
        // SAFETY: as above.
        let pde_ptr = unsafe { pd.add(((page >> 21) & 511) as usize) };
        // SAFETY: `pde_ptr` is a valid entry of the live page directory.
        let pde = unsafe { pde_ptr.read_volatile() };
        if pde & 1 == 0 || pde & PS == 0 {
            return false;
        }
        // SAFETY: only the cache-type bits of an MMIO page change; the
        // mapping stays the same identity mapping. INVLPG drops the stale TLB
        // entry.
        unsafe {
            pde_ptr.write_volatile(pde | PCD | PWT);
            core::arch::asm!("invlpg [{}]", in(reg) page, options(nostack));
        }
        page += PAGE_2M;
    }
    true
}

//! Extended page tables (Intel SDM Vol. 3C §29.3 "The Extended Page Table
//! Mechanism"): a 4-level identity-offset map of guest RAM onto one host
//! allocation. Guest-physical `[0, size)` maps to host-physical
//! `[host_base, host_base + size)` with 2 MiB pages, read/write/execute,
//! write-back. Nothing else is mapped: any other guest-physical access is an
//! EPT violation the hypervisor sees (MMIO or a guest fault report).
//!
//! Tables are heap-allocated and must be identity mapped in the host (their
//! virtual address is their physical address), as in the ftvisor kernel.
extern crate alloc;
use crate::Error;
use alloc::boxed::Box;
use alloc::vec::Vec;

const PAGE_2M: u64 = 2 << 20;
const READ_WRITE_EXECUTE: u64 = 0b111;
const MEMTYPE_WB: u64 = 6 << 3;
const LARGE_PAGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// One 4 KiB EPT paging structure.
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

impl Table {
    fn new() -> Box<Table> {
        Box::new(Table([0; 512]))
    }
    fn addr(&self) -> u64 {
        self as *const Table as u64
    }
}

/// The guest's EPT hierarchy.
pub struct Ept {
    pml4: Box<Table>,
    pdpt: Box<Table>,
    pds: Vec<Box<Table>>,
    guest_size: u64,
    host_base: u64,
}

impl Ept {
    /// Maps `guest_size` bytes of guest RAM onto `host_base` (both 2 MiB
    /// aligned; at most 512 GiB).
    pub fn new(guest_size: u64, host_base: u64) -> Result<Ept, Error> {
        if guest_size == 0
            || !guest_size.is_multiple_of(PAGE_2M)
            || !host_base.is_multiple_of(PAGE_2M)
        {
            return Err(Error::BadGuestMemory(
                "guest RAM must be 2 MiB aligned and sized",
            ));
        }
        if guest_size > 512 << 30 {
            return Err(Error::BadGuestMemory("guest RAM above 512 GiB"));
        }
        let mut ept = Ept {
            pml4: Table::new(),
            pdpt: Table::new(),
            pds: Vec::new(),
            guest_size,
            host_base,
        };
        ept.pml4.0[0] = ept.pdpt.addr() | READ_WRITE_EXECUTE;
        let pages = guest_size / PAGE_2M;
        for page in 0..pages {
            let (pdpt_i, pd_i) = ((page / 512) as usize, (page % 512) as usize);
            if pdpt_i == ept.pds.len() {
                let pd = Table::new();
                ept.pdpt.0[pdpt_i] = pd.addr() | READ_WRITE_EXECUTE;
                ept.pds.push(pd);
            }
            ept.pds[pdpt_i].0[pd_i] =
                (host_base + page * PAGE_2M) | READ_WRITE_EXECUTE | MEMTYPE_WB | LARGE_PAGE;
        }
        Ok(ept)
    }

    /// The EPT pointer for the VMCS: write-back, 4-level walk (SDM §25.6.11).
    pub fn pointer(&self) -> u64 {
        self.pml4.addr() | (3 << 3) | 6
    }

    pub fn guest_size(&self) -> u64 {
        self.guest_size
    }

    pub fn host_base(&self) -> u64 {
        self.host_base
    }

    /// Walks the tables like the CPU would: the host-physical address of
    /// `gpa`, or `None` (EPT violation).
    pub fn translate(&self, gpa: u64) -> Option<u64> {
        let pml4e = self.pml4.0[((gpa >> 39) & 511) as usize];
        if pml4e & READ_WRITE_EXECUTE == 0 || pml4e & ADDR_MASK != self.pdpt.addr() {
            return None;
        }
        let pdpte = self.pdpt.0[((gpa >> 30) & 511) as usize];
        if pdpte & READ_WRITE_EXECUTE == 0 {
            return None;
        }
        let pd = self.pds.iter().find(|pd| pd.addr() == pdpte & ADDR_MASK)?;
        let pde = pd.0[((gpa >> 21) & 511) as usize];
        if pde & READ_WRITE_EXECUTE == 0 || pde & LARGE_PAGE == 0 {
            return None;
        }
        Some((pde & ADDR_MASK & !(PAGE_2M - 1)) + (gpa & (PAGE_2M - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_ram_and_nothing_else() {
        let host = 0x4000_0000;
        let ept = Ept::new(64 << 20, host).unwrap();
        assert_eq!(ept.translate(0), Some(host));
        assert_eq!(ept.translate(0x12_3456), Some(host + 0x12_3456));
        assert_eq!(ept.translate((64 << 20) - 1), Some(host + (64 << 20) - 1));
        assert_eq!(ept.translate(64 << 20), None);
        assert_eq!(ept.translate(0xFEE0_0000), None);
        assert_eq!(ept.translate(1 << 39), None);
        let p = ept.pointer();
        assert_eq!(p & 0xfff, 0x1e);
    }

    #[test]
    fn spans_several_page_directories() {
        let ept = Ept::new(3 << 30, 0).unwrap();
        assert_eq!(ept.translate((2 << 30) + 5), Some((2 << 30) + 5));
        assert_eq!(ept.translate(3 << 30), None);
        assert_eq!(ept.pds.len(), 3);
    }

    #[test]
    fn rejects_unaligned() {
        assert!(Ept::new(3 << 20, 0).is_err());
        assert!(Ept::new(4 << 20, 0x1000).is_err());
        assert!(Ept::new(0, 0).is_err());
    }
}

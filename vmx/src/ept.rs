//! Extended page tables (Intel SDM Vol. 3C §29.3 "The Extended Page Table
//! Mechanism"): a 4-level identity-offset map of guest RAM onto one host
//! allocation. Guest-physical `[0, size)` maps to host-physical
//! `[host_base, host_base + size)` with 2 MiB pages, read/write/execute,
//! write-back. Nothing else is mapped: any other guest-physical access is an
//! EPT violation the hypervisor sees (MMIO or a guest fault report).
//!
//! Tables are heap-allocated and must be identity mapped in the host (their
//! virtual address is their physical address), as in the ftvisor kernel.
//!
//! Dirty logging (issue 16, a repair's pre-copy): [`Ept::start_dirty_log`]
//! splits every 2 MiB page into 4 KiB pages mapped read/execute only, so
//! the guest's first write to each page is an EPT violation that
//! [`Ept::on_write_violation`] records and turns writable (a permission
//! increase needs no INVEPT: SDM §29.4.3.3); [`Ept::take_dirty`] hands
//! over the pages written since the last call and protects them again
//! (the caller then invalidates the EPT's cached translations with INVEPT
//! before the guest runs). Writes the hypervisor's devices make into guest
//! RAM bypass the EPT: `kernel::guestio::DirtyLog` counts those.
extern crate alloc;
use crate::Error;
use alloc::boxed::Box;
use alloc::vec::Vec;

const PAGE_2M: u64 = 2 << 20;
const READ_WRITE_EXECUTE: u64 = 0b111;
const MEMTYPE_WB: u64 = 6 << 3;
const LARGE_PAGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const PAGE_4K: u64 = 4096;
const WRITE: u64 = 0b010;

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
    /// Dirty logging: one 4 KiB page table per 2 MiB region.
    pts: Vec<Box<Table>>,
    /// Pages written since the last [`Ept::take_dirty`], in order of the
    /// first write.
    dirty: Vec<u64>,
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
            pts: Vec::new(),
            dirty: Vec::new(),
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
        if pde & READ_WRITE_EXECUTE == 0 {
            return None;
        }
        if pde & LARGE_PAGE != 0 {
            return Some((pde & ADDR_MASK & !(PAGE_2M - 1)) + (gpa & (PAGE_2M - 1)));
        }
        let pt = self
            .pts
            .get((gpa / PAGE_2M) as usize)
            .filter(|pt| pt.addr() == pde & ADDR_MASK)?;
        let pte = pt.0[((gpa >> 12) & 511) as usize];
        if pte & READ_WRITE_EXECUTE == 0 {
            return None;
        }
        Some((pte & ADDR_MASK) + (gpa & (PAGE_4K - 1)))
    }

    /// Whether a guest write to `gpa` goes through without a violation.
    pub fn writable(&self, gpa: u64) -> bool {
        match self.pte(gpa) {
            Some((pt, i)) => self.pts[pt].0[i] & WRITE != 0,
            None => self.translate(gpa).is_some(),
        }
    }

    /// Whether dirty logging is on.
    pub fn dirty_logging(&self) -> bool {
        !self.pts.is_empty()
    }

    /// Starts dirty logging: every guest page read/execute only, nothing
    /// dirty yet. The caller invalidates cached translations (INVEPT)
    /// before the guest runs again.
    pub fn start_dirty_log(&mut self) {
        if self.dirty_logging() {
            return;
        }
        let regions = self.guest_size / PAGE_2M;
        for region in 0..regions {
            let mut pt = Table::new();
            let base = self.host_base + region * PAGE_2M;
            for (i, e) in pt.0.iter_mut().enumerate() {
                *e = (base + i as u64 * PAGE_4K) | (READ_WRITE_EXECUTE & !WRITE) | MEMTYPE_WB;
            }
            let (pdpt_i, pd_i) = ((region / 512) as usize, (region % 512) as usize);
            self.pds[pdpt_i].0[pd_i] = pt.addr() | READ_WRITE_EXECUTE;
            self.pts.push(pt);
        }
        self.dirty.clear();
    }

    /// The table and entry of `gpa`'s 4 KiB mapping while dirty logging.
    fn pte(&self, gpa: u64) -> Option<(usize, usize)> {
        if !self.dirty_logging() || gpa >= self.guest_size {
            return None;
        }
        Some(((gpa / PAGE_2M) as usize, ((gpa >> 12) & 511) as usize))
    }

    /// An EPT violation on a guest write to `gpa`: `true` if it was dirty
    /// logging's (the page is now writable and recorded; resume the guest
    /// at the same instruction), `false` if it is not (outside RAM, or no
    /// logging: MMIO or a fault, as before).
    pub fn on_write_violation(&mut self, gpa: u64) -> bool {
        let Some((pt, i)) = self.pte(gpa) else {
            return false;
        };
        let e = &mut self.pts[pt].0[i];
        if *e & WRITE == 0 {
            *e |= WRITE;
            self.dirty.push(gpa / PAGE_4K);
        }
        true
    }

    /// The pages written since the last call (page numbers, in order of
    /// their first write), protected again; the caller invalidates cached
    /// translations (INVEPT) before the guest runs again.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        let pages = core::mem::take(&mut self.dirty);
        for &p in &pages {
            if let Some((pt, i)) = self.pte(p * PAGE_4K) {
                self.pts[pt].0[i] &= !WRITE;
            }
        }
        pages
    }

    /// Ends dirty logging: 2 MiB pages, read/write/execute, again (the
    /// caller invalidates cached translations).
    pub fn stop_dirty_log(&mut self) {
        let regions = self.guest_size / PAGE_2M;
        for region in 0..regions {
            let (pdpt_i, pd_i) = ((region / 512) as usize, (region % 512) as usize);
            self.pds[pdpt_i].0[pd_i] =
                (self.host_base + region * PAGE_2M) | READ_WRITE_EXECUTE | MEMTYPE_WB | LARGE_PAGE;
        }
        self.pts.clear();
        self.dirty.clear();
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
    fn dirty_logging_records_first_writes_and_protects_again() {
        let host = 0x4000_0000;
        let mut ept = Ept::new(4 << 20, host).unwrap();
        assert!(ept.writable(0x1234) && !ept.dirty_logging());
        ept.start_dirty_log();
        // Reads still translate, to the same place; writes fault.
        assert_eq!(ept.translate(0x20_1234), Some(host + 0x20_1234));
        assert_eq!(ept.translate(4 << 20), None);
        assert!(!ept.writable(0x20_1234));
        assert!(ept.on_write_violation(0x20_1234));
        assert!(ept.writable(0x20_1FFF) && !ept.writable(0x20_2000));
        assert!(ept.on_write_violation(0x5000));
        assert!(ept.on_write_violation(0x20_1000), "a spurious repeat");
        assert!(!ept.on_write_violation(4 << 20), "outside RAM: MMIO");
        assert_eq!(ept.take_dirty(), vec![0x201, 0x5]);
        assert!(
            !ept.writable(0x20_1234) && !ept.writable(0x5000),
            "protected again"
        );
        assert!(ept.take_dirty().is_empty());
        ept.on_write_violation(0x3F_F000);
        assert_eq!(ept.take_dirty(), vec![0x3FF]);
        ept.stop_dirty_log();
        assert!(ept.writable(0x20_1234) && !ept.dirty_logging());
        assert_eq!(ept.translate(0x3F_FFFF), Some(host + 0x3F_FFFF));
        assert!(!ept.on_write_violation(0x1000), "no logging: not ours");
    }

    #[test]
    fn rejects_unaligned() {
        assert!(Ept::new(3 << 20, 0).is_err());
        assert!(Ept::new(4 << 20, 0x1000).is_err());
        assert!(Ept::new(0, 0).is_err());
    }
}

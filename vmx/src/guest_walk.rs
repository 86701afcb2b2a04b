//! Guest linear-to-physical translation for instruction fetch on MMIO exits
//! (Intel SDM Vol. 3A §4.5 4-level paging, §4.3 32-bit paging). With
//! paging off the linear address is the physical one. PAE paging outside
//! long mode and 5-level paging are reported as unsupported.
use crate::Error;

/// Reads guest-physical memory (the platform's guest RAM).
pub trait GuestPhysRead {
    fn read_u64(&self, gpa: u64) -> Option<u64>;
    fn read_u32(&self, gpa: u64) -> Option<u32>;
}

/// Paging state of the guest at the exit.
#[derive(Debug, Clone, Copy)]
pub struct PagingMode {
    pub paging: bool,
    pub long_mode: bool,
    pub pae: bool,
    pub pse: bool,
    pub la57: bool,
    pub cr3: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// A paging-structure entry is not present (the guest would #PF).
    NotPresent {
        linear: u64,
    },
    /// A paging structure lies outside guest RAM.
    OutsideRam {
        gpa: u64,
    },
    Unsupported(&'static str),
}

impl From<WalkError> for Error {
    fn from(_: WalkError) -> Self {
        Error::BadGuestMemory("guest page walk failed")
    }
}

const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Translates `linear` to a guest-physical address.
pub fn translate(m: &PagingMode, mem: &impl GuestPhysRead, linear: u64) -> Result<u64, WalkError> {
    if !m.paging {
        return Ok(linear & 0xFFFF_FFFF);
    }
    if m.la57 {
        return Err(WalkError::Unsupported("5-level paging"));
    }
    if m.long_mode {
        let mut table = m.cr3 & ADDR;
        for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
            let gpa = table + ((linear >> shift) & 511) * 8;
            let e = mem.read_u64(gpa).ok_or(WalkError::OutsideRam { gpa })?;
            if e & 1 == 0 {
                return Err(WalkError::NotPresent { linear });
            }
            let large = e & (1 << 7) != 0;
            if large && (level == 3 || level == 2) {
                let mask = (1u64 << shift) - 1;
                return Ok((e & ADDR & !mask) | (linear & mask));
            }
            table = e & ADDR;
            if level == 1 {
                return Ok(table | (linear & 0xfff));
            }
        }
        unreachable!("the loop returns at level 1")
    } else if m.pae {
        Err(WalkError::Unsupported("PAE paging outside long mode"))
    } else {
        let pde_gpa = (m.cr3 & 0xFFFF_F000) + ((linear >> 22) & 1023) * 4;
        let pde = mem
            .read_u32(pde_gpa)
            .ok_or(WalkError::OutsideRam { gpa: pde_gpa })? as u64;
        if pde & 1 == 0 {
            return Err(WalkError::NotPresent { linear });
        }
        if m.pse && pde & (1 << 7) != 0 {
            return Ok((pde & 0xFFC0_0000) | (linear & 0x3F_FFFF));
        }
        let pte_gpa = (pde & 0xFFFF_F000) + ((linear >> 12) & 1023) * 4;
        let pte = mem
            .read_u32(pte_gpa)
            .ok_or(WalkError::OutsideRam { gpa: pte_gpa })? as u64;
        if pte & 1 == 0 {
            return Err(WalkError::NotPresent { linear });
        }
        Ok((pte & 0xFFFF_F000) | (linear & 0xfff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl GuestPhysRead for Mem {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            let a = gpa as usize;
            Some(u64::from_le_bytes(self.0.get(a..a + 8)?.try_into().ok()?))
        }
        fn read_u32(&self, gpa: u64) -> Option<u32> {
            let a = gpa as usize;
            Some(u32::from_le_bytes(self.0.get(a..a + 4)?.try_into().ok()?))
        }
    }
    impl Mem {
        fn put(&mut self, gpa: u64, v: u64) {
            self.0[gpa as usize..gpa as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn long(cr3: u64) -> PagingMode {
        PagingMode {
            paging: true,
            long_mode: true,
            pae: true,
            pse: false,
            la57: false,
            cr3,
        }
    }

    #[test]
    fn four_level_with_2m_and_4k_pages() {
        let mut m = Mem(vec![0; 0x10000]);
        m.put(0x1000, 0x2000 | 3); // PML4[0] -> PDPT
        m.put(0x2000, 0x3000 | 3); // PDPT[0] -> PD
        m.put(0x3000, 0x20_0000 | 0x83); // PD[0]: 2 MiB page at 2 MiB
        m.put(0x3008, 0x4000 | 3); // PD[1] -> PT
        m.put(0x4000 + 5 * 8, 0x7_7000 | 3); // PT[5]
        let mode = long(0x1000);
        assert_eq!(translate(&mode, &m, 0x1234), Ok(0x20_1234));
        assert_eq!(translate(&mode, &m, 0x20_5abc), Ok(0x7_7abc));
        assert_eq!(
            translate(&mode, &m, 0x40_0000),
            Err(WalkError::NotPresent { linear: 0x40_0000 })
        );
        let bad = long(0xFFFF_0000);
        assert!(matches!(
            translate(&bad, &m, 0),
            Err(WalkError::OutsideRam { .. })
        ));
    }

    #[test]
    fn paging_off_and_32bit() {
        let m = Mem(vec![0; 0x3000]);
        let off = PagingMode {
            paging: false,
            long_mode: false,
            pae: false,
            pse: false,
            la57: false,
            cr3: 0,
        };
        assert_eq!(translate(&off, &m, 0x1_2345_6789), Ok(0x2345_6789));
        let mut m = Mem(vec![0; 0x3000]);
        m.0[4..8].copy_from_slice(&(0x40_0000u32 | 0x83).to_le_bytes()); // PDE[1] 4 MiB
        let pse = PagingMode {
            paging: true,
            long_mode: false,
            pae: false,
            pse: true,
            la57: false,
            cr3: 0,
        };
        assert_eq!(translate(&pse, &m, 0x41_2345), Ok(0x41_2345));
        let pae = PagingMode { pae: true, ..pse };
        assert!(matches!(
            translate(&pae, &m, 0),
            Err(WalkError::Unsupported(_))
        ));
    }
}

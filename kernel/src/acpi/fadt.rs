//! FADT, "Fixed ACPI Description Table" (ACPI 6.5 §5.2.9, Table 5.9),
//! revision 6 (276 bytes): a PC-AT compatible machine (not hardware
//! reduced) whose only fixed hardware is the PM1a event block, the PM1a
//! control block (sleep/power-off, §4.8.3.2.1) and a 32-bit PM timer
//! (§4.8.3.3). No SMI command port (the machine is always in ACPI mode),
//! no GPE blocks, no reset register, no 8042 and no VGA (IA-PC boot
//! architecture flags, Table 5.11), a CMOS RTC with a century register.
use super::{finish, header, AcpiPlatform};
use alloc::vec::Vec;

/// FADT length for revision 6.
pub const LEN: usize = 276;

/// IA-PC boot architecture flags (Table 5.11): VGA not present.
pub const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Fixed feature flags (Table 5.10): WBINVD, PROC_C1, PWR_BUTTON (control
/// method, i.e. none fixed), SLP_BUTTON (none fixed), TMR_VAL_EXT (32-bit
/// PM timer).
pub const FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8);

/// Field offsets used by the builder and the tests.
pub mod off {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const PREFERRED_PM_PROFILE: usize = 45;
    pub const SCI_INT: usize = 46;
    pub const SMI_CMD: usize = 48;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const PM_TMR_LEN: usize = 91;
    pub const CENTURY: usize = 108;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const MINOR_VERSION: usize = 131;
}

/// The FADT pointing at the FACS and the DSDT (32-bit addresses; the
/// X_ fields stay zero so the two never disagree).
pub fn fadt(p: &AcpiPlatform, facs: u32, dsdt: u32) -> Vec<u8> {
    let mut t = header(b"FACP", 6);
    t.resize(LEN, 0);
    let put16 = |t: &mut Vec<u8>, o: usize, v: u16| t[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |t: &mut Vec<u8>, o: usize, v: u32| t[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut t, off::FIRMWARE_CTRL, facs);
    put32(&mut t, off::DSDT, dsdt);
    t[off::PREFERRED_PM_PROFILE] = 0; // unspecified
    put16(&mut t, off::SCI_INT, p.sci_irq.into());
    put32(&mut t, off::SMI_CMD, 0);
    put32(&mut t, off::PM1A_EVT_BLK, p.pm1a_evt.into());
    put32(&mut t, off::PM1A_CNT_BLK, p.pm1a_cnt.into());
    put32(&mut t, off::PM_TMR_BLK, p.pm_tmr.into());
    t[off::PM1_EVT_LEN] = 4;
    t[off::PM1_CNT_LEN] = 2;
    t[off::PM_TMR_LEN] = 4;
    // P_LVL2/3 latencies above 100/1000 us: C2/C3 not supported.
    put16(&mut t, 96, 101);
    put16(&mut t, 98, 1001);
    t[off::CENTURY] = p.rtc_century;
    put16(&mut t, off::IAPC_BOOT_ARCH, IAPC_VGA_NOT_PRESENT);
    put32(&mut t, off::FLAGS, FLAGS);
    t[off::MINOR_VERSION] = 5;
    finish(t)
}

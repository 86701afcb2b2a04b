//! ACPI tables for the guest, generated into guest RAM (ACPI 6.5, chapter
//! 5 "ACPI Software Programming Model"): RSDP (§5.2.5, Table 5.3), RSDT
//! and XSDT (§5.2.7/5.2.8), FADT (§5.2.9, Table 5.9, [`fadt`]), FACS
//! (§5.2.10, Table 5.14), MADT (§5.2.12, Table 5.19, [`madt`]) and a
//! minimal DSDT (§5.2.11.1) whose AML defines the `\_S5_` sleep package
//! ([`dsdt`], §7.4.2 "\_Sx (System States)") and the virtio-mmio devices
//! (`LNRO0005`), enough for Linux to find its interrupt controllers and
//! devices and to power the machine off through the PM1a control register
//! (§4.8.3.2.1, [`crate::devices::acpi_pm`]).
//!
//! Every table carries the standard 36-byte header (§5.2.6, Table 5.4)
//! with a checksum making the bytes sum to zero. The RSDP sits at the start
//! of the region (the loader puts the region at 0xE0000, inside the BIOS
//! read-only area Linux would also scan, §5.2.5.1) and is handed to the
//! kernel in `boot_params.acpi_rsdp_addr` as well.
use alloc::vec::Vec;

pub mod dsdt;
pub mod fadt;
pub mod madt;

/// OEM ID in every table.
pub const OEM_ID: &[u8; 6] = b"FTVSR ";
/// OEM table ID in every table.
pub const OEM_TABLE_ID: &[u8; 8] = b"FTVISOR ";
/// Creator ID ("FTVS").
const CREATOR_ID: u32 = u32::from_le_bytes(*b"FTVS");
/// Length of the common table header.
pub const HEADER_LEN: usize = 36;

/// The interrupt controller and power-management ports the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPlatform {
    /// Physical address of the local APIC (MADT).
    pub lapic_addr: u32,
    /// The I/O APIC: (APIC ID, MMIO address, first GSI). `None`: no entry.
    pub ioapic: Option<(u8, u32, u32)>,
    /// ISA IRQ of the SCI (FADT SCI_INT; routed level/high in the MADT).
    pub sci_irq: u8,
    /// First port of the PM1a event block (4 bytes: status, enable).
    pub pm1a_evt: u16,
    /// Port of the PM1a control block (2 bytes).
    pub pm1a_cnt: u16,
    /// Port of the PM timer (4 bytes, 32-bit).
    pub pm_tmr: u16,
    /// SLP_TYP value of S5 (soft off) in `\_S5_`.
    pub s5_slp_typ: u8,
    /// CMOS index of the RTC century register (FADT CENTURY).
    pub rtc_century: u8,
}

impl AcpiPlatform {
    /// The machine ftvisor gives a Linux guest: LAPIC at 0xFEE00000, I/O
    /// APIC ID 1 at 0xFEC00000 (GSIs 0-23), SCI on IRQ 9, PM1a event block
    /// at 0x600, PM1a control at 0x604, PM timer at 0x608, S5 type 5.
    pub const fn ftvisor() -> Self {
        AcpiPlatform {
            lapic_addr: 0xFEE0_0000,
            ioapic: Some((1, 0xFEC0_0000, 0)),
            sci_irq: 9,
            pm1a_evt: 0x600,
            pm1a_cnt: 0x604,
            pm_tmr: 0x608,
            s5_slp_typ: 5,
            rtc_century: 0x32,
        }
    }
}

/// The tables do not fit the region they were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

/// The 36-byte header with a zero checksum and `len` = `total_len`
/// (patched by [`finish`]).
pub fn header(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    h.extend_from_slice(signature);
    h.extend_from_slice(&0u32.to_le_bytes()); // length, patched by finish
    h.push(revision);
    h.push(0); // checksum, patched by finish
    h.extend_from_slice(OEM_ID);
    h.extend_from_slice(OEM_TABLE_ID);
    h.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    h.extend_from_slice(&CREATOR_ID.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    h
}

/// Sets the length field and the checksum of a table built on [`header`].
pub fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0;
    t[9] = checksum_byte(&t);
    t
}

/// The byte that makes `bytes` sum to zero (mod 256).
pub fn checksum_byte(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Whether `bytes` sum to zero (mod 256).
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

/// FACS (§5.2.10, Table 5.14): 64 bytes, no checksum, no waking vector.
fn facs() -> Vec<u8> {
    let mut t = Vec::from(*b"FACS");
    t.extend_from_slice(&64u32.to_le_bytes());
    t.resize(64, 0);
    t[32] = 2; // version
    t
}

/// RSDP (§5.2.5.3, Table 5.3), revision 2.
fn rsdp(rsdt: u32, xsdt: u64) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 2;
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum_byte(&r[..20]);
    r[32] = checksum_byte(&r);
    r
}

/// Writes all tables into `ram[base..limit]` (guest-physical = index) and
/// returns the RSDP's address (`base`).
pub fn install(ram: &mut [u8], base: u64, limit: u64, p: &AcpiPlatform) -> Result<u64, NoRoom> {
    if limit > ram.len() as u64
        || base >= limit
        || !base.is_multiple_of(16)
        || limit > u32::MAX as u64
    {
        return Err(NoRoom);
    }
    // Layout: RSDP, then 64-byte aligned FACS, DSDT, FADT, MADT, RSDT, XSDT.
    let mut at = base + 64;
    let mut place = |t: &[u8], align: u64| -> Result<u64, NoRoom> {
        let a = at.div_ceil(align) * align;
        let end = a.checked_add(t.len() as u64).ok_or(NoRoom)?;
        if end > limit {
            return Err(NoRoom);
        }
        ram[a as usize..end as usize].copy_from_slice(t);
        at = end;
        Ok(a)
    };
    let facs_at = place(&facs(), 64)?;
    let dsdt_at = place(&dsdt::dsdt(p), 16)?;
    let fadt_at = place(&fadt::fadt(p, facs_at as u32, dsdt_at as u32), 16)?;
    let madt_at = place(&madt::madt(p), 16)?;
    let entries = [fadt_at, madt_at];
    let mut rsdt = header(b"RSDT", 1);
    for e in entries {
        rsdt.extend_from_slice(&(e as u32).to_le_bytes());
    }
    let rsdt_at = place(&finish(rsdt), 16)?;
    let mut xsdt = header(b"XSDT", 1);
    for e in entries {
        xsdt.extend_from_slice(&e.to_le_bytes());
    }
    let xsdt_at = place(&finish(xsdt), 16)?;
    let b = base as usize;
    ram[b..b + 36].copy_from_slice(&rsdp(rsdt_at as u32, xsdt_at));
    Ok(base)
}

#[cfg(test)]
mod tests;

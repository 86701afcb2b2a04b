//! MADT, "Multiple APIC Description Table" (ACPI 6.5 §5.2.12, Table 5.19):
//! the local APIC address and PCAT_COMPAT flag, then one Processor Local
//! APIC (§5.2.12.2, Table 5.21: UID 0, APIC ID 0, enabled), the I/O APIC
//! (§5.2.12.3, Table 5.22), Interrupt Source Overrides (§5.2.12.5,
//! Table 5.25: ISA IRQ 0 → GSI 2 as on every PC; the SCI level-triggered,
//! active high) and a Local APIC NMI on LINT1 (§5.2.12.7, Table 5.28).
use super::{finish, header, AcpiPlatform};
use alloc::vec::Vec;

/// MADT flags: PCAT_COMPAT (dual 8259 set-up present, to be masked).
pub const PCAT_COMPAT: u32 = 1;
/// Interrupt structure types (Table 5.20).
pub const LOCAL_APIC: u8 = 0;
pub const IO_APIC: u8 = 1;
pub const SOURCE_OVERRIDE: u8 = 2;
pub const LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags (Table 5.26): active high, level triggered.
pub const LEVEL_HIGH: u16 = 0b1101;

pub fn madt(p: &AcpiPlatform) -> Vec<u8> {
    let mut t = header(b"APIC", 5);
    t.extend_from_slice(&p.lapic_addr.to_le_bytes());
    t.extend_from_slice(&PCAT_COMPAT.to_le_bytes());
    // Processor Local APIC: UID 0, APIC ID 0, flags enabled.
    t.extend_from_slice(&[LOCAL_APIC, 8, 0, 0, 1, 0, 0, 0]);
    if let Some((id, addr, gsi_base)) = p.ioapic {
        t.extend_from_slice(&[IO_APIC, 12, id, 0]);
        t.extend_from_slice(&addr.to_le_bytes());
        t.extend_from_slice(&gsi_base.to_le_bytes());
        let mut iso = |irq: u8, gsi: u32, flags: u16| {
            t.extend_from_slice(&[SOURCE_OVERRIDE, 10, 0, irq]);
            t.extend_from_slice(&gsi.to_le_bytes());
            t.extend_from_slice(&flags.to_le_bytes());
        };
        iso(0, 2, 0);
        iso(p.sci_irq, p.sci_irq.into(), LEVEL_HIGH);
    }
    // Local APIC NMI: all processors (UID 0xFF), conforming, LINT1.
    t.extend_from_slice(&[LOCAL_APIC_NMI, 6, 0xFF, 0, 0, 1]);
    finish(t)
}

//! The DSDT (ACPI 6.5 §5.2.11.1) holds one AML object: the `\_S5_`
//! package (§7.4.2, "\_Sx (System States)"): `{SLP_TYPa, SLP_TYPb, 0, 0}`
//! with SLP_TYPa = the S5 value the PM1a control register recognises.
//! AML encoding (§20.2): `NameOp` (0x08) `\` `_S5_` `PackageOp` (0x12)
//! `PkgLength` `NumElements` then `BytePrefix` (0x0A) constants and
//! `ZeroOp` (0x00).
use super::{finish, header, AcpiPlatform};
use alloc::vec::Vec;

/// The AML body: `Name (\_S5, Package (4) { typ, typ, 0, 0 })`.
pub fn aml(p: &AcpiPlatform) -> [u8; 15] {
    let t = p.s5_slp_typ;
    [
        0x08, b'\\', b'_', b'S', b'5', b'_', // Name (\_S5_
        0x12, 0x08, 0x04, // Package, PkgLength 8, 4 elements
        0x0A, t, 0x0A, t, 0x00, 0x00,
    ]
}

pub fn dsdt(p: &AcpiPlatform) -> Vec<u8> {
    let mut t = header(b"DSDT", 2);
    t.extend_from_slice(&aml(p));
    finish(t)
}

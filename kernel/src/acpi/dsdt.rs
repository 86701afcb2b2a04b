//! The DSDT (ACPI 6.5 §5.2.11.1) holds the `\_S5_` package (§7.4.2,
//! "\_Sx (System States)"): `{SLP_TYPa, SLP_TYPb, 0, 0}` with SLP_TYPa =
//! the S5 value the PM1a control register recognises, then, in `\_SB`,
//! one device per virtio-mmio slot of [`crate::guestio`]: `_HID`
//! `"LNRO0005"` (the ID Linux's virtio_mmio driver matches), `_UID` = the
//! slot, and a `_CRS` with a Memory32Fixed range (§6.4.3.4) and an
//! Extended Interrupt (§6.4.3.6: consumer, level, active high, shared) on
//! the slot's I/O APIC pin.
//! AML encoding (§20.2): `NameOp` (0x08) `\` `_S5_` `PackageOp` (0x12)
//! `PkgLength` `NumElements` then `BytePrefix` (0x0A) constants and
//! `ZeroOp` (0x00); `ScopeOp` (0x10), `DeviceOp` (0x5B 0x82), `BufferOp`
//! (0x11), `StringPrefix` (0x0D).
use super::{finish, header, AcpiPlatform};
use crate::guestio::Slot;
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

/// Extended Interrupt flags: consumer, level-triggered, active high, shared.
pub const VIRTIO_IRQ_FLAGS: u8 = 0b1001;

/// `PkgLength` (§20.2.4) followed by `body`; bodies up to 4095 bytes.
fn package(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    if body.len() + 1 < 64 {
        v.push((body.len() + 1) as u8);
    } else {
        let len = body.len() + 2;
        assert!(len < 4096, "PkgLength beyond two bytes");
        v.push(0x40 | (len & 0xF) as u8);
        v.push((len >> 4) as u8);
    }
    v.extend_from_slice(body);
    v
}

/// The `_CRS` resource template of a virtio-mmio slot: Memory32Fixed
/// (read/write, `base`, `len`), Extended Interrupt (`gsi`), End Tag.
pub fn virtio_resources(base: u32, len: u32, gsi: u32) -> [u8; 23] {
    let mut r = [0u8; 23];
    r[0] = 0x86; // Memory32Fixed, length 9
    r[1] = 9;
    r[3] = 1; // read/write
    r[4..8].copy_from_slice(&base.to_le_bytes());
    r[8..12].copy_from_slice(&len.to_le_bytes());
    r[12] = 0x89; // Extended Interrupt, length 6, one interrupt
    r[13] = 6;
    r[15] = VIRTIO_IRQ_FLAGS;
    r[16] = 1;
    r[17..21].copy_from_slice(&gsi.to_le_bytes());
    r[21] = 0x79; // End Tag, checksum 0
    r
}

/// `Device (VRnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CRS, …) }`.
pub fn virtio_device(slot: Slot) -> Vec<u8> {
    let n = slot as u8;
    let mut body = alloc::vec![b'V', b'R', b'0' + n / 10, b'0' + n % 10];
    body.extend_from_slice(b"\x08_HID\x0DLNRO0005\0");
    body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x0A, n]);
    body.extend_from_slice(b"\x08_CRS");
    let res = virtio_resources(slot.base() as u32, slot.size() as u32, slot.gsi());
    let mut buf = alloc::vec![0x0A, res.len() as u8];
    buf.extend_from_slice(&res);
    body.extend_from_slice(&package(&[0x11], &buf));
    package(&[0x5B, 0x82], &body)
}

/// `Scope (\_SB) { the virtio devices }`.
pub fn sb_scope() -> Vec<u8> {
    let mut body = b"\\_SB_".to_vec();
    for slot in Slot::ALL {
        body.extend_from_slice(&virtio_device(slot));
    }
    package(&[0x10], &body)
}

pub fn dsdt(p: &AcpiPlatform) -> Vec<u8> {
    let mut t = header(b"DSDT", 2);
    t.extend_from_slice(&aml(p));
    t.extend_from_slice(&sb_scope());
    finish(t)
}

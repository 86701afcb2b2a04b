use super::*;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A table at `addr`: checks its length and checksum, returns its bytes.
fn table<'a>(ram: &'a [u8], addr: u64, sig: &[u8; 4]) -> &'a [u8] {
    let a = addr as usize;
    assert_eq!(&ram[a..a + 4], sig, "signature at {addr:#x}");
    let len = u32_at(ram, a + 4) as usize;
    assert!(len >= HEADER_LEN, "{sig:?} length {len}");
    let t = &ram[a..a + len];
    assert!(checksum_ok(t), "{:?} checksum", core::str::from_utf8(sig));
    assert_eq!(&t[10..16], OEM_ID);
    t
}

fn installed() -> (Vec<u8>, u64) {
    let mut ram = vec![0u8; 0x10_0000];
    let rsdp = install(&mut ram, 0xE_0000, 0x10_0000, &AcpiPlatform::ftvisor()).unwrap();
    (ram, rsdp)
}

#[test]
fn rsdp_checksums_and_pointers() {
    let (ram, rsdp) = installed();
    assert_eq!(rsdp, 0xE_0000);
    let r = &ram[rsdp as usize..rsdp as usize + 36];
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert!(checksum_ok(&r[..20]), "ACPI 1.0 checksum");
    assert!(checksum_ok(r), "extended checksum");
    assert_eq!(r[15], 2);
    assert_eq!(u32_at(r, 20), 36);
    let rsdt = table(&ram, u32_at(r, 16).into(), b"RSDT");
    let xsdt = table(&ram, u64_at(r, 24), b"XSDT");
    assert_eq!((rsdt.len() - 36) / 4, 2);
    assert_eq!((xsdt.len() - 36) / 8, 2);
    for i in 0..2 {
        assert_eq!(
            u64::from(u32_at(rsdt, 36 + 4 * i)),
            u64_at(xsdt, 36 + 8 * i)
        );
    }
}

fn find(ram: &[u8], sig: &[u8; 4]) -> u64 {
    let r = &ram[0xE_0000..];
    let xsdt = table(ram, u64_at(r, 24), b"XSDT");
    (0..(xsdt.len() - 36) / 8)
        .map(|i| u64_at(xsdt, 36 + 8 * i))
        .find(|&a| &ram[a as usize..a as usize + 4] == sig)
        .unwrap_or_else(|| panic!("{sig:?} not in the XSDT"))
}

#[test]
fn fadt_describes_pm_blocks_dsdt_and_facs() {
    let (ram, _) = installed();
    let f = table(&ram, find(&ram, b"FACP"), b"FACP");
    assert_eq!(f.len(), fadt::LEN);
    assert_eq!(f[8], 6, "revision");
    let p = AcpiPlatform::ftvisor();
    let u16_at = |o: usize| u16::from_le_bytes([f[o], f[o + 1]]);
    assert_eq!(u16_at(fadt::off::SCI_INT), 9);
    assert_eq!(u32_at(f, fadt::off::SMI_CMD), 0, "always in ACPI mode");
    assert_eq!(u32_at(f, fadt::off::PM1A_EVT_BLK), u32::from(p.pm1a_evt));
    assert_eq!(u32_at(f, fadt::off::PM1A_CNT_BLK), u32::from(p.pm1a_cnt));
    assert_eq!(u32_at(f, fadt::off::PM_TMR_BLK), u32::from(p.pm_tmr));
    assert_eq!(
        (
            f[fadt::off::PM1_EVT_LEN],
            f[fadt::off::PM1_CNT_LEN],
            f[fadt::off::PM_TMR_LEN]
        ),
        (4, 2, 4)
    );
    assert_eq!(f[fadt::off::CENTURY], 0x32);
    assert_eq!(u16_at(fadt::off::IAPC_BOOT_ARCH) & 0b10, 0, "no 8042");
    assert_ne!(u32_at(f, fadt::off::FLAGS) & (1 << 8), 0, "32-bit PM timer");
    let facs = u32_at(f, fadt::off::FIRMWARE_CTRL) as usize;
    assert_eq!(facs % 64, 0, "FACS 64-byte aligned");
    assert_eq!(&ram[facs..facs + 4], b"FACS");
    assert_eq!(u32_at(&ram, facs + 4), 64);
    let d = table(&ram, u32_at(f, fadt::off::DSDT).into(), b"DSDT");
    assert_eq!(&d[36..51], &dsdt::aml(&p));
    assert_eq!(&d[51..], &dsdt::sb_scope()[..]);
}

/// Decodes a `PkgLength` at `b[0..]`: (value, bytes it takes).
fn pkg_len(b: &[u8]) -> (usize, usize) {
    let extra = usize::from(b[0] >> 6);
    if extra == 0 {
        return (usize::from(b[0] & 0x3F), 1);
    }
    let mut v = usize::from(b[0] & 0xF);
    for i in 0..extra {
        v |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (v, 1 + extra)
}

#[test]
fn dsdt_virtio_devices_parse() {
    use crate::guestio::Slot;
    let sb = dsdt::sb_scope();
    assert_eq!(sb[0], 0x10, "ScopeOp");
    let (len, n) = pkg_len(&sb[1..]);
    assert_eq!(1 + len, sb.len(), "Scope PkgLength covers the rest");
    assert_eq!(&sb[1 + n..1 + n + 5], b"\\_SB_");
    let mut at = 1 + n + 5;
    for slot in Slot::ALL {
        assert_eq!(&sb[at..at + 2], &[0x5B, 0x82], "DeviceOp");
        let (dlen, dn) = pkg_len(&sb[at + 2..]);
        let dev = &sb[at + 2 + dn..at + 2 + dlen];
        assert_eq!(&dev[..4], format!("VR0{}", slot as u8).as_bytes());
        assert_eq!(&dev[4..19], b"\x08_HID\x0DLNRO0005\0");
        assert_eq!(&dev[19..26], &[8, b'_', b'U', b'I', b'D', 0x0A, slot as u8]);
        assert_eq!(&dev[26..31], b"\x08_CRS");
        assert_eq!(dev[31], 0x11, "BufferOp");
        let (blen, bn) = pkg_len(&dev[32..]);
        assert_eq!(32 + blen, dev.len(), "the buffer ends the device");
        let buf = &dev[32 + bn..];
        assert_eq!(&buf[..2], &[0x0A, 23], "BufferSize");
        let r = &buf[2..];
        assert_eq!(r.len(), 23);
        assert_eq!(&r[..4], &[0x86, 9, 0, 1], "Memory32Fixed, read/write");
        assert_eq!(u32_at(r, 4), slot.base() as u32);
        assert_eq!(u32_at(r, 8), 0x200);
        assert_eq!(
            &r[12..17],
            &[0x89, 6, 0, 0b1001, 1],
            "ExtIRQ level/high/shared"
        );
        assert_eq!(u32_at(r, 17), slot.gsi());
        assert_eq!(&r[21..], &[0x79, 0], "End Tag");
        at += 2 + dlen;
    }
    assert_eq!(at, sb.len());
    assert_eq!(Slot::ALL.map(|s| s.gsi()), [16, 17]);
}

#[test]
fn dsdt_s5_package_parses() {
    let aml = dsdt::aml(&AcpiPlatform::ftvisor());
    assert_eq!(aml[0], 0x08, "NameOp");
    assert_eq!(&aml[1..6], b"\\_S5_");
    assert_eq!(aml[6], 0x12, "PackageOp");
    let pkg_len = aml[7] as usize;
    assert_eq!(aml[7] >> 6, 0, "one-byte PkgLength");
    assert_eq!(7 + pkg_len, aml.len(), "PkgLength covers the rest");
    assert_eq!(aml[8], 4, "NumElements");
    // Elements: BytePrefix 5, BytePrefix 5, Zero, Zero.
    assert_eq!(&aml[9..], &[0x0A, 5, 0x0A, 5, 0, 0]);
}

#[test]
fn madt_entries_parse() {
    let (ram, _) = installed();
    let m = table(&ram, find(&ram, b"APIC"), b"APIC");
    assert_eq!(u32_at(m, 36), 0xFEE0_0000);
    assert_eq!(u32_at(m, 40), madt::PCAT_COMPAT);
    let mut i = 44;
    let mut seen = Vec::new();
    while i < m.len() {
        let (ty, len) = (m[i], m[i + 1] as usize);
        assert!(len >= 2 && i + len <= m.len(), "entry at {i} overruns");
        let e = &m[i..i + len];
        match ty {
            madt::LOCAL_APIC => {
                assert_eq!(len, 8);
                assert_eq!((e[2], e[3], u32_at(e, 4)), (0, 0, 1));
            }
            madt::IO_APIC => {
                assert_eq!(len, 12);
                assert_eq!((e[2], u32_at(e, 4), u32_at(e, 8)), (1, 0xFEC0_0000, 0));
            }
            madt::SOURCE_OVERRIDE => {
                assert_eq!(len, 10);
                let flags = u16::from_le_bytes([e[8], e[9]]);
                match e[3] {
                    0 => assert_eq!((u32_at(e, 4), flags), (2, 0)),
                    9 => assert_eq!((u32_at(e, 4), flags), (9, madt::LEVEL_HIGH)),
                    irq => panic!("unexpected override of IRQ {irq}"),
                }
            }
            madt::LOCAL_APIC_NMI => assert_eq!((len, e[2], e[5]), (6, 0xFF, 1)),
            t => panic!("unexpected MADT entry type {t}"),
        }
        seen.push(ty);
        i += len;
    }
    assert_eq!(i, m.len());
    assert_eq!(seen, [0, 1, 2, 2, 4]);
}

#[test]
fn madt_without_ioapic() {
    let p = AcpiPlatform {
        ioapic: None,
        ..AcpiPlatform::ftvisor()
    };
    let m = madt::madt(&p);
    assert!(checksum_ok(&m));
    assert_eq!(m.len(), 44 + 8 + 6);
}

#[test]
fn refuses_regions_that_do_not_fit() {
    let p = AcpiPlatform::ftvisor();
    let mut ram = vec![0u8; 0x10_0000];
    assert_eq!(install(&mut ram, 0xE_0000, 0xE_0100, &p), Err(NoRoom));
    assert_eq!(install(&mut ram, 0xE_0000, 0x20_0000, &p), Err(NoRoom));
    assert_eq!(install(&mut ram, 0xE_0008, 0xF_0000, &p), Err(NoRoom));
    assert_eq!(install(&mut ram, 0xF_0000, 0xE_0000, &p), Err(NoRoom));
    assert!(
        install(&mut ram, 0xE_0000, 0xE_1000, &p).is_ok(),
        "4 KiB is plenty"
    );
}

use super::*;

/// A synthetic bzImage: 1 setup sector after the boot sector, protocol
/// 2.15, relocatable, `payload` bytes of protected-mode kernel.
fn bzimage(payload: usize) -> Vec<u8> {
    let mut img = vec![0u8; 1024 + payload];
    img[SETUP_SECTS] = 1;
    put32(&mut img, SYSSIZE, (payload / 16) as u32);
    put16(&mut img, BOOT_FLAG, 0xAA55);
    img[JUMP] = 0xEB;
    img[JUMP + 1] = 0x6A; // header ends at 0x26C
    img[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
    put16(&mut img, VERSION, 0x020F);
    img[LOADFLAGS] = LOADED_HIGH;
    put32(&mut img, CODE32_START, 0x10_0000);
    put32(&mut img, INITRD_ADDR_MAX, 0x7FFF_FFFF);
    put32(&mut img, KERNEL_ALIGNMENT, 0x20_0000);
    img[RELOCATABLE_KERNEL] = 1;
    put16(&mut img, XLOADFLAGS, XLF_KERNEL_64);
    put32(&mut img, CMDLINE_SIZE, 2047);
    put64(&mut img, PREF_ADDRESS, 0x100_0000);
    put32(&mut img, INIT_SIZE, 0x40_0000);
    for (i, b) in img[1024..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    img
}

fn ram(mib: usize) -> Vec<u8> {
    vec![0xAAu8; mib << 20]
}

#[test]
fn parses_the_header() {
    let h = SetupHeader::parse(&bzimage(0x1000)).unwrap();
    assert_eq!(h.setup_sects, 1);
    assert_eq!(h.version, 0x020F);
    assert_eq!(h.kernel_range(), (1024, 1024 + 0x1000));
    assert_eq!(h.header_end, 0x26C);
    assert_eq!(h.pref_address, 0x100_0000);
    assert!(h.relocatable);
    assert_eq!(h.xloadflags & XLF_KERNEL_64, XLF_KERNEL_64);
}

#[test]
fn loads_kernel_initrd_cmdline_and_zero_page() {
    let img = bzimage(0x1000);
    let initrd: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let mut ram = ram(64);
    let l = load(
        &img,
        Some(&initrd),
        "console=ttyS0 quiet",
        &mut ram,
        &AcpiPlatform::ftvisor(),
    )
    .unwrap();
    assert_eq!(l.kernel_addr, 0x100_0000, "pref_address");
    assert_eq!(
        l.start,
        GuestStart::Linux32 {
            entry: 0x100_0000,
            boot_params: 0x7000,
            gdt: 0x6000
        }
    );
    assert_eq!(&ram[0x100_0000..0x100_1000], &img[1024..]);
    let (rd, rd_end) = l.initrd.unwrap();
    assert_eq!(rd % 4096, 0);
    assert!(rd >= 0x100_0000 + 0x40_0000, "initrd above init_size");
    assert!(rd_end <= 64 << 20);
    assert_eq!(&ram[rd as usize..rd_end as usize], &initrd[..]);
    assert_eq!(&ram[0x2_0000..0x2_0014], b"console=ttyS0 quiet\0");
    let zp = &ram[0x7000..0x8000];
    assert_eq!(&zp[HEADER..HEADER + 4], b"HdrS", "header copied");
    assert_eq!(zp[TYPE_OF_LOADER], 0xFF);
    assert_eq!(u32_at(zp, CODE32_START), 0x100_0000);
    assert_eq!(u32_at(zp, RAMDISK_IMAGE) as u64, rd);
    assert_eq!(u32_at(zp, RAMDISK_SIZE), 10_000);
    assert_eq!(u32_at(zp, CMD_LINE_PTR), 0x2_0000);
    assert_eq!(u64_at(zp, ACPI_RSDP_ADDR), 0xE_0000);
    assert_eq!(&ram[0xE_0000..0xE_0008], b"RSD PTR ");
    // GDT: __BOOT_CS / __BOOT_DS flat.
    assert_eq!(u64_at(&ram, 0x6010), 0x00CF_9B00_0000_FFFF);
    assert_eq!(u64_at(&ram, 0x6018), 0x00CF_9300_0000_FFFF);
}

#[test]
fn e820_covers_ram_and_reserves_acpi() {
    let img = bzimage(0x1000);
    let mut ram = ram(32);
    load(&img, None, "", &mut ram, &AcpiPlatform::ftvisor()).unwrap();
    let zp = &ram[0x7000..0x8000];
    let n = zp[E820_ENTRIES] as usize;
    let entries: Vec<_> = (0..n)
        .map(|i| {
            let o = E820_TABLE + 20 * i;
            (u64_at(zp, o), u64_at(zp, o + 8), u32_at(zp, o + 16))
        })
        .collect();
    assert_eq!(
        entries,
        [
            (0, 0x9_FC00, E820_RAM),
            (0x9_FC00, 0x400, E820_RESERVED),
            (0xE_0000, 0x2_0000, E820_RESERVED),
            (0x10_0000, (32 << 20) - 0x10_0000, E820_RAM),
        ]
    );
    // Sorted, non-overlapping; everything the loader wrote is inside.
    for w in entries.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0);
    }
    const { assert!(GDT_ADDR + 32 <= 0x9_FC00 && CMDLINE_END <= 0x9_FC00) };
}

#[test]
fn relocates_when_pref_address_does_not_fit() {
    let mut img = bzimage(0x1000);
    put32(&mut img, INIT_SIZE, 0x100_0000);
    let mut ram = ram(24);
    let l = load(&img, None, "", &mut ram, &AcpiPlatform::ftvisor()).unwrap();
    assert_eq!(
        l.kernel_addr, 0x20_0000,
        "1 MiB rounded up to 2 MiB alignment"
    );
    img[RELOCATABLE_KERNEL] = 0;
    assert!(matches!(
        load(&img, None, "", &mut ram, &AcpiPlatform::ftvisor()),
        Err(LinuxError::NoRoom(_))
    ));
}

#[test]
fn rejects_bad_images_with_typed_errors() {
    let p = AcpiPlatform::ftvisor();
    let mut r = ram(32);
    let good = bzimage(0x1000);
    assert!(matches!(
        load(&good[..0x100], None, "", &mut r, &p),
        Err(LinuxError::Truncated { .. })
    ));
    assert!(matches!(
        load(&good[..1024 + 0x800], None, "", &mut r, &p),
        Err(LinuxError::Truncated {
            need: 0x1400,
            have: 0xC00
        })
    ));
    let mut bad = good.clone();
    bad[HEADER] = b'X';
    assert_eq!(
        load(&bad, None, "", &mut r, &p).unwrap_err(),
        LinuxError::NotBzImage
    );
    let mut old = good.clone();
    put16(&mut old, VERSION, 0x020A);
    assert_eq!(
        load(&old, None, "", &mut r, &p).unwrap_err(),
        LinuxError::OldProtocol { version: 0x020A }
    );
    let mut zimage = good.clone();
    zimage[LOADFLAGS] = 0;
    assert!(matches!(
        load(&zimage, None, "", &mut r, &p),
        Err(LinuxError::BadHeader(_))
    ));
    let long = "x".repeat(3000);
    assert_eq!(
        load(&good, None, &long, &mut r, &p).unwrap_err(),
        LinuxError::CmdlineTooLong {
            len: 3000,
            max: 2047
        }
    );
    let huge_initrd = vec![0u8; 30 << 20];
    assert!(matches!(
        load(&good, Some(&huge_initrd), "", &mut r, &p),
        Err(LinuxError::NoRoom(_))
    ));
    let mut small = ram(8);
    assert!(matches!(
        load(&good, None, "", &mut small, &p),
        Err(LinuxError::NoRoom(_))
    ));
    // Errors convert into the kernel's error type with a message.
    let e: crate::Error = LinuxError::NotBzImage.into();
    assert!(alloc::format!("{e}").contains("bzImage"));
}

/// Randomized: mutated and truncated headers never panic, and whatever
/// loads stays inside guest RAM.
#[test]
fn garbage_never_panics() {
    let p = AcpiPlatform::ftvisor();
    let mut r = ram(32);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = bzimage(0x800);
    let mut ok = 0;
    for round in 0..5000 {
        let mut img = base.clone();
        for _ in 0..(next() % 6 + 1) {
            let i = 0x1F0 + (next() as usize) % 0x80;
            img[i] = next() as u8;
        }
        if round % 3 == 0 {
            let cut = (next() as usize) % img.len();
            img.truncate(cut);
        }
        let rd = vec![1u8; (next() % 4096) as usize];
        if let Ok(l) = load(&img, Some(&rd), "a=b", &mut r, &p) {
            ok += 1;
            assert!(l.kernel_addr + u64::from(l.header.init_size) <= r.len() as u64);
            let (a, e) = l.initrd.unwrap();
            assert!(a >= l.kernel_addr + u64::from(l.header.init_size) && e <= r.len() as u64);
        }
    }
    assert!(ok > 100, "some mutations still load ({ok})");
}

/// The real Debian kernel, when the e2e runner's cache has it
/// (`qemu-tests/linux/build.sh`); skipped otherwise.
#[test]
fn debian_bzimage_if_cached() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let path = std::path::Path::new(&home).join(".cache/ftvisor/linux/out/bzImage");
    let Ok(img) = std::fs::read(&path) else {
        eprintln!("skipped: {} not built", path.display());
        return;
    };
    let h = SetupHeader::parse(&img).unwrap();
    assert!(h.version >= 0x020F, "6.1 speaks 2.15");
    assert!(h.relocatable);
    assert_ne!(h.xloadflags & XLF_KERNEL_64, 0);
    let mut r = ram(128);
    let l = load(
        &img,
        Some(&[0u8; 4096]),
        "console=ttyS0",
        &mut r,
        &AcpiPlatform::ftvisor(),
    )
    .unwrap();
    assert_eq!(l.kernel_addr, h.pref_address);
}

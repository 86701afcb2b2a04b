//! Linux x86 boot protocol loader (`Documentation/arch/x86/boot.rst`,
//! protocol 2.12 and later; `zero-page.rst` for `struct boot_params`).
//!
//! The guest is a stock `bzImage`: its real-mode setup code is never run.
//! The loader reads the **setup header** (boot.rst "The Real-Mode Kernel
//! Header": `setup_sects`, `syssize`, `HdrS` magic, `version`,
//! `kernel_alignment`, `relocatable_kernel`, `xloadflags`, `cmdline_size`,
//! `pref_address`, `init_size`), copies the protected-mode kernel into guest
//! RAM, the initrd high in RAM (boot.rst "Loading The Rest of The Kernel",
//! below `initrd_addr_max`), the command line below 1 MiB, and fills the
//! **zero page** (`boot_params`, with the copied setup header, the e820 map
//! of guest RAM and `acpi_rsdp_addr`).
//!
//! Entry is the **32-bit boot protocol** (boot.rst "32-bit Boot Protocol"):
//! 32-bit protected mode, paging off, a GDT with flat `__BOOT_CS` (0x10)
//! and `__BOOT_DS` (0x18), ESI = `boot_params`, EBX/EBP/EDI = 0, at
//! `code32_start`. It needs the least platform: the hypervisor already
//! starts multiboot guests in this mode, and the kernel's own `startup_32`
//! builds its page tables and enters long mode through the CR0/EFER exits
//! the hypervisor handles; the 64-bit entry would need the loader to build
//! page tables and the VMCS to start in IA-32e mode.
//!
//! Guest-physical layout (every address below is reserved or RAM in the
//! e820 map given to the kernel):
//!
//! | range | contents |
//! |---|---|
//! | `0x6000` | GDT (null, null, `__BOOT_CS`, `__BOOT_DS`) |
//! | `0x7000` | `boot_params` (4 KiB) |
//! | `0x20000` | kernel command line (≤ `cmdline_size`, ≤ 64 KiB) |
//! | `0x9FC00..0xA0000` | reserved (EBDA-sized hole) |
//! | `0xE0000..0x100000` | reserved: ACPI tables ([`crate::acpi`]), RSDP first |
//! | `pref_address` (or 1 MiB aligned up) | protected-mode kernel, `init_size` bytes reserved for decompression |
//! | high, page aligned | initrd |
use super::GuestStart;
use core::fmt;

/// Where the GDT goes.
pub const GDT_ADDR: u64 = 0x6000;
/// Where `boot_params` (the zero page) goes.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Upper bound of the command line region (exclusive).
const CMDLINE_END: u64 = 0x3_0000;
/// Start of the EBDA-sized hole below 640 KiB.
const LOW_RAM_END: u64 = 0x9_FC00;
/// The ACPI region (RSDP at its start), reserved in the e820 map.
pub const ACPI_BASE: u64 = 0xE_0000;
/// End of the ACPI region / start of high RAM.
const HIGH_RAM: u64 = 0x10_0000;

/// `__BOOT_CS`, `__BOOT_DS` (boot.rst "32-bit Boot Protocol").
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;

// Setup header offsets inside the image and the zero page (boot.rst
// "The Real-Mode Kernel Header").
const SETUP_SECTS: usize = 0x1F1;
const SYSSIZE: usize = 0x1F4;
const BOOT_FLAG: usize = 0x1FE;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21C;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22C;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// End of the fields this loader reads (the 2.12 header reaches 0x268).
const HEADER_MIN_END: usize = 0x264;

// Zero page fields outside the setup header (zero-page.rst).
const ACPI_RSDP_ADDR: usize = 0x070;
const EXT_RAMDISK_IMAGE: usize = 0x0C0;
const EXT_RAMDISK_SIZE: usize = 0x0C4;
const EXT_CMD_LINE_PTR: usize = 0x0C8;
const E820_ENTRIES: usize = 0x1E8;
const E820_TABLE: usize = 0x2D0;
const E820_MAX: usize = 128;

/// `loadflags` LOADED_HIGH: the protected-mode code is at 0x100000+.
const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` XLF_KERNEL_64: has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Oldest protocol accepted: 2.12 (`xloadflags`, 64-bit fields).
pub const MIN_VERSION: u16 = 0x020C;

/// e820 types (ACPI 6.5 §15 "System Address Map Interfaces", Table 15.1).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Why a `bzImage` (or the guest RAM around it) cannot be booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxError {
    /// Shorter than the setup header, or than `setup_sects`/`syssize` say.
    Truncated { need: u64, have: u64 },
    /// No 0xAA55 boot flag or no `HdrS` magic: not a bzImage.
    NotBzImage,
    /// Boot protocol older than [`MIN_VERSION`].
    OldProtocol { version: u16 },
    /// Not loaded high (a zImage) or a header field makes no sense.
    BadHeader(&'static str),
    /// The kernel, its decompression area or the initrd do not fit.
    NoRoom(&'static str),
    /// The command line does not fit in `cmdline_size`.
    CmdlineTooLong { len: usize, max: usize },
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinuxError::Truncated { need, have } => {
                write!(f, "bzImage truncated: need {need} bytes, have {have}")
            }
            LinuxError::NotBzImage => write!(f, "not a bzImage (no 0xAA55 flag / HdrS magic)"),
            LinuxError::OldProtocol { version } => write!(
                f,
                "boot protocol {}.{:02} is older than 2.12",
                version >> 8,
                version & 0xff
            ),
            LinuxError::BadHeader(what) => write!(f, "bad setup header: {what}"),
            LinuxError::NoRoom(what) => write!(f, "guest RAM too small: {what}"),
            LinuxError::CmdlineTooLong { len, max } => {
                write!(f, "kernel command line of {len} bytes exceeds {max}")
            }
        }
    }
}

impl From<LinuxError> for crate::Error {
    fn from(e: LinuxError) -> Self {
        crate::Error::GuestImage(match e {
            LinuxError::Truncated { .. } => "bzImage truncated",
            LinuxError::NotBzImage => "not a bzImage",
            LinuxError::OldProtocol { .. } => "Linux boot protocol older than 2.12",
            LinuxError::BadHeader(w) | LinuxError::NoRoom(w) => w,
            LinuxError::CmdlineTooLong { .. } => "kernel command line too long",
        })
    }
}

/// The setup-header fields the loader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    /// Protected-mode code size in 16-byte paragraphs.
    pub syssize: u32,
    pub version: u16,
    pub loadflags: u8,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub pref_address: u64,
    pub init_size: u32,
    /// End of the header in the image (0x202 + the jump's offset byte).
    pub header_end: usize,
}

fn u8_at(b: &[u8], o: usize) -> u8 {
    b[o]
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

impl SetupHeader {
    /// Parses and checks the header of `image` (boot.rst "Details of
    /// Header Fields").
    pub fn parse(image: &[u8]) -> Result<Self, LinuxError> {
        let have = image.len() as u64;
        if image.len() < HEADER_MIN_END + 4 {
            return Err(LinuxError::Truncated {
                need: (HEADER_MIN_END + 4) as u64,
                have,
            });
        }
        if u16_at(image, BOOT_FLAG) != 0xAA55 || &image[HEADER..HEADER + 4] != b"HdrS" {
            return Err(LinuxError::NotBzImage);
        }
        let version = u16_at(image, VERSION);
        if version < MIN_VERSION {
            return Err(LinuxError::OldProtocol { version });
        }
        // The header ends where the 2-byte jump at 0x200 lands.
        let header_end = HEADER + usize::from(u8_at(image, JUMP + 1));
        if !(HEADER_MIN_END..=0x400).contains(&header_end) {
            return Err(LinuxError::BadHeader("header length out of range"));
        }
        let setup_sects = match u8_at(image, SETUP_SECTS) {
            0 => 4,
            n => n,
        };
        let h = SetupHeader {
            setup_sects,
            syssize: u32_at(image, SYSSIZE),
            version,
            loadflags: u8_at(image, LOADFLAGS),
            initrd_addr_max: u32_at(image, INITRD_ADDR_MAX),
            kernel_alignment: u32_at(image, KERNEL_ALIGNMENT),
            relocatable: u8_at(image, RELOCATABLE_KERNEL) != 0,
            xloadflags: u16_at(image, XLOADFLAGS),
            cmdline_size: u32_at(image, CMDLINE_SIZE),
            pref_address: u64_at(image, PREF_ADDRESS),
            init_size: u32_at(image, INIT_SIZE),
            header_end,
        };
        if h.loadflags & LOADED_HIGH == 0 {
            return Err(LinuxError::BadHeader("zImage (not loaded high)"));
        }
        if h.syssize == 0 {
            return Err(LinuxError::BadHeader("syssize is zero"));
        }
        if h.relocatable && !h.kernel_alignment.is_power_of_two() {
            return Err(LinuxError::BadHeader("kernel_alignment not a power of two"));
        }
        let kernel = h.kernel_range();
        if (h.init_size as u64) < kernel.1 - kernel.0 {
            return Err(LinuxError::BadHeader("init_size below the kernel's size"));
        }
        if kernel.1 > have {
            return Err(LinuxError::Truncated {
                need: kernel.1,
                have,
            });
        }
        Ok(h)
    }

    /// Byte range of the protected-mode kernel in the image.
    pub fn kernel_range(&self) -> (u64, u64) {
        let start = (u64::from(self.setup_sects) + 1) * 512;
        (start, start + u64::from(self.syssize) * 16)
    }

    /// Where the protected-mode kernel goes in `ram_size` bytes of guest
    /// RAM: `pref_address` if `init_size` bytes fit there, else (relocatable
    /// kernels) 1 MiB rounded up to `kernel_alignment`.
    pub fn load_address(&self, ram_size: u64) -> Result<u64, LinuxError> {
        let fits = |at: u64| {
            at >= HIGH_RAM
                && at
                    .checked_add(u64::from(self.init_size))
                    .is_some_and(|e| e <= ram_size)
        };
        if fits(self.pref_address) {
            return Ok(self.pref_address);
        }
        if self.relocatable {
            let align = u64::from(self.kernel_alignment).max(1);
            let at = HIGH_RAM.div_ceil(align) * align;
            if fits(at) {
                return Ok(at);
            }
        }
        Err(LinuxError::NoRoom("kernel + init_size beyond guest RAM"))
    }
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest's memory map for `ram_size` bytes of RAM.
pub fn e820_map(ram_size: u64) -> [E820Entry; 4] {
    [
        E820Entry {
            addr: 0,
            size: LOW_RAM_END,
            kind: E820_RAM,
        },
        E820Entry {
            addr: LOW_RAM_END,
            size: 0xA_0000 - LOW_RAM_END,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_BASE,
            size: HIGH_RAM - ACPI_BASE,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIGH_RAM,
            size: ram_size - HIGH_RAM,
            kind: E820_RAM,
        },
    ]
}

/// Where things landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub start: GuestStart,
    pub header: SetupHeader,
    /// Guest-physical address of the protected-mode kernel.
    pub kernel_addr: u64,
    /// Guest-physical range of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// Guest-physical address of the RSDP.
    pub rsdp: u64,
}

/// The platform described to the guest's ACPI tables.
pub use crate::acpi::AcpiPlatform;

/// Loads `image` (a bzImage), `initrd` and `cmdline` into `ram`
/// (guest-physical 0 = `ram[0]`), writes the ACPI tables for `platform`
/// and returns the entry state. Never panics on a malformed image.
pub fn load(
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram: &mut [u8],
    platform: &AcpiPlatform,
) -> Result<Loaded, LinuxError> {
    let h = SetupHeader::parse(image)?;
    let ram_size = ram.len() as u64;
    if !((16 << 20)..=(4 << 30)).contains(&ram_size) {
        return Err(LinuxError::NoRoom("guest RAM must be 16 MiB..4 GiB"));
    }
    let max = (h.cmdline_size as usize).min((CMDLINE_END - CMDLINE_ADDR) as usize - 1);
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let kernel_addr = h.load_address(ram_size)?;
    let kernel_end = kernel_addr + u64::from(h.init_size);
    // Initrd: as high as possible, page aligned, below initrd_addr_max and
    // the end of RAM, above the kernel's decompression area.
    let initrd_range = match initrd {
        None => None,
        Some(rd) => {
            let len = rd.len() as u64;
            let top = ram_size.min(u64::from(h.initrd_addr_max) + 1);
            let at = top
                .checked_sub(len)
                .map(|a| a & !0xFFF)
                .filter(|&a| a >= kernel_end)
                .ok_or(LinuxError::NoRoom("initrd does not fit above the kernel"))?;
            Some((at, at + len))
        }
    };

    // Everything checked: now write guest RAM.
    let (ks, ke) = h.kernel_range();
    let ka = kernel_addr as usize;
    ram[ka..ka + (ke - ks) as usize].copy_from_slice(&image[ks as usize..ke as usize]);
    if let (Some(rd), Some((at, _))) = (initrd, initrd_range) {
        ram[at as usize..at as usize + rd.len()].copy_from_slice(rd);
    }
    let c = CMDLINE_ADDR as usize;
    ram[c..CMDLINE_END as usize].fill(0);
    ram[c..c + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    // GDT: null, null, __BOOT_CS flat 4 GiB code, __BOOT_DS flat data.
    let g = GDT_ADDR as usize;
    ram[g..g + 32].fill(0);
    put64(ram, g + 16, 0x00CF_9B00_0000_FFFF);
    put64(ram, g + 24, 0x00CF_9300_0000_FFFF);
    let rsdp = crate::acpi::install(ram, ACPI_BASE, HIGH_RAM, platform)
        .map_err(|_| LinuxError::NoRoom("ACPI tables do not fit"))?;

    let bp = BOOT_PARAMS_ADDR as usize;
    let zp = &mut ram[bp..bp + 4096];
    zp.fill(0);
    zp[SETUP_SECTS..h.header_end].copy_from_slice(&image[SETUP_SECTS..h.header_end]);
    zp[TYPE_OF_LOADER] = 0xFF; // undefined loader (boot.rst type_of_loader)
    zp[LOADFLAGS] = (h.loadflags | LOADED_HIGH) & !(1 << 7); // no real-mode heap
    put32(zp, CODE32_START, kernel_addr as u32);
    let (rd_at, rd_len) = initrd_range.map_or((0, 0), |(a, e)| (a, e - a));
    put32(zp, RAMDISK_IMAGE, rd_at as u32);
    put32(zp, RAMDISK_SIZE, rd_len as u32);
    put32(zp, EXT_RAMDISK_IMAGE, (rd_at >> 32) as u32);
    put32(zp, EXT_RAMDISK_SIZE, (rd_len >> 32) as u32);
    put16(zp, HEAP_END_PTR, 0);
    put32(zp, CMD_LINE_PTR, CMDLINE_ADDR as u32);
    put32(zp, EXT_CMD_LINE_PTR, 0);
    put64(zp, ACPI_RSDP_ADDR, rsdp);
    let map = e820_map(ram_size);
    zp[E820_ENTRIES] = map.len() as u8;
    debug_assert!(map.len() <= E820_MAX);
    for (i, e) in map.iter().enumerate() {
        let o = E820_TABLE + i * 20;
        put64(zp, o, e.addr);
        put64(zp, o + 8, e.size);
        put32(zp, o + 16, e.kind);
    }
    Ok(Loaded {
        start: GuestStart::Linux32 {
            entry: kernel_addr as u32,
            boot_params: BOOT_PARAMS_ADDR as u32,
            gdt: GDT_ADDR as u32,
        },
        header: h,
        kernel_addr,
        initrd: initrd_range,
        rsdp,
    })
}

#[cfg(test)]
#[path = "linux_tests.rs"]
mod tests;

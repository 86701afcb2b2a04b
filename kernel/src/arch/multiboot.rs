//! Reading the multiboot1 information structure (Multiboot 0.6.96 §3.3).
//! Pure parsing of the memory map lives in [`kernel::bootinfo`]; this file
//! only turns physical addresses from the loader into slices, bounded by
//! the 4 GiB identity map.
use kernel::bootinfo::{self, MemRegion};

const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const MAX_CMDLINE: usize = 4096;

/// A boot module (guest image, initrd) as the loader placed it.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    pub cmdline: &'static str,
}

pub struct BootInfo {
    info: *const u32,
}

impl BootInfo {
    /// # Safety
    /// `addr` must be the multiboot information address the loader passed,
    /// inside the identity map, and the structure must stay untouched.
    pub unsafe fn new(addr: u32) -> Self {
        BootInfo {
            info: addr as usize as *const u32,
        }
    }

    fn field(&self, index: usize) -> u32 {
        // SAFETY: the multiboot info is at least 88 bytes (22 u32 fields),
        // identity mapped; index < 22 at every call site.
        unsafe { self.info.add(index).read_volatile() }
    }

    fn flags(&self) -> u32 {
        self.field(0)
    }

    pub fn cmdline(&self) -> &'static str {
        if self.flags() & FLAG_CMDLINE == 0 {
            return "";
        }
        // SAFETY: the loader guarantees a NUL-terminated string at this
        // identity-mapped address; we stop at MAX_CMDLINE bytes regardless.
        unsafe { c_str(self.field(4) as u64) }
    }

    pub fn modules(&self) -> impl Iterator<Item = Module> + '_ {
        let (count, addr) = if self.flags() & FLAG_MODS != 0 {
            (self.field(5) as usize, self.field(6) as u64)
        } else {
            (0, 0)
        };
        (0..count.min(64)).map(move |i| {
            let entry = (addr + 16 * i as u64) as *const u32;
            // SAFETY: `count` module entries of 16 bytes each at `addr`, per
            // the multiboot spec; the loader wrote them.
            unsafe {
                Module {
                    start: entry.read_volatile() as u64,
                    end: entry.add(1).read_volatile() as u64,
                    cmdline: c_str(entry.add(2).read_volatile() as u64),
                }
            }
        })
    }

    pub fn memory_map(&self) -> impl Iterator<Item = MemRegion> + '_ {
        let buf: &[u8] = if self.flags() & FLAG_MMAP != 0 {
            let len = self.field(11) as usize;
            let addr = self.field(12) as usize;
            // SAFETY: the loader guarantees `mmap_length` bytes of map at
            // `mmap_addr`; both are below 4 GiB (identity mapped).
            unsafe { core::slice::from_raw_parts(addr as *const u8, len.min(64 * 1024)) }
        } else {
            &[]
        };
        bootinfo::parse_mmap(buf)
    }
}

/// # Safety
/// `addr` must point to identity-mapped readable memory.
unsafe fn c_str(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    let p = addr as *const u8;
    let mut len = 0;
    // SAFETY: caller guarantees readability; bounded by MAX_CMDLINE.
    while len < MAX_CMDLINE && unsafe { p.add(len).read() } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes were just read from this range.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    core::str::from_utf8(bytes).unwrap_or("<command line is not UTF-8>")
}

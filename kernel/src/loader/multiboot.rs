//! Multiboot1 guest loader (Multiboot 0.6.96 §3.1 header, §3.2 machine
//! state, §3.3 boot information). The guest image is an ELF (32- or 64-bit,
//! parsed with the `elf` crate) carrying a multiboot header in its first
//! 8 KiB; its PT_LOAD segments are copied to their physical addresses in
//! guest RAM and the boot information (memory map, command line) is built
//! in low guest memory.
use super::GuestStart;
use crate::Error;
use elf::endian::AnyEndian;
use elf::ElfBytes;

const HEADER_MAGIC: u32 = 0x1BAD_B002;
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Where the boot information goes in guest RAM (below 1 MiB).
pub const INFO_ADDR: u64 = 0x8000;
const MMAP_ADDR: u64 = 0x8100;
const CMDLINE_ADDR: u64 = 0x9000;
const CMDLINE_MAX: usize = 0x1000 - 1;
/// Guest images must load at or above this address.
const LOAD_FLOOR: u64 = 0x10_0000;

/// Finds and checks the multiboot header (first 8 KiB, 4-byte aligned).
pub fn find_header(image: &[u8]) -> Option<usize> {
    let limit = image.len().min(8192);
    (0..limit.saturating_sub(11)).step_by(4).find(|&off| {
        let word = |i: usize| u32::from_le_bytes(image[i..i + 4].try_into().unwrap_or([0; 4]));
        let (magic, flags, sum) = (word(off), word(off + 4), word(off + 8));
        magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
    })
}

/// Loads `image` into `ram` (guest-physical 0 = `ram[0]`) and returns the
/// entry state.
pub fn load(image: &[u8], cmdline: &str, ram: &mut [u8]) -> Result<GuestStart, Error> {
    let bad = |what: &'static str| Error::GuestImage(what);
    find_header(image).ok_or(bad("no multiboot header in the first 8 KiB"))?;
    let file = ElfBytes::<AnyEndian>::minimal_parse(image).map_err(|_| bad("not an ELF file"))?;
    let segments = file.segments().ok_or(bad("ELF has no program headers"))?;
    let mut loaded = 0;
    for ph in segments.iter().filter(|p| p.p_type == elf::abi::PT_LOAD) {
        let (paddr, filesz, memsz, offset) = (ph.p_paddr, ph.p_filesz, ph.p_memsz, ph.p_offset);
        if filesz > memsz {
            return Err(bad("segment file size exceeds memory size"));
        }
        let end = paddr
            .checked_add(memsz)
            .ok_or(bad("segment address overflows"))?;
        if paddr < LOAD_FLOOR || end > ram.len() as u64 {
            return Err(bad(
                "segment outside guest RAM (must lie in 1 MiB..guest_mem)",
            ));
        }
        let src_end = offset
            .checked_add(filesz)
            .ok_or(bad("segment offset overflows"))?;
        let src = image
            .get(offset as usize..src_end as usize)
            .ok_or(bad("segment data beyond end of file"))?;
        let dst = &mut ram[paddr as usize..end as usize];
        dst[..src.len()].copy_from_slice(src);
        dst[src.len()..].fill(0);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(bad("ELF has no loadable segments"));
    }
    let entry = file.ehdr.e_entry;
    if entry < LOAD_FLOOR || entry >= ram.len() as u64 || entry > u32::MAX as u64 {
        return Err(bad("entry point outside guest RAM"));
    }
    write_info(ram, cmdline)?;
    Ok(GuestStart::Protected32 {
        entry: entry as u32,
        eax: BOOTLOADER_MAGIC,
        ebx: INFO_ADDR as u32,
    })
}

fn put32(ram: &mut [u8], addr: u64, v: u32) {
    let a = addr as usize;
    ram[a..a + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(ram: &mut [u8], addr: u64, v: u64) {
    let a = addr as usize;
    ram[a..a + 8].copy_from_slice(&v.to_le_bytes());
}

/// Boot information: memory (bit 0), command line (bit 2), memory map (bit 6).
fn write_info(ram: &mut [u8], cmdline: &str) -> Result<(), Error> {
    if ram.len() < (2 << 20) {
        return Err(Error::GuestImage("guest RAM below 2 MiB"));
    }
    ram[INFO_ADDR as usize..CMDLINE_ADDR as usize + CMDLINE_MAX + 1].fill(0);
    let size = ram.len() as u64;
    put32(ram, INFO_ADDR, (1 << 0) | (1 << 2) | (1 << 6));
    put32(ram, INFO_ADDR + 4, 639);
    put32(ram, INFO_ADDR + 8, ((size - LOAD_FLOOR) / 1024) as u32);
    let bytes = cmdline.as_bytes();
    let n = bytes.len().min(CMDLINE_MAX);
    let c = CMDLINE_ADDR as usize;
    ram[c..c + n].copy_from_slice(&bytes[..n]);
    put32(ram, INFO_ADDR + 16, CMDLINE_ADDR as u32);
    // Two available ranges: [0, 0x9FC00) and [1 MiB, size).
    let entries = [(0u64, 0x9_FC00u64), (LOAD_FLOOR, size - LOAD_FLOOR)];
    for (i, (base, len)) in entries.iter().enumerate() {
        let e = MMAP_ADDR + i as u64 * 24;
        put32(ram, e, 20);
        put64(ram, e + 4, *base);
        put64(ram, e + 12, *len);
        put32(ram, e + 20, 1);
    }
    put32(ram, INFO_ADDR + 44, (entries.len() * 24) as u32);
    put32(ram, INFO_ADDR + 48, MMAP_ADDR as u32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootinfo::parse_mmap;

    /// A minimal ELF64 with one PT_LOAD at 1 MiB holding a multiboot header.
    fn tiny_elf(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&(paddr + 12).to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 8..ph + 16].copy_from_slice(&0x200u64.to_le_bytes()); // offset
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&0x20u64.to_le_bytes()); // filesz
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        f[0x200..0x204].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        f[0x204..0x208].copy_from_slice(&3u32.to_le_bytes());
        f[0x208..0x20c].copy_from_slice(&(0u32.wrapping_sub(HEADER_MAGIC + 3)).to_le_bytes());
        f[0x20c] = 0xF4; // hlt
        f
    }

    #[test]
    fn loads_segments_and_info() {
        let mut ram = vec![0xAAu8; 4 << 20];
        let start = load(&tiny_elf(0x10_0000, 0x100), "test=hello", &mut ram).unwrap();
        assert_eq!(
            start,
            GuestStart::Protected32 {
                entry: 0x10_000c,
                eax: BOOTLOADER_MAGIC,
                ebx: 0x8000
            }
        );
        assert_eq!(&ram[0x10_0000..0x10_0004], &HEADER_MAGIC.to_le_bytes());
        assert_eq!(ram[0x10_000c], 0xF4);
        assert!(
            ram[0x10_0020..0x10_0100].iter().all(|&b| b == 0),
            "bss zeroed"
        );
        assert_eq!(&ram[0x9000..0x900a], b"test=hello");
        assert_eq!(ram[0x900a], 0);
        let mmap: Vec<_> = parse_mmap(&ram[0x8100..0x8100 + 48]).collect();
        assert_eq!(mmap[1].base + mmap[1].len, 4 << 20);
    }

    #[test]
    fn rejects_bad_images() {
        let mut ram = vec![0u8; 4 << 20];
        assert!(load(b"garbage", "", &mut ram).is_err());
        assert!(
            load(&tiny_elf(0x10_0000, 8 << 20), "", &mut ram).is_err(),
            "too big"
        );
        assert!(
            load(&tiny_elf(0x1000, 0x100), "", &mut ram).is_err(),
            "below 1 MiB"
        );
        let mut no_header = tiny_elf(0x10_0000, 0x100);
        no_header[0x200] = 0;
        assert!(load(&no_header, "", &mut ram).is_err());
        let mut truncated = tiny_elf(0x10_0000, 0x100);
        truncated.truncate(0x210);
        assert!(load(&truncated, "", &mut ram).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut ram = vec![0u8; 4 << 20];
        let mut x: u64 = 0x1234_5678;
        for _ in 0..2000 {
            let mut img = tiny_elf(0x10_0000, 0x100);
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % 0x220;
                img[i] = (x >> 32) as u8;
            }
            let _ = load(&img, "", &mut ram);
        }
    }
}

//! ftvisor's test guest: a small `no_std` x86-64 multiboot1 kernel that runs
//! natively in QEMU and as the guest under the hypervisor (in Bochs). It
//! reuses the hypervisor's boot trampoline (`boot` crate: multiboot header,
//! long mode, 4 GiB identity map) and runs the test named by `test=` on its
//! multiboot command line: `hello` (CPUID/RDTSC/RDRAND and a deterministic
//! memory checksum), `timer` (x2APIC periodic timer accuracy) and the
//! `hostile-*` guests that misbehave on purpose. Output goes to the 16550 at
//! 0x3F8; the result is an exit code (hypercall under ftvisor, QEMU
//! `isa-debug-exit` natively).
#![no_std]
#![no_main]

use boot as _; // links the multiboot header and trampoline

mod hw;
mod idt;
mod kv;
mod replay;
mod tests;
mod virtio;
mod virtio_tests;

/// Multiboot info flag: `cmdline` (offset 16) is valid.
const MB_INFO_CMDLINE: u32 = 1 << 2;
/// Multiboot info flag: `mem_lower`/`mem_upper` (offsets 4, 8) are valid.
const MB_INFO_MEM: u32 = 1 << 0;
const CMDLINE_MAX: usize = 4096;

/// What the multiboot information told the guest.
pub struct BootInfo {
    pub cmdline: &'static str,
    /// Bytes of RAM above 1 MiB, when the loader said.
    pub mem_upper: Option<u64>,
}

fn boot_info(magic: u32, info: u32) -> BootInfo {
    let mut bi = BootInfo {
        cmdline: "",
        mem_upper: None,
    };
    if magic != boot::MULTIBOOT_BOOTLOADER_MAGIC || info == 0 {
        println!("guest: no multiboot info (magic={magic:#x})");
        return bi;
    }
    let info = info as usize as *const u32;
    // SAFETY: the loader passes the physical address of the multiboot info
    // structure, identity mapped below 4 GiB; flags at offset 0.
    let flags = unsafe { info.read_volatile() };
    if flags & MB_INFO_MEM != 0 {
        // SAFETY: mem_upper (KiB above 1 MiB) at offset 8, valid per flags.
        let kib = unsafe { info.add(2).read_volatile() };
        bi.mem_upper = Some(u64::from(kib) * 1024);
    }
    if flags & MB_INFO_CMDLINE != 0 {
        // SAFETY: cmdline pointer at offset 16, valid per flags.
        let ptr = unsafe { info.add(4).read_volatile() } as usize as *const u8;
        let mut len = 0;
        // SAFETY: NUL-terminated string in identity-mapped low memory; the
        // scan is bounded by CMDLINE_MAX.
        while len < CMDLINE_MAX && unsafe { ptr.add(len).read_volatile() } != 0 {
            len += 1;
        }
        // SAFETY: `len` bytes were just read from this identity-mapped,
        // loader-owned region that nothing writes while the guest runs.
        let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
        bi.cmdline = core::str::from_utf8(bytes).unwrap_or("");
    }
    bi
}

/// Value of `key=` among the space-separated words of the command line
/// (QEMU and GRUB put the kernel's path first; words without `=` are skipped).
pub fn option<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[no_mangle]
extern "C" fn kmain(magic: u32, info: u32) -> ! {
    hw::serial_init();
    let under = hw::detect_ftvisor();
    if !under {
        // Natively the BIOS left the 8259 PICs delivering IRQ 0 (PIT) at
        // vector 8; mask them so `sti` only lets the x2APIC timer in. Under
        // ftvisor there is no PIC and the guest leaves ports 0x21/0xA1 alone.
        hw::outb(0x21, 0xFF);
        hw::outb(0xA1, 0xFF);
    }
    idt::init();
    let bi = boot_info(magic, info);
    println!("guest: cmdline \"{}\"", bi.cmdline);
    let code = match option(bi.cmdline, "test") {
        Some("hello") => tests::hello(&bi, under),
        Some("timer") => tests::timer(&bi),
        Some("replay") => replay::run(&bi),
        Some("kv") => kv::run(&bi),
        Some("hostile-unmapped") => tests::hostile_unmapped(),
        Some("hostile-msr") => tests::hostile_msr(),
        Some("hostile-hypercall") => tests::hostile_hypercall(),
        Some("hostile-triple") => tests::hostile_triple(),
        Some("hostile-cli-loop") => tests::hostile_cli_loop(),
        Some(t) if virtio_tests::handles(t) => virtio_tests::run(t, &bi),
        Some(other) => {
            println!("guest: unknown test \"{other}\" (test=hello|timer|hostile-unmapped|hostile-msr|hostile-hypercall|hostile-triple|hostile-cli-loop)");
            2
        }
        None => {
            println!("guest: no test= on the command line");
            2
        }
    };
    hw::exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => println!(
            "guest PANIC at {}:{}: {}",
            loc.file(),
            loc.line(),
            info.message()
        ),
        None => println!("guest PANIC: {}", info.message()),
    }
    hw::exit(4)
}

//! Guest loaders: put a guest image into guest RAM and describe the CPU
//! state it starts in. `multiboot` loads a Multiboot 0.6.96 ELF kernel (the
//! test guests); `linux` loads a bzImage with the Linux x86 boot protocol
//! (initrd, command line, zero page with e820 map, ACPI tables).

pub mod linux;
pub mod multiboot;

/// The CPU state the guest starts in, for the VMCS guest-state area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStart {
    /// 32-bit protected mode, flat segments, paging off (Multiboot §3.2):
    /// EIP = entry, EAX = magic, EBX = info address.
    Protected32 { entry: u32, eax: u32, ebx: u32 },
    /// Linux 32-bit boot protocol (boot.rst "32-bit Boot Protocol"): flat
    /// 32-bit protected mode, paging off, GDTR = `gdt` (32 bytes) with
    /// `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18 loaded, interrupts off,
    /// ESI = `boot_params`, EBX = EBP = EDI = 0.
    Linux32 {
        entry: u32,
        boot_params: u32,
        gdt: u32,
    },
}

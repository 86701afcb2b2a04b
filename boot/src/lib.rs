//! Entry from the boot loader (Multiboot 0.6.96 §3.1, Intel SDM Vol. 3A §10.8.5
//! "Initializing IA-32e Mode").
//!
//! The loader (GRUB, QEMU `-kernel`, SeaBIOS/Bochs BIOS + GRUB ISO) enters
//! `_start32` in 32-bit protected mode with paging off, `EAX` = multiboot
//! magic and `EBX` = physical address of the multiboot information. The
//! trampoline checks for long mode, identity-maps the first 4 GiB with 2 MiB
//! pages, enables PAE + EFER.LME + paging, loads a 64-bit GDT and calls
//! `kmain(magic: u32, info: u32)` on a 64 KiB boot stack with interrupts off.
//!
//! The linker script (`boot/linker.ld`) places the multiboot header first and
//! links the image at 1 MiB; `boot/mkimage.sh` turns the ELF64 into the ELF32
//! QEMU's multiboot loader wants and into a GRUB rescue ISO.
#![no_std]

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("entry.S"), options(att_syntax));

/// Multiboot1 magic the loader leaves in EAX (Multiboot 0.6.96 §3.2).
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Size of the identity map the trampoline builds.
pub const IDENTITY_MAP_BYTES: u64 = 4 << 30;

//! Guest loaders: put a guest image into guest RAM and describe the CPU
//! state it starts in. `multiboot` loads a Multiboot 0.6.96 ELF kernel (the
//! test guests); a Linux boot-protocol loader will sit beside it and return
//! the same [`GuestStart`].

pub mod multiboot;

/// The CPU state the guest starts in, for the VMCS guest-state area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStart {
    /// 32-bit protected mode, flat segments, paging off (Multiboot §3.2):
    /// EIP = entry, EAX = magic, EBX = info address.
    Protected32 { entry: u32, eax: u32, ebx: u32 },
}

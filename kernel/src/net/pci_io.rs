//! PCI configuration mechanism #1 through ports 0xCF8/0xCFC (PCI Local Bus
//! 3.0 §3.2.2.3.2), the kernel's [`ConfigSpace`].
use drivers::pci::{ConfigSpace, PciAddress};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Port-I/O configuration access. The kernel is single-threaded with
/// interrupts off, so the address/data pair is never interleaved.
#[derive(Clone, Copy, Default)]
pub struct PortConfigSpace;

impl ConfigSpace for PortConfigSpace {
    fn read32(&self, addr: PciAddress, offset: u8) -> u32 {
        // SAFETY: ring 0; selecting and reading a configuration dword has
        // no memory-safety effect.
        unsafe {
            x86::io::outl(CONFIG_ADDRESS, addr.config_address(offset));
            x86::io::inl(CONFIG_DATA)
        }
    }

    fn write32(&mut self, addr: PciAddress, offset: u8, value: u32) {
        // SAFETY: ring 0; callers write only command and BAR registers of
        // the NIC they drive (BARs are restored after sizing).
        unsafe {
            x86::io::outl(CONFIG_ADDRESS, addr.config_address(offset));
            x86::io::outl(CONFIG_DATA, value);
        }
    }
}

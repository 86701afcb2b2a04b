//! PCI configuration space: enumeration and BAR sizing (PCI Local Bus
//! Specification 3.0, §6.1 "Configuration Space Organization", §6.2.5 "Base
//! Addresses"; §3.2.2.3.2 for Configuration Mechanism #1 through I/O ports
//! 0xCF8 `CONFIG_ADDRESS` / 0xCFC `CONFIG_DATA`).
//!
//! The access mechanism is the [`ConfigSpace`] trait: the kernel implements
//! it with port I/O, the tests with [`fake::FakeBus`]. BARs are read as the
//! firmware assigned them; nothing is reassigned. A memory BAR below 4 GiB is
//! reachable through the kernel's identity map.
use alloc::vec::Vec;

/// Bus/device/function of one PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl core::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl PciAddress {
    /// The `CONFIG_ADDRESS` (port 0xCF8) value selecting the dword holding
    /// `offset` (PCI 3.0 §3.2.2.3.2: enable bit 31, bus 23:16, device 15:11,
    /// function 10:8, register 7:2).
    pub fn config_address(self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.device & 0x1F) << 11)
            | (u32::from(self.function & 0x7) << 8)
            | u32::from(offset & 0xFC)
    }
}

/// Access to the configuration space (dword granularity).
pub trait ConfigSpace {
    fn read32(&self, addr: PciAddress, offset: u8) -> u32;
    fn write32(&mut self, addr: PciAddress, offset: u8, value: u32);
}

/// Configuration-space registers (PCI 3.0 §6.1, type 0 header).
pub mod reg {
    pub const VENDOR_DEVICE: u8 = 0x00;
    pub const COMMAND_STATUS: u8 = 0x04;
    pub const CLASS_REV: u8 = 0x08;
    pub const HEADER: u8 = 0x0C;
    pub const BAR0: u8 = 0x10;
    pub const INTERRUPT: u8 = 0x3C;
    /// Command register bits (§6.2.2).
    pub const CMD_IO: u32 = 1 << 0;
    pub const CMD_MEMORY: u32 = 1 << 1;
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
    pub const CMD_INTX_DISABLE: u32 = 1 << 10;
}

/// One decoded base address register (§6.2.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    Memory {
        address: u64,
        size: u64,
        prefetchable: bool,
        is_64bit: bool,
    },
    Io {
        port: u32,
        size: u32,
    },
}

impl Bar {
    /// The memory range, if this is a memory BAR.
    pub fn memory(&self) -> Option<(u64, u64)> {
        match *self {
            Bar::Memory { address, size, .. } => Some((address, size)),
            Bar::Io { .. } => None,
        }
    }
}

/// A function found on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub addr: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub header_type: u8,
    pub interrupt_line: u8,
    /// BAR0..BAR5 of a type-0 header; the upper half of a 64-bit BAR is `None`.
    pub bars: [Option<Bar>; 6],
}

impl PciDevice {
    /// The first memory BAR, if any.
    pub fn first_memory_bar(&self) -> Option<(u8, u64, u64)> {
        self.bars
            .iter()
            .enumerate()
            .find_map(|(i, b)| b.and_then(|b| b.memory()).map(|(a, s)| (i as u8, a, s)))
    }
}

/// Size from the value read back after writing all ones (§6.2.5.1: the
/// device hardwires the low address bits to zero).
fn size_from_mask(mask: u64) -> u64 {
    if mask == 0 {
        0
    } else {
        (!mask).wrapping_add(1)
    }
}

/// Decodes and sizes the BARs of a type-0 header. Decoding is switched off
/// in the command register while all ones are written (§6.2.5.1), then the
/// original values and command are restored.
pub fn read_bars<C: ConfigSpace>(cfg: &mut C, addr: PciAddress) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let command = cfg.read32(addr, reg::COMMAND_STATUS) & 0xFFFF;
    cfg.write32(
        addr,
        reg::COMMAND_STATUS,
        command & !(reg::CMD_IO | reg::CMD_MEMORY),
    );
    let mut i = 0usize;
    while i < 6 {
        let off = reg::BAR0 + 4 * i as u8;
        let orig = cfg.read32(addr, off);
        cfg.write32(addr, off, 0xFFFF_FFFF);
        let mask = cfg.read32(addr, off);
        cfg.write32(addr, off, orig);
        if orig & 1 == 1 {
            // I/O space BAR: bits 31:2 address (upper 16 bits may read 0).
            let m = mask & !0x3;
            if m != 0 {
                let size = (!(m | 0xFFFF_0000)).wrapping_add(1) & 0xFFFF;
                bars[i] = Some(Bar::Io {
                    port: orig & !0x3,
                    size,
                });
            }
            i += 1;
            continue;
        }
        let kind = (orig >> 1) & 0x3;
        let prefetchable = orig & 0x8 != 0;
        if kind == 0x2 && i < 5 {
            let off_hi = off + 4;
            let orig_hi = cfg.read32(addr, off_hi);
            cfg.write32(addr, off_hi, 0xFFFF_FFFF);
            let mask_hi = cfg.read32(addr, off_hi);
            cfg.write32(addr, off_hi, orig_hi);
            let full_mask = (u64::from(mask_hi) << 32) | u64::from(mask & !0xF);
            if full_mask != 0 {
                bars[i] = Some(Bar::Memory {
                    address: (u64::from(orig_hi) << 32) | u64::from(orig & !0xF),
                    size: size_from_mask(full_mask),
                    prefetchable,
                    is_64bit: true,
                });
            }
            i += 2;
        } else {
            let m = mask & !0xF;
            if m != 0 {
                bars[i] = Some(Bar::Memory {
                    address: u64::from(orig & !0xF),
                    size: size_from_mask(u64::from(m) | 0xFFFF_FFFF_0000_0000),
                    prefetchable,
                    is_64bit: false,
                });
            }
            i += 1;
        }
    }
    cfg.write32(addr, reg::COMMAND_STATUS, command);
    bars
}

fn probe<C: ConfigSpace>(cfg: &mut C, addr: PciAddress) -> Option<PciDevice> {
    let id = cfg.read32(addr, reg::VENDOR_DEVICE);
    let vendor_id = id as u16;
    if vendor_id == 0xFFFF || vendor_id == 0 {
        return None;
    }
    let class_rev = cfg.read32(addr, reg::CLASS_REV);
    let header_type = (cfg.read32(addr, reg::HEADER) >> 16) as u8;
    let bars = if header_type & 0x7F == 0 {
        read_bars(cfg, addr)
    } else {
        [None; 6]
    };
    Some(PciDevice {
        addr,
        vendor_id,
        device_id: (id >> 16) as u16,
        class: (class_rev >> 24) as u8,
        subclass: (class_rev >> 16) as u8,
        prog_if: (class_rev >> 8) as u8,
        header_type,
        interrupt_line: cfg.read32(addr, reg::INTERRUPT) as u8,
        bars,
    })
}

/// Every function on buses 0..=255 (brute force, §3.2.2.3.2): functions
/// 1..7 are probed only on multi-function devices (header bit 7).
pub fn enumerate<C: ConfigSpace>(cfg: &mut C) -> Vec<PciDevice> {
    let mut found = Vec::new();
    for bus in 0..=255u8 {
        for device in 0..32u8 {
            let f0 = PciAddress {
                bus,
                device,
                function: 0,
            };
            let Some(dev) = probe(cfg, f0) else {
                continue;
            };
            let multi = dev.header_type & 0x80 != 0;
            found.push(dev);
            if multi {
                for function in 1..8u8 {
                    let a = PciAddress {
                        bus,
                        device,
                        function,
                    };
                    if let Some(d) = probe(cfg, a) {
                        found.push(d);
                    }
                }
            }
        }
    }
    found
}

/// Turns on memory decoding and bus mastering (DMA), and masks INTx: the
/// drivers poll (§6.2.2).
pub fn enable_mmio_dma<C: ConfigSpace>(cfg: &mut C, addr: PciAddress) {
    let cmd = cfg.read32(addr, reg::COMMAND_STATUS) & 0xFFFF;
    cfg.write32(
        addr,
        reg::COMMAND_STATUS,
        cmd | reg::CMD_MEMORY | reg::CMD_BUS_MASTER | reg::CMD_INTX_DISABLE,
    );
}

/// Adapts a [`ConfigSpace`] to `virtio-drivers`' `ConfigurationAccess`.
#[cfg(feature = "virtio-net")]
pub struct VirtioCam<C: ConfigSpace + Clone>(pub C);

#[cfg(feature = "virtio-net")]
impl<C: ConfigSpace + Clone> virtio_drivers::transport::pci::bus::ConfigurationAccess
    for VirtioCam<C>
{
    fn read_word(
        &self,
        df: virtio_drivers::transport::pci::bus::DeviceFunction,
        register_offset: u8,
    ) -> u32 {
        self.0.read32(
            PciAddress {
                bus: df.bus,
                device: df.device,
                function: df.function,
            },
            register_offset,
        )
    }

    fn write_word(
        &mut self,
        df: virtio_drivers::transport::pci::bus::DeviceFunction,
        register_offset: u8,
        data: u32,
    ) {
        self.0.write32(
            PciAddress {
                bus: df.bus,
                device: df.device,
                function: df.function,
            },
            register_offset,
            data,
        )
    }

    unsafe fn unsafe_clone(&self) -> Self {
        VirtioCam(self.0.clone())
    }
}

/// A configuration space in memory with BAR sizing semantics, for tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// One fake function: 64 dwords of header plus the BAR size masks.
    #[derive(Clone)]
    pub struct FakeFunction {
        pub regs: [u32; 64],
        /// Writable-bit mask of each BAR dword (0 = not implemented).
        pub bar_masks: [u32; 6],
    }

    #[derive(Clone, Default)]
    pub struct FakeBus {
        pub functions: BTreeMap<PciAddress, FakeFunction>,
        pub writes: Vec<(PciAddress, u8, u32)>,
    }

    impl FakeBus {
        pub fn add(
            &mut self,
            addr: PciAddress,
            vendor: u16,
            device: u16,
            class: u32,
        ) -> &mut FakeFunction {
            let mut regs = [0u32; 64];
            regs[0] = u32::from(vendor) | (u32::from(device) << 16);
            regs[2] = class << 8;
            self.functions.insert(
                addr,
                FakeFunction {
                    regs,
                    bar_masks: [0; 6],
                },
            );
            self.functions.get_mut(&addr).unwrap()
        }
    }

    impl ConfigSpace for FakeBus {
        fn read32(&self, addr: PciAddress, offset: u8) -> u32 {
            match self.functions.get(&addr) {
                Some(f) => f.regs[usize::from(offset / 4)],
                None => 0xFFFF_FFFF,
            }
        }
        fn write32(&mut self, addr: PciAddress, offset: u8, value: u32) {
            self.writes.push((addr, offset, value));
            let Some(f) = self.functions.get_mut(&addr) else {
                return;
            };
            let i = usize::from(offset / 4);
            if (4..10).contains(&i) {
                let mask = f.bar_masks[i - 4];
                let low_ro = f.regs[i] & !mask;
                f.regs[i] = (value & mask) | low_ro;
            } else if i == 1 {
                f.regs[i] = (f.regs[i] & 0xFFFF_0000) | (value & 0xFFFF);
            } else {
                f.regs[i] = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeBus;
    use super::*;

    fn at(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress {
            bus,
            device,
            function,
        }
    }

    #[test]
    fn config_address_layout() {
        assert_eq!(at(0, 0, 0).config_address(0), 0x8000_0000);
        assert_eq!(at(1, 3, 2).config_address(0x13), 0x8001_1A10);
        assert_eq!(at(255, 31, 7).config_address(0xFC), 0x80FF_FFFC);
        assert_eq!(at(0, 2, 0).to_string(), "00:02.0");
    }

    /// An 82540EM as QEMU presents it: 128 KiB memory BAR0, 64-byte I/O BAR1.
    fn e1000_bus() -> FakeBus {
        let mut bus = FakeBus::default();
        let f = bus.add(at(0, 3, 0), 0x8086, 0x100E, 0x02_00_00);
        f.regs[4] = 0xFEB8_0000;
        f.bar_masks[0] = !(128 * 1024 - 1) & !0xF;
        f.regs[5] = 0xC001;
        f.bar_masks[1] = 0xFFFF_FFC0;
        f.regs[1] = 0x3;
        bus
    }

    #[test]
    fn sizes_memory_and_io_bars_and_restores() {
        let mut bus = e1000_bus();
        let devs = enumerate(&mut bus);
        assert_eq!(devs.len(), 1);
        let d = &devs[0];
        assert_eq!((d.vendor_id, d.device_id, d.class), (0x8086, 0x100E, 0x02));
        assert_eq!(
            d.bars[0],
            Some(Bar::Memory {
                address: 0xFEB8_0000,
                size: 128 * 1024,
                prefetchable: false,
                is_64bit: false
            })
        );
        assert_eq!(
            d.bars[1],
            Some(Bar::Io {
                port: 0xC000,
                size: 64
            })
        );
        assert_eq!(d.bars[2], None);
        assert_eq!(d.first_memory_bar(), Some((0, 0xFEB8_0000, 128 * 1024)));
        // Original BARs and command restored; decoding was off while sizing.
        let f = &bus.functions[&at(0, 3, 0)];
        assert_eq!(f.regs[4], 0xFEB8_0000);
        assert_eq!(f.regs[5], 0xC001);
        assert_eq!(f.regs[1] & 0xFFFF, 0x3);
        let first_cmd = bus
            .writes
            .iter()
            .find(|w| w.1 == reg::COMMAND_STATUS)
            .unwrap();
        assert_eq!(first_cmd.2 & 0x3, 0);
    }

    #[test]
    fn sizes_64bit_prefetchable_bar() {
        let mut bus = FakeBus::default();
        let f = bus.add(at(0, 4, 0), 0x1AF4, 0x1041, 0x02_00_00);
        // BAR4/5: 16 KiB 64-bit prefetchable at 0x1_0000_0000 + 0xC000.
        f.regs[8] = 0x0000_C00C;
        f.regs[9] = 0x1;
        f.bar_masks[4] = !(16 * 1024 - 1) & !0xF;
        f.bar_masks[5] = 0xFFFF_FFFF;
        let devs = enumerate(&mut bus);
        assert_eq!(
            devs[0].bars[4],
            Some(Bar::Memory {
                address: 0x1_0000_C000,
                size: 16 * 1024,
                prefetchable: true,
                is_64bit: true
            })
        );
        assert_eq!(devs[0].bars[5], None);
    }

    #[test]
    fn multifunction_and_empty_slots() {
        let mut bus = e1000_bus();
        bus.add(at(0, 1, 0), 0x8086, 0x7000, 0x06_01_00).regs[3] = 0x0080_0000;
        bus.add(at(0, 1, 1), 0x8086, 0x7010, 0x01_01_80);
        // Function 2 on a single-function device is never probed.
        bus.add(at(0, 3, 2), 0x1234, 0x5678, 0);
        bus.add(at(2, 0, 0), 0x10EC, 0x8139, 0x02_00_00);
        let addrs: Vec<_> = enumerate(&mut bus).iter().map(|d| d.addr).collect();
        assert_eq!(addrs, [at(0, 1, 0), at(0, 1, 1), at(0, 3, 0), at(2, 0, 0)]);
    }

    #[test]
    fn enable_sets_memory_and_bus_master() {
        let mut bus = e1000_bus();
        enable_mmio_dma(&mut bus, at(0, 3, 0));
        let cmd = bus.read32(at(0, 3, 0), reg::COMMAND_STATUS);
        assert_eq!(cmd & 0x407, 0x407);
    }
}

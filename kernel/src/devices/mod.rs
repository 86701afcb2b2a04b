//! Guest-visible device models and the bus that routes guest port I/O and
//! MMIO accesses to them.
//!
//! Every model follows the rust-vmm `vm-superio` habit: a device is a plain
//! state machine with no globals and no hardware access. Bytes go in through
//! register accesses, bytes come out through explicit "take" calls, and
//! interrupts leave through the [`IrqLine`] trait. Device structs are plain
//! data (`Clone + Eq`, no pointers), so state transfer and record/replay can
//! copy and compare them.
//!
//! Time is never read from a clock: every access carries `now`, the guest's
//! virtual TSC supplied by the hypervisor, so a model is deterministic given
//! the sequence of accesses.
//!
//! The [`Bus`] is only a routing table from port / guest-physical ranges to
//! caller-chosen device ids; the caller owns the devices (concretely typed,
//! so it can still call e.g. [`uart::Uart::take_output`]) and hands them to
//! the bus through the [`DeviceSet`] trait when dispatching an access.

use alloc::vec::Vec;

pub mod absent;
pub mod acpi_pm;
pub mod ioapic;
pub mod lapic;
pub mod pit;
pub mod rtc;
pub mod snapshot;
pub mod uart;
pub mod virtio;

/// A device on the x86 I/O port space (`IN`/`OUT`, SDM Vol. 2).
pub trait PioDevice {
    /// A guest `IN` of `size` bytes (1, 2 or 4) at `offset` from the start
    /// of the range the device was registered at. Returns the value,
    /// zero-extended to 32 bits.
    fn pio_read(&mut self, offset: u16, size: u8, now: u64) -> u32;
    /// A guest `OUT` of the low `size` bytes of `value` at `offset`.
    fn pio_write(&mut self, offset: u16, size: u8, value: u32, now: u64);
}

/// A device in guest-physical memory (an EPT-violation MMIO exit), e.g. a
/// virtio-mmio transport.
pub trait MmioDevice {
    /// A guest load of `size` bytes (1, 2, 4 or 8) at `offset` from the start
    /// of the device's range; the value is zero-extended.
    fn mmio_read(&mut self, offset: u64, size: u8, now: u64) -> u64;
    /// A guest store of the low `size` bytes of `value` at `offset`.
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64, now: u64);
}

/// Where a device's interrupt goes: the virtual LAPIC implements it
/// ([`lapic::Lapic`]), tests use a recording fake.
pub trait IrqLine {
    /// Make `vector` pending (edge-triggered, fixed delivery).
    fn raise(&mut self, vector: u8);
}

/// The caller's collection of devices, indexed by the ids it registered on
/// the [`Bus`].
pub trait DeviceSet<Id> {
    /// The port-I/O device registered as `id`.
    fn pio(&mut self, id: Id) -> &mut dyn PioDevice;
    /// The MMIO device registered as `id`.
    fn mmio(&mut self, id: Id) -> &mut dyn MmioDevice;
}

/// Why a range could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The range has length zero or wraps around the address space.
    EmptyOrWrapping,
    /// The range overlaps one already registered.
    Overlap,
}

/// No device claims the accessed address. The caller decides the outcome:
/// an unclaimed port read returns all ones and a write is dropped (both
/// counted in [`BusStats`]); an unclaimed MMIO access is reported as a guest
/// fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unclaimed;

/// Counters of accesses no device claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Port reads nobody claimed (answered with all ones).
    pub unclaimed_pio_reads: u64,
    /// Port writes nobody claimed (dropped).
    pub unclaimed_pio_writes: u64,
    /// MMIO accesses nobody claimed.
    pub unclaimed_mmio: u64,
}

/// One registered range `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping<Id> {
    base: u64,
    len: u64,
    id: Id,
}

/// A device id and the offset of an access inside its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<Id> {
    /// The id the device was registered with.
    pub id: Id,
    /// Offset of the accessed address from the start of the range.
    pub offset: u64,
}

/// Routing table from I/O ports and guest-physical ranges to device ids.
/// An access is claimed only if it lies entirely inside one range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus<Id> {
    pio: Vec<Mapping<Id>>,
    mmio: Vec<Mapping<Id>>,
    stats: BusStats,
}

impl<Id: Copy> Default for Bus<Id> {
    fn default() -> Self {
        Self::new()
    }
}

fn insert<Id>(table: &mut Vec<Mapping<Id>>, base: u64, len: u64, id: Id) -> Result<(), BusError> {
    let end = base.checked_add(len).ok_or(BusError::EmptyOrWrapping)?;
    if len == 0 {
        return Err(BusError::EmptyOrWrapping);
    }
    if table.iter().any(|m| base < m.base + m.len && m.base < end) {
        return Err(BusError::Overlap);
    }
    let at = table.partition_point(|m| m.base < base);
    table.insert(at, Mapping { base, len, id });
    Ok(())
}

fn lookup<Id: Copy>(table: &[Mapping<Id>], addr: u64, size: u64) -> Option<Target<Id>> {
    let i = table.partition_point(|m| m.base <= addr).checked_sub(1)?;
    let m = &table[i];
    let offset = addr - m.base;
    (offset.checked_add(size.max(1))? <= m.len).then_some(Target { id: m.id, offset })
}

impl<Id: Copy> Bus<Id> {
    /// An empty bus.
    pub const fn new() -> Self {
        Self {
            pio: Vec::new(),
            mmio: Vec::new(),
            stats: BusStats {
                unclaimed_pio_reads: 0,
                unclaimed_pio_writes: 0,
                unclaimed_mmio: 0,
            },
        }
    }

    /// Claim ports `[base, base + len)` for device `id`.
    pub fn insert_pio(&mut self, base: u16, len: u16, id: Id) -> Result<(), BusError> {
        if u32::from(base) + u32::from(len) > 0x1_0000 {
            return Err(BusError::EmptyOrWrapping);
        }
        insert(&mut self.pio, base.into(), len.into(), id)
    }

    /// Claim guest-physical bytes `[base, base + len)` for device `id`.
    pub fn insert_mmio(&mut self, base: u64, len: u64, id: Id) -> Result<(), BusError> {
        insert(&mut self.mmio, base, len, id)
    }

    /// The device and offset for a `size`-byte access at `port`.
    pub fn resolve_pio(&self, port: u16, size: u8) -> Result<Target<Id>, Unclaimed> {
        lookup(&self.pio, port.into(), size.into()).ok_or(Unclaimed)
    }

    /// The device and offset for a `size`-byte access at guest-physical `gpa`.
    pub fn resolve_mmio(&self, gpa: u64, size: u8) -> Result<Target<Id>, Unclaimed> {
        lookup(&self.mmio, gpa, size.into()).ok_or(Unclaimed)
    }

    /// Dispatch a guest `IN`. Unclaimed: returns `Err(Unclaimed)` and counts
    /// it; the guest should then see all ones ([`all_ones`]).
    pub fn pio_read(
        &mut self,
        devices: &mut impl DeviceSet<Id>,
        port: u16,
        size: u8,
        now: u64,
    ) -> Result<u32, Unclaimed> {
        match self.resolve_pio(port, size) {
            Ok(t) => Ok(devices.pio(t.id).pio_read(t.offset as u16, size, now)),
            Err(e) => {
                self.stats.unclaimed_pio_reads += 1;
                Err(e)
            }
        }
    }

    /// Dispatch a guest `OUT`. Unclaimed: dropped, counted, `Err(Unclaimed)`.
    pub fn pio_write(
        &mut self,
        devices: &mut impl DeviceSet<Id>,
        port: u16,
        size: u8,
        value: u32,
        now: u64,
    ) -> Result<(), Unclaimed> {
        match self.resolve_pio(port, size) {
            Ok(t) => {
                devices
                    .pio(t.id)
                    .pio_write(t.offset as u16, size, value, now);
                Ok(())
            }
            Err(e) => {
                self.stats.unclaimed_pio_writes += 1;
                Err(e)
            }
        }
    }

    /// Dispatch a guest MMIO load. Unclaimed: counted, `Err(Unclaimed)`.
    pub fn mmio_read(
        &mut self,
        devices: &mut impl DeviceSet<Id>,
        gpa: u64,
        size: u8,
        now: u64,
    ) -> Result<u64, Unclaimed> {
        match self.resolve_mmio(gpa, size) {
            Ok(t) => Ok(devices.mmio(t.id).mmio_read(t.offset, size, now)),
            Err(e) => {
                self.stats.unclaimed_mmio += 1;
                Err(e)
            }
        }
    }

    /// Dispatch a guest MMIO store. Unclaimed: counted, `Err(Unclaimed)`.
    pub fn mmio_write(
        &mut self,
        devices: &mut impl DeviceSet<Id>,
        gpa: u64,
        size: u8,
        value: u64,
        now: u64,
    ) -> Result<(), Unclaimed> {
        match self.resolve_mmio(gpa, size) {
            Ok(t) => {
                devices.mmio(t.id).mmio_write(t.offset, size, value, now);
                Ok(())
            }
            Err(e) => {
                self.stats.unclaimed_mmio += 1;
                Err(e)
            }
        }
    }

    /// Counters of unclaimed accesses.
    pub fn stats(&self) -> BusStats {
        self.stats
    }
}

/// The value an unclaimed port read returns: all ones in the low `size`
/// bytes (a floating ISA bus).
pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access; reads return `offset`.
    #[derive(Default)]
    struct Probe {
        log: Vec<(char, u64, u8, u64)>,
    }

    impl PioDevice for Probe {
        fn pio_read(&mut self, offset: u16, size: u8, _now: u64) -> u32 {
            self.log.push(('r', offset.into(), size, 0));
            offset.into()
        }
        fn pio_write(&mut self, offset: u16, size: u8, value: u32, _now: u64) {
            self.log.push(('w', offset.into(), size, value.into()));
        }
    }

    impl MmioDevice for Probe {
        fn mmio_read(&mut self, offset: u64, size: u8, _now: u64) -> u64 {
            self.log.push(('R', offset, size, 0));
            offset
        }
        fn mmio_write(&mut self, offset: u64, size: u8, value: u64, _now: u64) {
            self.log.push(('W', offset, size, value));
        }
    }

    struct Two([Probe; 2]);

    impl DeviceSet<usize> for Two {
        fn pio(&mut self, id: usize) -> &mut dyn PioDevice {
            &mut self.0[id]
        }
        fn mmio(&mut self, id: usize) -> &mut dyn MmioDevice {
            &mut self.0[id]
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        bus.insert_pio(0x3F8, 8, 0).unwrap();
        bus.insert_pio(0x2F8, 8, 1).unwrap();
        bus.insert_mmio(0xD000_0000, 0x200, 1).unwrap();
        let mut devs = Two([Probe::default(), Probe::default()]);
        assert_eq!(bus.pio_read(&mut devs, 0x3FD, 1, 0), Ok(5));
        bus.pio_write(&mut devs, 0x2F8, 1, 0x41, 0).unwrap();
        assert_eq!(bus.mmio_read(&mut devs, 0xD000_0070, 4, 0), Ok(0x70));
        bus.mmio_write(&mut devs, 0xD000_01F8, 8, 7, 0).unwrap();
        assert_eq!(devs.0[0].log, [('r', 5, 1, 0)]);
        assert_eq!(
            devs.0[1].log,
            [('w', 0, 1, 0x41), ('R', 0x70, 4, 0), ('W', 0x1F8, 8, 7)]
        );
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_counted() {
        let mut bus = Bus::new();
        bus.insert_pio(0x3F8, 8, 0).unwrap();
        bus.insert_mmio(0x1000, 0x100, 0).unwrap();
        let mut devs = Two([Probe::default(), Probe::default()]);
        assert_eq!(bus.pio_read(&mut devs, 0x80, 1, 0), Err(Unclaimed));
        assert_eq!(bus.pio_read(&mut devs, 0x3FF, 2, 0), Err(Unclaimed));
        assert_eq!(bus.pio_read(&mut devs, 0x3F7, 1, 0), Err(Unclaimed));
        assert_eq!(bus.pio_write(&mut devs, 0x400, 4, 1, 0), Err(Unclaimed));
        assert_eq!(bus.mmio_read(&mut devs, 0x10FC, 8, 0), Err(Unclaimed));
        assert_eq!(bus.mmio_write(&mut devs, 0xFFF, 1, 0, 0), Err(Unclaimed));
        assert!(devs.0[0].log.is_empty());
        let s = bus.stats();
        assert_eq!(
            (
                s.unclaimed_pio_reads,
                s.unclaimed_pio_writes,
                s.unclaimed_mmio
            ),
            (3, 1, 2)
        );
        assert_eq!(all_ones(1), 0xFF);
        assert_eq!(all_ones(2), 0xFFFF);
        assert_eq!(all_ones(4), u32::MAX);
    }

    #[test]
    fn rejects_overlap_empty_and_wrap() {
        let mut bus = Bus::new();
        bus.insert_pio(0x3F8, 8, 0).unwrap();
        assert_eq!(bus.insert_pio(0x3FF, 1, 1), Err(BusError::Overlap));
        assert_eq!(bus.insert_pio(0x3F0, 9, 1), Err(BusError::Overlap));
        assert_eq!(bus.insert_pio(0x3F0, 8, 1), Ok(()));
        assert_eq!(bus.insert_pio(0x500, 0, 1), Err(BusError::EmptyOrWrapping));
        assert_eq!(bus.insert_pio(0xFFFF, 2, 1), Err(BusError::EmptyOrWrapping));
        assert_eq!(bus.insert_pio(0xFFFF, 1, 1), Ok(()));
        assert_eq!(bus.resolve_pio(0xFFFF, 1), Ok(Target { id: 1, offset: 0 }));
        assert_eq!(
            bus.insert_mmio(u64::MAX, 2, 1),
            Err(BusError::EmptyOrWrapping)
        );
    }
}

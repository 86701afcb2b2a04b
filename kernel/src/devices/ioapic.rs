//! I/O APIC, Intel 82093AA (data sheet order no. 290566: §3.0 "Register
//! Description": IOREGSEL at offset 0x00, IOWIN at 0x10; IOAPICID 0x00,
//! IOAPICVER 0x01, IOAPICARB 0x02, IOREDTBL[0..23] at 0x10-0x3F; §3.2.4
//! redirection table entry format), version 0x20 with the EOI register at
//! offset 0x40 (as on later PCH I/O APICs), 24 pins, at 0xFEC00000 (MADT).
//!
//! A pin's level comes in through [`Ioapic::set_irq`]; an unmasked pin
//! with fixed or lowest-priority delivery raises its vector on the local
//! APIC's [`IrqLine`] (one CPU: every destination is that CPU). Edge pins
//! fire on a rising edge; level pins fire while asserted and Remote IRR is
//! clear, and fire again after [`Ioapic::eoi`] if still asserted.
use super::{IrqLine, MmioDevice};

/// Guest-physical base (ACPI MADT I/O APIC address).
pub const BASE: u64 = 0xFEC0_0000;
/// Length of the MMIO window.
pub const LEN: u64 = 0x1000;
/// Number of redirection entries.
pub const PINS: usize = 24;
/// IOAPICVER: max redirection entry 23, version 0x20.
pub const VERSION: u32 = ((PINS as u32 - 1) << 16) | 0x20;

const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
/// Writable bits: vector, delivery mode, destination mode, polarity,
/// trigger mode, mask, destination.
const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;

/// The I/O APIC. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ioapic {
    id: u8,
    select: u8,
    redir: [u64; PINS],
    /// Pin input levels (after polarity: true = asserted).
    asserted: u32,
}

impl Ioapic {
    /// Reset state: every pin masked.
    pub fn new(id: u8) -> Self {
        Ioapic {
            id: id & 0xF,
            select: 0,
            redir: [MASKED; PINS],
            asserted: 0,
        }
    }

    /// The redirection entry of `pin`.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redir.get(pin).copied()
    }

    /// Drive `pin` to `level` (true = asserted). Edge pins deliver on the
    /// rising edge, level pins while asserted and not already in service.
    pub fn set_irq(&mut self, pin: usize, level: bool, lapic: &mut impl IrqLine) {
        if pin >= PINS {
            return;
        }
        let bit = 1u32 << pin;
        let was = self.asserted & bit != 0;
        if level {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        let e = self.redir[pin];
        if e & LEVEL != 0 {
            if level {
                self.deliver(pin, lapic);
            }
        } else if level && !was {
            self.deliver(pin, lapic);
        }
    }

    /// A device interrupt source on `pin` whose line is `asserted` (e.g. a
    /// virtio `InterruptStatus` != 0) and that has just signalled a new
    /// `event` or not: a level pin follows the line (delivered while
    /// asserted and not in service, again after EOI); an edge pin fires on
    /// the rising edge, and a new event while the line is still high gets a
    /// fresh edge so it is not lost.
    pub fn drive(&mut self, pin: usize, asserted: bool, event: bool, lapic: &mut impl IrqLine) {
        if pin >= PINS {
            return;
        }
        if event && asserted && self.redir[pin] & LEVEL == 0 {
            self.set_irq(pin, false, lapic);
        }
        self.set_irq(pin, asserted, lapic);
    }

    /// A rising and falling edge on `pin` (a pulse).
    pub fn pulse(&mut self, pin: usize, lapic: &mut impl IrqLine) {
        self.set_irq(pin, true, lapic);
        self.set_irq(pin, false, lapic);
    }

    fn deliver(&mut self, pin: usize, lapic: &mut impl IrqLine) {
        let e = self.redir[pin];
        if e & MASKED != 0 {
            return;
        }
        let level = e & LEVEL != 0;
        if level && e & REMOTE_IRR != 0 {
            return;
        }
        // Delivery mode 0 (fixed) or 1 (lowest priority): a vector. SMI,
        // NMI, INIT and ExtINT are not modelled and are dropped.
        if (e >> 8) & 7 > 1 {
            return;
        }
        if level {
            self.redir[pin] |= REMOTE_IRR;
        }
        lapic.raise(e as u8);
    }

    /// The local APIC retired level-triggered `vector`: clear Remote IRR
    /// of the pins using it and redeliver those still asserted.
    pub fn eoi(&mut self, vector: u8, lapic: &mut impl IrqLine) {
        for pin in 0..PINS {
            let e = self.redir[pin];
            if e & REMOTE_IRR != 0 && e as u8 == vector {
                self.redir[pin] &= !REMOTE_IRR;
                if self.asserted & (1 << pin) != 0 {
                    self.deliver(pin, lapic);
                }
            }
        }
    }

    fn read_reg(&self) -> u32 {
        match self.select {
            0x00 => u32::from(self.id) << 24,
            0x01 => VERSION,
            0x02 => u32::from(self.id) << 24,
            r @ 0x10..=0x3F => {
                let e = self.redir[usize::from(r - 0x10) / 2];
                if r & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, v: u32) {
        match self.select {
            0x00 => self.id = ((v >> 24) & 0xF) as u8,
            r @ 0x10..=0x3F => {
                let pin = usize::from(r - 0x10) / 2;
                let old = self.redir[pin];
                let new = if r & 1 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(v)
                } else {
                    (old & 0xFFFF_FFFF) | (u64::from(v) << 32)
                };
                self.redir[pin] = (new & WRITABLE) | (old & !WRITABLE);
                if new & LEVEL == 0 {
                    self.redir[pin] &= !REMOTE_IRR;
                }
            }
            _ => {}
        }
    }

    /// Unmasking a level pin that is asserted delivers it (as hardware
    /// does); the caller passes the LAPIC after every write.
    pub fn after_write(&mut self, lapic: &mut impl IrqLine) {
        for pin in 0..PINS {
            if self.asserted & (1 << pin) != 0 && self.redir[pin] & LEVEL != 0 {
                self.deliver(pin, lapic);
            }
        }
    }
}

impl MmioDevice for Ioapic {
    fn mmio_read(&mut self, offset: u64, size: u8, _now: u64) -> u64 {
        let v = match offset {
            0x00 => u32::from(self.select),
            0x10 => self.read_reg(),
            _ => 0,
        };
        match size {
            1 => u64::from(v & 0xFF),
            2 => u64::from(v & 0xFFFF),
            _ => u64::from(v),
        }
    }

    fn mmio_write(&mut self, offset: u64, _size: u8, value: u64, _now: u64) {
        match offset {
            0x00 => self.select = value as u8,
            0x10 => self.write_reg(value as u32),
            0x40 => {
                // EOI register: the vector whose Remote IRR to clear; the
                // redelivery happens on the next `after_write`.
                for e in self.redir.iter_mut() {
                    if *e & REMOTE_IRR != 0 && *e as u8 == value as u8 {
                        *e &= !REMOTE_IRR;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Vec<u8>);
    impl IrqLine for Rec {
        fn raise(&mut self, v: u8) {
            self.0.push(v);
        }
    }

    fn program(io: &mut Ioapic, pin: u8, lo: u32, hi: u32) {
        io.mmio_write(0, 4, u64::from(0x10 + 2 * pin), 0);
        io.mmio_write(0x10, 4, lo.into(), 0);
        io.mmio_write(0, 4, u64::from(0x11 + 2 * pin), 0);
        io.mmio_write(0x10, 4, hi.into(), 0);
    }

    fn read(io: &mut Ioapic, reg: u8) -> u32 {
        io.mmio_write(0, 4, reg.into(), 0);
        io.mmio_read(0x10, 4, 0) as u32
    }

    #[test]
    fn id_version_and_reset_masked() {
        let mut io = Ioapic::new(1);
        assert_eq!(read(&mut io, 0), 1 << 24);
        assert_eq!(read(&mut io, 1), 0x0017_0020);
        for pin in 0..24 {
            assert_eq!(read(&mut io, 0x10 + 2 * pin) & (1 << 16), 1 << 16);
        }
        let mut l = Rec::default();
        io.set_irq(2, true, &mut l);
        assert!(l.0.is_empty(), "masked pins deliver nothing");
    }

    #[test]
    fn edge_pin_delivers_on_rising_edges() {
        let mut io = Ioapic::new(1);
        let mut l = Rec::default();
        program(&mut io, 2, 0x30, 0);
        assert_eq!(read(&mut io, 0x14), 0x30);
        io.set_irq(2, true, &mut l);
        io.set_irq(2, true, &mut l);
        io.set_irq(2, false, &mut l);
        io.pulse(2, &mut l);
        assert_eq!(l.0, [0x30, 0x30]);
    }

    #[test]
    fn level_pin_waits_for_eoi() {
        let mut io = Ioapic::new(1);
        let mut l = Rec::default();
        program(&mut io, 9, 0x41 | (1 << 15) as u32, 0);
        io.set_irq(9, true, &mut l);
        io.set_irq(9, true, &mut l);
        assert_eq!(l.0, [0x41], "Remote IRR blocks redelivery");
        assert_ne!(read(&mut io, 0x22) & (1 << 14), 0);
        io.eoi(0x41, &mut l);
        assert_eq!(l.0, [0x41, 0x41], "still asserted: delivered again");
        io.set_irq(9, false, &mut l);
        io.eoi(0x41, &mut l);
        assert_eq!(l.0.len(), 2);
        assert_eq!(read(&mut io, 0x22) & (1 << 14), 0);
    }

    #[test]
    fn drive_level_pin_follows_the_line_through_eoi_register() {
        // A virtio device on level pin 16: InterruptStatus set, read,
        // acknowledged, EOI through the EOI register (version 0x20).
        let mut io = Ioapic::new(1);
        let mut l = Rec::default();
        program(&mut io, 16, 0x60 | (1 << 15), 0);
        io.drive(16, true, true, &mut l);
        assert_eq!(l.0, [0x60]);
        io.drive(16, true, true, &mut l);
        assert_eq!(l.0, [0x60], "in service: no second delivery");
        io.drive(16, false, false, &mut l); // InterruptACK
        io.mmio_write(0x40, 4, 0x60, 0);
        io.after_write(&mut l);
        assert_eq!(l.0, [0x60], "deasserted before EOI: nothing more");
        io.drive(16, true, true, &mut l);
        io.mmio_write(0x40, 4, 0x60, 0);
        io.after_write(&mut l);
        assert_eq!(l.0, [0x60, 0x60, 0x60], "still asserted at EOI: again");
    }

    #[test]
    fn drive_edge_pin_gets_an_edge_per_event() {
        let mut io = Ioapic::new(1);
        let mut l = Rec::default();
        program(&mut io, 17, 0x61, 0);
        io.drive(17, true, true, &mut l);
        io.drive(17, true, false, &mut l);
        assert_eq!(l.0, [0x61], "no event, line unchanged: no edge");
        io.drive(17, true, true, &mut l);
        assert_eq!(l.0, [0x61, 0x61], "new event while high: a fresh edge");
        io.drive(17, false, false, &mut l);
        io.drive(17, true, true, &mut l);
        assert_eq!(l.0, [0x61, 0x61, 0x61]);
        program(&mut io, 17, 0x61 | (1 << 16), 0);
        io.drive(17, true, true, &mut l);
        io.drive(99, true, true, &mut l);
        assert_eq!(l.0.len(), 3, "masked and bad pins deliver nothing");
    }

    #[test]
    fn read_only_bits_and_bad_pins() {
        let mut io = Ioapic::new(1);
        program(&mut io, 0, 0xFFFF_FFFF, 0xFFFF_FFFF);
        assert_eq!(read(&mut io, 0x10), 0x0001_AFFF);
        assert_eq!(read(&mut io, 0x11), 0xFF00_0000);
        let mut l = Rec::default();
        io.set_irq(99, true, &mut l);
        assert_eq!(read(&mut io, 0x50), 0);
        assert_eq!(io.entry(24), None);
    }
}

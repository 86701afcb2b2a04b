//! Intel 8254 programmable interval timer (8254 data sheet, order no.
//! 231164: "Control Word Format", "Mode Definitions", "Read-Back Command",
//! "Counter Latch Command") as wired in a PC: input clock 1.193182 MHz,
//! channel 0 → ISA IRQ 0, channel 1 unused, channel 2 gated by bit 0 of
//! system control port B (0x61), its output read back in bit 5.
//!
//! Registration: the bus range is ports 0x40..=0x61 (length 0x22): offsets
//! 0-2 are the counters, 3 the control word, 0x21 port B; the ports in
//! between (0x44..=0x60) read as 0xFF and ignore writes here, but the
//! Linux platform (`kernel/src/vmm/linux.rs`) does not route them to the
//! PIT: they are absent hardware there, counted and reported
//! ([`super::absent`]).
//!
//! Counting is computed from `now` (guest TSC) at each access, never from a
//! clock. Modes 0 (interrupt on terminal count), 2 (rate generator) and 3
//! (square wave) are modelled exactly; 1, 4 and 5 (hardware-triggered or
//! strobe modes) count like mode 0. BCD counting is not supported (the bit
//! reads back, the count is binary). [`Pit::tick`] reports channel 0's
//! rising edges for IRQ 0; [`Pit::next_irq`] is when the next one is due.
use super::PioDevice;

/// The PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// First port of the bus range.
pub const BASE: u16 = 0x40;
/// Length of the bus range (0x40..=0x61).
pub const PORT_COUNT: u16 = 0x22;
const PORT_B: u16 = 0x21;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
struct Channel {
    /// Control bits 5:0 (access mode, mode, BCD) as last programmed.
    control: u8,
    /// Reload value (0 means 0x10000).
    reload: u32,
    /// Guest TSC when counting started; `None`: no count written yet.
    start: Option<u64>,
    /// Low byte written, waiting for the high byte (access mode 3).
    write_lsb: Option<u8>,
    /// Next read is the high byte (access mode 3).
    read_msb: bool,
    /// Latched count (counter latch command).
    latch: Option<u16>,
    latch_msb: bool,
    /// Latched status byte (read-back command).
    status: Option<u8>,
}

impl Channel {
    fn mode(&self) -> u8 {
        match (self.control >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        }
    }
    fn access(&self) -> u8 {
        (self.control >> 4) & 3
    }
    fn period(&self) -> u64 {
        if self.reload == 0 {
            0x1_0000
        } else {
            u64::from(self.reload)
        }
    }
}

/// The three counters and port B. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    tsc_hz: u64,
    ch: [Channel; 3],
    /// Port B bits 1:0 (channel 2 gate, speaker data).
    port_b: u8,
    /// Channel 0 ticks already reported by [`Pit::tick`].
    irq_ticks_seen: u64,
}

impl Pit {
    /// `tsc_hz`: guest TSC ticks per second.
    pub fn new(tsc_hz: u64) -> Self {
        Pit {
            tsc_hz: tsc_hz.max(1),
            ch: [Channel::default(); 3],
            port_b: 0,
            irq_ticks_seen: 0,
        }
    }

    /// PIT input-clock ticks since `start`.
    fn ticks_since(&self, start: u64, now: u64) -> u64 {
        ((u128::from(now.saturating_sub(start)) * u128::from(PIT_HZ)) / u128::from(self.tsc_hz))
            as u64
    }

    fn tsc_of_ticks(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * u128::from(self.tsc_hz)).div_ceil(u128::from(PIT_HZ)) as u64
    }

    /// Channel `i`'s counting element and output at `now`.
    fn state(&self, i: usize, now: u64) -> (u16, bool) {
        let c = &self.ch[i];
        let Some(start) = c.start else {
            return (c.reload as u16, false);
        };
        if i == 2 && self.port_b & 1 == 0 {
            // Gate low: counting stopped where it was loaded.
            return (c.reload as u16, c.mode() != 0);
        }
        let t = self.ticks_since(start, now);
        let p = c.period();
        match c.mode() {
            2 => {
                let left = p - t % p;
                (left as u16, left != 1)
            }
            3 => {
                let left = p - t % p;
                (left as u16, left > p / 2)
            }
            _ => {
                let left = p.wrapping_sub(t) as u16;
                (left, t >= p)
            }
        }
    }

    /// Channel 0 output rising edges (IRQ 0) since the last call.
    pub fn tick(&mut self, now: u64) -> u64 {
        let total = self.irq_edges(now);
        let new = total.saturating_sub(self.irq_ticks_seen);
        self.irq_ticks_seen = total;
        new
    }

    fn irq_edges(&self, now: u64) -> u64 {
        let c = &self.ch[0];
        let Some(start) = c.start else { return 0 };
        let t = self.ticks_since(start, now);
        match c.mode() {
            2 | 3 => t / c.period(),
            _ => u64::from(t >= c.period()),
        }
    }

    /// Guest TSC of channel 0's next IRQ edge, if one is coming.
    pub fn next_irq(&self) -> Option<u64> {
        let c = &self.ch[0];
        let start = c.start?;
        let n = self.irq_ticks_seen + 1;
        match c.mode() {
            2 | 3 => Some(start + self.tsc_of_ticks(n * c.period())),
            _ if self.irq_ticks_seen == 0 => Some(start + self.tsc_of_ticks(c.period())),
            _ => None,
        }
    }

    fn write_control(&mut self, v: u8, now: u64) {
        let sel = (v >> 6) as usize;
        if sel == 3 {
            // Read-back (bit 5 clear: latch count, bit 4 clear: latch status).
            for i in 0..3 {
                if v & (2 << i) == 0 {
                    continue;
                }
                let (count, out) = self.state(i, now);
                let c = &mut self.ch[i];
                if v & 0x20 == 0 && c.latch.is_none() {
                    c.latch = Some(count);
                    c.latch_msb = false;
                }
                if v & 0x10 == 0 && c.status.is_none() {
                    let null = u8::from(c.start.is_none()) << 6;
                    c.status = Some((u8::from(out) << 7) | null | (c.control & 0x3F));
                }
            }
            return;
        }
        if v & 0x30 == 0 {
            // Counter latch command.
            let (count, _) = self.state(sel, now);
            let c = &mut self.ch[sel];
            if c.latch.is_none() {
                c.latch = Some(count);
                c.latch_msb = false;
            }
            return;
        }
        let c = &mut self.ch[sel];
        *c = Channel {
            control: v & 0x3F,
            ..Channel::default()
        };
        if sel == 0 {
            self.irq_ticks_seen = 0;
        }
    }

    fn write_count(&mut self, i: usize, v: u8, now: u64) {
        let c = &mut self.ch[i];
        let value = match c.access() {
            1 => u32::from(v),
            2 => u32::from(v) << 8,
            _ => match c.write_lsb.take() {
                None => {
                    c.write_lsb = Some(v);
                    return;
                }
                Some(lo) => u32::from(lo) | (u32::from(v) << 8),
            },
        };
        c.reload = value;
        c.start = Some(now);
        if i == 0 {
            self.irq_ticks_seen = 0;
        }
    }

    fn read_count(&mut self, i: usize, now: u64) -> u8 {
        if let Some(s) = self.ch[i].status.take() {
            return s;
        }
        let live = self.state(i, now).0;
        let c = &mut self.ch[i];
        let (value, from_latch) = match c.latch {
            Some(l) => (l, true),
            None => (live, false),
        };
        let byte = |msb: bool| if msb { (value >> 8) as u8 } else { value as u8 };
        match c.access() {
            1 => {
                c.latch = None;
                byte(false)
            }
            2 => {
                c.latch = None;
                byte(true)
            }
            _ => {
                let msb = if from_latch { c.latch_msb } else { c.read_msb };
                if from_latch {
                    if msb {
                        c.latch = None;
                        c.latch_msb = false;
                    } else {
                        c.latch_msb = true;
                    }
                } else {
                    c.read_msb = !msb;
                }
                byte(msb)
            }
        }
    }

    /// Port B (0x61): bit 0 gate 2, bit 1 speaker, bit 4 refresh toggle
    /// (flips every 15 us), bit 5 OUT2.
    fn read_port_b(&self, now: u64) -> u8 {
        let refresh = (self.ticks_since(0, now) / 18) & 1 == 1;
        let out2 = self.state(2, now).1;
        (self.port_b & 3) | (u8::from(refresh) << 4) | (u8::from(out2) << 5)
    }

    fn write_port_b(&mut self, v: u8, now: u64) {
        let was = self.port_b & 1;
        self.port_b = v & 3;
        if was == 0 && v & 1 == 1 && self.ch[2].start.is_some() {
            // Rising gate edge reloads the counter (modes 0-3).
            self.ch[2].start = Some(now);
        }
    }
}

impl PioDevice for Pit {
    fn pio_read(&mut self, offset: u16, _size: u8, now: u64) -> u32 {
        match offset {
            0..=2 => self.read_count(offset as usize, now).into(),
            PORT_B => self.read_port_b(now).into(),
            _ => 0xFF,
        }
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32, now: u64) {
        match offset {
            0..=2 => self.write_count(offset as usize, value as u8, now),
            3 => self.write_control(value as u8, now),
            PORT_B => self.write_port_b(value as u8, now),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000;

    fn ticks(n: u64) -> u64 {
        n * HZ / PIT_HZ
    }

    #[test]
    fn channel2_calibration_through_port_b() {
        // What Linux's pit_calibrate_tsc / the hypervisor's clock.rs do:
        // gate off, mode 0, count 0xFFFF, gate on, poll OUT2.
        let mut p = Pit::new(HZ);
        p.pio_write(PORT_B, 1, 0, 0);
        p.pio_write(3, 1, 0b1011_0000, 0);
        p.pio_write(2, 1, 0xFF, 0);
        p.pio_write(2, 1, 0xFF, 0);
        assert_eq!(p.pio_read(PORT_B, 1, 1000) & 0x20, 0, "gate off: OUT2 low");
        p.pio_write(PORT_B, 1, 1, 1000);
        assert_eq!(p.pio_read(PORT_B, 1, 1000 + ticks(0xFFF0)) & 0x20, 0);
        assert_ne!(
            p.pio_read(PORT_B, 1, 1000 + ticks(0x10000)) & 0x20,
            0,
            "terminal count"
        );
        // Counter read: LSB then MSB.
        let lo = p.pio_read(2, 1, 1000 + ticks(0x100) + 1);
        let hi = p.pio_read(2, 1, 1000 + ticks(0x100) + 1);
        assert_eq!((hi << 8) | lo, 0xFFFF - 0x100);
    }

    #[test]
    fn latch_and_read_back() {
        let mut p = Pit::new(HZ);
        p.pio_write(3, 1, 0b0011_0100, 0); // ch0, lo/hi, mode 2
        p.pio_write(0, 1, 0x00, 0);
        p.pio_write(0, 1, 0x10, 0); // 0x1000
        p.pio_write(3, 1, 0b0000_0000, ticks(0x10) + 1); // latch ch0
        let later = ticks(0x800);
        let lo = p.pio_read(0, 1, later);
        let hi = p.pio_read(0, 1, later);
        assert_eq!((hi << 8) | lo, 0x1000 - 0x10, "latched value, not live");
        // Read-back status of channel 0: OUT high, mode 2, lo/hi.
        p.pio_write(3, 1, 0b1110_0010, later);
        assert_eq!(p.pio_read(0, 1, later), 0b1011_0100);
    }

    #[test]
    fn channel0_irq_edges_and_deadline() {
        let mut p = Pit::new(HZ);
        assert_eq!(p.next_irq(), None);
        p.pio_write(3, 1, 0b0011_0110, 0); // ch0, lo/hi, mode 3
        p.pio_write(0, 1, 0x9C, 0);
        p.pio_write(0, 1, 0x2E, 0); // 11932: ~100 Hz
        let d = p.next_irq().unwrap();
        assert!((9_999_000..10_001_000).contains(&d), "{d}");
        assert_eq!(p.tick(d - 1), 0);
        assert_eq!(p.tick(d), 1);
        assert_eq!(p.tick(d), 0);
        // The period is 11932 / 1.193182 MHz = 10.00015 ms.
        assert_eq!(p.tick(d + 3 * 10_000_200), 3);
        assert!(p.next_irq().unwrap() > d + 3 * 10_000_200);
    }

    #[test]
    fn unused_ports_float() {
        let mut p = Pit::new(HZ);
        assert_eq!(p.pio_read(0x10, 1, 0), 0xFF);
        p.pio_write(0x10, 1, 0, 0);
        assert_eq!(p.pio_read(0, 1, 0), 0);
    }
}

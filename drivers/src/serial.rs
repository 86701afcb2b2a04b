//! Polled 16550 UART driver for the hypervisor's own console (COM1).
//! Register map: PC16550D data sheet; the port access is behind [`PortIo`]
//! so the driver is tested on the host.
//!
//! Written by hand rather than with `uart_16550`: the trait keeps it
//! testable and it is a few dozen lines.

/// x86 port I/O, implemented with `in`/`out` in the kernel.
pub trait PortIo {
    fn inb(&mut self, port: u16) -> u8;
    fn outb(&mut self, port: u16, value: u8);
}

const DATA: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_DATA_READY: u8 = 1 << 0;
/// Upper bound on polls of LSR before a byte is dropped: a missing or
/// wedged UART must never hang the hypervisor.
const SPIN_LIMIT: u32 = 1_000_000;

/// A 16550 at `base` (0x3F8 for COM1), 115200 8N1, FIFOs on, polled.
pub struct Uart16550<P: PortIo> {
    io: P,
    base: u16,
}

impl<P: PortIo> Uart16550<P> {
    pub fn new(io: P, base: u16) -> Self {
        Uart16550 { io, base }
    }

    /// Programs 115200 baud, 8 data bits, no parity, one stop bit.
    pub fn init(&mut self) {
        let b = self.base;
        self.io.outb(b + IER, 0x00);
        self.io.outb(b + LCR, 0x80); // DLAB
        self.io.outb(b + DATA, 0x01); // divisor 1 = 115200
        self.io.outb(b + IER, 0x00);
        self.io.outb(b + LCR, 0x03); // 8N1, DLAB off
        self.io.outb(b + FCR, 0xC7); // FIFO on, clear, 14-byte threshold
        self.io.outb(b + MCR, 0x0B); // DTR, RTS, OUT2
    }

    /// Sends one byte, waiting (bounded) for the transmitter.
    pub fn send(&mut self, byte: u8) {
        for _ in 0..SPIN_LIMIT {
            if self.io.inb(self.base + LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        self.io.outb(self.base + DATA, byte);
    }

    /// Sends a string, turning `\n` into `\r\n`.
    pub fn write_str(&mut self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.send(b'\r');
            }
            self.send(b);
        }
    }

    /// A received byte, if any.
    pub fn try_recv(&mut self) -> Option<u8> {
        (self.io.inb(self.base + LSR) & LSR_DATA_READY != 0).then(|| self.io.inb(self.base + DATA))
    }
}

impl<P: PortIo> core::fmt::Write for Uart16550<P> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Uart16550::write_str(self, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeIo {
        out: Vec<(u16, u8)>,
        lsr: u8,
        busy_polls: u32,
    }
    impl PortIo for &mut FakeIo {
        fn inb(&mut self, port: u16) -> u8 {
            if port == 0x3F8 + LSR {
                if self.busy_polls > 0 {
                    self.busy_polls -= 1;
                    return 0;
                }
                return self.lsr;
            }
            0x41
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.out.push((port, value));
        }
    }

    #[test]
    fn newline_becomes_crlf_and_waits_for_thr() {
        let mut io = FakeIo {
            lsr: LSR_THR_EMPTY,
            busy_polls: 5,
            ..Default::default()
        };
        let mut u = Uart16550::new(&mut io, 0x3F8);
        u.write_str("a\n");
        let data: Vec<u8> = io
            .out
            .iter()
            .filter(|(p, _)| *p == 0x3F8)
            .map(|&(_, v)| v)
            .collect();
        assert_eq!(data, b"a\r\n");
    }

    #[test]
    fn dead_uart_does_not_hang() {
        let mut io = FakeIo {
            lsr: 0,
            ..Default::default()
        };
        let mut u = Uart16550::new(&mut io, 0x3F8);
        u.send(b'x');
        assert_eq!(io.out, vec![(0x3F8, b'x')]);
    }

    #[test]
    fn init_sets_8n1() {
        let mut io = FakeIo::default();
        Uart16550::new(&mut io, 0x3F8).init();
        assert!(io.out.contains(&(0x3F8 + LCR, 0x03)));
    }

    #[test]
    fn recv() {
        let mut io = FakeIo {
            lsr: LSR_DATA_READY,
            ..Default::default()
        };
        assert_eq!(Uart16550::new(&mut io, 0x3F8).try_recv(), Some(0x41));
    }
}

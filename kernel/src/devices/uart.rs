//! The guest console: a 16550A UART model (National Semiconductor PC16550D
//! data sheet, "Register Description", tables II-VI), normally at COM1 ports
//! 0x3F8..=0x3FF.
//!
//! Registers by offset (DLAB = LCR bit 7):
//!
//! | off | read                  | write              |
//! |-----|-----------------------|--------------------|
//! | 0   | RBR (DLAB=1: DLL)     | THR (DLAB=1: DLL)  |
//! | 1   | IER (DLAB=1: DLM)     | IER (DLAB=1: DLM)  |
//! | 2   | IIR                   | FCR                |
//! | 3   | LCR                   | LCR                |
//! | 4   | MCR                   | MCR                |
//! | 5   | LSR                   | (ignored)          |
//! | 6   | MSR                   | (ignored)          |
//! | 7   | SCR                   | SCR                |
//!
//! Model choices:
//! - Transmission is instantaneous: LSR always has THRE and TEMT set, and a
//!   THR write re-asserts the THRE interrupt at once (as QEMU does).
//! - Transmitted bytes are assembled into lines for the hypervisor's own
//!   console ([`Uart::take_output`]): `\n` ends a line, `\r` is dropped, a
//!   line reaching [`MAX_LINE`] bytes is flushed as a chunk (cut on a UTF-8
//!   boundary), and bytes that are not printable UTF-8 appear as `\xNN`.
//! - Receive data comes from [`Uart::push_input`] into a bounded queue
//!   ([`RX_CAPACITY`]); no line errors are ever reported (LSR bits 1-4 and 7
//!   stay clear), so the receiver-line-status interrupt never fires.
//! - The interrupt output (INTR) is not gated by MCR OUT2 (as in QEMU). Its
//!   rising edges go to an [`IrqLine`] as the vector given at construction,
//!   via [`Uart::poll_irq`]; the level is [`Uart::irq_level`].
//! - Loopback (MCR bit 4) is supported: THR feeds the receiver and the modem
//!   outputs drive MSR (DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD). Outside
//!   loopback MSR reports CTS, DSR and DCD asserted.
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::{IrqLine, PioDevice};

/// The conventional COM1 base port.
pub const COM1_BASE: u16 = 0x3F8;
/// Number of ports a UART occupies.
pub const PORT_COUNT: u16 = 8;
/// A guest line longer than this many bytes is flushed in chunks.
pub const MAX_LINE: usize = 512;
/// Receive bytes queued at most (beyond that [`Uart::push_input`] refuses).
pub const RX_CAPACITY: usize = 4096;
/// Completed output lines kept at most; older ones are dropped and counted.
pub const MAX_QUEUED_LINES: usize = 256;

const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_MSI: u8 = 0x08;
const IIR_NONE: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO: u8 = 0xC0;
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
/// CTS | DSR | DCD: a terminal is attached.
const MSR_CONNECTED: u8 = 0xB0;

/// A 16550A UART. Plain data: `Clone` it to snapshot, compare with `==`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    fcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// Modem status: inputs in bits 7:4, delta bits in 3:0.
    msr: u8,
    thre_pending: bool,
    rx: VecDeque<u8>,
    line: Vec<u8>,
    lines: VecDeque<String>,
    dropped_lines: u64,
    vector: Option<u8>,
    irq_level: bool,
    irq_edge: bool,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Uart {
    /// A UART in its reset state. `vector`: what [`Uart::poll_irq`] raises
    /// on a rising interrupt edge (`None`: the guest polls).
    pub fn new(vector: Option<u8>) -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            fcr: 0,
            scr: 0,
            dll: 0x0C, // 9600 baud; the data sheet leaves it undefined
            dlm: 0,
            msr: MSR_CONNECTED,
            thre_pending: false,
            rx: VecDeque::new(),
            line: Vec::new(),
            lines: VecDeque::new(),
            dropped_lines: 0,
            vector,
            irq_level: false,
            irq_edge: false,
        }
    }

    /// Queue bytes for the guest to receive. Returns how many were accepted
    /// (fewer than `bytes.len()` when the queue is full).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(RX_CAPACITY - self.rx.len());
        self.rx.extend(&bytes[..n]);
        self.update_irq();
        n
    }

    /// The next complete guest output line (or [`MAX_LINE`]-byte chunk),
    /// without its line terminator, escaped as described in the module docs.
    pub fn take_output(&mut self) -> Option<String> {
        self.lines.pop_front()
    }

    /// Turn a pending partial line into a complete one (e.g. before the
    /// hypervisor stops), so [`Uart::take_output`] returns it.
    pub fn flush_partial(&mut self) {
        if !self.line.is_empty() {
            let bytes = core::mem::take(&mut self.line);
            self.push_line(&bytes);
        }
    }

    /// Lines dropped because nobody took them ([`MAX_QUEUED_LINES`]).
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// The level of the interrupt output.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    /// If the interrupt output rose since the last call and a vector was
    /// configured, raise it on `line`. Call after every access and
    /// [`Uart::push_input`].
    pub fn poll_irq(&mut self, line: &mut dyn IrqLine) {
        if core::mem::take(&mut self.irq_edge) {
            if let Some(v) = self.vector {
                line.raise(v);
            }
        }
    }

    /// The divisor latch (baud = 115200 / divisor).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// The highest-priority pending interrupt's IIR identification.
    fn pending_iir(&self) -> u8 {
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_MSI != 0 && self.msr & 0x0F != 0 {
            IIR_MSI
        } else {
            IIR_NONE
        }
    }

    fn update_irq(&mut self) {
        let level = self.pending_iir() != IIR_NONE;
        if level && !self.irq_level {
            self.irq_edge = true;
        }
        self.irq_level = level;
    }

    /// Recompute the MSR input bits; set delta bits for those that changed
    /// (trailing-edge for RI, per the data sheet).
    fn update_msr(&mut self) {
        let new = if self.loopback() {
            let m = self.mcr;
            ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
        } else {
            MSR_CONNECTED
        };
        let old = self.msr & 0xF0;
        let changed = old ^ new;
        let mut delta = self.msr & 0x0F;
        delta |= (changed & 0x10) >> 4; // DCTS
        delta |= (changed & 0x20) >> 4; // DDSR
        if old & 0x40 != 0 && new & 0x40 == 0 {
            delta |= 0x04; // TERI
        }
        delta |= (changed & 0x80) >> 4; // DDCD
        self.msr = new | delta;
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            if self.rx.len() < RX_CAPACITY {
                self.rx.push_back(byte);
            }
        } else {
            match byte {
                b'\n' => {
                    let bytes = core::mem::take(&mut self.line);
                    self.push_line(&bytes);
                }
                b'\r' => {}
                _ => {
                    self.line.push(byte);
                    if self.line.len() >= MAX_LINE {
                        let cut = utf8_cut(&self.line);
                        let rest = self.line.split_off(cut);
                        let bytes = core::mem::replace(&mut self.line, rest);
                        self.push_line(&bytes);
                    }
                }
            }
        }
        self.thre_pending = true;
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.lines.len() == MAX_QUEUED_LINES {
            self.lines.pop_front();
            self.dropped_lines += 1;
        }
        self.lines.push_back(escape(bytes));
    }

    fn read_reg(&mut self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 => {
                let iir = self.pending_iir();
                if iir == IIR_THRE {
                    self.thre_pending = false;
                }
                let fifo = if self.fcr & FCR_ENABLE != 0 {
                    IIR_FIFO
                } else {
                    0
                };
                iir | fifo
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | (u8::from(!self.rx.is_empty()) * LSR_DR),
            6 => {
                let msr = self.msr;
                self.msr &= 0xF0;
                msr
            }
            7 => self.scr,
            _ => 0xFF,
        }
    }

    fn write_reg(&mut self, offset: u16, value: u8) {
        match offset {
            0 if self.dlab() => self.dll = value,
            0 => self.transmit(value),
            1 if self.dlab() => self.dlm = value,
            1 => {
                let enabling_thre = value & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = value & 0x0F;
                if enabling_thre {
                    // THR is always empty, so enabling ETBEI interrupts at once.
                    self.thre_pending = true;
                }
            }
            2 => {
                if value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
                self.fcr = value & 0xC9; // enable, DMA mode, trigger level
            }
            3 => self.lcr = value,
            4 => {
                self.mcr = value & 0x1F;
                self.update_msr();
            }
            7 => self.scr = value,
            _ => {}
        }
    }
}

impl PioDevice for Uart {
    /// Byte registers; a wider access uses the register at `offset` and
    /// returns it zero-extended.
    fn pio_read(&mut self, offset: u16, _size: u8, _now: u64) -> u32 {
        let v = self.read_reg(offset);
        self.update_irq();
        v.into()
    }

    fn pio_write(&mut self, offset: u16, _size: u8, value: u32, _now: u64) {
        self.write_reg(offset, value as u8);
        self.update_irq();
    }
}

/// Where to cut a full line buffer so no UTF-8 sequence is split: before a
/// trailing incomplete multi-byte sequence, else at the end.
fn utf8_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 1,
            };
            return if need > back { len - back } else { len };
        }
    }
    len
}

/// Printable UTF-8 as is; control characters (except tab) and invalid bytes
/// as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                let _ = write!(s, "\\x{:02x}", c as u32);
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Irqs(Vec<u8>);
    impl IrqLine for Irqs {
        fn raise(&mut self, vector: u8) {
            self.0.push(vector);
        }
    }

    fn out(u: &mut Uart, s: &[u8]) {
        for &b in s {
            u.pio_write(0, 1, b.into(), 0);
        }
    }

    fn rd(u: &mut Uart, off: u16) -> u8 {
        u.pio_read(off, 1, 0) as u8
    }

    #[test]
    fn assembles_lines_and_drops_cr() {
        let mut u = Uart::default();
        out(&mut u, b"hello\r\nwor");
        assert_eq!(u.take_output().as_deref(), Some("hello"));
        assert_eq!(u.take_output(), None);
        out(&mut u, b"ld\n\n");
        assert_eq!(u.take_output().as_deref(), Some("world"));
        assert_eq!(u.take_output().as_deref(), Some(""));
        out(&mut u, b"tail");
        assert_eq!(u.take_output(), None);
        u.flush_partial();
        assert_eq!(u.take_output().as_deref(), Some("tail"));
    }

    #[test]
    fn long_lines_are_chunked_on_char_boundaries() {
        let mut u = Uart::default();
        let mut line = alloc::vec![b'a'; MAX_LINE - 1];
        line.extend_from_slice("é".as_bytes()); // 2 bytes straddling 512
        line.extend_from_slice(&[b'b'; 600]);
        line.push(b'\n');
        out(&mut u, &line);
        let first = u.take_output().unwrap();
        assert_eq!(first.len(), MAX_LINE - 1);
        let second = u.take_output().unwrap();
        assert!(second.starts_with("éb"));
        assert_eq!(second.len(), MAX_LINE);
        let third = u.take_output().unwrap();
        assert_eq!(third.len(), 600 - (MAX_LINE - 2));
        assert_eq!(u.take_output(), None);
    }

    #[test]
    fn escapes_invalid_utf8_and_controls() {
        let mut u = Uart::default();
        out(&mut u, b"a\xffb\x1b[0m\tc\xc3\xa9\n");
        assert_eq!(u.take_output().as_deref(), Some("a\\xffb\\x1b[0m\tcé"));
    }

    #[test]
    fn too_many_lines_drop_oldest() {
        let mut u = Uart::default();
        for i in 0..MAX_QUEUED_LINES + 3 {
            out(&mut u, alloc::format!("{i}\n").as_bytes());
        }
        assert_eq!(u.dropped_lines(), 3);
        assert_eq!(u.take_output().as_deref(), Some("3"));
    }

    #[test]
    fn dlab_switches_divisor_latch() {
        let mut u = Uart::default();
        u.pio_write(1, 1, 0x05, 0); // IER
        u.pio_write(3, 1, 0x83, 0); // DLAB, 8N1
        u.pio_write(0, 1, 0x01, 0);
        u.pio_write(1, 1, 0x02, 0);
        assert_eq!(u.divisor(), 0x0201);
        assert_eq!(rd(&mut u, 0), 0x01);
        assert_eq!(rd(&mut u, 1), 0x02);
        u.pio_write(3, 1, 0x03, 0);
        assert_eq!(rd(&mut u, 1), 0x05, "IER untouched by divisor writes");
        assert_eq!(rd(&mut u, 3), 0x03);
        assert_eq!(u.take_output(), None, "DLL writes are not output");
    }

    #[test]
    fn lsr_reports_thre_temt_and_data_ready() {
        let mut u = Uart::default();
        assert_eq!(rd(&mut u, 5), 0x60);
        assert_eq!(u.push_input(b"xy"), 2);
        assert_eq!(rd(&mut u, 5), 0x61);
        assert_eq!(rd(&mut u, 0), b'x');
        assert_eq!(rd(&mut u, 0), b'y');
        assert_eq!(rd(&mut u, 5), 0x60);
        assert_eq!(rd(&mut u, 0), 0);
    }

    #[test]
    fn input_queue_is_bounded() {
        let mut u = Uart::default();
        let big = alloc::vec![0u8; RX_CAPACITY + 10];
        assert_eq!(u.push_input(&big), RX_CAPACITY);
        assert_eq!(u.push_input(b"z"), 0);
    }

    #[test]
    fn scratch_and_fifo_identification() {
        let mut u = Uart::default();
        u.pio_write(7, 1, 0xA5, 0);
        assert_eq!(rd(&mut u, 7), 0xA5);
        assert_eq!(rd(&mut u, 2), 0x01);
        u.pio_write(2, 1, 0xC7, 0);
        assert_eq!(rd(&mut u, 2), 0xC1, "16550A: FIFOs enabled, no irq");
    }

    #[test]
    fn fifo_reset_clears_receive_queue() {
        let mut u = Uart::default();
        u.push_input(b"abc");
        u.pio_write(2, 1, 0x03, 0);
        assert_eq!(rd(&mut u, 5) & LSR_DR, 0);
    }

    #[test]
    fn rda_interrupt_priority_over_thre() {
        let mut u = Uart::new(Some(0x24));
        let mut irqs = Irqs::default();
        u.pio_write(1, 1, 0x03, 0); // RDA + THRE
        u.poll_irq(&mut irqs);
        assert_eq!(irqs.0, [0x24], "enabling THRE interrupts at once");
        u.push_input(b"k");
        assert_eq!(rd(&mut u, 2), 0x04, "RDA before THRE");
        assert_eq!(rd(&mut u, 0), b'k');
        assert_eq!(rd(&mut u, 2), 0x02, "then THRE");
        assert_eq!(rd(&mut u, 2), 0x01, "IIR read cleared THRE");
        assert!(!u.irq_level());
        u.poll_irq(&mut irqs);
        assert_eq!(irqs.0, [0x24], "no new edge while level stayed high");
        out(&mut u, b"!");
        assert!(u.irq_level());
        u.poll_irq(&mut irqs);
        u.poll_irq(&mut irqs);
        assert_eq!(irqs.0, [0x24, 0x24], "one raise per rising edge");
    }

    #[test]
    fn no_vector_means_no_raise_and_masked_ier_no_level() {
        let mut u = Uart::new(None);
        let mut irqs = Irqs::default();
        u.push_input(b"a");
        assert!(!u.irq_level(), "IER is zero");
        u.pio_write(1, 1, 0x01, 0);
        assert!(u.irq_level());
        u.poll_irq(&mut irqs);
        assert!(irqs.0.is_empty());
    }

    #[test]
    fn loopback_echoes_and_maps_modem_lines() {
        let mut u = Uart::default();
        assert_eq!(rd(&mut u, 6) & 0xF0, 0xB0);
        u.pio_write(4, 1, 0x1A, 0); // LOOP | RTS | OUT2 (Linux's probe)
        assert_eq!(rd(&mut u, 6) & 0xF0, 0x90);
        out(&mut u, b"Q");
        assert_eq!(rd(&mut u, 5) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, 0), b'Q');
        u.flush_partial();
        assert_eq!(u.take_output(), None, "loopback bytes do not leave");
        u.pio_write(4, 1, 0x1F, 0);
        let msr = rd(&mut u, 6);
        assert_eq!(msr & 0xF0, 0xF0);
        assert_eq!(msr & 0x0F, 0x02, "DSR changed");
        assert_eq!(rd(&mut u, 6) & 0x0F, 0, "deltas clear on read");
    }

    #[test]
    fn snapshot_is_plain_data() {
        let mut u = Uart::new(Some(0x24));
        out(&mut u, b"abc");
        let snap = u.clone();
        out(&mut u, b"\n");
        assert_ne!(u, snap);
        let mut restored = snap;
        out(&mut restored, b"\n");
        assert_eq!(restored, u);
    }
}

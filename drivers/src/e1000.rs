//! Intel 8254x (82540EM, PCI 8086:100E) Ethernet driver, polled, for QEMU
//! `-device e1000`, Bochs `e1000:` and bare metal.
//!
//! References: Intel "PCI/PCI-X Family of Gigabit Ethernet Controllers
//! Software Developer's Manual" (8254x SDM, rev. 4.0): §14.3 general
//! configuration, §14.4 receive initialization, §14.5 transmit
//! initialization, §3.2.3 receive descriptor, §3.3.3 legacy transmit
//! descriptor, §5.6.1/§13.4.4 EEPROM read register (EERD), §13.7
//! statistics registers.
//!
//! Memory model: descriptor rings and packet buffers are heap allocations
//! handed to the device by address. The kernel identity-maps RAM, so a
//! virtual address *is* the physical address the device DMAs to
//! ([`DmaBuf::phys`]). Register access is behind [`Registers`] so the ring
//! logic is tested on the host against [`fake::FakeE1000`], which plays the
//! device on real host memory.
use crate::nic::{Nic, NicCounters, NicError, MAX_FRAME, MIN_FRAME};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

/// PCI IDs this driver takes (8254x SDM Table 5-1; QEMU/Bochs model the 82540EM).
pub const PCI_IDS: &[(u16, u16)] = &[(0x8086, 0x100E), (0x8086, 0x100F), (0x8086, 0x10D3)];

/// Register offsets (8254x SDM Table 13-2).
pub mod reg {
    pub const CTRL: u32 = 0x0000;
    pub const STATUS: u32 = 0x0008;
    pub const EERD: u32 = 0x0014;
    pub const ICR: u32 = 0x00C0;
    pub const IMC: u32 = 0x00D8;
    pub const RCTL: u32 = 0x0100;
    pub const TCTL: u32 = 0x0400;
    pub const TIPG: u32 = 0x0410;
    pub const RDBAL: u32 = 0x2800;
    pub const RDBAH: u32 = 0x2804;
    pub const RDLEN: u32 = 0x2808;
    pub const RDH: u32 = 0x2810;
    pub const RDT: u32 = 0x2818;
    pub const TDBAL: u32 = 0x3800;
    pub const TDBAH: u32 = 0x3804;
    pub const TDLEN: u32 = 0x3808;
    pub const TDH: u32 = 0x3810;
    pub const TDT: u32 = 0x3818;
    pub const CRCERRS: u32 = 0x4000;
    pub const MPC: u32 = 0x4010;
    pub const MTA: u32 = 0x5200;
    pub const RAL0: u32 = 0x5400;
    pub const RAH0: u32 = 0x5404;
    /// Receive address 1 (a second unicast address the filter accepts).
    pub const RAL1: u32 = 0x5408;
    pub const RAH1: u32 = 0x540C;
}

/// Register bits.
pub mod bits {
    pub const CTRL_ASDE: u32 = 1 << 5;
    pub const CTRL_SLU: u32 = 1 << 6;
    pub const CTRL_LRST: u32 = 1 << 3;
    pub const CTRL_ILOS: u32 = 1 << 7;
    pub const CTRL_RST: u32 = 1 << 26;
    pub const CTRL_VME: u32 = 1 << 30;
    pub const CTRL_PHY_RST: u32 = 1 << 31;
    pub const STATUS_FD: u32 = 1 << 0;
    pub const STATUS_LU: u32 = 1 << 1;
    pub const EERD_START: u32 = 1 << 0;
    pub const EERD_DONE: u32 = 1 << 4;
    pub const RAH_AV: u32 = 1 << 31;
    pub const RCTL_EN: u32 = 1 << 1;
    pub const RCTL_BAM: u32 = 1 << 15;
    /// Buffer size 2048 (BSIZE = 00, BSEX = 0); long packets off (LPE = 0).
    pub const RCTL_BSIZE_2048: u32 = 0;
    pub const RCTL_SECRC: u32 = 1 << 26;
    pub const TCTL_EN: u32 = 1 << 1;
    pub const TCTL_PSP: u32 = 1 << 3;
    pub const TCTL_CT: u32 = 0x10 << 4;
    pub const TCTL_COLD_FD: u32 = 0x40 << 12;
    /// IPGT 10, IPGR1 8, IPGR2 6 for copper (SDM §13.4.34).
    pub const TIPG_COPPER: u32 = 10 | (8 << 10) | (6 << 20);
    /// Receive descriptor status (SDM §3.2.3.1).
    pub const RXS_DD: u8 = 1 << 0;
    pub const RXS_EOP: u8 = 1 << 1;
    /// Receive errors: CE, SE, SEQ, CXE, RXE (TCPE/IPE only concern offload).
    pub const RXE_FRAME: u8 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 4) | (1 << 7);
    /// Transmit command: EOP, IFCS (insert FCS), RS (report status).
    pub const TXCMD_EOP: u8 = 1 << 0;
    pub const TXCMD_IFCS: u8 = 1 << 1;
    pub const TXCMD_RS: u8 = 1 << 3;
    pub const TXS_DD: u8 = 1 << 0;
}

/// 32-bit register access to the device's BAR0.
pub trait Registers {
    fn read(&self, reg: u32) -> u32;
    fn write(&mut self, reg: u32, value: u32);
}

/// BAR0 mapped at an address the CPU can use (identity mapped, uncached).
pub struct MmioRegisters {
    base: *mut u32,
}

impl MmioRegisters {
    /// # Safety
    /// `base` must map the device's 128 KiB register BAR for the lifetime
    /// of the value, with nothing else accessing it.
    pub unsafe fn new(base: *mut u8) -> Self {
        MmioRegisters { base: base.cast() }
    }
}

impl Registers for MmioRegisters {
    fn read(&self, reg: u32) -> u32 {
        // SAFETY: `new`'s contract: `base` maps the 128 KiB register space;
        // every offset used is a register below 0x6000, dword aligned.
        unsafe { self.base.add(reg as usize / 4).read_volatile() }
    }
    fn write(&mut self, reg: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.add(reg as usize / 4).write_volatile(value) }
    }
}

/// Zeroed, aligned memory the device may DMA to (identity mapped:
/// physical address = pointer value).
pub struct DmaBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl DmaBuf {
    /// Panics on allocation failure (boot-time only).
    pub fn new(len: usize, align: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len, align).expect("DMA layout");
        // SAFETY: `layout` has a non-zero size (callers pass ring sizes).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("out of memory for DMA buffers");
        DmaBuf { ptr, layout }
    }
    /// The bus address the device uses (identity map).
    pub fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Descriptors per ring (multiple of 8: RDLEN/TDLEN are 128-byte multiples).
pub const RING: usize = 32;
/// Packet buffer size (RCTL.BSIZE = 2048).
pub const BUF: usize = 2048;

/// Receive descriptor (SDM §3.2.3): addr, length, checksum, status, errors, special.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RxDesc {
    pub addr: u64,
    pub length: u16,
    pub checksum: u16,
    pub status: u8,
    pub errors: u8,
    pub special: u16,
}

/// Legacy transmit descriptor (SDM §3.3.3).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct TxDesc {
    pub addr: u64,
    pub length: u16,
    pub cso: u8,
    pub cmd: u8,
    pub status: u8,
    pub css: u8,
    pub special: u16,
}

/// What to do with one completed receive descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// A whole good frame of this length.
    Deliver(usize),
    /// Bad frame: device-flagged error.
    DropError,
    /// Bad frame: length out of range or spread over several descriptors.
    DropLength,
    /// A middle fragment of a frame already being discarded.
    Discarding,
}

/// Judges a completed receive descriptor. `discarding` is true while the
/// descriptors of a frame that did not fit one buffer are being skipped;
/// the new value is returned with the verdict.
pub fn judge_rx(desc: &RxDesc, discarding: bool) -> (RxVerdict, bool) {
    let eop = desc.status & bits::RXS_EOP != 0;
    if discarding {
        return if eop {
            (RxVerdict::DropLength, false)
        } else {
            (RxVerdict::Discarding, true)
        };
    }
    if !eop {
        return (RxVerdict::Discarding, true);
    }
    if desc.errors & bits::RXE_FRAME != 0 {
        return (RxVerdict::DropError, false);
    }
    let len = usize::from(desc.length);
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return (RxVerdict::DropLength, false);
    }
    (RxVerdict::Deliver(len), false)
}

/// Link state read from STATUS (SDM §13.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub full_duplex: bool,
    pub mbps: u32,
}

pub fn decode_status(status: u32) -> Link {
    Link {
        up: status & bits::STATUS_LU != 0,
        full_duplex: status & bits::STATUS_FD != 0,
        mbps: match (status >> 6) & 0x3 {
            0 => 10,
            1 => 100,
            _ => 1000,
        },
    }
}

/// MAC from RAL0/RAH0 when the address-valid bit is set.
pub fn mac_from_ra(ral: u32, rah: u32) -> Option<[u8; 6]> {
    if rah & bits::RAH_AV == 0 {
        return None;
    }
    let l = ral.to_le_bytes();
    let h = rah.to_le_bytes();
    let mac = [l[0], l[1], l[2], l[3], h[0], h[1]];
    (mac != [0; 6]).then_some(mac)
}

/// The driver.
pub struct E1000<R: Registers> {
    regs: R,
    mac: [u8; 6],
    rx_ring: DmaBuf,
    rx_bufs: DmaBuf,
    rx_next: usize,
    rx_discarding: bool,
    tx_ring: DmaBuf,
    tx_bufs: DmaBuf,
    tx_tail: usize,
    tx_clean: usize,
    counters: NicCounters,
}

/// Why bring-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000Error {
    /// CTRL.RST did not clear.
    ResetTimeout,
    /// No MAC in RAL/RAH nor in the EEPROM.
    NoMac,
}

impl<R: Registers> E1000<R> {
    /// Resets and initializes the device (SDM §14.3–14.5), interrupts masked.
    pub fn new(mut regs: R) -> Result<Self, E1000Error> {
        regs.write(reg::IMC, 0xFFFF_FFFF);
        let ctrl = regs.read(reg::CTRL);
        regs.write(reg::CTRL, ctrl | bits::CTRL_RST);
        let mut cleared = false;
        for _ in 0..1_000_000 {
            if regs.read(reg::CTRL) & bits::CTRL_RST == 0 {
                cleared = true;
                break;
            }
            core::hint::spin_loop();
        }
        if !cleared {
            return Err(E1000Error::ResetTimeout);
        }
        regs.write(reg::IMC, 0xFFFF_FFFF);
        let _ = regs.read(reg::ICR);
        let ctrl = regs.read(reg::CTRL);
        regs.write(
            reg::CTRL,
            (ctrl | bits::CTRL_SLU | bits::CTRL_ASDE)
                & !(bits::CTRL_LRST | bits::CTRL_ILOS | bits::CTRL_VME | bits::CTRL_PHY_RST),
        );
        let mac = match mac_from_ra(regs.read(reg::RAL0), regs.read(reg::RAH0)) {
            Some(m) => m,
            None => read_eeprom_mac(&mut regs).ok_or(E1000Error::NoMac)?,
        };
        regs.write(
            reg::RAL0,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        );
        regs.write(
            reg::RAH0,
            u32::from(mac[4]) | (u32::from(mac[5]) << 8) | bits::RAH_AV,
        );
        for i in 0..128 {
            regs.write(reg::MTA + 4 * i, 0);
        }

        let rx_ring = DmaBuf::new(RING * 16, 128);
        let rx_bufs = DmaBuf::new(RING * BUF, 4096);
        for i in 0..RING {
            let d = RxDesc {
                addr: rx_bufs.phys() + (i * BUF) as u64,
                ..RxDesc::default()
            };
            // SAFETY: `i < RING`; the ring holds RING 16-byte descriptors.
            unsafe { rx_ring.ptr().cast::<RxDesc>().add(i).write_volatile(d) };
        }
        regs.write(reg::RDBAL, rx_ring.phys() as u32);
        regs.write(reg::RDBAH, (rx_ring.phys() >> 32) as u32);
        regs.write(reg::RDLEN, (RING * 16) as u32);
        regs.write(reg::RDH, 0);
        regs.write(reg::RDT, (RING - 1) as u32);
        regs.write(
            reg::RCTL,
            bits::RCTL_EN | bits::RCTL_BAM | bits::RCTL_SECRC | bits::RCTL_BSIZE_2048,
        );

        let tx_ring = DmaBuf::new(RING * 16, 128);
        let tx_bufs = DmaBuf::new(RING * BUF, 4096);
        regs.write(reg::TDBAL, tx_ring.phys() as u32);
        regs.write(reg::TDBAH, (tx_ring.phys() >> 32) as u32);
        regs.write(reg::TDLEN, (RING * 16) as u32);
        regs.write(reg::TDH, 0);
        regs.write(reg::TDT, 0);
        regs.write(reg::TIPG, bits::TIPG_COPPER);
        regs.write(
            reg::TCTL,
            bits::TCTL_EN | bits::TCTL_PSP | bits::TCTL_CT | bits::TCTL_COLD_FD,
        );
        Ok(E1000 {
            regs,
            mac,
            rx_ring,
            rx_bufs,
            rx_next: 0,
            rx_discarding: false,
            tx_ring,
            tx_bufs,
            tx_tail: 0,
            tx_clean: 0,
            counters: NicCounters::default(),
        })
    }

    pub fn link(&self) -> Link {
        decode_status(self.regs.read(reg::STATUS))
    }

    fn rx_desc(&self, i: usize) -> *mut RxDesc {
        debug_assert!(i < RING);
        // SAFETY: `i < RING`, inside the ring allocation.
        unsafe { self.rx_ring.ptr().cast::<RxDesc>().add(i) }
    }

    fn tx_desc(&self, i: usize) -> *mut TxDesc {
        debug_assert!(i < RING);
        // SAFETY: `i < RING`, inside the ring allocation.
        unsafe { self.tx_ring.ptr().cast::<TxDesc>().add(i) }
    }

    /// Reclaims transmit descriptors the device has finished (DD set).
    fn reclaim_tx(&mut self) {
        while self.tx_clean != self.tx_tail {
            // SAFETY: a descriptor of our ring; the device writes status by DMA.
            let d = unsafe { self.tx_desc(self.tx_clean).read_volatile() };
            if d.status & bits::TXS_DD == 0 {
                break;
            }
            self.tx_clean = (self.tx_clean + 1) % RING;
        }
    }
}

/// Reads the MAC from EEPROM words 0..2 through EERD (SDM §13.4.4).
fn read_eeprom_mac<R: Registers>(regs: &mut R) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    for word in 0..3u32 {
        regs.write(reg::EERD, (word << 8) | bits::EERD_START);
        let mut value = None;
        for _ in 0..100_000 {
            let v = regs.read(reg::EERD);
            if v & bits::EERD_DONE != 0 {
                value = Some((v >> 16) as u16);
                break;
            }
        }
        let b = value?.to_le_bytes();
        mac[2 * word as usize] = b[0];
        mac[2 * word as usize + 1] = b[1];
    }
    (mac != [0; 6] && mac != [0xFF; 6]).then_some(mac)
}

impl<R: Registers> Nic for E1000<R> {
    fn name(&self) -> &'static str {
        "e1000"
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        self.link().up
    }

    fn counters(&mut self) -> NicCounters {
        // Statistics registers clear on read (SDM §13.7).
        self.counters.hw_crc_errors += u64::from(self.regs.read(reg::CRCERRS));
        self.counters.hw_missed += u64::from(self.regs.read(reg::MPC));
        self.counters
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let i = self.rx_next;
            // SAFETY: a descriptor of our ring; the device fills it by DMA.
            let d = unsafe { self.rx_desc(i).read_volatile() };
            if d.status & bits::RXS_DD == 0 {
                return None;
            }
            fence(Ordering::Acquire);
            let (verdict, discarding) = judge_rx(&d, self.rx_discarding);
            self.rx_discarding = discarding;
            let mut out = None;
            match verdict {
                RxVerdict::Deliver(len) if len <= buf.len() => {
                    // SAFETY: the device finished writing buffer `i` (DD set)
                    // and `len <= MAX_FRAME < BUF`.
                    let src = unsafe {
                        core::slice::from_raw_parts(self.rx_bufs.ptr().add(i * BUF), len)
                    };
                    buf[..len].copy_from_slice(src);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    out = Some(len);
                }
                RxVerdict::Deliver(_) | RxVerdict::DropLength => self.counters.rx_bad_length += 1,
                RxVerdict::DropError => self.counters.rx_errors += 1,
                RxVerdict::Discarding => {}
            }
            // Hand the descriptor back: clear status, advance the tail.
            let fresh = RxDesc {
                addr: self.rx_bufs.phys() + (i * BUF) as u64,
                ..RxDesc::default()
            };
            // SAFETY: descriptor `i` is ours again (DD was set).
            unsafe { self.rx_desc(i).write_volatile(fresh) };
            fence(Ordering::Release);
            self.regs.write(reg::RDT, i as u32);
            self.rx_next = (i + 1) % RING;
            if out.is_some() {
                return out;
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        (self.tx_tail + 1) % RING != self.tx_clean
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError> {
        if frame.len() > MAX_FRAME || frame.len() < MIN_FRAME {
            return Err(NicError::BadLength(frame.len()));
        }
        if !self.can_transmit() {
            self.counters.tx_busy += 1;
            return Err(NicError::Busy);
        }
        let i = self.tx_tail;
        // SAFETY: buffer `i` is not owned by the device (i is between clean
        // and tail), and `frame.len() <= MAX_FRAME < BUF`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                self.tx_bufs.ptr().add(i * BUF),
                frame.len(),
            )
        };
        let d = TxDesc {
            addr: self.tx_bufs.phys() + (i * BUF) as u64,
            length: frame.len() as u16,
            cmd: bits::TXCMD_EOP | bits::TXCMD_IFCS | bits::TXCMD_RS,
            ..TxDesc::default()
        };
        // SAFETY: descriptor `i` of our ring, not owned by the device.
        unsafe { self.tx_desc(i).write_volatile(d) };
        fence(Ordering::Release);
        self.tx_tail = (i + 1) % RING;
        self.regs.write(reg::TDT, self.tx_tail as u32);
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn accept_mac(&mut self, mac: [u8; 6]) -> bool {
        // Receive address 1 of the exact-match filter (82540EM SDM §13.5.2).
        self.regs.write(
            reg::RAL1,
            u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
        );
        self.regs.write(
            reg::RAH1,
            u32::from(mac[4]) | (u32::from(mac[5]) << 8) | bits::RAH_AV,
        );
        true
    }
}

/// A register-level 82540EM model for tests: it DMAs through the ring
/// addresses programmed into it, which are host pointers here.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct State {
        pub regs: HashMap<u32, u32>,
        pub sent: Vec<Vec<u8>>,
        pub eeprom: [u16; 3],
    }

    /// Shared so the test can poke the device while the driver owns it.
    #[derive(Clone, Default)]
    pub struct FakeE1000(pub std::rc::Rc<RefCell<State>>);

    impl FakeE1000 {
        fn get(&self, r: u32) -> u32 {
            *self.0.borrow().regs.get(&r).unwrap_or(&0)
        }

        /// Delivers one frame into the receive ring, split over as many
        /// descriptors as needed; `errors` goes into the last descriptor.
        /// Returns false when the ring has no free descriptor.
        pub fn inject(&self, frame: &[u8], errors: u8) -> bool {
            let base = (u64::from(self.get(reg::RDBAH)) << 32) | u64::from(self.get(reg::RDBAL));
            let n = (self.get(reg::RDLEN) / 16) as usize;
            let chunks: Vec<&[u8]> = frame.chunks(BUF).collect();
            for (k, chunk) in chunks.iter().enumerate() {
                let head = self.get(reg::RDH) as usize;
                if head == self.get(reg::RDT) as usize {
                    return false;
                }
                let dp = (base as usize + head * 16) as *mut RxDesc;
                // SAFETY: `base` is the driver's live ring (a host pointer in
                // this fake) and `head < n`.
                let mut d = unsafe { dp.read_volatile() };
                // SAFETY: `d.addr` is a BUF-sized buffer of the driver.
                unsafe {
                    std::ptr::copy_nonoverlapping(chunk.as_ptr(), d.addr as *mut u8, chunk.len())
                };
                d.length = chunk.len() as u16;
                let last = k + 1 == chunks.len();
                d.status = bits::RXS_DD | if last { bits::RXS_EOP } else { 0 };
                d.errors = if last { errors } else { 0 };
                // SAFETY: as above.
                unsafe { dp.write_volatile(d) };
                self.0
                    .borrow_mut()
                    .regs
                    .insert(reg::RDH, ((head + 1) % n) as u32);
            }
            true
        }

        /// Processes the transmit ring up to TDT.
        fn run_tx(&self) {
            let base = (u64::from(self.get(reg::TDBAH)) << 32) | u64::from(self.get(reg::TDBAL));
            let n = (self.get(reg::TDLEN) / 16) as usize;
            let mut head = self.get(reg::TDH) as usize;
            let tail = self.get(reg::TDT) as usize;
            while head != tail {
                let dp = (base as usize + head * 16) as *mut TxDesc;
                // SAFETY: the driver's live transmit ring, `head < n`.
                let mut d = unsafe { dp.read_volatile() };
                // SAFETY: `d.addr` points at `d.length` bytes the driver wrote.
                let frame = unsafe {
                    std::slice::from_raw_parts(d.addr as *const u8, usize::from(d.length))
                };
                self.0.borrow_mut().sent.push(frame.to_vec());
                d.status |= bits::TXS_DD;
                // SAFETY: as above.
                unsafe { dp.write_volatile(d) };
                head = (head + 1) % n;
            }
            self.0.borrow_mut().regs.insert(reg::TDH, head as u32);
        }

        /// Holds transmit descriptors without completing them.
        pub fn stall_tx(&self) {
            self.0.borrow_mut().regs.insert(0xFFFF, 1);
        }
    }

    impl Registers for FakeE1000 {
        fn read(&self, r: u32) -> u32 {
            let s = self.0.borrow();
            match r {
                reg::EERD => {
                    let v = *s.regs.get(&r).unwrap_or(&0);
                    let word = ((v >> 8) & 0xFF) as usize;
                    (u32::from(s.eeprom.get(word).copied().unwrap_or(0)) << 16) | bits::EERD_DONE
                }
                reg::STATUS => bits::STATUS_LU | bits::STATUS_FD | (2 << 6),
                reg::CRCERRS => 3,
                _ => *s.regs.get(&r).unwrap_or(&0),
            }
        }
        fn write(&mut self, r: u32, value: u32) {
            let value = if r == reg::CTRL {
                value & !bits::CTRL_RST
            } else {
                value
            };
            self.0.borrow_mut().regs.insert(r, value);
            let stalled = self.get(0xFFFF) == 1;
            if r == reg::TDT && !stalled {
                self.run_tx();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeE1000;
    use super::*;

    fn up() -> (FakeE1000, E1000<FakeE1000>) {
        let dev = FakeE1000::default();
        dev.0.borrow_mut().eeprom = [0x5452, 0x1200, 0x5634];
        let nic = E1000::new(dev.clone()).unwrap();
        (dev, nic)
    }

    #[test]
    fn decodes_registers() {
        assert_eq!(
            mac_from_ra(0x1200_5452, 0x8000_5634),
            Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(mac_from_ra(0x1200_5452, 0x0000_5634), None);
        assert_eq!(
            decode_status(0x0000_0083),
            Link {
                up: true,
                full_duplex: true,
                mbps: 1000
            }
        );
        assert!(!decode_status(0x40).up);
        assert_eq!(decode_status(0x40).mbps, 100);
        assert_eq!(core::mem::size_of::<RxDesc>(), 16);
        assert_eq!(core::mem::size_of::<TxDesc>(), 16);
    }

    #[test]
    fn bring_up_programs_rings_and_mac() {
        let (dev, mut nic) = up();
        assert_eq!(nic.mac(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let s = dev.0.borrow();
        assert_eq!(s.regs[&reg::RAH0], 0x8000_5634);
        assert_eq!(s.regs[&reg::RDLEN], 512);
        assert_eq!(s.regs[&reg::RDT], 31);
        assert_ne!(s.regs[&reg::RCTL] & bits::RCTL_EN, 0);
        assert_ne!(s.regs[&reg::TCTL] & bits::TCTL_EN, 0);
        assert_eq!(s.regs[&reg::IMC], 0xFFFF_FFFF);
        drop(s);
        assert!(nic.link_up());
        assert_eq!(nic.counters().hw_crc_errors, 3);
    }

    #[test]
    fn receives_and_recycles_around_the_ring() {
        let (dev, mut nic) = up();
        let mut buf = [0u8; MAX_FRAME];
        assert_eq!(nic.receive(&mut buf), None);
        for round in 0..100u32 {
            let frame: Vec<u8> = (0..60 + round as usize)
                .map(|b| b as u8 ^ round as u8)
                .collect();
            assert!(dev.inject(&frame, 0), "ring full at round {round}");
            assert_eq!(nic.receive(&mut buf), Some(frame.len()));
            assert_eq!(&buf[..frame.len()], &frame[..]);
        }
        assert_eq!(nic.counters().rx_frames, 100);
    }

    #[test]
    fn full_ring_holds_ring_minus_one() {
        let (dev, mut nic) = up();
        let mut n = 0;
        while dev.inject(&[7u8; 64], 0) {
            n += 1;
        }
        assert_eq!(n, RING - 1);
        let mut buf = [0u8; MAX_FRAME];
        let mut got = 0;
        while nic.receive(&mut buf).is_some() {
            got += 1;
        }
        assert_eq!(got, RING - 1);
        assert!(dev.inject(&[7u8; 64], 0));
    }

    #[test]
    fn drops_and_counts_bad_frames() {
        let (dev, mut nic) = up();
        let mut buf = [0u8; MAX_FRAME];
        assert!(dev.inject(&[1u8; 64], 1 << 0)); // CRC error
        assert!(dev.inject(&[2u8; 3000], 0)); // spans two descriptors
        assert!(dev.inject(&[3u8; 1600], 0)); // oversized in one buffer
        assert!(dev.inject(&[4u8; 6], 0)); // runt
        assert!(dev.inject(&[5u8; 60], 1 << 5)); // TCP checksum only: fine
        assert_eq!(nic.receive(&mut buf), Some(60));
        assert_eq!(buf[0], 5);
        let c = nic.counters();
        assert_eq!((c.rx_errors, c.rx_bad_length, c.rx_frames), (1, 3, 1));
    }

    #[test]
    fn judge_fragments() {
        let mid = RxDesc {
            status: bits::RXS_DD,
            length: 2048,
            ..RxDesc::default()
        };
        let end = RxDesc {
            status: bits::RXS_DD | bits::RXS_EOP,
            length: 100,
            ..RxDesc::default()
        };
        assert_eq!(judge_rx(&mid, false), (RxVerdict::Discarding, true));
        assert_eq!(judge_rx(&mid, true), (RxVerdict::Discarding, true));
        assert_eq!(judge_rx(&end, true), (RxVerdict::DropLength, false));
        assert_eq!(judge_rx(&end, false), (RxVerdict::Deliver(100), false));
    }

    #[test]
    fn transmits_and_reports_full_ring() {
        let (dev, mut nic) = up();
        for i in 0..100u8 {
            nic.transmit(&[i; 60]).unwrap();
        }
        assert_eq!(dev.0.borrow().sent.len(), 100);
        assert_eq!(dev.0.borrow().sent[99], vec![99u8; 60]);
        assert_eq!(nic.transmit(&[0; 4000]), Err(NicError::BadLength(4000)));
        dev.stall_tx();
        let mut queued = 0;
        while nic.transmit(&[1; 60]).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, RING - 1);
        assert!(!nic.can_transmit());
        assert_eq!(nic.counters().tx_busy, 1);
    }
}

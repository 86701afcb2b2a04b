//! The virtio test modes (ftvisor issue 6), each returning its exit code;
//! 7 = skipped (not under ftvisor, so there are no devices):
//!
//! - `test=blk [mb=N]`: write N MiB (default 2) of patterned sectors in
//!   64 KiB requests, flush, read everything back and verify it, then check
//!   that a read past the end fails with `IOERR`; prints MB/s in guest time.
//! - `test=net-loop [frames=N]`: send N frames (default 64, 60..1514 bytes)
//!   and receive each back (the hypervisor must run `guest_net=loopback`).
//! - `test=bad-descriptors`: on both devices, post malformed split
//!   virtqueues (virtio 1.2 §2.7: a descriptor loop, an address outside
//!   RAM, a huge length, an avail index far ahead, a head beyond the queue,
//!   a misaligned ring, a ring outside RAM) through raw registers; each must
//!   leave the device in `DEVICE_NEEDS_RESET` (§2.1.2) with a
//!   configuration-change interrupt; then reset the devices and show they
//!   work again through `virtio-drivers`.
use crate::virtio::{
    self, read32, reg, status, write32, AsmMmioTransport, IdentityHal, Layout, BLK, NET,
};
use crate::{hw, println, BootInfo};
use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::device::net::VirtIONetRaw;

/// Guest TSC ticks per second (ftvisor announces 1 GHz).
const TSC_HZ: u64 = 1_000_000_000;
/// How long one request may take before the test gives up (guest time).
const IO_TIMEOUT: u64 = TSC_HZ;
/// Bytes per block request.
const CHUNK: usize = 64 * 1024;
/// virtio-net receive buffers kept posted.
const RX_BUFS: usize = 8;
const BUF: usize = 2048;

type Blk = VirtIOBlk<IdentityHal, AsmMmioTransport>;
type Net = VirtIONetRaw<IdentityHal, AsmMmioTransport, 16>;

/// The buffers the tests hand to the devices (identity mapped, in RAM).
#[repr(C, align(4096))]
struct Buffers {
    write: [u8; CHUNK],
    read: [u8; CHUNK],
    tx: [u8; BUF],
    rx: [[u8; BUF]; RX_BUFS],
    /// Raw virtqueue for the hostile test: descriptors at 0, driver ring
    /// at 0x400, device ring at 0x800, request header at 0x1000, status
    /// byte at 0x1100.
    raw: [u8; 0x2000],
}

struct Shared(UnsafeCell<Buffers>);

// SAFETY: one CPU; only the single running test mode touches the buffers,
// through the one reference `buffers` hands out.
unsafe impl Sync for Shared {}

static BUFFERS: Shared = Shared(UnsafeCell::new(Buffers {
    write: [0; CHUNK],
    read: [0; CHUNK],
    tx: [0; BUF],
    rx: [[0; BUF]; RX_BUFS],
    raw: [0; 0x2000],
}));

/// The buffers; called once per boot (by `run` for this file's modes, or
/// by [`ReplayIo::new`] for `test=replay io=1`: one test mode per boot).
fn buffers() -> &'static mut Buffers {
    // SAFETY: called once per boot, from `run` or `ReplayIo::new` (the
    // guest runs one test mode), so this is the only reference.
    unsafe { &mut *BUFFERS.0.get() }
}

/// Whether `test` is one of this file's modes.
pub fn handles(test: &str) -> bool {
    matches!(test, "blk" | "net-loop" | "bad-descriptors")
}

/// Runs test mode `test` (one of [`handles`]).
pub fn run(test: &str, bi: &BootInfo) -> u8 {
    let layout = match virtio::discover() {
        Ok(l) => l,
        Err(why) => {
            println!("{test}: skipped: {why}");
            return 7;
        }
    };
    println!(
        "{test}: virtio-mmio layout: base {:#x}, {} slots, stride {:#x}, vector {:#x}",
        layout.base, layout.slots, layout.stride, layout.vector
    );
    let b = buffers();
    let r = match test {
        "blk" => blk(&layout, bi, b),
        "net-loop" => net_loop(&layout, bi, b),
        _ => bad_descriptors(&layout, b),
    };
    match r {
        Ok(()) => {
            println!("{test}: ok");
            0
        }
        Err(why) => {
            println!("{test}: FAILED: {why}");
            1
        }
    }
}

fn number(bi: &BootInfo, key: &str, default: u64) -> Result<u64, &'static str> {
    match crate::option(bi.cmdline, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| "bad number on the command line"),
    }
}

/// `bytes` in `ticks` as "M.MM" MB/s (10^6 bytes per second of guest time).
struct Rate(u64, u64);

impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let centi = (u128::from(self.0) * 100 * u128::from(TSC_HZ) / 1_000_000)
            .checked_div(u128::from(self.1))
            .unwrap_or(0);
        write!(f, "{}.{:02} MB/s", centi / 100, centi % 100)
    }
}

/// The test pattern: the word at disk byte offset `o`.
fn word(o: u64) -> u64 {
    let x = (o ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

fn fill(buf: &mut [u8], disk_offset: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(disk_offset + 8 * i as u64).to_le_bytes());
    }
}

/// First byte offset in `buf` that differs from the pattern.
fn check(buf: &[u8], disk_offset: u64) -> Option<usize> {
    buf.chunks_exact(8)
        .enumerate()
        .position(|(i, w)| w != word(disk_offset + 8 * i as u64).to_le_bytes())
        .map(|i| i * 8)
}

/// One block request through the non-blocking API: submit, halt until the
/// completion interrupt, complete.
fn blk_io(dev: &mut Blk, write: bool, sector: u64, buf: &mut [u8]) -> Result<(), &'static str> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` are not touched until the completion
    // below, which passes the same buffers.
    let token = unsafe {
        if write {
            dev.write_blocks_nb(sector as usize, &mut req, buf, &mut resp)
        } else {
            dev.read_blocks_nb(sector as usize, &mut req, buf, &mut resp)
        }
    }
    .map_err(|_| "could not queue a block request")?;
    if !virtio::wait_until(IO_TIMEOUT, || dev.peek_used().is_some()) {
        return Err("no completion within 1 s of guest time");
    }
    // SAFETY: same buffers as submitted; the device returned the chain.
    let r = unsafe {
        if write {
            dev.complete_write_blocks(token, &req, buf, &mut resp)
        } else {
            dev.complete_read_blocks(token, &req, buf, &mut resp)
        }
    };
    match r {
        Ok(()) => Ok(()),
        Err(virtio_drivers::Error::IoError) => Err("IOERR"),
        Err(_) => Err("the request failed"),
    }
}

fn blk(layout: &Layout, bi: &BootInfo, b: &mut Buffers) -> Result<(), &'static str> {
    let mb = number(bi, "mb", 2)?;
    let mut dev =
        Blk::new(virtio::transport(layout, BLK)?).map_err(|_| "virtio-blk init failed")?;
    let capacity = dev.capacity();
    let mut id = [0u8; 20];
    let n = dev.device_id(&mut id).map_err(|_| "GET_ID failed")?;
    println!(
        "blk: virtio-blk at {:#x} vector {:#x}: capacity {capacity} sectors ({} KiB), id \"{}\"",
        layout.slot(BLK),
        layout.vector as usize + BLK,
        capacity / 2,
        id[..n].escape_ascii()
    );
    let total = (capacity * SECTOR_SIZE as u64).min(mb << 20) / CHUNK as u64 * CHUNK as u64;
    if total == 0 {
        return Err("the disk is smaller than one 64 KiB request (disk=none?)");
    }
    let irqs0 = virtio::IRQS[BLK].load(Ordering::Relaxed);
    let per_chunk = (CHUNK / SECTOR_SIZE) as u64;
    let chunks = total / CHUNK as u64;
    let mut write_ticks = 0u64;
    for c in 0..chunks {
        fill(&mut b.write, c * CHUNK as u64);
        let t = hw::rdtsc();
        blk_io(&mut dev, true, c * per_chunk, &mut b.write)?;
        write_ticks += hw::rdtsc() - t;
    }
    let t = hw::rdtsc();
    dev.flush().map_err(|_| "flush failed")?;
    let flush_ticks = hw::rdtsc() - t;
    let mut read_ticks = 0u64;
    for c in 0..chunks {
        b.read.fill(0);
        let t = hw::rdtsc();
        blk_io(&mut dev, false, c * per_chunk, &mut b.read)?;
        read_ticks += hw::rdtsc() - t;
        if let Some(at) = check(&b.read, c * CHUNK as u64) {
            println!(
                "blk: mismatch at disk byte {:#x}",
                c * CHUNK as u64 + at as u64
            );
            return Err("read-back differs from what was written");
        }
    }
    let irqs = virtio::IRQS[BLK].load(Ordering::Relaxed) - irqs0;
    println!(
        "blk: wrote {} KiB in {} us ({}), flush {} us, read back {} KiB in {} us ({}); {} sectors verified; {irqs} interrupts for {} requests",
        total >> 10,
        write_ticks / 1000,
        Rate(total, write_ticks),
        flush_ticks / 1000,
        total >> 10,
        read_ticks / 1000,
        Rate(total, read_ticks),
        total / SECTOR_SIZE as u64,
        2 * chunks + 1
    );
    if irqs == 0 {
        return Err("no completion interrupt arrived");
    }
    match blk_io(&mut dev, false, capacity, &mut b.read[..SECTOR_SIZE]) {
        Err("IOERR") => println!("blk: read past the end (sector {capacity}) -> IOERR"),
        Ok(()) => return Err("a read past the end succeeded"),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// An Ethernet frame of `len` bytes from and to `mac`, ethertype 0x88B5
/// (local experimental), carrying `seq` and a pattern.
fn frame(buf: &mut [u8], mac: [u8; 6], seq: u32, len: usize) {
    buf[0..6].copy_from_slice(&mac);
    buf[6..12].copy_from_slice(&mac);
    buf[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    buf[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, x) in buf[18..len].iter_mut().enumerate() {
        *x = (i as u32 ^ seq.wrapping_mul(31)) as u8;
    }
}

/// Sends `buf` and waits until the device returned the buffer.
fn net_send(net: &mut Net, buf: &[u8]) -> Result<(), &'static str> {
    // SAFETY: `buf` is not touched until `transmit_complete` below.
    let token = unsafe { net.transmit_begin(buf) }.map_err(|_| "transmit queue full")?;
    if !virtio::wait_until(IO_TIMEOUT, || net.poll_transmit().is_some()) {
        return Err("transmit buffer not returned within 1 s");
    }
    // SAFETY: the same buffer as submitted.
    unsafe { net.transmit_complete(token, buf) }.map_err(|_| "transmit completion failed")?;
    Ok(())
}

/// Receive buffers posted to the device: their tokens.
struct Rx {
    tokens: [u16; RX_BUFS],
}

impl Rx {
    fn post_all(net: &mut Net, b: &mut Buffers) -> Result<Self, &'static str> {
        let mut tokens = [0; RX_BUFS];
        for (t, buf) in tokens.iter_mut().zip(b.rx.iter_mut()) {
            // SAFETY: the buffer stays untouched until `receive_complete`.
            *t = unsafe { net.receive_begin(buf) }.map_err(|_| "cannot post rx buffer")?;
        }
        Ok(Self { tokens })
    }

    /// Waits for one frame; returns its buffer index and payload range.
    fn next(
        &mut self,
        net: &mut Net,
        b: &mut Buffers,
        timeout: u64,
    ) -> Result<(usize, core::ops::Range<usize>), &'static str> {
        if !virtio::wait_until(timeout, || net.poll_receive().is_some()) {
            return Err("no frame arrived");
        }
        let token = net.poll_receive().ok_or("frame vanished")?;
        let i = self
            .tokens
            .iter()
            .position(|&t| t == token)
            .ok_or("the device returned an unknown rx token")?;
        // SAFETY: the buffer posted with this token.
        let (hdr, len) = unsafe { net.receive_complete(token, &mut b.rx[i]) }
            .map_err(|_| "receive completion failed")?;
        Ok((i, hdr..hdr + len))
    }

    fn repost(&mut self, net: &mut Net, b: &mut Buffers, i: usize) -> Result<(), &'static str> {
        // SAFETY: as in `post_all`.
        self.tokens[i] =
            unsafe { net.receive_begin(&mut b.rx[i]) }.map_err(|_| "cannot repost rx buffer")?;
        Ok(())
    }
}

fn net_loop(layout: &Layout, bi: &BootInfo, b: &mut Buffers) -> Result<(), &'static str> {
    let frames = number(bi, "frames", 64)? as u32;
    let mut net =
        Net::new(virtio::transport(layout, NET)?).map_err(|_| "virtio-net init failed")?;
    let mac = net.mac_address();
    println!(
        "net-loop: virtio-net at {:#x} vector {:#x}: mac {:02x?}",
        layout.slot(NET),
        layout.vector as usize + NET,
        mac
    );
    let mut rx = Rx::post_all(&mut net, b)?;
    let irqs0 = virtio::IRQS[NET].load(Ordering::Relaxed);
    let (mut bytes, start) = (0u64, hw::rdtsc());
    for seq in 0..frames {
        let len = 60 + (seq as usize * 331) % (1514 - 60 + 1);
        let hdr = net
            .fill_buffer_header(&mut b.tx)
            .map_err(|_| "tx buffer too small")?;
        frame(&mut b.tx[hdr..], mac, seq, len);
        net_send(&mut net, &b.tx[..hdr + len])?;
        let (i, got) = rx.next(&mut net, b, IO_TIMEOUT).inspect_err(|_| {
            println!("net-loop: frame {seq} ({len} bytes) did not come back");
        })?;
        if b.rx[i][got.clone()] != b.tx[hdr..hdr + len] {
            println!(
                "net-loop: frame {seq}: sent {len} bytes, got {} different bytes",
                got.len()
            );
            return Err("a looped-back frame differs from the one sent");
        }
        rx.repost(&mut net, b, i)?;
        bytes += len as u64;
    }
    let ticks = hw::rdtsc() - start;
    let irqs = virtio::IRQS[NET].load(Ordering::Relaxed) - irqs0;
    println!(
        "net-loop: {frames} frames ({bytes} bytes) sent and received back intact in {} us ({}); {irqs} interrupts",
        ticks / 1000,
        Rate(bytes, ticks)
    );
    if irqs == 0 {
        return Err("no interrupt arrived");
    }
    Ok(())
}

const RAW_QSIZE: u16 = 8;
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Guest-physical address outside RAM (and outside every device).
const OUTSIDE_RAM: u64 = 0xF000_0000;

/// One malformed virtqueue.
struct Hostile {
    name: &'static str,
    /// Descriptor table address relative to the raw area, or absolute when
    /// `desc_abs`.
    desc: u64,
    desc_abs: bool,
    /// Writes descriptors and the driver ring (the raw area is zeroed).
    post: fn(raw: &mut [u8], base: u64),
    /// Whether the test notifies the queue afterwards.
    notify: bool,
}

fn put_desc(raw: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let d = &mut raw[16 * i..16 * i + 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
}

fn publish(raw: &mut [u8], head: u16, idx: u16) {
    raw[0x404..0x406].copy_from_slice(&head.to_le_bytes());
    raw[0x402..0x404].copy_from_slice(&idx.to_le_bytes());
}

const HOSTILE: [Hostile; 7] = [
    Hostile {
        name: "descriptor loop (0 -> 1 -> 0)",
        desc: 0,
        desc_abs: false,
        post: |raw, base| {
            put_desc(raw, 0, base + 0x1000, 16, VIRTQ_DESC_F_NEXT, 1);
            put_desc(raw, 1, base + 0x1000, 16, VIRTQ_DESC_F_NEXT, 0);
            publish(raw, 0, 1);
        },
        notify: true,
    },
    Hostile {
        name: "buffer address outside RAM (0xf0000000)",
        desc: 0,
        desc_abs: false,
        post: |raw, _| {
            put_desc(raw, 0, OUTSIDE_RAM, 512, 0, 0);
            publish(raw, 0, 1);
        },
        notify: true,
    },
    Hostile {
        name: "huge length (0xfffff000)",
        desc: 0,
        desc_abs: false,
        post: |raw, base| {
            put_desc(raw, 0, base + 0x1000, 0xFFFF_F000, 0, 0);
            publish(raw, 0, 1);
        },
        notify: true,
    },
    Hostile {
        name: "avail index 200 ahead of an 8-entry queue",
        desc: 0,
        desc_abs: false,
        post: |raw, base| {
            put_desc(raw, 0, base + 0x1000, 16, 0, 0);
            publish(raw, 0, 200);
        },
        notify: true,
    },
    Hostile {
        name: "head index 77 beyond the queue",
        desc: 0,
        desc_abs: false,
        post: |raw, _| publish(raw, 77, 1),
        notify: true,
    },
    Hostile {
        name: "misaligned descriptor table",
        desc: 8,
        desc_abs: false,
        post: |_, _| {},
        notify: false,
    },
    Hostile {
        name: "descriptor table outside RAM",
        desc: OUTSIDE_RAM,
        desc_abs: true,
        post: |_, _| {},
        notify: true,
    },
];

/// Brings `base`'s device to `DRIVER_OK` with only `queue` set up, on the
/// raw area; `Err` if the device does not accept it.
fn raw_init(base: u64, queue: u32, desc: u64, raw: u64) -> Result<(), &'static str> {
    write32(base, reg::STATUS, 0);
    if read32(base, reg::STATUS) != 0 {
        return Err("the device did not reset");
    }
    write32(base, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(base, reg::DRIVER_FEATURES_SEL, 1);
    write32(base, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
    write32(base, reg::DRIVER_FEATURES_SEL, 0);
    write32(base, reg::DRIVER_FEATURES, 0);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(base, reg::STATUS, st);
    if read32(base, reg::STATUS) & status::FEATURES_OK == 0 {
        return Err("FEATURES_OK refused");
    }
    write32(base, reg::QUEUE_SEL, queue);
    write32(base, reg::QUEUE_NUM, RAW_QSIZE.into());
    for (lo, hi, addr) in [
        (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
        (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, raw + 0x400),
        (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, raw + 0x800),
    ] {
        write32(base, lo, addr as u32);
        write32(base, hi, (addr >> 32) as u32);
    }
    write32(base, reg::QUEUE_READY, 1);
    write32(base, reg::STATUS, st | status::DRIVER_OK);
    Ok(())
}

fn bad_descriptors(layout: &Layout, b: &mut Buffers) -> Result<(), &'static str> {
    let raw_base = b.raw.as_ptr() as u64;
    // (slot, name, the queue the device processes on notify)
    for (slot, dev, queue) in [(BLK, "virtio-blk", 0u32), (NET, "virtio-net", 1)] {
        let base = layout.slot(slot);
        for h in &HOSTILE {
            b.raw.fill(0);
            let desc = if h.desc_abs {
                h.desc
            } else {
                raw_base + h.desc
            };
            (h.post)(&mut b.raw, raw_base);
            let irqs0 = virtio::IRQS[slot].load(Ordering::Relaxed);
            virtio::ISR_BITS[slot].store(0, Ordering::Relaxed);
            raw_init(base, queue, desc, raw_base)?;
            core::sync::atomic::fence(Ordering::SeqCst);
            if h.notify {
                write32(base, reg::QUEUE_NOTIFY, queue);
            }
            let broke = virtio::wait_until(IO_TIMEOUT, || {
                virtio::IRQS[slot].load(Ordering::Relaxed) != irqs0
            });
            let st = read32(base, reg::STATUS);
            let bits = virtio::ISR_BITS[slot].load(Ordering::Relaxed);
            if st & status::DEVICE_NEEDS_RESET == 0 {
                println!("bad-descriptors: {dev}: {}: status {st:#x}", h.name);
                return Err("the device did not enter DEVICE_NEEDS_RESET");
            }
            if !broke || bits & virtio::INT_CONFIG_CHANGE == 0 {
                println!(
                    "bad-descriptors: {dev}: {}: interrupt={broke} status bits {bits:#x}",
                    h.name
                );
                return Err("no configuration-change interrupt");
            }
            println!(
                "bad-descriptors: {dev}: {} -> DEVICE_NEEDS_RESET (status {st:#x}), config-change interrupt",
                h.name
            );
            write32(base, reg::STATUS, 0);
            if read32(base, reg::STATUS) != 0 {
                return Err("reset after NEEDS_RESET did not clear the status");
            }
        }
    }
    // The devices must work again after the reset.
    let mut dev =
        Blk::new(virtio::transport(layout, BLK)?).map_err(|_| "virtio-blk re-init failed")?;
    fill(&mut b.write[..SECTOR_SIZE], 7 * SECTOR_SIZE as u64);
    blk_io(&mut dev, true, 7, &mut b.write[..SECTOR_SIZE])?;
    b.read[..SECTOR_SIZE].fill(0);
    blk_io(&mut dev, false, 7, &mut b.read[..SECTOR_SIZE])?;
    if check(&b.read[..SECTOR_SIZE], 7 * SECTOR_SIZE as u64).is_some() {
        return Err("virtio-blk read-back after reset differs");
    }
    println!("bad-descriptors: virtio-blk works after reset (sector 7 written and read back)");
    drop(dev);
    let mut net =
        Net::new(virtio::transport(layout, NET)?).map_err(|_| "virtio-net re-init failed")?;
    let mut rx = Rx::post_all(&mut net, b)?;
    let mac = net.mac_address();
    let hdr = net
        .fill_buffer_header(&mut b.tx)
        .map_err(|_| "tx buffer too small")?;
    frame(&mut b.tx[hdr..], mac, 0xBAD, 128);
    net_send(&mut net, &b.tx[..hdr + 128])?;
    match rx.next(&mut net, b, IO_TIMEOUT / 10) {
        Ok((i, got)) if b.rx[i][got.clone()] == b.tx[hdr..hdr + 128] => {
            println!("bad-descriptors: virtio-net works after reset (frame sent and looped back)")
        }
        Ok(_) => return Err("virtio-net looped back a different frame after reset"),
        Err(_) => println!(
            "bad-descriptors: virtio-net works after reset (frame sent; nothing came back: no loopback)"
        ),
    }
    Ok(())
}

/// `test=replay io=1` (ftvisor issue 8): virtio-blk and virtio-net
/// loopback traffic interleaved with the record/replay workload. Each
/// round [`ReplayIo::begin`]s one block request (writes and reads of one
/// sector alternate; a read returns what the previous write stored, with a
/// pattern seeded by the guest's running hash) and one frame to the
/// loopback wire; [`ReplayIo::poll`] completes them without blocking from
/// inside the workload's loop, so completions and received frames land
/// anywhere in the memory work.
pub struct ReplayIo {
    blk: Blk,
    net: Net,
    rx: Rx,
    b: &'static mut Buffers,
    mac: [u8; 6],
    sectors: u64,
    ops: u64,
    req: BlkReq,
    resp: BlkResp,
    /// In flight: token, whether a write, sector, pattern seed.
    blk_op: Option<(u16, bool, u64, u64)>,
    /// The last write: sector and seed (the next read checks it).
    written: (u64, u64),
    tx: Option<(u16, usize)>,
    tx_len: usize,
    rx_wanted: bool,
    /// Sector reads and frames received, hashed.
    pub hash: u64,
    pub reads: u64,
    pub frames: u64,
    pub errors: u64,
}

impl ReplayIo {
    /// Finds and initialises both devices (`Err`: why not).
    pub fn new() -> Result<Self, &'static str> {
        let layout = virtio::discover()?;
        let b = buffers();
        let blk =
            Blk::new(virtio::transport(&layout, BLK)?).map_err(|_| "virtio-blk init failed")?;
        let sectors = blk.capacity().min(1024);
        if sectors == 0 {
            return Err("the disk is empty (disk=none?)");
        }
        let mut net =
            Net::new(virtio::transport(&layout, NET)?).map_err(|_| "virtio-net init failed")?;
        let mac = net.mac_address();
        let rx = Rx::post_all(&mut net, b)?;
        Ok(Self {
            blk,
            net,
            rx,
            b,
            mac,
            sectors,
            ops: 0,
            req: BlkReq::default(),
            resp: BlkResp::default(),
            blk_op: None,
            written: (0, 0),
            tx: None,
            tx_len: 0,
            rx_wanted: false,
            hash: 0xCBF2_9CE4_8422_2325,
            reads: 0,
            frames: 0,
            errors: 0,
        })
    }

    fn mix(&mut self, v: u64) {
        self.hash = (self.hash ^ v).wrapping_mul(0x100_0000_01B3);
    }

    /// Starts one block request and one frame (after the last ones are
    /// done: call [`Self::poll`] until it says so).
    pub fn begin(&mut self, seed: u64) {
        let write = self.ops.is_multiple_of(2);
        let (sector, pattern) = if write {
            ((seed >> 7) % self.sectors, seed)
        } else {
            self.written
        };
        self.ops += 1;
        let buf = if write {
            fill(&mut self.b.write[..SECTOR_SIZE], pattern);
            &mut self.b.write[..SECTOR_SIZE]
        } else {
            self.b.read[..SECTOR_SIZE].fill(0);
            &mut self.b.read[..SECTOR_SIZE]
        };
        // SAFETY: `req`, `resp` and the sector buffer stay untouched until
        // `poll` completes the request with the same buffers.
        let token = unsafe {
            if write {
                self.blk
                    .write_blocks_nb(sector as usize, &mut self.req, buf, &mut self.resp)
            } else {
                self.blk
                    .read_blocks_nb(sector as usize, &mut self.req, buf, &mut self.resp)
            }
        };
        match token {
            Ok(t) => {
                self.blk_op = Some((t, write, sector, pattern));
                if write {
                    self.written = (sector, pattern);
                }
            }
            Err(_) => self.errors += 1,
        }
        let len = 60 + (seed % 240) as usize;
        let Ok(hdr) = self.net.fill_buffer_header(&mut self.b.tx) else {
            self.errors += 1;
            return;
        };
        frame(&mut self.b.tx[hdr..], self.mac, self.ops as u32, len);
        // SAFETY: the tx buffer stays untouched until `transmit_complete`.
        match unsafe { self.net.transmit_begin(&self.b.tx[..hdr + len]) } {
            Ok(t) => {
                self.tx = Some((t, hdr));
                self.tx_len = len;
                self.rx_wanted = true;
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Completes what finished; `true` when nothing is outstanding.
    pub fn poll(&mut self) -> bool {
        if let Some((t, write, sector, pattern)) = self.blk_op {
            if self.blk.peek_used() == Some(t) {
                self.blk_op = None;
                // SAFETY: the buffers submitted with this token.
                let r = unsafe {
                    if write {
                        self.blk.complete_write_blocks(
                            t,
                            &self.req,
                            &self.b.write[..SECTOR_SIZE],
                            &mut self.resp,
                        )
                    } else {
                        self.blk.complete_read_blocks(
                            t,
                            &self.req,
                            &mut self.b.read[..SECTOR_SIZE],
                            &mut self.resp,
                        )
                    }
                };
                if r.is_err() {
                    self.errors += 1;
                } else if !write {
                    self.reads += 1;
                    if check(&self.b.read[..SECTOR_SIZE], pattern).is_some() {
                        self.errors += 1;
                    }
                    let w = u64::from_le_bytes(self.b.read[8..16].try_into().unwrap_or([0; 8]));
                    self.mix(w ^ sector);
                }
            }
        }
        if let Some((t, hdr)) = self.tx {
            if self.net.poll_transmit() == Some(t) {
                self.tx = None;
                // SAFETY: the buffer submitted with this token.
                let r = unsafe {
                    self.net
                        .transmit_complete(t, &self.b.tx[..hdr + self.tx_len])
                };
                if r.is_err() {
                    self.errors += 1;
                }
            }
        }
        if self.rx_wanted {
            if let Some(token) = self.net.poll_receive() {
                self.rx_wanted = false;
                match self.receive(token) {
                    Ok(()) => self.frames += 1,
                    Err(_) => self.errors += 1,
                }
            }
        }
        self.blk_op.is_none() && self.tx.is_none() && !self.rx_wanted
    }

    fn receive(&mut self, token: u16) -> Result<(), &'static str> {
        let i = self
            .rx
            .tokens
            .iter()
            .position(|&t| t == token)
            .ok_or("unknown rx token")?;
        // SAFETY: the buffer posted with this token.
        let (hdr, len) = unsafe { self.net.receive_complete(token, &mut self.b.rx[i]) }
            .map_err(|_| "receive completion failed")?;
        let got = &self.b.rx[i][hdr..hdr + len];
        let sent = &self.b.tx[hdr..hdr + self.tx_len];
        let same = got == sent;
        let seq = u32::from_be_bytes(
            got.get(14..18)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4]),
        );
        self.mix((u64::from(seq) << 16) | len as u64);
        self.rx.repost(&mut self.net, self.b, i)?;
        if same {
            Ok(())
        } else {
            Err("a looped-back frame differs")
        }
    }
}

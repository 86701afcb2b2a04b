//! `test=kv ip=a.b.c.d/nn [port=7000]`: a small key-value service (ftvisor
//! issue 6) on the guest's virtio-net (smoltcp, no allocator: static
//! buffers) that persists to its virtio-blk.
//!
//! Protocol (TCP, one line per request, `\n`-terminated):
//! `SET <key> <value>` -> `OK` (only once the sector is written *and* a
//! FLUSH completed), `GET <key>` -> the value or `NOTFOUND`, `SHUTDOWN` ->
//! `BYE` and the guest exits 0. Anything else -> `ERR <why>`.
//!
//! Workloads for `make bench` (DESIGN.md §5: the same guest with FT off and
//! on):
//! `SINK <n>` -> the next `n` bytes on the connection are payload; once all
//! arrived: `OK <n> <fnv>` (FNV-1a 64 of the payload, 16 hex digits).
//! `SOURCE <n>` -> `n` payload bytes (byte `i` is `i % 251`), then
//! `OK <n>`. `SPIN <n>` -> `n` steps of memory-mixing work (no I/O) while
//! a periodic 1 kHz guest timer interrupts it, like an OS tick; then
//! `OK <n> <hash> <guest_us> <ticks>` (hash of the work, 16 hex digits;
//! guest microseconds by its TSC; timer interrupts taken).
//!
//! On disk: a hash table of [`SLOTS`] fixed 512-byte slots from sector 0
//! (FNV-1a, linear probing). A slot is `KV01`, key length (u8), value
//! length (u16 LE), the key at byte 8, the value at byte 72. At startup the
//! whole table is read back into memory, so keys survive a reboot.
use crate::virtio::{self, AsmMmioTransport, IdentityHal, Layout, BLK, NET};
use crate::{hw, idt, println, BootInfo};
use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::device::net::VirtIONetRaw;

type Blk = VirtIOBlk<IdentityHal, AsmMmioTransport>;
type Net = VirtIONetRaw<IdentityHal, AsmMmioTransport, 16>;

/// Slots of the table (2 MiB of disk).
pub const SLOTS: usize = 4096;
const SECTOR: usize = 512;
const MAGIC: &[u8; 4] = b"KV01";
const KEY_MAX: usize = 64;
const VALUE_AT: usize = 72;
const VALUE_MAX: usize = SECTOR - VALUE_AT;
/// Sectors per read while reloading (64 KiB).
const RELOAD_CHUNK: usize = 128;
const RX_BUFS: usize = 8;
const BUF: usize = 2048;
/// TCP buffers per direction (the receive buffer is the window `SINK` sees).
const TCP_BUF: usize = 32 << 10;
const LINE_MAX: usize = 600;
const TSC_HZ: u64 = 1_000_000_000;
/// Largest `SINK`/`SOURCE` payload (1 GiB) and `SPIN` step count.
const BULK_MAX: u64 = 1 << 30;
/// `SPIN`'s working set (quadwords: 256 KiB).
const SPIN_WORDS: usize = 32 << 10;
/// `SPIN`'s timer period in TSC ticks (1 ms of guest time).
const SPIN_TICK: u64 = TSC_HZ / 1000;
const X2APIC_LVT_TIMER: u32 = 0x832;
const X2APIC_INIT_COUNT: u32 = 0x838;
const LVT_PERIODIC: u64 = 1 << 17;

#[repr(C, align(4096))]
struct Mem {
    table: [u8; SLOTS * SECTOR],
    rx: [[u8; BUF]; RX_BUFS],
    tx: [u8; BUF],
    frame: [u8; BUF],
    tcp_rx: [u8; TCP_BUF],
    tcp_tx: [u8; TCP_BUF],
    spin: [u64; SPIN_WORDS],
}

struct Shared(UnsafeCell<Mem>);
// SAFETY: one CPU; `run` takes the only reference once.
unsafe impl Sync for Shared {}
static MEM: Shared = Shared(UnsafeCell::new(Mem {
    table: [0; SLOTS * SECTOR],
    rx: [[0; BUF]; RX_BUFS],
    tx: [0; BUF],
    frame: [0; BUF],
    tcp_rx: [0; TCP_BUF],
    tcp_tx: [0; TCP_BUF],
    spin: [0; SPIN_WORDS],
}));

/// FNV-1a, 64-bit.
fn hash(key: &[u8]) -> u64 {
    fnv(FNV_START, key)
}

fn slot_key(s: &[u8]) -> Option<&[u8]> {
    (&s[..4] == MAGIC).then(|| &s[8..8 + usize::from(s[4]).min(KEY_MAX)])
}

/// The slot holding `key`, or the empty slot where it would go (`false`);
/// `None` when the table is full.
fn find(table: &[u8], key: &[u8]) -> Option<(usize, bool)> {
    let start = (hash(key) % SLOTS as u64) as usize;
    (0..SLOTS).map(|i| (start + i) % SLOTS).find_map(|i| {
        match slot_key(&table[i * SECTOR..(i + 1) * SECTOR]) {
            Some(k) if k == key => Some((i, true)),
            None => Some((i, false)),
            _ => None,
        }
    })
}

/// One block request, halting until its completion interrupt.
fn blk_io(dev: &mut Blk, write: bool, sector: usize, buf: &mut [u8]) -> Result<(), &'static str> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` stay untouched until the completion.
    let token = unsafe {
        if write {
            dev.write_blocks_nb(sector, &mut req, buf, &mut resp)
        } else {
            dev.read_blocks_nb(sector, &mut req, buf, &mut resp)
        }
    }
    .map_err(|_| "could not queue a block request")?;
    if !virtio::wait_until(10 * TSC_HZ, || dev.peek_used().is_some()) {
        return Err("no block completion within 10 s of guest time");
    }
    // SAFETY: the same buffers as submitted.
    unsafe {
        if write {
            dev.complete_write_blocks(token, &req, buf, &mut resp)
        } else {
            dev.complete_read_blocks(token, &req, buf, &mut resp)
        }
    }
    .map_err(|_| "block request failed")
}

/// smoltcp's view of the virtio-net device.
struct Phy<'a> {
    net: Net,
    tokens: [u16; RX_BUFS],
    rx: &'a mut [[u8; BUF]; RX_BUFS],
    tx: &'a mut [u8; BUF],
    frame: &'a mut [u8; BUF],
}

struct RxT<'a>(&'a [u8]);
struct TxT<'a> {
    net: &'a mut Net,
    buf: &'a mut [u8; BUF],
}

impl phy::RxToken for RxT<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxT<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let hdr = self.net.fill_buffer_header(self.buf).unwrap_or(0);
        let r = f(&mut self.buf[hdr..hdr + len]);
        let frame = &self.buf[..hdr + len];
        // SAFETY: `frame` is not touched until `transmit_complete`.
        if let Ok(token) = unsafe { self.net.transmit_begin(frame) } {
            let net = &mut *self.net;
            virtio::wait_until(TSC_HZ, || net.poll_transmit().is_some());
            // SAFETY: the buffer submitted with `token`.
            let _ = unsafe { self.net.transmit_complete(token, frame) };
        }
        r
    }
}

impl phy::Device for Phy<'_> {
    type RxToken<'a>
        = RxT<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxT<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxT<'_>, TxT<'_>)> {
        let token = self.net.poll_receive()?;
        let i = self.tokens.iter().position(|&t| t == token)?;
        // SAFETY: the buffer posted with this token.
        let (hdr, len) = unsafe { self.net.receive_complete(token, &mut self.rx[i]) }.ok()?;
        let len = len.min(BUF);
        self.frame[..len].copy_from_slice(&self.rx[i][hdr..hdr + len]);
        // SAFETY: the buffer stays untouched until its next completion.
        if let Ok(t) = unsafe { self.net.receive_begin(&mut self.rx[i]) } {
            self.tokens[i] = t;
        }
        Some((
            RxT(&self.frame[..len]),
            TxT {
                net: &mut self.net,
                buf: self.tx,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxT<'_>> {
        Some(TxT {
            net: &mut self.net,
            buf: self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c.max_burst_size = Some(1);
        c
    }
}

fn now() -> Instant {
    Instant::from_micros((hw::rdtsc() / 1000) as i64)
}

fn parse_ip(s: &str) -> Option<([u8; 4], u8)> {
    let (a, p) = s.split_once('/')?;
    let mut ip = [0u8; 4];
    let mut parts = a.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    Some((ip, p.parse().ok()?))
}

/// Counters for the closing line.
#[derive(Default)]
struct Counts {
    sets: u64,
    gets: u64,
    hits: u64,
    disk_ticks: u64,
    sunk: u64,
    sourced: u64,
    spun: u64,
}

/// What the connection does after a request.
enum Next {
    /// Read the next request line.
    Line,
    /// Close after the reply (`SHUTDOWN`).
    Shutdown,
    /// The next `n` bytes are `SINK` payload.
    Sink(u64),
    /// Send `n` bytes of `SOURCE` payload.
    Source(u64),
}

/// Where a connection is: reading request lines, or in the middle of a
/// `SINK` or `SOURCE` payload.
enum Mode {
    Lines,
    Sink { total: u64, left: u64, hash: u64 },
    Source { total: u64, sent: u64 },
}

/// FNV-1a 64 over `bytes`, continuing from `h`.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// `SOURCE` payload: byte `offset + i` of the stream, for `buf[i]`.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    let mut v = (offset % 251) as u8;
    for b in buf {
        *b = v;
        v = if v == 250 { 0 } else { v + 1 };
    }
}

/// `SPIN <steps>`: memory-mixing work on `buf` with the x2APIC timer
/// periodic at 1 ms of guest time. Returns (hash, guest us, ticks taken).
fn spin(buf: &mut [u64], steps: u64) -> (u64, u64, u32) {
    let len = buf.len() as u64;
    let ticks = idt::TICKS.load(Ordering::Relaxed);
    let t0 = hw::rdtsc();
    // SAFETY: x2APIC mode is on (virtio::discover enabled it); the timer
    // vector's handler EOIs; every vector that can arrive has a handler, so
    // interrupts may be on.
    unsafe {
        hw::wrmsr(
            X2APIC_LVT_TIMER,
            LVT_PERIODIC | u64::from(idt::TIMER_VECTOR),
        );
        hw::wrmsr(X2APIC_INIT_COUNT, SPIN_TICK);
        core::arch::asm!("sti", options(nomem, nostack));
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ steps;
    let mut h = FNV_START;
    for n in 0..steps {
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % len) as usize;
            let j = ((buf[i] ^ n) % len) as usize;
            let (a, b) = (buf[i], buf[j]);
            buf[i] = b.rotate_left(17) ^ a.wrapping_mul(0x9E37_79B9);
            buf[j] = a.wrapping_add(b) ^ state;
        }
        h = (h ^ buf[(n % len) as usize]).wrapping_mul(0x0100_0000_01b3);
    }
    // SAFETY: stops the timer and puts it back in one-shot mode (as
    // `virtio::wait_until` expects it).
    unsafe {
        hw::wrmsr(X2APIC_INIT_COUNT, 0);
        hw::wrmsr(X2APIC_LVT_TIMER, u64::from(idt::TIMER_VECTOR));
    }
    let us = (hw::rdtsc() - t0) / (TSC_HZ / 1_000_000);
    (
        h,
        us,
        idt::TICKS.load(Ordering::Relaxed).wrapping_sub(ticks),
    )
}

/// The number argument of `SINK`/`SOURCE`/`SPIN` (1..=[`BULK_MAX`]).
fn count(arg: &[u8]) -> Option<u64> {
    core::str::from_utf8(arg)
        .ok()?
        .parse()
        .ok()
        .filter(|n| (1..=BULK_MAX).contains(n))
}

/// `core::fmt::Write` into a fixed reply buffer (truncating).
struct Out<'a> {
    buf: &'a mut [u8; LINE_MAX],
    len: usize,
}

impl core::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(LINE_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Executes one request line; the reply goes to `out` (without `\n`;
/// empty for `SINK`/`SOURCE`, which answer after their payload).
fn request(
    line: &[u8],
    table: &mut [u8],
    spin_buf: &mut [u64],
    dev: &mut Blk,
    c: &mut Counts,
    out: &mut [u8; LINE_MAX],
) -> Result<(usize, Next), &'static str> {
    let mut put = |s: &[u8]| {
        let n = s.len().min(LINE_MAX);
        out[..n].copy_from_slice(&s[..n]);
        n
    };
    let (cmd, rest) = match line.iter().position(|b| *b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[..0]),
    };
    match cmd {
        b"SET" => {
            let Some(i) = rest.iter().position(|b| *b == b' ') else {
                return Ok((put(b"ERR usage: SET <key> <value>"), Next::Line));
            };
            let (key, value) = (&rest[..i], &rest[i + 1..]);
            if key.is_empty() || key.len() > KEY_MAX || value.len() > VALUE_MAX {
                return Ok((put(b"ERR key or value too long"), Next::Line));
            }
            let Some((slot, _)) = find(table, key) else {
                return Ok((put(b"ERR table full"), Next::Line));
            };
            let s = &mut table[slot * SECTOR..(slot + 1) * SECTOR];
            s.fill(0);
            s[..4].copy_from_slice(MAGIC);
            s[4] = key.len() as u8;
            s[5..7].copy_from_slice(&(value.len() as u16).to_le_bytes());
            s[8..8 + key.len()].copy_from_slice(key);
            s[VALUE_AT..VALUE_AT + value.len()].copy_from_slice(value);
            let t = hw::rdtsc();
            blk_io(dev, true, slot, s)?;
            dev.flush().map_err(|_| "flush failed")?;
            c.disk_ticks += hw::rdtsc() - t;
            c.sets += 1;
            Ok((put(b"OK"), Next::Line))
        }
        b"GET" => {
            c.gets += 1;
            match find(table, rest) {
                Some((slot, true)) => {
                    c.hits += 1;
                    let s = &table[slot * SECTOR..(slot + 1) * SECTOR];
                    let n = usize::from(u16::from_le_bytes([s[5], s[6]])).min(VALUE_MAX);
                    Ok((put(&s[VALUE_AT..VALUE_AT + n]), Next::Line))
                }
                _ => Ok((put(b"NOTFOUND"), Next::Line)),
            }
        }
        b"SINK" | b"SOURCE" | b"SPIN" => {
            let Some(n) = count(rest) else {
                return Ok((put(b"ERR usage: SINK|SOURCE|SPIN <1..2^30>"), Next::Line));
            };
            Ok(match cmd {
                b"SINK" => (0, Next::Sink(n)),
                b"SOURCE" => (0, Next::Source(n)),
                _ => {
                    let (h, us, ticks) = spin(spin_buf, n);
                    c.spun += n;
                    let mut o = Out { buf: out, len: 0 };
                    let _ = write!(o, "OK {n} {h:016x} {us} {ticks}");
                    (o.len, Next::Line)
                }
            })
        }
        b"SHUTDOWN" => Ok((put(b"BYE"), Next::Shutdown)),
        _ => Ok((put(b"ERR unknown command"), Next::Line)),
    }
}

pub fn run(bi: &BootInfo) -> u8 {
    match serve(bi) {
        Ok(()) => {
            println!("kv: ok");
            0
        }
        Err(why) => {
            println!("kv: FAILED: {why}");
            1
        }
    }
}

fn serve(bi: &BootInfo) -> Result<(), &'static str> {
    let layout: Layout = match virtio::discover() {
        Ok(l) => l,
        Err(why) => {
            println!("kv: skipped: {why}");
            return Err("no virtio devices");
        }
    };
    let (ip, prefix) = crate::option(bi.cmdline, "ip")
        .and_then(parse_ip)
        .ok_or("kv needs ip=a.b.c.d/nn")?;
    let port: u16 = crate::option(bi.cmdline, "port")
        .map_or(Ok(7000), str::parse)
        .map_err(|_| "bad port=")?;
    // SAFETY: the only reference to MEM, taken once.
    let m = unsafe { &mut *MEM.0.get() };
    let mut dev = Blk::new(virtio::transport(&layout, BLK)?).map_err(|_| "virtio-blk init")?;
    let capacity = dev.capacity() as usize;
    if capacity < SLOTS {
        return Err("the disk is smaller than the table (2 MiB)");
    }
    println!(
        "kv: reloading {SLOTS} slots ({} KiB) from disk",
        (SLOTS * SECTOR) >> 10
    );
    let t = hw::rdtsc();
    for c in (0..SLOTS).step_by(RELOAD_CHUNK) {
        blk_io(
            &mut dev,
            false,
            c,
            &mut m.table[c * SECTOR..(c + RELOAD_CHUNK) * SECTOR],
        )?;
    }
    let reload = hw::rdtsc() - t;
    let keys = (0..SLOTS)
        .filter(|i| slot_key(&m.table[i * SECTOR..(i + 1) * SECTOR]).is_some())
        .count();
    println!(
        "kv: reloaded {keys} keys in {} us of guest time",
        reload / 1000
    );

    let mut net = Net::new(virtio::transport(&layout, NET)?).map_err(|_| "virtio-net init")?;
    let mac = net.mac_address();
    let mut tokens = [0u16; RX_BUFS];
    for (t, buf) in tokens.iter_mut().zip(m.rx.iter_mut()) {
        // SAFETY: the buffer stays untouched until its completion.
        *t = unsafe { net.receive_begin(buf) }.map_err(|_| "cannot post rx buffers")?;
    }
    let mut phy = Phy {
        net,
        tokens,
        rx: &mut m.rx,
        tx: &mut m.tx,
        frame: &mut m.frame,
    };
    let mut cfg = Config::new(EthernetAddress(mac).into());
    cfg.random_seed = hw::rdtsc();
    let mut iface = Interface::new(cfg, &mut phy, now());
    let [a, b, c, d] = ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), prefix));
    });
    let mut storage = [SocketStorage::EMPTY; 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(&mut m.tcp_rx[..]),
        tcp::SocketBuffer::new(&mut m.tcp_tx[..]),
    );
    sock.set_nagle_enabled(false);
    sock.set_ack_delay(None);
    let h = sockets.add(sock);
    println!("kv: listening on {a}.{b}.{c}.{d}:{port} (mac {mac:02x?})");
    let mut line = [0u8; LINE_MAX];
    let mut len = 0usize;
    let mut reply = [0u8; LINE_MAX];
    let mut counts = Counts::default();
    let mut shutdown = false;
    let mut first: Option<u64> = None;
    let mut mode = Mode::Lines;
    loop {
        iface.poll(now(), &mut phy, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if !s.is_open() {
            if shutdown {
                break;
            }
            len = 0;
            mode = Mode::Lines;
            s.listen(port).map_err(|_| "cannot listen")?;
        }
        let mut worked = false;
        // Room for one more reply line in the send buffer.
        let room = |s: &tcp::Socket| s.send_capacity() - s.send_queue() > LINE_MAX + 1;
        match &mut mode {
            Mode::Sink { total, left, hash } => {
                if s.can_recv() {
                    let (l, h) = (*left, *hash);
                    let (got, nh) = s
                        .recv(|buf| {
                            let k = buf.len().min(usize::try_from(l).unwrap_or(usize::MAX));
                            (k, (k, fnv(h, &buf[..k])))
                        })
                        .unwrap_or((0, h));
                    *left -= got as u64;
                    *hash = nh;
                    worked = got > 0;
                }
                if *left == 0 && room(s) {
                    let mut o = Out {
                        buf: &mut reply,
                        len: 0,
                    };
                    let _ = writeln!(o, "OK {total} {hash:016x}");
                    let n = o.len;
                    let _ = s.send_slice(&reply[..n]);
                    counts.sunk += *total;
                    mode = Mode::Lines;
                    worked = true;
                }
            }
            Mode::Source { total, sent } => {
                if *sent < *total && s.can_send() {
                    let (t, off) = (*total, *sent);
                    let put = s
                        .send(|buf| {
                            let k = buf
                                .len()
                                .min(usize::try_from(t - off).unwrap_or(usize::MAX));
                            fill_pattern(&mut buf[..k], off);
                            (k, k)
                        })
                        .unwrap_or(0);
                    *sent += put as u64;
                    worked = put > 0;
                }
                if *sent == *total && room(s) {
                    let mut o = Out {
                        buf: &mut reply,
                        len: 0,
                    };
                    let _ = writeln!(o, "OK {total}");
                    let n = o.len;
                    let _ = s.send_slice(&reply[..n]);
                    counts.sourced += *total;
                    mode = Mode::Lines;
                    worked = true;
                }
            }
            Mode::Lines => {
                while !shutdown && s.can_recv() && room(s) {
                    let mut byte = [0u8; 1];
                    if s.recv_slice(&mut byte) != Ok(1) {
                        break;
                    }
                    worked = true;
                    match byte[0] {
                        b'\n' => {
                            let l = line[..len].strip_suffix(b"\r").unwrap_or(&line[..len]);
                            first.get_or_insert_with(hw::rdtsc);
                            let (n, next) = request(
                                l,
                                &mut m.table,
                                &mut m.spin,
                                &mut dev,
                                &mut counts,
                                &mut reply,
                            )?;
                            len = 0;
                            if n > 0 {
                                let _ = s.send_slice(&reply[..n]);
                                let _ = s.send_slice(b"\n");
                            }
                            match next {
                                Next::Line => {}
                                Next::Shutdown => {
                                    shutdown = true;
                                    s.close();
                                }
                                Next::Sink(total) => {
                                    mode = Mode::Sink {
                                        total,
                                        left: total,
                                        hash: FNV_START,
                                    };
                                    break;
                                }
                                Next::Source(total) => {
                                    mode = Mode::Source { total, sent: 0 };
                                    break;
                                }
                            }
                        }
                        x if len < LINE_MAX => {
                            line[len] = x;
                            len += 1;
                        }
                        _ => {}
                    }
                }
            }
        }
        if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
            s.close();
        }
        if !worked {
            let delay = iface
                .poll_delay(now(), &sockets)
                .map_or(10_000, |d| d.total_micros())
                .clamp(1, 10_000);
            let net = &phy.net;
            virtio::wait_until(delay * 1000, || net.poll_receive().is_some());
        }
    }
    let ticks = first.map_or(0, |t| hw::rdtsc() - t);
    println!(
        "kv: served sets={} gets={} hits={} sunk={} sourced={} spun={} in {} ms of guest time; SET write+flush {} us average (guest time)",
        counts.sets,
        counts.gets,
        counts.hits,
        counts.sunk,
        counts.sourced,
        counts.spun,
        ticks / 1_000_000,
        counts.disk_ticks / 1000 / counts.sets.max(1)
    );
    Ok(())
}

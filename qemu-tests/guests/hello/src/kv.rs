//! `test=kv ip=a.b.c.d/nn [port=7000]`: a small key-value service (ftvisor
//! issue 6) on the guest's virtio-net (smoltcp, no allocator: static
//! buffers) that persists to its virtio-blk.
//!
//! Protocol (TCP, one line per request, `\n`-terminated):
//! `SET <key> <value>` -> `OK` (only once the sector is written *and* a
//! FLUSH completed), `GET <key>` -> the value or `NOTFOUND`, `SHUTDOWN` ->
//! `BYE` and the guest exits 0. Anything else -> `ERR <why>`.
//!
//! On disk: a hash table of [`SLOTS`] fixed 512-byte slots from sector 0
//! (FNV-1a, linear probing). A slot is `KV01`, key length (u8), value
//! length (u16 LE), the key at byte 8, the value at byte 72. At startup the
//! whole table is read back into memory, so keys survive a reboot.
use crate::virtio::{self, AsmMmioTransport, IdentityHal, Layout, BLK, NET};
use crate::{hw, println, BootInfo};
use core::cell::UnsafeCell;
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
const TCP_BUF: usize = 8192;
const LINE_MAX: usize = 600;
const TSC_HZ: u64 = 1_000_000_000;

#[repr(C, align(4096))]
struct Mem {
    table: [u8; SLOTS * SECTOR],
    rx: [[u8; BUF]; RX_BUFS],
    tx: [u8; BUF],
    frame: [u8; BUF],
    tcp_rx: [u8; TCP_BUF],
    tcp_tx: [u8; TCP_BUF],
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
}));

/// FNV-1a, 64-bit.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
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
}

/// Executes one request line; the reply goes to `out` (without `\n`).
/// Returns whether the line asked to shut down.
fn request(
    line: &[u8],
    table: &mut [u8],
    dev: &mut Blk,
    c: &mut Counts,
    out: &mut [u8; LINE_MAX],
) -> Result<(usize, bool), &'static str> {
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
                return Ok((put(b"ERR usage: SET <key> <value>"), false));
            };
            let (key, value) = (&rest[..i], &rest[i + 1..]);
            if key.is_empty() || key.len() > KEY_MAX || value.len() > VALUE_MAX {
                return Ok((put(b"ERR key or value too long"), false));
            }
            let Some((slot, _)) = find(table, key) else {
                return Ok((put(b"ERR table full"), false));
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
            Ok((put(b"OK"), false))
        }
        b"GET" => {
            c.gets += 1;
            match find(table, rest) {
                Some((slot, true)) => {
                    c.hits += 1;
                    let s = &table[slot * SECTOR..(slot + 1) * SECTOR];
                    let n = usize::from(u16::from_le_bytes([s[5], s[6]])).min(VALUE_MAX);
                    Ok((put(&s[VALUE_AT..VALUE_AT + n]), false))
                }
                _ => Ok((put(b"NOTFOUND"), false)),
            }
        }
        b"SHUTDOWN" => Ok((put(b"BYE"), true)),
        _ => Ok((put(b"ERR unknown command"), false)),
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
    loop {
        iface.poll(now(), &mut phy, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if !s.is_open() {
            if shutdown {
                break;
            }
            len = 0;
            s.listen(port).map_err(|_| "cannot listen")?;
        }
        let mut worked = false;
        while !shutdown && s.can_recv() && s.send_capacity() - s.send_queue() > LINE_MAX + 1 {
            let mut byte = [0u8; 1];
            if s.recv_slice(&mut byte) != Ok(1) {
                break;
            }
            worked = true;
            match byte[0] {
                b'\n' => {
                    let l = line[..len].strip_suffix(b"\r").unwrap_or(&line[..len]);
                    first.get_or_insert_with(hw::rdtsc);
                    let (n, stop) = request(l, &mut m.table, &mut dev, &mut counts, &mut reply)?;
                    let _ = s.send_slice(&reply[..n]);
                    let _ = s.send_slice(b"\n");
                    len = 0;
                    if stop {
                        shutdown = true;
                        s.close();
                    }
                }
                x if len < LINE_MAX => {
                    line[len] = x;
                    len += 1;
                }
                _ => {}
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
        "kv: served sets={} gets={} hits={} in {} ms of guest time; SET write+flush {} us average (guest time)",
        counts.sets,
        counts.gets,
        counts.hits,
        ticks / 1_000_000,
        counts.disk_ticks / 1000 / counts.sets.max(1)
    );
    Ok(())
}

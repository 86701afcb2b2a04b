//! `mode=net` and `mode=iscsi`: PCI scan, NIC bring-up, a static-IPv4
//! smoltcp interface (ARP per RFC 826, IPv4, ICMP echo, TCP, UDP), then
//! either the echo/diagnostic service of [`kernel::echo`] on `echo_port`
//! (TCP and UDP) or the iSCSI initiator checks of [`iscsi`].
//!
//! The echo service runs until a client sends a `quit` line (exit code 0)
//! or `net_timeout` seconds pass (exit code 1). Everything is polled.
pub mod clock;
pub mod guest;
mod iscsi;
mod pci_io;
pub mod transport;
mod uncached;

use crate::arch::exit::exit;
use alloc::vec;
use alloc::vec::Vec;
use clock::Clock;
use drivers::e1000::{self, MmioRegisters, E1000};
use drivers::nic::{MacDisplay, Nic, SmolDevice};
use drivers::pci::{self, Bar, PciDevice};
use drivers::smoltcp;
use drivers::virtio_net::{self, VirtioNet};
use kernel::config::{Config, Mode, NicChoice};
use kernel::echo::{Command, LineWatcher};
use kernel::exitcode;
use pci_io::PortConfigSpace;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

/// TCP connections served at once (one listening socket each).
const TCP_SOCKETS: usize = 2;
const TCP_BUFFER: usize = 64 * 1024;

fn is_supported(d: &PciDevice, ids: &[(u16, u16)]) -> bool {
    ids.contains(&(d.vendor_id, d.device_id))
}

/// What to do with the NIC once it is up (the driver type differs).
pub trait WithNic {
    type Out;
    fn go<N: Nic + 'static>(self, config: &Config, clock: Clock, nic: N) -> Self::Out;
}

struct Service;

impl WithNic for Service {
    type Out = core::convert::Infallible;
    fn go<N: Nic + 'static>(self, config: &Config, clock: Clock, nic: N) -> Self::Out {
        start(config, clock, nic)
    }
}

pub fn run(config: &Config) -> ! {
    match open_nic(config, Service) {}
}

/// PCI scan, NIC bring-up (e1000 or virtio-net per `nic=`), then `w` with
/// the driver; a missing or broken NIC exits with a failure.
pub fn open_nic<W: WithNic>(config: &Config, w: W) -> W::Out {
    let net = config.net;
    let clock = Clock::calibrate();
    println!(
        "net: tsc {} MHz ({})",
        clock.hz / 1_000_000,
        if clock.calibrated {
            "calibrated against PIT channel 2"
        } else {
            "PIT silent: nominal rate assumed"
        }
    );
    let mut cfg = PortConfigSpace;
    let devices = pci::enumerate(&mut cfg);
    for d in &devices {
        print!(
            "pci: {} {:04x}:{:04x} class {:02x}.{:02x}",
            d.addr, d.vendor_id, d.device_id, d.class, d.subclass
        );
        for (i, bar) in d.bars.iter().enumerate() {
            match bar {
                Some(Bar::Memory { address, size, .. }) => {
                    print!(" bar{i}=mem:{address:#x}+{size:#x}")
                }
                Some(Bar::Io { port, size }) => print!(" bar{i}=io:{port:#x}+{size:#x}"),
                None => {}
            }
        }
        println!();
    }
    let want_e1000 = matches!(net.nic, NicChoice::Auto | NicChoice::E1000);
    let want_virtio = matches!(net.nic, NicChoice::Auto | NicChoice::Virtio);
    let pick = devices.iter().find(|d| {
        (want_e1000 && is_supported(d, e1000::PCI_IDS))
            || (want_virtio && is_supported(d, virtio_net::PCI_IDS))
    });
    let Some(dev) = pick else {
        println!(
            "net: error: no supported NIC (nic={:?}) on the PCI bus",
            net.nic
        );
        exit(exitcode::FAILURE);
    };
    // MMIO registers: below 4 GiB (identity map), uncached.
    for (base, size) in dev.bars.iter().filter_map(|b| b.and_then(|b| b.memory())) {
        if base + size > boot::IDENTITY_MAP_BYTES {
            println!(
                "net: error: {} has a BAR at {base:#x} above the 4 GiB identity map",
                dev.addr
            );
            exit(exitcode::FAILURE);
        }
        if !uncached::mark_uncached(base, size) {
            println!("net: error: cannot mark {base:#x}+{size:#x} uncached");
            exit(exitcode::FAILURE);
        }
    }
    pci::enable_mmio_dma(&mut cfg, dev.addr);
    if is_supported(dev, e1000::PCI_IDS) {
        let Some((_, base, _)) = dev.first_memory_bar() else {
            println!("net: error: e1000 at {} has no memory BAR", dev.addr);
            exit(exitcode::FAILURE);
        };
        // SAFETY: BAR0 of this e1000, below 4 GiB, identity mapped and now
        // uncached; this driver is its only user.
        let regs = unsafe { MmioRegisters::new(base as *mut u8) };
        match E1000::new(regs) {
            Ok(nic) => w.go(config, clock, nic),
            Err(e) => {
                println!("net: error: e1000 bring-up failed: {e:?}");
                exit(exitcode::FAILURE);
            }
        }
    } else {
        match VirtioNet::new(cfg, dev.addr) {
            Ok(nic) => w.go(config, clock, nic),
            Err(e) => {
                println!("net: error: virtio-net bring-up failed: {e:?}");
                exit(exitcode::FAILURE);
            }
        }
    }
}

fn print_counters<N: Nic>(nic: &mut N) {
    let c = nic.counters();
    println!(
        "net: counters rx_frames={} rx_bytes={} tx_frames={} tx_bytes={} rx_errors={} rx_bad_length={} tx_busy={} hw_missed={} hw_crc_errors={}",
        c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes, c.rx_errors, c.rx_bad_length, c.tx_busy, c.hw_missed, c.hw_crc_errors
    );
}

/// Brings the link and the interface up, then runs the mode's service.
fn start<N: Nic>(config: &Config, clock: Clock, nic: N) -> ! {
    let (device, iface) = interface(config, &clock, nic);
    match config.mode {
        Mode::Iscsi => iscsi::run(config, transport::NetStack::new(device, iface, clock)),
        _ => serve(config, clock, device, iface),
    }
}

/// Waits for the link (5 s at most), then builds the smoltcp interface
/// with the configured address and default route.
pub(crate) fn interface<N: Nic>(
    config: &Config,
    clock: &Clock,
    mut nic: N,
) -> (SmolDevice<N>, Interface) {
    let net = config.net;
    let mac = nic.mac();
    // QEMU's e1000 reports link up once its auto-negotiation timer fires.
    let link_deadline = clock.micros() + 5_000_000;
    while !nic.link_up() && clock.micros() < link_deadline {
        core::hint::spin_loop();
    }
    let link = nic.link_up();
    let [a, b, c, d] = net.ip.addr;
    println!(
        "net: {} mac={} link={} ip={a}.{b}.{c}.{d}/{}",
        nic.name(),
        MacDisplay(mac),
        if link { "up" } else { "down" },
        net.ip.prefix
    );
    let mut device = SmolDevice::new(nic);
    let mut ifc = IfaceConfig::new(EthernetAddress(mac).into());
    ifc.random_seed = clock::rdtsc();
    let mut iface = Interface::new(ifc, &mut device, clock.now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), net.ip.prefix));
    });
    if let Some([g0, g1, g2, g3]) = net.gateway {
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(g0, g1, g2, g3));
        println!("net: gateway {g0}.{g1}.{g2}.{g3}");
    }
    (device, iface)
}

fn serve<N: Nic>(
    config: &Config,
    clock: Clock,
    mut device: SmolDevice<N>,
    mut iface: Interface,
) -> ! {
    let net = config.net;
    let mut sockets = SocketSet::new(vec![]);
    let mut tcp_handles: Vec<(SocketHandle, LineWatcher, bool)> = Vec::new();
    for _ in 0..TCP_SOCKETS {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        tcp_handles.push((sockets.add(s), LineWatcher::default(), false));
    }
    let mut udp_socket = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    );
    if udp_socket.bind(net.echo_port).is_err() {
        println!("net: error: cannot bind udp port {}", net.echo_port);
        exit(exitcode::FAILURE);
    }
    let udp_handle = sockets.add(udp_socket);
    println!(
        "net: echo listening on tcp/udp port {} (a `quit` line exits; timeout {} s)",
        net.echo_port, net.timeout_secs
    );
    let deadline = clock.micros() + net.timeout_secs * 1_000_000;
    let mut quit_at: Option<u64> = None;
    let mut connections = 0u64;
    let mut scratch = vec![0u8; TCP_BUFFER];
    loop {
        let now_us = clock.micros();
        if now_us > deadline {
            println!("net: timeout after {} s without `quit`", net.timeout_secs);
            print_counters(&mut device.nic);
            exit(exitcode::FAILURE);
        }
        iface.poll(clock.now(), &mut device, &mut sockets);
        for (handle, watcher, announced) in tcp_handles.iter_mut() {
            let s = sockets.get_mut::<tcp::Socket>(*handle);
            if !s.is_open() {
                if quit_at.is_none() {
                    *watcher = LineWatcher::default();
                    *announced = false;
                    if s.listen(net.echo_port).is_err() {
                        println!("net: error: cannot listen on tcp port {}", net.echo_port);
                        exit(exitcode::FAILURE);
                    }
                }
                continue;
            }
            if s.state() == tcp::State::Established && !*announced {
                connections += 1;
                *announced = true;
                if let Some(ep) = s.remote_endpoint() {
                    println!("net: connection {connections} from {ep}");
                }
            }
            if s.can_recv() && quit_at.is_none() {
                let room = s.send_capacity() - s.send_queue();
                let n = s
                    .recv(|buf| {
                        let n = buf.len().min(room);
                        scratch[..n].copy_from_slice(&buf[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n > 0 {
                    let _ = s.send_slice(&scratch[..n]);
                    let mut cmds: Vec<Command> = Vec::new();
                    watcher.feed(&scratch[..n], |c| cmds.push(c));
                    for cmd in cmds {
                        match cmd {
                            Command::Quit => {
                                let _ = s.send_slice(b"bye\n");
                                s.close();
                                println!("net: `quit` received, closing");
                                quit_at = Some(clock.micros());
                            }
                            Command::Stats => {
                                let c = device.nic.counters();
                                let line = alloc::format!(
                                    "stats: rx_frames={} tx_frames={} rx_errors={} rx_bad_length={} tx_busy={} hw_missed={}\n",
                                    c.rx_frames, c.tx_frames, c.rx_errors, c.rx_bad_length, c.tx_busy, c.hw_missed
                                );
                                let _ = s.send_slice(line.as_bytes());
                            }
                        }
                    }
                }
            } else if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
                // The peer closed its side: finish ours.
                s.close();
            }
        }
        let u = sockets.get_mut::<udp::Socket>(udp_handle);
        while let Ok((n, meta)) = u.recv_slice(&mut scratch) {
            let _ = u.send_slice(&scratch[..n], meta.endpoint);
        }
        if let Some(t) = quit_at {
            // Let `bye` and the FIN out (at most 1 s), then finish.
            let drained = tcp_handles.iter().all(|(h, _, _)| {
                let s = sockets.get::<tcp::Socket>(*h);
                s.send_queue() == 0
                    && !matches!(
                        s.state(),
                        tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
                    )
            });
            if drained || clock.micros() > t + 1_000_000 {
                print_counters(&mut device.nic);
                println!("net: done ({connections} connections)");
                exit(exitcode::SUCCESS);
            }
        }
    }
}

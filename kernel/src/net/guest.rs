//! The guest's backends that need the hypervisor's NIC (issue 6):
//! `guest_net=bridge` ([`kernel::guestio::bridge`]) and `disk=iscsi`
//! ([`kernel::guestio::iscsi_disk`]). The NIC is brought up once, put
//! behind a [`Demux`], and its hypervisor side carries the smoltcp stack
//! the iSCSI initiator uses (address `ip=`, gateway `gw=`).
use super::clock::Clock;
use super::transport::{NetStack, SharedStack, SharedTransport};
use super::{interface, open_nic, WithNic};
use crate::arch::exit::exit;
use alloc::boxed::Box;
use alloc::rc::Rc;
use core::cell::RefCell;
use drivers::iscsi::{Initiator, SessionConfig};
use drivers::nic::{MacDisplay, Nic};
use drivers::smoltcp::wire::{IpAddress, IpEndpoint};
use kernel::config::{Config, DiskChoice, GuestNetChoice};
use kernel::exitcode;
use kernel::guestio::bridge::{Bridge, Demux, HostPort};
use kernel::guestio::disk::BlockBackend;
use kernel::guestio::iscsi_disk::{IscsiDisk, RESERVED_BLOCKS};
use kernel::guestio::wire::{Loopback, NetBackend, NoWire};
use kernel::guestio::{GuestIo, GUEST_MAC};

/// TCP buffers of the guest disk's iSCSI connection (each way).
const TCP_BUFFER: usize = 256 * 1024;

/// Whether `config` needs the hypervisor's NIC for the guest.
pub fn needs_nic(config: &Config) -> bool {
    config.disk == DiskChoice::Iscsi || config.guest_net == GuestNetChoice::Bridge
}

/// The guest's devices with the backends `config` asks for.
pub fn guest_io(ram_bytes: u64, config: &Config) -> GuestIo {
    if !needs_nic(config) {
        return GuestIo::from_config(ram_bytes, config);
    }
    open_nic(config, Build { ram_bytes })
}

struct Build {
    ram_bytes: u64,
}

fn bad(what: &str) -> ! {
    println!("guestio: error: {what}");
    exit(exitcode::BAD_CONFIG)
}

impl WithNic for Build {
    type Out = GuestIo;
    fn go<N: Nic + 'static>(self, config: &Config, clock: Clock, nic: N) -> GuestIo {
        let (demux, net) = share_nic(config, clock, nic);
        guest_io_on(self.ram_bytes, config, &demux, &net)
    }
}

/// Puts `nic` behind a [`Demux`] (the guest's MAC on one side) and brings
/// up the hypervisor's smoltcp stack (`ip=`, `gw=`) on the other, shared
/// by every hypervisor user of the NIC.
pub fn share_nic<N: Nic + 'static>(
    config: &Config,
    clock: Clock,
    nic: N,
) -> (Rc<RefCell<Demux<N>>>, SharedStack<HostPort<N>>) {
    let demux = Demux::new(nic, GUEST_MAC);
    println!(
        "guestio: hypervisor NIC {} shared: guest {} ({}), hypervisor {}",
        demux.borrow().nic.name(),
        MacDisplay(GUEST_MAC),
        if demux.borrow().guest_filter {
            "receive filter set"
        } else {
            "NO receive filter: guest unicast will not arrive"
        },
        MacDisplay(demux.borrow().nic.mac()),
    );
    let (device, iface) = interface(config, &clock, HostPort(demux.clone()));
    let net = Rc::new(RefCell::new(NetStack::new(device, iface, clock)));
    (demux, net)
}

/// The guest's devices with the backends `config` asks for, on a NIC
/// already shared by [`share_nic`].
pub fn guest_io_on<N: Nic + 'static>(
    ram_bytes: u64,
    config: &Config,
    demux: &Rc<RefCell<Demux<N>>>,
    net: &SharedStack<HostPort<N>>,
) -> GuestIo {
    let wire: Box<dyn NetBackend> = match config.guest_net {
        GuestNetChoice::Bridge => Box::new(Bridge::new(demux.clone())),
        GuestNetChoice::Loopback => Box::new(Loopback::default()),
        GuestNetChoice::None => Box::new(NoWire::default()),
    };
    let disk: Box<dyn BlockBackend> = match config.disk {
        DiskChoice::Iscsi => iscsi_disk(config, net.clone()),
        _ => GuestIo::from_config(ram_bytes, config).into_disk(),
    };
    GuestIo::new(ram_bytes, disk, wire)
}

/// Logs in to the LUN and hands back the guest's disk on it.
fn iscsi_disk<N: Nic + 'static>(config: &Config, net: SharedStack<N>) -> Box<dyn BlockBackend> {
    let ic = &config.iscsi;
    let Some(portal) = ic.portal else {
        bad("disk=iscsi needs `iscsi=<portal ip[:port]>`")
    };
    if ic.target.is_empty() {
        bad("disk=iscsi needs `iscsi_target=<iqn...>`");
    }
    let clock = net.borrow().clock;
    let [a, b, c, d] = portal.addr;
    let remote = IpEndpoint::new(IpAddress::v4(a, b, c, d), portal.port);
    let name = alloc::format!("iqn.2024-01.org.ftvisor:node{}", ic.node);
    let [n0, n1] = ic.node.to_be_bytes();
    let cfg = SessionConfig::new(&name, &ic.target, [0x80, 0x46, 0x54, 0x56, n0, n1]);
    println!(
        "guestio: disk: logging in to {} at {a}.{b}.{c}.{d}:{} lun {}",
        ic.target, portal.port, ic.lun
    );
    let transport = SharedTransport::new(net, remote, TCP_BUFFER);
    let mut ini = match Initiator::login(transport, clock, cfg, ic.lun) {
        Ok(i) => i,
        Err(e) => {
            println!("guestio: error: iSCSI login failed: {e}");
            exit(exitcode::FAILURE);
        }
    };
    let cap = match ini.read_capacity16() {
        Ok(c) => c,
        Err(e) => {
            println!("guestio: error: READ CAPACITY(16): {e}");
            exit(exitcode::FAILURE);
        }
    };
    if cap.block_size != 512 {
        println!(
            "guestio: error: the LUN has {}-byte blocks; disk=iscsi needs 512",
            cap.block_size
        );
        exit(exitcode::FAILURE);
    }
    if cap.blocks <= RESERVED_BLOCKS {
        bad("the LUN is too small for a guest disk");
    }
    let what = alloc::format!(
        "{} lun {} at {a}.{b}.{c}.{d}:{}",
        ic.target,
        ic.lun,
        portal.port
    );
    let sectors = IscsiDisk::<Initiator<SharedTransport<N>, Clock>>::capacity_for(cap.blocks);
    Box::new(IscsiDisk::new(ini, sectors, what))
}

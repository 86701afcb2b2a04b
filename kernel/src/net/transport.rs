//! The iSCSI initiator's byte stream and clock in the hypervisor: a smoltcp
//! TCP connection to the portal (RFC 7143 §4.1: one TCP connection per
//! iSCSI connection; RFC 9293 for TCP itself) and the calibrated TSC.
//!
//! [`NetStack`] owns the NIC, the smoltcp interface and its sockets; every
//! wait polls it, so TCP timers, ARP and other sockets (the `caw-race`
//! coordinator link) keep running while the initiator blocks. Nagle and
//! delayed ACKs are off: iSCSI is request/response and both add latency to
//! every command.
use super::clock::rdtsc;
/// The TSC clock (also named by `net::WithNic` users outside `net`).
pub use super::clock::Clock;
use alloc::rc::Rc;
use alloc::vec;
use core::cell::RefCell;
use drivers::iscsi::{self, Transport};
use drivers::nic::{Nic, SmolDevice};
use drivers::smoltcp;
use drivers::{Error, Result};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

/// How long [`SharedTransport::recv`] waits for bytes before returning 0.
const RECV_POLL_US: u64 = 2_000;
/// How long a TCP connect may take (SYN retransmits included).
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

impl iscsi::Clock for Clock {
    fn now_ms(&self) -> u64 {
        self.micros() / 1000
    }
    fn sleep_until(&self, t: u64) {
        while self.now_ms() < t {
            core::hint::spin_loop();
        }
    }
}

/// The NIC, the interface and its sockets.
pub struct NetStack<N: Nic> {
    pub device: SmolDevice<N>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub clock: Clock,
    next_port: u16,
}

impl<N: Nic> NetStack<N> {
    pub fn new(device: SmolDevice<N>, iface: Interface, clock: Clock) -> Self {
        NetStack {
            device,
            iface,
            sockets: SocketSet::new(vec![]),
            clock,
            // Ephemeral range (RFC 6335), starting at a boot-dependent port
            // so a reboot does not reuse the last boot's connections.
            next_port: 49152 + (rdtsc() % 8192) as u16,
        }
    }

    pub fn poll(&mut self) {
        self.iface
            .poll(self.clock.now(), &mut self.device, &mut self.sockets);
    }

    /// A TCP socket with `buffer` bytes each way, Nagle and delayed ACKs off.
    pub fn add_tcp(&mut self, buffer: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        self.sockets.add(s)
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 65535 - 1 { 49152 } else { p + 1 };
        p
    }

    /// Resets whatever `h` holds and starts a new connection to `remote`
    /// from the next ephemeral port (a reconnect never reuses the 4-tuple
    /// the peer may still know); poll until it is established.
    pub fn start_connect(&mut self, h: SocketHandle, remote: IpEndpoint) -> Result<()> {
        if self.tcp(h).is_open() {
            self.tcp(h).abort();
            // Let the RST out before the tuple is forgotten.
            self.poll();
        }
        let port = self.ephemeral_port();
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, remote, port)
            .map_err(|_| Error::InvalidArgument("TCP connect refused by smoltcp"))
    }

    /// Resets whatever `h` holds and opens a new connection to `remote`;
    /// waits until it is established (`Timeout`, or `ConnectionClosed` on
    /// a reset: nobody listens there).
    pub fn connect(&mut self, h: SocketHandle, remote: IpEndpoint, timeout_ms: u64) -> Result<()> {
        self.start_connect(h, remote)?;
        let deadline = self.clock.micros() + timeout_ms * 1000;
        loop {
            self.poll();
            match self.tcp(h).state() {
                tcp::State::Established => return Ok(()),
                tcp::State::Closed | tcp::State::TimeWait => return Err(Error::ConnectionClosed),
                _ => {}
            }
            if self.clock.micros() > deadline {
                self.tcp(h).abort();
                self.poll();
                return Err(Error::Timeout);
            }
        }
    }

    /// Sends all of `bytes` on `h` (polling), or fails when the
    /// connection is gone or `timeout_ms` passes.
    pub fn send_all(&mut self, h: SocketHandle, bytes: &[u8], timeout_ms: u64) -> Result<()> {
        let deadline = self.clock.micros() + timeout_ms * 1000;
        let mut off = 0;
        while off < bytes.len() {
            if !self.tcp(h).may_send() {
                return Err(Error::ConnectionClosed);
            }
            off += self
                .tcp(h)
                .send_slice(&bytes[off..])
                .map_err(|_| Error::ConnectionClosed)?;
            self.poll();
            if self.clock.micros() > deadline {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    /// Receives what is there on `h` within `wait_us` (0 bytes: nothing).
    pub fn recv_some(&mut self, h: SocketHandle, buf: &mut [u8], wait_us: u64) -> Result<usize> {
        let deadline = self.clock.micros() + wait_us;
        loop {
            self.poll();
            let s = self.tcp(h);
            if s.can_recv() {
                return s.recv_slice(buf).map_err(|_| Error::ConnectionClosed);
            }
            if !s.may_recv() {
                return Err(Error::ConnectionClosed);
            }
            if self.clock.micros() >= deadline {
                return Ok(0);
            }
        }
    }
}

/// A [`NetStack`] shared by several users of one NIC (the FT pair: the log
/// channel, arbitration and the guest disk's iSCSI session run on one
/// smoltcp interface, one address). Single-threaded: every user borrows it
/// only for the length of a call.
pub type SharedStack<N> = Rc<RefCell<NetStack<N>>>;

/// The initiator's [`Transport`]: one TCP socket of a [`SharedStack`] to
/// the portal; `reconnect` opens a fresh connection from a new port.
pub struct SharedTransport<N: Nic> {
    pub net: SharedStack<N>,
    handle: SocketHandle,
    portal: IpEndpoint,
    /// Connections opened so far.
    pub connects: u32,
    /// When the connection being opened ([`Transport::start_reconnect`])
    /// is given up (TSC microseconds).
    connect_deadline: u64,
}

impl<N: Nic> SharedTransport<N> {
    /// Not connected yet; the session's first `reconnect` connects.
    pub fn new(net: SharedStack<N>, portal: IpEndpoint, buffer: usize) -> Self {
        let handle = net.borrow_mut().add_tcp(buffer);
        SharedTransport {
            net,
            handle,
            portal,
            connects: 0,
            connect_deadline: 0,
        }
    }
}

impl<N: Nic> Transport for SharedTransport<N> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize> {
        let mut net = self.net.borrow_mut();
        net.poll();
        let s = net.tcp(self.handle);
        if !s.may_send() {
            return Err(Error::ConnectionClosed);
        }
        let n = s.send_slice(bytes).map_err(|_| Error::ConnectionClosed)?;
        net.poll();
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.net
            .borrow_mut()
            .recv_some(self.handle, buf, RECV_POLL_US)
    }

    fn reconnect(&mut self) -> Result<()> {
        self.connects += 1;
        self.net
            .borrow_mut()
            .connect(self.handle, self.portal, CONNECT_TIMEOUT_MS)
    }

    fn recv_now(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.net.borrow_mut().recv_some(self.handle, buf, 0)
    }

    fn start_reconnect(&mut self) -> Result<()> {
        self.connects += 1;
        let mut net = self.net.borrow_mut();
        net.start_connect(self.handle, self.portal)?;
        self.connect_deadline = net.clock.micros() + CONNECT_TIMEOUT_MS * 1000;
        net.poll();
        Ok(())
    }

    fn idle(&mut self) -> bool {
        self.net.borrow_mut().poll();
        true
    }

    fn poll_connect(&mut self) -> Result<bool> {
        let mut net = self.net.borrow_mut();
        net.poll();
        match net.tcp(self.handle).state() {
            tcp::State::Established => Ok(true),
            tcp::State::Closed | tcp::State::TimeWait => Err(Error::ConnectionClosed),
            _ if net.clock.micros() > self.connect_deadline => {
                net.tcp(self.handle).abort();
                net.poll();
                Err(Error::Timeout)
            }
            _ => Ok(false),
        }
    }
}

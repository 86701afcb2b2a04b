//! One interface for every NIC driver, and its bridge to smoltcp's
//! `phy::Device` (smoltcp 0.14 `phy` module: a receive hands out an
//! `RxToken` holding one frame and a `TxToken` for a reply).
//!
//! Drivers are polled (no interrupts). A driver copies a received frame into
//! the caller's buffer and recycles its own DMA buffer at once, so smoltcp
//! never holds device memory. Frames that are malformed (receive errors,
//! frames spanning several descriptors, runts, oversized) are dropped by the
//! driver and counted in [`NicCounters`].
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame handled, without FCS: 1500-byte MTU + 14-byte
/// header (+4 for one VLAN tag).
pub const MAX_FRAME: usize = 1518;
/// Smallest valid frame without FCS (IEEE 802.3: 64 bytes with FCS).
pub const MIN_FRAME: usize = 14;

/// Why a frame could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicError {
    /// The transmit ring is full; retry after a poll.
    Busy,
    /// Longer than [`MAX_FRAME`] or shorter than an Ethernet header.
    BadLength(usize),
    /// The device reported a failure.
    Device,
}

/// Frame and error counters: the driver's own, plus the device's statistics
/// registers where it has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the device flagged with a receive error (CRC, symbol, ...).
    pub rx_errors: u64,
    /// Frames dropped for length (oversized, spanning descriptors, runt).
    pub rx_bad_length: u64,
    /// Transmits refused because the ring was full.
    pub tx_busy: u64,
    /// Device statistic: frames missed for lack of receive buffers.
    pub hw_missed: u64,
    /// Device statistic: CRC errors.
    pub hw_crc_errors: u64,
}

/// A polled Ethernet NIC.
pub trait Nic {
    /// Short driver name for reports (`e1000`, `virtio-net`).
    fn name(&self) -> &'static str;
    fn mac(&self) -> [u8; 6];
    fn link_up(&mut self) -> bool;
    fn counters(&mut self) -> NicCounters;
    /// Copies the next good received frame into `buf` (at least
    /// [`MAX_FRAME`] bytes) and returns its length; bad frames on the way
    /// are dropped and counted.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Whether [`Nic::transmit`] would accept a frame now.
    fn can_transmit(&mut self) -> bool;
    /// Queues one frame (without FCS) for transmission.
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError>;
    /// Also accept unicast frames for `mac` (a second station behind this
    /// NIC, e.g. a bridged guest). Returns whether the device now delivers
    /// them; the default is a NIC without such a filter that cannot.
    fn accept_mac(&mut self, mac: [u8; 6]) -> bool {
        let _ = mac;
        false
    }
}

/// A [`Nic`] as a smoltcp `phy::Device`.
pub struct SmolDevice<N: Nic> {
    pub nic: N,
    rx_buf: Vec<u8>,
}

impl<N: Nic> SmolDevice<N> {
    pub fn new(nic: N) -> Self {
        SmolDevice {
            nic,
            rx_buf: vec![0; MAX_FRAME + 4],
        }
    }
}

/// One received frame, borrowed from [`SmolDevice`]'s buffer.
pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// Permission to send one frame.
pub struct TxToken<'a, N: Nic> {
    nic: &'a mut N,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl<N: Nic> phy::TxToken for TxToken<'_, N> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A refused frame is lost like one dropped on the wire; TCP
        // retransmits and the counters show it.
        let _ = self.nic.transmit(&frame);
        r
    }
}

impl<N: Nic> phy::Device for SmolDevice<N> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let len = self.nic.receive(&mut self.rx_buf)?;
        Some((
            RxToken {
                frame: &self.rx_buf[..len],
            },
            TxToken { nic: &mut self.nic },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.nic.can_transmit() {
            Some(TxToken { nic: &mut self.nic })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(1);
        caps
    }
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub struct MacDisplay(pub [u8; 6]);

impl core::fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A NIC whose transmit side feeds its receive side, for tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::VecDeque;

    #[derive(Default)]
    pub struct LoopbackNic {
        pub queue: VecDeque<Vec<u8>>,
        pub sent: Vec<Vec<u8>>,
        pub full: bool,
        pub counters: NicCounters,
    }

    impl Nic for LoopbackNic {
        fn name(&self) -> &'static str {
            "loopback"
        }
        fn mac(&self) -> [u8; 6] {
            [0x02, 0, 0, 0, 0, 1]
        }
        fn link_up(&mut self) -> bool {
            true
        }
        fn counters(&mut self) -> NicCounters {
            self.counters
        }
        fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
            let f = self.queue.pop_front()?;
            buf[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn can_transmit(&mut self) -> bool {
            !self.full
        }
        fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError> {
            if self.full {
                return Err(NicError::Busy);
            }
            self.sent.push(frame.to_vec());
            self.queue.push_back(frame.to_vec());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::LoopbackNic;
    use super::*;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

    #[test]
    fn tokens_move_frames() {
        let mut dev = SmolDevice::new(LoopbackNic::default());
        let now = Instant::from_millis(0);
        assert!(dev.receive(now).is_none());
        dev.transmit(now).unwrap().consume(60, |b| b.fill(0xAB));
        let (rx, _tx) = dev.receive(now).unwrap();
        rx.consume(|f| assert_eq!(f, &[0xAB; 60][..]));
        dev.nic.full = true;
        assert!(dev.transmit(now).is_none());
        assert_eq!(
            MacDisplay([0x52, 0x54, 0, 0x12, 0x34, 0x56]).to_string(),
            "52:54:00:12:34:56"
        );
    }

    /// A TCP connection from the interface to itself through the loopback
    /// NIC: smoltcp drives the trait end to end.
    #[test]
    fn smoltcp_tcp_over_loopback_nic() {
        let mut dev = SmolDevice::new(LoopbackNic::default());
        let mac = EthernetAddress(dev.nic.mac());
        let mut iface = Interface::new(Config::new(mac.into()), &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 15), 24))
                .unwrap();
        });
        let mut sockets = SocketSet::new(vec![]);
        let mk = || {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            )
        };
        let server = sockets.add(mk());
        let client = sockets.add(mk());
        sockets.get_mut::<tcp::Socket>(server).listen(7).unwrap();
        sockets
            .get_mut::<tcp::Socket>(client)
            .connect(iface.context(), (Ipv4Address::new(10, 0, 2, 15), 7), 49152)
            .unwrap();
        let mut got = Vec::new();
        for ms in 0..200 {
            iface.poll(Instant::from_millis(ms), &mut dev, &mut sockets);
            let c = sockets.get_mut::<tcp::Socket>(client);
            if c.may_send() && c.send_queue() == 0 && ms < 100 && got.is_empty() {
                c.send_slice(b"hello\n").unwrap();
            }
            let s = sockets.get_mut::<tcp::Socket>(server);
            if s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, b"hello\n");
        assert!(!dev.nic.sent.is_empty());
    }
}

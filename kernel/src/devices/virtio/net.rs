//! The virtio network device (virtio 1.2 §5.1): queue 0 receives, queue 1
//! transmits; no control queue, no multiqueue, no offloads.
//!
//! Offered features (§5.1.3): `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_STATUS`.
//! Configuration space (§5.1.4): `mac[6]`, `status: le16` (bit 0
//! `VIRTIO_NET_S_LINK_UP`), always up.
//!
//! Every buffer starts with `struct virtio_net_hdr`, 12 bytes with
//! `VIRTIO_F_VERSION_1` (§5.1.6). No offload is negotiated, so on receive
//! the header is all zero except `num_buffers` = 1, and on transmit it is
//! skipped.
//!
//! - Transmit (§5.1.6.2): each chain's readable bytes minus the header are
//!   one frame, emitted as [`GuestOutput::Frame`]; frames shorter than 14 or
//!   longer than [`MAX_FRAME`] bytes are dropped and counted. The buffer
//!   goes back to the driver with length 0. A writable buffer in a transmit
//!   chain is a driver error (`DEVICE_NEEDS_RESET`).
//! - Receive (§5.1.6.3): [`GuestInput::Frame`] fills the next receive chain
//!   with header and frame and raises the interrupt. Without a buffer, while
//!   the driver is not ready, or for a frame that does not fit
//!   ([`MAX_FRAME`]), the frame is dropped and counted; a chain too small
//!   for the frame goes back to the driver with length 0. A readable buffer
//!   in a receive chain is a driver error (`DEVICE_NEEDS_RESET`).
use alloc::vec;

use super::mmio::{Transport, VirtioDevice, INT_USED_BUFFER};
use super::queue::QueueError;
use super::{GuestInput, GuestMemory, GuestOutput, InputError, OutputSink, VirtioMmio};

/// virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `virtio_net_hdr` with `VIRTIO_F_VERSION_1`.
pub const HDR_LEN: usize = 12;
/// The longest frame carried: 1500-byte MTU, Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 1518;
/// The shortest frame carried: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// `VIRTIO_NET_F_MAC`.
pub const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS`.
pub const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_S_LINK_UP`.
pub const S_LINK_UP: u16 = 1;
/// The receive queue.
pub const RX: usize = 0;
/// The transmit queue.
pub const TX: usize = 1;

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Transmit chains dropped for their length.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Received frames dropped: no receive buffer available.
    pub rx_no_buffer: u64,
    /// Received frames dropped: driver not ready.
    pub rx_not_ready: u64,
    /// Received frames dropped: too long, too short, or the buffer too small.
    pub rx_bad_size: u64,
}

/// The virtio-net device model. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Net {
    mac: [u8; 6],
    stats: NetStats,
}

impl Net {
    /// A card with address `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            stats: NetStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    fn transmit(
        &mut self,
        t: &mut Transport,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
    ) {
        let mut returned = false;
        while t.live() {
            let r = match t.queues[TX].pop(mem) {
                Ok(None) => break,
                Ok(Some(c)) if !c.writable.is_empty() => Err(QueueError::WrongDirection),
                Ok(Some(c)) => {
                    let len = c.readable_len();
                    let range = (HDR_LEN + MIN_FRAME) as u64..=(HDR_LEN + MAX_FRAME) as u64;
                    let sent = if range.contains(&len) {
                        let mut frame = vec![0u8; len as usize - HDR_LEN];
                        c.read(mem, HDR_LEN as u64, &mut frame).map(|()| {
                            self.stats.tx_frames += 1;
                            sink.emit(GuestOutput::Frame(frame));
                        })
                    } else {
                        self.stats.tx_dropped += 1;
                        Ok(())
                    };
                    returned = true;
                    sent.map_err(QueueError::from)
                        .and_then(|()| t.queues[TX].push_used(mem, c.head, 0))
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                t.fail(e);
            }
        }
        if returned && t.live() {
            t.signal(INT_USED_BUFFER);
        }
    }

    fn receive(&mut self, t: &mut Transport, mem: &mut dyn GuestMemory, frame: &[u8]) {
        if !t.live() || !t.queues[RX].ready {
            self.stats.rx_not_ready += 1;
            return;
        }
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            self.stats.rx_bad_size += 1;
            return;
        }
        let chain = match t.queues[RX].pop(mem) {
            Ok(Some(c)) if c.readable.is_empty() => c,
            Ok(Some(_)) => return t.fail(QueueError::WrongDirection),
            Ok(None) => {
                self.stats.rx_no_buffer += 1;
                return;
            }
            Err(e) => return t.fail(e),
        };
        let total = HDR_LEN + frame.len();
        let mut written = 0;
        let r = if chain.writable_len() < total as u64 {
            self.stats.rx_bad_size += 1;
            Ok(())
        } else {
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1; // num_buffers
            written = total as u32;
            chain
                .write(mem, 0, &hdr)
                .and_then(|()| chain.write(mem, HDR_LEN as u64, frame))
        };
        match r
            .map_err(QueueError::from)
            .and_then(|()| t.queues[RX].push_used(mem, chain.head, written))
        {
            Ok(()) => {
                if written != 0 {
                    self.stats.rx_frames += 1;
                }
                t.signal(INT_USED_BUFFER);
            }
            Err(e) => t.fail(e),
        }
    }
}

impl VirtioDevice for Net {
    const DEVICE_ID: u32 = DEVICE_ID;
    const QUEUE_MAX: &'static [u16] = &[QUEUE_SIZE, QUEUE_SIZE];

    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn read_config(&self, offset: u64, out: &mut [u8]) {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..].copy_from_slice(&S_LINK_UP.to_le_bytes());
        for (i, b) in out.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn reset(&mut self) {}

    fn process(
        &mut self,
        t: &mut Transport,
        queue: usize,
        mem: &mut dyn GuestMemory,
        sink: &mut dyn OutputSink,
    ) {
        // Receive buffers are taken when a frame arrives.
        if queue == TX {
            self.transmit(t, mem, sink);
        }
    }

    fn apply(
        &mut self,
        t: &mut Transport,
        input: GuestInput,
        mem: &mut dyn GuestMemory,
    ) -> Result<(), InputError> {
        match input {
            GuestInput::Frame(f) => {
                self.receive(t, mem, &f);
                Ok(())
            }
            GuestInput::BlockDone { .. } => Err(InputError::WrongDevice),
        }
    }
}

impl VirtioMmio<Net> {
    /// A frame arrived for the guest (shorthand for [`VirtioMmio::apply`]
    /// with [`GuestInput::Frame`]).
    pub fn deliver_frame(
        &mut self,
        frame: &[u8],
        mem: &mut dyn GuestMemory,
        irq: &mut dyn crate::devices::IrqLine,
    ) -> Result<(), InputError> {
        self.apply(GuestInput::Frame(frame.into()), mem, irq)
    }
}

//! What the guest's virtio-net (virtio 1.2 §5.1) is plugged into: a
//! [`NetBackend`] takes the Ethernet frames the guest transmits
//! ([`GuestOutput::Frame`](crate::devices::virtio::GuestOutput::Frame)) and
//! produces the frames it receives
//! ([`GuestInput::Frame`](crate::devices::virtio::GuestInput::Frame)).
//!
//! Neither backend here reaches a real network. Bridging the guest to the
//! hypervisor's NIC (`drivers::nic`, smoltcp in `kernel/src/net/`) is a
//! later backend behind the same trait.
//!
//! - [`NoWire`] (`guest_net=none`): a cable to nowhere. Frames are counted
//!   and dropped; nothing ever arrives.
//! - [`Loopback`] (`guest_net=loopback`, for tests): every frame the guest
//!   sends is delivered back to it unchanged at the next run-loop iteration.
use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Counters of a network backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames the guest sent.
    pub sent: u64,
    /// Frames handed to the guest.
    pub delivered: u64,
    /// Frames the backend dropped.
    pub dropped: u64,
}

/// Where the guest's frames go and come from.
pub trait NetBackend {
    /// The guest transmitted `frame`.
    fn send(&mut self, frame: Vec<u8>);
    /// Append the frames that arrived for the guest to `out`.
    fn poll(&mut self, out: &mut Vec<Vec<u8>>);
    /// Frames accepted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;
    /// Counters.
    fn stats(&self) -> WireStats;
    /// A short name for the hypervisor's log.
    fn describe(&self) -> &'static str;
    /// Whether frames reach a real network (a go-live announces the
    /// guest's MAC there).
    fn is_physical(&self) -> bool {
        false
    }
}

/// No wire: transmitted frames are counted and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoWire {
    stats: WireStats,
}

impl NetBackend for NoWire {
    fn send(&mut self, _frame: Vec<u8>) {
        self.stats.sent += 1;
        self.stats.dropped += 1;
    }
    fn poll(&mut self, _out: &mut Vec<Vec<u8>>) {}
    fn in_flight(&self) -> usize {
        0
    }
    fn stats(&self) -> WireStats {
        self.stats
    }
    fn describe(&self) -> &'static str {
        "no wire (frames counted and dropped)"
    }
}

/// Frames the guest sends come back to it at the next poll. At most
/// [`Loopback::MAX_QUEUED`] wait; more are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loopback {
    queued: VecDeque<Vec<u8>>,
    stats: WireStats,
}

impl Loopback {
    /// Bound on frames waiting to be looped back.
    pub const MAX_QUEUED: usize = 256;
}

impl NetBackend for Loopback {
    fn send(&mut self, frame: Vec<u8>) {
        self.stats.sent += 1;
        if self.queued.len() < Self::MAX_QUEUED {
            self.queued.push_back(frame);
        } else {
            self.stats.dropped += 1;
        }
    }
    fn poll(&mut self, out: &mut Vec<Vec<u8>>) {
        self.stats.delivered += self.queued.len() as u64;
        out.extend(self.queued.drain(..));
    }
    fn in_flight(&self) -> usize {
        self.queued.len()
    }
    fn stats(&self) -> WireStats {
        self.stats
    }
    fn describe(&self) -> &'static str {
        "loopback (each frame the guest sends comes back to it; no real network)"
    }
}

//! `guest_net=bridge`: the guest's virtio-net on the hypervisor's physical
//! NIC, shared with the hypervisor's own smoltcp stack (iSCSI, the FT
//! logging channel).
//!
//! One [`Demux`] owns the NIC. Whoever polls it first ([`Demux::pump`])
//! sorts every received frame by destination MAC (IEEE 802.3 §3.2.3: the
//! group bit is the least significant bit of the first octet):
//!
//! | destination | goes to |
//! |---|---|
//! | the hypervisor's MAC | the hypervisor ([`HostPort`], a [`Nic`] for smoltcp) |
//! | the guest's MAC | the guest ([`Bridge`], a [`NetBackend`]) |
//! | broadcast / multicast | both |
//! | anything else | dropped (counted) |
//!
//! and each side reads its own queue, so neither steals the other's frames
//! whichever polls. Transmits go straight to the NIC; a guest frame the NIC
//! refuses for a full ring waits in a bounded backlog and is retried at the
//! next pump. The demultiplexer knows nothing of iSCSI or FT: any number of
//! hypervisor users share the one [`HostPort`].
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use drivers::nic::{Nic, NicCounters, NicError, MAX_FRAME};

use super::wire::{NetBackend, WireStats};

/// Frames waiting per side (and in the guest's transmit backlog) at most;
/// beyond, new frames are dropped and counted.
pub const MAX_QUEUED: usize = 256;

/// Where a received frame belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Host,
    Guest,
    Both,
    Nobody,
}

/// The side(s) a frame addressed to `frame[0..6]` goes to.
pub fn classify(frame: &[u8], host: [u8; 6], guest: [u8; 6]) -> Dest {
    let Some(dst) = frame.get(..6) else {
        return Dest::Nobody;
    };
    if dst[0] & 1 != 0 {
        // Broadcast and multicast (group addresses).
        Dest::Both
    } else if dst == host {
        Dest::Host
    } else if dst == guest {
        Dest::Guest
    } else {
        Dest::Nobody
    }
}

/// Counters of the demultiplexer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    pub to_host: u64,
    pub to_guest: u64,
    pub broadcast: u64,
    pub unknown: u64,
    /// Frames dropped because a side's queue was full.
    pub overflow: u64,
    pub guest_tx: u64,
    /// Guest frames dropped (backlog full or refused by the NIC).
    pub guest_tx_dropped: u64,
}

/// The shared NIC and the two receive queues.
pub struct Demux<N: Nic> {
    pub nic: N,
    guest_mac: [u8; 6],
    host_rx: VecDeque<Vec<u8>>,
    guest_rx: VecDeque<Vec<u8>>,
    guest_tx: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    /// Whether the NIC delivers the guest's unicast frames.
    pub guest_filter: bool,
    pub stats: DemuxStats,
}

fn push_bounded(q: &mut VecDeque<Vec<u8>>, frame: Vec<u8>, overflow: &mut u64) {
    if q.len() < MAX_QUEUED {
        q.push_back(frame);
    } else {
        *overflow += 1;
    }
}

impl<N: Nic> Demux<N> {
    /// Takes `nic` and asks it to accept `guest_mac` too; returns the
    /// shared handle both sides hold.
    pub fn new(mut nic: N, guest_mac: [u8; 6]) -> Rc<RefCell<Self>> {
        let guest_filter = nic.accept_mac(guest_mac);
        Rc::new(RefCell::new(Demux {
            nic,
            guest_mac,
            host_rx: VecDeque::new(),
            guest_rx: VecDeque::new(),
            guest_tx: VecDeque::new(),
            buf: vec![0; MAX_FRAME + 4],
            guest_filter,
            stats: DemuxStats::default(),
        }))
    }

    /// Sends what the guest left in its backlog, then sorts every frame
    /// the NIC has received into the two queues.
    pub fn pump(&mut self) {
        while let Some(f) = self.guest_tx.front() {
            match self.nic.transmit(f) {
                Err(NicError::Busy) => break,
                Ok(()) => {}
                Err(_) => self.stats.guest_tx_dropped += 1,
            }
            self.guest_tx.pop_front();
        }
        let host = self.nic.mac();
        while let Some(len) = self.nic.receive(&mut self.buf) {
            let frame = &self.buf[..len];
            let s = &mut self.stats;
            match classify(frame, host, self.guest_mac) {
                Dest::Host => {
                    s.to_host += 1;
                    push_bounded(&mut self.host_rx, frame.to_vec(), &mut s.overflow);
                }
                Dest::Guest => {
                    s.to_guest += 1;
                    push_bounded(&mut self.guest_rx, frame.to_vec(), &mut s.overflow);
                }
                Dest::Both => {
                    s.broadcast += 1;
                    push_bounded(&mut self.host_rx, frame.to_vec(), &mut s.overflow);
                    push_bounded(&mut self.guest_rx, frame.to_vec(), &mut s.overflow);
                }
                Dest::Nobody => s.unknown += 1,
            }
        }
    }

    /// A frame from the guest: out now, or into the backlog if the ring is
    /// full.
    fn guest_send(&mut self, frame: Vec<u8>) {
        self.stats.guest_tx += 1;
        if self.guest_tx.is_empty() {
            match self.nic.transmit(&frame) {
                Ok(()) => return,
                Err(NicError::Busy) => {}
                Err(_) => {
                    self.stats.guest_tx_dropped += 1;
                    return;
                }
            }
        }
        push_bounded(&mut self.guest_tx, frame, &mut self.stats.guest_tx_dropped);
    }
}

/// The hypervisor's side of the shared NIC: a [`Nic`] (wrap it in
/// `drivers::nic::SmolDevice` for smoltcp) that sees only the frames for
/// the hypervisor's MAC and broadcasts.
pub struct HostPort<N: Nic>(pub Rc<RefCell<Demux<N>>>);

impl<N: Nic> Nic for HostPort<N> {
    fn name(&self) -> &'static str {
        self.0.borrow().nic.name()
    }
    fn mac(&self) -> [u8; 6] {
        self.0.borrow().nic.mac()
    }
    fn link_up(&mut self) -> bool {
        self.0.borrow_mut().nic.link_up()
    }
    fn counters(&mut self) -> NicCounters {
        self.0.borrow_mut().nic.counters()
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut d = self.0.borrow_mut();
        if d.host_rx.is_empty() {
            d.pump();
        }
        let f = d.host_rx.pop_front()?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Some(n)
    }
    fn can_transmit(&mut self) -> bool {
        self.0.borrow_mut().nic.can_transmit()
    }
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError> {
        self.0.borrow_mut().nic.transmit(frame)
    }
}

/// The guest's side: a [`NetBackend`] whose frames leave through the NIC
/// and which receives the frames for [`super::GUEST_MAC`] and broadcasts.
pub struct Bridge<N: Nic> {
    demux: Rc<RefCell<Demux<N>>>,
    stats: WireStats,
}

impl<N: Nic> Bridge<N> {
    pub fn new(demux: Rc<RefCell<Demux<N>>>) -> Self {
        Bridge {
            demux,
            stats: WireStats::default(),
        }
    }

    /// The demultiplexer's counters.
    pub fn demux_stats(&self) -> DemuxStats {
        self.demux.borrow().stats
    }
}

impl<N: Nic> NetBackend for Bridge<N> {
    fn send(&mut self, frame: Vec<u8>) {
        self.stats.sent += 1;
        self.demux.borrow_mut().guest_send(frame);
    }
    fn poll(&mut self, out: &mut Vec<Vec<u8>>) {
        let mut d = self.demux.borrow_mut();
        d.pump();
        self.stats.delivered += d.guest_rx.len() as u64;
        out.extend(d.guest_rx.drain(..));
        self.stats.dropped = d.stats.guest_tx_dropped;
    }
    fn in_flight(&self) -> usize {
        // Frames may arrive any time: never "owed". The guest waits with a
        // timer armed, so a halt is not a dead halt.
        0
    }
    fn stats(&self) -> WireStats {
        self.stats
    }
    fn describe(&self) -> &'static str {
        "bridge to the hypervisor's NIC (frames demultiplexed by destination MAC)"
    }
    fn is_physical(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque as Q;

    const HOST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const GUEST: [u8; 6] = super::super::GUEST_MAC;

    #[derive(Default)]
    struct FakeNic {
        rx: Q<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        busy: usize,
    }

    impl Nic for FakeNic {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn mac(&self) -> [u8; 6] {
            HOST
        }
        fn link_up(&mut self) -> bool {
            true
        }
        fn counters(&mut self) -> NicCounters {
            NicCounters::default()
        }
        fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
            let f = self.rx.pop_front()?;
            buf[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn can_transmit(&mut self) -> bool {
            self.busy == 0
        }
        fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError> {
            if self.busy > 0 {
                self.busy -= 1;
                return Err(NicError::Busy);
            }
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn accept_mac(&mut self, _mac: [u8; 6]) -> bool {
            true
        }
    }

    fn frame(dst: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[14] = tag;
        f
    }

    #[test]
    fn classifies_by_destination() {
        assert_eq!(classify(&frame(HOST, 0), HOST, GUEST), Dest::Host);
        assert_eq!(classify(&frame(GUEST, 0), HOST, GUEST), Dest::Guest);
        assert_eq!(classify(&frame([0xFF; 6], 0), HOST, GUEST), Dest::Both);
        let mcast = [0x01, 0x00, 0x5E, 0, 0, 1];
        assert_eq!(classify(&frame(mcast, 0), HOST, GUEST), Dest::Both);
        assert_eq!(
            classify(&frame([2, 0, 0, 0, 0, 7], 0), HOST, GUEST),
            Dest::Nobody
        );
        assert_eq!(classify(&[0xFF; 5], HOST, GUEST), Dest::Nobody);
    }

    #[test]
    fn each_side_gets_its_frames_whoever_polls() {
        let d = Demux::new(FakeNic::default(), GUEST);
        assert!(d.borrow().guest_filter);
        let mut host = HostPort(d.clone());
        let mut bridge = Bridge::new(d.clone());
        {
            let mut x = d.borrow_mut();
            x.nic.rx.push_back(frame(GUEST, 1));
            x.nic.rx.push_back(frame(HOST, 2));
            x.nic.rx.push_back(frame([0xFF; 6], 3));
            x.nic.rx.push_back(frame([2, 0, 0, 0, 0, 7], 4));
            x.nic.rx.push_back(frame(GUEST, 5));
        }
        // The hypervisor polls first: it must not swallow the guest's.
        let mut buf = [0u8; 2048];
        let mut host_tags = Vec::new();
        while let Some(n) = host.receive(&mut buf) {
            assert_eq!(n, 60);
            host_tags.push(buf[14]);
        }
        assert_eq!(host_tags, [2, 3]);
        let mut out = Vec::new();
        bridge.poll(&mut out);
        let guest_tags: Vec<u8> = out.iter().map(|f| f[14]).collect();
        assert_eq!(guest_tags, [1, 3, 5]);
        assert_eq!(bridge.stats().delivered, 3);
        let s = d.borrow().stats;
        assert_eq!(
            (s.to_host, s.to_guest, s.broadcast, s.unknown),
            (1, 2, 1, 1)
        );
        // And the other way round: the guest polls first.
        d.borrow_mut().nic.rx.push_back(frame(HOST, 6));
        out.clear();
        bridge.poll(&mut out);
        assert!(out.is_empty());
        assert_eq!(host.receive(&mut buf), Some(60));
        assert_eq!(buf[14], 6);
    }

    #[test]
    fn transmits_share_the_nic_and_a_full_ring_is_retried_in_order() {
        let d = Demux::new(FakeNic::default(), GUEST);
        let mut host = HostPort(d.clone());
        let mut bridge = Bridge::new(d.clone());
        bridge.send(frame(HOST, 1));
        host.transmit(&frame(GUEST, 2)).unwrap();
        d.borrow_mut().nic.busy = 1;
        bridge.send(frame(HOST, 3));
        bridge.send(frame(HOST, 4));
        assert_eq!(d.borrow().nic.sent.len(), 2);
        let mut out = Vec::new();
        bridge.poll(&mut out);
        let tags: Vec<u8> = d.borrow().nic.sent.iter().map(|f| f[14]).collect();
        assert_eq!(tags, [1, 2, 3, 4]);
        assert_eq!(d.borrow().stats.guest_tx, 3);
    }

    #[test]
    fn queues_are_bounded() {
        let d = Demux::new(FakeNic::default(), GUEST);
        for i in 0..MAX_QUEUED + 10 {
            d.borrow_mut().nic.rx.push_back(frame(HOST, i as u8));
        }
        d.borrow_mut().pump();
        assert_eq!(d.borrow().host_rx.len(), MAX_QUEUED);
        assert_eq!(d.borrow().stats.overflow, 10);
    }
}

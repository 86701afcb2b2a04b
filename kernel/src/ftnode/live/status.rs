//! Status (DESIGN.md §6 "Observable"): the `ft: status:` console line
//! every `ft_status` ms and the status port (`ft_status_port=`), one JSON
//! line per connection, both from the same [`StatusLine`].
use super::Node;
use drivers::nic::Nic;
use drivers::smoltcp::socket::tcp;
use ft::node::NodeState;
use kernel::config::Role;
use kernel::ftnode::{mbit_per_s, StatusLine};

impl<N: Nic + 'static> Node<N> {
    pub(super) fn status(&mut self, guest_ns: u64, discarded: u64) {
        let now = self.now_us();
        if now < self.status_due_us {
            return;
        }
        self.status_due_us = now + self.cfg.status_ms * 1000;
        let rate = mbit_per_s(self.status_bytes, now - self.status_us);
        self.status_bytes = 0;
        self.status_us = now;
        println!("{}", self.status_line(guest_ns, discarded, rate));
    }

    pub(super) fn status_line(
        &self,
        guest_ns: u64,
        discarded: u64,
        rate: kernel::ftnode::Centi,
    ) -> StatusLine {
        let now = self.now_us();
        let heard_ms = now.saturating_sub(self.heard_us) / 1000;
        let state = match (self.role, self.ft.state()) {
            (_, NodeState::Paired) => "paired",
            (_, NodeState::Following) => "following",
            (_, NodeState::Arbitrating) => "arbitrating",
            (_, NodeState::Draining) => "draining",
            (Role::Primary, NodeState::Alone) => "alone",
            // Won, still replaying what it received: not live yet.
            (Role::Backup, NodeState::Alone) if !self.live => "draining",
            (Role::Backup, NodeState::Alone) => "live",
            (_, NodeState::Halted) => "ended",
        };
        // A repair this node serves (issue 16).
        let repair = self
            .repair
            .progress
            .filter(|_| self.ft.state() == NodeState::Alone);
        let state = if repair.is_some() { "repairing" } else { state };
        let generation = self.ft.generation();
        let heap_kib = crate::arch::heap::stats().0 as u64 / 1024;
        let heap_peak_kib = crate::arch::heap::peak() as u64 / 1024;
        match (self.ft.primary(), self.ft.backup()) {
            (Some(p), _) if self.role == Role::Primary => StatusLine {
                role: "primary",
                state,
                generation,
                seq: p.last_seq(),
                acked: p.acked(),
                applied: p.applied(),
                lag_entries: p.last_seq() - p.applied(),
                lag_us: self.lag.last_us.max(self.lag.pending_age_us(now)),
                lag_guest_us: p.lag_ns(guest_ns) / 1000,
                rate,
                heard_ms,
                held: self.gate.waiting() as u64,
                released: self.gate.released,
                discarded: 0,
                heap_kib,
                heap_peak_kib,
                repair,
                repair_pause_ms: self.repair.pause_ms,
            },
            // A backup (gone live: its log ended where it went live).
            (_, backup) => {
                let (seq, applied) = match backup {
                    Some(b) => (b.received(), b.applied()),
                    None => {
                        let a = self.golive.as_ref().map_or(0, |g| g.last_applied);
                        (a, a)
                    }
                };
                StatusLine {
                    role: "backup",
                    state,
                    generation,
                    seq,
                    acked: applied,
                    applied,
                    lag_entries: seq - applied,
                    lag_us: 0,
                    lag_guest_us: 0,
                    rate,
                    heard_ms,
                    held: 0,
                    released: 0,
                    discarded,
                    heap_kib,
                    heap_peak_kib,
                    repair,
                    repair_pause_ms: self.repair.pause_ms,
                }
            }
        }
    }

    /// The status port (`ft_status_port=`, DESIGN.md §6): every connection
    /// gets one JSON line and is closed.
    pub(super) fn serve_status(&mut self, guest_ns: u64) {
        let Some(h) = self.status_sock else {
            return;
        };
        let rc = self.net.clone();
        let state = rc.borrow_mut().tcp(h).state();
        match state {
            tcp::State::Closed if rc.borrow_mut().tcp(h).listen(self.cfg.status_port).is_err() => {
                println!(
                    "ft: error: cannot listen on the status port {}",
                    self.cfg.status_port
                );
                self.status_sock = None;
            }
            tcp::State::Established => {
                let now = self.now_us();
                let rate = mbit_per_s(self.status_bytes, now.saturating_sub(self.status_us).max(1));
                let mut line = self.status_line(guest_ns, 0, rate).json();
                line.push('\n');
                let mut net = rc.borrow_mut();
                let s = net.tcp(h);
                if s.send_slice(line.as_bytes()).is_ok() {
                    s.close();
                } else {
                    s.abort();
                }
            }
            tcp::State::CloseWait => rc.borrow_mut().tcp(h).close(),
            tcp::State::TimeWait => rc.borrow_mut().tcp(h).abort(),
            _ => {}
        }
    }
}

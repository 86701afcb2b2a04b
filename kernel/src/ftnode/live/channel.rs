//! The log connection of the FT node's adapter (issue 14; DESIGN.md §1.6):
//! one smoltcp TCP socket moving bytes between the node and the peer,
//! connecting when the node asks (primary), listening (backup), a dropped
//! connection reported to the node, and the `ft_test_reset=` fault.

use super::*;

impl<N: Nic + 'static> Node<N> {
    /// Polls the stack for `us` microseconds (nothing else to do).
    pub(super) fn idle_us(&mut self, us: u64) {
        let until = self.now_us() + us;
        while self.now_us() < until {
            self.net.borrow_mut().poll();
        }
    }

    pub(super) fn listen(&mut self) {
        let open = self.net.borrow_mut().tcp(self.sock).is_open();
        if open {
            self.net.borrow_mut().tcp(self.sock).abort();
            self.net.borrow_mut().poll();
        }
        if self
            .net
            .borrow_mut()
            .tcp(self.sock)
            .listen(self.peer.port)
            .is_err()
        {
            println!(
                "ft: backup: error: cannot listen on port {}",
                self.peer.port
            );
            exit(exitcode::FAILURE);
        }
        self.connected = false;
        self.outbox.clear();
        self.delayed.clear();
        self.out_off = 0;
    }

    /// Backup gone live: the log socket is closed for good.
    pub(super) fn net_abort_log(&mut self) {
        self.net.borrow_mut().tcp(self.sock).abort();
        self.net.borrow_mut().poll();
        self.connected = false;
    }

    /// Moves bytes between the outbox, the socket and the state machine.
    /// `force`: poll the NIC even if it was polled very recently.
    pub(super) fn pump(&mut self, force: bool) {
        let now = self.now_us();
        if !force && self.out_off == self.outbox.len() && now < self.last_pump_us + POLL_US {
            return;
        }
        self.last_pump_us = now;
        self.net.borrow_mut().poll();
        let rc = self.net.clone();
        let (state, from) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            (s.state(), s.remote_endpoint())
        };
        match self.role {
            Role::Backup if !self.connected && state == tcp::State::Established => {
                let want = endpoint(self.peer).addr;
                match from {
                    Some(ep) if ep.addr == want => {
                        println!("ft: backup: log connection from the primary at {ep}");
                        self.connected = true;
                        self.heard_us = now;
                        let fx = self.ft.on_connected(now * 1000);
                        self.apply(fx);
                    }
                    other => {
                        println!("ft: backup: REFUSED a log connection from {other:?}: not the configured peer {want}");
                        self.listen();
                        return;
                    }
                }
            }
            Role::Primary if self.connecting.is_some() => match state {
                tcp::State::Established => {
                    self.connecting = None;
                    self.connected = true;
                    self.heard_us = now;
                    let fx = self.ft.on_connected(now * 1000);
                    if self.ever_connected {
                        println!(
                            "ft: primary: log connection re-established (reconnect {}); hello sent, resending from seq {}",
                            self.ft.reconnects,
                            self.ft.primary().map_or(0, |p| p.acked() + 1)
                        );
                    } else {
                        println!(
                            "ft: primary: log connection to {} established after {} attempt(s); hello sent; starting the guest",
                            endpoint(self.peer),
                            self.connect_attempts
                        );
                    }
                    self.ever_connected = true;
                    self.apply(fx);
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    // Refused: the node asks again later.
                    self.connecting = None;
                    self.ft.on_disconnected(now * 1000);
                    self.note_unreachable("refused");
                }
                _ if self
                    .connecting
                    .is_some_and(|t| now >= t + CONNECT_MS * 1000) =>
                {
                    // No answer (the backup's NIC is not up yet): a
                    // transport timeout, not a failure; the node asks
                    // again later, and judges the silence itself.
                    rc.borrow_mut().tcp(self.sock).abort();
                    self.connecting = None;
                    self.ft.on_disconnected(now * 1000);
                    self.note_unreachable("no answer");
                }
                _ => {}
            },
            _ => {}
        }
        // `ft_test_ack_delay=`: what the backup sends goes out only once
        // it is that old (a slow network, for `ft-console-failover`).
        let hold_us = self.cfg.test_ack_delay_ms.unwrap_or(0) * 1000;
        while self
            .delayed
            .front()
            .is_some_and(|(t, _)| now >= t + hold_us)
        {
            if let Some((_, bytes)) = self.delayed.pop_front() {
                self.outbox.extend_from_slice(&bytes);
            }
        }
        self.send_outbox();
        loop {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            if !s.can_recv() {
                break;
            }
            let Ok(n) = s.recv_slice(&mut self.inbuf) else {
                break;
            };
            drop(net);
            if n == 0 {
                break;
            }
            self.bytes_recv += n as u64;
            self.heard_us = now;
            let bytes = self.inbuf[..n].to_vec();
            let fx = self.ft.on_bytes(now * 1000, &bytes);
            if let Some(p) = self.ft.primary() {
                self.lag.applied(p.applied(), now);
            }
            self.apply(fx);
            if self.test_reset_due() {
                break;
            }
        }
        // What the bytes just received produced (a backup's acks, which
        // the primary's output rule waits for) leaves now, not at the next
        // pump after a guest stretch (issue 17).
        self.send_outbox();
        let (may_recv, state) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(self.sock);
            (s.may_recv(), s.state())
        };
        if self.connected && !may_recv && !matches!(state, tcp::State::Established) {
            // A dropped connection is not a failure (DESIGN.md §1.6): the
            // primary reconnects when the node asks, the backup listens.
            self.ft.on_disconnected(now * 1000);
            match self.role {
                Role::Primary => {
                    if self.ft.state() == NodeState::Paired {
                        println!(
                            "ft: primary: the backup closed the log connection (state {state}); reconnecting"
                        );
                    }
                    self.net.borrow_mut().tcp(self.sock).abort();
                    self.connected = false;
                    self.outbox.clear();
                    self.out_off = 0;
                }
                Role::Backup => {
                    println!("ft: backup: the primary closed the log connection");
                    self.listen();
                }
            }
        }
        if self.ft.wants_connection(now * 1000) && self.connecting.is_none() {
            let ep = endpoint(self.peer);
            if rc.borrow_mut().start_connect(self.sock, ep).is_ok() {
                self.connecting = Some(now);
                self.connect_attempts += 1;
            }
        }
        self.pump_probe(now);
    }

    /// Hands the outbox to the log socket as far as it takes it.
    fn send_outbox(&mut self) {
        let rc = self.net.clone();
        if self.out_off < self.outbox.len() && rc.borrow_mut().tcp(self.sock).may_send() {
            let sent = rc
                .borrow_mut()
                .tcp(self.sock)
                .send_slice(&self.outbox[self.out_off..]);
            if let Ok(n) = sent {
                self.out_off += n;
                self.bytes_sent += n as u64;
                self.status_bytes += n as u64;
            }
            if self.out_off == self.outbox.len() {
                self.outbox.clear();
                self.out_off = 0;
            }
            self.net.borrow_mut().poll();
        }
    }

    /// Primary: a connection attempt failed; before the first connection
    /// (the backup may still be booting) every 20th attempt says so.
    pub(super) fn note_unreachable(&self, why: &str) {
        if !self.ever_connected && self.connect_attempts % 20 == 1 {
            println!(
                "ft: primary: backup not reachable yet ({why}, attempt {}); retrying",
                self.connect_attempts
            );
        }
    }

    /// Backup with `ft_test_reset=N` (fault injection for
    /// `ft-log-reconnect`): after every N entries received, at most 3
    /// times, the log connection is reset; the primary must reconnect and
    /// resend what was lost, with no failover. `true`: it was reset now.
    pub(super) fn test_reset_due(&mut self) -> bool {
        let (Some(every), Some(b)) = (self.cfg.test_reset, self.ft.backup()) else {
            return false;
        };
        if self.test_resets >= 3 || !self.connected || b.received() < every * (self.test_resets + 1)
        {
            return false;
        }
        self.test_resets += 1;
        println!(
            "ft: backup: test: resetting the log connection after {} entries received (ft_test_reset={every}, reset {} of 3)",
            b.received(),
            self.test_resets
        );
        self.ft.on_disconnected(self.now_us() * 1000);
        self.listen();
        true
    }
}

//! Repair in the FT node's adapter (issue 16; DESIGN.md §1.9): the
//! network side of a state transfer. The run loop (`crate::vmm::repair`)
//! decides what to send and when; this file moves the bytes.
//!
//! * **Serving** (the node acts alone): a listener on the repair port (the
//!   log port + 2) takes one joining node at a time; its request
//!   (`ft::state::Chunk::Join`: cluster, node id, machine) is checked
//!   against this node's cluster and machine, and refused with the reason
//!   otherwise. [`crate::vmm::RepairLink`] gives the run loop the queue,
//!   the failure, and [`RepairLink::form_pair`]: `ft::node::Node::
//!   begin_repair` on the shared LUN (the flag's next generation, the
//!   joiner as the peer a later failure fences), after which this node is
//!   the new pair's primary and connects to the joiner's log port.
//! * **Joining** ([`Node::receive_transfer`]): connects to the serving
//!   node's repair port (retrying while it is not listening), sends its
//!   request, and feeds what arrives to `ft::state::Receiver` until the
//!   commit verified; a refused, cut or silent transfer fails the join with
//!   the reason, and nothing of it is applied.
use super::*;
use crate::vmm::RepairLink;
use ft::state::{encode_chunk, read_join, Chunk, Expect, Progress, Receiver, Staged};

/// TCP buffers of the repair connection (each way).
const REPAIR_BUFFER: usize = 256 * 1024;

/// The serving side's repair connection.
#[derive(Default)]
pub(super) struct RepairConn {
    /// The listening or connected socket (made on first use).
    pub sock: Option<SocketHandle>,
    /// Bytes from the joiner (its request).
    inbuf: Vec<u8>,
    /// Bytes to the joiner not handed to the socket yet.
    out: Vec<u8>,
    /// The joiner that asked: node id and address.
    pub joiner: Option<(u64, IpAddress)>,
    failed: Option<String>,
    /// The pair formed: the commit drains, then the socket closes.
    pub committed: bool,
    /// Status: percent of the round sent, round, dirty pages per second.
    pub progress: Option<(u64, u32, u64)>,
    /// The guest's pause at the last repair (ms, commit to the new
    /// backup's first ack).
    pub pause_ms: Option<u64>,
    /// Transfers begun and aborted (the listener is announced once).
    pub begun: u64,
    pub aborted: u64,
}

impl<N: Nic + 'static> Node<N> {
    /// Serving alone: listens for joiners, reads a joiner's request, moves
    /// the transfer's bytes; after the commit, drains and closes.
    pub(super) fn pump_repair(&mut self) {
        let serving = self.ft.state() == NodeState::Alone && self.halted.is_none();
        if !serving && !self.repair.committed && self.repair.sock.is_none() {
            return;
        }
        let rc = self.net.clone();
        let h = match self.repair.sock {
            Some(h) => h,
            None => {
                let h = rc.borrow_mut().add_tcp(REPAIR_BUFFER);
                self.repair.sock = Some(h);
                h
            }
        };
        rc.borrow_mut().poll();
        let (state, from) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(h);
            (s.state(), s.remote_endpoint())
        };
        if self.repair.committed {
            // The commit's bytes out, then an orderly close.
            self.repair_flush(h);
            let idle = self.repair.out.is_empty() && rc.borrow_mut().tcp(h).send_queue() == 0;
            if idle || matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                rc.borrow_mut().tcp(h).close();
                self.repair.committed = false;
                self.repair.joiner = None;
                self.repair.progress = None;
            }
            return;
        }
        if !serving {
            if rc.borrow_mut().tcp(h).is_open() {
                rc.borrow_mut().tcp(h).abort();
            }
            return;
        }
        if self.repair.joiner.is_some() && state != tcp::State::Established {
            // Reset, closed, or silent past the socket's timeout (a joiner
            // whose machine died sends no RST).
            self.repair.failed.get_or_insert_with(|| {
                alloc::format!("the joining node's connection ended (state {state})")
            });
            return;
        }
        match state {
            tcp::State::Closed => {
                let port = self.cfg.repair_port();
                // A joiner that stops acknowledging (its machine died) is
                // given up after the failure timeout.
                rc.borrow_mut().tcp(h).set_timeout(Some(
                    drivers::smoltcp::time::Duration::from_millis(self.cfg.timeout_ms),
                ));
                if rc.borrow_mut().tcp(h).listen(port).is_err() {
                    println!("ft: repair: error: cannot listen on the repair port {port}");
                    self.repair.failed = Some("no repair listener".into());
                } else if self.repair.begun == 0 && self.repair.aborted == 0 {
                    println!(
                        "ft: repair: serving alone: a new backup may join on port {port} (ft_join=on)"
                    );
                }
                return;
            }
            tcp::State::Listen | tcp::State::SynReceived => return,
            tcp::State::Established => {}
            _ if self.repair.joiner.is_some() || !self.repair.inbuf.is_empty() => {
                self.repair.failed.get_or_insert_with(|| {
                    alloc::format!("the joining node closed the connection (state {state})")
                });
                return;
            }
            _ => {
                rc.borrow_mut().tcp(h).abort();
                return;
            }
        }
        // The request.
        if self.repair.joiner.is_none() {
            let mut buf = [0u8; 512];
            loop {
                let n = rc.borrow_mut().tcp(h).recv_slice(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                self.repair.inbuf.extend_from_slice(&buf[..n]);
            }
            match read_join(&self.repair.inbuf, self.cfg.cluster) {
                Ok(None) => {}
                Ok(Some((node, machine, _))) => {
                    let ours = self.ncfg.session.machine;
                    let peer = from.map(|e| e.addr);
                    if let Some((field, theirs, mine)) = ours.first_difference(&machine) {
                        let why = alloc::format!(
                            "the joining node's machine differs: {field} is {theirs} there, {mine} here"
                        );
                        println!("ft: repair: REFUSED node {node} at {peer:?}: {why}");
                        self.repair_reset();
                    } else if node == self.ncfg.session.me.0 {
                        println!("ft: repair: REFUSED a joining node with this node's own id {node}: give it its own iscsi_node=");
                        self.repair_reset();
                    } else if let Some(addr) = peer {
                        self.repair.joiner = Some((node, addr));
                        self.repair.begun += 1;
                    }
                }
                Err(e) => {
                    println!("ft: repair: REFUSED a join request from {from:?}: {e}");
                    self.repair_reset();
                }
            }
            return;
        }
        self.repair_flush(h);
    }

    fn repair_flush(&mut self, h: SocketHandle) {
        let rc = self.net.clone();
        let mut net = rc.borrow_mut();
        let s = net.tcp(h);
        if !self.repair.out.is_empty() && s.may_send() {
            if let Ok(n) = s.send_slice(&self.repair.out) {
                self.repair.out.drain(..n);
                self.bytes_sent += n as u64;
                self.status_bytes += n as u64;
            }
        }
        drop(net);
        rc.borrow_mut().poll();
    }

    /// Drops the repair connection; the next call listens again.
    fn repair_reset(&mut self) {
        if let Some(h) = self.repair.sock {
            self.net.borrow_mut().tcp(h).abort();
            self.net.borrow_mut().poll();
        }
        self.repair.inbuf.clear();
        self.repair.out.clear();
        self.repair.joiner = None;
        self.repair.failed = None;
        self.repair.progress = None;
    }

    /// Joining node: the serving node's transfer, pages to `page`, until
    /// its commit verified.
    pub(super) fn receive_transfer(
        &mut self,
        ram_bytes: u64,
        disk_sectors: u64,
        page: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<alloc::boxed::Box<Staged>, String> {
        let m = &mut self.ncfg.session.machine;
        m.guest_mem = ram_bytes;
        m.disk_sectors = disk_sectors;
        let machine = *m;
        let ep = IpEndpoint::new(endpoint(self.peer).addr, self.cfg.repair_port());
        let mut request = Vec::new();
        encode_chunk(
            0,
            &Chunk::Join {
                cluster: self.cfg.cluster,
                node: self.ncfg.session.me.0,
                machine,
            },
            &mut request,
        )
        .map_err(|e| alloc::format!("cannot encode the join request: {e:?}"))?;
        let mut receiver = Receiver::new(Expect {
            cluster: self.cfg.cluster,
            guest_id: None,
            machine,
        });
        let start = self.now_us();
        let give_up = start + self.ncfg.session.join_timeout_ns / 1000;
        let silence = 3 * self.cfg.timeout_ms * 1000;
        let rc = self.net.clone();
        let mut attempts = 0u64;
        // Connect (the serving node listens only while it is alone).
        loop {
            if self.now_us() > give_up {
                return Err(alloc::format!(
                    "no serving node answered on {ep} within net_timeout ({attempts} attempts)"
                ));
            }
            attempts += 1;
            if attempts == 1 || attempts.is_multiple_of(10) {
                println!("ft: join: asking {ep} to take this node as its new backup (node {}, attempt {attempts})", self.ncfg.session.me.0);
            }
            let _ = rc.borrow_mut().start_connect(self.sock, ep);
            let until = self.now_us() + CONNECT_MS * 1000;
            let mut up = false;
            while self.now_us() < until {
                rc.borrow_mut().poll();
                match rc.borrow_mut().tcp(self.sock).state() {
                    tcp::State::Established => {
                        up = true;
                        break;
                    }
                    tcp::State::Closed | tcp::State::TimeWait => break,
                    _ => {}
                }
            }
            if up {
                break;
            }
            rc.borrow_mut().tcp(self.sock).abort();
            self.idle_us(500_000);
        }
        let _ = rc.borrow_mut().tcp(self.sock).send_slice(&request);
        let mut heard = self.now_us();
        let mut received = 0u64;
        let mut noted = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            rc.borrow_mut().poll();
            let now = self.now_us();
            let n = {
                let mut net = rc.borrow_mut();
                let s = net.tcp(self.sock);
                if s.can_recv() {
                    s.recv_slice(&mut buf).unwrap_or(0)
                } else {
                    0
                }
            };
            if n > 0 {
                heard = now;
                received += n as u64;
                match receiver.push(&buf[..n], page) {
                    Ok(Progress::Receiving) => {}
                    Ok(Progress::Complete(staged)) => {
                        println!(
                            "ft: join: transfer complete: {received} bytes in {} ms from node {} (generation {} then)",
                            (now - start) / 1000,
                            staged.sender,
                            staged.generation
                        );
                        rc.borrow_mut().tcp(self.sock).close();
                        self.idle_us(100_000);
                        self.guest_id = staged.guest_id;
                        self.ncfg.session.guest_id = staged.guest_id;
                        self.ncfg.peer = NodeId(staged.sender);
                        return Ok(staged);
                    }
                    Err(refused) => {
                        rc.borrow_mut().tcp(self.sock).abort();
                        return Err(alloc::format!("{refused}"));
                    }
                }
                if received >= noted + (1 << 20) {
                    noted = received;
                    println!("ft: join: received {} KiB so far", received >> 10);
                }
                continue;
            }
            let state = rc.borrow_mut().tcp(self.sock).state();
            if !matches!(state, tcp::State::Established | tcp::State::CloseWait)
                || (state == tcp::State::CloseWait && !rc.borrow_mut().tcp(self.sock).can_recv())
            {
                rc.borrow_mut().tcp(self.sock).abort();
                return Err(alloc::format!(
                    "the serving node closed the connection before the commit ({received} bytes received, state {state})"
                ));
            }
            if now > heard + silence {
                rc.borrow_mut().tcp(self.sock).abort();
                return Err(alloc::format!(
                    "the serving node fell silent for {} ms before the commit ({received} bytes received)",
                    (now - heard) / 1000
                ));
            }
        }
    }
}

impl<N: Nic + 'static> RepairLink for Node<N> {
    fn joiner(&mut self) -> Option<u64> {
        self.repair.joiner.map(|j| j.0)
    }

    fn queued(&self) -> usize {
        let sent = self
            .repair
            .sock
            .map_or(0, |h| self.net.borrow_mut().tcp(h).send_queue());
        self.repair.out.len() + sent
    }

    fn send(&mut self, bytes: &[u8]) {
        self.repair.out.extend_from_slice(bytes);
        if let Some(h) = self.repair.sock {
            self.repair_flush(h);
        }
    }

    fn failed(&mut self) -> Option<String> {
        self.repair.failed.clone()
    }

    fn identity(&self) -> (u64, u64, [u8; 16], ft::log::MachineId, u64) {
        (
            self.cfg.cluster,
            self.ncfg.session.me.0,
            self.guest_id,
            self.ncfg.session.machine,
            self.ft.generation(),
        )
    }

    fn form_pair(&mut self, joiner: u64, io: &mut GuestIo) -> Result<u64, String> {
        let Some((_, addr)) = self.repair.joiner else {
            return Err("no joining node".into());
        };
        if self.gate.waiting() + self.io_gate.waiting() + self.ready.len() > 0 {
            return Err("outputs still held from before".into());
        }
        let role = role_name(self.role);
        let now = self.now_us() * 1000;
        let mut storage = LunStorage::new(
            &mut self.arb,
            self.clock,
            self.lun.as_ref(),
            self.ncfg.session.me,
            role,
            io.shared_lun(),
        );
        storage.only_shared = self.ncfg.fencing;
        // The joiner has the state: it must apply it, join on the LUN and
        // acknowledge within a few failure timeouts, or it is given up
        // (the guest waits meanwhile).
        let form_within = 4 * self.ncfg.session.failure_timeout_ns;
        let r = self
            .ft
            .begin_repair(now, &mut storage, NodeId(joiner), form_within);
        self.after_decision();
        match r {
            Ok(generation) => {
                self.ncfg.peer = NodeId(joiner);
                self.role = Role::Primary;
                self.peer = Endpoint {
                    addr: match addr {
                        IpAddress::Ipv4(a) => a.octets(),
                        #[allow(unreachable_patterns)]
                        _ => self.peer.addr,
                    },
                    port: self.peer.port,
                };
                self.net.borrow_mut().tcp(self.sock).set_nagle_enabled(true);
                self.connected = false;
                self.connecting = None;
                self.connect_attempts = 0;
                self.ever_connected = false;
                self.outbox.clear();
                self.out_off = 0;
                self.gate = OutputGate::default();
                self.io_gate = OutputGate::default();
                self.next_line = 0;
                self.next_io = 0;
                self.lag = LagMeter::default();
                self.heard_us = self.now_us();
                self.repair.committed = true;
                println!(
                    "ft: repair: the pair forms under generation {generation} with node {joiner} at {addr}: this node is its primary; the log goes to {} once the new backup listens",
                    endpoint(self.peer)
                );
                Ok(generation)
            }
            Err(fx) => {
                self.apply(fx);
                Err(match self.ft.last_verdict {
                    Some(Verdict::Lost(f)) => alloc::format!(
                        "lost the flag (generation {} owner {})",
                        f.generation,
                        f.owner.0
                    ),
                    _ => "the shared LUN did not answer the test-and-set".into(),
                })
            }
        }
    }

    fn await_pair(&mut self, io: &mut GuestIo, at: ExecPoint, guest_ns: u64) -> Result<(), String> {
        let t0 = self.now_us();
        loop {
            self.pump(true);
            self.pump_repair();
            let now = self.now_us();
            if now >= self.last_tick_us + 1000 {
                self.last_tick_us = now;
                self.primary_tick(now * 1000, guest_ns, at, Some(io))?;
            }
            match self.ft.state() {
                NodeState::Paired if self.ft.started() => {
                    let ms = (self.now_us() - t0) / 1000;
                    self.repair.pause_ms = Some(ms);
                    println!("ft: repair: PROTECTED again: the new backup acknowledged the session {ms} ms after the commit; the guest resumes");
                    return Ok(());
                }
                NodeState::Paired | NodeState::Arbitrating => {}
                NodeState::Alone => {
                    return Err(alloc::format!(
                        "no session with the new backup within {} ms",
                        (self.now_us() - t0) / 1000
                    ))
                }
                other => return Err(alloc::format!("the node is {other:?}")),
            }
        }
    }

    fn abort(&mut self, why: &str) {
        self.repair.aborted += 1;
        println!("ft: repair: attempt ended: {why}");
        self.repair_reset();
    }

    fn progress(&mut self, percent: u64, round: u32, dirty_per_s: u64) {
        self.repair.progress = Some((percent, round, dirty_per_s));
    }
}

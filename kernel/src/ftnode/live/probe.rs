//! The backup's probe listener (`ft_probe=`, `ft-hostile-log`; DESIGN.md
//! §1 "bad input"): while the session runs, a second listener on the log
//! port accepts the probing host, checks its bytes with a `Backup` of its
//! own exactly like the primary's (framing, CRC32C, hello, order) and
//! resets the connection with the reason; the session never sees them.
use super::{endpoint, Node};
use drivers::nic::Nic;
use drivers::smoltcp::socket::tcp;
use drivers::smoltcp::wire::{IpAddress, IpEndpoint};
use ft::backup::Backup;
use ft::Effect;

impl<N: Nic + 'static> Node<N> {
    /// Backup with `ft_probe=`: serves the probe listener. A connection
    /// from the allowed host gets a `Backup` of its own that checks its
    /// bytes exactly like the primary's (framing, CRC32C, session hello,
    /// order); the first error, a close in the middle of a record, a
    /// close before any hello or a valid hello (a session is already
    /// running) refuses it with the reason and resets it. The session
    /// with the primary never sees these bytes.
    pub(super) fn pump_probe(&mut self, now: u64) {
        let (Some(h), Some(allowed)) = (self.probe_sock, self.cfg.probe) else {
            return;
        };
        let rc = self.net.clone();
        let (open, state, remote) = {
            let mut net = rc.borrow_mut();
            let s = net.tcp(h);
            (s.is_open(), s.state(), s.remote_endpoint())
        };
        if !open {
            // Listen only while a session runs: before it, every
            // connection must reach the main listener (the primary's).
            if self.connected && rc.borrow_mut().tcp(h).listen(self.peer.port).is_err() {
                println!("ft: backup: error: cannot listen for probes");
                self.probe_sock = None;
            }
            return;
        }
        if matches!(state, tcp::State::Listen | tcp::State::SynReceived) {
            return;
        }
        if self.probe.is_none() {
            let [a, b, c, d] = allowed;
            match remote {
                Some(ep) if ep.addr == IpAddress::v4(a, b, c, d) => {
                    println!("ft: backup: probe connection from {ep} (ft_probe): validating it; the session with the primary goes on");
                    let mut v = Backup::new(self.ncfg.session, self.ft.generation(), now * 1000);
                    v.on_connected(now * 1000);
                    self.probe = Some((ep, v));
                }
                other => {
                    let why = alloc::format!(
                        "not the configured peer {} nor the ft_probe host",
                        endpoint(self.peer).addr
                    );
                    self.refuse_probe(other, &why);
                    return;
                }
            }
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = {
                let mut net = rc.borrow_mut();
                let s = net.tcp(h);
                if !s.can_recv() {
                    break;
                }
                match s.recv_slice(&mut buf) {
                    Ok(n) if n > 0 => n,
                    _ => break,
                }
            };
            let Some((ep, v)) = self.probe.as_mut() else {
                return;
            };
            let ep = *ep;
            let fx = v.on_bytes(now * 1000, &buf[..n]);
            let refused = fx.into_iter().find_map(|e| match e {
                Effect::ResetConnection(err) => Some(alloc::format!("{err}")),
                _ => None,
            });
            if let Some(why) = refused {
                self.refuse_probe(Some(ep), &why);
                return;
            }
            if v.hello_seen() {
                let why = alloc::format!(
                    "valid session hello, but a session with the primary at {} is already running",
                    endpoint(self.peer).addr
                );
                self.refuse_probe(Some(ep), &why);
                return;
            }
        }
        let may_recv = rc.borrow_mut().tcp(h).may_recv();
        if !may_recv {
            let Some((ep, v)) = self.probe.as_ref() else {
                return;
            };
            let (ep, left) = (*ep, v.buffered());
            let why = if left > 0 {
                alloc::format!(
                    "truncated record: the connection closed with {left} bytes of an incomplete record"
                )
            } else {
                "the connection closed before a session hello".into()
            };
            self.refuse_probe(Some(ep), &why);
        }
    }

    fn refuse_probe(&mut self, from: Option<IpEndpoint>, why: &str) {
        self.probes_refused += 1;
        match from {
            Some(ep) => println!("ft: backup: REFUSED a probe connection from {ep}: {why}"),
            None => println!("ft: backup: REFUSED a probe connection: {why}"),
        }
        self.probe = None;
        if let Some(h) = self.probe_sock {
            self.net.borrow_mut().tcp(h).abort();
            // Let the reset out; the listener reopens at the next pump.
            self.net.borrow_mut().poll();
        }
    }
}

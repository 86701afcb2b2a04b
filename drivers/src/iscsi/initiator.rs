//! An initiator: drives a [`Session`] over a [`Transport`] with a
//! [`Clock`]. The kernel implements `Transport` on a smoltcp TCP socket;
//! [`tcp::TcpTransport`] implements it on `std::net::TcpStream` (feature
//! `std`) for host tests.
//!
//! Two ways to run commands, on the same session:
//! - blocking ([`Initiator::execute`] and the helpers): one command, the
//!   caller waits for its status (login, arbitration, persistent
//!   reservations);
//! - asynchronous ([`Initiator::start`], [`Initiator::pump`],
//!   [`Initiator::finished`]): many commands in flight, each call returns
//!   at once (a guest disk inside a run loop that must keep its heartbeats
//!   going, DESIGN.md §1.7). A connection is opened without waiting too
//!   ([`Transport::start_reconnect`]).
//!
//! A blocking call made while asynchronous commands are in flight keeps
//! their completions for [`Initiator::finished`].

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::iscsi::session::{Event, Session, SessionConfig, TaskId, TaskResult};
use crate::scsi::{
    Command, Inquiry, PrInAction, PrKeys, PrOutAction, PrOutParams, PrReservation, PrType,
    ReadCapacity16, SenseKey,
};

/// ALLOCATION LENGTH of READ KEYS: 511 keys. istgt 0.4 answers CHECK
/// CONDITION without sense to a PERSISTENT RESERVE IN that asks for more
/// than its 8 KiB data buffer.
const PR_KEYS_ALLOC: u16 = 4096;
/// ALLOCATION LENGTH of READ RESERVATION (header and one descriptor).
const PR_RESERVATION_ALLOC: u16 = 24;

/// A reliable byte stream to the target's portal (TCP).
pub trait Transport {
    /// Sends some of `bytes`; returns how many were taken (0 = try later).
    fn send(&mut self, bytes: &[u8]) -> Result<usize>;
    /// Receives into `buf`, waiting at most a short poll interval; `Ok(0)`
    /// means nothing arrived yet. A closed stream is
    /// `Err(Error::ConnectionClosed)`.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Drops the current connection (if any) and opens a new one.
    fn reconnect(&mut self) -> Result<()>;
    /// Receives what is there without waiting (`Ok(0)`: nothing yet).
    fn recv_now(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.recv(buf)
    }
    /// Drops the current connection and starts opening a new one;
    /// [`Transport::poll_connect`] says when it is up. By default the
    /// blocking [`Transport::reconnect`].
    fn start_reconnect(&mut self) -> Result<()> {
        self.reconnect()
    }
    /// `Ok(true)`: the connection started by [`Transport::start_reconnect`]
    /// is up; `Ok(false)`: still opening; `Err`: it failed.
    fn poll_connect(&mut self) -> Result<bool> {
        Ok(true)
    }
    /// The initiator waits (a reconnect backoff): move the network stack
    /// once (its other connections keep going). `false`: nothing to move,
    /// the initiator may sleep (the default).
    fn idle(&mut self) -> bool {
        false
    }
}

/// A borrowed transport is one (an initiator lent a connection for a while):
/// every method forwards, the non-blocking ones too.
impl<T: Transport + ?Sized> Transport for &mut T {
    fn send(&mut self, bytes: &[u8]) -> Result<usize> {
        (**self).send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).recv(buf)
    }
    fn reconnect(&mut self) -> Result<()> {
        (**self).reconnect()
    }
    fn recv_now(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).recv_now(buf)
    }
    fn start_reconnect(&mut self) -> Result<()> {
        (**self).start_reconnect()
    }
    fn poll_connect(&mut self) -> Result<bool> {
        (**self).poll_connect()
    }
    fn idle(&mut self) -> bool {
        (**self).idle()
    }
}

/// An asynchronous command and the session task that carries it now.
struct Started {
    /// The session's task (a new one after a UNIT ATTENTION re-issue).
    task: TaskId,
    /// The handle [`Initiator::start`] returned.
    handle: TaskId,
    cmd: Command,
    attentions: u8,
}

/// UNIT ATTENTIONs a command may meet before its error is returned.
const MAX_ATTENTIONS: u8 = 4;
/// Completions kept for [`Initiator::take_events`] at most (the oldest
/// are dropped beyond).
const MAX_KEPT_EVENTS: usize = 64;
/// Receive calls per [`Initiator::pump`] at most.
const RECV_ROUNDS: usize = 32;

/// Milliseconds since an arbitrary origin, plus a way to wait.
pub trait Clock {
    fn now_ms(&self) -> u64;
    /// Waits until `now_ms() >= t` (or a little less; the caller re-checks).
    fn sleep_until(&self, t: u64);
}

/// Runs a session to completion of one command at a time.
pub struct Initiator<T: Transport, C: Clock> {
    session: Session,
    transport: T,
    clock: C,
    lun: u64,
    block_size: u32,
    events: VecDeque<Event>,
    rx: Vec<u8>,
    /// A connection is being opened ([`Transport::start_reconnect`]).
    connecting: bool,
    started: Vec<Started>,
    finished: VecDeque<(TaskId, Result<Vec<u8>>)>,
}

impl<T: Transport, C: Clock> Initiator<T, C> {
    /// Connects (the transport must be able to `reconnect`) and logs in.
    pub fn login(transport: T, clock: C, cfg: SessionConfig, lun: u64) -> Result<Self> {
        Self::try_login(transport, clock, cfg, lun).map_err(|(e, _)| e)
    }

    /// [`Initiator::login`] that hands the transport back when the login
    /// fails, so the caller can try again later (e.g. while the target is
    /// down).
    pub fn try_login(
        transport: T,
        clock: C,
        cfg: SessionConfig,
        lun: u64,
    ) -> core::result::Result<Self, (Error, T)> {
        let mut me = Initiator {
            session: Session::new(cfg),
            transport,
            clock,
            lun,
            block_size: 512,
            events: VecDeque::new(),
            rx: alloc::vec![0; 64 * 1024],
            connecting: false,
            started: Vec::new(),
            finished: VecDeque::new(),
        };
        match me.run_until(|e| matches!(e, Event::LoggedIn { .. })) {
            Ok(_) => Ok(me),
            Err(e) => Err((e, me.transport)),
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// A session that failed for good (the target stayed unreachable past
    /// its reconnect budget) logs in anew: a fresh session with the same
    /// initiator name and ISID, so the same I_T nexus (a persistent
    /// reservation registered by it still holds). Ok at once if the
    /// session has not failed.
    pub fn revive(&mut self) -> Result<()> {
        if !self.session.is_failed() {
            return Ok(());
        }
        // What the old session still reports (its failed tasks) is
        // routed before it goes; nothing started survives it.
        self.drain_session(self.clock.now_ms());
        for s in self.started.drain(..) {
            self.finished
                .push_back((s.handle, Err(Error::StorageUnreachable)));
        }
        self.connecting = false;
        self.session = Session::new(self.session.config().clone());
        self.run_until(|e| matches!(e, Event::LoggedIn { .. }))
            .map(|_| ())
    }

    /// The transport (e.g. to inspect or tweak it in tests).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Gives the transport back without logging out, e.g. to log in again
    /// with a fresh session after this one failed for good.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Block size used by the block helpers (set from READ CAPACITY).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Events other than the ones the blocking calls consumed
    /// (asynchronous messages, connection losses).
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Runs the I/O loop until an event matching `want` arrives; returns it.
    fn run_until(&mut self, mut want: impl FnMut(&Event) -> bool) -> Result<Event> {
        loop {
            let now = self.clock.now_ms();
            self.session.poll(now);
            while let Some(ev) = self.session.next_event() {
                let Some(ev) = self.route(ev, now) else {
                    continue;
                };
                if want(&ev) {
                    return Ok(ev);
                }
                match ev {
                    Event::Failed(e) => return Err(e),
                    other => self.keep(other),
                }
            }
            if self.session.is_failed() {
                return Err(Error::StorageUnreachable);
            }
            if self.session.is_logged_out() {
                return Err(Error::NotLoggedIn);
            }
            self.step(true, now);
        }
    }

    /// One round of I/O after the session's timers ran: the connection
    /// being opened, a new one if the session wants it, then transmit and
    /// receive. `wait`: a blocking caller (receive waits a short poll
    /// interval, a disconnected session sleeps to its next deadline);
    /// otherwise nothing waits.
    fn step(&mut self, wait: bool, now: u64) {
        if self.session.is_failed() || self.session.is_logged_out() {
            return;
        }
        if self.connecting {
            match self.transport.poll_connect() {
                Ok(true) => {
                    self.connecting = false;
                    self.session.connected(now);
                }
                Ok(false) => return,
                Err(e) => {
                    self.connecting = false;
                    self.session.connect_failed(e, now);
                    return;
                }
            }
        }
        if self.session.wants_connect(now) {
            match self.transport.start_reconnect() {
                Ok(()) => self.connecting = true,
                Err(e) => self.session.connect_failed(e, now),
            }
            return;
        }
        if self.session.is_disconnected() {
            if wait {
                if let Some(t) = self.session.next_deadline() {
                    // Keep the network stack moving while waiting (other
                    // connections share it); sleep only without one.
                    while self.clock.now_ms() < t {
                        if !self.transport.idle() {
                            self.clock.sleep_until(t);
                            break;
                        }
                    }
                }
            }
            return;
        }
        while !self.session.transmit().is_empty() {
            match self.transport.send(self.session.transmit()) {
                Ok(0) => break,
                Ok(n) => self.session.consume_transmit(n),
                Err(e) => return self.session.connection_lost(e, now),
            }
        }
        let rounds = if wait { 1 } else { RECV_ROUNDS };
        for _ in 0..rounds {
            let r = if wait {
                self.transport.recv(&mut self.rx)
            } else {
                self.transport.recv_now(&mut self.rx)
            };
            match r {
                Ok(0) => break,
                Ok(n) => self.session.receive(&self.rx[..n], self.clock.now_ms()),
                Err(e) => return self.session.connection_lost(e, self.clock.now_ms()),
            }
        }
    }

    /// An event for an asynchronous command is consumed here (a UNIT
    /// ATTENTION re-issues the command, SPC-4 §5.14: it was not
    /// executed); any other event is handed back.
    fn route(&mut self, ev: Event, now: u64) -> Option<Event> {
        let Event::TaskComplete { id, .. } = &ev else {
            return Some(ev);
        };
        let Some(i) = self.started.iter().position(|s| s.task == *id) else {
            return Some(ev);
        };
        let Event::TaskComplete { result, .. } = ev else {
            return None;
        };
        let s = self.started.swap_remove(i);
        let out = match result.and_then(|r| r.check().map(|()| r.data)) {
            Err(Error::Scsi {
                sense: Some(sense), ..
            }) if sense.key == SenseKey::UNIT_ATTENTION && s.attentions < MAX_ATTENTIONS => {
                match self.session.submit(self.lun, s.cmd.clone(), now) {
                    Ok(task) => {
                        self.started.push(Started {
                            task,
                            attentions: s.attentions + 1,
                            ..s
                        });
                        return None;
                    }
                    Err(e) => Err(e),
                }
            }
            r => r,
        };
        self.finished.push_back((s.handle, out));
        None
    }

    fn keep(&mut self, ev: Event) {
        if self.events.len() >= MAX_KEPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Routes every event the session has queued.
    fn drain_session(&mut self, now: u64) {
        while let Some(ev) = self.session.next_event() {
            if let Some(ev) = self.route(ev, now) {
                self.keep(ev);
            }
        }
    }

    /// Starts `cmd` without waiting; its outcome comes out of
    /// [`Initiator::finished`] under the handle returned (GOOD: the
    /// Data-In; otherwise the typed error, as [`Initiator::execute_checked`]
    /// maps it). Nothing moves until [`Initiator::pump`] (or a blocking
    /// call) runs.
    pub fn start(&mut self, cmd: Command) -> Result<TaskId> {
        let now = self.clock.now_ms();
        let task = self.session.submit(self.lun, cmd.clone(), now)?;
        self.started.push(Started {
            task,
            handle: task,
            cmd,
            attentions: 0,
        });
        Ok(task)
    }

    /// READ(16) of `blocks` blocks at `lba`, started ([`Initiator::start`]).
    pub fn start_read16(&mut self, lba: u64, blocks: u32) -> Result<TaskId> {
        self.start(Command::read16(lba, blocks, self.block_size)?)
    }

    /// WRITE(16) of `data` at `lba`, started ([`Initiator::start`]).
    pub fn start_write16(&mut self, lba: u64, data: Vec<u8>) -> Result<TaskId> {
        self.start(Command::write16(lba, data, self.block_size)?)
    }

    /// SYNCHRONIZE CACHE(16) of the whole LUN, started.
    pub fn start_synchronize_cache(&mut self) -> Result<TaskId> {
        self.start(Command::synchronize_cache16(0, 0))
    }

    /// Moves the session along without waiting: timers, the connection
    /// (opened without blocking), what is to send, what has arrived.
    pub fn pump(&mut self) {
        let now = self.clock.now_ms();
        self.session.poll(now);
        self.drain_session(now);
        self.step(false, now);
        self.drain_session(self.clock.now_ms());
    }

    /// The next asynchronous command that finished, with its handle.
    pub fn finished(&mut self) -> Option<(TaskId, Result<Vec<u8>>)> {
        self.finished.pop_front()
    }

    /// Asynchronous commands started and not yet returned by
    /// [`Initiator::finished`].
    pub fn outstanding(&self) -> usize {
        self.started.len() + self.finished.len()
    }

    /// Executes one command and waits for its status.
    pub fn execute(&mut self, cmd: Command) -> Result<TaskResult> {
        let now = self.clock.now_ms();
        let id: TaskId = self.session.submit(self.lun, cmd, now)?;
        match self.run_until(|e| matches!(e, Event::TaskComplete { id: i, .. } if *i == id))? {
            Event::TaskComplete { result, .. } => result,
            _ => Err(Error::Protocol("unexpected event")),
        }
    }

    /// Executes and maps a non-GOOD status to the typed error (RESERVATION
    /// CONFLICT is [`Error::ReservationConflict`] for every command).
    /// A CHECK CONDITION with UNIT ATTENTION (e.g. power on/reset after a
    /// login, SPC-4 §5.14) means the command was not executed: it is
    /// re-issued, a few times at most.
    pub fn execute_checked(&mut self, cmd: Command) -> Result<Vec<u8>> {
        let mut attentions = 0;
        loop {
            let r = self.execute(cmd.clone())?;
            match r.check() {
                Ok(()) => return Ok(r.data),
                Err(Error::Scsi { sense: Some(s), .. })
                    if s.key == SenseKey::UNIT_ATTENTION && attentions < 4 =>
                {
                    attentions += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn test_unit_ready(&mut self) -> Result<()> {
        self.execute_checked(Command::test_unit_ready()).map(|_| ())
    }

    pub fn inquiry(&mut self) -> Result<Inquiry> {
        Inquiry::parse(&self.execute_checked(Command::inquiry(96))?)
    }

    /// READ CAPACITY(16); also sets the block size used by the helpers.
    pub fn read_capacity16(&mut self) -> Result<ReadCapacity16> {
        let c = ReadCapacity16::parse(&self.execute_checked(Command::read_capacity16())?)?;
        self.block_size = c.block_size;
        Ok(c)
    }

    pub fn read16(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        let want = blocks as usize * self.block_size as usize;
        let data = self.execute_checked(Command::read16(lba, blocks, self.block_size)?)?;
        if data.len() != want {
            return Err(Error::MalformedResponse("short READ(16) data"));
        }
        Ok(data)
    }

    pub fn write16(&mut self, lba: u64, data: Vec<u8>) -> Result<()> {
        self.execute_checked(Command::write16(lba, data, self.block_size)?)
            .map(|_| ())
    }

    pub fn synchronize_cache(&mut self) -> Result<()> {
        self.execute_checked(Command::synchronize_cache16(0, 0))
            .map(|_| ())
    }

    /// COMPARE AND WRITE of one block: `Err(Error::Miscompare)` if the block
    /// did not hold `compare`.
    pub fn compare_and_write(&mut self, lba: u64, compare: &[u8], write: &[u8]) -> Result<()> {
        let cmd = Command::compare_and_write(lba, compare, write, self.block_size)?;
        self.execute_checked(cmd).map(|_| ())
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16) with the basic parameter
    /// list. A refusal is [`Error::ReservationConflict`].
    pub fn persistent_reserve_out(
        &mut self,
        action: PrOutAction,
        ty: PrType,
        params: &PrOutParams,
    ) -> Result<()> {
        self.execute_checked(Command::persistent_reserve_out(action, ty, params))
            .map(|_| ())
    }

    /// PERSISTENT RESERVE IN READ KEYS (SPC-4 §6.15.2): the registered keys.
    pub fn read_keys(&mut self) -> Result<PrKeys> {
        let cmd = Command::persistent_reserve_in(PrInAction::ReadKeys, PR_KEYS_ALLOC);
        PrKeys::parse(&self.execute_checked(cmd)?)
    }

    /// PERSISTENT RESERVE IN READ RESERVATION (SPC-4 §6.15.3).
    pub fn read_reservation(&mut self) -> Result<PrReservation> {
        let cmd = Command::persistent_reserve_in(PrInAction::ReadReservation, PR_RESERVATION_ALLOC);
        PrReservation::parse(&self.execute_checked(cmd)?)
    }

    /// Registers this I_T nexus with `key` whatever it had before
    /// (REGISTER AND IGNORE EXISTING KEY, APTPL 0).
    pub fn register_key(&mut self, key: u64) -> Result<()> {
        let p = PrOutParams {
            service_action_key: key,
            ..PrOutParams::default()
        };
        self.persistent_reserve_out(PrOutAction::RegisterAndIgnoreExistingKey, PrType::NONE, &p)
    }

    /// Logs out (§11.14) and returns the transport. The target closes the
    /// connection after its Logout Response; if our answer to one of its
    /// NOP-In pings was still unread there, its close is a reset that can
    /// swallow the response (seen with istgt). The session is closed at the
    /// target either way, so a connection closed during logout is success.
    pub fn logout(mut self) -> Result<T> {
        let now = self.clock.now_ms();
        self.session.logout(now)?;
        match self.run_until(|e| matches!(e, Event::LoggedOut(_)))? {
            Event::LoggedOut(Ok(0)) => Ok(self.transport),
            Event::LoggedOut(Ok(_)) => Err(Error::Protocol("target refused the logout")),
            Event::LoggedOut(Err(Error::ConnectionClosed)) => Ok(self.transport),
            Event::LoggedOut(Err(e)) => Err(e),
            _ => Err(Error::Protocol("logout not confirmed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::Cell;

    /// A target that never answers: every connection attempt fails.
    /// `idle` moves the shared fake clock on by a millisecond.
    struct Down {
        now: Rc<Cell<u64>>,
        idles: u64,
    }

    impl Transport for Down {
        fn send(&mut self, _: &[u8]) -> Result<usize> {
            Err(Error::ConnectionClosed)
        }
        fn recv(&mut self, _: &mut [u8]) -> Result<usize> {
            Err(Error::ConnectionClosed)
        }
        fn reconnect(&mut self) -> Result<()> {
            Err(Error::ConnectionClosed)
        }
        fn idle(&mut self) -> bool {
            self.idles += 1;
            self.now.set(self.now.get() + 1);
            true
        }
    }

    struct FakeClock(Rc<Cell<u64>>);

    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
        fn sleep_until(&self, _: u64) {
            panic!("the initiator slept instead of moving the network stack");
        }
    }

    #[test]
    fn a_blocking_wait_for_a_reconnect_keeps_the_stack_moving() {
        let now = Rc::new(Cell::new(0));
        let mut cfg = SessionConfig::new("iqn.x:i", "iqn.x:t", [0x80, 0, 0, 0, 0, 1]);
        cfg.reconnect_delay_ms = 100;
        let down = Down {
            now: now.clone(),
            idles: 0,
        };
        let Err((_, down)) = Initiator::try_login(down, FakeClock(now.clone()), cfg, 0) else {
            panic!("a target that never answers cannot log in");
        };
        assert!(
            down.idles >= 100,
            "{} polls while waiting out the backoff",
            down.idles
        );
    }
}

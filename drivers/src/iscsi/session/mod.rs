//! Sans-IO iSCSI initiator session (RFC 7143): login (§6, §11.12-13),
//! command numbering and windowing (§3.2.2.1, §4.2.2.1), StatSN
//! acknowledgement (§4.2.2.2), tasks with Data-In/Data-Out/R2T (§10.4),
//! NOP-In/NOP-Out (§11.18-19), logout (§11.14-15).
//!
//! The session never touches a socket or a clock: the caller feeds received
//! bytes with [`Session::receive`], takes bytes to send from
//! [`Session::transmit`], passes `now` (milliseconds, injected) to every
//! call, and reads [`Event`]s. Recovery is ErrorRecoveryLevel 0 (§7.1.5):
//! on a timeout or a broken connection the session asks for a new connection
//! ([`Session::wants_connect`]), logs in again with the same ISID and TSIH 0
//! (session reinstatement, §6.3.5) and re-issues unfinished tasks, up to a
//! retry limit.

mod inbound;
mod task;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use task::Task;
pub use task::{TaskId, TaskResult};

use crate::error::{Error, Result};
use crate::iscsi::bhs::RESERVED_TAG;
use crate::iscsi::params::{security_keys, Negotiated, Offer};
use crate::iscsi::pdu::{AsyncMessage, LoginRequest, LogoutRequest, NopOut, Pdu, Stage, StatusSn};
use crate::iscsi::stream::PduDecoder;
use crate::iscsi::text::TextPairs;
use crate::scsi::Command;

/// Static configuration of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub initiator_name: String,
    pub target_name: String,
    /// Initiator Session ID (§11.12.5); byte 0 0x80 = random format.
    pub isid: [u8; 6],
    pub offer: Offer,
    pub login_timeout_ms: u64,
    /// A task with no status after this long breaks the connection.
    pub task_timeout_ms: u64,
    /// Idle time before a NOP-Out ping; 0 disables keepalive.
    pub nop_interval_ms: u64,
    pub nop_timeout_ms: u64,
    pub reconnect_delay_ms: u64,
    /// Consecutive failed connections before giving up.
    pub max_reconnects: u32,
    /// Times a task is re-issued after connection loss.
    pub max_task_retries: u32,
}

impl SessionConfig {
    pub fn new(initiator_name: &str, target_name: &str, isid: [u8; 6]) -> Self {
        SessionConfig {
            initiator_name: initiator_name.into(),
            target_name: target_name.into(),
            isid,
            offer: Offer::default(),
            login_timeout_ms: 10_000,
            task_timeout_ms: 30_000,
            nop_interval_ms: 5_000,
            nop_timeout_ms: 5_000,
            reconnect_delay_ms: 1_000,
            max_reconnects: 5,
            max_task_retries: 3,
        }
    }
}

/// What happened, for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    LoggedIn {
        tsih: u16,
    },
    TaskComplete {
        id: TaskId,
        result: Result<TaskResult>,
    },
    /// The target's Asynchronous Message (§11.9), surfaced as is.
    Async(AsyncMessage),
    /// The target rejected a PDU that belongs to no task (§11.17).
    Rejected {
        reason: u8,
        itt: u32,
    },
    /// The connection is unusable: close the transport; the session will
    /// ask to reconnect via [`Session::wants_connect`].
    ConnectionLost(Error),
    /// Logout finished: `Ok(response)` with the target's Logout Response
    /// code (0 = closed successfully, §11.15.1), or why it did not answer.
    LoggedOut(core::result::Result<u8, Error>),
    /// Reconnects exhausted or login refused: every task failed.
    Failed(Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Disconnected {
        reconnect_at: u64,
    },
    Login {
        stage: Stage,
        itt: u32,
        deadline: u64,
        text: Vec<u8>,
        rounds: u32,
    },
    FullFeature,
    LoggingOut {
        itt: u32,
        deadline: u64,
    },
    LoggedOut,
    Failed,
}

/// Serial number "less than" (RFC 1982, as RFC 7143 §4.2.2.1 requires).
fn sn_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

const MAX_LOGIN_ROUNDS: u32 = 16;

/// One iSCSI session over one connection at a time.
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    params: Negotiated,
    decoder: PduDecoder,
    tx: Vec<u8>,
    events: VecDeque<Event>,
    tasks: Vec<Task>,
    next_task: u64,
    next_itt: u32,
    tsih: u16,
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    failures: u32,
    last_rx: u64,
    ping: Option<(u32, u64)>,
}

impl Session {
    /// A session waiting for its first connection ([`Session::connected`]).
    pub fn new(cfg: SessionConfig) -> Self {
        let params = Negotiated::from_offer(&cfg.offer);
        let decoder = PduDecoder::new(cfg.offer.max_recv_data_segment_length as usize);
        Session {
            cfg,
            phase: Phase::Disconnected { reconnect_at: 0 },
            params,
            decoder,
            tx: Vec::new(),
            events: VecDeque::new(),
            tasks: Vec::new(),
            next_task: 1,
            next_itt: 1,
            tsih: 0,
            cmd_sn: 1,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            exp_stat_sn: 0,
            failures: 0,
            last_rx: 0,
            ping: None,
        }
    }

    /// Values negotiated at the last login.
    pub fn negotiated(&self) -> &Negotiated {
        &self.params
    }
    pub fn is_logged_in(&self) -> bool {
        self.phase == Phase::FullFeature
    }
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }
    /// The configuration the session was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }
    /// Between connections (waiting for [`Session::wants_connect`]).
    pub fn is_disconnected(&self) -> bool {
        matches!(self.phase, Phase::Disconnected { .. })
    }
    pub fn is_logged_out(&self) -> bool {
        self.phase == Phase::LoggedOut
    }
    /// True when the caller should open a new connection now.
    pub fn wants_connect(&self, now: u64) -> bool {
        matches!(self.phase, Phase::Disconnected { reconnect_at } if now >= reconnect_at)
    }
    /// Bytes to send; call [`Session::consume_transmit`] with how many went.
    pub fn transmit(&self) -> &[u8] {
        &self.tx
    }
    pub fn consume_transmit(&mut self, n: usize) {
        self.tx.drain(..n.min(self.tx.len()));
    }
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`Session::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let phase = match &self.phase {
            Phase::Disconnected { reconnect_at } => Some(*reconnect_at),
            Phase::Login { deadline, .. } | Phase::LoggingOut { deadline, .. } => Some(*deadline),
            Phase::FullFeature => {
                let nop = match self.ping {
                    Some((_, d)) => Some(d),
                    None if self.cfg.nop_interval_ms > 0 => {
                        Some(self.last_rx + self.cfg.nop_interval_ms)
                    }
                    None => None,
                };
                let task = self
                    .tasks
                    .iter()
                    .filter(|t| t.itt.is_some())
                    .map(|t| t.deadline)
                    .min();
                nop.into_iter().chain(task).min()
            }
            Phase::LoggedOut | Phase::Failed => None,
        };
        phase
    }

    /// A new transport connection is up: start the login (§6.3, §11.12).
    pub fn connected(&mut self, now: u64) {
        if !matches!(self.phase, Phase::Disconnected { .. }) {
            return;
        }
        self.tx.clear();
        self.decoder.reset();
        self.decoder
            .set_max_data(self.cfg.offer.max_recv_data_segment_length as usize);
        self.params = Negotiated::from_offer(&self.cfg.offer);
        self.ping = None;
        self.last_rx = now;
        for t in &mut self.tasks {
            t.itt = None;
        }
        let itt = self.alloc_itt();
        self.phase = Phase::Login {
            stage: Stage::Security,
            itt,
            deadline: now + self.cfg.login_timeout_ms,
            text: Vec::new(),
            rounds: 0,
        };
        let keys = security_keys(&self.cfg.initiator_name, &self.cfg.target_name);
        self.send_login(Stage::Security, Stage::Operational, true, keys);
    }

    /// The transport failed or closed: schedule a reconnect (or give up).
    pub fn connection_lost(&mut self, err: Error, now: u64) {
        match self.phase {
            Phase::Disconnected { .. } | Phase::LoggedOut | Phase::Failed => return,
            Phase::LoggingOut { .. } => {
                self.phase = Phase::LoggedOut;
                self.events.push_back(Event::LoggedOut(Err(err)));
                return;
            }
            _ => {}
        }
        self.tx.clear();
        let max_retries = self.cfg.max_task_retries;
        let mut i = 0;
        while i < self.tasks.len() {
            let t = &mut self.tasks[i];
            if t.itt.take().is_some() {
                t.retries += 1;
                if t.retries > max_retries {
                    let id = t.id;
                    self.tasks.remove(i);
                    let result = Err(Error::Timeout);
                    self.events.push_back(Event::TaskComplete { id, result });
                    continue;
                }
            }
            i += 1;
        }
        self.phase = Phase::Disconnected { reconnect_at: now };
        self.connect_failed(err, now);
    }

    /// Opening a connection failed (or one just broke): count the attempt
    /// and schedule the next, or give up with [`Error::StorageUnreachable`].
    pub fn connect_failed(&mut self, err: Error, now: u64) {
        if !self.is_disconnected() {
            return;
        }
        self.failures += 1;
        self.events.push_back(Event::ConnectionLost(err));
        if self.failures > self.cfg.max_reconnects {
            return self.fail(Error::StorageUnreachable);
        }
        self.phase = Phase::Disconnected {
            reconnect_at: now + self.cfg.reconnect_delay_ms,
        };
    }

    fn fail(&mut self, err: Error) {
        for t in self.tasks.drain(..) {
            let result = Err(err.clone());
            self.events
                .push_back(Event::TaskComplete { id: t.id, result });
        }
        self.phase = Phase::Failed;
        self.events.push_back(Event::Failed(err));
    }

    /// Queues a SCSI command; it is sent as soon as the session is logged in
    /// and the CmdSN window allows.
    pub fn submit(&mut self, lun: u64, cmd: Command, now: u64) -> Result<TaskId> {
        if matches!(
            self.phase,
            Phase::LoggingOut { .. } | Phase::LoggedOut | Phase::Failed
        ) {
            return Err(Error::NotLoggedIn);
        }
        if self.tasks.len() >= 256 {
            return Err(Error::TooManyTasks);
        }
        let id = TaskId(self.next_task);
        self.next_task += 1;
        self.tasks.push(Task::new(id, lun, cmd));
        self.issue_ready(now);
        Ok(id)
    }

    /// Starts a logout (reason 0, close the session, §11.14).
    pub fn logout(&mut self, now: u64) -> Result<()> {
        if self.phase != Phase::FullFeature {
            return Err(Error::NotLoggedIn);
        }
        let itt = self.alloc_itt();
        self.push(Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }));
        self.phase = Phase::LoggingOut {
            itt,
            deadline: now + self.cfg.login_timeout_ms,
        };
        Ok(())
    }

    /// Runs timers: login/logout/task deadlines, NOP-Out keepalive.
    pub fn poll(&mut self, now: u64) {
        match self.phase.clone() {
            Phase::Login { deadline, .. } if now >= deadline => {
                self.connection_lost(Error::Timeout, now)
            }
            Phase::LoggingOut { deadline, .. } if now >= deadline => {
                self.phase = Phase::LoggedOut;
                self.events.push_back(Event::LoggedOut(Err(Error::Timeout)));
            }
            Phase::FullFeature => {
                if self
                    .tasks
                    .iter()
                    .any(|t| t.itt.is_some() && now >= t.deadline)
                {
                    return self.connection_lost(Error::Timeout, now);
                }
                match self.ping {
                    Some((_, deadline)) if now >= deadline => {
                        self.connection_lost(Error::Timeout, now)
                    }
                    None if self.cfg.nop_interval_ms > 0
                        && now >= self.last_rx + self.cfg.nop_interval_ms =>
                    {
                        let itt = self.alloc_itt();
                        self.ping = Some((itt, now + self.cfg.nop_timeout_ms));
                        self.push(Pdu::NopOut(NopOut {
                            immediate: true,
                            lun: 0,
                            itt,
                            ttt: RESERVED_TAG,
                            cmd_sn: self.cmd_sn,
                            exp_stat_sn: self.exp_stat_sn,
                            data: Vec::new(),
                        }));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Feeds bytes received from the transport.
    pub fn receive(&mut self, bytes: &[u8], now: u64) {
        if matches!(
            self.phase,
            Phase::Disconnected { .. } | Phase::LoggedOut | Phase::Failed
        ) {
            return;
        }
        self.last_rx = now;
        self.decoder.push(bytes);
        loop {
            let pdu = match self.decoder.next_pdu() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => return self.connection_lost(e, now),
            };
            if let Err(e) = self.handle(pdu, now) {
                match e {
                    Error::LoginRejected { class: 2, .. } | Error::Negotiation(_) => self.fail(e),
                    e => self.connection_lost(e, now),
                }
                return;
            }
            if matches!(
                self.phase,
                Phase::Disconnected { .. } | Phase::LoggedOut | Phase::Failed
            ) {
                return;
            }
        }
    }

    fn alloc_itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        itt
    }

    fn push(&mut self, pdu: Pdu) {
        // Our own PDUs always encode: data segments are bounded by the
        // negotiated lengths, far below 2^24.
        if pdu.encode(&mut self.tx).is_err() {
            self.events
                .push_back(Event::ConnectionLost(Error::InvalidArgument(
                    "unencodable PDU",
                )));
        }
    }

    fn send_login(&mut self, csg: Stage, nsg: Stage, transit: bool, keys: TextPairs) {
        let Phase::Login { itt, .. } = self.phase else {
            return;
        };
        self.push(Pdu::LoginRequest(LoginRequest {
            transit,
            cont: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.cfg.isid,
            tsih: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: keys.to_bytes(),
        }));
    }

    /// Window update from any target PDU (§4.2.2.1).
    fn update_sn(&mut self, sn: &StatusSn) {
        if sn_lt(sn.max_cmd_sn, sn.exp_cmd_sn.wrapping_sub(1)) {
            return; // invalid window: ignore
        }
        if sn_lt(self.exp_cmd_sn, sn.exp_cmd_sn) {
            self.exp_cmd_sn = sn.exp_cmd_sn;
        }
        if sn_lt(self.max_cmd_sn, sn.max_cmd_sn) {
            self.max_cmd_sn = sn.max_cmd_sn;
        }
    }

    /// A status-bearing PDU acknowledges StatSN (§4.2.2.2).
    fn ack_stat(&mut self, stat_sn: u32) {
        if !sn_lt(stat_sn, self.exp_stat_sn) {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
    }

    /// Sends queued tasks while the CmdSN window is open.
    fn issue_ready(&mut self, now: u64) {
        if self.phase != Phase::FullFeature {
            return;
        }
        let mut out = Vec::new();
        for i in 0..self.tasks.len() {
            if self.tasks[i].itt.is_some() {
                continue;
            }
            if sn_lt(self.max_cmd_sn, self.cmd_sn) {
                break; // window closed
            }
            let itt = self.alloc_itt();
            let t = &mut self.tasks[i];
            t.deadline = now + self.cfg.task_timeout_ms;
            t.issue(itt, self.cmd_sn, self.exp_stat_sn, &self.params, &mut out);
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        for p in out {
            self.push(p);
        }
    }

    fn task_index(&self, itt: u32) -> Result<usize> {
        self.tasks
            .iter()
            .position(|t| t.itt == Some(itt))
            .ok_or(Error::Protocol("PDU for an unknown task tag"))
    }

    fn complete(&mut self, idx: usize, result: Result<TaskResult>, now: u64) {
        let t = self.tasks.remove(idx);
        self.failures = 0;
        self.events
            .push_back(Event::TaskComplete { id: t.id, result });
        self.issue_ready(now);
    }
}

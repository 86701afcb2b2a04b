//! Handling of target PDUs: login responses (RFC 7143 §11.13, §6.5
//! continuation), SCSI Response (§11.4), Data-In (§11.7), R2T (§11.8),
//! NOP-In (§11.19), Logout Response (§11.15), Async (§11.9), Reject (§11.17).

use alloc::vec::Vec;

use super::{Event, Phase, Session, MAX_LOGIN_ROUNDS};
use crate::error::{Error, Result};
use crate::iscsi::bhs::RESERVED_TAG;
use crate::iscsi::pdu::{LoginResponse, NopIn, NopOut, Pdu, Stage};
use crate::iscsi::text::TextPairs;

impl Session {
    pub(super) fn handle(&mut self, pdu: Pdu, now: u64) -> Result<()> {
        if let Phase::Login { .. } = self.phase {
            return match pdu {
                Pdu::LoginResponse(r) => self.login_response(r, now),
                Pdu::Reject(r) => Err(Error::Rejected { reason: r.reason }),
                _ => Err(Error::Protocol("non-login PDU during login")),
            };
        }
        match pdu {
            Pdu::NopIn(n) => self.nop_in(n),
            Pdu::ScsiResponse(r) => {
                self.update_sn(&r.sn);
                self.ack_stat(r.sn.stat_sn);
                let i = self.task_index(r.itt)?;
                let result = self.tasks[i].response(&r)?;
                self.complete(i, Ok(result), now);
                Ok(())
            }
            Pdu::DataIn(d) => {
                self.update_sn(&d.sn);
                let i = self.task_index(d.itt)?;
                if let Some(result) = self.tasks[i].data_in(&d)? {
                    self.ack_stat(d.sn.stat_sn);
                    self.complete(i, Ok(result), now);
                }
                Ok(())
            }
            Pdu::R2t(r) => {
                self.update_sn(&r.sn);
                let i = self.task_index(r.itt)?;
                let mut out = Vec::new();
                self.tasks[i].answer_r2t(&r, self.exp_stat_sn, &self.params, &mut out)?;
                for p in out {
                    self.push(p);
                }
                Ok(())
            }
            Pdu::LogoutResponse(l) => {
                self.update_sn(&l.sn);
                self.ack_stat(l.sn.stat_sn);
                match self.phase {
                    Phase::LoggingOut { itt, .. } if itt == l.itt => {
                        self.phase = Phase::LoggedOut;
                        self.events.push_back(Event::LoggedOut(Ok(l.response)));
                        Ok(())
                    }
                    _ => Err(Error::Protocol("unexpected Logout Response")),
                }
            }
            Pdu::AsyncMessage(a) => {
                self.update_sn(&a.sn);
                self.events.push_back(Event::Async(a));
                Ok(())
            }
            Pdu::Reject(r) => {
                self.update_sn(&r.sn);
                match self.task_index(r.rejected_itt()) {
                    Ok(i) => self.complete(i, Err(Error::Rejected { reason: r.reason }), now),
                    // A rejected NOP-Out or Data-Out: surfaced, the
                    // connection stays (§11.17.1; a task times out if it
                    // never completes).
                    Err(_) => self.events.push_back(Event::Rejected {
                        reason: r.reason,
                        itt: r.rejected_itt(),
                    }),
                }
                Ok(())
            }
            Pdu::TextResponse(t) => {
                self.update_sn(&t.sn);
                self.ack_stat(t.sn.stat_sn);
                Ok(()) // we send no Text Requests in full feature phase
            }
            _ => Err(Error::Protocol("initiator PDU received from target")),
        }
    }

    fn nop_in(&mut self, n: NopIn) -> Result<()> {
        self.update_sn(&n.sn);
        if n.itt != RESERVED_TAG {
            self.ack_stat(n.sn.stat_sn);
            if self.ping.is_some_and(|(itt, _)| itt == n.itt) {
                self.ping = None;
            }
        }
        if n.ttt != RESERVED_TAG && self.phase == Phase::FullFeature {
            // Target ping: answer with the same TTT, LUN and data (§11.18.4);
            // not once our Logout Request is out (the target may close).
            self.push(Pdu::NopOut(NopOut {
                immediate: true,
                lun: n.lun,
                itt: RESERVED_TAG,
                ttt: n.ttt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: n.data,
            }));
        }
        Ok(())
    }

    fn login_response(&mut self, r: LoginResponse, now: u64) -> Result<()> {
        let Phase::Login {
            stage,
            itt,
            deadline,
            mut text,
            rounds,
        } = self.phase.clone()
        else {
            return Err(Error::Protocol("login response outside login"));
        };
        if r.itt != itt {
            return Err(Error::Protocol("login response with a foreign ITT"));
        }
        if r.status_class != 0 {
            return Err(Error::LoginRejected {
                class: r.status_class,
                detail: r.status_detail,
            });
        }
        if r.csg != stage {
            return Err(Error::Protocol("login response for another stage"));
        }
        if rounds >= MAX_LOGIN_ROUNDS {
            return Err(Error::Protocol("login does not converge"));
        }
        self.exp_stat_sn = r.sn.stat_sn.wrapping_add(1);
        self.exp_cmd_sn = r.sn.exp_cmd_sn;
        self.max_cmd_sn = r.sn.max_cmd_sn;
        text.extend_from_slice(&r.data);
        if text.len() > 65536 {
            return Err(Error::MalformedText("login text too long"));
        }
        let set = |s: &mut Session, stage, text| {
            s.phase = Phase::Login {
                stage,
                itt,
                deadline,
                text,
                rounds: rounds + 1,
            };
        };
        if r.cont {
            // More text follows: ask for it with an empty request (§6.5).
            set(self, stage, text);
            self.send_login(stage, stage, false, TextPairs::new());
            return Ok(());
        }
        let answers = TextPairs::decode(&text)?;
        let replies = self.params.apply(&self.cfg.offer, &answers)?;
        if r.transit && r.nsg == Stage::FullFeature {
            self.tsih = r.tsih;
            self.failures = 0;
            self.phase = Phase::FullFeature;
            self.decoder
                .set_max_data(self.params.max_recv_data_segment_length as usize);
            self.events.push_back(Event::LoggedIn { tsih: r.tsih });
            self.issue_ready(now);
        } else if r.transit && r.nsg == Stage::Operational {
            set(self, Stage::Operational, Vec::new());
            let keys = self.cfg.offer.operational_keys();
            self.send_login(Stage::Operational, Stage::FullFeature, true, keys);
        } else {
            // The target stays in this stage: answer what it offered.
            set(self, stage, Vec::new());
            let nsg = if stage == Stage::Security {
                Stage::Operational
            } else {
                Stage::FullFeature
            };
            self.send_login(stage, nsg, true, replies);
        }
        Ok(())
    }
}

//! Target-to-initiator PDUs (RFC 7143 §11.4 SCSI Response, §11.7.2 Data-In,
//! §11.8 R2T, §11.9 Asynchronous Message, §11.11 Text Response, §11.13
//! Login Response, §11.15 Logout Response, §11.17 Reject, §11.19 NOP-In).

use alloc::vec::Vec;

use super::request::{login_flags, parse_login_flags};
use super::{check_no_data, Stage};
use crate::error::{Error, Result};
use crate::iscsi::bhs::{opcode, Bhs, BHS_LEN, FINAL};

/// Splits `SenseLength (2 bytes) | sense | rest` (§11.4.7.2).
fn split_sense(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    if data.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if data.len() < 2 {
        return Err(Error::MalformedPdu("data segment shorter than SenseLength"));
    }
    let n = u16::from_be_bytes([data[0], data[1]]) as usize;
    let sense = data
        .get(2..2 + n)
        .ok_or(Error::MalformedPdu("SenseLength beyond data segment"))?;
    Ok((sense.to_vec(), data[2 + n..].to_vec()))
}

fn join_sense(sense: &[u8], rest: &[u8]) -> Vec<u8> {
    if sense.is_empty() && rest.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::with_capacity(2 + sense.len() + rest.len());
    v.extend_from_slice(&(sense.len() as u16).to_be_bytes());
    v.extend_from_slice(sense);
    v.extend_from_slice(rest);
    v
}

/// Sequence numbers every target response carries at bytes 24..36.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusSn {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl StatusSn {
    fn read(b: &Bhs) -> Self {
        StatusSn {
            stat_sn: b.u32_at(24),
            exp_cmd_sn: b.u32_at(28),
            max_cmd_sn: b.u32_at(32),
        }
    }
    fn write(&self, b: &mut Bhs) {
        b.set_u32(24, self.stat_sn);
        b.set_u32(28, self.exp_cmd_sn);
        b.set_u32(32, self.max_cmd_sn);
    }
}

fn require_final(b: &Bhs, what: &'static str) -> Result<()> {
    if b.flags() & FINAL == 0 {
        return Err(Error::MalformedPdu(what));
    }
    Ok(())
}

/// NOP-In (§11.19): a reply to our NOP-Out, or a target ping
/// (`ttt != RESERVED_TAG`) that must be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub sn: StatusSn,
    pub data: Vec<u8>,
}

impl NopIn {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::NOP_IN, false);
        b.set_flags(FINAL);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        self.sn.write(&mut b);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        require_final(b, "NOP-In without F bit")?;
        Ok(NopIn {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: StatusSn::read(b),
            data: data.to_vec(),
        })
    }
}

/// Residual flags of SCSI Response and Data-In (§11.4.5): overflow `O`,
/// underflow `U`, exclusive.
fn residual_flags(f: u8) -> Result<(bool, bool)> {
    let (o, u) = (f & 0x04 != 0, f & 0x02 != 0);
    if o && u {
        return Err(Error::MalformedPdu(
            "residual overflow and underflow both set",
        ));
    }
    Ok((o, u))
}

/// SCSI Response (§11.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response (§11.4.3): 0 = command completed at target.
    pub response: u8,
    /// SCSI status (§11.4.2), meaningful when `response == 0`.
    pub status: u8,
    pub itt: u32,
    pub sn: StatusSn,
    pub exp_data_sn: u32,
    pub residual: u32,
    /// Raw sense bytes (SPC-4 §4.5), without iSCSI's SenseLength prefix.
    pub sense: Vec<u8>,
    pub response_data: Vec<u8>,
}

impl ScsiResponse {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::SCSI_RESPONSE, false);
        b.set_flags(
            FINAL | if self.overflow { 0x04 } else { 0 } | if self.underflow { 0x02 } else { 0 },
        );
        b.0[2] = self.response;
        b.0[3] = self.status;
        b.set_u32(16, self.itt);
        b.set_u32(20, 0);
        self.sn.write(&mut b);
        b.set_u32(36, self.exp_data_sn);
        b.set_u32(44, self.residual);
        b
    }
    pub(super) fn data(&self) -> Vec<u8> {
        join_sense(&self.sense, &self.response_data)
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        require_final(b, "SCSI Response without F bit")?;
        let f = b.flags();
        if f & 0x18 == 0x18 {
            return Err(Error::MalformedPdu("bidi overflow and underflow both set"));
        }
        let (overflow, underflow) = residual_flags(f)?;
        let (sense, response_data) = split_sense(data)?;
        Ok(ScsiResponse {
            overflow,
            underflow,
            response: b.0[2],
            status: b.0[3],
            itt: b.itt(),
            sn: StatusSn::read(b),
            exp_data_sn: b.u32_at(36),
            residual: b.u32_at(44),
            sense,
            response_data,
        })
    }
}

/// Login Response (§11.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub sn: StatusSn,
    /// Status-Class (§11.13.5): 0 success, 1 redirect, 2 initiator error,
    /// 3 target error.
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
}

impl LoginResponse {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::LOGIN_RESPONSE, false);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.0[2] = self.version_max;
        b.0[3] = self.version_active;
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_u32(16, self.itt);
        self.sn.write(&mut b);
        b.0[36] = self.status_class;
        b.0[37] = self.status_detail;
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let (transit, cont, csg, nsg) = parse_login_flags(b.flags())?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Ok(LoginResponse {
            transit,
            cont,
            csg,
            nsg,
            version_max: b.0[2],
            version_active: b.0[3],
            isid,
            tsih: b.u16_at(14),
            itt: b.itt(),
            sn: StatusSn::read(b),
            status_class: b.0[36],
            status_detail: b.0[37],
            data: data.to_vec(),
        })
    }
}

/// Text Response (§11.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub sn: StatusSn,
    pub data: Vec<u8>,
}

impl TextResponse {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::TEXT_RESPONSE, false);
        b.set_flags(if self.final_bit { FINAL } else { 0 } | if self.cont { 0x40 } else { 0 });
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        self.sn.write(&mut b);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let f = b.flags();
        if f & FINAL != 0 && f & 0x40 != 0 {
            return Err(Error::MalformedPdu("text F and C both set"));
        }
        Ok(TextResponse {
            final_bit: f & FINAL != 0,
            cont: f & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: StatusSn::read(b),
            data: data.to_vec(),
        })
    }
}

/// SCSI Data-In (§11.7). With the S bit the PDU also carries the command's
/// status (§11.7.3) and no SCSI Response follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataIn {
    pub final_bit: bool,
    /// A: the target asks for a DataACK SNACK (only at ErrorRecoveryLevel>0).
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// SCSI status when the S bit is set.
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub sn: StatusSn,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
    pub data: Vec<u8>,
}

impl DataIn {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::DATA_IN, false);
        let mut f = 0;
        for (on, bit) in [
            (self.final_bit, FINAL),
            (self.ack, 0x40),
            (self.overflow, 0x04),
            (self.underflow, 0x02),
            (self.status.is_some(), 0x01),
        ] {
            if on {
                f |= bit;
            }
        }
        b.set_flags(f);
        b.0[3] = self.status.unwrap_or(0);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        self.sn.write(&mut b);
        b.set_u32(36, self.data_sn);
        b.set_u32(40, self.buffer_offset);
        b.set_u32(44, self.residual);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let f = b.flags();
        let has_status = f & 0x01 != 0;
        if has_status && f & FINAL == 0 {
            return Err(Error::MalformedPdu("Data-In S bit without F bit"));
        }
        let (overflow, underflow) = residual_flags(f)?;
        Ok(DataIn {
            final_bit: f & FINAL != 0,
            ack: f & 0x40 != 0,
            overflow,
            underflow,
            status: has_status.then_some(b.0[3]),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: StatusSn::read(b),
            data_sn: b.u32_at(36),
            buffer_offset: b.u32_at(40),
            residual: b.u32_at(44),
            data: data.to_vec(),
        })
    }
}

/// Ready To Transfer (§11.8): the target solicits `desired_len` bytes of
/// Data-Out at `buffer_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub sn: StatusSn,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

impl R2t {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::R2T, false);
        b.set_flags(FINAL);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        self.sn.write(&mut b);
        b.set_u32(36, self.r2t_sn);
        b.set_u32(40, self.buffer_offset);
        b.set_u32(44, self.desired_len);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        require_final(b, "R2T without F bit")?;
        check_no_data(data, "R2T with data")?;
        let desired_len = b.u32_at(44);
        if desired_len == 0 {
            return Err(Error::MalformedPdu("R2T desired length 0"));
        }
        Ok(R2t {
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            sn: StatusSn::read(b),
            r2t_sn: b.u32_at(36),
            buffer_offset: b.u32_at(40),
            desired_len,
        })
    }
}

/// Asynchronous Message (§11.9), surfaced to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub sn: StatusSn,
    /// AsyncEvent (§11.9.1): 0 SCSI event, 1 logout request, 2 drop
    /// connection, 3 drop session, 4 negotiation request, 5 task
    /// termination, 255 vendor.
    pub event: u8,
    pub vcode: u8,
    pub params: [u16; 3],
    pub sense: Vec<u8>,
    pub event_data: Vec<u8>,
}

impl AsyncMessage {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::ASYNC_MESSAGE, false);
        b.set_flags(FINAL);
        b.set_u64(8, self.lun);
        b.set_u32(16, crate::iscsi::bhs::RESERVED_TAG);
        self.sn.write(&mut b);
        b.0[36] = self.event;
        b.0[37] = self.vcode;
        for (i, p) in self.params.iter().enumerate() {
            b.set_u16(38 + 2 * i, *p);
        }
        b
    }
    pub(super) fn data(&self) -> Vec<u8> {
        join_sense(&self.sense, &self.event_data)
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let (sense, event_data) = split_sense(data)?;
        Ok(AsyncMessage {
            lun: b.lun(),
            sn: StatusSn::read(b),
            event: b.0[36],
            vcode: b.0[37],
            params: [b.u16_at(38), b.u16_at(40), b.u16_at(42)],
            sense,
            event_data,
        })
    }
}

/// Logout Response (§11.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery unsupported,
    /// 3 cleanup failed.
    pub response: u8,
    pub itt: u32,
    pub sn: StatusSn,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::LOGOUT_RESPONSE, false);
        b.set_flags(FINAL);
        b.0[2] = self.response;
        b.set_u32(16, self.itt);
        self.sn.write(&mut b);
        b.set_u16(40, self.time2wait);
        b.set_u16(42, self.time2retain);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        check_no_data(data, "Logout Response with data")?;
        Ok(LogoutResponse {
            response: b.0[2],
            itt: b.itt(),
            sn: StatusSn::read(b),
            time2wait: b.u16_at(40),
            time2retain: b.u16_at(42),
        })
    }
}

/// Reject (§11.17): carries the header of the rejected PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Reason (§11.17.1), e.g. 0x04 protocol error, 0x09 invalid PDU field.
    pub reason: u8,
    pub sn: StatusSn,
    pub data_sn: u32,
    pub header: [u8; BHS_LEN],
}

impl Reject {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::REJECT, false);
        b.set_flags(FINAL);
        b.0[2] = self.reason;
        b.set_u32(16, crate::iscsi::bhs::RESERVED_TAG);
        self.sn.write(&mut b);
        b.set_u32(36, self.data_sn);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let head = data
            .get(..BHS_LEN)
            .ok_or(Error::MalformedPdu("Reject without the rejected header"))?;
        let mut header = [0u8; BHS_LEN];
        header.copy_from_slice(head);
        Ok(Reject {
            reason: b.0[2],
            sn: StatusSn::read(b),
            data_sn: b.u32_at(36),
            header,
        })
    }
    /// ITT of the rejected PDU.
    pub fn rejected_itt(&self) -> u32 {
        u32::from_be_bytes([
            self.header[16],
            self.header[17],
            self.header[18],
            self.header[19],
        ])
    }
}

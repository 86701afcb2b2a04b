//! Typed iSCSI PDUs and their pure encode/decode (RFC 7143 §11).
//!
//! [`Pdu::decode`] takes exactly one complete PDU (as framed by
//! [`crate::iscsi::bhs::wire_len`]); [`Pdu::encode`] appends one to a buffer.
//! Both directions are implemented for every PDU so tests can play target.

pub mod request;
pub mod response;

use alloc::vec::Vec;

pub use request::{DataOut, LoginRequest, LogoutRequest, NopOut, ScsiCommand, TextRequest};
pub use response::{
    AsyncMessage, DataIn, LoginResponse, LogoutResponse, NopIn, R2t, Reject, ScsiResponse,
    StatusSn, TextResponse,
};

use crate::error::{Error, Result};
use crate::iscsi::bhs::{opcode, split_pdu, write_pdu};

/// Login stages (RFC 7143 §11.12.3, CSG/NSG); value 2 is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    pub(crate) fn from_bits(v: u8) -> Result<Self> {
        match v {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(Error::MalformedPdu("reserved login stage 2")),
        }
    }
}

pub(crate) fn check_no_data(data: &[u8], what: &'static str) -> Result<()> {
    if data.is_empty() {
        Ok(())
    } else {
        Err(Error::MalformedPdu(what))
    }
}

/// One iSCSI PDU of the subset this initiator speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

impl Pdu {
    /// Appends the wire form of `self` (BHS, data, padding) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let empty: &[u8] = &[];
        let owned;
        let (bhs, data) = match self {
            Pdu::NopOut(p) => (p.to_bhs(), &p.data[..]),
            Pdu::ScsiCommand(p) => (p.to_bhs(), &p.data[..]),
            Pdu::LoginRequest(p) => (p.to_bhs(), &p.data[..]),
            Pdu::TextRequest(p) => (p.to_bhs(), &p.data[..]),
            Pdu::DataOut(p) => (p.to_bhs(), &p.data[..]),
            Pdu::LogoutRequest(p) => (p.to_bhs(), empty),
            Pdu::NopIn(p) => (p.to_bhs(), &p.data[..]),
            Pdu::ScsiResponse(p) => {
                owned = p.data();
                (p.to_bhs(), &owned[..])
            }
            Pdu::LoginResponse(p) => (p.to_bhs(), &p.data[..]),
            Pdu::TextResponse(p) => (p.to_bhs(), &p.data[..]),
            Pdu::DataIn(p) => (p.to_bhs(), &p.data[..]),
            Pdu::LogoutResponse(p) => (p.to_bhs(), empty),
            Pdu::R2t(p) => (p.to_bhs(), empty),
            Pdu::AsyncMessage(p) => {
                owned = p.data();
                (p.to_bhs(), &owned[..])
            }
            Pdu::Reject(p) => (p.to_bhs(), &p.header[..]),
        };
        write_pdu(out, bhs, data)
    }

    /// Decodes one complete PDU; `max_data` bounds the data segment.
    pub fn decode(bytes: &[u8], max_data: usize) -> Result<Pdu> {
        let (b, data) = split_pdu(bytes, max_data)?;
        let b = &b;
        Ok(match b.opcode() {
            opcode::NOP_OUT => Pdu::NopOut(NopOut::from_bhs(b, data)?),
            opcode::SCSI_COMMAND => Pdu::ScsiCommand(ScsiCommand::from_bhs(b, data)?),
            opcode::LOGIN_REQUEST => Pdu::LoginRequest(LoginRequest::from_bhs(b, data)?),
            opcode::TEXT_REQUEST => Pdu::TextRequest(TextRequest::from_bhs(b, data)?),
            opcode::DATA_OUT => Pdu::DataOut(DataOut::from_bhs(b, data)?),
            opcode::LOGOUT_REQUEST => Pdu::LogoutRequest(LogoutRequest::from_bhs(b, data)?),
            opcode::NOP_IN => Pdu::NopIn(NopIn::from_bhs(b, data)?),
            opcode::SCSI_RESPONSE => Pdu::ScsiResponse(ScsiResponse::from_bhs(b, data)?),
            opcode::LOGIN_RESPONSE => Pdu::LoginResponse(LoginResponse::from_bhs(b, data)?),
            opcode::TEXT_RESPONSE => Pdu::TextResponse(TextResponse::from_bhs(b, data)?),
            opcode::DATA_IN => Pdu::DataIn(DataIn::from_bhs(b, data)?),
            opcode::LOGOUT_RESPONSE => Pdu::LogoutResponse(LogoutResponse::from_bhs(b, data)?),
            opcode::R2T => Pdu::R2t(R2t::from_bhs(b, data)?),
            opcode::ASYNC_MESSAGE => Pdu::AsyncMessage(AsyncMessage::from_bhs(b, data)?),
            opcode::REJECT => Pdu::Reject(Reject::from_bhs(b, data)?),
            op => return Err(Error::UnsupportedOpcode(op)),
        })
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests;

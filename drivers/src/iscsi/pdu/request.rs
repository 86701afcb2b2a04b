//! Initiator-to-target PDUs (RFC 7143 §11.3 SCSI Command, §11.7.1 Data-Out,
//! §11.10 Text Request, §11.12 Login Request, §11.14 Logout Request,
//! §11.18 NOP-Out).

use alloc::vec::Vec;

use super::{check_no_data, Stage};
use crate::error::{Error, Result};
use crate::iscsi::bhs::{opcode, Bhs, FINAL};

/// NOP-Out (§11.18): a ping, or the answer to a target's NOP-In.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    /// `RESERVED_TAG` when answering a NOP-In (no reply wanted).
    pub itt: u32,
    /// The NOP-In's TTT when answering one, else `RESERVED_TAG`.
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl NopOut {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::NOP_OUT, self.immediate);
        b.set_flags(FINAL);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        Ok(NopOut {
            immediate: b.immediate(),
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            data: data.to_vec(),
        })
    }
}

/// SCSI Command (§11.3) with an up-to-16-byte CDB and optional
/// immediate data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows (§11.3.1.1).
    pub final_bit: bool,
    /// R: data flows target to initiator.
    pub read: bool,
    /// W: data flows initiator to target.
    pub write: bool,
    /// Task attribute (§11.3.1.3); 1 = SIMPLE.
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
    /// Immediate data (§10.4.2 of RFC 7143's data-out rules).
    pub data: Vec<u8>,
}

impl ScsiCommand {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::SCSI_COMMAND, self.immediate);
        let mut f = self.attr & 0x07;
        if self.final_bit {
            f |= FINAL;
        }
        if self.read {
            f |= 0x40;
        }
        if self.write {
            f |= 0x20;
        }
        b.set_flags(f);
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.expected_len);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b.0[32..48].copy_from_slice(&self.cdb);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let f = b.flags();
        if !data.is_empty() && f & 0x20 == 0 {
            return Err(Error::MalformedPdu("SCSI Command with data but no W bit"));
        }
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&b.0[32..48]);
        Ok(ScsiCommand {
            immediate: b.immediate(),
            final_bit: f & FINAL != 0,
            read: f & 0x40 != 0,
            write: f & 0x20 != 0,
            attr: f & 0x07,
            lun: b.lun(),
            itt: b.itt(),
            expected_len: b.u32_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            cdb,
            data: data.to_vec(),
        })
    }
}

/// Login Request (§11.12); always immediate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator is ready to move to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// `key=value\0` text (see [`crate::iscsi::text`]).
    pub data: Vec<u8>,
}

/// Encodes T, C, CSG and NSG of a Login Request/Response byte 1.
pub(super) fn login_flags(transit: bool, cont: bool, csg: Stage, nsg: Stage) -> u8 {
    let mut f = (csg as u8) << 2;
    if transit {
        f |= 0x80 | nsg as u8;
    }
    if cont {
        f |= 0x40;
    }
    f
}

/// Decodes byte 1 of a Login PDU (§11.12.1-4): T and C exclusive, stage 2
/// reserved, NSG only meaningful with T and never backwards.
pub(super) fn parse_login_flags(f: u8) -> Result<(bool, bool, Stage, Stage)> {
    let transit = f & 0x80 != 0;
    let cont = f & 0x40 != 0;
    if transit && cont {
        return Err(Error::MalformedPdu("login T and C both set"));
    }
    let csg = Stage::from_bits((f >> 2) & 3)?;
    if csg == Stage::FullFeature {
        return Err(Error::MalformedPdu("login CSG is full feature phase"));
    }
    let nsg = if transit {
        let nsg = Stage::from_bits(f & 3)?;
        if (nsg as u8) <= (csg as u8) {
            return Err(Error::MalformedPdu("login NSG not after CSG"));
        }
        nsg
    } else {
        csg
    };
    Ok((transit, cont, csg, nsg))
}

impl LoginRequest {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::LOGIN_REQUEST, true);
        b.set_flags(login_flags(self.transit, self.cont, self.csg, self.nsg));
        b.0[2] = self.version_max;
        b.0[3] = self.version_min;
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, self.tsih);
        b.set_u32(16, self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let (transit, cont, csg, nsg) = parse_login_flags(b.flags())?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        Ok(LoginRequest {
            transit,
            cont,
            csg,
            nsg,
            version_max: b.0[2],
            version_min: b.0[3],
            isid,
            tsih: b.u16_at(14),
            itt: b.itt(),
            cid: b.u16_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            data: data.to_vec(),
        })
    }
}

/// Text Request (§11.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl TextRequest {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::TEXT_REQUEST, self.immediate);
        b.set_flags(if self.final_bit { FINAL } else { 0 } | if self.cont { 0x40 } else { 0 });
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        let f = b.flags();
        if f & FINAL != 0 && f & 0x40 != 0 {
            return Err(Error::MalformedPdu("text F and C both set"));
        }
        Ok(TextRequest {
            immediate: b.immediate(),
            final_bit: f & FINAL != 0,
            cont: f & 0x40 != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
            data: data.to_vec(),
        })
    }
}

/// SCSI Data-Out (§11.7), unsolicited (`ttt == RESERVED_TAG`) or answering
/// an R2T.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Vec<u8>,
}

impl DataOut {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::DATA_OUT, false);
        b.set_flags(if self.final_bit { FINAL } else { 0 });
        b.set_u64(8, self.lun);
        b.set_u32(16, self.itt);
        b.set_u32(20, self.ttt);
        b.set_u32(28, self.exp_stat_sn);
        b.set_u32(36, self.data_sn);
        b.set_u32(40, self.buffer_offset);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        Ok(DataOut {
            final_bit: b.flags() & FINAL != 0,
            lun: b.lun(),
            itt: b.itt(),
            ttt: b.u32_at(20),
            exp_stat_sn: b.u32_at(28),
            data_sn: b.u32_at(36),
            buffer_offset: b.u32_at(40),
            data: data.to_vec(),
        })
    }
}

/// Logout Request (§11.14). Reason 0 closes the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub(super) fn to_bhs(&self) -> Bhs {
        let mut b = Bhs::new(opcode::LOGOUT_REQUEST, self.immediate);
        b.set_flags(FINAL | (self.reason & 0x7f));
        b.set_u32(16, self.itt);
        b.set_u16(20, self.cid);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b
    }
    pub(super) fn from_bhs(b: &Bhs, data: &[u8]) -> Result<Self> {
        check_no_data(data, "Logout Request with data")?;
        Ok(LogoutRequest {
            immediate: b.immediate(),
            reason: b.flags() & 0x7f,
            itt: b.itt(),
            cid: b.u16_at(20),
            cmd_sn: b.u32_at(24),
            exp_stat_sn: b.u32_at(28),
        })
    }
}

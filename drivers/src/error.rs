//! The one error type of the `drivers` crate.
//!
//! Every malformed input (an iSCSI PDU, a text key, sense data, an
//! arbitration record) maps to a variant here; no decoder panics.

use core::fmt;

use crate::scsi::Sense;

/// What went wrong in a driver, a codec or the arbitration protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the structure needs (`need` bytes, `have` bytes).
    Truncated { need: usize, have: usize },
    /// An iSCSI opcode this initiator does not know or does not accept.
    UnsupportedOpcode(u8),
    /// A data segment (or AHS + data) longer than the negotiated maximum.
    DataSegmentTooLong { len: usize, max: usize },
    /// A PDU field with a value RFC 7143 forbids (which field, what value).
    MalformedPdu(&'static str),
    /// Login/Text data that is not `key=value\0` UTF-8 (RFC 7143 §6).
    MalformedText(&'static str),
    /// A negotiated key the target answered with a value we cannot accept.
    Negotiation(&'static str),
    /// The target refused the login (RFC 7143 §11.13.5 status class/detail).
    LoginRejected { class: u8, detail: u8 },
    /// The target sent a PDU that is legal on the wire but not in this state.
    Protocol(&'static str),
    /// The target rejected one of our PDUs (RFC 7143 §11.17 reason code).
    Rejected { reason: u8 },
    /// The transport (TCP) was closed or failed.
    ConnectionClosed,
    /// A login, task or keepalive deadline passed.
    Timeout,
    /// Reconnect attempts were exhausted: the storage cannot be reached.
    StorageUnreachable,
    /// The session is not logged in (or is logging out).
    NotLoggedIn,
    /// Too many tasks are outstanding.
    TooManyTasks,
    /// Sense data that does not parse (SPC-4 §4.5).
    MalformedSense(&'static str),
    /// A SCSI command completed with a non-GOOD status.
    Scsi { status: u8, sense: Option<Sense> },
    /// COMPARE AND WRITE found different data (SBC-3 §5.2: sense key
    /// MISCOMPARE, ASC 0x1D MISCOMPARE DURING VERIFY OPERATION).
    Miscompare,
    /// Status RESERVATION CONFLICT (0x18, SAM-5 §5.3.1): a persistent
    /// reservation refused the command to this I_T nexus (for a write under
    /// Write Exclusive – Registrants Only: the nexus is not registered,
    /// e.g. because another node preempted its key).
    ReservationConflict,
    /// The LUN is reserved with a type fencing cannot work with (SPC-4
    /// §6.16.2 table 225 type, holder's key).
    ForeignReservation { key: u64, ty: u8 },
    /// A PREEMPT answered GOOD but READ KEYS shows the preempted key still
    /// registered or ours gone (istgt 0.4 corrupts its registration table
    /// when it removes an entry that is not the last one).
    FenceIneffective(&'static str),
    /// The device (or a fake of it) does not implement this operation.
    Unsupported(&'static str),
    /// A response (e.g. INQUIRY, READ CAPACITY) too short or inconsistent.
    MalformedResponse(&'static str),
    /// The arbitration block does not hold a valid record (magic/CRC/version).
    CorruptRecord(&'static str),
    /// A caller-supplied argument is out of range (buffer size, LBA, ...).
    InvalidArgument(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            Error::UnsupportedOpcode(op) => write!(f, "unsupported iSCSI opcode {op:#04x}"),
            Error::DataSegmentTooLong { len, max } => {
                write!(f, "data segment of {len} bytes exceeds maximum {max}")
            }
            Error::MalformedPdu(what) => write!(f, "malformed PDU: {what}"),
            Error::MalformedText(what) => write!(f, "malformed text keys: {what}"),
            Error::Negotiation(what) => write!(f, "negotiation failed: {what}"),
            Error::LoginRejected { class, detail } => {
                write!(
                    f,
                    "login rejected: status class {class:#04x} detail {detail:#04x}"
                )
            }
            Error::Protocol(what) => write!(f, "protocol error: {what}"),
            Error::Rejected { reason } => write!(f, "target rejected PDU: reason {reason:#04x}"),
            Error::ConnectionClosed => write!(f, "connection closed"),
            Error::Timeout => write!(f, "timed out"),
            Error::StorageUnreachable => write!(f, "storage unreachable"),
            Error::NotLoggedIn => write!(f, "session not logged in"),
            Error::TooManyTasks => write!(f, "too many outstanding tasks"),
            Error::MalformedSense(what) => write!(f, "malformed sense data: {what}"),
            Error::Scsi { status, sense } => match sense {
                Some(s) => write!(f, "SCSI status {status:#04x}, {s}"),
                None => write!(f, "SCSI status {status:#04x}"),
            },
            Error::Miscompare => write!(f, "COMPARE AND WRITE miscompare"),
            Error::ReservationConflict => write!(f, "SCSI status 0x18 RESERVATION CONFLICT"),
            Error::ForeignReservation { key, ty } => write!(
                f,
                "LUN reserved with type {ty:#x} by key {key:#018x}, not Write Exclusive - Registrants Only"
            ),
            Error::FenceIneffective(what) => write!(f, "fencing did not take effect: {what}"),
            Error::Unsupported(what) => write!(f, "not supported: {what}"),
            Error::MalformedResponse(what) => write!(f, "malformed SCSI response: {what}"),
            Error::CorruptRecord(what) => write!(f, "corrupt arbitration record: {what}"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

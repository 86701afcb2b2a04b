//! The one error enum of the `ft` crate (STYLE.md: one error enum per crate).
//!
//! Every malformed input gets a clear, defined error (DESIGN.md §1, "Bad
//! input never crashes the hypervisor"): the codec rejects the record, the
//! state machines reset the connection, nothing acknowledged is lost.

use core::fmt;

use crate::arbitration::FlagRecord;

/// Everything that can go wrong in the FT protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FtError {
    /// The first byte of a record is not [`crate::log::RECORD_MAGIC`].
    BadMagic(u8),
    /// The record's format version is not one this build understands.
    UnsupportedVersion(u8),
    /// The record kind byte names no known [`crate::log::LogEntry`].
    UnknownKind(u8),
    /// Reserved header bits were set.
    ReservedBitsSet(u8),
    /// The declared payload length exceeds [`crate::log::MAX_PAYLOAD`].
    TooLarge(u32),
    /// The CRC32C over header and payload does not match.
    CrcMismatch { stored: u32, computed: u32 },
    /// The payload of a known kind has the wrong shape.
    BadPayload { kind: u8, reason: &'static str },
    /// A buffer ended before a whole record was present.
    Truncated { needed: usize, have: usize },
    /// A stream decoder already failed; the connection must be reset.
    StreamPoisoned,
    /// A log record arrived out of order (gap in the sequence numbers).
    OutOfOrder { expected: u64, got: u64 },
    /// The session hello names another cluster, guest, generation or version.
    SessionMismatch(&'static str),
    /// The primary's Hello names another machine (`field` of
    /// [`crate::log::MachineId`]): the primary's value, this node's.
    MachineMismatch {
        field: &'static str,
        primary: u64,
        ours: u64,
    },
    /// A record arrived that is not valid in the receiver's current state.
    UnexpectedEntry { kind: u8 },
    /// The peer acknowledged a position it was never sent.
    AckBeyondLog { acked: u64, appended: u64 },
    /// Replay found the guest somewhere the log says it cannot be.
    Divergence { seq: u64, reason: &'static str },
    /// The shared storage could not be reached (no one may go live).
    StorageUnreachable,
    /// COMPARE AND WRITE miscompared: someone else holds the flag.
    Miscompare { current: FlagRecord },
    /// The flag block on the shared storage is not a valid record.
    FlagCorrupt(&'static str),
    /// The transport has no connection.
    Disconnected,
    /// The generation given for a session is not the one on the shared
    /// LUN: the pair would run under a stale flag and could never fail over.
    StaleGeneration {
        configured: u64,
        lun: u64,
        owner: u64,
    },
    /// The shared storage refused this node: another node preempted its
    /// reservation (SCSI RESERVATION CONFLICT).
    Fenced,
    /// The shared storage cannot fence (no persistent reservations).
    FencingUnsupported,
    /// The operation is not valid in the state machine's current role.
    WrongState(&'static str),
    /// A log exported as text (`FTLOG` lines) is damaged; `line` 1.. (0:
    /// the whole text).
    BadExport { line: usize, reason: &'static str },
}

impl fmt::Display for FtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(b) => write!(f, "bad record magic {b:#04x}"),
            Self::BadExport { line: 0, reason } => write!(f, "exported log: {reason}"),
            Self::BadExport { line, reason } => write!(f, "exported log, line {line}: {reason}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported log format version {v}"),
            Self::UnknownKind(k) => write!(f, "unknown log entry kind {k:#04x}"),
            Self::ReservedBitsSet(b) => write!(f, "reserved header bits set: {b:#04x}"),
            Self::TooLarge(n) => write!(f, "record payload of {n} bytes exceeds the limit"),
            Self::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            Self::BadPayload { kind, reason } => {
                write!(f, "malformed payload for kind {kind:#04x}: {reason}")
            }
            Self::Truncated { needed, have } => {
                write!(f, "truncated record: need {needed} bytes, have {have}")
            }
            Self::StreamPoisoned => write!(f, "log stream already failed; reset the connection"),
            Self::OutOfOrder { expected, got } => {
                write!(
                    f,
                    "log record out of order: expected seq {expected}, got {got}"
                )
            }
            Self::SessionMismatch(what) => write!(f, "session hello mismatch: {what}"),
            Self::MachineMismatch {
                field,
                primary,
                ours,
            } => write!(
                f,
                "session hello mismatch: machine {field}: the primary's is {primary} ({primary:#x}), ours {ours} ({ours:#x})"
            ),
            Self::UnexpectedEntry { kind } => write!(f, "unexpected entry kind {kind:#04x}"),
            Self::AckBeyondLog { acked, appended } => {
                write!(f, "ack {acked} beyond last appended seq {appended}")
            }
            Self::Divergence { seq, reason } => write!(f, "divergence at log seq {seq}: {reason}"),
            Self::StorageUnreachable => write!(f, "shared storage unreachable"),
            Self::Miscompare { current } => write!(
                f,
                "COMPARE AND WRITE miscompare: flag is generation {} owned by {}",
                current.generation, current.owner.0
            ),
            Self::FlagCorrupt(why) => write!(f, "flag block corrupt: {why}"),
            Self::Disconnected => write!(f, "log channel disconnected"),
            Self::StaleGeneration { configured, lun, owner } => write!(
                f,
                "generation {configured} is not the shared LUN's: its flag is generation {lun} owned by node {owner}"
            ),
            Self::Fenced => write!(f, "fenced: the shared disk refused this node (reservation preempted)"),
            Self::FencingUnsupported => write!(f, "the shared storage cannot fence (no persistent reservations)"),
            Self::WrongState(what) => write!(f, "not valid in this state: {what}"),
        }
    }
}

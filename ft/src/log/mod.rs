//! The log: what the primary ships to the backup over the logging channel
//! (DESIGN.md §1.1–§1.3, §1.6; seeds/002 "Log Entries", seeds/004
//! "When does the primary have to send information to the backup?").
//!
//! A log is a sequence of [`Record`]s. Each record is versioned,
//! length-prefixed, carries a monotonically increasing sequence number and
//! ends with a CRC32C (Castagnoli, `CRC_32_ISCSI`) over header and payload:
//!
//! ```text
//! offset size field
//!      0    1 magic            0xF7
//!      1    1 format version   LOG_FORMAT_VERSION
//!      2    1 kind             LogEntry kind byte
//!      3    1 reserved         must be 0
//!      4    4 payload length   u32 LE, <= MAX_PAYLOAD
//!      8    8 sequence number  u64 LE (0 = connection-scoped Hello)
//!     16    n payload          kind-specific, little-endian, exact length
//!   16+n    4 crc32c           over bytes [0, 16+n)
//! ```
//!
//! Encoding is canonical: a byte string that decodes re-encodes to the same
//! bytes (the fuzz target `ft/fuzz/fuzz_targets/log_codec.rs` checks this).
//! Decoding never panics on arbitrary input; [`StreamDecoder`] accepts bytes
//! in arbitrary TCP-sized chunks.

pub(crate) mod codec;
mod entry;
pub mod export;
mod stream;

pub use codec::{decode_record, encode_record, encoded_len};
pub use entry::{DiskStatus, ExecPoint, GoodbyeReason, LogEntry, MachineId, NonDetSource, Record};
pub use stream::StreamDecoder;

/// First byte of every record.
pub const RECORD_MAGIC: u8 = 0xF7;
/// The record format version this build writes and accepts.
pub const LOG_FORMAT_VERSION: u8 = 3;
/// The FT protocol version announced in [`LogEntry::Hello`].
/// 2: the Hello carries the machine ([`MachineId`]); `Goodbye` has the
/// `StorageLost` reason (a primary stepping down). 3: `acked` in output
/// markers and heartbeats. 4: guest time in interrupt entries. 5: the
/// output's digest in its marker (the backup checks its own outputs).
pub const PROTOCOL_VERSION: u16 = 5;
/// Fixed header bytes before the payload.
pub const HEADER_LEN: usize = 16;
/// CRC trailer bytes after the payload.
pub const TRAILER_LEN: usize = 4;
/// Largest payload accepted (a 1 MiB disk read or a jumbo frame fits).
pub const MAX_PAYLOAD: usize = 1 << 20;

#[cfg(test)]
mod tests;

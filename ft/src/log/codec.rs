//! Record encoding and decoding (layout in the module docs of `log`).
//! Zero-panic on arbitrary bytes: every read is bounds-checked and every
//! length is validated before use (DESIGN.md §1, "Bad input never crashes").

use alloc::vec::Vec;

use crc::{Crc, Table, CRC_32_ISCSI};

use super::entry::{
    DiskStatus, ExecPoint, GoodbyeReason, LogEntry, MachineId, NonDetSource, Record,
};
use super::{HEADER_LEN, LOG_FORMAT_VERSION, MAX_PAYLOAD, RECORD_MAGIC, TRAILER_LEN};
use crate::FtError;

/// CRC32C (Castagnoli), the iSCSI polynomial.
// `static`, not `const`: one table in .rodata, never copied per use.
pub(crate) static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// Appends one encoded record to `out`. Fails only if the payload would
/// exceed [`MAX_PAYLOAD`] (then `out` is left unchanged).
pub fn encode_record(seq: u64, entry: &LogEntry, out: &mut Vec<u8>) -> Result<(), FtError> {
    let start = out.len();
    out.extend_from_slice(&[RECORD_MAGIC, LOG_FORMAT_VERSION, entry.kind(), 0]);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    encode_payload(entry, out);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(FtError::TooLarge(u32::try_from(len).unwrap_or(u32::MAX)));
    }
    // `len <= MAX_PAYLOAD < u32::MAX`, so the cast is lossless.
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = CRC32C.checksum(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The number of bytes [`encode_record`] writes for `entry`.
pub fn encoded_len(entry: &LogEntry) -> usize {
    let mut v = Vec::new();
    encode_payload(entry, &mut v);
    HEADER_LEN + v.len() + TRAILER_LEN
}

fn put_point(out: &mut Vec<u8>, at: &ExecPoint) {
    out.extend_from_slice(&at.counter.to_le_bytes());
    out.extend_from_slice(&at.rip.to_le_bytes());
    out.extend_from_slice(&at.rcx.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn encode_payload(entry: &LogEntry, out: &mut Vec<u8>) {
    match entry {
        LogEntry::Hello {
            cluster_id,
            generation,
            guest_id,
            protocol_version,
            machine,
        } => {
            put_u64(out, *cluster_id);
            put_u64(out, *generation);
            out.extend_from_slice(guest_id);
            out.extend_from_slice(&protocol_version.to_le_bytes());
            out.extend_from_slice(&machine.to_bytes());
        }
        LogEntry::Interrupt {
            at,
            vector,
            guest_time_ns,
        } => {
            put_point(out, at);
            out.push(*vector);
            put_u64(out, *guest_time_ns);
        }
        LogEntry::NetFrame { at, vector, frame } => {
            put_point(out, at);
            out.push(*vector);
            out.extend_from_slice(frame);
        }
        LogEntry::DiskCompletion {
            at,
            vector,
            request_id,
            status,
            data,
        } => {
            put_point(out, at);
            out.push(*vector);
            put_u64(out, *request_id);
            out.push(match status {
                DiskStatus::Ok => 0,
                DiskStatus::IoError => 1,
                DiskStatus::Unsupported => 2,
            });
            out.extend_from_slice(data);
        }
        LogEntry::NonDet { at, source, value } => {
            put_point(out, at);
            let (tag, aux) = match source {
                NonDetSource::Rdtsc => (0u8, 0u32),
                NonDetSource::Rdtscp { aux } => (1, *aux),
                NonDetSource::Rdrand => (2, 0),
                NonDetSource::Rdseed => (3, 0),
                NonDetSource::Msr { index } => (4, *index),
                NonDetSource::Port { port } => (5, u32::from(*port)),
                NonDetSource::Mmio { gpa } => (6, *gpa),
            };
            out.push(tag);
            out.extend_from_slice(&aux.to_le_bytes());
            put_u64(out, *value);
        }
        LogEntry::Heartbeat {
            at,
            guest_time_ns,
            acked,
        } => {
            put_point(out, at);
            put_u64(out, *guest_time_ns);
            put_u64(out, *acked);
        }
        LogEntry::OutputMarker {
            at,
            output_id,
            acked,
            digest,
        } => {
            put_point(out, at);
            put_u64(out, *output_id);
            put_u64(out, *acked);
            put_u64(out, *digest);
        }
        LogEntry::Ack { received, applied } => {
            put_u64(out, *received);
            put_u64(out, *applied);
        }
        LogEntry::GoLive { generation, owner } => {
            put_u64(out, *generation);
            put_u64(out, *owner);
        }
        LogEntry::Goodbye { reason } => out.push(match reason {
            GoodbyeReason::Shutdown => 0,
            GoodbyeReason::Halted => 1,
            GoodbyeReason::Superseded => 2,
            GoodbyeReason::StorageLost => 3,
        }),
        LogEntry::Checkpoint { at, state_hash } => {
            put_point(out, at);
            put_u64(out, *state_hash);
        }
    }
}

/// Validates the fixed header and returns `(kind, payload_len, seq)`.
/// Needs only [`HEADER_LEN`] bytes, so a stream decoder rejects garbage
/// before buffering a bogus payload length.
pub(super) fn decode_header(buf: &[u8]) -> Result<(u8, usize, u64), FtError> {
    let have = buf.len();
    let h: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(FtError::Truncated {
            needed: HEADER_LEN,
            have,
        })?;
    if h[0] != RECORD_MAGIC {
        return Err(FtError::BadMagic(h[0]));
    }
    if h[1] != LOG_FORMAT_VERSION {
        return Err(FtError::UnsupportedVersion(h[1]));
    }
    if h[3] != 0 {
        return Err(FtError::ReservedBitsSet(h[3]));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let len_usize = usize::try_from(len).map_err(|_| FtError::TooLarge(len))?;
    if len_usize > MAX_PAYLOAD {
        return Err(FtError::TooLarge(len));
    }
    let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok((h[2], len_usize, seq))
}

/// Decodes the record at the start of `buf`; returns it and the number of
/// bytes it occupied. [`FtError::Truncated`] means "feed more bytes".
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), FtError> {
    let (kind, len, seq) = decode_header(buf)?;
    let total = HEADER_LEN + len + TRAILER_LEN;
    if buf.len() < total {
        return Err(FtError::Truncated {
            needed: total,
            have: buf.len(),
        });
    }
    let body = &buf[..HEADER_LEN + len];
    let t = &buf[HEADER_LEN + len..total];
    let stored = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let computed = CRC32C.checksum(body);
    if stored != computed {
        return Err(FtError::CrcMismatch { stored, computed });
    }
    let entry = decode_payload(kind, &body[HEADER_LEN..])?;
    if (seq == 0) != matches!(entry, LogEntry::Hello { .. }) {
        return Err(FtError::BadPayload {
            kind,
            reason: "sequence 0 is reserved for Hello, and Hello only",
        });
    }
    Ok((Record { seq, entry }, total))
}

/// A bounds-checked cursor over a payload.
/// Bounds-checked little-endian reads of one payload (also the state
/// transfer's, `crate::state`).
pub(crate) struct Reader<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `payload` of record kind `kind` (named in errors).
    pub(crate) fn new(kind: u8, payload: &'a [u8]) -> Self {
        Self {
            kind,
            rest: payload,
        }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// Fails unless every byte was read.
    pub(crate) fn end(&self) -> Result<(), FtError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], FtError> {
        if self.rest.len() < n {
            return Err(self.bad("payload too short"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FtError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FtError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FtError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FtError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FtError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn point(&mut self) -> Result<ExecPoint, FtError> {
        Ok(ExecPoint::new(self.u64()?, self.u64()?, self.u64()?))
    }
    fn rest_vec(&mut self) -> Vec<u8> {
        let v = self.rest.to_vec();
        self.rest = &[];
        v
    }
    fn finish(self, entry: LogEntry) -> Result<LogEntry, FtError> {
        if self.rest.is_empty() {
            Ok(entry)
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
    pub(crate) fn bad(&self, reason: &'static str) -> FtError {
        FtError::BadPayload {
            kind: self.kind,
            reason,
        }
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<LogEntry, FtError> {
    let mut r = Reader {
        kind,
        rest: payload,
    };
    let entry = match kind {
        0x01 => LogEntry::Hello {
            cluster_id: r.u64()?,
            generation: r.u64()?,
            guest_id: r.array()?,
            protocol_version: r.u16()?,
            machine: MachineId::from_bytes(&r.array()?),
        },
        0x02 => LogEntry::Interrupt {
            at: r.point()?,
            vector: r.u8()?,
            guest_time_ns: r.u64()?,
        },
        0x03 => LogEntry::NetFrame {
            at: r.point()?,
            vector: r.u8()?,
            frame: r.rest_vec(),
        },
        0x04 => LogEntry::DiskCompletion {
            at: r.point()?,
            vector: r.u8()?,
            request_id: r.u64()?,
            status: match r.u8()? {
                0 => DiskStatus::Ok,
                1 => DiskStatus::IoError,
                2 => DiskStatus::Unsupported,
                _ => return Err(r.bad("unknown disk status")),
            },
            data: r.rest_vec(),
        },
        0x05 => {
            let at = r.point()?;
            let tag = r.u8()?;
            let aux = r.u32()?;
            let source = match (tag, aux) {
                (0, 0) => NonDetSource::Rdtsc,
                (1, aux) => NonDetSource::Rdtscp { aux },
                (2, 0) => NonDetSource::Rdrand,
                (3, 0) => NonDetSource::Rdseed,
                (4, index) => NonDetSource::Msr { index },
                (5, port) => NonDetSource::Port {
                    port: u16::try_from(port).map_err(|_| r.bad("port above 0xffff"))?,
                },
                (6, gpa) => NonDetSource::Mmio { gpa },
                (0..=3, _) => return Err(r.bad("aux must be 0 for this source")),
                _ => return Err(r.bad("unknown non-deterministic source")),
            };
            LogEntry::NonDet {
                at,
                source,
                value: r.u64()?,
            }
        }
        0x06 => LogEntry::Heartbeat {
            at: r.point()?,
            guest_time_ns: r.u64()?,
            acked: r.u64()?,
        },
        0x07 => LogEntry::OutputMarker {
            at: r.point()?,
            output_id: r.u64()?,
            acked: r.u64()?,
            digest: r.u64()?,
        },
        0x08 => LogEntry::Ack {
            received: r.u64()?,
            applied: r.u64()?,
        },
        0x09 => LogEntry::GoLive {
            generation: r.u64()?,
            owner: r.u64()?,
        },
        0x0A => LogEntry::Goodbye {
            reason: match r.u8()? {
                0 => GoodbyeReason::Shutdown,
                1 => GoodbyeReason::Halted,
                2 => GoodbyeReason::Superseded,
                3 => GoodbyeReason::StorageLost,
                _ => return Err(r.bad("unknown goodbye reason")),
            },
        },
        0x0B => LogEntry::Checkpoint {
            at: r.point()?,
            state_hash: r.u64()?,
        },
        other => return Err(FtError::UnknownKind(other)),
    };
    r.finish(entry)
}

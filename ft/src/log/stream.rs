//! Streaming decoder for the logging channel: TCP delivers bytes in
//! arbitrary chunks; records come out whole, in order, or a clear error
//! after which the connection must be reset (DESIGN.md §1, bad input).

use alloc::vec::Vec;

use super::codec::{decode_header, decode_record};
use super::entry::Record;
use super::HEADER_LEN;
use crate::FtError;

/// Reassembles records from a byte stream. The first error is sticky:
/// every later call returns [`FtError::StreamPoisoned`] so a caller cannot
/// resynchronise on garbage by accident.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
}

impl StreamDecoder {
    /// An empty decoder for a fresh connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed as records.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole record, `Ok(None)` if more bytes are needed.
    pub fn next_record(&mut self) -> Result<Option<Record>, FtError> {
        if self.poisoned {
            return Err(FtError::StreamPoisoned);
        }
        let pending = &self.buf[self.start..];
        let result = if pending.len() < HEADER_LEN {
            // Validate what we have of the header early: a wrong magic or
            // version byte is an error now, not after 16 bytes.
            check_partial_header(pending).map(|()| None)
        } else {
            match decode_record(pending) {
                Ok((rec, used)) => {
                    self.start += used;
                    Ok(Some(rec))
                }
                Err(FtError::Truncated { .. }) => decode_header(pending).map(|_| None),
                Err(e) => Err(e),
            }
        };
        if result.is_err() {
            self.poisoned = true;
            self.buf = Vec::new();
            self.start = 0;
        }
        result
    }
}

fn check_partial_header(p: &[u8]) -> Result<(), FtError> {
    match p {
        [m, ..] if *m != super::RECORD_MAGIC => Err(FtError::BadMagic(*m)),
        [_, v, ..] if *v != super::LOG_FORMAT_VERSION => Err(FtError::UnsupportedVersion(*v)),
        [_, _, _, r, ..] if *r != 0 => Err(FtError::ReservedBitsSet(*r)),
        _ => Ok(()),
    }
}

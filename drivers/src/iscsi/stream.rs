//! Streaming PDU decoder: TCP delivers bytes in arbitrary chunks; this
//! reassembles complete PDUs (RFC 7143 §11.2 framing).
//!
//! The length check happens as soon as the 48-byte BHS is in, so a hostile
//! length field cannot make the decoder buffer more than one maximal PDU.
//! After an error the decoder stays failed: the connection must be reset
//! (RFC 7143 §7.6, "format errors ... the connection is dropped").

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::iscsi::bhs::{wire_len, Bhs, BHS_LEN};
use crate::iscsi::pdu::Pdu;

/// Reassembles PDUs from a byte stream.
#[derive(Debug)]
pub struct PduDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as PDUs.
    start: usize,
    max_data: usize,
    failed: Option<Error>,
}

impl PduDecoder {
    /// A decoder accepting data segments up to `max_data` bytes (our
    /// MaxRecvDataSegmentLength, or a larger bound during login).
    pub fn new(max_data: usize) -> Self {
        PduDecoder {
            buf: Vec::new(),
            start: 0,
            max_data,
            failed: None,
        }
    }

    /// Changes the bound (after negotiation).
    pub fn set_max_data(&mut self, max_data: usize) {
        self.max_data = max_data;
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held but not yet returned as PDUs.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete PDU, `Ok(None)` if more bytes are needed.
    pub fn next_pdu(&mut self) -> Result<Option<Pdu>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        if avail.len() < BHS_LEN {
            self.compact();
            return Ok(None);
        }
        let res = Bhs::from_slice(avail).and_then(|bhs| wire_len(&bhs, self.max_data));
        let total = match res {
            Ok(t) => t,
            Err(e) => return Err(self.fail(e)),
        };
        if avail.len() < total {
            self.compact();
            return Ok(None);
        }
        match Pdu::decode(&avail[..total], self.max_data) {
            Ok(p) => {
                self.start += total;
                Ok(Some(p))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Forgets everything (new connection).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::bhs::RESERVED_TAG;
    use crate::iscsi::pdu::{NopIn, R2t, StatusSn};
    use alloc::vec;

    fn two_pdus() -> (Vec<Pdu>, Vec<u8>) {
        let a = Pdu::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 5,
            sn: StatusSn::default(),
            data: vec![9; 7],
        });
        let b = Pdu::R2t(R2t {
            lun: 0,
            itt: 1,
            ttt: 2,
            sn: StatusSn::default(),
            r2t_sn: 0,
            buffer_offset: 0,
            desired_len: 10,
        });
        let mut bytes = a.to_bytes().unwrap();
        b.encode(&mut bytes).unwrap();
        (vec![a, b], bytes)
    }

    #[test]
    fn any_chunking_yields_the_same_pdus() {
        let (want, bytes) = two_pdus();
        for chunk in 1..=bytes.len() {
            let mut d = PduDecoder::new(8192);
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(p) = d.next_pdu().unwrap() {
                    got.push(p);
                }
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversized_length_fails_before_buffering_the_body() {
        let (_, mut bytes) = two_pdus();
        bytes[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut d = PduDecoder::new(8192);
        d.push(&bytes[..48]);
        assert!(matches!(
            d.next_pdu(),
            Err(Error::DataSegmentTooLong { .. })
        ));
        d.push(&[0; 100]);
        assert_eq!(d.buffered(), 0);
        assert!(d.next_pdu().is_err(), "decoder stays failed");
        d.reset();
        assert_eq!(d.next_pdu(), Ok(None));
    }

    #[test]
    fn malformed_pdu_in_stream_is_an_error() {
        let (_, mut bytes) = two_pdus();
        bytes[0] = 0x3e;
        let mut d = PduDecoder::new(8192);
        d.push(&bytes);
        assert_eq!(d.next_pdu(), Err(Error::UnsupportedOpcode(0x3e)));
    }
}

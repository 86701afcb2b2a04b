//! Fuzz target for the log codec (DESIGN.md §1, "bad input never crashes"):
//! decoding arbitrary bytes never panics; whatever decodes re-encodes to
//! the same bytes (canonical format); the stream decoder, fed the same
//! bytes in fuzzer-chosen chunks, yields the same records as one-shot
//! decoding; the flag parsers (record and block) never panic. A second
//! pass patches a valid CRC32C into the input so the payload parsers
//! behind the CRC get fuzzed too (random bytes almost never carry a valid
//! CRC).
#![no_main]

use ft::arbitration::{FlagRecord, FLAG_LEN};
use crc::{Crc, CRC_32_ISCSI};
use ft::log::{decode_record, encode_record, StreamDecoder, HEADER_LEN, TRAILER_LEN};
use libfuzzer_sys::fuzz_target;

/// Writes the CRC32C the header's length asks for, then decodes.
fn check_patched(data: &[u8]) {
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return;
    }
    let mut v = data.to_vec();
    let len = u32::from_le_bytes([v[4], v[5], v[6], v[7]]) as usize;
    let body = (HEADER_LEN + len).min(v.len() - TRAILER_LEN);
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&v[..body]);
    v[body..body + TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
    if let Ok((rec, used)) = decode_record(&v) {
        let mut again = Vec::new();
        encode_record(rec.seq, &rec.entry, &mut again).expect("decoded record re-encodes");
        assert_eq!(again, &v[..used], "encoding is canonical");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = FlagRecord::from_bytes(data.get(..FLAG_LEN).unwrap_or(data));
    let _ = FlagRecord::from_block(data);
    check_patched(data);
    let (chunk, bytes) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c % 31) + 1, rest),
        None => return,
    };

    // One-shot decoding of consecutive records.
    let mut oneshot = Vec::new();
    let mut rest = bytes;
    let mut oneshot_err = false;
    while !rest.is_empty() {
        match decode_record(rest) {
            Ok((rec, used)) => {
                assert!(used > 0 && used <= rest.len());
                let mut again = Vec::new();
                encode_record(rec.seq, &rec.entry, &mut again).expect("decoded record re-encodes");
                assert_eq!(again, &rest[..used], "encoding is canonical");
                oneshot.push(rec);
                rest = &rest[used..];
            }
            Err(_) => {
                oneshot_err = true;
                break;
            }
        }
    }

    // The same bytes through the streaming decoder, in chunks.
    let mut d = StreamDecoder::new();
    let mut streamed = Vec::new();
    let mut stream_err = false;
    'outer: for c in bytes.chunks(chunk) {
        d.push(c);
        loop {
            match d.next_record() {
                Ok(Some(r)) => streamed.push(r),
                Ok(None) => break,
                Err(_) => {
                    stream_err = true;
                    break 'outer;
                }
            }
        }
    }
    // The stream never yields a record the one-shot decoder did not.
    assert!(streamed.len() <= oneshot.len());
    assert_eq!(streamed[..], oneshot[..streamed.len()]);
    if !oneshot_err {
        assert!(!stream_err, "stream failed on bytes that decode");
        assert_eq!(streamed.len(), oneshot.len());
    }
});

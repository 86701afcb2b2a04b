//! Fuzz target for the log codec (DESIGN.md §1, "bad input never crashes"):
//! decoding arbitrary bytes never panics; whatever decodes re-encodes to
//! the same bytes (canonical format); the stream decoder, fed the same
//! bytes in fuzzer-chosen chunks, yields the same records as one-shot
//! decoding; the flag block parser never panics.
#![no_main]

use ft::arbitration::FlagRecord;
use ft::log::{decode_record, encode_record, StreamDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = FlagRecord::from_bytes(data);
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

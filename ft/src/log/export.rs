//! The log as text (DESIGN.md §6 "`ftlog`"): `ft=export` writes a recorded
//! log to the serial console as `FTLOG <hex>` lines and one trailer,
//! `FTLOG-END bytes=<n> fnv=0x<16 hex digits>`, so that a log survives any
//! console capture. [`parse_export`] gets the bytes back (checking the
//! trailer's length and checksum) and [`decode_all`] turns them into
//! records. The `ftlog` host tool and the record/replay e2e tests use both.
use alloc::vec::Vec;

use super::{decode_record, Record};
use crate::FtError;

/// Prefix of a line of log bytes.
pub const LINE_PREFIX: &str = "FTLOG ";
/// Prefix of the trailer line.
pub const END_PREFIX: &str = "FTLOG-END ";
/// Seed of [`fnv_words`] / [`checksum`].
pub const FNV_SEED: u64 = 0xCBF2_9CE4_8422_2325;

/// FNV-1a over 64-bit words (the state and export hashes of record/replay).
pub fn fnv_words(mut h: u64, words: impl IntoIterator<Item = u64>) -> u64 {
    for w in words {
        h ^= w;
        h = h.wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// [`fnv_words`] over `bytes` taken 8 at a time, little-endian; a tail is
/// zero-padded and followed by its length.
pub fn fnv_bytes(h: u64, bytes: &[u8]) -> u64 {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    let mut h = fnv_words(
        h,
        chunks.map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
    );
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        h = fnv_words(h, [u64::from_le_bytes(last), tail.len() as u64]);
    }
    h
}

/// The trailer's checksum of an exported log.
pub fn checksum(bytes: &[u8]) -> u64 {
    fnv_bytes(FNV_SEED, bytes)
}

fn bad(line: usize, reason: &'static str) -> FtError {
    FtError::BadExport { line, reason }
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The log bytes of the `FTLOG` lines in `text` (other lines are ignored),
/// checked against the `FTLOG-END` trailer: its length and checksum must
/// match. Lines are numbered from 1 in errors.
pub fn parse_export(text: &str) -> Result<Vec<u8>, FtError> {
    let mut bytes = Vec::new();
    let mut trailer = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(hex) = line.strip_prefix(LINE_PREFIX) {
            if trailer.is_some() {
                return Err(bad(n, "log bytes after the FTLOG-END trailer"));
            }
            let hex = hex.trim().as_bytes();
            if hex.len() % 2 != 0 {
                return Err(bad(n, "an odd number of hex digits"));
            }
            for pair in hex.chunks_exact(2) {
                match (hex_nibble(pair[0]), hex_nibble(pair[1])) {
                    (Some(a), Some(b)) => bytes.push(a << 4 | b),
                    _ => return Err(bad(n, "a character that is not a hex digit")),
                }
            }
        } else if let Some(rest) = line.strip_prefix(END_PREFIX) {
            let mut len = None;
            let mut fnv = None;
            for w in rest.split_whitespace() {
                if let Some(v) = w.strip_prefix("bytes=") {
                    len = v.parse::<u64>().ok();
                } else if let Some(v) = w.strip_prefix("fnv=0x") {
                    fnv = u64::from_str_radix(v, 16).ok();
                }
            }
            match (len, fnv) {
                (Some(l), Some(f)) => trailer = Some((n, l, f)),
                _ => return Err(bad(n, "a trailer without `bytes=<n> fnv=0x<hex>`")),
            }
        }
    }
    let Some((n, len, fnv)) = trailer else {
        return Err(bad(
            0,
            "no FTLOG-END trailer: the log was not exported completely",
        ));
    };
    if bytes.len() as u64 != len {
        return Err(bad(n, "the trailer's length differs from the bytes found"));
    }
    if checksum(&bytes) != fnv {
        return Err(bad(
            n,
            "the trailer's checksum differs from the bytes found",
        ));
    }
    Ok(bytes)
}

/// Every record of a log, in order; the first bad one is an error with its
/// byte offset.
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Record>, (usize, FtError)> {
    let mut out = Vec::new();
    let mut off = 0;
    while !bytes.is_empty() {
        let (r, used) = decode_record(bytes).map_err(|e| (off, e))?;
        out.push(r);
        bytes = &bytes[used..];
        off += used;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{encode_record, ExecPoint, LogEntry};
    use alloc::format;
    use alloc::string::String;

    fn export(bytes: &[u8]) -> String {
        let mut s = String::from("boot noise\n");
        for chunk in bytes.chunks(7) {
            s += LINE_PREFIX;
            for b in chunk {
                s += &format!("{b:02x}");
            }
            s += "\n";
        }
        s + &format!(
            "{END_PREFIX}bytes={} fnv={:#018x}\nmore noise\n",
            bytes.len(),
            checksum(bytes)
        )
    }

    fn log() -> Vec<u8> {
        let mut b = Vec::new();
        let at = ExecPoint {
            counter: 5,
            rip: 0x1000,
            rcx: 0,
        };
        encode_record(
            1,
            &LogEntry::Interrupt {
                at,
                vector: 0x30,
                guest_time_ns: 0,
            },
            &mut b,
        )
        .unwrap();
        encode_record(2, &LogEntry::Checkpoint { at, state_hash: 9 }, &mut b).unwrap();
        b
    }

    #[test]
    fn round_trip_through_text() {
        let b = log();
        assert_eq!(parse_export(&export(&b)).unwrap(), b);
        let recs = decode_all(&b).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].seq, 2);
    }

    #[test]
    fn damage_is_named() {
        let b = log();
        let text = export(&b);
        let cut: String = text
            .lines()
            .filter(|l| !l.starts_with(END_PREFIX))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            parse_export(&cut),
            Err(FtError::BadExport { line: 0, .. })
        ));
        let flipped = text.replacen("FTLOG f7", "FTLOG f6", 1);
        assert!(
            matches!(parse_export(&flipped), Err(FtError::BadExport { reason, .. }) if reason.contains("checksum"))
        );
        let odd = text.replacen("FTLOG f7", "FTLOG f7a", 1);
        assert!(matches!(
            parse_export(&odd),
            Err(FtError::BadExport { line: 2, .. })
        ));
        let junk = text.replacen("FTLOG f7", "FTLOG zz", 1);
        assert!(parse_export(&junk).is_err());
        let mut short = b.clone();
        short.pop();
        assert!(matches!(decode_all(&short), Err((off, FtError::Truncated { .. })) if off > 0));
    }

    #[test]
    fn fnv_matches_the_word_definition() {
        assert_eq!(fnv_bytes(FNV_SEED, &[]), FNV_SEED);
        let h = fnv_words(FNV_SEED, [u64::from_le_bytes([1, 0, 0, 0, 0, 0, 0, 0]), 1]);
        assert_eq!(fnv_bytes(FNV_SEED, &[1]), h, "tail padded, then its length");
    }
}

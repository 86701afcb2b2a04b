//! Hardware-free pieces of `mode=iscsi`'s checks: the block pattern its
//! writes carry and verify (SBC-3 §5.40 WRITE(16) / §5.16 READ(16) round
//! trips), and the line protocol that keeps the `caw-race` nodes in step.
//!
//! **Pattern.** Every logical block is self-describing: word 0 is its LBA,
//! word 1 the run's seed, the rest a SplitMix64 stream keyed by both, so a
//! block written to the wrong LBA, a stale block from an earlier run or a
//! torn block is caught and named.
//!
//! **Race rounds** (DESIGN.md §1.7 test-and-set, raced): each node reads
//! the flag, then tells the coordinator `ready <round> <generation>`; the
//! coordinator answers `go <round>` only when every node reported the same
//! generation (else `abort <reason>`), so every node's COMPARE AND WRITE
//! in a round expects the same record. Each node then reports
//! `result <round> won|lost <generation> <owner>` (the record after the
//! round). One line per message, `\n`-terminated, ASCII.
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of one pattern word.
const WORD: usize = 8;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn word(lba: u64, seed: u64, i: usize) -> u64 {
    match i {
        0 => lba,
        1 => seed,
        _ => splitmix64(seed ^ lba.rotate_left(20) ^ (i as u64)),
    }
}

/// Fills `buf` (whole blocks of `block_size`, a multiple of 8) with the
/// pattern of the blocks starting at `first_lba`.
pub fn fill_pattern(buf: &mut [u8], first_lba: u64, block_size: usize, seed: u64) {
    for (b, block) in buf.chunks_mut(block_size).enumerate() {
        let lba = first_lba + b as u64;
        for (i, w) in block.chunks_exact_mut(WORD).enumerate() {
            w.copy_from_slice(&word(lba, seed, i).to_le_bytes());
        }
    }
}

/// Where a read-back differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    /// Byte offset in the block.
    pub offset: usize,
    /// The LBA the block claims to be (word 0), e.g. a misplaced write.
    pub found_lba: u64,
}

/// Checks `buf` against [`fill_pattern`]'s output; names the first
/// differing block.
pub fn verify_pattern(
    buf: &[u8],
    first_lba: u64,
    block_size: usize,
    seed: u64,
) -> Result<(), Mismatch> {
    for (b, block) in buf.chunks(block_size).enumerate() {
        let lba = first_lba + b as u64;
        for (i, w) in block.chunks_exact(WORD).enumerate() {
            let mut a = [0u8; WORD];
            a.copy_from_slice(w);
            if u64::from_le_bytes(a) != word(lba, seed, i) {
                let mut first = [0u8; WORD];
                first.copy_from_slice(&block[..WORD]);
                return Err(Mismatch {
                    lba,
                    offset: i * WORD,
                    found_lba: u64::from_le_bytes(first),
                });
            }
        }
    }
    Ok(())
}

/// Splits a byte stream into lines (without the `\n`; a `\r` before it is
/// dropped). A line longer than `max` is cut there and flagged.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    overlong: bool,
}

/// Longest coordinator line accepted.
pub const MAX_LINE: usize = 128;

impl Lines {
    /// Feeds bytes; returns the complete lines (overlong ones as `None`).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if self.partial.last() == Some(&b'\r') {
                    self.partial.pop();
                }
                let line = core::mem::take(&mut self.partial);
                let ok = !core::mem::take(&mut self.overlong);
                out.push(ok.then(|| String::from_utf8_lossy(&line).into_owned()));
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            } else {
                self.overlong = true;
            }
        }
        out
    }
}

/// What the coordinator tells a racing node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// Every node read the same generation for this round: race now.
    Go { round: u32 },
    /// The rounds cannot continue (the reason is the coordinator's).
    Abort(String),
}

/// Parses one coordinator line; `None` for anything else.
pub fn parse_directive(line: &str) -> Option<Directive> {
    let mut w = line.split_ascii_whitespace();
    match w.next()? {
        "go" => {
            let round = w.next()?.parse().ok()?;
            w.next().is_none().then_some(Directive::Go { round })
        }
        "abort" => Some(Directive::Abort(
            line.trim_start()["abort".len()..].trim().into(),
        )),
        _ => None,
    }
}

/// `hello <node>`: the first line of a node.
pub fn hello_line(node: u16) -> String {
    alloc::format!("hello {node}\n")
}

/// `ready <round> <generation>`.
pub fn ready_line(round: u32, generation: u64) -> String {
    alloc::format!("ready {round} {generation}\n")
}

/// `result <round> won|lost <generation> <owner>`.
pub fn result_line(round: u32, won: bool, generation: u64, owner: u64) -> String {
    let v = if won { "won" } else { "lost" };
    alloc::format!("result {round} {v} {generation} {owner}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trip_and_mismatches() {
        let mut buf = vec![0u8; 4 * 512];
        fill_pattern(&mut buf, 100, 512, 7);
        assert_eq!(verify_pattern(&buf, 100, 512, 7), Ok(()));
        assert_eq!(&buf[..8], &100u64.to_le_bytes());
        assert_eq!(&buf[512..520], &101u64.to_le_bytes());
        // Wrong seed (a stale run), wrong LBA (a misplaced write).
        assert_eq!(
            verify_pattern(&buf, 100, 512, 8).unwrap_err(),
            Mismatch {
                lba: 100,
                offset: 8,
                found_lba: 100
            }
        );
        assert_eq!(
            verify_pattern(&buf[512..], 100, 512, 7).unwrap_err(),
            Mismatch {
                lba: 100,
                offset: 0,
                found_lba: 101
            }
        );
        // One flipped bit deep inside the third block.
        buf[2 * 512 + 300] ^= 4;
        assert_eq!(
            verify_pattern(&buf, 100, 512, 7).unwrap_err(),
            Mismatch {
                lba: 102,
                offset: 296,
                found_lba: 102
            }
        );
        // Zeroed blocks (never written) fail.
        assert!(verify_pattern(&[0u8; 512], 0, 512, 0).is_err());
        // 4 KiB blocks work the same.
        let mut big = vec![0u8; 2 * 4096];
        fill_pattern(&mut big, 9, 4096, 1);
        assert_eq!(verify_pattern(&big, 9, 4096, 1), Ok(()));
    }

    #[test]
    fn distinct_blocks_differ() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill_pattern(&mut a, 5, 512, 1);
        fill_pattern(&mut b, 6, 512, 1);
        assert_ne!(a[16..], b[16..]);
    }

    #[test]
    fn lines_across_chunks() {
        let mut l = Lines::default();
        assert!(l.feed(b"go 1").is_empty());
        assert_eq!(
            l.feed(b"\r\ngo 2\nab"),
            vec![Some("go 1".into()), Some("go 2".into())]
        );
        assert_eq!(l.feed(b"ort x y\n"), vec![Some("abort x y".into())]);
        let long = vec![b'x'; MAX_LINE + 10];
        assert!(l.feed(&long).is_empty());
        assert_eq!(l.feed(b"\ngo 3\n"), vec![None, Some("go 3".into())]);
    }

    #[test]
    fn directives() {
        assert_eq!(parse_directive("go 17"), Some(Directive::Go { round: 17 }));
        assert_eq!(
            parse_directive("abort generations differ: 3 vs 4"),
            Some(Directive::Abort("generations differ: 3 vs 4".into()))
        );
        for bad in ["go", "go x", "go 1 2", "", "ready 1 2", "go -1"] {
            assert_eq!(parse_directive(bad), None, "{bad}");
        }
        assert_eq!(ready_line(3, 2), "ready 3 2\n");
        assert_eq!(result_line(3, true, 3, 1), "result 3 won 3 1\n");
        assert_eq!(result_line(3, false, 3, 1), "result 3 lost 3 1\n");
        assert_eq!(hello_line(2), "hello 2\n");
    }
}

//! Text keys of Login and Text PDUs (RFC 7143 §6 "Text Mode Negotiation",
//! §6.1 format): `key=value` pairs, each terminated by a NUL byte, UTF-8,
//! keys at most 63 bytes, values at most 255 bytes for the keys used here
//! (we allow up to 8192 to cover long lists).

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// Maximum key length (§6.1).
pub const MAX_KEY: usize = 63;
/// Longest value we accept.
pub const MAX_VALUE: usize = 8192;

/// An ordered list of `key=value` pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    pub fn new() -> Self {
        TextPairs(Vec::new())
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of the first pair named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Appends the wire form (`key=value\0` ...) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Parses a complete text (all continuation PDUs joined). Trailing NUL
    /// padding (some targets pad) is tolerated; anything else malformed is
    /// an error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut pairs = Vec::new();
        let trimmed = match bytes.iter().rposition(|&b| b != 0) {
            None => return Ok(TextPairs(pairs)),
            Some(last) => {
                if last + 1 == bytes.len() {
                    return Err(Error::MalformedText("pair not NUL-terminated"));
                }
                &bytes[..last + 1]
            }
        };
        for item in trimmed.split(|&b| b == 0) {
            let s = core::str::from_utf8(item).map_err(|_| Error::MalformedText("not UTF-8"))?;
            let (k, v) = s
                .split_once('=')
                .ok_or(Error::MalformedText("pair without '='"))?;
            if k.is_empty() || k.len() > MAX_KEY {
                return Err(Error::MalformedText("key empty or longer than 63 bytes"));
            }
            if !k
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-+@_".contains(&c))
            {
                return Err(Error::MalformedText("key has characters outside §6.1"));
            }
            if v.len() > MAX_VALUE {
                return Err(Error::MalformedText("value too long"));
            }
            pairs.push((k.into(), v.into()));
        }
        Ok(TextPairs(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut t = TextPairs::new();
        t.push("InitiatorName", "iqn.2024-01.test:a");
        t.push("HeaderDigest", "None,CRC32C");
        t.push("X-com.example.Key", "");
        let b = t.to_bytes();
        assert_eq!(TextPairs::decode(&b).unwrap(), t);
        assert_eq!(t.get("HeaderDigest"), Some("None,CRC32C"));
        assert_eq!(t.get("Nope"), None);
    }

    #[test]
    fn padding_nuls_are_tolerated_and_empty_is_empty() {
        assert_eq!(TextPairs::decode(b"A=1\0\0\0").unwrap().0.len(), 1);
        assert!(TextPairs::decode(b"").unwrap().0.is_empty());
        assert!(TextPairs::decode(b"\0\0").unwrap().0.is_empty());
    }

    #[test]
    fn malformed_text_is_rejected() {
        for bad in [
            &b"A=1"[..],
            b"A1\0",
            b"=1\0",
            b"A=1\0\0B=2\0",
            b"K\xff=1\0",
            b"A B=1\0",
            &[b'K'; 64]
                .iter()
                .chain(b"=1\0")
                .copied()
                .collect::<Vec<u8>>()[..],
        ] {
            assert!(TextPairs::decode(bad).is_err(), "{bad:?}");
        }
    }
}

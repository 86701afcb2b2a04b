//! Streaming PDU decoder on arbitrary bytes in arbitrary chunks: never
//! panics, never buffers past one maximal PDU, and every decoded PDU
//! re-encodes to bytes that decode to the same PDU. The same chunks then go
//! to a session that is logging in (hostile target), and the whole input to
//! the text-key parser.
#![no_main]

use drivers::iscsi::text::TextPairs;
use drivers::iscsi::{Pdu, PduDecoder, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = chunk as usize % 97 + 1;
    let mut d = PduDecoder::new(MAX);
    'outer: for c in rest.chunks(chunk) {
        d.push(c);
        assert!(d.buffered() <= 48 + 255 * 4 + MAX + 3 + chunk);
        loop {
            match d.next_pdu() {
                Ok(Some(p)) => {
                    let bytes = p.to_bytes().expect("decoded PDU re-encodes");
                    assert_eq!(Pdu::decode(&bytes, MAX).expect("re-decodes"), p);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let mut s = Session::new(SessionConfig::new("iqn.i", "iqn.t", [0x80, 0, 0, 0, 0, 1]));
    s.connected(0);
    for (t, c) in rest.chunks(chunk).enumerate() {
        s.receive(c, t as u64);
        s.poll(t as u64);
        let n = s.transmit().len();
        s.consume_transmit(n);
        while s.next_event().is_some() {}
    }
    let _ = TextPairs::decode(rest);
});

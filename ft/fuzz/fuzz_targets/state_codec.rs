//! Fuzz target for the repair's state-transfer format (`ft::state`; issue
//! 16: "an incompatible or corrupted transfer is refused with a message,
//! never half-applied"; DESIGN.md §1 "bad input never crashes"): decoding
//! arbitrary bytes never panics; whatever decodes re-encodes to the same
//! bytes; a receiver fed the bytes (as they are, and with a valid CRC32C
//! patched into the first chunk so the payload parsers get fuzzed) never
//! panics and never hands out a page outside the RAM its Begin named; the
//! summary never panics.
#![no_main]

use crc::{Crc, CRC_32_ISCSI};
use ft::log::MachineId;
use ft::state::{
    decode_chunk, encode_chunk, read_join, summarise, Expect, Receiver, CHUNK_HEADER_LEN,
    CHUNK_TRAILER_LEN,
    PAGE,
};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 64 * PAGE as u64;

fn receive(bytes: &[u8]) {
    let expect = Expect {
        cluster: 0,
        guest_id: None,
        machine: MachineId {
            guest_mem: RAM,
            disk: 0,
            disk_sectors: 0,
            nic: 0,
            cpu: 0,
        },
    };
    let mut r = Receiver::new(expect);
    let _ = r.push(bytes, &mut |p, d| {
        assert!(p < RAM / PAGE as u64, "page {p} outside RAM");
        assert!(d.map_or(true, |b| b.len() == PAGE));
    });
}

fn check(data: &[u8]) {
    if let Ok(Some((n, chunk, used))) = decode_chunk(data) {
        let mut again = Vec::new();
        encode_chunk(n, &chunk, &mut again).expect("a decoded chunk re-encodes");
        assert_eq!(again, &data[..used], "encoding is canonical");
    }
    receive(data);
    let _ = summarise(data);
    let _ = read_join(data, 0);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= CHUNK_HEADER_LEN + CHUNK_TRAILER_LEN {
        let mut v = data.to_vec();
        let len = u32::from_le_bytes([v[4], v[5], v[6], v[7]]) as usize;
        let body = (CHUNK_HEADER_LEN + len).min(v.len() - CHUNK_TRAILER_LEN);
        let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&v[..body]);
        v[body..body + CHUNK_TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
        check(&v);
    }
});

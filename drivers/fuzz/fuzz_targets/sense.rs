//! Sense data (fixed and descriptor), status mapping and the PERSISTENT
//! RESERVE IN parsers (READ KEYS, READ RESERVATION) never panic.
#![no_main]

use drivers::scsi::{check_status, PrKeys, PrReservation, Sense};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, sense)) = data.split_first() else { return };
    if let Ok(s) = Sense::decode(sense) {
        assert!(s.key.0 <= 0x0f);
        let _ = s.is_miscompare();
    }
    let _ = check_status(status, sense);
    if let Ok(k) = PrKeys::parse(data) {
        assert!(8 + 8 * k.keys.len() <= data.len());
    }
    if let Ok(r) = PrReservation::parse(data) {
        assert!(r.reservation.is_none() || data.len() >= 24);
    }
});

//! Sense data (fixed and descriptor) and status mapping never panic.
#![no_main]

use drivers::scsi::{check_status, Sense};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, sense)) = data.split_first() else { return };
    if let Ok(s) = Sense::decode(sense) {
        assert!(s.key.0 <= 0x0f);
        let _ = s.is_miscompare();
    }
    let _ = check_status(status, sense);
});

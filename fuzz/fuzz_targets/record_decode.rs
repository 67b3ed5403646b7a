//! Fuzzes the record decoder and the segment scanner, in both frame
//! formats; the properties live in fuzz/checks/record_decode.rs, shared
//! with the stable-toolchain fallback (tests/fuzz_fallback.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/record_decode.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));

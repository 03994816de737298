//! The CSV users file (the first byte picks the delimiter).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idsync::fuzzing::csv_users(data));

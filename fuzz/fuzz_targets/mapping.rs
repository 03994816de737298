//! A mapping file and one record its expressions are evaluated against.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idsync::fuzzing::mapping(data));

//! Microsoft Graph answers: users and groups delta pages, the token answer
//! (the first byte picks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idsync::fuzzing::graph(data));

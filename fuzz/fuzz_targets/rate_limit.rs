//! `Retry-After` and `X-RateLimit-Reset` header values.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| idsync::fuzzing::rate_limit(text));

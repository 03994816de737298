//! SCIM bodies: list pages, Users and Groups, error bodies,
//! /ServiceProviderConfig, /Schemas and /ResourceTypes (the first byte picks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idsync::fuzzing::scim(data));

//! A state DB row of a mirrored user, or of a mirrored group's members: the
//! framed text a writing run reads back from the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idsync::fuzzing::mirror_row(data));

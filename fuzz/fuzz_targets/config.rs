//! The config file: `${VAR}` expansion, YAML, every section compiled.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| idsync::fuzzing::config(text));

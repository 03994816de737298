//! An LDAP entry as a server sends it: its DN, text and binary values.
#![no_main]

use libfuzzer_sys::fuzz_target;

type Attrs = Vec<(String, Vec<String>)>;
type BinAttrs = Vec<(String, Vec<Vec<u8>>)>;

fuzz_target!(|entry: (String, Attrs, BinAttrs)| {
    let (dn, attrs, bin_attrs) = entry;
    idsync::fuzzing::ldap(&dn, attrs, bin_attrs);
});

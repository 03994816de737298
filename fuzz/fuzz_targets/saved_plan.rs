//! A saved plan (`sync --plan`): parsed, verified against a state, rendered.
//! The text and JSON plans hold no raw control or format character but line
//! breaks, and the JSON plan reads back as the same plan.
#![no_main]

use idsync::plan::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some([text, json, _markdown]) = idsync::fuzzing::saved_plan(data) else {
        return;
    };
    for (format, out) in [("text", &text), ("JSON", &json)] {
        if let Some(c) = out.chars().find(|&c| !idsync::fuzzing::shown_raw(c)) {
            panic!("raw {c:?} in the {format} plan:\n{out}");
        }
    }
    let plan: Plan = serde_json::from_slice(data).expect("parsed once");
    let again: Plan = serde_json::from_str(&json).expect("the JSON plan is a plan");
    assert_eq!(plan, again, "the JSON plan is not the plan read");
});

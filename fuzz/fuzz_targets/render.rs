//! The audit and log renderers over values from outside, with the properties
//! each format promises: text holds no raw control or format character but
//! line breaks; HTML holds none of the input's markup; no CSV cell starts
//! with a formula character (`=`, `+`, `-`, `@`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|values: Vec<String>| {
    // The page with every value empty: what the template itself holds.
    let template = idsync::fuzzing::render(vec![String::new(); values.len()]).html;
    let rendered = idsync::fuzzing::render(values);
    for text in &rendered.text {
        if let Some(c) = text.chars().find(|&c| !idsync::fuzzing::shown_raw(c)) {
            panic!("raw {c:?} in text output:\n{text}");
        }
    }
    for input in &rendered.inputs {
        // More copies than the template's own (`</s` of `</span>`) came from
        // the input as it is.
        if is_markup(input) {
            assert!(
                rendered.html.matches(input.as_str()).count()
                    <= template.matches(input.as_str()).count(),
                "markup {input:?} unescaped in HTML"
            );
        }
    }
    for csv in &rendered.csv {
        check_csv(csv);
    }
});

/// Text that an HTML parser would take for a tag or a comment. (Not `&`:
/// the escaped `&amp;…` holds the input's `&…` as it is.)
fn is_markup(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'/' | b'!' | b'?')))
}

/// No cell of `csv` starts with a character a spreadsheet reads as a formula.
fn check_csv(csv: &str) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv.as_bytes());
    for record in reader.records() {
        let record = record.expect("the CSV renderer wrote CSV");
        for cell in &record {
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "formula cell {cell:?} in:\n{csv}"
            );
        }
    }
}

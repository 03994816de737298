//! Output for people and programs: plans, run summaries, `status`, `explain`
//! and the provisioning log as text and JSON (the log also as CSV), the metrics
//! file, rendered from plain data, and how a log line shows its fields. Data
//! goes to stdout; nothing here logs.
//!
//! Every string from outside (what a target answers, source values, file
//! contents) is escaped by one function, [`escape`]: in text, in log lines
//! (the log formatter, [`LogFields`], escapes every field and message itself),
//! in HTML, in CSV. [`show`] and [`quote`] are the same escape with quotes for
//! values; JSON output carries the same characters as JSON `\u` escapes
//! ([`json_text`]), so it stays lossless. A name with a newline, an escape
//! sequence or a bidirectional override cannot forge or disguise a line.

mod audit;
mod explain;
mod fields;
mod html;
mod log;
mod markdown;
mod metrics;
mod plan;
mod run;
mod status;

pub use audit::{audit_csv, audit_html, audit_json, audit_text};
pub use explain::explain_text;
pub use fields::{JsonSafe, LogFields};
pub use html::report_html;
pub use log::{log_csv, log_json, log_text};
pub use markdown::{PlanReview, plan_markdown};
pub use metrics::{daemon_metrics_text, metrics_text};
#[cfg(test)]
pub use plan::MEMBERS_LISTED;
pub use plan::{PlanView, held_text, plan_text, write_plan_json};
pub use run::{dry_run_text, run_json, run_text};
pub use status::{status_json, status_text};

/// What idsync does about values the target did not keep as sent, after each
/// note in `status` and `check`.
pub const NOTE_EFFECT: &str = "not sent again while the source value stays the same (`sync --full` re-checks; `idsync state forget-notes` forgets them)";

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Terminal styling, off under `NO_COLOR` or when stdout is not a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Style {
        use std::io::IsTerminal;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    pub(crate) fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Quotes a directory value for display: `"`, `\\` and every character
/// [`escape`] escapes are backslash-escaped.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        push_escaped(&mut out, c);
    }
    out.push('"');
    out
}

/// A value shown bare when it is plain, quoted when it holds anything odd:
/// nothing, whitespace, a quote or backslash, a control or format character.
pub(crate) fn show(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\\') && !needs_escape(c));
    if plain {
        value.to_string()
    } else {
        quote(value)
    }
}

/// Text that came from outside (a target's error message) with every control and
/// format character escaped (`\n`, `\u{1b}`, `\u{202e}`) and the rest as it is:
/// for messages that are read as prose, where quoting every `"` would hurt.
/// The one escaping function: [`quote`], [`show`], [`escape_lines`], the log
/// formatter and the HTML report all escape through it.
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// Text idsync composed of several lines (an error listing the records it
/// refused): each line [`escape`]d, the line breaks between them kept.
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// JSON text as serde_json wrote it (it escapes `"`, `\\` and the C0 controls)
/// with every other character [`escape`] would escape — DEL, C1 controls,
/// line and paragraph separators, bidi overrides — written as a JSON `\u`
/// escape: the same document for a parser, nothing raw for a terminal.
/// Outside strings JSON holds no such character (its own line breaks and
/// indentation are plain ASCII whitespace, left as they are), so the text
/// stays valid.
pub fn json_text(json: String) -> String {
    if !json.chars().any(json_needs_escape) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    push_json_text(&mut out, &json);
    out
}

/// [`json_text`] of `json`, appended to `out`.
pub(crate) fn push_json_text(out: &mut String, json: &str) {
    // Runs of text that need nothing are copied whole; ASCII below DEL (nearly
    // all of a document) is never decoded.
    let bytes = json.as_bytes();
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if bytes[i] < 0x7f {
            i += 1;
            continue;
        }
        let c = json[i..]
            .chars()
            .next()
            .expect("i is at a character boundary");
        if json_needs_escape(c) {
            out.push_str(&json[copied..i]);
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{unit:04x}"));
            }
            copied = i + c.len_utf8();
        }
        i += c.len_utf8();
    }
    out.push_str(&json[copied..]);
}

/// What [`escape`] escapes, less the C0 controls: serde_json escapes those in
/// strings, and outside strings they are the document's own whitespace.
fn json_needs_escape(c: char) -> bool {
    c >= '\u{7f}' && needs_escape(c)
}

fn push_escaped(out: &mut String, c: char) {
    if needs_escape(c) {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// A character that must not reach a terminal or a log line as it is: a
/// control character, a line or paragraph separator, or a format character.
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_format(c)
}

/// Unicode general category Cf (format): invisible characters that change how
/// text around them is shown — zero-width spaces and joiners, bidirectional
/// overrides and isolates (U+202E turns `gpj.exe` into `exe.jpg`), tags.
/// From Unicode 15.1; a new Cf character is escaped once added here.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn is_format(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_control_characters_are_escaped() {
        assert_eq!(show("plain@example.com"), "plain@example.com");
        assert_eq!(show("evil\nINFO forged"), "\"evil\\nINFO forged\"");
        assert_eq!(show("\u{1b}[31mred"), "\"\\u{1b}[31mred\"");
    }

    #[test]
    fn zero_width_and_bidi_characters_are_quoted_and_escaped() {
        assert_eq!(show("ann\u{202e}gpj.exe"), "\"ann\\u{202e}gpj.exe\"");
        assert_eq!(show("ad\u{200b}min"), "\"ad\\u{200b}min\"");
        assert_eq!(show("\u{feff}bom"), "\"\\u{feff}bom\"");
        assert_eq!(show("iso\u{2066}late"), "\"iso\\u{2066}late\"");
        assert_eq!(show("tag\u{e0041}"), "\"tag\\u{e0041}\"");
        assert_eq!(show("line\u{2028}sep"), "\"line\\u{2028}sep\"");
        assert_eq!(show("back\\slash"), "\"back\\\\slash\"");
        // Letters of any script, accents included, stay bare.
        assert_eq!(show("José.Nuñez@例え.jp"), "José.Nuñez@例え.jp");
        assert_eq!(show("Jose\u{301}"), "Jose\u{301}");
    }

    #[test]
    fn target_text_is_escaped_but_stays_readable() {
        assert_eq!(
            escape("User \"a\" exists\nINFO forged\u{1b}[2J\u{202e}"),
            "User \"a\" exists\\nINFO forged\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(escape("plain text: fine"), "plain text: fine");
        // Escaping twice changes nothing: a message escaped where it was
        // built can pass through the log formatter again.
        let once = escape("a\nb\u{1b}[2J\u{202e}");
        assert_eq!(escape(&once), once);
    }

    #[test]
    fn quote_and_show_escape_what_escape_escapes() {
        for text in [
            "a\nb",
            "\u{1b}]0;t\u{7}",
            "r\u{202e}l",
            "\u{85}",
            "\u{e0041}",
            "\r\t\0",
        ] {
            assert_eq!(quote(text), format!("\"{}\"", escape(text)), "{text:?}");
            assert_eq!(show(text), quote(text), "{text:?}");
        }
        assert_eq!(quote("say \"hi\" \\ bye"), "\"say \\\"hi\\\" \\\\ bye\"");
        // Letters with combining marks are shown as they are.
        assert_eq!(quote("Jose\u{301}"), "\"Jose\u{301}\"");
    }

    #[test]
    fn lines_idsync_composed_keep_their_breaks_and_nothing_else_raw() {
        assert_eq!(
            escape_lines("3 records cannot be mapped:\n  line 2: \"a\u{1b}[2J\"\r"),
            "3 records cannot be mapped:\n  line 2: \"a\\u{1b}[2J\"\\r"
        );
    }

    #[test]
    fn json_text_copies_runs_and_escapes_the_same_characters_as_one_at_a_time() {
        // The reference: every character looked at on its own.
        let reference = |text: &str| {
            let mut out = String::new();
            for c in text.chars() {
                if json_needs_escape(c) {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        let pieces = [
            "plain",
            "Bj\u{f8}rn",
            "\u{7f}",
            "\u{85}",
            "\u{202e}gpj",
            "\u{2028}",
            "\u{e0041}",
            "\u{1f600}",
            "\u{ad}",
            "\"q\"",
            "\u{fffd}",
        ];
        for a in pieces {
            for b in pieces {
                let text = format!("{a}{b}{a}");
                let mut out = String::new();
                push_json_text(&mut out, &text);
                assert_eq!(out, reference(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn json_text_escapes_overrides_and_keeps_the_document() {
        let value = serde_json::json!({ "name": "ann\u{202e}gpj.exe\u{2028}\u{85}\n", "n": 1 });
        let text = json_text(serde_json::to_string_pretty(&value).unwrap());
        assert!(
            text.contains("ann\\u202egpj.exe\\u2028\\u0085\\n"),
            "{text}"
        );
        assert!(!text.chars().any(json_needs_escape), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
        // The pretty printer's own line breaks stay.
        assert!(text.contains("{\n"), "{text}");
    }
}

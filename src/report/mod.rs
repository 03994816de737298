//! Output for people and programs: plans, run summaries, `status`, `explain`
//! and the provisioning log as text and JSON (the log also as CSV), the metrics
//! file, rendered from plain data. Data goes to stdout; nothing here
//! logs. Directory values are printed quoted and escaped, so a name with a
//! newline or an escape sequence cannot forge a line of output.

mod explain;
mod html;
mod log;
mod metrics;
mod plan;
mod run;
mod status;

pub use explain::explain_text;
pub use html::report_html;
pub use log::{log_csv, log_json, log_text};
pub use metrics::metrics_text;
pub use plan::{MEMBERS_LISTED, PlanView, held_text, plan_json, plan_text, write_plan_json};
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

/// Quotes a directory value for display, escaping control and format
/// characters (Rust's `Debug` escapes everything not printable, U+202E included).
pub fn quote(value: &str) -> String {
    format!("{value:?}")
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
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A character that must not reach a terminal or a log line as it is: a
/// control character, a line or paragraph separator, or a format character.
fn needs_escape(c: char) -> bool {
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
    }
}

//! Output for people and programs: plans, run summaries, `status` and `explain`,
//! as text and JSON, rendered from plain data. Data goes to stdout; nothing here
//! logs. Directory values are printed quoted and escaped, so a name with a
//! newline or an escape sequence cannot forge a line of output.

mod explain;
mod plan;
mod run;
mod status;

pub use explain::explain_text;
pub use plan::{held_text, plan_json, plan_text, write_plan_json};
pub use run::{run_json, run_text};
pub use status::{status_json, status_text};

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

/// Quotes a directory value for display, escaping control characters.
pub fn quote(value: &str) -> String {
    format!("{value:?}")
}

/// A value shown bare when it is plain, quoted when it holds anything odd.
pub(crate) fn show(value: &str) -> String {
    if !value.is_empty()
        && value.chars().all(|c| !c.is_control() && c != '"')
        && !value.contains(char::is_whitespace)
    {
        value.to_string()
    } else {
        quote(value)
    }
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
}

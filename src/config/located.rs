//! A YAML mistake serde-saphyr reports, turned into a [`ConfigError`] at the
//! line and column to fix, with serde-saphyr's own location taken out of the
//! message.

use super::error::ConfigError;
use crate::yaml::{find_key, unknown_field};

pub(super) fn yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> ConfigError {
    let message = clean_message(&e.to_string());
    let hint = Some(
        "see the configuration reference in the README; unknown keys are refused so typos show"
            .into(),
    );
    let Some(loc) = e.location() else {
        return ConfigError::File {
            file: file.to_string(),
            message,
            hint,
        };
    };
    // serde reports an unknown key at the start of its enclosing mapping; point
    // at the key itself.
    let (line, column) = unknown_field(&message)
        .and_then(|field| find_key(text, field, loc.line(), loc.column()))
        .unwrap_or((loc.line(), loc.column()));
    ConfigError::At {
        file: file.to_string(),
        line,
        column,
        message,
        hint,
    }
}

/// serde-saphyr's message repeats the location (and renders a snippet after
/// it); we print our own location, so keep the message itself.
fn clean_message(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let re = regex::Regex::new(r"^line \d+ column \d+: |\s*at line \d+, column \d+$")
        .expect("static regex");
    re.replace_all(first, "").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_reported_where_they_are() {
        let text = "a: 1\ntarget:\n  kind: scim\n  tokn_env: X\n";
        assert_eq!(find_key(text, "tokn_env", 3, 3), Some((4, 3)));
        assert_eq!(
            find_key("t: { kind: x, tokn_env: y }", "tokn_env", 1, 4),
            Some((1, 15))
        );
        assert_eq!(
            clean_message(
                "error: line 4 column 3: unknown field `x`, expected y at line 4, column 3"
            ),
            "unknown field `x`, expected y"
        );
    }
}

//! Where a YAML mistake is: serde reports an unknown key at the start of the
//! map that holds it; [`find_key`] finds the key itself, so the config and the
//! mapping file both point at the line and column to fix; [`parse_duration`]
//! reads a duration as the config writes it. Imports nothing of idsync.

use std::time::Duration;

/// The key named by serde's "unknown field `…`" message.
pub fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The 1-based line and column of the first `key:` written as a map key at or
/// after `line`:`column` (both 1-based, in characters).
pub fn find_key(text: &str, key: &str, line: u64, column: u64) -> Option<(u64, u64)> {
    let first = usize::try_from(line).ok()?.checked_sub(1)?;
    let key: Vec<char> = key.chars().collect();
    for (n, text) in text.lines().enumerate().skip(first) {
        let skip = if n == first {
            usize::try_from(column).ok()?.saturating_sub(1)
        } else {
            0
        };
        let chars: Vec<char> = text.chars().collect();
        for start in skip..chars.len() {
            let after_separator = start == 0 || matches!(chars[start - 1], ' ' | '\t' | '{' | ',');
            if after_separator && chars[start..].starts_with(&key) {
                let next = chars[start + key.len()..]
                    .iter()
                    .find(|c| !matches!(c, ' ' | '\t'));
                if next == Some(&':') {
                    return Some((n as u64 + 1, start as u64 + 1));
                }
            }
        }
    }
    None
}

/// Parses `40m`, `30s`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_where_it_is_written_not_where_its_map_starts() {
        let text = "a: 1\ntarget:\n  kind: scim\n  tokn_env: X\n";
        assert_eq!(find_key(text, "tokn_env", 3, 3), Some((4, 3)));
        assert_eq!(find_key(text, "kind", 4, 1), None);
        // Flow maps, tabs, and characters before the key that are not ASCII.
        assert_eq!(
            find_key("t: { kind: x, tokn_env: y }", "tokn_env", 1, 4),
            Some((1, 15))
        );
        assert_eq!(find_key("é: {x\t: 1}", "x", 1, 1), Some((1, 5)));
        // A key that only ends like the one sought is not it.
        assert_eq!(
            find_key("my_kind: 1\nkind: 2\n", "kind", 1, 1),
            Some((2, 1))
        );
        assert_eq!(unknown_field("unknown field `x`, expected y"), Some("x"));
        assert_eq!(unknown_field("missing field `x`"), None);
    }
}

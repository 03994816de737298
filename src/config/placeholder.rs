//! The packaged example configuration marks each value an operator must give
//! with `CHANGE-ME`; a file still holding one is refused before anything
//! else, naming every line left to fill in.

use super::ConfigError;

/// The marker the example configuration puts where a value must be filled in.
pub(super) const MARKER: &str = "CHANGE-ME";

/// Refuses `text` while a line (outside comments) still holds [`MARKER`].
pub(super) fn refuse_unfilled(text: &str, file: &str) -> Result<(), ConfigError> {
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| without_comment(line).contains(MARKER))
        .map(|(i, line)| format!("  line {}: {}", i + 1, line.trim()))
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    Err(ConfigError::File {
        file: file.to_string(),
        message: format!(
            "{} line(s) still hold the example's {MARKER} placeholder:\n{}",
            lines.len(),
            lines.join("\n")
        ),
        hint: Some(format!(
            "replace each {MARKER} with your own value (the comments above it say what goes there), then run `idsync validate -c {file}`"
        )),
    })
}

/// The line up to a YAML comment: a `#` at its start or after a blank.
fn without_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..i];
        }
        previous = c;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_line_still_holding_the_marker_but_not_comments() {
        let text = "# fill in every CHANGE-ME\nsource:\n  users: /CHANGE-ME/u.csv\n  x: 1 # CHANGE-ME later\ntarget:\n  base_url: https://h/CHANGE-ME\n";
        let e = refuse_unfilled(text, "/etc/idsync/config.yaml").unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("/etc/idsync/config.yaml: 2 line(s)"),
            "{message}"
        );
        assert!(
            message.contains("line 3: users: /CHANGE-ME/u.csv"),
            "{message}"
        );
        assert!(
            message.contains("line 6: base_url: https://h/CHANGE-ME"),
            "{message}"
        );
        assert!(
            !message.contains("line 1") && !message.contains("line 4"),
            "{message}"
        );
        assert!(e.hint().unwrap().contains("idsync validate"));
    }

    #[test]
    fn a_filled_in_file_passes() {
        refuse_unfilled("a: b#c\nurl: https://x/#frag # note CHANGE-ME\n", "c.yaml").unwrap();
    }
}

//! `${VAR}` in the configuration file, expanded from the environment before
//! the YAML is parsed.

use super::error::ConfigError;

/// Expands `${VAR}` from the environment; `$$` is a literal `$`. An unset variable
/// is an error at its line and column.
pub(super) fn expand_env(text: &str, file: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            column += rest[..pos].chars().count();
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                column += 2;
            } else if let Some(body) = after.strip_prefix('{') {
                let at = |message: String, hint: String| ConfigError::At {
                    file: file.to_string(),
                    line: line_no as u64 + 1,
                    column: column as u64,
                    message,
                    hint: Some(hint),
                };
                let Some(end) = body.find('}') else {
                    return Err(at(
                        "unterminated ${…}".into(),
                        "write ${NAME}, or $$ for a literal dollar sign".into(),
                    ));
                };
                let name = &body[..end];
                out.push_str(&variable(name).map_err(|(message, hint)| at(message, hint))?);
                column += end + 3;
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
                column += 1;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Whether `name` can be an environment variable's name: letters, digits and
/// `_`, not starting with a digit.
pub(super) fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// The value of `${name}`, or what is wrong with it and what to do.
fn variable(name: &str) -> Result<String, (String, String)> {
    let valid = is_variable_name(name);
    let value = if valid {
        std::env::var(name).ok()
    } else {
        None
    };
    match value {
        // Expanded before YAML parsing: a line break would add keys
        // (`remove_action: delete`), other controls corrupt values.
        Some(v) if v.contains(char::is_control) => Err((
            format!("environment variable {name} holds a line break or another control character"),
            format!(
                "a ${{VAR}} value must be one line of text: fix {name} (e.g. strip the trailing newline)"
            ),
        )),
        Some(v) => Ok(v),
        None => Err((
            if valid {
                format!("environment variable {name} is not set")
            } else {
                format!("${{{name}}} is not a valid variable reference")
            },
            if name == "CREDENTIALS_DIRECTORY" {
                "systemd sets CREDENTIALS_DIRECTORY only for a unit with `LoadCredential=` (see examples/systemd/idsync.service); by hand, set it to the folder holding the secret files (CREDENTIALS_DIRECTORY=/etc/idsync for the packaged config), or point token_file at the file itself".to_string()
            } else {
                format!("export {name}=… or write the value in the file")
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_reports_unset_ones_with_position() {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("IDSYNC_TEST_DIR_ID", "abc") };
        let out = expand_env("url: x/${IDSYNC_TEST_DIR_ID}/y $$5\n", "c.yaml").unwrap();
        assert_eq!(out, "url: x/abc/y $5\n");
        let err = expand_env("a: 1\nb: ${IDSYNC_SURELY_UNSET_VAR}\n", "c.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml:2:4: environment variable IDSYNC_SURELY_UNSET_VAR is not set"
        );
    }

    #[test]
    fn a_variable_with_a_line_break_cannot_add_keys() {
        // SAFETY: tests in this module are the only users of these variables.
        unsafe {
            std::env::set_var(
                "IDSYNC_TEST_NEWLINE_ID",
                "abc\npolicy:\n  remove_action: delete",
            );
            std::env::set_var("IDSYNC_TEST_TAB_ID", "abc\tdef");
            std::env::set_var("IDSYNC_TEST_CR_ID", "abc\r");
        }
        for name in [
            "IDSYNC_TEST_NEWLINE_ID",
            "IDSYNC_TEST_TAB_ID",
            "IDSYNC_TEST_CR_ID",
        ] {
            let err = expand_env(&format!("a: 1\nurl: x/${{{name}}}\n"), "c.yaml").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "c.yaml:2:8: environment variable {name} holds a line break or another control character"
                )
            );
            assert!(err.hint().unwrap().contains(name));
        }
    }
}

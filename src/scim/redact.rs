//! What a target says is not trusted: a server (or a proxy in front of it) may
//! echo the request's headers in an error body, bearer token included, or send a
//! detail megabytes long. Every string that comes from the target passes through
//! [`Redactor::clean`] where it enters idsync (when a [`super::ScimError`] is
//! built), before anything logs, prints or stores it: the client's token and any
//! `Bearer …`/`Basic …` credential are replaced, and the text is cut to
//! [`MAX_TARGET_TEXT`] bytes.

use std::sync::LazyLock;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};

/// What replaces a credential.
pub const REDACTED: &str = "[redacted]";

/// The most of one target string (an error's detail, a transport error) kept:
/// enough for any real SCIM error message, small enough that a hostile or broken
/// target cannot grow the state DB or the output by megabytes per operation.
pub const MAX_TARGET_TEXT: usize = 2048;

/// Tokens shorter than this are not searched for on their own (a one-letter
/// "token" would redact every occurrence of that letter); the credential
/// patterns still apply.
const MIN_TOKEN_LEN: usize = 4;

/// `Bearer <credential>` and `Basic <credential>` (any case), as in an
/// `Authorization` header echoed back. A credential is at least 8 token
/// characters, so prose ("basic auth is off") stays.
static CREDENTIAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|basic)(\s+|\s*[:=]\s*)[A-Za-z0-9._~+/=\-]{8,}")
        .expect("static regex")
});

/// Cleans target strings; knows the token, never shows it (no `Debug` of it).
pub struct Redactor {
    token: SecretString,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    pub fn new(token: SecretString) -> Self {
        Self { token }
    }

    /// `text` without the token or any credential pattern, cut to
    /// [`MAX_TARGET_TEXT`] bytes (marked, with the original size).
    pub fn clean(&self, text: &str) -> String {
        let token = self.token.expose_secret();
        let text = if token.len() >= MIN_TOKEN_LEN && text.contains(token) {
            text.replace(token, REDACTED)
        } else {
            text.to_owned()
        };
        let text = CREDENTIAL.replace_all(&text, |c: &regex::Captures<'_>| {
            format!("{}{}{REDACTED}", &c[1], &c[2])
        });
        cut(&text)
    }
}

/// At most [`MAX_TARGET_TEXT`] bytes of `text`, cut at a character boundary, with
/// `… (cut, N bytes in all)` when something was left out.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_TARGET_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TARGET_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut, {} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(SecretString::from("tok-12345-secret"))
    }

    #[test]
    fn the_token_and_credential_patterns_are_redacted() {
        let r = redactor();
        assert_eq!(
            r.clean("bad request; headers: Authorization: Bearer tok-12345-secret\r\nHost: x"),
            "bad request; headers: Authorization: Bearer [redacted]\r\nHost: x"
        );
        assert_eq!(r.clean("echo tok-12345-secret"), "echo [redacted]");
        assert_eq!(
            r.clean("authorization: basic dXNlcjpwdw== and BEARER=abc.def.ghi"),
            "authorization: basic [redacted] and BEARER=[redacted]"
        );
        assert_eq!(
            r.clean("basic auth is not supported"),
            "basic auth is not supported"
        );
        assert_eq!(
            r.clean(&format!("Bearer {}", "x".repeat(8))),
            "Bearer [redacted]"
        );
        assert_eq!(r.clean("no secrets here"), "no secrets here");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let r = redactor();
        let long = "é".repeat(MAX_TARGET_TEXT);
        let cleaned = r.clean(&long);
        assert!(cleaned.len() < MAX_TARGET_TEXT + 64, "{}", cleaned.len());
        assert!(
            cleaned.ends_with(&format!("… (cut, {} bytes in all)", long.len())),
            "{cleaned}"
        );
        assert_eq!(r.clean(&"x".repeat(MAX_TARGET_TEXT)).len(), MAX_TARGET_TEXT);
    }

    #[test]
    fn debug_does_not_show_the_token() {
        assert_eq!(format!("{:?}", redactor()), "Redactor");
    }
}

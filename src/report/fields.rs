//! Log lines escape what they carry themselves, so a call site that forgets
//! cannot leak: [`LogFields`] formats every field and the message of a text
//! log line through [`escape`], and [`JsonSafe`] passes JSON (the JSON log
//! format, the plan document) through [`push_json_text`]. A target's error
//! detail with a newline and `error: fake` in it stays on its line, shown as
//! `\n`; an escape sequence cannot colour, retitle or clear the terminal.

use std::fmt;
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use super::{escape, push_json_text, quote};

/// How a text log line shows an event's fields: the message, then
/// `name=value` for each field, space-separated, as tracing-subscriber's
/// default does; but every value and the message are [`escape`]d (a string
/// field is [`quote`]d). Field names are styled on a terminal (the level is
/// coloured by the event formatter, untouched); values never are.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFields;

impl<'writer> FormatFields<'writer> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldVisitor {
            writer,
            result: Ok(()),
            empty: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldVisitor<'a> {
    writer: Writer<'a>,
    result: fmt::Result,
    /// Nothing written yet: no separating space.
    empty: bool,
}

impl FieldVisitor<'_> {
    /// Writes one field; `text` is already escaped.
    fn write(&mut self, field: &Field, text: &str) {
        let name = field.name();
        // Metadata of a `log` record, already shown by the event formatter.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.empty) {
            ""
        } else {
            " "
        };
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = if name == "message" {
            write!(self.writer, "{sep}{text}")
        } else if self.writer.has_ansi_escapes() {
            // Italic name, dimmed `=`, as tracing-subscriber styles them.
            write!(
                self.writer,
                "{sep}\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{text}"
            )
        } else {
            write!(self.writer, "{sep}{name}={text}")
        };
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, &escape(value));
        } else {
            self.write(field, &quote(value));
        }
    }

    /// Everything else: `?value` (Debug), `%value` (Display), numbers, the
    /// message's format arguments — formatted, then escaped.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &escape(&format!("{value:?}")));
    }
}

/// A writer for JSON text: what serde_json leaves raw in strings and
/// [`escape`] would escape (bidi overrides, line separators, DEL and C1
/// controls) goes on as JSON `\u` escapes. For the JSON log format (one event
/// per write) and the plan document (written in pieces: a character cut
/// between two writes waits for its end).
pub struct JsonSafe<W: io::Write> {
    inner: W,
    /// The start of a character whose end has not been written yet.
    pending: Vec<u8>,
}

impl<W: io::Write> JsonSafe<W> {
    pub fn new(inner: W) -> Self {
        JsonSafe {
            inner,
            pending: Vec::new(),
        }
    }
}

impl<W: io::Write> io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Plain ASCII (most of any JSON document) goes through as it is.
        if self.pending.is_empty() && buf.iter().all(|b| *b < 0x7f) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        self.pending.extend_from_slice(buf);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    push_json_text(&mut out, text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    push_json_text(&mut out, std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Not UTF-8 (serde_json never writes that): as it is.
                        Some(n) => {
                            self.inner.write_all(out.as_bytes())?;
                            out.clear();
                            self.inner.write_all(&after[..n])?;
                            rest = &after[n..];
                        }
                        // A character cut short: wait for its end.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let rest = rest.to_vec();
        self.inner.write_all(out.as_bytes())?;
        self.pending = rest;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.inner.write_all(&pending)?;
        }
        self.inner.flush()
    }
}

impl<W: io::Write> Drop for JsonSafe<W> {
    fn drop(&mut self) {
        let _ = io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::super::json_needs_escape;
    use super::*;

    #[test]
    fn json_keeps_its_meaning_and_loses_its_raw_overrides() {
        let value =
            serde_json::json!({ "detail": "boom\nerror: fake\u{1b}[31m\u{202e}\u{7f}\u{e0041}" });
        let mut out = Vec::new();
        {
            let mut w = JsonSafe::new(&mut out);
            let text = serde_json::to_string_pretty(&value).unwrap();
            // Written a byte at a time: characters arrive cut in pieces.
            for b in text.as_bytes() {
                w.write_all(&[*b]).unwrap();
            }
        }
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(json_needs_escape), "{text}");
        assert!(text.contains("\\u202e\\u007f\\udb40\\udc41"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
        let text = crate::report::json_text(value.to_string());
        assert!(!text.chars().any(json_needs_escape), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    /// Formats one event with [`LogFields`] into a string.
    fn log_line(ansi: bool, event: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_target(false)
            .without_time()
            .with_ansi(ansi)
            .fmt_fields(LogFields)
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_log_line_escapes_its_message_and_every_field() {
        let why = "/Schemas could not be read (HTTP 500: boom\nerror: fake\u{1b}[31m\r\u{202e})";
        let line = log_line(false, || {
            tracing::info!(
                target_url = %"http://t\nerror: x",
                user = "ann\u{7}",
                error = ?"a\nb".to_string(),
                count = 3,
                "{why}; RFC 7643 defaults assumed"
            );
        });
        assert_eq!(
            line,
            " INFO /Schemas could not be read (HTTP 500: boom\\nerror: fake\\u{1b}[31m\\r\\u{202e}); \
             RFC 7643 defaults assumed target_url=http://t\\nerror: x user=\"ann\\u{7}\" \
             error=\"a\\nb\" count=3\n"
        );
        // Plain messages and fields read as before.
        let line = log_line(false, || tracing::warn!(users = 2, "target read"));
        assert_eq!(line, " WARN target read users=2\n");
    }

    #[test]
    fn on_a_terminal_the_level_is_coloured_and_values_are_still_escaped() {
        let line = log_line(
            true,
            || tracing::warn!(detail = %"\u{1b}[2J", "x\u{1b}]0;t\u{7}"),
        );
        // The level in yellow, the name italic: the formatter's own styling.
        assert!(
            line.contains("\u{1b}[33m") && line.contains("WARN"),
            "{line:?}"
        );
        assert!(line.contains("\u{1b}[3mdetail\u{1b}[0m"), "{line:?}");
        assert!(line.contains("x\\u{1b}]0;t\\u{7}"), "{line:?}");
        assert!(line.contains("=\u{1b}[0m\\u{1b}[2J"), "{line:?}");
    }
}

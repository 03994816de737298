//! Alerts by email: one plain-text message through the configured SMTP
//! server, to every recipient at once. The connection is encrypted as
//! `notify.email.tls` says (STARTTLS required, or TLS from the start), the
//! server's certificate verified; `none` is only ever allowed to this machine
//! (the config refuses it otherwise). The password is read just before
//! logging in and never logged: an error names what failed (the connection,
//! TLS, the server's answer), never the password. Every step is bounded.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{EmailSettings, SmtpTls};

/// How long the connection, and then each SMTP command, may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one message (or one `check`) may take in all.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one message to every recipient. The error says what failed.
pub async fn send(settings: &EmailSettings, subject: &str, body: &str) -> Result<(), String> {
    let message = message(settings, subject, body)?;
    let transport = transport(settings)?;
    match tokio::time::timeout(TIMEOUT, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
    }
}

/// Connects, encrypts and logs in as a message would be sent, asks the
/// server whether it is there (NOOP) and leaves: for `check`.
pub async fn probe(settings: &EmailSettings) -> Result<(), String> {
    let transport = transport(settings)?;
    match tokio::time::timeout(TIMEOUT, transport.test_connection()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("the server did not answer NOOP".into()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
    }
}

/// The message: from `from` to every `to`, plain text.
fn message(settings: &EmailSettings, subject: &str, body: &str) -> Result<Message, String> {
    let mut builder = Message::builder()
        .from(settings.from.clone())
        .subject(subject)
        .message_id(None)
        .header(ContentType::TEXT_PLAIN);
    for to in &settings.to {
        builder = builder.to(to.clone());
    }
    builder
        .body(body.to_string())
        .map_err(|e| format!("cannot build the message: {e}"))
}

/// A transport to the configured server, with the login (the password read
/// now).
fn transport(settings: &EmailSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    type Smtp = AsyncSmtpTransport<Tokio1Executor>;
    let host = settings.host.as_str();
    let builder = match settings.tls {
        SmtpTls::StartTls => Smtp::starttls_relay(host),
        SmtpTls::Implicit => Smtp::relay(host),
        SmtpTls::Plain => Ok(Smtp::builder_dangerous(host)),
    }
    .map_err(|e| describe(&e))?;
    let mut builder = builder.port(settings.port).timeout(Some(COMMAND_TIMEOUT));
    if let Some(login) = &settings.login {
        let password = login.password.read().map_err(|e| e.to_string())?;
        builder = builder.credentials(Credentials::new(
            login.username.clone(),
            password.expose_secret().to_string(),
        ));
    }
    Ok(builder.build())
}

/// What went wrong, by kind: the server's refusal with its code and text, or
/// the connection or TLS failure.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", COMMAND_TIMEOUT.as_secs());
    }
    let text = e.to_string();
    if e.is_permanent() {
        format!("the server refused: {text}")
    } else if e.is_transient() {
        format!("the server refused for now: {text}")
    } else {
        text
    }
}

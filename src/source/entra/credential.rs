//! The app's credential: a client secret (from a variable or a file), or a
//! certificate whose private key signs a client assertion (a JWT, RS256, with
//! the certificate's thumbprints in `x5t` and `x5t#S256`). Read only when
//! Graph is contacted; never logged.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use super::error::EntraError;
use crate::secret::{self, SecretFileError};

/// A client assertion is valid this long (Entra accepts up to 10 minutes).
const ASSERTION_LIFETIME_S: u64 = 600;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Where the credential is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    SecretEnv(String),
    SecretFile(PathBuf),
    Certificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

/// The credential, read.
pub enum Loaded {
    Secret(SecretString),
    Certificate {
        key: Box<jsonwebtoken::EncodingKey>,
        /// SHA-1 and SHA-256 thumbprints of the certificate's DER, base64url.
        x5t: String,
        x5t_s256: String,
    },
}

impl Credential {
    pub fn read(&self) -> Result<Loaded, EntraError> {
        match self {
            Credential::SecretEnv(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    Ok(Loaded::Secret(SecretString::from(v.trim().to_string())))
                }
                _ => Err(EntraError::SecretNotSet { var: var.clone() }),
            },
            Credential::SecretFile(path) => {
                let text = secret::read(path).map_err(file_problem)?;
                let secret = text.expose_secret().trim();
                if secret.is_empty() {
                    return Err(bad_content(path, "is empty"));
                }
                Ok(Loaded::Secret(SecretString::from(secret.to_string())))
            }
            Credential::Certificate {
                certificate,
                private_key,
            } => {
                let pem_text = secret::read_public(certificate).map_err(file_problem)?;
                let der = pem::parse_many(&pem_text)
                    .ok()
                    .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
                    .ok_or_else(|| bad_content(certificate, "holds no PEM CERTIFICATE"))?;
                let sha1 = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    der.contents(),
                );
                let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.contents());
                let key_text = secret::read(private_key).map_err(file_problem)?;
                let key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(key_text.expose_secret().as_bytes())
                        .map_err(|_| bad_content(private_key, "is not a PEM RSA private key"))?;
                Ok(Loaded::Certificate {
                    key: Box::new(key),
                    x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
                    x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
                })
            }
        }
    }

    /// Where the credential comes from, for messages (never its value).
    pub fn describe(&self) -> String {
        match self {
            Credential::SecretEnv(var) => format!("the client secret in {var}"),
            Credential::SecretFile(path) => format!("the client secret in {}", path.display()),
            Credential::Certificate { certificate, .. } => {
                format!("the certificate {}", certificate.display())
            }
        }
    }
}

impl Loaded {
    /// The form fields that prove the app's identity to `token_url`.
    pub fn form_fields(
        &self,
        client_id: &str,
        token_url: &str,
    ) -> Result<Vec<(&'static str, SecretString)>, EntraError> {
        match self {
            Loaded::Secret(secret) => Ok(vec![("client_secret", secret.clone())]),
            Loaded::Certificate { key, x5t, x5t_s256 } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.x5t = Some(x5t.clone());
                header.x5t_s256 = Some(x5t_s256.clone());
                let claims = serde_json::json!({
                    "aud": token_url,
                    "iss": client_id,
                    "sub": client_id,
                    "jti": format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                    "nbf": now,
                    "iat": now,
                    "exp": now + ASSERTION_LIFETIME_S,
                });
                let jwt = jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
                    EntraError::GraphBadAnswer {
                        url: token_url.to_string(),
                        reason: format!("cannot sign the client assertion: {e}"),
                    }
                })?;
                Ok(vec![
                    ("client_assertion_type", SecretString::from(ASSERTION_TYPE)),
                    ("client_assertion", SecretString::from(jwt)),
                ])
            }
        }
    }
}

/// A credential file refused by the secret-file rule.
fn file_problem(e: SecretFileError) -> EntraError {
    EntraError::SecretFile {
        problem: e.problem.to_string(),
        path: e.path,
    }
}

/// A credential file read, whose content is unusable.
fn bad_content(path: &Path, problem: &str) -> EntraError {
    EntraError::SecretFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// `credential.read()`'s error, or a panic if it is accepted or blocks
    /// (a FIFO with no writer never returns from `open`).
    fn refusal(credential: Credential) -> String {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(credential.read().err().map(|e| e.to_string()));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("reading the credential blocked")
            .expect("the credential was accepted")
    }

    fn private_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // Owner-only, so that only its kind can refuse it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn an_entra_secret_file_that_is_a_fifo_is_refused_without_blocking() {
        let dir = private_folder();
        let path = fifo(dir.path(), "secret");
        let e = refusal(Credential::SecretFile(path.clone()));
        assert_eq!(
            e,
            format!(
                "Entra client secret file {}: is a FIFO, not a regular file",
                path.display()
            )
        );
    }

    #[test]
    fn an_entra_certificate_or_key_that_is_a_fifo_is_refused_without_blocking() {
        let dir = private_folder();
        let key = dir.path().join("app.key");
        std::fs::write(&key, "not a key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let certificate = fifo(dir.path(), "app.pem");
        let e = refusal(Credential::Certificate {
            certificate: certificate.clone(),
            private_key: key,
        });
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        assert!(e.contains(&certificate.display().to_string()), "{e}");
        let pem = dir.path().join("cert.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = refusal(Credential::Certificate {
            certificate: pem,
            private_key: fifo(dir.path(), "fifo.key"),
        });
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn an_entra_secret_file_in_a_folder_others_can_write_is_refused() {
        let dir = private_folder();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = refusal(Credential::SecretFile(path));
        assert!(
            e.contains("which other users can write to (mode 777)"),
            "{e}"
        );
    }
}

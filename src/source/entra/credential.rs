//! The app's credential: a client secret (from a variable or a file), or a
//! certificate whose private key signs a client assertion (a JWT, RS256, with
//! the certificate's thumbprints in `x5t` and `x5t#S256`). Read only when
//! Graph is contacted; never logged.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use crate::source::SourceError;

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
    pub fn read(&self) -> Result<Loaded, SourceError> {
        match self {
            Credential::SecretEnv(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    Ok(Loaded::Secret(SecretString::from(v.trim().to_string())))
                }
                _ => Err(SourceError::EntraSecretNotSet { var: var.clone() }),
            },
            Credential::SecretFile(path) => {
                let text = read_private(path)?;
                let secret = text.expose_secret().trim();
                if secret.is_empty() {
                    return Err(file_problem(path, "is empty"));
                }
                Ok(Loaded::Secret(SecretString::from(secret.to_string())))
            }
            Credential::Certificate {
                certificate,
                private_key,
            } => {
                let pem_text = std::fs::read(certificate)
                    .map_err(|e| file_problem(certificate, &e.to_string()))?;
                let der = pem::parse_many(&pem_text)
                    .ok()
                    .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
                    .ok_or_else(|| file_problem(certificate, "holds no PEM CERTIFICATE"))?;
                let sha1 = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    der.contents(),
                );
                let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.contents());
                let key_text = read_private(private_key)?;
                let key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(key_text.expose_secret().as_bytes())
                        .map_err(|_| file_problem(private_key, "is not a PEM RSA private key"))?;
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
    ) -> Result<Vec<(&'static str, SecretString)>, SourceError> {
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
                    SourceError::GraphBadAnswer {
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

fn file_problem(path: &Path, problem: &str) -> SourceError {
    SourceError::EntraSecretFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// A file only idsync's user may read (mode 600 or stricter).
fn read_private(path: &Path) -> Result<SecretString, SourceError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| file_problem(path, &e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(file_problem(
                path,
                &format!("is open to other users (mode {:o})", mode & 0o777),
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_problem(path, &e.to_string()))?;
    Ok(SecretString::from(text))
}

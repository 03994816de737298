//! The TLS set-up every HTTP client of the process shares: one verifier of
//! the system's root certificates, loaded once. Each client reqwest builds on
//! its own loads them again (a few milliseconds each, and a sync builds two:
//! the source's and the target's). The set-up is reqwest's own for its
//! default client: the platform verifier, every TLS version rustls offers,
//! and HTTP/2 or HTTP/1.1 by ALPN.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

/// The shared set-up, made on first use; an error (no usable roots) is kept
/// and told to every client that asks.
pub(crate) fn client_config() -> Result<ClientConfig, String> {
    static CONFIG: OnceLock<Result<ClientConfig, String>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Result<ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| format!("the system's root certificates: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_set_up_offers_h2_and_http_1_1_and_builds_a_client() {
        let config = super::client_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .build()
            .unwrap();
    }
}

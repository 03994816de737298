//! What this binary is: its version, the git commit it was built from, and
//! what is compiled in, for `--version` and `idsync version [--format json]`.
//!
//! The build script records the commit (`git rev-parse --short HEAD`, with
//! `-dirty` for uncommitted changes; `IDSYNC_BUILD_COMMIT` overrides it for a
//! build without `.git`; "unknown" otherwise), the target triple and the
//! compiler's version.

use std::sync::OnceLock;

/// The package version.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from, "unknown" when the build could not tell.
pub(crate) const COMMIT: &str = env!("IDSYNC_GIT_COMMIT");
/// The target triple it was built for.
const TARGET: &str = env!("IDSYNC_TARGET");
/// `rustc --version` of the compiler that built it ("unknown" if it did not say).
const RUSTC: &str = env!("IDSYNC_RUSTC");

/// What is compiled in. There are no cargo features: every source and
/// target kind is always built; the list says which, and with what TLS and
/// SQLite, for a bug report or an inventory.
pub(crate) fn features() -> Vec<String> {
    vec![
        "source-csv".to_string(),
        "source-ldap".to_string(),
        "source-entra".to_string(),
        "target-scim".to_string(),
        "target-atlassian".to_string(),
        "tls-rustls-aws-lc-rs".to_string(),
        format!("sqlite-{}-bundled", rusqlite::version()),
    ]
}

/// `idsync --version`: `idsync 0.1.0 (commit abc1234)` and what is compiled in.
pub(crate) fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{VERSION} (commit {COMMIT})\nfeatures: {}\ntarget: {TARGET}\nrustc: {RUSTC}",
            features().join(" ")
        )
    })
}

/// `idsync version`: the same as `--version`, with the program's name.
pub(crate) fn text() -> String {
    format!("idsync {}\n", long_version())
}

/// `idsync version --format json`: one object for scripts.
pub(crate) fn json() -> serde_json::Value {
    serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": VERSION,
        "commit": COMMIT,
        "features": features(),
        "target": TARGET,
        "rustc": RUSTC,
        "sqlite": rusqlite::version(),
    })
}

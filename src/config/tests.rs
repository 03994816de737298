//! Compiling whole configuration files: each section's mistakes at their
//! line and column, defaults, paths.

use std::path::Path;

use super::*;
use crate::plan::ReuseAccounts;

#[test]
fn a_bad_member_removal_limit_is_reported_at_its_value() {
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
    let text = format!(
        "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\npolicy:\n  max_removals: 5%\n  max_member_removals: 120%\n",
        mapping.display()
    );
    let e = Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text)
        .expect_err("refused")
        .to_string();
    assert!(
        e.starts_with(
            "/etc/idsync/idsync.yaml:7:24: max_member_removals \"120%\" is not between 0% and 100%"
        ),
        "{e}"
    );
}

fn compile_with(extra: &str) -> Result<Settings, ConfigError> {
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
    let text = format!(
        "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\n{extra}",
        mapping.display()
    );
    Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text)
}

#[test]
fn metrics_file_and_notify_are_read_with_their_defaults() {
    let s = compile_with(
        "metrics_file: metrics/idsync.prom\nnotify: { webhook_url_env: IDSYNC_WEBHOOK }\n",
    )
    .expect("valid");
    assert_eq!(
        s.metrics_file.as_deref(),
        Some(Path::new("/etc/idsync/metrics/idsync.prom"))
    );
    let notify = s.notify.expect("notify");
    assert_eq!(notify.webhook_url_env, "IDSYNC_WEBHOOK");
    assert_eq!(
        notify.on,
        [
            NotifyEvent::GuardStop,
            NotifyEvent::Quarantine,
            NotifyEvent::Failures
        ]
    );
    let s = compile_with("notify: { webhook_url_env: W, on: [guard_stop] }\n").unwrap();
    assert_eq!(s.notify.unwrap().on, [NotifyEvent::GuardStop]);
    let e = compile_with("notify: { webhook_url_env: W, on: [sometimes] }\n").unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
    // The URL itself is refused where a variable name belongs.
    let e = compile_with("notify: { webhook_url_env: \"https://hooks.example/x\" }\n").unwrap_err();
    assert!(
        e.to_string().contains("not an environment variable name"),
        "{e}"
    );
}

#[test]
fn an_unset_credentials_directory_points_at_load_credential() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    // Not set in tests (no systemd unit runs them).
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        return;
    }
    std::fs::write(
        &path,
        "target: { token_file: \"${CREDENTIALS_DIRECTORY}/scim-token\" }\n",
    )
    .unwrap();
    let e = Settings::load(&path).unwrap_err();
    assert!(
        e.to_string().contains("CREDENTIALS_DIRECTORY is not set"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("LoadCredential="), "{e:?}");
}

#[test]
fn reuse_accounts_defaults_to_never_and_refuses_unknown_values_at_their_line() {
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
    let config = |policy: &str| {
        format!(
            "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: csv, users: u.csv }}\npolicy:\n  remove_action: disable\n{policy}",
            mapping.display()
        )
    };
    let path = Path::new("/etc/idsync/idsync.yaml");
    let default = Settings::compile(path, &config("")).expect("compiles");
    assert_eq!(default.policy.reuse_accounts, ReuseAccounts::Never);
    let after =
        Settings::compile(path, &config("  reuse_accounts: after_removal\n")).expect("compiles");
    assert_eq!(after.policy.reuse_accounts, ReuseAccounts::AfterRemoval);
    let e = Settings::compile(path, &config("  reuse_accounts: always\n"))
        .expect_err("refused")
        .to_string();
    assert!(e.starts_with("/etc/idsync/idsync.yaml:7:"), "{e}");
    assert!(e.contains("after_removal"), "{e}");
}

/// Everything but the `source:` section's body; `source:` is line 7.
const ALL_BUT_SOURCE: &str = "mapping: missing-mapping.yaml
target:
  kind: scim
  base_url: https://scim.example
  token_env: SCIM_TOKEN
state: state.db
source:";

/// Compiles a config whose `source:` section is `source` (a flow mapping, or
/// lines from line 8 on) and returns the error. The mapping file does not
/// exist: a source that compiles fails there.
fn config_error(source: &str) -> ConfigError {
    let text = format!("{ALL_BUT_SOURCE}{source}");
    Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text).expect_err("refused")
}

const LDAP: &str = "
  kind: ldap
  url: ldap://ldap.example.com
  bind_dn: cn=sync,dc=example,dc=com
  bind_password_env: LDAP_PASSWORD
  base_dn: dc=example,dc=com
";

#[test]
fn a_valid_source_gets_through() {
    for source in [
        LDAP,
        "\n  kind: csv\n  users: users.csv\n  delimiter: ';'\n",
    ] {
        let e = config_error(source).to_string();
        assert!(e.contains("mapping file"), "{e}");
    }
}

#[test]
fn ldap_mistakes_are_reported_at_their_field() {
    // starttls with an ldaps:// URL: at `starttls`' value.
    let e = config_error(&format!(
        "{}  starttls: true\n",
        LDAP.replace("ldap://", "ldaps://")
    ));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:13:13: `starttls: true` needs an ldap:// URL"),
        "{e}"
    );
    assert_eq!(
        e.hint().as_deref(),
        Some("see the LDAP source section of the README")
    );
    // No password source: at bind_dn, the account it belongs to.
    let e = config_error(&LDAP.replace("  bind_password_env: LDAP_PASSWORD\n", ""));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:10:12: no bind password"),
        "{e}"
    );
    // An unparsable timeout: at its value.
    let e = config_error(&format!("{LDAP}  page_size: 100\n  timeout: soon\n"));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:14:12: timeout \"soon\" is not a duration"),
        "{e}"
    );
    // A bad filter in a flow mapping, `kind` not first.
    let e = config_error(
        " { url: ldap://h, bind_dn: x, kind: ldap, bind_password_env: P, base_dn: dc=x, user_filter: '(cn=' }\n",
    );
    assert!(
        e.to_string().starts_with(
            "/etc/idsync/idsync.yaml:7:100: `user_filter` \"(cn=\" is not a valid LDAP filter"
        ),
        "{e}"
    );
}

const ENTRA: &str = "
  kind: entra
  tenant_id: contoso.onmicrosoft.com
  client_id: 11111111-2222-3333-4444-555555555555
  client_secret_env: ENTRA_SECRET
";

#[test]
fn entra_mistakes_are_reported_at_their_field() {
    let e = config_error(ENTRA).to_string();
    assert!(e.contains("mapping file"), "{e}");
    let e = config_error(&ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", ""));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:10:14: no credential"),
        "{e}"
    );
    assert_eq!(
        e.hint().as_deref(),
        Some("see the Entra ID source section of the README")
    );
    let e = config_error(&format!("{ENTRA}  client_secret_file: /etc/s\n"));
    assert!(
        e.to_string().starts_with(
            "/etc/idsync/idsync.yaml:12:23: `client_secret_env` and `client_secret_file` are set"
        ),
        "{e}"
    );
    let e = config_error(&format!(
        "{}  certificate_file: app.pem\n",
        ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", "")
    ));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:11:21: a certificate credential needs both"),
        "{e}"
    );
    let e = config_error(&format!(
        "{}  certificate_file: app.pem\n  private_key_file: app.key\n",
        ENTRA.replace("  client_secret_env: ENTRA_SECRET\n", "")
    ));
    assert!(e.to_string().contains("mapping file"), "{e}");
    let e = config_error(&format!("{ENTRA}  full_every: daily\n"));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:12:15: full_every \"daily\" is not a duration"),
        "{e}"
    );
    let e = config_error(&format!("{ENTRA}  graph_url: ftp://graph\n"));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:12:14: graph_url"),
        "{e}"
    );
    let e = config_error(&format!("{ENTRA}  rate_limit: 0\n"));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:12:15: rate_limit 0 is out of range"),
        "{e}"
    );
}

#[test]
fn aliases_work_in_the_source_section() {
    let e = config_error(&format!(
        "{LDAP}  user_base_dn: &people ou=people,dc=example,dc=com\n  group_base_dn: *people\n"
    ));
    assert!(e.to_string().contains("mapping file"), "{e}");
    // The alias is reported where it is used.
    let e = config_error(&format!(
        "{LDAP}  user_base_dn: &bad '(cn='\n  group_filter: *bad\n"
    ));
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:14:17: `group_filter`"),
        "{e}"
    );
}

#[test]
fn a_bad_csv_delimiter_is_reported_at_its_field() {
    let e = config_error("\n  kind: csv\n  users: users.csv\n  delimiter: \"§\"\n");
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:10:14: the CSV delimiter '§' is not an ASCII"),
        "{e}"
    );
    assert_eq!(
        e.hint().as_deref(),
        Some("use a single ASCII character such as ',' or ';'")
    );
}

#[test]
fn source_sections_still_refuse_unknown_keys_and_kinds() {
    let e = config_error(&format!("{LDAP}  pagesize: 5\n"));
    let text = e.to_string();
    assert!(
        text.starts_with("/etc/idsync/idsync.yaml:13:3: unknown field `pagesize`"),
        "{text}"
    );
    let e = config_error("\n  kind: csv\n  users: u.csv\n  url: ldap://h\n").to_string();
    assert!(e.contains("unknown field `url`"), "{e}");
    let e = config_error("\n  kind: ldif\n  users: u.csv\n").to_string();
    assert!(e.contains("unknown variant `ldif`"), "{e}");
    let e = config_error("\n  users: u.csv\n").to_string();
    assert!(e.contains("missing field `kind`"), "{e}");
    let e = config_error("\n  kind: entra\n").to_string();
    assert!(e.contains("missing field `tenant_id`"), "{e}");
    let e = config_error("\n  kind: entra\n  tenant: x\n").to_string();
    assert!(e.contains("unknown field `tenant`"), "{e}");
}

/// Compiles a config whose target has `base_url: {url}` (line 4, column 13)
/// and an LDAP source; the mapping file does not exist.
fn with_base_url(url: &str) -> ConfigError {
    let text = ALL_BUT_SOURCE.replace("https://scim.example", url) + LDAP;
    Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text).expect_err("refused")
}

#[test]
fn credentials_in_base_url_are_refused_at_the_field() {
    for url in [
        "https://user:pw-secret@scim.example/v2",
        "https://user@scim.example/v2",
        "http://:pw-secret@127.0.0.1:8080",
    ] {
        let e = with_base_url(url);
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/idsync/idsync.yaml:4:13: base_url must not carry credentials"),
            "{url}: {text}"
        );
        assert!(!text.contains("pw-secret"), "{text}");
        assert!(e.hint().unwrap().contains("token_env"));
    }
    let e = with_base_url("https://scim.example/v2").to_string();
    assert!(e.contains("mapping file"), "{e}");
}

#[test]
fn assign_is_compiled_into_the_mapping_and_its_mistakes_are_located() {
    let s = compile_with("assign:\n  groups: [Engineering]\n  users: [E1001]\n").expect("valid");
    assert_eq!(
        s.mapping.assign().expect("assign").describe(),
        "1 group (nested groups flattened), 1 user named directly"
    );
    assert!(compile_with("").unwrap().mapping.assign().is_none());
    // A CSV source has no app to read assignments from.
    let e = compile_with("assign:\n  app: 5f6e0000-0000-0000-0000-000000000001\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/etc/idsync/idsync.yaml:6:8: `assign.app` reads an Entra ID"),
        "{e}"
    );
    let e = compile_with("assign:\n  groups: []\n").unwrap_err();
    assert!(
        e.to_string().starts_with("/etc/idsync/idsync.yaml:6:11:"),
        "{e}"
    );
    let e = compile_with("assign: { group: [x] }\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `group`"), "{e}");
}

#[test]
fn an_entra_source_reads_the_app_and_counts_direct_members_by_default() {
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/entra.yaml");
    let text = format!(
        "mapping: {}\ntarget: {{ kind: scim, base_url: https://scim.example, token_env: T }}\nstate: s.db\nsource: {{ kind: entra, tenant_id: t, client_id: c, client_secret_env: S }}\nassign: {{ app: 5f6e0000-0000-0000-0000-000000000001, groups: [Eng] }}\n",
        mapping.display()
    );
    let s = Settings::compile(Path::new("/etc/idsync/idsync.yaml"), &text).expect("valid");
    assert_eq!(
        s.mapping.assign().unwrap().describe(),
        "1 group (direct members only), the assignments of enterprise app 5f6e0000-0000-0000-0000-000000000001 (direct members of its groups)"
    );
    let SourceSettings::Entra(entra) = &s.source else {
        panic!("entra")
    };
    assert!(
        format!("{entra:?}").contains("app: Some(\"5f6e0000"),
        "{entra:?}"
    );
}

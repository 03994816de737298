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
    compile_around(
        "target: { kind: scim, base_url: https://scim.example, token_env: T }\n",
        extra,
    )
}

/// A config of the CSV mapping, `target` (its lines), a state DB and a CSV
/// source, then `extra`.
fn compile_around(target: &str, extra: &str) -> Result<Settings, ConfigError> {
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
    let text = format!(
        "mapping: {}\n{target}state: s.db\nsource: {{ kind: csv, users: u.csv }}\n{extra}",
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
    assert_eq!(notify.webhook_url_env.as_deref(), Some("IDSYNC_WEBHOOK"));
    assert!(notify.email.is_none());
    // Every event by default, each by its name in `on:`.
    let names: Vec<&str> = notify.on.iter().map(|e| e.name()).collect();
    assert_eq!(
        names.join(" "),
        "guard_stop quarantine failures source_error bad_data recovered"
    );
    let s = compile_with("notify: { webhook_url_env: W, on: [guard_stop] }\n").unwrap();
    assert_eq!(s.notify.unwrap().on, [NotifyEvent::GuardStop]);
    let s =
        compile_with("notify: { webhook_url_env: W, on: [source_error, bad_data, recovered] }\n")
            .unwrap();
    assert_eq!(
        s.notify.unwrap().on,
        [
            NotifyEvent::SourceError,
            NotifyEvent::BadData,
            NotifyEvent::Recovered
        ]
    );
    let e = compile_with("notify: { webhook_url_env: W, on: [sometimes] }\n").unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
    // The URL itself is refused where a variable name belongs.
    let e = compile_with("notify: { webhook_url_env: \"https://hooks.example/x\" }\n").unwrap_err();
    assert!(
        e.to_string().contains("not an environment variable name"),
        "{e}"
    );
}

const EMAIL: &str = "notify:\n  email:\n    smtp: smtp.example.com:587\n    from: idsync@example.com\n    to: [it-ops@example.com, \"On Call <oncall@example.com>\"]\n";

#[test]
fn notify_email_is_read_with_its_defaults() {
    let s = compile_with(&format!(
        "{EMAIL}    username: idsync\n    password_file: secrets/smtp\n"
    ))
    .expect("valid");
    let notify = s.notify.expect("notify");
    assert_eq!(notify.webhook_url_env, None);
    assert_eq!(notify.on.len(), 6);
    let email = notify.email.expect("email");
    assert_eq!((email.host.as_str(), email.port), ("smtp.example.com", 587));
    assert_eq!(email.tls, SmtpTls::StartTls);
    assert_eq!(email.from.email.to_string(), "idsync@example.com");
    let to: Vec<String> = email.to.iter().map(ToString::to_string).collect();
    assert_eq!(to, ["it-ops@example.com", "On Call <oncall@example.com>"]);
    assert_eq!(
        email.login,
        Some(SmtpLogin {
            username: "idsync".into(),
            password: SmtpPassword::File("/etc/idsync/secrets/smtp".into()),
        })
    );
    // The port follows the encryption unless given.
    let s = compile_with(
        "notify:\n  email: { smtp: mail.example.com, tls: implicit, from: a@example.com, to: [b@example.com], username: u, password_env: SMTP_PW }\n",
    )
    .expect("valid");
    let email = s.notify.unwrap().email.unwrap();
    assert_eq!((email.port, email.tls), (465, SmtpTls::Implicit));
    assert_eq!(
        email.login.unwrap().password,
        SmtpPassword::Env("SMTP_PW".into())
    );
    // No encryption to this machine is allowed, without a login too.
    for host in ["127.0.0.1:2525", "localhost", "[::1]:25"] {
        let s = compile_with(&format!(
            "notify:\n  email: {{ smtp: \"{host}\", tls: none, from: a@example.com, to: [b@example.com] }}\n"
        ))
        .unwrap_or_else(|e| panic!("{host}: {e}"));
        let email = s.notify.unwrap().email.unwrap();
        assert_eq!((email.tls, email.login), (SmtpTls::Plain, None), "{host}");
    }
}

/// The error `notify.email` with `extra` lines makes, at its line and column.
fn email_error(extra: &str) -> (String, String) {
    let e = compile_with(&format!("{EMAIL}{extra}")).expect_err("refused");
    (e.to_string(), e.hint().unwrap_or_default())
}

#[test]
fn notify_email_mistakes_are_refused_where_they_are_with_the_fix() {
    // Clear text to another host: refused at `tls`, naming the key and the fix.
    let (e, hint) = email_error("    tls: none\n");
    assert!(
        e.starts_with("/etc/idsync/idsync.yaml:10:10: notify.email.tls: none would send"),
        "{e}"
    );
    assert!(
        hint.contains("tls: starttls") && hint.contains("localhost, 127.0.0.1, ::1"),
        "{hint}"
    );
    let (e, _) = email_error("    username: idsync\n");
    assert!(
        e.contains(":10:15: notify.email.username needs a password"),
        "{e}"
    );
    let (e, _) = email_error("    password_env: SMTP_PW\n");
    assert!(
        e.contains(":10:19: notify.email: a password without `username`"),
        "{e}"
    );
    let (e, _) = email_error("    username: u\n    password_env: A\n    password_file: f\n");
    assert!(e.contains("both `password_env` and `password_file`"), "{e}");
    let (e, hint) = email_error("    username: u\n    password_env: hunter2!\n");
    assert!(e.contains("is not an environment variable name"), "{e}");
    assert!(hint.contains("never goes in the config"), "{hint}");
    // A password in the config itself is not a key at all.
    let (e, _) = email_error("    password: hunter2\n");
    assert!(e.contains("password"), "{e}");

    let email = |fields: &str| {
        compile_with(&format!("notify:\n  email: {{ {fields} }}\n"))
            .expect_err("refused")
            .to_string()
    };
    let e = email("smtp: \"smtp://mail:25\", from: a@example.com, to: [b@example.com]");
    assert!(
        e.contains("notify.email.smtp \"smtp://mail:25\" is not host:port"),
        "{e}"
    );
    let e = email("smtp: \"mail:99999\", from: a@example.com, to: [b@example.com]");
    assert!(e.contains("is not a port"), "{e}");
    let e = email("smtp: mail, from: not-an-address, to: [b@example.com]");
    assert!(
        e.contains("notify.email.from: \"not-an-address\" is not an email address"),
        "{e}"
    );
    let e = email("smtp: mail, from: a@example.com, to: []");
    assert!(e.contains("notify.email.to names no recipient"), "{e}");
    let e = email("smtp: mail, from: a@example.com, to: [b@example.com, nobody]");
    assert!(
        e.contains("notify.email.to: \"nobody\" is not an email address"),
        "{e}"
    );
    let e = email("smtp: mail, from: a@example.com, to: [b@example.com], tls: sometimes");
    assert!(e.contains("sometimes"), "{e}");
    // Neither a webhook nor email: nothing could be sent.
    let e = compile_with("notify: { on: [guard_stop] }\n").unwrap_err();
    assert!(
        e.to_string().contains("notify: names no way to send"),
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

#[test]
fn history_runs_is_optional_and_at_least_one() {
    let s = compile_with("").expect("valid");
    assert_eq!(
        s.retention(),
        Retention {
            days: 30,
            runs: None
        }
    );
    let s = compile_with("history_days: 90\nhistory_runs: 500\n").expect("valid");
    assert_eq!(
        s.retention(),
        Retention {
            days: 90,
            runs: Some(500)
        }
    );
    let e = compile_with("history_runs: 0\n")
        .expect_err("refused")
        .to_string();
    assert!(
        e.starts_with("/etc/idsync/idsync.yaml:5:15: history_runs must be at least 1"),
        "{e}"
    );
}

/// The settings of `target:` with `extra` in it (a YAML block).
fn compile_target(extra: &str) -> Result<Settings, ConfigError> {
    compile_around(
        &format!(
            "target:\n  kind: scim\n  base_url: https://scim.example\n  token_env: T\n{extra}"
        ),
        "",
    )
}

#[test]
fn concurrency_is_auto_under_32_by_default() {
    use crate::scim::config::Concurrency;
    let c = |extra: &str| compile_target(extra).expect("valid").target.concurrency;
    assert_eq!(c(""), Concurrency::Auto { ceiling: 32 });
    assert_eq!(
        c("  concurrency: auto\n"),
        Concurrency::Auto { ceiling: 32 }
    );
    assert_eq!(
        c("  concurrency: auto\n  concurrency_max: 8\n"),
        Concurrency::Auto { ceiling: 8 }
    );
    assert_eq!(
        c("  concurrency_max: 64\n"),
        Concurrency::Auto { ceiling: 64 }
    );
    assert_eq!(c("  concurrency: 4\n"), Concurrency::Fixed(4));
    assert_eq!(Concurrency::Fixed(4).slots(), 4);
    assert_eq!(Concurrency::Auto { ceiling: 8 }.slots(), 8);
    let refused = |extra: &str| compile_target(extra).expect_err("refused").to_string();
    for (extra, start) in [
        (
            "  concurrency: 0\n",
            "/etc/idsync/idsync.yaml:6:16: concurrency 0 is out of range",
        ),
        (
            "  concurrency: 65\n",
            "/etc/idsync/idsync.yaml:6:16: concurrency 65 is out of range",
        ),
        (
            "  concurrency: fast\n",
            "/etc/idsync/idsync.yaml:6:16: concurrency \"fast\" is neither a number nor `auto`",
        ),
        (
            "  concurrency_max: 100\n",
            "/etc/idsync/idsync.yaml:6:20: concurrency_max 100 is out of range",
        ),
        (
            "  concurrency: 4\n  concurrency_max: 8\n",
            "/etc/idsync/idsync.yaml:7:20: concurrency_max applies to `concurrency: auto`",
        ),
    ] {
        let e = refused(extra);
        assert!(e.starts_with(start), "{extra:?}: {e}");
    }
}

#[test]
fn metrics_listen_is_an_ip_address_and_port_and_a_host_name_is_refused_at_its_line() {
    assert_eq!(compile_with("").unwrap().metrics_listen, None);
    let s = compile_with("metrics_listen: 0.0.0.0:9184\n").unwrap();
    assert_eq!(s.metrics_listen, Some("0.0.0.0:9184".parse().unwrap()));
    let s = compile_with("metrics_listen: \"[::1]:9184\"\n").unwrap();
    assert_eq!(s.metrics_listen, Some("[::1]:9184".parse().unwrap()));
    for bad in ["localhost:9184", "9184", "0.0.0.0", "0.0.0.0:99999"] {
        let e = compile_with(&format!("metrics_listen: \"{bad}\"\n")).expect_err(bad);
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/idsync/idsync.yaml:5:17: metrics_listen: ")
                && text.contains("is not an IP address and port"),
            "{bad}: {text}"
        );
        assert!(e.hint().unwrap().contains("0.0.0.0:9184"), "{bad}");
    }
}

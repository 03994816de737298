//! Config compilation: defaults, and every mistake `idsync validate` must catch.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

fn parse(yaml: &str) -> LdapConfig {
    serde_saphyr::from_str(yaml).expect("test YAML parses")
}

const MINIMAL: &str = "
url: ldap://ldap.example.com
bind_dn: cn=sync,dc=example,dc=com
bind_password_env: LDAP_PASSWORD
base_dn: dc=example,dc=com
";

fn compile_with(extra: &str) -> Result<LdapSettings, String> {
    parse(&format!("{MINIMAL}{extra}"))
        .compile(Path::new("/etc/idsync"))
        .map_err(|e| e.message)
}

fn compile_error(yaml: &str) -> String {
    refusal(yaml).message
}

fn refusal(yaml: &str) -> SourceConfigError {
    parse(yaml)
        .compile(Path::new("/etc/idsync"))
        .expect_err("should be refused")
}

/// The line and column a refusal of `MINIMAL` + `extra` points at.
fn refused_at(extra: &str) -> (u64, u64) {
    let e = refusal(&format!("{MINIMAL}{extra}"));
    (e.location.line(), e.location.column())
}

#[test]
fn defaults_fill_in() {
    let s = compile_with("").unwrap();
    assert_eq!(s.url, "ldap://ldap.example.com");
    assert_eq!(s.user_base_dn, "dc=example,dc=com");
    assert_eq!(s.group_base_dn, "dc=example,dc=com");
    assert_eq!(s.user_filter, DEFAULT_USER_FILTER);
    assert_eq!(s.group_filter, DEFAULT_GROUP_FILTER);
    assert_eq!(s.key_attribute, "entryUUID");
    assert_eq!(s.group_key_attribute, "entryUUID");
    assert_eq!(s.group_name_attribute, "cn");
    assert_eq!(s.page_size, 500);
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.tls, TlsVerify::System);
    assert_eq!(s.password, PasswordSource::Env("LDAP_PASSWORD".into()));
}

#[test]
fn active_directory_settings_compile() {
    let s = compile_with(
        "key_attribute: objectGUID\nuser_filter: (&(objectCategory=person)(objectClass=user))\n\
         page_size: 1000\ntimeout: 2m\n",
    )
    .unwrap();
    assert_eq!(
        s.group_key_attribute, "objectGUID",
        "groups follow the user key by default"
    );
    assert_eq!(s.page_size, 1000);
    assert_eq!(s.timeout, Duration::from_secs(120));
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let s = parse(
        "url: ldaps://dc1.corp.example:636\nbind_dn: x\nbind_password_file: secrets/ldap\n\
         base_dn: dc=corp\nca_file: ca.pem\n",
    )
    .compile(Path::new("/etc/idsync"))
    .unwrap();
    assert_eq!(
        s.password,
        PasswordSource::File("/etc/idsync/secrets/ldap".into())
    );
    assert_eq!(s.tls, TlsVerify::CaFile("/etc/idsync/ca.pem".into()));
}

#[test]
fn url_must_be_ldap_or_ldaps_with_a_host_and_nothing_else() {
    let with_url = |url: &str| compile_error(&MINIMAL.replace("ldap://ldap.example.com", url));
    assert!(with_url("https://ldap.example.com").contains("scheme \"https\""));
    assert!(with_url("ldap.example.com:389").contains("not"));
    assert!(with_url("ldap:///").contains("names no host"));
    assert!(with_url("ldap://h/dc=example,dc=com?uid").contains("DN or search part"));
    assert!(with_url("ldap://u:p@h").contains("credentials"));
}

#[test]
fn starttls_only_with_ldap_urls() {
    let e = compile_error(&format!(
        "{}starttls: true\n",
        MINIMAL.replace("ldap://", "ldaps://")
    ));
    assert!(e.contains("starttls"), "{e}");
    assert!(compile_with("starttls: true\n").is_ok());
}

#[test]
fn tls_options_need_tls_and_do_not_mix() {
    assert!(
        compile_with("ca_file: ca.pem\n")
            .unwrap_err()
            .contains("no effect")
    );
    assert!(
        compile_with("danger_skip_tls_verify: true\n")
            .unwrap_err()
            .contains("no effect")
    );
    let e = compile_with("starttls: true\nca_file: ca.pem\ndanger_skip_tls_verify: true\n")
        .unwrap_err();
    assert!(e.contains("contradict"), "{e}");
    let s = compile_with("starttls: true\ndanger_skip_tls_verify: true\n").unwrap();
    assert_eq!(s.tls, TlsVerify::Skip);
}

#[test]
fn exactly_one_password_source() {
    let e = compile_with("bind_password_file: /run/pw\n").unwrap_err();
    assert!(e.contains("both"), "{e}");
    let e = compile_error(&MINIMAL.replace("bind_password_env: LDAP_PASSWORD\n", ""));
    assert!(e.contains("no bind password"), "{e}");
    let e = compile_error(&MINIMAL.replace("LDAP_PASSWORD", "''"));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn page_size_range() {
    assert!(
        compile_with("page_size: 0\n")
            .unwrap_err()
            .contains("1 to 10000")
    );
    assert!(
        compile_with("page_size: 10001\n")
            .unwrap_err()
            .contains("1 to 10000")
    );
    assert!(compile_with("page_size: 1\n").is_ok());
    assert!(compile_with("page_size: 10000\n").is_ok());
}

#[test]
fn bad_timeouts_filters_and_attribute_names_are_refused() {
    assert!(
        compile_with("timeout: soon\n")
            .unwrap_err()
            .contains("not a duration")
    );
    assert!(
        compile_with("timeout: 0s\n")
            .unwrap_err()
            .contains("longer than zero")
    );
    let e = compile_with("user_filter: (&(objectClass=person)\n").unwrap_err();
    assert!(e.contains("not a valid LDAP filter"), "{e}");
    assert!(
        compile_with("key_attribute: 'entry uuid'\n")
            .unwrap_err()
            .contains("attribute name")
    );
    assert!(
        compile_error(&MINIMAL.replace("base_dn: dc=example,dc=com", "base_dn: ''"))
            .contains("base_dn")
    );
}

#[test]
fn filters_are_passed_through_unchanged() {
    // The operator writes the filter, escapes included: idsync never rewrites it.
    let filter = r"(&(objectClass=inetOrgPerson)(|(cn=O\27Brien\2a)(description=a\28b\29c\5c)))";
    let s = compile_with(&format!("user_filter: '{filter}'\n")).unwrap();
    assert_eq!(s.user_filter, filter);
}

#[test]
fn unknown_fields_are_refused() {
    let e = serde_saphyr::from_str::<LdapConfig>(&format!("{MINIMAL}bind_password: hunter2\n"))
        .expect_err("unknown field");
    assert!(e.to_string().contains("bind_password"), "{e}");
}

#[test]
fn every_refusal_points_at_its_field() {
    // MINIMAL takes lines 2 to 5 (it starts with a newline); `extra` starts on line 6.
    assert_eq!(refused_at("page_size: 0\n"), (6, 12));
    assert_eq!(refused_at("timeout: soon\n"), (6, 10));
    assert_eq!(refused_at("user_filter: (cn=a\n"), (6, 14));
    assert_eq!(refused_at("page_size: 10\ngroup_filter: x\n"), (7, 15));
    assert_eq!(refused_at("key_attribute: 'a b'\n"), (6, 16));
    assert_eq!(refused_at("group_key_attribute: ''\n"), (6, 22));
    assert_eq!(refused_at("group_name_attribute: '!'\n"), (6, 23));
    assert_eq!(refused_at("user_base_dn: ' '\n"), (6, 15));
    assert_eq!(refused_at("group_base_dn: ''\n"), (6, 16));
    assert_eq!(refused_at("ca_file: ca.pem\n"), (6, 10));
    assert_eq!(refused_at("danger_skip_tls_verify: true\n"), (6, 25));
    assert_eq!(
        refused_at("starttls: true\nca_file: ca.pem\ndanger_skip_tls_verify: true\n"),
        (8, 25)
    );
    assert_eq!(refused_at("starttls: true\nca_file: ' '\n"), (7, 10));
    // Two password sources: at the one written last.
    assert_eq!(refused_at("bind_password_file: /run/pw\n"), (6, 21));
    let at = |yaml: &str| {
        let e = refusal(yaml);
        (e.location.line(), e.location.column())
    };
    assert_eq!(
        at(&MINIMAL.replace("ldap://ldap.example.com", "ldaps://h\nstarttls: true")),
        (3, 11)
    );
    assert_eq!(
        at(&MINIMAL.replace("ldap://ldap.example.com", "https://h")),
        (2, 6)
    );
    // No password source: at bind_dn, which the password goes with.
    assert_eq!(
        at(&MINIMAL.replace("bind_password_env: LDAP_PASSWORD\n", "")),
        (3, 10)
    );
    assert_eq!(at(&MINIMAL.replace("LDAP_PASSWORD", "''")), (4, 20));
    assert_eq!(
        at(&MINIMAL.replace("cn=sync,dc=example,dc=com", "''")),
        (3, 10)
    );
    assert_eq!(
        at(&MINIMAL.replace("base_dn: dc=example,dc=com", "base_dn: ''")),
        (5, 10)
    );
    // The hint says where to read on.
    assert!(
        refusal(&format!("{MINIMAL}page_size: 0\n"))
            .hint
            .contains("README")
    );
}

#[test]
fn user_search_asks_for_the_key_and_uid_but_not_dn() {
    let s = compile_with("").unwrap();
    let wanted: BTreeSet<String> = ["mail", "DN", "givenName", "UID"].map(String::from).into();
    assert_eq!(
        user_attributes(&s, &wanted, Flavour::Other),
        vec!["UID", "givenName", "mail", "entryUUID"]
    );
    // Active Directory: the primary group comes from primaryGroupID and objectSid.
    assert_eq!(
        user_attributes(&s, &wanted, Flavour::ActiveDirectory),
        vec![
            "UID",
            "givenName",
            "mail",
            "entryUUID",
            "primaryGroupID",
            "objectSid"
        ]
    );
}

#[test]
fn active_directory_system_groups_are_left_out_unless_asked_for() {
    let s = compile_with("group_filter: \"(objectClass=group)\"\n").unwrap();
    assert_eq!(s.group_filter(Flavour::Other), "(objectClass=group)");
    assert_eq!(
        s.group_filter(Flavour::ActiveDirectory),
        "(&(objectClass=group)(!(isCriticalSystemObject=TRUE)))"
    );
    let builtin = "CN=Administrators,CN=Builtin,DC=corp,DC=example";
    assert!(s.reads_group_at(Flavour::Other, builtin));
    assert!(!s.reads_group_at(Flavour::ActiveDirectory, builtin));
    assert!(s.reads_group_at(Flavour::ActiveDirectory, "CN=Sales,OU=Groups,DC=corp"));

    let all = compile_with("group_filter: \"(objectClass=group)\"\ninclude_system_groups: true\n")
        .unwrap();
    assert_eq!(
        all.group_filter(Flavour::ActiveDirectory),
        "(objectClass=group)"
    );
    assert!(all.reads_group_at(Flavour::ActiveDirectory, builtin));
}

#[test]
fn password_files_open_to_others_or_empty_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let source = PasswordSource::File(file.clone());
    let e = source.read().unwrap_err();
    assert!(
        matches!(e, LdapError::PasswordFileExposed { mode: 0o644, .. }),
        "{e:?}"
    );
    assert!(e.is_unavailable());
    assert_eq!(
        e.to_string(),
        format!(
            "bind password file {} is open to other users (mode 644)",
            file.display()
        )
    );
    assert_eq!(e.hint(), format!("chmod 600 {}", file.display()));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(source.read().unwrap().expose_secret(), "s3cret");
    std::fs::write(&file, "\n").unwrap();
    assert!(matches!(
        source.read().unwrap_err(),
        LdapError::PasswordFileEmpty { .. }
    ));
    let missing = PasswordSource::File(dir.path().join("missing"));
    assert!(matches!(
        missing.read().unwrap_err(),
        LdapError::PasswordFileUnreadable { .. }
    ));
    let unset = PasswordSource::Env("IDSYNC_TEST_SURELY_UNSET_PASSWORD".into());
    let e = unset.read().unwrap_err();
    assert!(
        matches!(&e, LdapError::PasswordNotSet { var } if var == "IDSYNC_TEST_SURELY_UNSET_PASSWORD"),
        "{e:?}"
    );
    assert!(
        e.hint()
            .starts_with("export IDSYNC_TEST_SURELY_UNSET_PASSWORD=")
    );
}

/// `source.read()`'s error, or a panic if it is accepted or blocks (a FIFO
/// with no writer never returns from `open`).
fn password_refusal(source: PasswordSource) -> LdapError {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(source.read().err());
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("reading the password blocked")
        .expect("the password was accepted")
}

#[test]
fn a_bind_password_file_that_is_a_fifo_is_refused_without_blocking() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pw");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // Owner-only, so that only its kind can refuse it.
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = password_refusal(PasswordSource::File(fifo.clone()));
    assert_eq!(
        e.to_string(),
        format!(
            "bind password file {} is a FIFO, not a regular file",
            fifo.display()
        )
    );
    assert!(e.is_unavailable());
    assert_eq!(
        e.hint(),
        "point bind_password_file at a plain file holding the secret"
    );
}

#[test]
fn a_bind_password_file_in_a_folder_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let e = password_refusal(PasswordSource::File(file));
    assert!(
        e.to_string()
            .contains("which other users can write to (mode 1777): they could replace it"),
        "{e}"
    );
    assert!(e.hint().starts_with("chmod go-w "), "{}", e.hint());
}

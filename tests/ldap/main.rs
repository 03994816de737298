//! The LDAP source against a real OpenLDAP server: paging past an AD-like size
//! limit, UTF-8 data, group flavours and nesting, renames, bind and network
//! failures. Each test starts its own slapd (scripts/slapd.sh) on loopback.

mod harness;
#[path = "../support/mod.rs"]
mod support;
mod sync;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use harness::*;
use idsync::model::{SourceDirectory, SourceUser};
use idsync::source::ldap::{
    BindRefusal, EntryProblem, KeyProblem, LdapError, SearchLimit, check, read,
};

fn wanted() -> BTreeSet<String> {
    ["mail", "givenName", "sn", "cn", "title", "dn"]
        .map(String::from)
        .into()
}

fn by_uid(directory: &SourceDirectory) -> HashMap<String, &SourceUser> {
    directory
        .users
        .iter()
        .map(|u| (u.attrs.first("uid").expect("uid").to_string(), u))
        .collect()
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36 && text.bytes().filter(|&b| b == b'-').count() == 4
}

#[tokio::test]
async fn reads_2500_users_through_paging_despite_the_size_limit() {
    let people = people(2500);
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people);
    let slapd = Slapd::start(ldif.text());

    // The service account cannot list them without paging: slapd stops a plain
    // search at 1000 entries with "size limit exceeded" (ldapsearch exit code 4).
    let plain = slapd.plain_search_as_sync();
    assert_eq!(plain.code, 4, "unpaged search should hit the size limit");

    let settings = slapd.settings("");
    let started = Instant::now();
    let directory = read(&settings, &wanted()).await.expect("paged read");
    eprintln!(
        "read {} users in {:?}",
        directory.users.len(),
        started.elapsed()
    );

    assert_eq!(directory.users.len(), 2500);
    assert!(directory.users.len() > SYNC_SIZE_LIMIT);
    let keys: BTreeSet<&str> = directory.users.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys.len(), 2500, "keys are unique");
    assert!(keys.iter().all(|k| is_uuid(k)), "keys are entryUUIDs");

    let users = by_uid(&directory);
    let u1 = users["user00001"];
    assert_eq!(u1.attrs.first("givenName"), Some("Inés"));
    assert_eq!(
        u1.attrs.first("SN"),
        Some("Nuñez"),
        "attribute lookups ignore case"
    );
    assert_eq!(
        u1.attrs.first("dn"),
        Some(format!("uid=user00001,{PEOPLE}").as_str())
    );
    assert_eq!(u1.origin.to_string(), format!("uid=user00001,{PEOPLE}"));
    assert_eq!(users["user00002"].attrs.first("sn"), Some("Østergaard"));
    assert_eq!(users["user00004"].attrs.first("sn"), Some("Łukasiewicz"));
    assert_eq!(users["user00005"].attrs.first("givenName"), Some("Jörg"));
    // The key attribute is there for the mapping too.
    assert_eq!(u1.attrs.first("entryUUID"), Some(u1.key.as_str()));

    // Data quirks are passed through for the mapping to judge.
    assert_eq!(users["user00010"].attrs.first("mail"), None);
    assert_eq!(
        users["user00002"].attrs.first("mail"),
        Some("shared@example.com")
    );
    assert_eq!(
        users["user00003"].attrs.first("mail"),
        Some("shared@example.com")
    );
    let without_mail = directory
        .users
        .iter()
        .filter(|u| u.attrs.first("mail").is_none())
        .count();
    assert_eq!(without_mail, 250);

    // Non-ASCII DNs survive.
    let u500 = users["user00500"];
    assert_eq!(
        u500.origin.to_string(),
        format!("cn=Jörg Müller 500,{PEOPLE}")
    );
}

#[tokio::test]
async fn a_read_the_server_cuts_short_fails_whole() {
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people(1200));
    let slapd = Slapd::start(ldif.text());
    // This account's searches stop at 1000 entries even when paged.
    let settings = slapd.settings_as(LIMITED_DN, LIMITED_PW, "");
    let err = match read(&settings, &wanted()).await {
        Ok(d) => panic!("a cut-short read must fail, got {} users", d.users.len()),
        Err(e) => e,
    };
    let LdapError::LimitExceeded {
        limit: SearchLimit::Size,
        entries,
        base,
        ..
    } = &err
    else {
        panic!("expected a size limit, got {err:?}");
    };
    assert_eq!(base, SUFFIX, "the users are searched under base_dn");
    assert!(*entries <= 1000, "{entries}");
    assert!(err.is_unavailable());
    let message = err.to_string();
    assert!(message.contains("size limit exceeded"), "{message}");
    assert!(message.contains("nothing was planned"), "{message}");
    assert!(err.hint().contains("page_size"), "{}", err.hint());
}

/// Groups of every flavour; expected members by uid.
fn group_fixture() -> (Ldif, Vec<Person>) {
    let people = people(600);
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people);
    let dn = |i: usize| people[i - 1].dn.clone();
    let engineering_members = [
        dn(1),
        dn(2),
        // The same user again, spelled differently: one membership.
        "UID=user00002 , OU=People,DC=Example,DC=com".to_string(),
        // A non-ASCII DN, in another case.
        format!("CN=JÖRG MÜLLER 500,{PEOPLE}"),
        // Nested group (which nests this one back: a cycle).
        format!("cn=platform,{GROUPS}"),
        // Outside the base DN, and inside it but not a user: unresolved.
        "uid=contractor,ou=partners,dc=other,dc=org".to_string(),
        SYNC_DN.to_string(),
    ];
    let mut attrs: Vec<(&str, &str)> = vec![("objectClass", "groupOfNames"), ("cn", "engineering")];
    attrs.extend(engineering_members.iter().map(|m| ("member", m.as_str())));
    ldif.entry(&format!("cn=engineering,{GROUPS}"), &attrs);
    let (d3, d4, engineering) = (dn(3), dn(4), format!("cn=engineering,{GROUPS}"));
    ldif.entry(
        &format!("cn=platform,{GROUPS}"),
        &[
            ("objectClass", "groupOfNames"),
            ("cn", "platform"),
            ("member", &d3),
            ("member", &d4),
            ("member", &engineering),
        ],
    );
    let (u5, u6) = (format!("{}#'0101'B", dn(5)), format!("{}#''B", dn(6)));
    ldif.entry(
        &format!("cn=auditors,{GROUPS}"),
        &[
            ("objectClass", "groupOfUniqueNames"),
            ("cn", "auditors"),
            ("uniqueMember", &u5),
            ("uniqueMember", &u6),
        ],
    );
    ldif.entry(
        &format!("cn=unix,{GROUPS}"),
        &[
            ("objectClass", "posixGroup"),
            ("cn", "unix"),
            ("gidNumber", "5000"),
            ("memberUid", "user00007"),
            ("memberUid", "USER00008"),
            ("memberUid", "nosuchuser"),
        ],
    );
    (ldif, people)
}

#[tokio::test]
async fn groups_of_every_flavour_resolve_and_nesting_flattens() {
    let (ldif, _) = group_fixture();
    let slapd = Slapd::start(ldif.text());
    let directory = read(&slapd.settings(""), &wanted()).await.expect("read");
    let users = by_uid(&directory);
    let uid_of: HashMap<&str, &str> = users
        .iter()
        .map(|(uid, u)| (u.key.as_str(), uid.as_str()))
        .collect();
    let members = |name: &str| -> Vec<&str> {
        let group = directory
            .groups
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("group {name}"));
        let mut sorted = group.members.clone();
        sorted.sort();
        assert_eq!(sorted, group.members, "members are sorted");
        let mut uids: Vec<&str> = group.members.iter().map(|k| uid_of[k.as_str()]).collect();
        uids.sort();
        uids
    };
    let nested = vec![
        "user00001",
        "user00002",
        "user00003",
        "user00004",
        "user00500",
    ];
    assert_eq!(members("engineering"), nested);
    assert_eq!(
        members("platform"),
        nested,
        "the cycle brings engineering's members in"
    );
    assert_eq!(members("auditors"), vec!["user00005", "user00006"]);
    assert_eq!(members("unix"), vec!["user00007", "user00008"]);
    // The contractor (outside the base DN), the service account (not a user),
    // nosuchuser (no such uid).
    assert_eq!(directory.unresolved_members, 3);
    assert_eq!(directory.groups.len(), 4);
    assert!(directory.groups.iter().all(|g| is_uuid(g.key.as_str())));
}

#[tokio::test]
async fn a_renamed_user_keeps_its_key_and_group_membership() {
    let (ldif, people) = group_fixture();
    let slapd = Slapd::start(ldif.text());
    let settings = slapd.settings("");
    let before = read(&settings, &wanted()).await.expect("read");
    let key = by_uid(&before)["user00001"].key.clone();

    slapd.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: uid=user00001-renamed\ndeleteoldrdn: 1\n",
        people[0].dn
    ));
    // refint rewrites group members asynchronously.
    let updated = wait_until(Duration::from_secs(5), || {
        let out = slapd.tool(
            "ldapsearch",
            &[
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PW,
                "-b",
                GROUPS,
                "(member=uid=user00001-renamed,ou=people,dc=example,dc=com)",
                "1.1",
            ],
            None,
        );
        out.stdout.contains("cn=engineering")
    });
    assert!(updated, "refint should follow the rename in cn=engineering");

    let after = read(&settings, &wanted()).await.expect("read");
    let renamed = by_uid(&after)["user00001-renamed"];
    assert_eq!(renamed.key, key, "a modrdn keeps entryUUID");
    assert_eq!(
        renamed.origin.to_string(),
        format!("uid=user00001-renamed,{PEOPLE}")
    );
    let engineering = after
        .groups
        .iter()
        .find(|g| g.name == "engineering")
        .unwrap();
    assert!(engineering.members.contains(&key));
    assert_eq!(after.users.len(), before.users.len());
}

#[tokio::test]
async fn a_configured_filter_is_passed_through_unchanged() {
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people(3));
    ldif.entry(
        &format!("uid=obrien,{PEOPLE}"),
        &[
            ("objectClass", "inetOrgPerson"),
            ("uid", "obrien"),
            ("cn", r"O'Brien (Ops) *1* \ x"),
            ("sn", "O'Brien"),
        ],
    );
    let slapd = Slapd::start(ldif.text());
    // The operator escaped ( ) * \ per RFC 4515; idsync must not touch it.
    let filter = r"(&(objectClass=inetOrgPerson)(cn=O'Brien \28Ops\29 \2a1\2a \5c x))";
    let yaml = format!("user_filter: '{}'\n", filter.replace('\'', "''"));
    let directory = read(&slapd.settings(&yaml), &wanted()).await.expect("read");
    let uids: Vec<_> = directory
        .users
        .iter()
        .map(|u| u.attrs.first("uid").unwrap())
        .collect();
    assert_eq!(uids, vec!["obrien"]);
}

#[tokio::test]
async fn referrals_are_never_followed_and_never_crash() {
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people(5));
    let remote = format!("ou=remote,{SUFFIX}");
    let target = format!("ldap://ldap.elsewhere.example/{remote}");
    ldif.entry(
        &remote,
        &[
            ("objectClass", "referral"),
            ("objectClass", "extensibleObject"),
            ("ou", "remote"),
            ("ref", &target),
        ],
    );
    let slapd = Slapd::start(ldif.text());

    // A continuation reference beside the users: logged, not followed.
    let directory = read(&slapd.settings(""), &wanted()).await.expect("read");
    assert_eq!(directory.users.len(), 5);

    // A base DN that lives elsewhere: a failed read, not an empty directory.
    let err = read(
        &slapd.settings(&format!("user_base_dn: {remote}\n")),
        &wanted(),
    )
    .await
    .expect_err("referral");
    let LdapError::Referral { base, refs, .. } = &err else {
        panic!("expected Referral, got {err:?}");
    };
    assert_eq!(base, &remote);
    assert!(
        refs.iter().any(|r| r.contains("ldap.elsewhere.example")),
        "{refs:?}"
    );
    let message = err.to_string();
    assert!(message.contains("referr"), "{message}");
    assert!(message.contains("ldap.elsewhere.example"), "{message}");
}

#[tokio::test]
async fn users_without_the_key_attribute_are_named_and_fail_the_read() {
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people(3));
    ldif.entry(
        &format!("uid=keyed,{PEOPLE}"),
        &[
            ("objectClass", "inetOrgPerson"),
            ("uid", "keyed"),
            ("cn", "K"),
            ("sn", "K"),
            ("employeeNumber", "42"),
        ],
    );
    let slapd = Slapd::start(ldif.text());
    let err = read(
        &slapd.settings("key_attribute: employeeNumber\n"),
        &wanted(),
    )
    .await
    .expect_err("users without a key");
    let LdapError::BadUsers(bad) = &err else {
        panic!("expected BadUsers, got {err:?}");
    };
    assert_eq!((bad.problems.len(), bad.more), (3, 0), "{bad:?}");
    assert_eq!(bad.key_attribute, "employeeNumber");
    for problem in &bad.problems {
        assert!(
            matches!(problem, EntryProblem::Key {
                dn,
                attribute,
                problem: KeyProblem::Missing,
            } if dn.ends_with(&format!(",{PEOPLE}")) && attribute == "employeeNumber"),
            "{problem:?}"
        );
    }
    assert!(!err.is_unavailable());
    let text = err.to_string();
    assert!(text.contains("3 problems found"), "{text}");
    assert!(
        text.contains(&format!(",{PEOPLE}: it has no employeeNumber")),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_bind_failure() {
    let slapd = Slapd::start("");
    let pw = slapd.password_file("wrong.pw", "not-the-password");
    let settings = settings_for(&slapd.url, &pw, "");
    for err in [
        read(&settings, &wanted())
            .await
            .expect_err("bind must fail"),
        check(&settings).await.expect_err("bind must fail"),
    ] {
        let LdapError::BindRefused {
            dn,
            reason: BindRefusal::InvalidCredentials,
            ..
        } = &err
        else {
            panic!("expected an invalid-credentials bind refusal, got {err:?}");
        };
        assert_eq!(dn, SYNC_DN);
        let (message, hint) = (err.to_string(), err.hint());
        assert!(
            message.contains("bind as cn=sync,dc=example,dc=com refused: invalid credentials"),
            "{message}"
        );
        assert!(!message.contains("not-the-password") && !hint.contains("not-the-password"));
        assert!(!format!("{err:?}").contains("not-the-password"));
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let url = format!("ldap://127.0.0.1:{}", free_port());
    let settings = settings_for(&url, &pw, "");
    let err = read(&settings, &wanted())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, LdapError::ConnectFailed { url: u, .. } if u == &url),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(matches!(
        check(&settings).await,
        Err(LdapError::ConnectFailed { .. })
    ));
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out() {
    let slapd = Slapd::start("");
    let settings = slapd.settings("timeout: 1s\n");
    // The kernel still accepts connections for a stopped process; nothing answers.
    slapd.signal("STOP");
    let started = Instant::now();
    let result = check(&settings).await;
    slapd.signal("CONT");
    let err = result.expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(
        matches!(
            err,
            LdapError::NoAnswer { timeout, .. } if timeout == Duration::from_secs(1)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn check_says_what_it_verified_and_finds_a_missing_base() {
    let slapd = Slapd::start("");
    let ok = check(&slapd.settings(&format!("user_base_dn: {PEOPLE}\n")))
        .await
        .expect("check");
    assert!(ok.contains(&slapd.url), "{ok}");
    assert!(ok.contains("plain LDAP"), "{ok}");
    assert!(ok.contains("bound as cn=sync,dc=example,dc=com"), "{ok}");
    assert!(ok.contains(PEOPLE), "{ok}");

    let err = check(&slapd.settings("group_base_dn: ou=nowhere,dc=example,dc=com\n"))
        .await
        .expect_err("missing base");
    assert!(
        matches!(&err, LdapError::BaseNotFound { base, .. } if base == "ou=nowhere,dc=example,dc=com"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("base DN ou=nowhere,dc=example,dc=com does not exist"),
        "{err}"
    );
    let err = read(
        &slapd.settings("user_base_dn: ou=nowhere,dc=example,dc=com\n"),
        &wanted(),
    )
    .await
    .expect_err("missing base");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn starttls_against_a_server_without_tls_fails_cleanly() {
    let slapd = Slapd::start("");
    let err = check(&slapd.settings("starttls: true\n"))
        .await
        .expect_err("no TLS configured");
    assert!(matches!(err, LdapError::StartTlsRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("StartTLS"), "{err}");
}

#[tokio::test]
async fn ldaps_and_starttls_verify_the_server_against_ca_file() {
    let mut ldif = Ldif::default();
    add_people(&mut ldif, &people(20));
    let slapd = Slapd::start_tls(ldif.text());
    let pw = slapd.sync_password_file();
    let ldaps = slapd.ldaps_url.clone().expect("TLS server");
    let with_ca = format!("ca_file: {}\n", slapd.ca_file().display());

    let settings = settings_for(&ldaps, &pw, &with_ca);
    let ok = check(&settings).await.expect("LDAPS with the CA");
    assert!(
        ok.contains("LDAPS, certificate verified against ca_file"),
        "{ok}"
    );
    assert_eq!(
        read(&settings, &wanted())
            .await
            .expect("read over LDAPS")
            .users
            .len(),
        20
    );

    let settings = settings_for(&slapd.url, &pw, &format!("starttls: true\n{with_ca}"));
    let ok = check(&settings).await.expect("StartTLS with the CA");
    assert!(
        ok.contains("StartTLS, certificate verified against ca_file"),
        "{ok}"
    );
    assert_eq!(
        read(&settings, &wanted())
            .await
            .expect("read over StartTLS")
            .users
            .len(),
        20
    );

    // Without the CA the certificate is not trusted.
    let err = check(&settings_for(&ldaps, &pw, ""))
        .await
        .expect_err("untrusted certificate");
    assert!(
        matches!(
            err,
            LdapError::TlsHandshake {
                with_ca_file: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(err.hint().contains("ca_file"), "{}", err.hint());
    let err = check(&settings_for(&slapd.url, &pw, "starttls: true\n"))
        .await
        .expect_err("untrusted certificate");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");

    // Only when asked, and then it says so.
    let ok = check(&settings_for(&ldaps, &pw, "danger_skip_tls_verify: true\n"))
        .await
        .expect("unverified LDAPS");
    assert!(ok.contains("NOT verified"), "{ok}");

    // LDAPS spoken to the plain port fails, and does not hang.
    let plain_port = format!("ldaps://127.0.0.1:{}", slapd.port);
    let err = check(&settings_for(&plain_port, &pw, &with_ca))
        .await
        .expect_err("not a TLS port");
    assert!(err.is_unavailable(), "{err:?}");
}

/// `cargo test --test ldap -- --ignored --nocapture bench_`: 100,000 users
/// loaded with slapadd, read through the size-limited account.
#[tokio::test]
#[ignore = "benchmark: 100,000 users, about a minute"]
async fn bench_read_100k_users() {
    let n = 100_000;
    let mut ldif = Ldif::default();
    let people = people(n);
    add_people(&mut ldif, &people);
    let mut all_members: Vec<(&str, &str)> =
        vec![("objectClass", "groupOfNames"), ("cn", "everyone")];
    all_members.extend(people.iter().map(|p| ("member", p.dn.as_str())));
    ldif.entry(&format!("cn=everyone,{GROUPS}"), &all_members);
    let started = Instant::now();
    let slapd = Slapd::start(ldif.text());
    eprintln!("slapadd + start: {:?}", started.elapsed());
    let settings = slapd.settings("");
    for _ in 0..2 {
        let started = Instant::now();
        let directory = read(&settings, &wanted()).await.expect("read");
        eprintln!(
            "read {} users, {} groups in {:?}",
            directory.users.len(),
            directory.groups.len(),
            started.elapsed()
        );
        assert_eq!(directory.users.len(), n);
        assert_eq!(directory.groups[0].members.len(), n);
    }
    let started = Instant::now();
    let out = slapd.tool(
        "ldapsearch",
        &[
            "-D",
            SYNC_DN,
            "-w",
            SYNC_PW,
            "-b",
            SUFFIX,
            "-E",
            "pr=500/noprompt",
            "(objectClass=inetOrgPerson)",
            "mail",
            "givenName",
            "sn",
            "cn",
            "title",
            "entryUUID",
            "uid",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.dump());
    eprintln!(
        "ldapsearch (paged, same attributes): {:?}",
        started.elapsed()
    );
}

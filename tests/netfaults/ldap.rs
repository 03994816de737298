//! The LDAP source behind a broken link: slapd (`scripts/slapd.sh`) in a
//! namespace of the test's own, listening on that namespace's loopback and
//! reached on its veth address through a relay (which delays, or only
//! exposes it when netem delays). The SCIM target is a plain `scim2-server`
//! on the root namespace's loopback.
//!
//! Over a slow, lossy link the sync converges to exactly what the same sync
//! makes over a clean link (a control run into a second server); a server
//! that goes silent in the middle of the read fails the read (exit 5) within
//! the configured timeout, and nothing is removed or changed on the target.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Idsync, Output, ScimServer, TargetContents, fresh_token, str_at};
use crate::rig::{Link, assert_no_duplicates};
use crate::support::ldap::Ldif;
use crate::support::netns::{Netns, available};
use crate::support::process::{repo, run_bounded};
use crate::support::relay::{Delay, Relay};
use crate::support::workdir::{Workdir, scim_target_yaml};

const SUFFIX: &str = "dc=example,dc=com";
const PEOPLE: &str = "ou=people,dc=example,dc=com";
const GROUPS: &str = "ou=groups,dc=example,dc=com";
const SYNC_DN: &str = "cn=sync,dc=example,dc=com";
/// The service account's password in `scripts/slapd.sh` (a test fixture).
const SYNC_PW: &str = "syncpass";
const PASSWORD_ENV: &str = "IDSYNC_TEST_LDAP_PASSWORD";
/// slapd's port on the namespace's loopback.
const SLAPD_PORT: u16 = 3890;
const TEAMS: usize = 6;

/// `n` people (`uid=userNNNNN`, non-ASCII names among them) in `TEAMS`
/// groupOfNames teams.
fn directory(n: usize) -> String {
    const NAMES: [(&str, &str); 4] = [
        ("Jörg", "Müller"),
        ("Inés", "Nuñez"),
        ("Søren", "Østergaard"),
        ("Ann", "Smith"),
    ];
    let dn = |i: usize| format!("uid=user{i:05},{PEOPLE}");
    let mut ldif = Ldif::default();
    for i in 1..=n {
        let (given, family) = NAMES[i % NAMES.len()];
        let (uid, cn) = (format!("user{i:05}"), format!("{given} {family} {i}"));
        let mail = format!("user{i:05}@example.com");
        let title = format!("Engineer grade {}", i % 7);
        let attrs = [
            ("objectClass", "inetOrgPerson"),
            ("uid", uid.as_str()),
            ("cn", cn.as_str()),
            ("givenName", given),
            ("sn", family),
            ("mail", mail.as_str()),
            ("title", title.as_str()),
        ];
        ldif.entry(&dn(i), &attrs);
    }
    for t in 0..TEAMS {
        let cn = format!("team-{t:02}");
        let members: Vec<String> = (1..=n).filter(|i| i % TEAMS == t).map(dn).collect();
        let mut attrs = vec![("objectClass", "groupOfNames"), ("cn", cn.as_str())];
        attrs.extend(members.iter().map(|m| ("member", m.as_str())));
        ldif.entry(&format!("cn={cn},{GROUPS}"), &attrs);
    }
    ldif.text().to_owned()
}

/// slapd started by `scripts/slapd.sh` inside `ns`; stopped by its PID on drop.
struct NsSlapd {
    server_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsSlapd {
    fn start(ns: &Netns, ldif: &str) -> NsSlapd {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data.ldif");
        std::fs::write(&data, ldif).expect("write LDIF");
        let server_dir = dir.path().join("slapd");
        let mut cmd = ns.command("bash");
        cmd.arg(script())
            .arg("start")
            .arg(&server_dir)
            .arg(SLAPD_PORT.to_string())
            .arg(&data);
        let out = run_bounded(cmd, Duration::from_secs(120), None);
        let slapd = NsSlapd {
            server_dir,
            _dir: dir,
        };
        assert_eq!(
            out.code,
            0,
            "slapd did not start in {}:\n{}",
            ns.name,
            out.dump()
        );
        slapd
    }
}

impl Drop for NsSlapd {
    fn drop(&mut self) {
        // The script kills the PID it recorded.
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.server_dir)
            .stdin(Stdio::null())
            .output();
    }
}

fn script() -> PathBuf {
    repo().join("scripts/slapd.sh")
}

/// A workdir whose source is the LDAP server at `ldap_url` and whose target
/// is `server`.
struct LdapSync {
    dir: Workdir,
    ldap_url: String,
    scim_url: String,
    /// `source.timeout`, `source.page_size`.
    timeout: String,
    page_size: u32,
}

impl LdapSync {
    fn new(server: &ScimServer, ldap_url: String) -> LdapSync {
        let mut dir = Workdir::new("idsync-nf-ldap-", server.token());
        dir.run_timeout = Duration::from_secs(600);
        LdapSync {
            dir,
            ldap_url,
            scim_url: server.base_url(),
            timeout: "10s".into(),
            page_size: 25,
        }
    }

    fn config(&self) -> String {
        format!(
            "source:\n\
             \x20 kind: ldap\n\
             \x20 url: {url}\n\
             \x20 bind_dn: {SYNC_DN}\n\
             \x20 bind_password_env: {PASSWORD_ENV}\n\
             \x20 base_dn: {SUFFIX}\n\
             \x20 timeout: {timeout}\n\
             \x20 page_size: {page}\n\
             mapping: {mapping}\n\
             {target}\
             policy:\n\
             \x20 remove_action: disable\n\
             \x20 max_removals: 100%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             state: state/idsync.db\n",
            url = self.ldap_url,
            timeout = self.timeout,
            page = self.page_size,
            mapping = repo().join("mappings/ldap-inetorgperson.yaml").display(),
            target = scim_target_yaml(&self.scim_url, "30s"),
        )
    }

    fn spawn(&self, args: &[&str]) -> crate::harness::Running {
        let env = [(PASSWORD_ENV, SYNC_PW)];
        self.dir.spawn_with(&self.config(), args, &env, &[SYNC_PW])
    }
}

impl Idsync for LdapSync {
    fn run(&self, args: &[&str]) -> Output {
        self.spawn(args).wait(self.dir.run_timeout)
    }
}

/// A target's users by userName (without `id` and `meta`) and its groups by
/// name with their members' userNames: what two servers fed the same
/// directory must agree on.
fn by_name(
    target: &TargetContents,
) -> (BTreeMap<String, Value>, BTreeMap<String, BTreeSet<String>>) {
    let name_of: BTreeMap<&str, &str> = target
        .users
        .iter()
        .map(|u| (str_at(u, "id"), str_at(u, "userName")))
        .collect();
    let users = target
        .users
        .iter()
        .map(|u| {
            let mut u = u.clone();
            if let Some(o) = u.as_object_mut() {
                o.remove("id");
                o.remove("meta");
            }
            (str_at(&u, "userName").to_lowercase(), u)
        })
        .collect();
    let groups = target
        .groups
        .iter()
        .map(|g| {
            let members = crate::harness::member_ids(g)
                .iter()
                .map(|id| {
                    name_of
                        .get(id.as_str())
                        .map_or(format!("<unknown id {id}>"), |n| n.to_lowercase())
                })
                .collect();
            (str_at(g, "displayName").to_owned(), members)
        })
        .collect();
    (users, groups)
}

/// slapd in a namespace with `n` people, and a clean relay to it.
struct LdapRig {
    clean: Relay,
    _slapd: NsSlapd,
    ns: Netns,
}

impl LdapRig {
    fn start(n: usize) -> LdapRig {
        let ns = Netns::new();
        let slapd = NsSlapd::start(&ns, &directory(n));
        let clean = Relay::start(&ns, upstream(), Delay::NONE);
        LdapRig {
            clean,
            _slapd: slapd,
            ns,
        }
    }

    fn url(&self, port: u16) -> String {
        format!("ldap://{}:{port}", self.ns.ns_addr)
    }
}

fn upstream() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], SLAPD_PORT))
}

#[test]
fn ldap_over_a_slow_lossy_link_reads_exactly_what_a_clean_link_reads() {
    if !available() {
        return;
    }
    const N: usize = 200;
    let rig = LdapRig::start(N);
    let link = Link::delayed(&rig.ns, upstream(), Delay::rtt_150ms(), true);
    rig.ns.lose(link.port, 0.05);

    let control = ScimServer::start(&fresh_token("nf-ldap-control"));
    LdapSync::new(&control, rig.url(rig.clean.port)).sync_ok();
    let server = ScimServer::start(&fresh_token("nf-ldap-slow"));
    let mut slow = LdapSync::new(&server, rig.url(link.port));
    // Small pages: many round trips, a few hundred segments to lose from.
    slow.page_size = 10;
    let started = Instant::now();
    let out = slow.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    eprintln!(
        "LDAP read and sync of {N} users over 150 ms RTT ({}), 5 % loss: {:?}; {} segments dropped",
        link.how,
        started.elapsed(),
        rig.ns.matched("DROP")
    );
    assert!(rig.ns.matched("DROP") > 0, "no segment was dropped");
    let (got, want) = (server.contents(), control.contents());
    assert_no_duplicates(&got);
    assert_eq!(got.users.len(), N, "every user is there");
    assert_eq!(
        by_name(&got),
        by_name(&want),
        "the slow link read what the clean one did"
    );
    slow.assert_plan_empty();
}

#[test]
fn a_silent_ldap_server_fails_the_read_within_the_timeout_and_removes_nothing() {
    if !available() {
        return;
    }
    const N: usize = 150;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let rig = LdapRig::start(N);
    let server = ScimServer::start(&fresh_token("nf-ldap-silent"));
    let mut sync = LdapSync::new(&server, rig.url(rig.clean.port));
    sync.sync_ok();
    let whole_read = rig.clean.down_bytes();
    let before = server.contents().normalized();
    assert_eq!(before.users.len(), N);

    // The same sync over a slow link, small pages: the read takes a while;
    // the server goes silent once a third of it has come back.
    let slow = Relay::start(&rig.ns, upstream(), Delay::rtt_150ms());
    sync.ldap_url = rig.url(slow.port);
    sync.timeout = format!("{}s", TIMEOUT.as_secs());
    sync.page_size = 10;
    let run = sync.spawn(&["sync", "--format", "json"]);
    let reached = crate::harness::wait_until(Duration::from_secs(120), || {
        slow.down_bytes() >= whole_read / 3
    });
    assert!(
        reached,
        "the read did not get going ({} bytes)",
        slow.down_bytes()
    );
    rig.ns.silence(slow.port);
    let silent_at = Instant::now();
    let out = run.wait(Duration::from_secs(300));
    let after = silent_at.elapsed();
    eprintln!(
        "silent LDAP server: exit {} {after:?} after the silence",
        out.code
    );
    out.assert_code(5);
    assert!(
        after <= TIMEOUT + Duration::from_secs(5),
        "{after:?} after the silence with a {TIMEOUT:?} timeout\n{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("no answer within 3s"),
        "the error names the timeout\n{}",
        out.dump()
    );
    assert!(rig.ns.matched("DROP") > 0, "nothing was dropped");
    assert_eq!(
        server.contents().normalized(),
        before,
        "a failed read changed the target"
    );

    // Healed: the next run reads everything and has nothing to do.
    rig.ns.heal();
    let summary = sync.sync_ok();
    assert_eq!(summary["applied"], 0, "{summary:#}");
    assert_eq!(server.contents().normalized(), before);
}

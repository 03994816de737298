//! The Entra ID source end to end: the built `idsync` binary reads a local
//! stand-in for Microsoft Graph (`graph_server`, Graph's documented delta
//! shapes from an in-memory directory the test edits) and writes into a real
//! `scim2-server`, over several cycles. After every cycle the SCIM target is
//! compared with the directory (computed here from the directory itself, with
//! the default mapping's rules and nested groups flattened).

mod assignment;
mod graph_server;
#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use graph_server::{CLIENT_ID, Directory, GraphServer, Group, Props, TENANT};
use serde_json::{Value, json};
use support::process::{Output, Running, fresh_token, repo, wait_until};
use support::proxy;
use support::scim::{ENTERPRISE_SCHEMA, ScimServer, TargetContents, closed_port_url, str_at};
use support::workdir::{Idsync, Workdir, scim_target_yaml};

/// A Graph stand-in, a SCIM server and a workspace whose config reads the
/// one into the other with `mappings/entra.yaml` (or `mapping.yaml` in the
/// workspace once [`Setup::write_mapping`] wrote one).
struct Setup {
    graph: GraphServer,
    scim: ScimServer,
    ws: Workdir,
    /// `target.base_url`: the SCIM server, or a proxy in front of it.
    base_url: String,
    secret: String,
    mapping: PathBuf,
    remove_action: &'static str,
    max_removals: &'static str,
    full_every: &'static str,
    /// The credential's lines of the `source:` section.
    credential: String,
    /// Top-level lines appended to the config (an `assign:` section), each
    /// ending in a newline.
    extra_config: String,
}

impl Setup {
    fn new() -> Setup {
        let secret = fresh_token("entra-secret");
        let graph = GraphServer::start(&secret);
        let scim = ScimServer::start(&fresh_token("entra"));
        let mut ws = Workdir::new("idsync-entra-", scim.token());
        ws.extra_secrets.push(secret.clone());
        ws.write_file("client-secret", format!("{secret}\n").as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                ws.path().join("client-secret"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        Setup {
            base_url: scim.base_url(),
            graph,
            scim,
            ws,
            secret,
            mapping: repo().join("mappings/entra.yaml"),
            remove_action: "disable",
            max_removals: "100%",
            full_every: "24h",
            credential: "  client_secret_file: client-secret\n".into(),
            extra_config: String::new(),
        }
    }

    /// The config the fields describe.
    fn config(&self) -> String {
        format!(
            "{source}\
             \x20 rate_limit: 500\n\
             \x20 full_every: {full_every}\n\
             \x20 timeout: 10s\n\
             mapping: {mapping}\n\
             {target}\
             policy:\n\
             \x20 remove_action: {remove}\n\
             \x20 max_removals: {max}\n\
             \x20 max_member_removals: 100%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             state: state/idsync.db\n\
             {extra}",
            mapping = self.mapping.display(),
            target = scim_target_yaml(&self.base_url, "10s"),
            remove = self.remove_action,
            max = self.max_removals,
            full_every = self.full_every,
            source = graph_server::source_yaml(&self.graph.url(), &self.credential),
            extra = self.extra_config,
        )
    }

    /// Uses `text` as the mapping from now on.
    fn write_mapping(&mut self, text: &str) {
        self.ws.write_file("mapping.yaml", text.as_bytes());
        self.mapping = self.ws.path().join("mapping.yaml");
    }

    /// Starts `idsync ARGS` in the background.
    fn spawn(&self, args: &[&str]) -> Running {
        self.ws.spawn(&self.config(), args)
    }

    /// `sync`, exit 0, then the target compared with the directory.
    fn sync_and_compare(&self) -> Value {
        let summary = self.sync_ok();
        assert_matches(
            &self.graph.directory(),
            &self.scim.contents(),
            self.remove_action,
        );
        summary
    }
}

impl Idsync for Setup {
    fn run(&self, args: &[&str]) -> Output {
        self.ws.run(&self.config(), args)
    }
}

fn user(upn: &str, given: &str, surname: &str, title: &str) -> Props {
    let v = json!({
        "userPrincipalName": upn,
        "mail": upn,
        "givenName": given,
        "surname": surname,
        "displayName": format!("{given} {surname}"),
        "jobTitle": title,
        "department": "Engineering",
        "employeeId": "E-1",
        "accountEnabled": true,
        "userType": "Member",
        "companyName": "Contoso"
    });
    v.as_object().cloned().expect("object")
}

fn uid(i: usize) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

fn gid(i: usize) -> String {
    format!("10000000-0000-0000-0000-{i:012}")
}

/// `n` users, groups `team-0..` each with every `groups`-th user, and group
/// `all` holding the teams (nested).
fn directory(n: usize, groups: usize) -> Directory {
    let mut d = Directory::default();
    for i in 0..n {
        d.users.insert(
            uid(i),
            user(
                &format!("user{i}@contoso.com"),
                &format!("Given{i}"),
                &format!("Sur{i}"),
                "Engineer",
            ),
        );
    }
    for g in 0..groups {
        d.groups.insert(
            gid(g),
            Group {
                name: format!("team-{g}"),
                members: (0..n).filter(|i| i % groups == g).map(uid).collect(),
            },
        );
    }
    if groups > 0 {
        d.groups.insert(
            gid(999),
            Group {
                name: "all".into(),
                members: (0..groups).map(gid).collect(),
            },
        );
    }
    d
}

fn prop<'a>(p: &'a Props, name: &str) -> Option<&'a str> {
    p.get(name).and_then(Value::as_str)
}

/// The target holds exactly what the directory says through the default
/// mapping: one user per in-scope directory user (guests out), with its
/// attributes and `active` from `accountEnabled`; users gone from the directory
/// disabled (`disable`) or deleted; groups with their flattened members.
fn assert_matches(dir: &Directory, target: &TargetContents, remove_action: &str) {
    let in_scope: BTreeMap<&String, &Props> = dir
        .users
        .iter()
        .filter(|(_, p)| !prop(p, "userType").is_some_and(|t| t.eq_ignore_ascii_case("guest")))
        .collect();
    let by_external: BTreeMap<&str, &Value> = target
        .users
        .iter()
        .map(|u| (str_at(u, "externalId"), u))
        .collect();
    for (id, p) in &in_scope {
        let u = by_external.get(id.as_str()).unwrap_or_else(|| {
            panic!(
                "user {id} ({:?}) is not in the target",
                prop(p, "userPrincipalName")
            )
        });
        assert_eq!(
            str_at(u, "userName"),
            prop(p, "userPrincipalName").unwrap_or(""),
            "{id}"
        );
        let enabled = p
            .get("accountEnabled")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        assert_eq!(u["active"].as_bool(), Some(enabled), "{id} active");
        assert_eq!(
            u["name"]["givenName"].as_str(),
            prop(p, "givenName"),
            "{id}"
        );
        assert_eq!(u["name"]["familyName"].as_str(), prop(p, "surname"), "{id}");
        assert_eq!(u["title"].as_str(), prop(p, "jobTitle"), "{id} title");
        assert_eq!(
            u[ENTERPRISE_SCHEMA]["department"].as_str(),
            prop(p, "department"),
            "{id} department"
        );
    }
    for u in &target.users {
        let id = str_at(u, "externalId");
        if !in_scope.contains_key(&id.to_string()) {
            assert_eq!(
                remove_action, "disable",
                "user {id} should have been deleted"
            );
            assert_eq!(
                u["active"].as_bool(),
                Some(false),
                "user {id} left and stays active"
            );
        }
    }
    assert_eq!(
        target
            .users
            .iter()
            .filter(|u| u["active"].as_bool() == Some(true))
            .count(),
        in_scope
            .values()
            .filter(|p| p
                .get("accountEnabled")
                .and_then(Value::as_bool)
                .unwrap_or(true))
            .count(),
        "active users"
    );
    // Groups: the directory's, flattened to in-scope users, by SCIM id.
    let scim_id: BTreeMap<&str, &str> = target
        .users
        .iter()
        .map(|u| (str_at(u, "externalId"), str_at(u, "id")))
        .collect();
    assert_eq!(target.groups.len(), dir.groups.len(), "groups");
    for (gid, g) in &dir.groups {
        let users: BTreeSet<String> = dir
            .flattened_users(gid)
            .iter()
            .filter(|m| in_scope.contains_key(m))
            .map(|m| scim_id[m.as_str()].to_string())
            .collect();
        let group = target
            .groups
            .iter()
            .find(|t| str_at(t, "displayName") == g.name)
            .unwrap_or_else(|| panic!("group {} is not in the target", g.name));
        let members: BTreeSet<String> = group["members"]
            .as_array()
            .map(|m| m.iter().map(|m| str_at(m, "value").to_string()).collect())
            .unwrap_or_default();
        assert_eq!(members.len(), users.len(), "members of {}", g.name);
        assert_eq!(members, users, "members of {}", g.name);
    }
}

/// The `$deltatoken` of the first users/delta request of each cycle in `log`.
fn delta_tokens(log: &[(String, String)]) -> Vec<String> {
    log.iter()
        .filter(|(_, p)| p.starts_with("/v1.0/users/delta?$deltatoken="))
        .map(|(_, p)| p.split('=').nth(1).unwrap_or("").to_string())
        .collect()
}

fn full_rounds(log: &[(String, String)]) -> usize {
    log.iter()
        .filter(|(_, p)| p.starts_with("/v1.0/users/delta?$select="))
        .count()
}

#[test]
fn cycles_follow_changes_attribute_disable_soft_delete_restore_and_delete() {
    let s = Setup::new();
    let mut dir = directory(30, 3);
    let mut guest = user(
        "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "Bob",
        "Guest",
        "",
    );
    guest.insert("userType".into(), json!("Guest"));
    dir.users.insert(uid(100), guest);
    s.graph.edit(|d| *d = dir);

    // `plan` reads but writes nothing: no state DB.
    let plan = s.plan_json();
    assert_eq!(plan["summary"]["create_users"], 30);
    assert!(!s.ws.state_db().exists(), "plan created the state DB");

    // Initial read: a full round with an explicit $select (never *).
    s.graph.clear_log();
    s.sync_and_compare();
    let log = s.graph.log();
    assert_eq!(full_rounds(&log), 1, "{log:?}");
    let select = log
        .iter()
        .find(|(_, p)| p.starts_with("/v1.0/users/delta?$select="))
        .map(|(_, p)| p.clone())
        .unwrap();
    for p in [
        "id",
        "userPrincipalName",
        "accountEnabled",
        "userType",
        "jobTitle",
    ] {
        assert!(select.contains(p), "{select}");
    }
    assert!(
        !select.contains("companyName"),
        "only what the mapping uses: {select}"
    );
    assert!(
        log.iter()
            .any(|(_, p)| p == "/v1.0/groups/delta?$select=displayName,members"),
        "{log:?}"
    );
    s.assert_plan_empty();

    // `explain` reads through the mirror, as a cycle does, and writes nothing.
    let out = s.run(&["explain", "user7@contoso.com"]);
    out.assert_code(0);
    assert!(out.stdout.contains(&uid(7)), "{}", out.stdout);

    // An attribute change: an incremental cycle, a handful of Graph requests.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(1))
            .unwrap()
            .insert("jobTitle".into(), json!("Lead"));
    });
    s.graph.clear_log();
    let summary = s.sync_and_compare();
    assert_eq!(summary["summary"]["update_users"], 1, "{summary}");
    let log = s.graph.log();
    assert_eq!(full_rounds(&log), 0, "{log:?}");
    assert!(
        s.graph.graph_requests() <= 3 && s.graph.token_requests() == 1,
        "an incremental cycle with one change: {log:?}"
    );

    // `plan` sees a change through the mirror and writes nothing: the state DB
    // (mirror and links included) is byte for byte the same.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(6))
            .unwrap()
            .insert("department".into(), json!("Sales"));
    });
    let before = s.ws.state_bytes();
    let plan = s.plan_json();
    assert_eq!(plan["summary"]["update_users"], 1, "{plan}");
    assert_eq!(s.ws.state_bytes(), before, "plan wrote to the state DB");
    s.sync_and_compare();

    // A disabled account is an ordinary change.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(2))
            .unwrap()
            .insert("accountEnabled".into(), json!(false));
    });
    s.sync_and_compare();

    // Soft delete, then restore: the same SCIM account comes back.
    let before = s.scim.contents();
    let id_of = |c: &TargetContents, key: &str| {
        c.users
            .iter()
            .find(|u| str_at(u, "externalId") == key)
            .map(|u| str_at(u, "id").to_string())
    };
    let scim_id = id_of(&before, &uid(3)).unwrap();
    s.graph.edit(|d| d.soft_delete(&uid(3)));
    s.sync_and_compare();
    let after = s.scim.contents();
    assert_eq!(id_of(&after, &uid(3)).as_deref(), Some(scim_id.as_str()));
    s.graph.edit(|d| d.restore(&uid(3)));
    s.sync_and_compare();
    let restored = s.scim.contents();
    assert_eq!(
        id_of(&restored, &uid(3)).as_deref(),
        Some(scim_id.as_str()),
        "same SCIM id"
    );

    // A permanent delete.
    s.graph.edit(|d| d.hard_delete(&uid(4)));
    s.sync_and_compare();
    s.assert_plan_empty();

    // `status` shows the mirror.
    let out = s.run(&["status", "--format", "json"]);
    out.assert_code(0);
    let status = out.json();
    assert_eq!(status["mirror"]["users"], 30, "{status}"); // 31 read, 1 deleted
    assert_eq!(status["mirror"]["groups"], 4, "{status}");
    assert_eq!(status["mirror"]["delta_links"], true, "{status}");
    let out = s.run(&["status"]);
    assert!(
        out.stdout.contains("Source mirror: 30 users, 4 groups"),
        "{}",
        out.stdout
    );
}

#[test]
fn membership_changes_in_a_1000_member_group_arrive_in_slices() {
    let s = Setup::new();
    s.graph.pages(150, 300);
    let mut dir = directory(1000, 0);
    dir.groups.insert(
        gid(0),
        Group {
            name: "everyone".into(),
            members: (0..1000).map(uid).collect(),
        },
    );
    dir.groups.insert(
        gid(1),
        Group {
            name: "small".into(),
            members: (0..10).map(uid).collect(),
        },
    );
    s.graph.edit(|d| *d = dir);
    s.graph.clear_log();
    s.sync_and_compare();
    // 1,000 members over pages of 300 entries: the group came in slices.
    let group_pages = s
        .graph
        .log()
        .iter()
        .filter(|(_, p)| p.starts_with("/v1.0/groups/delta"))
        .count();
    assert!(group_pages >= 2, "{group_pages}");

    // Remove 20 members and add 5 new users to the big group.
    s.graph.edit(|d| {
        for i in 1000..1005 {
            d.users.insert(
                uid(i),
                user(&format!("user{i}@contoso.com"), "New", "Member", "Engineer"),
            );
        }
        let g = d.groups.get_mut(&gid(0)).unwrap();
        for i in 0..20 {
            g.members.remove(&uid(i));
        }
        g.members.extend((1000..1005).map(uid));
    });
    let summary = s.sync_and_compare();
    assert_eq!(summary["summary"]["remove_members"], 20, "{summary}");
    assert_eq!(summary["summary"]["add_members"], 5, "{summary}");
    s.assert_plan_empty();
}

#[test]
fn an_expired_link_starts_a_full_round_410_and_400() {
    let s = Setup::new();
    s.graph.edit(|d| *d = directory(20, 2));
    s.sync_and_compare();
    for status in [410, 400] {
        s.graph.edit(|d| {
            d.users
                .get_mut(&uid(5))
                .unwrap()
                .insert("jobTitle".into(), json!(format!("T{status}")));
            d.groups.get_mut(&gid(0)).unwrap().members.remove(&uid(0));
        });
        s.graph.expire_tokens(status);
        s.graph.clear_log();
        let out = s.run(&["sync", "--format", "json"]);
        out.assert_code(0);
        assert!(out.stderr.contains("full round"), "{}", out.stderr);
        assert_matches(&s.graph.directory(), &s.scim.contents(), "disable");
        assert_eq!(full_rounds(&s.graph.log()), 1, "{status}");
    }
    // And back to incremental.
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(full_rounds(&s.graph.log()), 0);

    // `sync --full` is a full resync of the source too.
    s.graph.clear_log();
    s.run(&["sync", "--full"]).assert_code(0);
    assert_eq!(full_rounds(&s.graph.log()), 1);
    assert_matches(&s.graph.directory(), &s.scim.contents(), "disable");
}

#[test]
fn a_mapping_change_that_selects_other_properties_starts_a_full_round() {
    let mut s = Setup::new();
    s.graph.edit(|d| *d = directory(10, 1));
    s.sync_and_compare();
    let text = std::fs::read_to_string(repo().join("mappings/entra.yaml")).unwrap();
    // Same $select: incremental.
    s.write_mapping(&text);
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(full_rounds(&s.graph.log()), 0);
    // One more property: a full round with it.
    s.write_mapping(&text.replace(
        "    department: department\n",
        "    department: department\n    organization: companyName\n",
    ));
    s.graph.clear_log();
    let summary = s.sync_ok();
    assert_eq!(summary["summary"]["update_users"], 10, "{summary}");
    let log = s.graph.log();
    assert_eq!(full_rounds(&log), 1);
    assert!(
        log.iter().any(|(_, p)| p.contains("companyName")),
        "{log:?}"
    );
    s.graph.clear_log();
    s.assert_plan_empty();
}

#[test]
fn throttling_is_honoured_and_a_long_retry_after_fails_the_cycle_keeping_the_link() {
    let s = Setup::new();
    s.graph.edit(|d| *d = directory(10, 1));
    s.sync_and_compare();
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(1))
            .unwrap()
            .insert("jobTitle".into(), json!("Boss"));
    });
    // 2 × 429 with Retry-After: 1.
    s.graph.throttle(2, 1);
    s.graph.clear_log();
    let started = Instant::now();
    s.sync_and_compare();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let tokens = delta_tokens(&s.graph.log());
    assert_eq!(tokens.len(), 3, "the same request, three times: {tokens:?}");

    // A Retry-After longer than a cycle should wait: exit 5, nothing changed,
    // and the next cycle reads from the same link.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(2))
            .unwrap()
            .insert("jobTitle".into(), json!("Boss"));
    });
    s.graph.throttle(1, 3600);
    s.graph.clear_log();
    let out = s.run(&["sync"]);
    out.assert_code(5);
    assert!(out.stderr.contains("throttled"), "{}", out.stderr);
    let failed = delta_tokens(&s.graph.log());
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(delta_tokens(&s.graph.log()), failed, "the same link again");
}

#[test]
fn a_cycle_that_does_not_apply_keeps_the_link_and_the_next_reads_the_same_changes() {
    let mut s = Setup::new();
    s.max_removals = "1";
    s.graph.edit(|d| *d = directory(10, 1));
    s.sync_and_compare();
    // Three leavers: the removal guard stops the cycle after the read.
    s.graph.edit(|d| {
        for i in 0..3 {
            d.hard_delete(&uid(i));
        }
        d.users
            .get_mut(&uid(5))
            .unwrap()
            .insert("jobTitle".into(), json!("Lead"));
    });
    s.graph.clear_log();
    s.run(&["sync"]).assert_code(3);
    let stopped = delta_tokens(&s.graph.log());
    assert_eq!(stopped.len(), 1);

    // The target is down: exit 5, nothing read or committed.
    let base = s.base_url.clone();
    s.base_url = closed_port_url();
    s.run(&["sync"]).assert_code(5);
    s.base_url = base;

    // Reviewed: the same changes are read again from the same link.
    s.graph.clear_log();
    s.run(&["sync", "--allow-deletes"]).assert_code(0);
    assert_eq!(delta_tokens(&s.graph.log()), stopped);
    assert_matches(&s.graph.directory(), &s.scim.contents(), "disable");
    s.graph.clear_log();
    s.assert_plan_empty();
    assert_ne!(
        delta_tokens(&s.graph.log()),
        stopped,
        "committed after the apply"
    );
}

#[test]
fn check_gets_a_token_and_names_a_missing_permission_and_a_refused_secret() {
    let s = Setup::new();
    s.graph.edit(|d| *d = directory(3, 1));
    let out = s.run(&["check"]);
    out.assert_code(0);
    assert!(out.stdout.contains("token obtained"), "{}", out.stdout);

    s.graph.forbid("groups");
    let out = s.run(&["check"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains("GroupMember.Read.All"),
        "{}",
        out.stderr
    );

    // A wrong secret: exit 5, naming the tenant and the client, never the secret.
    s.ws.write_file("client-secret", b"wrong-secret-value-42\n");
    let out = s.run(&["sync"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains(TENANT) && out.stderr.contains(CLIENT_ID),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wrong-secret-value-42"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&s.secret));
}

#[test]
fn the_shipped_example_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["validate", "-c"])
        .arg(repo().join("examples/entra.yaml"))
        .current_dir(dir.path())
        .env("ENTRA_TENANT_ID", "contoso.onmicrosoft.com")
        .env("ENTRA_CLIENT_ID", CLIENT_ID)
        .env(
            "ENTRA_APP_OBJECT_ID",
            "5f6e0000-aaaa-bbbb-cccc-000000000001",
        )
        .env(
            "ATLASSIAN_DIRECTORY_ID",
            "00000000-0000-0000-0000-000000000000",
        )
        .env_remove("IDSYNC_CONFIG")
        .output()
        .expect("run idsync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("entra"), "{stdout}");
}

#[test]
fn full_every_starts_a_full_round_and_a_short_lived_token_is_renewed() {
    let mut s = Setup::new();
    s.full_every = "2s";
    // Tokens live 2 s (renewed at 9/10 of that) and Graph refuses them after.
    s.graph.token_lifetime(2);
    s.graph.edit(|d| *d = directory(10, 1));
    s.sync_and_compare();
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(
        full_rounds(&s.graph.log()),
        0,
        "incremental within full_every"
    );
    std::thread::sleep(Duration::from_millis(2100));
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(full_rounds(&s.graph.log()), 1, "full_every passed");

    // A slow read (Retry-After 1 s, three times) outlives the token: renewed.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(1))
            .unwrap()
            .insert("jobTitle".into(), json!("Lead"));
    });
    s.graph.throttle(3, 1);
    s.graph.clear_log();
    s.sync_and_compare();
    assert!(s.graph.token_requests() >= 2, "{:?}", s.graph.log());
    assert!(
        !s.graph
            .log()
            .iter()
            .any(|(_, p)| p.contains("unauthorized")),
        "never refused"
    );
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_certificate_credential_signs_a_client_assertion() {
    use base64::Engine as _;
    let mut s = Setup::new();
    let dir = s.ws.path().to_path_buf();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "app.key",
            "-out",
            "app.pem",
            "-days",
            "2",
            "-subj",
            "/CN=idsync-test",
        ],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("app.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let public = openssl(&dir, &["pkey", "-in", "app.key", "-pubout"]);
    let der = openssl(&dir, &["x509", "-in", "app.pem", "-outform", "DER"]);
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1.as_ref());
    s.graph.accept_certificate(&public, &x5t);
    s.credential = "  certificate_file: app.pem\n  private_key_file: app.key\n".into();
    s.graph.edit(|d| *d = directory(5, 1));
    s.run(&["check"]).assert_code(0);
    s.sync_and_compare();

    // Another key for the same certificate: refused, exit 5.
    openssl(&dir, &["genrsa", "-out", "other.key", "2048"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("other.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    s.credential = "  certificate_file: app.pem\n  private_key_file: other.key\n".into();
    let out = s.run(&["sync"]);
    out.assert_code(5);
    assert!(out.stderr.contains("the certificate"), "{}", out.stderr);
    assert!(!out.stderr.contains("PRIVATE KEY"), "{}", out.stderr);
}

#[test]
fn a_failed_apply_keeps_the_link_and_the_next_cycle_reads_the_same_changes() {
    let mut s = Setup::new();
    let proxy = proxy::FaultProxy::start(s.scim.port(), proxy::pass_through());
    s.base_url = proxy.base_url();
    s.graph.edit(|d| *d = directory(10, 1));
    s.sync_and_compare();

    // The target refuses the update: exit 1, the mirror and its link stay.
    s.graph.edit(|d| {
        d.users
            .get_mut(&uid(1))
            .unwrap()
            .insert("jobTitle".into(), json!("Lead"));
    });
    proxy.set_schedule(std::sync::Arc::new(|r: &proxy::Req| {
        if r.method == "PATCH" {
            proxy::Fault::Status(400, "refused for the test".into())
        } else {
            proxy::Fault::Forward
        }
    }));
    s.graph.clear_log();
    let out = s.run(&["sync", "--format", "json"]);
    out.assert_code(1);
    let failed = delta_tokens(&s.graph.log());
    assert_eq!(failed.len(), 1, "{:?}", s.graph.log());

    // The target is back: the same changes are read again, from the same link.
    proxy.set_schedule(proxy::pass_through());
    s.graph.clear_log();
    let summary = s.sync_and_compare();
    assert_eq!(summary["summary"]["update_users"], 1, "{summary}");
    assert_eq!(delta_tokens(&s.graph.log()), failed, "the same link again");
    s.graph.clear_log();
    s.assert_plan_empty();
    assert_ne!(
        delta_tokens(&s.graph.log()),
        failed,
        "committed after the apply"
    );
}

// ---------------------------------------------------------------------------
// SIGKILL during an incremental cycle's apply, and after its last change
// reached the target but before the mirror and its delta links were committed.

/// Every user in the target once (by externalId and by userName), every group
/// once (by displayName).
fn assert_no_duplicates(target: &TargetContents) {
    let mut external = BTreeSet::new();
    let mut names = BTreeSet::new();
    for u in &target.users {
        assert!(
            external.insert(str_at(u, "externalId").to_string()),
            "user externalId {} twice in the target",
            str_at(u, "externalId")
        );
        assert!(
            names.insert(str_at(u, "userName").to_ascii_lowercase()),
            "userName {} twice in the target",
            str_at(u, "userName")
        );
    }
    let mut groups = BTreeSet::new();
    for g in &target.groups {
        assert!(
            groups.insert(str_at(g, "displayName").to_string()),
            "group {} twice in the target",
            str_at(g, "displayName")
        );
    }
}

/// Starts `sync`, SIGKILLs it (by PID) once `cond` holds or after `limit`;
/// returns its exit code (-1 when the kill landed, otherwise the code it
/// finished with first).
fn sync_killed_when(s: &Setup, limit: Duration, cond: impl Fn() -> bool) -> i32 {
    let mut running = s.spawn(&["sync", "--format", "json"]);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && running.is_running() && !cond() {
        std::thread::sleep(Duration::from_millis(2));
    }
    running.signal("KILL");
    running.wait(Duration::from_secs(30)).code
}

/// Users in the target whose title is `title`.
fn titled(target: &TargetContents, title: &str) -> usize {
    target
        .users
        .iter()
        .filter(|u| u["title"].as_str() == Some(title))
        .count()
}

/// A Setup whose SCIM target sits behind a fault proxy, synced once with
/// `users` users in 3 teams.
fn setup_behind_proxy(users: usize) -> (Setup, proxy::FaultProxy) {
    let mut s = Setup::new();
    let proxy = proxy::FaultProxy::start(s.scim.port(), proxy::pass_through());
    s.base_url = proxy.base_url();
    s.graph.edit(|d| *d = directory(users, 3));
    s.sync_and_compare();
    (s, proxy)
}

#[test]
fn sigkill_while_applying_an_incremental_cycle_keeps_the_link_and_the_next_sync_converges() {
    const USERS: usize = 60;
    let (s, proxy) = setup_behind_proxy(USERS);
    // One incremental change set: every title, a new user in a team, a leaver.
    s.graph.edit(|d| {
        for i in 0..USERS {
            d.users
                .get_mut(&uid(i))
                .unwrap()
                .insert("jobTitle".into(), json!("Lead"));
        }
        d.users
            .insert(uid(500), user("new@contoso.com", "New", "Joiner", "Lead"));
        d.groups.get_mut(&gid(0)).unwrap().members.insert(uid(500));
        d.hard_delete(&uid(7));
        for g in d.groups.values_mut() {
            g.members.remove(&uid(7));
        }
    });
    // Every write is held 40 ms: at concurrency 4 the apply takes about 0.7 s,
    // so a kill after a third of the writes lands in the middle of it.
    proxy.set_schedule(std::sync::Arc::new(|r: &proxy::Req| {
        if r.is_write() {
            proxy::Fault::Delay(Duration::from_millis(40))
        } else {
            proxy::Fault::Forward
        }
    }));
    let mut stopped: Option<Vec<String>> = None;
    for (run, at) in [20usize, 15].into_iter().enumerate() {
        s.graph.clear_log();
        proxy.clear_log();
        let code = sync_killed_when(&s, Duration::from_secs(30), || proxy.writes() >= at);
        // Let the writes still held at the proxy land.
        std::thread::sleep(Duration::from_millis(300));
        let leads = titled(&s.scim.contents(), "Lead");
        eprintln!(
            "run {run}: killed after {} writes -> exit {code}; {leads} users titled Lead",
            proxy.writes()
        );
        assert_eq!(code, -1, "the kill did not land mid-apply (run {run})");
        assert!(
            (1..=USERS).contains(&leads),
            "run {run}: nothing was applied before the kill"
        );
        let tokens = delta_tokens(&s.graph.log());
        assert_eq!(tokens.len(), 1, "{:?}", s.graph.log());
        assert_eq!(full_rounds(&s.graph.log()), 0, "incremental");
        // The killed run committed no link: every run reads from the same one.
        match &stopped {
            None => stopped = Some(tokens),
            Some(first) => assert_eq!(&tokens, first, "the link advanced after a kill"),
        }
    }
    let stopped = stopped.unwrap();

    // The next sync reads the same changes again, from the same link, and
    // converges: the target matches the directory, nothing twice.
    proxy.set_schedule(proxy::pass_through());
    s.graph.clear_log();
    s.sync_and_compare();
    assert_eq!(delta_tokens(&s.graph.log()), stopped, "the same link again");
    assert_eq!(full_rounds(&s.graph.log()), 0, "incremental");
    let contents = s.scim.contents();
    assert_no_duplicates(&contents);
    assert_eq!(titled(&contents, "Lead"), USERS); // 59 kept + the joiner
    s.graph.clear_log();
    s.assert_plan_empty();
    let after = delta_tokens(&s.graph.log());
    assert_eq!(after.len(), 1);
    assert_ne!(after, stopped, "committed after the complete apply");
}

#[test]
fn sigkill_after_the_last_change_reached_the_target_before_the_link_commit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const USERS: usize = 30;
    let (s, proxy) = setup_behind_proxy(USERS);
    s.graph.edit(|d| {
        for i in 0..USERS {
            d.users
                .get_mut(&uid(i))
                .unwrap()
                .insert("jobTitle".into(), json!("Staff"));
        }
    });
    // The cycle's writes are USERS PATCHes. The last one is held 2 s at the
    // proxy, then forwarded: idsync is killed while it waits for that answer,
    // and the change still reaches the target afterwards. The target then
    // holds every change of the cycle, but idsync neither recorded the last
    // answer nor committed the mirror and its links.
    let patches = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = patches.clone();
    proxy.set_schedule(std::sync::Arc::new(move |r: &proxy::Req| {
        if r.method == "PATCH" && seen.fetch_add(1, Ordering::SeqCst) + 1 == USERS {
            proxy::Fault::Delay(Duration::from_secs(2))
        } else {
            proxy::Fault::Forward
        }
    }));
    s.graph.clear_log();
    proxy.clear_log();
    let answered = || {
        let e = proxy.entries();
        let patches: Vec<_> = e.iter().filter(|e| e.method == "PATCH").collect();
        patches.len() == USERS && patches.iter().filter(|e| e.status.is_some()).count() == USERS - 1
    };
    let code = sync_killed_when(&s, Duration::from_secs(30), || {
        // Give idsync a moment to record the answers it has.
        answered() && {
            std::thread::sleep(Duration::from_millis(150));
            true
        }
    });
    assert_eq!(code, -1, "the kill did not land before the cycle ended");
    assert!(answered(), "killed before the last change was sent");
    let stopped = delta_tokens(&s.graph.log());
    assert_eq!(stopped.len(), 1, "{:?}", s.graph.log());
    // The held change lands (bounded wait): the target is already up to date.
    assert!(
        wait_until(Duration::from_secs(10), || titled(
            &s.scim.contents(),
            "Staff"
        ) == USERS),
        "the held PATCH never reached the target"
    );
    assert_matches(&s.graph.directory(), &s.scim.contents(), "disable");

    // The link did not advance: the next cycle asks for the same changes,
    // converges, and only then commits the new link.
    proxy.set_schedule(proxy::pass_through());
    s.graph.clear_log();
    let summary = s.sync_and_compare();
    eprintln!("the sync after the kill: {}", summary["summary"]);
    assert_eq!(delta_tokens(&s.graph.log()), stopped, "the same link again");
    assert_eq!(full_rounds(&s.graph.log()), 0, "incremental");
    assert_no_duplicates(&s.scim.contents());
    s.graph.clear_log();
    s.assert_plan_empty();
    let after = delta_tokens(&s.graph.log());
    assert_eq!(after.len(), 1);
    assert_ne!(after, stopped, "committed after the complete apply");
}

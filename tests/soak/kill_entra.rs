//! The Entra world of the kill tests: the Graph stand-in (`graph_server`),
//! read through delta queries into idsync's mirror, whose directory the test
//! edits between runs — joiners, leavers (soft- and hard-deleted), new
//! userPrincipalNames, new titles and departments, accounts disabled and
//! enabled, moves between groups, groups created, renamed and deleted, and a
//! group of groups (flattened) — against which the target is compared
//! through the default Entra mapping.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::graph_server::{Directory, GraphServer, Group, Props, source_yaml};
use crate::kills::{Rig, World};
use crate::support::compare::{Diffs, index_by, member_ids};
use crate::support::process::{fresh_token, repo};
use crate::support::proxy::Rng;
use crate::support::scim::{ENTERPRISE_SCHEMA, attr, str_at};

const TITLES: &[&str] = &["Engineer", "Analyst", "Manager", "Lead"];
/// The group whose members are the teams.
const ALL: &str = "20000000-0000-0000-0000-000000000000";

fn user_id(n: usize) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

fn group_id(n: usize) -> String {
    format!("10000000-0000-0000-0000-{n:012}")
}

fn person(n: usize) -> Props {
    let v = json!({
        "userPrincipalName": format!("user{n:05}@contoso.com"),
        "mail": format!("user{n:05}@contoso.com"),
        "givenName": "Given",
        "surname": format!("Sur{n}"),
        "jobTitle": TITLES[n % TITLES.len()],
        "department": "Engineering",
        "accountEnabled": true,
        "userType": "Member"
    });
    v.as_object().cloned().expect("object")
}

pub struct EntraWorld {
    graph: GraphServer,
    rig: Rig,
    rng: Rng,
    fresh: usize,
}

impl EntraWorld {
    pub fn new(seed: u64) -> EntraWorld {
        let secret = fresh_token("kills-entra-secret");
        let graph = GraphServer::start(&secret);
        let mut rig = Rig::start("kills-entra", seed);
        rig.ws.extra_secrets.push(secret.clone());
        rig.ws
            .write_file("client-secret", format!("{secret}\n").as_bytes());
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                rig.ws.path().join("client-secret"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        graph.edit(|d| {
            for n in 0..100 {
                d.users.insert(user_id(n), person(n));
            }
            for t in 0..5 {
                let members = (0..100).filter(|n| n % 5 == t).map(user_id).collect();
                d.groups.insert(
                    group_id(t),
                    Group {
                        name: format!("team-{t}"),
                        members,
                    },
                );
            }
            d.groups.insert(
                ALL.into(),
                Group {
                    name: "everyone".into(),
                    members: (0..3).map(group_id).collect(),
                },
            );
        });
        EntraWorld {
            graph,
            rig,
            rng: Rng::new(seed),
            fresh: 1000,
        }
    }

    /// One random edit of the directory.
    fn edit(&mut self, d: &mut Directory) {
        self.fresh += 1;
        let n = self.fresh;
        let users: Vec<String> = d.users.keys().cloned().collect();
        let teams: Vec<String> = d.groups.keys().filter(|g| *g != ALL).cloned().collect();
        let mut pick = |items: &[String]| -> Option<String> {
            (!items.is_empty())
                .then(|| items[self.rng.range(0, items.len() as u64) as usize].clone())
        };
        let (Some(user), Some(team)) = (pick(&users), pick(&teams)) else {
            return;
        };
        let enabled = d.users[&user].get("accountEnabled") == Some(&json!(true));
        let prop = |d: &mut Directory, name: &str, value: Value| {
            d.users
                .get_mut(&user)
                .expect("user")
                .insert(name.into(), value);
        };
        match self.rng.range(0, 100) {
            0..18 => {
                d.users.insert(user_id(n), person(n));
                d.groups
                    .get_mut(&team)
                    .expect("team")
                    .members
                    .insert(user_id(n));
            }
            18..26 if users.len() > 10 => leave(d, &user, |d, u| d.hard_delete(u)),
            26..32 if users.len() > 10 => leave(d, &user, |d, u| d.soft_delete(u)),
            32..42 => {
                let upn = format!("renamed{n:05}@contoso.com");
                prop(d, "userPrincipalName", json!(upn));
                prop(d, "mail", json!(upn));
            }
            42..58 => prop(d, "jobTitle", json!(format!("{} {n}", TITLES[n % 4]))),
            58..64 => prop(d, "department", json!(format!("Dept {}", n % 7))),
            64..70 if enabled => {
                prop(d, "accountEnabled", json!(false));
                for g in d.groups.values_mut() {
                    g.members.remove(&user);
                }
            }
            64..70 => prop(d, "accountEnabled", json!(true)),
            70..90 if enabled => {
                for g in d.groups.values_mut().filter(|g| g.members.contains(&user)) {
                    g.members.remove(&user);
                }
                d.groups.get_mut(&team).expect("team").members.insert(user);
            }
            90..94 => {
                let members = BTreeSet::from([user])
                    .into_iter()
                    .filter(|_| enabled)
                    .collect();
                d.groups.insert(
                    group_id(n),
                    Group {
                        name: format!("new-{n}"),
                        members,
                    },
                );
            }
            94..97 => d.groups.get_mut(&team).expect("team").name = format!("renamed-{n}"),
            97.. if teams.len() > 4 => {
                d.groups.remove(&team);
                for g in d.groups.values_mut() {
                    g.members.remove(&team);
                }
            }
            _ => {}
        }
    }
}

/// A leaver: out of every group, then deleted as `how` does it.
fn leave(d: &mut Directory, user: &str, how: impl FnOnce(&mut Directory, &str)) {
    for g in d.groups.values_mut() {
        g.members.remove(user);
    }
    how(d, user);
}

impl World for EntraWorld {
    fn source(&self) -> &'static str {
        "Entra"
    }

    fn rig(&self) -> &Rig {
        &self.rig
    }

    fn config(&self) -> String {
        format!(
            "{source}\
             \x20 rate_limit: 500\n\
             \x20 timeout: 10s\n\
             mapping: {mapping}\n\
             {tail}",
            mapping = repo().join("mappings/entra.yaml").display(),
            tail = self.rig.config_tail(),
            source = source_yaml(&self.graph.url(), "  client_secret_file: client-secret\n"),
        )
    }

    fn churn(&mut self, changes: usize) {
        let mut dir = self.graph.directory();
        for _ in 0..changes {
            self.edit(&mut dir);
        }
        self.graph.edit(|d| *d = dir);
    }

    fn assert_exact(&self) {
        let dir = self.graph.directory();
        let target = self.rig.server.contents();
        let mut diffs = Diffs::default();
        let by_key = index_by(&target.users, "externalId", false);
        for key in by_key.keys().filter(|k| !dir.users.contains_key(*k)) {
            diffs.push(format!("a user the directory does not have: {key}"));
        }
        let mut ids = BTreeMap::new();
        for (key, p) in &dir.users {
            let enabled = p.get("accountEnabled").and_then(Value::as_bool);
            let Some(found) = by_key.get(key) else {
                // A user disabled before ever being provisioned is not
                // created just to be disabled.
                if enabled != Some(false) {
                    diffs.push(format!("missing user {key}"));
                }
                continue;
            };
            let u = found[0];
            ids.insert(key.clone(), str_at(u, "id").to_owned());
            let want = |name: &str| p.get(name).and_then(Value::as_str).unwrap_or_default();
            diffs.check(
                key,
                "userName",
                str_at(u, "userName"),
                want("userPrincipalName"),
            );
            diffs.check(
                key,
                "familyName",
                attr(u, &["name", "familyName"]),
                want("surname"),
            );
            diffs.check(key, "title", str_at(u, "title"), want("jobTitle"));
            let department = attr(u, &[ENTERPRISE_SCHEMA, "department"]);
            diffs.check(key, "department", department, want("department"));
            let active = u.get("active").and_then(Value::as_bool);
            if active != enabled {
                diffs.push(format!("{key}: active {active:?}, enabled {enabled:?}"));
            }
        }
        let groups = index_by(&target.groups, "displayName", false);
        let names: BTreeSet<&str> = dir.groups.values().map(|g| g.name.as_str()).collect();
        for name in groups.keys().filter(|n| !names.contains(n.as_str())) {
            diffs.push(format!("unexpected group {name:?} on the target"));
        }
        for (id, g) in &dir.groups {
            let Some(found) = groups.get(&g.name) else {
                diffs.push(format!("missing group {:?}", g.name));
                continue;
            };
            let want: BTreeSet<String> = dir
                .flattened_users(id)
                .iter()
                .map(|u| ids.get(u).cloned().unwrap_or_else(|| format!("<{u}>")))
                .collect();
            diffs.members(&g.name, &want, &member_ids(found[0]), |_| None);
        }
        diffs.finish(&target);
    }
}

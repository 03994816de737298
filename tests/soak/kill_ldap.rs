//! The LDAP world of the kill tests: a real slapd (scripts/slapd.sh) whose
//! people and groups the test edits with `ldapmodify` as the rootdn — joiners,
//! leavers (taken out of their groups, then deleted), new mail addresses (a
//! new userName), new titles, moves between groups, groups added, renamed
//! (modrdn: the same entry, so the same key) and deleted — keeping a model of
//! what it wrote, against which the target is compared through the default
//! inetOrgPerson mapping.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::kills::{Rig, World};
use crate::slapd::{GROUPS, Ldif, PEOPLE, SUFFIX, SYNC_DN, SYNC_PW, Slapd};
use crate::support::compare::{Diffs, index_by, member_ids};
use crate::support::process::repo;
use crate::support::proxy::Rng;
use crate::support::scim::{attr, str_at};

/// Keeps a `groupOfNames` valid when the test takes its last member out:
/// a member outside the base, which idsync does not follow.
const GHOST: &str = "uid=ghost,ou=people,dc=elsewhere,dc=org";
const TITLES: &[&str] = &["Engineer", "Analyst", "Manager", "Lead"];

#[derive(Clone, Debug)]
struct Person {
    mail: String,
    title: String,
}

pub struct LdapWorld {
    slapd: Slapd,
    rig: Rig,
    /// People by uid.
    people: BTreeMap<String, Person>,
    /// Groups by cn: the uids of their members.
    groups: BTreeMap<String, BTreeSet<String>>,
    rng: Rng,
    fresh: usize,
}

fn person_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

impl LdapWorld {
    pub fn new(seed: u64) -> LdapWorld {
        let mut people = BTreeMap::new();
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in 0..100 {
            let uid = format!("p{i:04}");
            people.insert(
                uid.clone(),
                Person {
                    mail: format!("{uid}@example.com"),
                    title: TITLES[i % TITLES.len()].into(),
                },
            );
            groups
                .entry(format!("team-{:02}", i % 6))
                .or_default()
                .insert(uid);
        }
        let mut ldif = Ldif::default();
        for (uid, p) in &people {
            person_entry(&mut ldif, uid, p);
        }
        for (cn, members) in &groups {
            group_entry(&mut ldif, cn, members);
        }
        let slapd = Slapd::start(ldif.text());
        let mut rig = Rig::start("kills-ldap", seed);
        rig.ws.extra_secrets.push(SYNC_PW.into());
        LdapWorld {
            slapd,
            rig,
            people,
            groups,
            rng: Rng::new(seed),
            fresh: 0,
        }
    }

    fn pick<T>(&mut self, mut items: Vec<T>) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let i = self.rng.range(0, items.len() as u64) as usize;
        Some(items.swap_remove(i))
    }

    fn any_person(&mut self) -> Option<String> {
        self.pick(self.people.keys().cloned().collect())
    }

    fn any_group(&mut self) -> Option<String> {
        self.pick(self.groups.keys().cloned().collect())
    }

    /// One random edit, as LDIF change records (empty when it had nothing to
    /// act on), applied to the model.
    fn edit(&mut self) -> String {
        self.fresh += 1;
        let n = self.fresh;
        let mut out = String::new();
        match self.rng.range(0, 100) {
            0..20 => self.join(n, &mut out),
            20..35 => self.leave(&mut out),
            35..45 => {
                if let Some(uid) = self.any_person() {
                    let mail = format!("renamed{n:05}@example.com");
                    modify(&mut out, &person_dn(&uid), "replace", "mail", &[&mail]);
                    self.people.get_mut(&uid).expect("person").mail = mail;
                }
            }
            45..65 => {
                if let Some(uid) = self.any_person() {
                    let title = format!("{} {n}", TITLES[n % TITLES.len()]);
                    modify(&mut out, &person_dn(&uid), "replace", "title", &[&title]);
                    self.people.get_mut(&uid).expect("person").title = title;
                }
            }
            65..88 => self.move_member(&mut out),
            88..93 => self.group_add(n, &mut out),
            93..97 => self.group_rename(n, &mut out),
            _ => self.group_delete(&mut out),
        }
        out
    }

    fn join(&mut self, n: usize, out: &mut String) {
        let uid = format!("j{n:05}");
        let p = Person {
            mail: format!("joiner{n:05}@example.com"),
            title: TITLES[n % TITLES.len()].into(),
        };
        let mut ldif = Ldif::default();
        person_entry(&mut ldif, &uid, &p);
        out.push_str(&as_add(ldif.text()));
        self.people.insert(uid.clone(), p);
        if let Some(cn) = self.any_group() {
            modify(out, &group_dn(&cn), "add", "member", &[&person_dn(&uid)]);
            self.groups.get_mut(&cn).expect("group").insert(uid);
        }
    }

    /// Out of every group first, then deleted.
    fn leave(&mut self, out: &mut String) {
        if self.people.len() < 10 {
            return;
        }
        let Some(uid) = self.any_person() else {
            return;
        };
        for (cn, members) in &mut self.groups {
            if members.remove(&uid) {
                modify(out, &group_dn(cn), "delete", "member", &[&person_dn(&uid)]);
            }
        }
        let _ = writeln!(out, "dn: {}\nchangetype: delete\n", person_dn(&uid));
        self.people.remove(&uid);
    }

    fn move_member(&mut self, out: &mut String) {
        let (Some(from), Some(to)) = (self.any_group(), self.any_group()) else {
            return;
        };
        let members: Vec<String> = self.groups[&from].iter().cloned().collect();
        let Some(uid) = self.pick(members) else {
            return;
        };
        if from == to || self.groups[&to].contains(&uid) {
            return;
        }
        modify(
            out,
            &group_dn(&from),
            "delete",
            "member",
            &[&person_dn(&uid)],
        );
        modify(out, &group_dn(&to), "add", "member", &[&person_dn(&uid)]);
        self.groups.get_mut(&from).expect("group").remove(&uid);
        self.groups.get_mut(&to).expect("group").insert(uid);
    }

    fn group_add(&mut self, n: usize, out: &mut String) {
        let cn = format!("new-{n:05}");
        let mut members = BTreeSet::new();
        for _ in 0..self.rng.range(0, 5) {
            if let Some(uid) = self.any_person() {
                members.insert(uid);
            }
        }
        let mut ldif = Ldif::default();
        group_entry(&mut ldif, &cn, &members);
        out.push_str(&as_add(ldif.text()));
        self.groups.insert(cn, members);
    }

    /// A new RDN: the same entry (the same entryUUID, so the same key).
    fn group_rename(&mut self, n: usize, out: &mut String) {
        let Some(old) = self.any_group() else {
            return;
        };
        let new = format!("renamed-{n:05}");
        let _ = writeln!(
            out,
            "dn: {}\nchangetype: modrdn\nnewrdn: cn={new}\ndeleteoldrdn: 1\n",
            group_dn(&old)
        );
        let members = self.groups.remove(&old).expect("group");
        self.groups.insert(new, members);
    }

    fn group_delete(&mut self, out: &mut String) {
        if self.groups.len() <= 4 {
            return;
        }
        let Some(cn) = self.any_group() else {
            return;
        };
        let _ = writeln!(out, "dn: {}\nchangetype: delete\n", group_dn(&cn));
        self.groups.remove(&cn);
    }
}

fn person_entry(ldif: &mut Ldif, uid: &str, p: &Person) {
    let cn = format!("Person {uid}");
    ldif.entry(
        &person_dn(uid),
        &[
            ("objectClass", "inetOrgPerson"),
            ("uid", uid),
            ("cn", &cn),
            ("givenName", "Person"),
            ("sn", uid),
            ("mail", &p.mail),
            ("title", &p.title),
        ],
    );
}

fn group_entry(ldif: &mut Ldif, cn: &str, members: &BTreeSet<String>) {
    let dns: Vec<String> = members.iter().map(|u| person_dn(u)).collect();
    let mut attrs: Vec<(&str, &str)> = vec![
        ("objectClass", "groupOfNames"),
        ("cn", cn),
        ("member", GHOST),
    ];
    attrs.extend(dns.iter().map(|d| ("member", d.as_str())));
    ldif.entry(&group_dn(cn), &attrs);
}

/// One entry of LDIF content as an add record for `ldapmodify`.
fn as_add(entry: &str) -> String {
    let (dn, rest) = entry.split_once('\n').expect("an entry");
    format!("{dn}\nchangetype: add\n{}\n\n", rest.trim_end())
}

/// An LDIF modify record: `op` (add, delete, replace) of `values` of `attr`.
fn modify(out: &mut String, dn: &str, op: &str, attr: &str, values: &[&str]) {
    let _ = writeln!(out, "dn: {dn}\nchangetype: modify\n{op}: {attr}");
    for v in values {
        let _ = writeln!(out, "{attr}: {v}");
    }
    out.push_str("-\n\n");
}

impl World for LdapWorld {
    fn source(&self) -> &'static str {
        "LDAP"
    }

    fn rig(&self) -> &Rig {
        &self.rig
    }

    fn config(&self) -> String {
        format!(
            "source:\n\
             \x20 kind: ldap\n\
             \x20 url: {url}\n\
             \x20 bind_dn: {SYNC_DN}\n\
             \x20 bind_password_file: {password}\n\
             \x20 base_dn: {SUFFIX}\n\
             \x20 timeout: 10s\n\
             mapping: {mapping}\n\
             {tail}",
            url = self.slapd.url,
            password = self.slapd.sync_password_file().display(),
            mapping = repo().join("mappings/ldap-inetorgperson.yaml").display(),
            tail = self.rig.config_tail(),
        )
    }

    fn churn(&mut self, changes: usize) {
        let ldif: String = (0..changes).map(|_| self.edit()).collect();
        if !ldif.trim().is_empty() {
            self.slapd.modify(&ldif);
        }
    }

    fn assert_exact(&self) {
        let target = self.rig.server.contents();
        let mut diffs = Diffs::default();
        let by_name = index_by(&target.users, "userName", true);
        let want: BTreeMap<String, (&String, &Person)> = self
            .people
            .iter()
            .map(|(uid, p)| (p.mail.to_lowercase(), (uid, p)))
            .collect();
        for name in by_name.keys().filter(|n| !want.contains_key(*n)) {
            diffs.push(format!("unexpected user {name:?} on the target"));
        }
        let mut ids: BTreeMap<&str, String> = BTreeMap::new();
        for (name, (uid, p)) in &want {
            let Some(found) = by_name.get(name) else {
                diffs.push(format!("missing user {name:?} ({uid})"));
                continue;
            };
            let u: &Value = found[0];
            ids.insert(uid.as_str(), str_at(u, "id").to_owned());
            diffs.check(uid, "title", str_at(u, "title"), &p.title);
            diffs.check(uid, "familyName", attr(u, &["name", "familyName"]), uid);
            if u.get("active").and_then(Value::as_bool) != Some(true) {
                diffs.push(format!("{uid}: not active on the target"));
            }
        }
        let groups = index_by(&target.groups, "displayName", false);
        for name in groups.keys().filter(|n| !self.groups.contains_key(*n)) {
            diffs.push(format!("unexpected group {name:?} on the target"));
        }
        for (cn, members) in &self.groups {
            let Some(found) = groups.get(cn) else {
                diffs.push(format!("missing group {cn:?}"));
                continue;
            };
            let want: BTreeSet<String> = members
                .iter()
                .map(|u| {
                    ids.get(u.as_str())
                        .cloned()
                        .unwrap_or_else(|| format!("<{u}>"))
                })
                .collect();
            diffs.members(cn, &want, &member_ids(found[0]), |_| None);
        }
        diffs.finish(&target);
    }
}

//! Assignments: which users are provisioned because of the groups they are in
//! or because they are named, and which groups are pushed. One concept with
//! two spellings: the config's `assign:` section (groups and users, plus what
//! the source itself says is assigned: Entra's enterprise app assignments),
//! and the mapping's `member_of` scope clauses. Both name groups the same way
//! (display name case-insensitively, DN, or key), resolve them against one
//! source read the same way, and treat a name the read does not have as an
//! error: a renamed group would otherwise take every member out of scope,
//! which looks exactly like a mass departure.
//!
//! Owns: the `assign:` section as written and compiled, and both resolved
//! against a read ([`Memberships`]). Does not own: what happens to a user or
//! group out of scope (the planner), reading the app's assignments (the Entra
//! source).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::model::{
    FastHash, FastSet, GroupKey, GroupName, GroupsOf, SourceAssignments, SourceGroup, fold,
    normalize_dn,
};

/// How the members of nested groups count for an assigned group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nesting {
    /// A user in a group nested (at any depth) in an assigned group is
    /// assigned: LDAP's and Active Directory's rule for access.
    Flatten,
    /// Only users listed in the assigned group itself: Entra's rule for app
    /// assignment.
    Direct,
}

impl Nesting {
    fn describe(self) -> &'static str {
        match self {
            Nesting::Flatten => "nested groups flattened",
            Nesting::Direct => "direct members only",
        }
    }
}

/// Groups named as written (display name, DN or key), with the rule their
/// members follow.
#[derive(Clone, Debug)]
pub(crate) struct GroupRefs {
    pub names: Vec<Box<str>>,
    pub nesting: Nesting,
}

impl GroupRefs {
    /// The groups of the read each name refers to (by position in `groups`),
    /// and the names that refer to none.
    fn find(&self, groups: &[SourceGroup]) -> (Vec<usize>, Vec<Box<str>>) {
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for name in &self.names {
            let as_name = GroupName::new(&**name);
            // A DN has an `=`; only then are the groups' DNs normalised.
            let as_dn = name.contains('=').then(|| normalize_dn(name));
            let before = found.len();
            found.extend(groups.iter().enumerate().filter_map(|(i, g)| {
                (g.key.as_str() == &**name
                    || GroupName::new(g.name.as_str()) == as_name
                    || as_dn
                        .as_ref()
                        .is_some_and(|dn| g.dn.as_deref().map(normalize_dn).as_ref() == Some(dn)))
                .then_some(i)
            }));
            if found.len() == before {
                missing.push(name.clone());
            }
        }
        (found, missing)
    }

    fn members<'g>(&self, group: &'g SourceGroup) -> &'g [crate::model::SourceKey] {
        match self.nesting {
            Nesting::Flatten => &group.members,
            Nesting::Direct => group.direct(),
        }
    }
}

// ---------------------------------------------------------------------------
// The `assign:` section.

/// The `assign:` section, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignConfig {
    #[serde(default)]
    groups: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    users: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    nested: Option<Spanned<Nesting>>,
    #[serde(default)]
    app: Option<Spanned<String>>,
}

/// What the source decides about the `assign:` section.
#[derive(Clone, Copy, Debug)]
pub struct AssignRules {
    /// How nested groups count when `nested:` is not given: each system's
    /// own rule (LDAP and AD flatten; Entra counts direct members).
    pub default_nesting: Nesting,
    /// Whether the source can read an app's assignments (`assign.app`).
    pub reads_app: bool,
    /// The source's kind, for messages.
    pub source: &'static str,
}

impl AssignRules {
    /// LDAP's, Active Directory's and CSV's: nested groups flattened, no app
    /// to read assignments from.
    pub fn flattening(source: &'static str) -> AssignRules {
        AssignRules {
            default_nesting: Nesting::Flatten,
            reads_app: false,
            source,
        }
    }

    /// Entra ID's: an assigned group counts its direct members, and the
    /// enterprise app's assignments can be read.
    pub fn entra() -> AssignRules {
        AssignRules {
            default_nesting: Nesting::Direct,
            reads_app: true,
            source: "entra",
        }
    }
}

/// A mistake in the `assign:` section, at the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AssignConfigError {
    pub location: Location,
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// The `assign:` section, compiled: the groups whose members are provisioned,
/// the users named directly, and whether the source's own assignments count.
#[derive(Clone, Debug)]
pub struct Assign {
    /// The config file, to place a name the source does not have.
    pub(crate) file: Arc<str>,
    pub(crate) groups: GroupRefs,
    /// Keys or userNames, as written.
    pub(crate) users: Vec<Box<str>>,
    /// The Entra enterprise app (service principal object id) whose
    /// assignments the source reads.
    app: Option<String>,
}

fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl AssignConfig {
    /// Checks the section: something is named, nothing blank, `app` only for
    /// a source that reads one. `at` is where the section starts.
    pub fn compile(
        &self,
        file: &str,
        at: Location,
        rules: AssignRules,
    ) -> Result<Assign, AssignConfigError> {
        let refuse = |location: Location, message: String, hint: &str| AssignConfigError {
            location,
            message,
            hint: hint.to_string(),
        };
        let list = |name: &str, field: &Option<Spanned<Vec<Spanned<String>>>>| {
            let Some(field) = field else {
                return Ok(Vec::new());
            };
            if field.value.is_empty() {
                return Err(refuse(
                    field.referenced,
                    format!("`assign.{name}` is empty: nobody would be provisioned"),
                    "list what to provision, or remove the key",
                ));
            }
            field
                .value
                .iter()
                .map(|entry| match entry.value.trim() {
                    "" => Err(refuse(
                        entry.referenced,
                        format!("`assign.{name}` has an empty entry"),
                        "write a name, a DN or a key",
                    )),
                    text => Ok(Box::<str>::from(text)),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let groups = list("groups", &self.groups)?;
        let users = list("users", &self.users)?;
        let app = match &self.app {
            None => None,
            Some(app) if !rules.reads_app => {
                return Err(refuse(
                    app.referenced,
                    format!(
                        "`assign.app` reads an Entra ID enterprise app's assignments, but the source is {}",
                        rules.source
                    ),
                    "remove it, and name the groups to provision with `assign.groups`",
                ));
            }
            Some(app) if !is_guid(app.value.trim()) => {
                return Err(refuse(
                    app.referenced,
                    format!("`assign.app` {:?} is not an object id", app.value.trim()),
                    "give the enterprise app's object id (Entra admin center: Enterprise applications → the app → Properties → Object ID), not the app registration's client id",
                ));
            }
            Some(app) => Some(app.value.trim().to_ascii_lowercase()),
        };
        if let Some(nested) = &self.nested
            && groups.is_empty()
        {
            return Err(refuse(
                nested.referenced,
                "`assign.nested` says how members of nested groups in `assign.groups` count, but `assign.groups` lists none".into(),
                "remove it; the app's assignments always count direct members only, as Entra does",
            ));
        }
        if groups.is_empty() && users.is_empty() && app.is_none() {
            return Err(refuse(
                at,
                "`assign` names nothing to provision".into(),
                "list `groups:` (whose members are provisioned) or `users:`, or remove `assign` to provision everyone in scope",
            ));
        }
        Ok(Assign {
            file: Arc::from(file),
            groups: GroupRefs {
                names: groups,
                nesting: self
                    .nested
                    .as_ref()
                    .map_or(rules.default_nesting, |n| n.value),
            },
            users,
            app,
        })
    }
}

impl Assign {
    /// The enterprise app whose assignments the source reads (Entra ID).
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// One line for `validate`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
        if !self.groups.names.is_empty() {
            parts.push(format!(
                "{} ({})",
                plural(self.groups.names.len(), "group"),
                self.groups.nesting.describe()
            ));
        }
        if !self.users.is_empty() {
            parts.push(format!(
                "{} named directly",
                plural(self.users.len(), "user")
            ));
        }
        if let Some(app) = &self.app {
            parts.push(format!(
                "the assignments of enterprise app {app} (direct members of its groups)"
            ));
        }
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------
// Resolved against one read.

/// Why a group is assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `assign.groups`, with its nesting rule.
    Config,
    /// The source's own assignments (direct members, as Entra counts them).
    Source,
}

/// The `assign:` section resolved against one read.
#[derive(Debug)]
pub(crate) struct Assigned<'a> {
    groups: Vec<(&'a SourceGroup, Via)>,
    nesting: Nesting,
    /// Users in scope through an assigned group, or assigned by the source.
    users: FastSet<&'a str>,
    /// `assign.users` as written; found by key or by userName (folded).
    named: &'a [Box<str>],
    named_keys: HashMap<&'a str, Vec<usize>, FastHash>,
    named_user_names: HashMap<String, Vec<usize>, FastHash>,
    source: Option<&'a SourceAssignments>,
    /// Whether `assign` counts the source's own assignments (`assign.app`).
    reads_source: bool,
}

/// Group memberships as scope sees them, resolved against one read: one set
/// of user keys per `member_of` clause (in slot order), and the `assign:`
/// section. A source that resolves members only as its users arrive (LDAP)
/// names each user's groups with the user instead ([`Memberships::set_current`]).
#[derive(Debug, Default)]
pub(crate) struct Memberships<'a> {
    sets: Vec<FastSet<&'a str>>,
    assigned: Option<Assigned<'a>>,
    /// Per slot, the groups (positions in the read's groups) it names.
    slot_groups: Vec<Vec<usize>>,
    /// The groups whose members are assigned: every member, nested groups
    /// included (`all`), or the direct members only (`direct`).
    assigned_groups: GroupsOf<Vec<usize>>,
    /// The user being mapped, when the source named its groups.
    current: Option<CurrentUser>,
}

/// What the source said about the user being mapped: which `member_of`
/// slots it is in and whether an assigned group holds it.
#[derive(Debug, Default)]
struct CurrentUser {
    key: String,
    slots: Vec<bool>,
    through_groups: bool,
}

/// Names a read does not have, by where they were written.
#[derive(Debug, Default)]
pub(crate) struct Missing {
    /// In `member_of` clauses.
    pub member_of: Vec<Box<str>>,
    /// In `assign.groups`.
    pub assigned_groups: Vec<Box<str>>,
}

impl<'a> Memberships<'a> {
    /// Nothing resolved (for records that have no memberships).
    pub(crate) const fn none() -> Memberships<'a> {
        Memberships {
            sets: Vec::new(),
            assigned: None,
            slot_groups: Vec::new(),
            assigned_groups: GroupsOf {
                all: Vec::new(),
                direct: Vec::new(),
            },
            current: None,
        }
    }

    /// Resolves every `member_of` clause's groups (nested groups flattened, as
    /// documented for `member_of`) and the `assign:` section against a read.
    pub(crate) fn resolve<'c>(
        clauses: impl Iterator<Item = &'c [Box<str>]>,
        assign: Option<&'a Assign>,
        groups: &'a [SourceGroup],
        source: Option<&'a SourceAssignments>,
    ) -> Result<Memberships<'a>, Missing> {
        let mut missing = Missing::default();
        let (mut sets, mut slot_groups) = (Vec::new(), Vec::new());
        for names in clauses {
            let refs = GroupRefs {
                names: names.to_vec(),
                nesting: Nesting::Flatten,
            };
            let (mut found, unknown) = refs.find(groups);
            missing.member_of.extend(unknown);
            let mut set = FastSet::default();
            for &g in &found {
                set.extend(refs.members(&groups[g]).iter().map(|m| m.as_str()));
            }
            sets.push(set);
            found.sort_unstable();
            slot_groups.push(found);
        }
        let mut assigned_groups = GroupsOf::default();
        let assigned = assign.map(|a| {
            let (mut found, unknown) = a.groups.find(groups);
            missing.assigned_groups.extend(unknown);
            let found_groups = found.iter().map(|&g| &groups[g]).collect();
            found.sort_unstable();
            found.dedup();
            match a.groups.nesting {
                Nesting::Flatten => assigned_groups.all = found,
                Nesting::Direct => assigned_groups.direct = found,
            }
            Assigned::new(a, found_groups, groups, source)
        });
        if missing.member_of.is_empty() && missing.assigned_groups.is_empty() {
            Ok(Memberships {
                sets,
                assigned,
                slot_groups,
                assigned_groups,
                current: None,
            })
        } else {
            Err(missing)
        }
    }

    pub(crate) fn contains(&self, slot: usize, user: &str) -> bool {
        self.sets.get(slot).is_some_and(|s| s.contains(user))
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.key == user && c.slots.get(slot) == Some(&true))
    }

    /// Whether an assigned group holds the user with `key`, or the source
    /// assigned it (see [`Assigned::through_groups`]).
    pub(crate) fn through_groups(&self, key: &str) -> bool {
        self.assigned
            .as_ref()
            .is_some_and(|a| a.through_groups(key))
            || self
                .current
                .as_ref()
                .is_some_and(|c| c.key == key && c.through_groups)
    }

    /// The user with `key` is in `groups` (positions in the read's groups,
    /// each list sorted): until [`Memberships::clear_current`], scope and
    /// assignments see it as a member of them, as if the groups listed it.
    pub(crate) fn set_current(&mut self, key: &str, groups: GroupsOf<&[usize]>) {
        let any_in =
            |wanted: &[usize], have: &[usize]| wanted.iter().any(|g| have.binary_search(g).is_ok());
        let mut current = self.current.take().unwrap_or_default();
        current.key.clear();
        current.key.push_str(key);
        current.slots.clear();
        current
            .slots
            .extend(self.slot_groups.iter().map(|slot| any_in(slot, groups.all)));
        current.through_groups = any_in(&self.assigned_groups.all, groups.all)
            || any_in(&self.assigned_groups.direct, groups.direct);
        self.current = Some(current);
    }

    /// Ends [`Memberships::set_current`].
    pub(crate) fn clear_current(&mut self) {
        if let Some(current) = &mut self.current {
            current.key.clear();
        }
    }

    /// The `assign:` section resolved, when there is one.
    pub(crate) fn assigned(&self) -> Option<&Assigned<'a>> {
        self.assigned.as_ref()
    }
}

impl<'a> Assigned<'a> {
    fn new(
        assign: &'a Assign,
        found: Vec<&'a SourceGroup>,
        groups: &'a [SourceGroup],
        source: Option<&'a SourceAssignments>,
    ) -> Assigned<'a> {
        let reads_source = assign.app.is_some();
        let mut assigned: Vec<(&SourceGroup, Via)> =
            found.into_iter().map(|g| (g, Via::Config)).collect();
        let mut users = FastSet::default();
        if let Some(source) = source.filter(|_| reads_source) {
            let by_key: HashMap<&str, &SourceGroup, FastHash> =
                groups.iter().map(|g| (g.key.as_str(), g)).collect();
            // The source lists only groups of its read; one it named without a
            // name was left out of the read, and assigns nobody here.
            assigned.extend(
                source
                    .groups
                    .iter()
                    .filter_map(|k| by_key.get(k.as_str()))
                    .map(|g| (*g, Via::Source)),
            );
            users.extend(source.users.iter().map(|k| k.as_str()));
        }
        for (g, via) in &assigned {
            let members = match via {
                Via::Config => assign.groups.members(g),
                Via::Source => g.direct(),
            };
            users.extend(members.iter().map(|m| m.as_str()));
        }
        let mut named_keys: HashMap<&str, Vec<usize>, FastHash> = HashMap::default();
        let mut named_user_names: HashMap<String, Vec<usize>, FastHash> = HashMap::default();
        for (i, name) in assign.users.iter().enumerate() {
            named_keys.entry(&**name).or_default().push(i);
            named_user_names.entry(fold(name)).or_default().push(i);
        }
        Assigned {
            groups: assigned,
            nesting: assign.groups.nesting,
            users,
            named: &assign.users,
            named_keys,
            named_user_names,
            source,
            reads_source,
        }
    }

    /// Whether `assign.users` names anyone (then every user's userName is
    /// looked at).
    pub(crate) fn names_users(&self) -> bool {
        !self.named.is_empty()
    }

    /// The `assign.users` entries naming the user with `key` and `user_name`.
    pub(crate) fn named_entries(&self, key: &str, user_name: Option<&str>) -> Vec<usize> {
        let mut entries: Vec<usize> = self.named_keys.get(key).cloned().unwrap_or_default();
        if let Some(found) = user_name.and_then(|n| self.named_user_names.get(&fold(n))) {
            entries.extend(found);
        }
        entries.sort_unstable();
        entries.dedup();
        entries
    }

    /// Whether the user with `key` is assigned through a group or by the
    /// source (`assign.users` is [`Assigned::named_entries`]).
    pub(crate) fn through_groups(&self, key: &str) -> bool {
        self.users.contains(key)
    }

    /// The groups to push: those assigned, by key.
    pub(crate) fn group_keys(&self) -> FastSet<GroupKey> {
        self.groups.iter().map(|(g, _)| g.key.clone()).collect()
    }

    /// The `assign.users` entry at `i`, as written.
    pub(crate) fn named(&self, i: usize) -> &str {
        &self.named[i]
    }

    /// Every assignment that holds for a user, in words (for `explain`).
    pub(crate) fn reasons(&self, key: &str, user_name: Option<&str>) -> Vec<String> {
        let from = self.source.map_or("the app", |s| s.from.as_str());
        let mut reasons = Vec::new();
        if !self.named_entries(key, user_name).is_empty() {
            reasons.push("assigned directly (assign.users)".to_string());
        }
        if self.reads_source
            && self
                .source
                .is_some_and(|s| s.users.iter().any(|u| u.as_str() == key))
        {
            reasons.push(format!("assigned to {from} directly"));
        }
        for (g, via) in &self.groups {
            let (members, text) = match via {
                Via::Config => (
                    match self.nesting {
                        Nesting::Flatten => &g.members[..],
                        Nesting::Direct => g.direct(),
                    },
                    "assigned through group".to_string(),
                ),
                Via::Source => (g.direct(), format!("assigned to {from} through group")),
            };
            if members.iter().any(|m| m.as_str() == key) {
                let nested = !g.direct().iter().any(|m| m.as_str() == key);
                reasons.push(format!(
                    "{text} {}{}",
                    crate::report::quote(&g.name),
                    if nested {
                        " (through a nested group)"
                    } else {
                        ""
                    }
                ));
            }
        }
        reasons
    }

    /// Why a user no assignment holds for is out of scope.
    pub(crate) fn unassigned(&self) -> String {
        let from = self.source.map_or("the app", |s| s.from.as_str());
        let mut parts = Vec::new();
        if !self.named.is_empty() {
            parts.push("not named in assign.users".to_string());
        }
        if self.groups.iter().any(|(_, via)| *via == Via::Config) {
            parts.push(match self.nesting {
                Nesting::Flatten => {
                    "not a member of an assigned group, nested groups included".to_string()
                }
                Nesting::Direct => "not a direct member of an assigned group".to_string(),
            });
        }
        if self.reads_source {
            parts.push(format!(
                "not assigned to {from}, directly or as a direct member of an assigned group"
            ));
        }
        if parts.is_empty() {
            parts.push("nothing is assigned".to_string());
        }
        format!("not assigned: {}", parts.join("; "))
    }

    /// Why a group the read has is not pushed (the plan's reason when one
    /// idsync manages is deleted).
    pub(crate) fn unassigned_group(&self) -> &'static str {
        let in_config = self.groups.iter().any(|(_, via)| *via == Via::Config);
        match (self.reads_source, in_config) {
            (true, false) => "no longer assigned to the app",
            (true, true) => "no longer assigned: not in assign.groups, not assigned to the app",
            (false, _) => "no longer assigned: not in assign.groups",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, SourceKey};

    fn group(key: &str, name: &str, members: &[&str], direct: Option<&[&str]>) -> SourceGroup {
        let keys = |m: &[&str]| m.iter().map(|k| SourceKey::new(*k)).collect::<Vec<_>>();
        SourceGroup {
            key: GroupKey::new(key),
            name: name.into(),
            origin: Origin::new(format!("cn={name},ou=groups,dc=example,dc=com")),
            members: keys(members),
            direct_members: direct.map(keys),
            dn: Some(format!("cn={name},ou=groups,dc=example,dc=com")),
        }
    }

    fn assign(groups: &[&str], users: &[&str], nesting: Nesting, app: bool) -> Assign {
        Assign {
            file: Arc::from("config.yaml"),
            groups: GroupRefs {
                names: groups.iter().map(|g| Box::from(*g)).collect(),
                nesting,
            },
            users: users.iter().map(|u| Box::from(*u)).collect(),
            app: app.then(|| "5f6e0000-0000-0000-0000-000000000001".to_string()),
        }
    }

    /// `eng` holds u1 directly and `team` (u2, u3) nested; `ops` holds u4.
    fn directory() -> Vec<SourceGroup> {
        vec![
            group("g-eng", "Engineering", &["u1", "u2", "u3"], Some(&["u1"])),
            group("g-team", "team", &["u2", "u3"], None),
            group("g-ops", "Ops", &["u4"], None),
        ]
    }

    fn keys(r: &Assigned<'_>) -> Vec<String> {
        let mut keys: Vec<String> = r.group_keys().iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    fn resolve<'a>(
        a: &'a Assign,
        groups: &'a [SourceGroup],
        source: Option<&'a SourceAssignments>,
    ) -> Assigned<'a> {
        Memberships::resolve(std::iter::empty(), Some(a), groups, source)
            .expect("resolves")
            .assigned
            .expect("assigned")
    }

    #[test]
    fn groups_are_found_by_name_in_any_case_by_key_and_by_dn_in_any_spelling() {
        let groups = directory();
        for name in [
            "ENGINEERING",
            "g-eng",
            "CN=Engineering, OU=Groups,DC=example,DC=com",
        ] {
            let a = assign(&[name], &[], Nesting::Flatten, false);
            let r = resolve(&a, &groups, None);
            assert_eq!(keys(&r), ["g-eng"], "{name}");
        }
    }

    #[test]
    fn a_group_the_read_does_not_have_is_missing_never_an_empty_set() {
        let groups = directory();
        let a = assign(
            &["Engineering", "No Such Group"],
            &[],
            Nesting::Flatten,
            false,
        );
        let missing =
            Memberships::resolve(std::iter::empty(), Some(&a), &groups, None).unwrap_err();
        assert_eq!(missing.assigned_groups, vec![Box::from("No Such Group")]);
        assert!(missing.member_of.is_empty());
        // member_of clauses resolve through the same lookup.
        let clause = [Box::from("nope")];
        let missing =
            Memberships::resolve(std::iter::once(&clause[..]), None, &groups, None).unwrap_err();
        assert_eq!(missing.member_of, vec![Box::from("nope")]);
    }

    #[test]
    fn flatten_counts_nested_members_and_direct_only_the_groups_own() {
        let groups = directory();
        let flat = assign(&["Engineering"], &[], Nesting::Flatten, false);
        let r = resolve(&flat, &groups, None);
        for (user, assigned) in [("u1", true), ("u2", true), ("u3", true), ("u4", false)] {
            assert_eq!(r.through_groups(user), assigned, "flatten {user}");
        }
        assert_eq!(
            r.reasons("u2", None),
            vec!["assigned through group \"Engineering\" (through a nested group)"]
        );
        let direct = assign(&["Engineering"], &[], Nesting::Direct, false);
        let r = resolve(&direct, &groups, None);
        for (user, assigned) in [("u1", true), ("u2", false), ("u4", false)] {
            assert_eq!(r.through_groups(user), assigned, "direct {user}");
        }
        assert_eq!(
            r.reasons("u1", None),
            vec!["assigned through group \"Engineering\""]
        );
        assert_eq!(
            r.unassigned(),
            "not assigned: not a direct member of an assigned group"
        );
    }

    #[test]
    fn users_are_named_by_key_or_by_user_name_in_any_case() {
        let groups = directory();
        let a = assign(&[], &["u9", "Ann@Example.com"], Nesting::Flatten, false);
        let r = resolve(&a, &groups, None);
        assert!(r.names_users());
        assert_eq!(r.named_entries("u9", Some("x@example.com")), vec![0]);
        assert_eq!(r.named_entries("u7", Some("ann@example.COM")), vec![1]);
        assert!(r.named_entries("u7", Some("bob@example.com")).is_empty());
        assert!(!r.through_groups("u9"), "named users are not group members");
        assert_eq!(
            r.reasons("u9", None),
            vec!["assigned directly (assign.users)"]
        );
        assert!(r.group_keys().is_empty(), "no group is pushed");
    }

    #[test]
    fn the_sources_own_assignments_count_direct_members_and_users() {
        let groups = directory();
        let source = SourceAssignments {
            from: "the app".into(),
            users: vec![SourceKey::new("u4")],
            groups: vec![GroupKey::new("g-eng"), GroupKey::new("g-unnamed")],
        };
        let a = assign(&[], &[], Nesting::Flatten, true);
        let r = resolve(&a, &groups, Some(&source));
        for (user, assigned) in [("u1", true), ("u2", false), ("u4", true)] {
            assert_eq!(r.through_groups(user), assigned, "{user}");
        }
        assert_eq!(keys(&r), ["g-eng"]);
        assert_eq!(
            r.reasons("u1", None),
            vec!["assigned to the app through group \"Engineering\""]
        );
        assert_eq!(r.reasons("u4", None), vec!["assigned to the app directly"]);
        assert!(r.unassigned().contains("not assigned to the app"));
        // Without `assign.app` the source's list is not read.
        let a = assign(&["Ops"], &[], Nesting::Flatten, false);
        let r = resolve(&a, &groups, Some(&source));
        assert!(!r.through_groups("u1"));
    }

    fn section(text: &str) -> AssignConfig {
        serde_saphyr::from_str(text).expect("parses")
    }

    fn compile(text: &str, entra: bool) -> Result<Assign, AssignConfigError> {
        let rules = if entra {
            AssignRules::entra()
        } else {
            AssignRules::flattening("ldap")
        };
        section(text).compile("config.yaml", Location::UNKNOWN, rules)
    }

    #[test]
    fn the_section_compiles_with_each_sources_nesting_rule() {
        let a = compile("groups: [Eng, 'cn=x,dc=y']\nusers: [u1]\n", false).unwrap();
        assert_eq!(a.groups.nesting, Nesting::Flatten);
        assert_eq!(
            a.describe(),
            "2 groups (nested groups flattened), 1 user named directly"
        );
        let a = compile("groups: [Eng]\n", true).unwrap();
        assert_eq!(a.groups.nesting, Nesting::Direct);
        let a = compile("groups: [Eng]\nnested: flatten\n", true).unwrap();
        assert_eq!(a.groups.nesting, Nesting::Flatten);
        let a = compile("app: 5F6E0000-0000-0000-0000-00000000000A\n", true).unwrap();
        assert_eq!(a.app(), Some("5f6e0000-0000-0000-0000-00000000000a"));
    }

    #[test]
    fn mistakes_in_the_section_are_refused_with_what_to_do() {
        for (text, entra, says) in [
            ("groups: []\n", false, "`assign.groups` is empty"),
            ("users: ['  ']\n", false, "empty entry"),
            ("nested: direct\n", false, "lists none"),
            ("{}\n", false, "names nothing"),
            (
                "app: 5f6e0000-0000-0000-0000-000000000001\n",
                false,
                "but the source is ldap",
            ),
            ("app: Atlassian Cloud\n", true, "is not an object id"),
        ] {
            let e = compile(text, entra).unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
            assert!(!e.hint.is_empty());
        }
        assert!(
            serde_saphyr::from_str::<AssignConfig>("nested: deep\n").is_err(),
            "nested is flatten or direct"
        );
    }
}

//! The pure half of the Entra source: how delta pages change the mirror, and
//! the directory the mirror stands for. No I/O, so every merge rule is tested
//! on its own.
//!
//! Rules (Graph's documented behaviour):
//! - an object may appear several times in one round: upsert by id; a property
//!   present overwrites, an absent one keeps its value, `null` clears it;
//! - a user with `@removed` (`changed`: soft-deleted, restorable; `deleted`:
//!   gone) leaves the mirror; a restored user comes back as a plain object with
//!   the same id;
//! - a group's `members@delta` arrive in slices over several pages and add up;
//!   a member entry with `@removed` is a removed membership, never a deleted
//!   user; member entries carry only `@odata.type` and `id`, which say nothing
//!   about the member's properties;
//! - nested groups are flattened from the member edges (cycles tolerated);
//!   each group keeps its direct members too, for app assignments (an
//!   assigned group assigns its direct members only).
//!
//! App assignments (`appRoleAssignedTo`) have no delta: they are read whole
//! every cycle and resolved against the mirror ([`app_assignments`]).

use std::borrow::Cow;

use serde_json::Value;

use crate::model::{
    FastMap, GroupKey, Mirror, MirrorGroup, MirrorProps, Origin, PropChange, SourceAssignments,
    SourceDirectory, SourceGroup, SourceKey, SourceUser,
};
use crate::source::nested::flatten;

/// What one delta page did, for the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStats {
    pub upserted: usize,
    pub removed: usize,
    pub member_changes: usize,
}

fn id_of(object: &Value) -> Option<&str> {
    object
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

/// A property's values as the mapping sees them; `None` for null (cleared).
fn values(value: &Value) -> Option<Vec<Cow<'_, str>>> {
    fn one(v: &Value) -> Option<Cow<'_, str>> {
        match v {
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }
    match value {
        Value::Null => None,
        Value::Array(items) => Some(items.iter().filter_map(one).collect()),
        other => Some(one(other).into_iter().collect()),
    }
}

/// Applies one page of `/users/delta` to `users`.
pub fn apply_users(
    users: &mut std::collections::BTreeMap<String, MirrorProps>,
    page: &[Value],
) -> PageStats {
    let mut stats = PageStats::default();
    let mut changes: Vec<PropChange<'_>> = Vec::new();
    for object in page {
        let Some(id) = id_of(object) else { continue };
        if object.get("@removed").is_some() {
            if users.remove(id).is_some() {
                stats.removed += 1;
            }
            continue;
        }
        let props = match users.get_mut(id) {
            Some(props) => props,
            None => users.entry(id.to_string()).or_default(),
        };
        let Some(fields) = object.as_object() else {
            continue;
        };
        // `id` is the key; annotations (`@odata.type`, `manager@delta`) are not
        // properties.
        changes.clear();
        changes.extend(
            fields
                .iter()
                .filter(|(name, value)| *name != "id" && !name.contains('@') && !value.is_object())
                .map(|(name, value)| (name.as_str(), values(value))),
        );
        props.update(&mut changes);
        stats.upserted += 1;
    }
    stats
}

/// Applies one page of `/groups/delta` to `groups`.
pub fn apply_groups(
    groups: &mut std::collections::BTreeMap<String, MirrorGroup>,
    page: &[Value],
) -> PageStats {
    let mut stats = PageStats::default();
    for object in page {
        let Some(id) = id_of(object) else { continue };
        if object.get("@removed").is_some() {
            if groups.remove(id).is_some() {
                stats.removed += 1;
            }
            continue;
        }
        let group = groups.entry(id.to_string()).or_default();
        match object.get("displayName") {
            Some(Value::String(name)) => group.display_name = Some(name.clone()),
            Some(Value::Null) => group.display_name = None,
            _ => {}
        }
        if let Some(members) = object.get("members@delta").and_then(Value::as_array) {
            for member in members {
                let Some(member_id) = id_of(member) else {
                    continue;
                };
                if member.get("@removed").is_some() {
                    group.members.remove(member_id);
                } else {
                    group.members.insert(member_id);
                }
                stats.member_changes += 1;
            }
        }
        stats.upserted += 1;
    }
    stats
}

/// The directory the mirror stands for, read in two steps: its groups, then
/// its users one at a time. Every user (with `id` as an attribute besides
/// the selected properties) and every named group, members flattened to users
/// through nested groups. Member ids that are neither a user nor a group of
/// the mirror (devices, out-of-scope objects) are counted.
///
/// A user's record is made only as it is handed over: the engine maps it and
/// drops it before the next is made, so at 100,000 users the records of the
/// whole directory (a copy of every property) are never held at once.
pub struct MirrorRead<'m> {
    mirror: &'m Mirror,
    /// Each user's key, in the mirror's order: made once, shared by the
    /// user's record and its group memberships.
    keys: Vec<SourceKey>,
    unresolved: usize,
}

impl<'m> MirrorRead<'m> {
    pub fn new(mirror: &'m Mirror) -> Self {
        MirrorRead {
            mirror,
            keys: mirror.users.keys().map(SourceKey::new).collect(),
            unresolved: 0,
        }
    }

    /// The named groups, members sorted; the unnamed are left out (and
    /// counted in a warning).
    pub fn groups(&mut self) -> Vec<SourceGroup> {
        let mirror = self.mirror;
        let user_index: FastMap<&str, usize> = mirror
            .users
            .keys()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let group_ids: Vec<&String> = mirror.groups.keys().collect();
        let group_index: FastMap<&str, usize> = group_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut unresolved = 0;
        let mut direct_users = Vec::with_capacity(group_ids.len());
        let mut child_groups = Vec::with_capacity(group_ids.len());
        for group in mirror.groups.values() {
            let (mut found_users, mut found_groups) = (Vec::new(), Vec::new());
            for member in group.members.iter() {
                if let Some(&u) = user_index.get(member) {
                    found_users.push(u);
                } else if let Some(&g) = group_index.get(member) {
                    found_groups.push(g);
                } else {
                    unresolved += 1;
                }
            }
            direct_users.push(found_users);
            child_groups.push(found_groups);
        }
        self.unresolved = unresolved;
        let flat = flatten(&direct_users, &child_groups, |from, to| {
            tracing::debug!(
                group = %group_ids[from],
                member = %group_ids[to],
                "nested groups form a cycle; each member is counted once"
            );
        });
        let keys = &self.keys;
        let mut unnamed = 0;
        let groups: Vec<SourceGroup> = mirror
            .groups
            .iter()
            .zip(flat)
            .enumerate()
            .filter_map(|(i, ((id, group), members))| {
                let Some(name) = group.display_name.clone().filter(|n| !n.trim().is_empty()) else {
                    unnamed += 1;
                    return None;
                };
                let keys = |found: &[usize]| found.iter().map(|&u| keys[u].clone()).collect();
                // Users are indexed in key order, so the keys come sorted.
                let direct_members = (!child_groups[i].is_empty()).then(|| {
                    let mut direct = direct_users[i].clone();
                    direct.sort_unstable();
                    direct.dedup();
                    keys(&direct)
                });
                Some(SourceGroup {
                    key: GroupKey::new(id),
                    name,
                    origin: Origin::new(format!("Entra group {id}")),
                    members: keys(&members),
                    direct_members,
                    dn: None,
                })
            })
            .collect();
        if unnamed > 0 {
            tracing::warn!(
                count = unnamed,
                "Entra groups without a displayName were left out"
            );
        }
        // Members that are neither users nor groups (devices, other objects).
        tracing::info!(
            groups = groups.len(),
            unresolved_members = unresolved,
            "Entra groups read from the mirror"
        );
        groups
    }

    /// Hands every user to `each`, in id order, keeping none.
    pub fn users(&self, mut each: impl FnMut(SourceUser)) {
        // The origin's text is built in one buffer and copied once, into its
        // shared string.
        let mut origin = String::new();
        for ((id, props), key) in self.mirror.users.iter().zip(&self.keys) {
            origin.clear();
            origin.push_str("Entra user ");
            origin.push_str(id);
            each(SourceUser {
                key: key.clone(),
                origin: Origin::new(origin.as_str()),
                attrs: props.attrs(id),
            });
        }
    }

    /// Member ids of the groups read that are neither a user nor a group of
    /// the mirror.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }
}

/// The whole directory the mirror stands for (see [`MirrorRead`]), every
/// record at once.
pub fn directory(mirror: &Mirror) -> SourceDirectory {
    let mut read = MirrorRead::new(mirror);
    let groups = read.groups();
    let mut users = Vec::with_capacity(mirror.users.len());
    read.users(|user| users.push(user));
    SourceDirectory {
        users,
        groups,
        unresolved_members: read.unresolved(),
        assignments: None,
    }
}

/// What the app's assignments held besides the users and groups they assign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignmentStats {
    /// Assignments to other service principals (apps, not people): ignored.
    pub service_principals: usize,
    /// Users and groups the mirror does not have (not replicated to delta
    /// yet, or deleted): their ids and names, left out this cycle.
    pub unknown: Vec<String>,
}

/// The users and groups the `appRoleAssignment`s in `items` assign, as far as
/// the mirror has them: each once (a principal with several app roles comes
/// several times), sorted.
pub fn app_assignments(items: &[Value], mirror: &Mirror) -> (SourceAssignments, AssignmentStats) {
    let mut assigned = SourceAssignments {
        from: "the app".into(),
        ..SourceAssignments::default()
    };
    let mut stats = AssignmentStats::default();
    for item in items {
        let Some(id) = item["principalId"].as_str().filter(|id| !id.is_empty()) else {
            continue;
        };
        let known = match item["principalType"].as_str() {
            Some(t) if t.eq_ignore_ascii_case("user") => mirror.users.contains_key(id).then(|| {
                assigned.users.push(SourceKey::new(id));
            }),
            Some(t) if t.eq_ignore_ascii_case("group") => {
                mirror.groups.contains_key(id).then(|| {
                    assigned.groups.push(GroupKey::new(id));
                })
            }
            _ => {
                stats.service_principals += 1;
                continue;
            }
        };
        if known.is_none() {
            let name = item["principalDisplayName"].as_str().unwrap_or("");
            stats.unknown.push(format!("{id} ({name:?})"));
        }
    }
    assigned.users.sort_unstable();
    assigned.users.dedup();
    assigned.groups.sort_unstable();
    assigned.groups.dedup();
    (assigned, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourceAttrs;
    use proptest::prelude::*;
    use serde_json::json;

    /// The mirror's users as they were held before the compact form: a map of
    /// property names to values per user, merged by the same rules.
    type OldUsers =
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>>;

    fn old_apply_users(users: &mut OldUsers, page: &[Value]) {
        for object in page {
            let Some(id) = id_of(object) else { continue };
            if object.get("@removed").is_some() {
                users.remove(id);
                continue;
            }
            let props = users.entry(id.to_string()).or_default();
            for (name, value) in object.as_object().into_iter().flatten() {
                if name == "id" || name.contains('@') || value.is_object() {
                    continue;
                }
                match values(value) {
                    Some(v) => {
                        let v = v.into_iter().map(|s| s.into_owned()).collect();
                        props.insert(name.clone(), v);
                    }
                    None => {
                        props.remove(name);
                    }
                }
            }
        }
    }

    fn delta_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            ".{0,12}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            prop::collection::vec(
                prop_oneof![".{0,8}".prop_map(Value::from), Just(json!({}))],
                0..3
            )
            .prop_map(Value::from),
            Just(json!({"nested": "object"})),
        ]
    }

    fn delta_object() -> impl Strategy<Value = Value> {
        let name = prop::sample::select(vec![
            "mail",
            "givenName",
            "ID",
            "jobTitle",
            "@odata.type",
            "manager@delta",
        ]);
        (
            prop::sample::select(vec!["u1", "u2", "u3", ""]),
            prop::collection::vec((name, delta_value()), 0..5),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(id, fields, removed)| {
                let mut object = serde_json::Map::new();
                object.insert("id".into(), id.into());
                for (name, value) in fields {
                    object.insert(name.to_string(), value);
                }
                if removed {
                    object.insert("@removed".into(), json!({"reason": "deleted"}));
                }
                Value::Object(object)
            })
    }

    proptest! {
        /// Any run of delta pages gives the same directory records from the
        /// compact mirror as from the map of strings it replaced.
        #[test]
        fn the_compact_mirror_gives_the_directory_the_old_map_gave(
            pages in prop::collection::vec(prop::collection::vec(delta_object(), 0..6), 0..5)
        ) {
            let mut m = Mirror::default();
            let mut old = OldUsers::new();
            for page in &pages {
                apply_users(&mut m.users, page);
                old_apply_users(&mut old, page);
            }
            let dir = directory(&m);
            prop_assert_eq!(dir.users.len(), old.len());
            for (user, (id, props)) in dir.users.iter().zip(&old) {
                let mut attrs = SourceAttrs::new();
                attrs.push("id", [id]);
                for (name, values) in props {
                    if !name.eq_ignore_ascii_case("id") {
                        attrs.push(name, values);
                    }
                }
                prop_assert_eq!(user.key.as_str(), id.as_str());
                prop_assert_eq!(&user.attrs, &attrs);
            }
        }
    }

    fn users_of(pages: &[Value]) -> Mirror {
        let mut m = Mirror::default();
        for page in pages {
            apply_users(&mut m.users, page.as_array().unwrap());
        }
        m
    }

    #[test]
    fn a_repeated_object_is_merged_present_overwrites_absent_keeps_null_clears() {
        let m = users_of(&[
            json!([{"id": "u1", "displayName": "Ann", "jobTitle": "Dev", "mail": "a@x"}]),
            json!([{"id": "u1", "jobTitle": "Lead", "mail": null}]),
        ]);
        let u = &m.users["u1"];
        assert_eq!(u.get("displayName").collect::<Vec<_>>(), ["Ann"]);
        assert_eq!(u.get("jobTitle").collect::<Vec<_>>(), ["Lead"]);
        assert!(!u.contains_key("mail"));
        assert!(!u.contains_key("id"));
    }

    #[test]
    fn booleans_and_lists_become_values_and_annotations_are_not_properties() {
        let m = users_of(&[json!([{
            "id": "u1", "accountEnabled": false, "@odata.type": "#microsoft.graph.user",
            "proxyAddresses": ["SMTP:a@x", "smtp:b@x"], "manager@delta": [{"id": "m"}]
        }])]);
        let u = &m.users["u1"];
        assert_eq!(u.get("accountEnabled").collect::<Vec<_>>(), ["false"]);
        assert_eq!(u.get("proxyAddresses").count(), 2);
        assert_eq!(u.len(), 2, "{u:?}");
    }

    #[test]
    fn a_removed_user_leaves_for_either_reason_and_a_restore_comes_back_with_the_same_id() {
        let mut m = users_of(&[json!([
            {"id": "u1", "mail": "a@x"}, {"id": "u2", "mail": "b@x"}, {"id": "u3", "mail": "c@x"}
        ])]);
        apply_users(
            &mut m.users,
            json!([{"id": "u1", "@removed": {"reason": "changed"}},
                   {"id": "u2", "@removed": {"reason": "deleted"}}])
            .as_array()
            .unwrap(),
        );
        assert_eq!(m.users.keys().collect::<Vec<_>>(), vec!["u3"]);
        apply_users(
            &mut m.users,
            json!([{"id": "u1", "mail": "a@x"}]).as_array().unwrap(),
        );
        assert!(m.users.contains_key("u1"));
    }

    #[test]
    fn member_slices_add_up_and_a_removed_member_is_not_a_deleted_user() {
        let mut m = users_of(&[json!([{"id": "u1"}, {"id": "u2"}, {"id": "u3"}])]);
        for page in [
            json!([{"id": "g", "displayName": "Eng", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                {"@odata.type": "#microsoft.graph.user", "id": "u2"}]}]),
            json!([{"id": "g", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u3"}]}]),
        ] {
            apply_groups(&mut m.groups, page.as_array().unwrap());
        }
        assert_eq!(m.groups["g"].members.len(), 3);
        assert_eq!(m.groups["g"].display_name.as_deref(), Some("Eng"));
        apply_groups(
            &mut m.groups,
            json!([{"id": "g", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}}]}])
            .as_array()
            .unwrap(),
        );
        assert_eq!(m.groups["g"].members.len(), 2);
        assert!(
            m.users.contains_key("u2"),
            "a removed membership is not a deleted user"
        );
        assert!(
            m.users["u1"].is_empty(),
            "member entries never touch user properties"
        );
    }

    #[test]
    fn the_directory_flattens_nested_groups_through_a_cycle_and_counts_strangers() {
        let mut m = users_of(&[json!([{"id": "u1", "mail": "a@x"}, {"id": "u2"}])]);
        apply_groups(
            &mut m.groups,
            json!([
                {"id": "ga", "displayName": "A", "members@delta": [{"id": "u1"}, {"id": "gb"}]},
                {"id": "gb", "displayName": "B", "members@delta": [{"id": "u2"}, {"id": "ga"}, {"id": "device-1"}]},
                {"id": "gc", "members@delta": [{"id": "u1"}]}
            ])
            .as_array()
            .unwrap(),
        );
        let dir = directory(&m);
        assert_eq!(dir.users.len(), 2);
        assert_eq!(dir.users[0].attrs.first("id"), Some("u1"));
        assert_eq!(dir.users[0].attrs.first("mail"), Some("a@x"));
        assert_eq!(dir.groups.len(), 2, "the unnamed group is left out");
        for g in &dir.groups {
            let members: Vec<&str> = g.members.iter().map(|k| k.as_str()).collect();
            assert_eq!(members, vec!["u1", "u2"], "{}", g.name);
        }
        assert_eq!(dir.unresolved_members, 1);
    }

    #[test]
    fn app_assignments_keep_users_and_groups_the_mirror_has_once_each() {
        let mut m = users_of(&[json!([{"id": "u1"}, {"id": "u2"}])]);
        apply_groups(
            &mut m.groups,
            json!([{"id": "g1", "displayName": "Eng"}])
                .as_array()
                .unwrap(),
        );
        let items = json!([
            {"principalType": "User", "principalId": "u2", "principalDisplayName": "Bo"},
            {"principalType": "User", "principalId": "u2", "appRoleId": "another role"},
            {"principalType": "Group", "principalId": "g1", "principalDisplayName": "Eng"},
            {"principalType": "ServicePrincipal", "principalId": "sp1"},
            {"principalType": "User", "principalId": "u-new", "principalDisplayName": "New"},
            {"principalType": "Group", "principalId": "g-gone"}
        ]);
        let (assigned, stats) = app_assignments(items.as_array().unwrap(), &m);
        assert_eq!(assigned.users, vec![SourceKey::new("u2")]);
        assert_eq!(assigned.groups, vec![GroupKey::new("g1")]);
        assert_eq!(stats.service_principals, 1);
        assert_eq!(stats.unknown, vec!["u-new (\"New\")", "g-gone (\"\")"]);
    }

    #[test]
    fn groups_with_nested_groups_keep_their_direct_members() {
        let mut m = users_of(&[json!([{"id": "u1"}, {"id": "u2"}, {"id": "u3"}])]);
        apply_groups(
            &mut m.groups,
            json!([
                {"id": "ga", "displayName": "A", "members@delta": [{"id": "u3"}, {"id": "gb"}]},
                {"id": "gb", "displayName": "B", "members@delta": [{"id": "u1"}, {"id": "u2"}]}
            ])
            .as_array()
            .unwrap(),
        );
        let dir = directory(&m);
        let keys = |k: &[SourceKey]| k.iter().map(|k| k.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(keys(&dir.groups[0].members), ["u1", "u2", "u3"]);
        assert_eq!(keys(dir.groups[0].direct()), ["u3"]);
        assert_eq!(
            dir.groups[1].direct_members, None,
            "no nested group: all direct"
        );
    }
}

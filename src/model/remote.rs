//! What a target holds, as a `--full` read (or a lookup) sees it: users reduced
//! to the attributes idsync manages, groups with their members as the target
//! stores them, and how those members resolve to users.

use std::collections::HashMap;

use super::{GroupName, ScimId, UserAttr, UserAttrs, UserName};

/// A user as the target holds it, reduced to the attributes idsync manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUser {
    pub id: ScimId,
    pub attrs: UserAttrs,
    pub active: bool,
}

impl RemoteUser {
    /// The user's `userName`, when the target returned one.
    pub fn user_name(&self) -> Option<UserName> {
        self.attrs.get(UserAttr::UserName).map(UserName::new)
    }
}

/// One entry of a group's `members`, as the target stores it. RFC 7643 makes
/// `value` the member's id; some servers store the user's `userName` there,
/// and `$ref` (when given) names the member's resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMember {
    /// `value`, exactly as stored.
    pub value: String,
    /// The last path segment of `$ref`, when there is one.
    pub ref_id: Option<ScimId>,
}

impl RemoteMember {
    /// A member stored by id, as RFC 7643 has it.
    pub fn id(id: impl Into<String>) -> RemoteMember {
        RemoteMember {
            value: id.into(),
            ref_id: None,
        }
    }

    /// Whether this entry stands for `member`: its id in `value` or `$ref`,
    /// else its `userName` in `value` (case-insensitively).
    pub fn is(&self, member: &MemberRef) -> bool {
        self.value == member.id.as_str()
            || self.ref_id.as_ref() == Some(&member.id)
            || member
                .user_name
                .as_ref()
                .is_some_and(|n| *n == UserName::new(self.value.as_str()))
    }
}

/// A member idsync asks a group to gain or lose: the user's id and, when the
/// user is known, its `userName` (what some servers store instead of the id).
/// A dangling member (an id no user has any more) has no name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberRef {
    pub id: ScimId,
    pub user_name: Option<UserName>,
}

/// A group as the target holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteGroup {
    pub id: ScimId,
    pub display_name: GroupName,
    pub external_id: Option<String>,
    pub members: Vec<RemoteMember>,
}

/// Everything a `--full` read found in the target.
#[derive(Clone, Debug, Default)]
pub struct TargetSnapshot {
    pub users: Vec<RemoteUser>,
    pub groups: Vec<RemoteGroup>,
    /// Group member values that matched no listed user and were looked up by
    /// id, answered 404: dangling, removable. An unresolved value not in here
    /// (never looked up, or the lookup failed) is left alone.
    pub gone_members: std::collections::HashSet<String>,
    /// When the target says it made what its listings held.
    pub created: CreatedAt,
}

/// `meta.created` as the target wrote it, by id, for the users and groups a
/// listing held that carried one (not every target reports it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreatedAt {
    pub users: HashMap<ScimId, String>,
    pub groups: HashMap<ScimId, String>,
}

/// How a group's stored members resolve to the users a read found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedMembers {
    /// The users' ids, each once, in stored order.
    pub users: Vec<ScimId>,
    /// Stored values that name no user the read found (kept as stored, so a
    /// removal can name them exactly).
    pub unresolved: Vec<String>,
}

/// Resolves group members against users: by id, then by the last segment of
/// `$ref`, then by `userName` (case-insensitively).
pub struct MemberResolver<'a> {
    by_id: HashMap<&'a str, &'a ScimId>,
    by_name: HashMap<UserName, &'a ScimId>,
}

impl<'a> MemberResolver<'a> {
    pub fn new(users: &'a [RemoteUser]) -> MemberResolver<'a> {
        let by_id = users.iter().map(|u| (u.id.as_str(), &u.id)).collect();
        let mut by_name = HashMap::with_capacity(users.len());
        for u in users {
            if let Some(name) = u.user_name() {
                by_name.entry(name).or_insert(&u.id);
            }
        }
        MemberResolver { by_id, by_name }
    }

    /// The user one stored member stands for, if any.
    pub fn user_of(&self, member: &RemoteMember) -> Option<&'a ScimId> {
        self.by_id
            .get(member.value.as_str())
            .or_else(|| {
                member
                    .ref_id
                    .as_ref()
                    .and_then(|r| self.by_id.get(r.as_str()))
            })
            .or_else(|| self.by_name.get(&UserName::new(member.value.as_str())))
            .copied()
    }

    pub fn resolve(&self, group: &RemoteGroup) -> ResolvedMembers {
        let mut out = ResolvedMembers::default();
        let mut seen = std::collections::HashSet::new();
        for m in &group.members {
            match self.user_of(m) {
                Some(id) => {
                    if seen.insert(id.as_str()) {
                        out.users.push(id.clone());
                    }
                }
                None => out.unresolved.push(m.value.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> RemoteUser {
        RemoteUser {
            id: ScimId::new(id),
            attrs: [(UserAttr::UserName, name.to_owned())].into(),
            active: true,
        }
    }

    #[test]
    fn members_resolve_by_id_then_ref_then_user_name() {
        let users = vec![
            user("u1", "ann@x.com"),
            user("u2", "bob@x.com"),
            user("u3", "cy@x.com"),
        ];
        let group = RemoteGroup {
            id: ScimId::new("g"),
            display_name: "G".into(),
            external_id: None,
            members: vec![
                RemoteMember::id("u1"),
                RemoteMember {
                    value: "something else".into(),
                    ref_id: Some(ScimId::new("u2")),
                },
                RemoteMember::id("CY@x.com"),
                RemoteMember::id("gone-id"),
                RemoteMember::id("u1"),
            ],
        };
        let resolved = MemberResolver::new(&users).resolve(&group);
        let ids: Vec<&str> = resolved.users.iter().map(ScimId::as_str).collect();
        assert_eq!(ids, ["u1", "u2", "u3"]);
        assert_eq!(resolved.unresolved, ["gone-id"]);
    }

    #[test]
    fn a_member_entry_is_a_ref_by_id_ref_or_user_name() {
        let ann = MemberRef {
            id: ScimId::new("u1"),
            user_name: Some(UserName::new("ann@x.com")),
        };
        assert!(RemoteMember::id("u1").is(&ann));
        assert!(RemoteMember::id("Ann@X.com").is(&ann));
        let by_ref = RemoteMember {
            value: "x".into(),
            ref_id: Some(ScimId::new("u1")),
        };
        assert!(by_ref.is(&ann));
        assert!(!RemoteMember::id("u2").is(&ann));
        let dangling = MemberRef {
            id: ScimId::new("u9"),
            user_name: None,
        };
        assert!(!RemoteMember::id("ann@x.com").is(&dangling));
    }
}

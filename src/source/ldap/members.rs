//! Group members resolved as the users arrive. The groups are read first;
//! of their members only 16-byte digests are kept (of the lower-cased DN, or
//! of the folded `memberUid`), each with the groups that list it. Each user,
//! as the search hands it over, looks its own DN and uids up there (and, on
//! Active Directory, its primary group's SID), and so learns its groups,
//! nested ones included; the groups collect its key. No user entry is kept:
//! the read's memory no longer grows with the users' records.
//!
//! Nested groups are flattened as before (cycles tolerated). A member that is
//! neither a user nor a group of the read is counted as unresolved; a member
//! DN that is a group's DN is that group nested (an entry both filters match
//! counts as a group).

use std::collections::HashMap;

use super::digest::{DigestSet, digest};
use super::dn;
use super::entry::Sid;
use super::groups::{Member, RawGroup};
use crate::model::{GroupsOf, Origin, SourceGroup, SourceKey, fold};
use crate::source::nested::flatten;

/// Digests each listed by groups: digest `i` is listed by
/// `groups[starts[i]..starts[i + 1]]`.
#[derive(Debug, Default)]
struct Listed {
    digests: DigestSet,
    starts: Vec<u32>,
    groups: Vec<u32>,
    /// Whether a user of the read had the digest.
    matched: Vec<bool>,
}

impl Listed {
    /// From (digest, group) pairs, any order, repeats allowed.
    fn new(mut pairs: Vec<(u128, u32)>) -> Listed {
        pairs.sort_unstable();
        pairs.dedup();
        let mut listed = Listed::default();
        for (digest, group) in pairs {
            let (_, new) = listed.digests.insert(digest, listed.starts.len());
            if new {
                listed.starts.push(listed.groups.len() as u32);
            }
            listed.groups.push(group);
        }
        listed.starts.push(listed.groups.len() as u32);
        listed.matched = vec![false; listed.digests.len()];
        listed
    }

    /// The groups listing `digest` (marked as matched).
    fn find(&mut self, digest: u128) -> &[u32] {
        match self.digests.get(digest) {
            Some(i) => {
                self.matched[i] = true;
                &self.groups[self.starts[i] as usize..self.starts[i + 1] as usize]
            }
            None => &[],
        }
    }

    /// Listings (digest, group) no user matched.
    fn unmatched(&self) -> usize {
        (0..self.matched.len())
            .filter(|&i| !self.matched[i])
            .map(|i| (self.starts[i + 1] - self.starts[i]) as usize)
            .sum()
    }
}

/// The groups of one read, waiting for their users.
pub(super) struct Members {
    dns: Listed,
    uids: Listed,
    /// Active Directory: a group's SID → the groups (one) with it.
    sids: HashMap<Sid, Vec<u32>>,
    /// Per group, itself and every group it is nested in (sorted).
    ancestors: Vec<Vec<u32>>,
    /// Per group, whether it has nested groups.
    has_children: Vec<bool>,
    /// Per group, its users (nested ones too) and, for a group with nested
    /// groups, its direct users.
    all: Vec<Vec<SourceKey>>,
    direct: Vec<Vec<SourceKey>>,
    /// The groups of the user being handed over.
    of_user: GroupsOf<Vec<usize>>,
}

impl Members {
    /// The groups (sorted by key, members still empty) and what resolves
    /// their members: `raw` as the group search read them.
    pub(super) fn new(mut raw: Vec<RawGroup>) -> (Members, Vec<SourceGroup>) {
        raw.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut group_dns = DigestSet::default();
        for (i, group) in raw.iter().enumerate() {
            group_dns.insert(digest(&dn::normalize(&group.dn)), i);
        }
        let (mut dn_pairs, mut uid_pairs) = (Vec::new(), Vec::new());
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
        let mut sids: HashMap<Sid, Vec<u32>> = HashMap::new();
        for (i, group) in raw.iter_mut().enumerate() {
            for member in std::mem::take(&mut group.members) {
                match member {
                    Member::Dn(dn) => {
                        let d = digest(&dn);
                        match group_dns.get(d) {
                            Some(child) => children[i].push(child),
                            None => dn_pairs.push((d, i as u32)),
                        }
                    }
                    Member::Uid(uid) => uid_pairs.push((digest(&fold(&uid)), i as u32)),
                }
            }
            children[i].sort_unstable();
            children[i].dedup();
            if let Some(sid) = group.sid.take() {
                sids.entry(sid).or_default().push(i as u32);
            }
        }
        let ancestors = ancestors(&raw, &children);
        let n = raw.len();
        let members = Members {
            dns: Listed::new(dn_pairs),
            uids: Listed::new(uid_pairs),
            sids,
            ancestors,
            has_children: children.iter().map(|c| !c.is_empty()).collect(),
            all: vec![Vec::new(); n],
            direct: vec![Vec::new(); n],
            of_user: GroupsOf::default(),
        };
        let groups = raw
            .into_iter()
            .map(|g| SourceGroup {
                key: g.key,
                name: g.name,
                origin: Origin::new(g.dn.as_str()),
                members: Vec::new(),
                direct_members: None,
                dn: Some(g.dn),
            })
            .collect();
        (members, groups)
    }

    /// The groups the user with `key`, `dn` and `uids` is in (and, Active
    /// Directory, whose primary group is `primary`), each list sorted; the
    /// groups note its key.
    pub(super) fn user<'u>(
        &mut self,
        key: &SourceKey,
        dn: &str,
        uids: impl Iterator<Item = &'u str>,
        primary: Option<&Sid>,
    ) -> GroupsOf<&[usize]> {
        let direct = &mut self.of_user.direct;
        direct.clear();
        if self.dns.digests.len() > 0 {
            direct.extend(
                self.dns
                    .find(digest(&dn::normalize(dn)))
                    .iter()
                    .map(|&g| g as usize),
            );
        }
        if self.uids.digests.len() > 0 {
            for uid in uids {
                direct.extend(
                    self.uids
                        .find(digest(&fold(uid)))
                        .iter()
                        .map(|&g| g as usize),
                );
            }
        }
        if let Some(groups) = primary.and_then(|sid| self.sids.get(sid)) {
            direct.extend(groups.iter().map(|&g| g as usize));
        }
        direct.sort_unstable();
        direct.dedup();
        let all = &mut self.of_user.all;
        all.clear();
        for &g in direct.iter() {
            all.extend(self.ancestors[g].iter().map(|&a| a as usize));
            // Direct members are kept apart only where they differ.
            if self.has_children[g] {
                self.direct[g].push(key.clone());
            }
        }
        all.sort_unstable();
        all.dedup();
        for &g in all.iter() {
            self.all[g].push(key.clone());
        }
        GroupsOf {
            all: &self.of_user.all,
            direct: &self.of_user.direct,
        }
    }

    /// Fills in the members of `groups` (as [`Members::new`] gave them,
    /// sorted and without duplicates) and returns how many listed members
    /// were neither a user nor a group of the read.
    pub(super) fn complete(self, groups: &mut [SourceGroup]) -> usize {
        let unresolved = self.dns.unmatched() + self.uids.unmatched();
        let sorted = |mut keys: Vec<SourceKey>| {
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let lists = self.all.into_iter().zip(self.direct).zip(self.has_children);
        for (group, ((all, direct), nested)) in groups.iter_mut().zip(lists) {
            group.members = sorted(all);
            // Kept apart only where they differ: `assign` with `nested: direct`.
            group.direct_members = nested.then(|| sorted(direct));
        }
        if unresolved > 0 {
            tracing::debug!(
                unresolved,
                "group members that are not users of this read (nor groups)"
            );
        }
        unresolved
    }
}

/// Per group, itself and every group it is nested in, at any depth (sorted);
/// a cycle is logged once per edge and otherwise harmless.
fn ancestors(raw: &[RawGroup], children: &[Vec<usize>]) -> Vec<Vec<u32>> {
    let selves: Vec<Vec<usize>> = (0..raw.len()).map(|g| vec![g]).collect();
    let mut cycles = std::collections::HashSet::new();
    let below = flatten(&selves, children, |from, to| {
        if cycles.insert((from, to)) {
            tracing::debug!(
                group = %raw[from].dn,
                member = %raw[to].dn,
                "nested groups form a cycle; each member is counted once"
            );
        }
    });
    let mut above: Vec<Vec<u32>> = vec![Vec::new(); raw.len()];
    for (root, groups) in below.iter().enumerate() {
        for &g in groups {
            above[g].push(root as u32);
        }
    }
    above
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GroupKey;

    fn raw(key: &str, dn: &str, members: &[Member]) -> RawGroup {
        RawGroup {
            key: GroupKey::new(key),
            name: key.to_string(),
            dn: dn.to_string(),
            members: members.to_vec(),
            sid: None,
        }
    }

    #[test]
    fn members_resolve_by_dn_uid_and_nesting_and_the_rest_are_counted() {
        let dn_member = |d: &str| Member::Dn(dn::normalize(d));
        let groups = vec![
            raw(
                "g-outer",
                "cn=outer,ou=groups,dc=x",
                &[
                    dn_member("UID=ann, ou=People,dc=x"),
                    dn_member("cn=inner,ou=groups,dc=x"),
                    dn_member("uid=ghost,ou=elsewhere,dc=x"),
                    dn_member("uid=ann,ou=people,dc=x"),
                ],
            ),
            raw(
                "g-inner",
                "cn=inner,ou=groups,dc=x",
                &[Member::Uid("BOB".into()), Member::Uid("nobody".into())],
            ),
        ];
        let (mut members, mut groups) = Members::new(groups);
        // Sorted by key: inner (0), outer (1).
        assert_eq!(groups[0].key.as_str(), "g-inner");
        let ann = SourceKey::new("k-ann");
        let of = members.user(&ann, "uid=ann,ou=people,dc=x", ["ann"].into_iter(), None);
        assert_eq!((of.direct, of.all), (&[1][..], &[1][..]));
        let bob = SourceKey::new("k-bob");
        let of = members.user(&bob, "uid=bob,ou=people,dc=x", ["bob"].into_iter(), None);
        assert_eq!((of.direct, of.all), (&[0][..], &[0, 1][..]));
        let carl = SourceKey::new("k-carl");
        let of = members.user(&carl, "uid=carl,dc=x", std::iter::empty(), None);
        assert!(of.all.is_empty() && of.direct.is_empty());
        let unresolved = members.complete(&mut groups);
        // ghost and nobody.
        assert_eq!(unresolved, 2);
        assert_eq!(groups[0].members, vec![bob.clone()]);
        assert_eq!(groups[0].direct_members, None);
        assert_eq!(groups[1].members, vec![ann.clone(), bob]);
        assert_eq!(groups[1].direct_members, Some(vec![ann]));
    }

    #[test]
    fn nested_groups_in_a_cycle_reach_every_member_once() {
        let dn_member = |d: &str| Member::Dn(dn::normalize(d));
        let groups = vec![
            raw(
                "a",
                "cn=a,dc=x",
                &[dn_member("cn=b,dc=x"), dn_member("uid=u,dc=x")],
            ),
            raw("b", "cn=b,dc=x", &[dn_member("cn=a,dc=x")]),
        ];
        let (mut members, mut groups) = Members::new(groups);
        let u = SourceKey::new("u");
        let of = members.user(&u, "UID=u,DC=x", std::iter::empty(), None);
        assert_eq!((of.direct, of.all), (&[0][..], &[0, 1][..]));
        assert_eq!(members.complete(&mut groups), 0);
        assert_eq!(groups[0].members, vec![u.clone()]);
        assert_eq!(groups[1].members, vec![u]);
        assert_eq!(groups[1].direct_members, Some(vec![]));
    }
}

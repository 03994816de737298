//! Groups: read from `groupOfNames`/AD `group` (`member` DNs),
//! `groupOfUniqueNames` (`uniqueMember` DNs, optional `#'…'B` suffix) and
//! `posixGroup` (`memberUid` = a user's `uid`), with their members as the
//! directory names them; the read's users resolve them later (the parent's
//! `members`). Active Directory's ranged `member;range=0-1499` values are
//! fetched in full.

use std::collections::HashMap;

use ldap3::Ldap;

use super::entry::{Entry, OBJECT_SID, Sid, key_of};
use super::error::{BadEntries, EntryProblem, LdapError};
use super::{Flavour, LdapSettings, connect, dn};
use crate::model::GroupKey;
use crate::source::problems::Problems;

/// Bounds the follow-up requests for one AD ranged attribute: at AD's 1500
/// values per range this is 15 million members, far beyond any real group.
const MAX_RANGE_REQUESTS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberAttr {
    Member,
    UniqueMember,
    MemberUid,
}

impl MemberAttr {
    const ALL: [MemberAttr; 3] = [
        MemberAttr::Member,
        MemberAttr::UniqueMember,
        MemberAttr::MemberUid,
    ];

    fn name(self) -> &'static str {
        match self {
            MemberAttr::Member => "member",
            MemberAttr::UniqueMember => "uniqueMember",
            MemberAttr::MemberUid => "memberUid",
        }
    }

    /// `member`, `Member;range=0-1499`, … → the member attribute and, when the
    /// server sent only a slice of the values, where the slice ends (`None`
    /// for `*`, the last slice).
    fn parse(description: &str) -> Option<(MemberAttr, Option<Option<u64>>)> {
        let mut parts = description.split(';');
        let base = parts.next()?;
        let attr = MemberAttr::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(base))?;
        let mut range = None;
        for option in parts {
            let Some(bounds) = option
                .get(..6)
                .filter(|p| p.eq_ignore_ascii_case("range="))
                .map(|_| &option[6..])
            else {
                continue;
            };
            let end = bounds.split_once('-').map(|(_, end)| end)?;
            range = Some(if end == "*" {
                None
            } else {
                Some(end.parse().ok()?)
            });
        }
        Some((attr, range))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Member {
    /// A normalised DN.
    Dn(String),
    /// A posixGroup `memberUid`.
    Uid(String),
}

#[derive(Debug)]
pub(super) struct RawGroup {
    pub(super) key: GroupKey,
    pub(super) name: String,
    pub(super) dn: String,
    pub(super) members: Vec<Member>,
    /// Active Directory: the group's SID, which users name in `primaryGroupID`.
    pub(super) sid: Option<Sid>,
}

impl RawGroup {
    fn add_members(&mut self, attr: MemberAttr, values: Vec<String>) {
        self.members.extend(values.into_iter().map(|v| match attr {
            MemberAttr::Member => Member::Dn(dn::normalize(&v)),
            MemberAttr::UniqueMember => Member::Dn(dn::normalize(dn::strip_unique_member_uid(&v))),
            MemberAttr::MemberUid => Member::Uid(v),
        }));
    }
}

/// A group whose member values came in slices: the next slice starts at `next`.
struct PendingRange {
    group: usize,
    attr: MemberAttr,
    next: u64,
}

/// Reads one attribute slice of one entry: the server, or recorded answers in
/// tests.
trait RangeReader {
    /// The entry's attributes as returned for `wanted` (e.g.
    /// `member;range=1500-*`); none when the entry is gone.
    async fn read(
        &mut self,
        dn: &str,
        wanted: String,
    ) -> Result<Vec<(String, Vec<String>)>, LdapError>;
}

struct Server<'a> {
    ldap: &'a mut Ldap,
    settings: &'a LdapSettings,
}

impl RangeReader for Server<'_> {
    async fn read(
        &mut self,
        dn: &str,
        wanted: String,
    ) -> Result<Vec<(String, Vec<String>)>, LdapError> {
        let entry = connect::read_entry(self.ldap, self.settings, dn, vec![wanted]).await?;
        Ok(entry.map(|e| e.attrs).unwrap_or_default())
    }
}

/// Collects group entries as the search streams them in.
pub(super) struct GroupReader {
    key_attribute: String,
    /// Read `objectSid` (Active Directory), for primary group members.
    sids: bool,
    name_attribute: String,
    groups: Vec<RawGroup>,
    keys: HashMap<GroupKey, usize>,
    pending: Vec<PendingRange>,
    problems: Problems<EntryProblem>,
    url: String,
    base: String,
    filter: String,
}

impl GroupReader {
    pub(super) fn new(settings: &LdapSettings, flavour: Flavour, filter: &str) -> Self {
        GroupReader {
            key_attribute: settings.group_key_attribute.clone(),
            sids: flavour == Flavour::ActiveDirectory,
            name_attribute: settings.group_name_attribute.clone(),
            groups: Vec::new(),
            keys: HashMap::new(),
            pending: Vec::new(),
            problems: Problems::default(),
            url: settings.url.clone(),
            base: settings.group_base_dn.clone(),
            filter: filter.to_string(),
        }
    }

    /// What the group search asks for.
    pub(super) fn attributes(&self) -> Vec<String> {
        let mut wanted = vec![self.key_attribute.clone()];
        let sid = self.sids.then_some(OBJECT_SID);
        for name in [self.name_attribute.as_str()]
            .into_iter()
            .chain(MemberAttr::ALL.map(MemberAttr::name))
            .chain(sid)
        {
            if !wanted.iter().any(|w| w.eq_ignore_ascii_case(name)) {
                wanted.push(name.to_string());
            }
        }
        wanted
    }

    pub(super) fn add(&mut self, entry: Entry) {
        let key = match key_of(&entry, &self.key_attribute) {
            Ok(key) => GroupKey::new(key),
            Err(problem) => {
                self.problems.push(EntryProblem::Key {
                    dn: entry.dn,
                    attribute: self.key_attribute.clone(),
                    problem,
                });
                return;
            }
        };
        let name = entry
            .attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&self.name_attribute))
            .and_then(|(_, v)| v.iter().find(|v| !v.trim().is_empty()));
        let Some(name) = name.cloned() else {
            self.problems.push(EntryProblem::NoName {
                dn: entry.dn,
                attribute: self.name_attribute.clone(),
            });
            return;
        };
        let index = self.groups.len();
        if let Some(&other) = self.keys.get(&key) {
            self.problems.push(EntryProblem::DuplicateKey {
                dn: entry.dn,
                attribute: self.key_attribute.clone(),
                key: key.as_str().to_string(),
                other: self.groups[other].dn.clone(),
            });
            return;
        }
        self.keys.insert(key.clone(), index);
        let sid = if self.sids { Sid::of(&entry) } else { None };
        let Entry { dn, attrs, .. } = entry;
        let mut group = RawGroup {
            key,
            name,
            dn,
            members: Vec::new(),
            sid,
        };
        for (description, values) in attrs {
            let Some((attr, range)) = MemberAttr::parse(&description) else {
                continue;
            };
            if let Some(Some(end)) = range {
                self.pending.push(PendingRange {
                    group: index,
                    attr,
                    next: end + 1,
                });
            }
            group.add_members(attr, values);
        }
        self.groups.push(group);
    }

    /// Fetches the rest of every member list the server sent in slices (Active
    /// Directory sends at most MaxValRange, 1500 by default, values at a time).
    pub(super) async fn complete_ranges(
        &mut self,
        ldap: &mut Ldap,
        settings: &LdapSettings,
    ) -> Result<(), LdapError> {
        self.complete_ranges_from(&mut Server { ldap, settings }, &settings.url)
            .await
    }

    async fn complete_ranges_from(
        &mut self,
        server: &mut impl RangeReader,
        url: &str,
    ) -> Result<(), LdapError> {
        for pending in std::mem::take(&mut self.pending) {
            let mut next = pending.next;
            let mut complete = false;
            for _ in 0..MAX_RANGE_REQUESTS {
                let group = &mut self.groups[pending.group];
                let wanted = format!("{};range={next}-*", pending.attr.name());
                let attrs = server.read(&group.dn, wanted).await?;
                let mut end = None;
                for (description, values) in attrs {
                    if let Some((attr, Some(range))) = MemberAttr::parse(&description)
                        && attr == pending.attr
                    {
                        group.add_members(attr, values);
                        end = Some(range);
                    }
                }
                match end {
                    Some(None) => {
                        complete = true;
                        break;
                    }
                    Some(Some(last)) if last >= next => next = last + 1,
                    _ => break,
                }
            }
            if !complete {
                return Err(LdapError::PartialMemberRange {
                    url: url.to_string(),
                    attribute: pending.attr.name().to_string(),
                    group_dn: self.groups[pending.group].dn.clone(),
                    stopped_at: next,
                });
            }
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<Vec<RawGroup>, LdapError> {
        if self.problems.is_empty() {
            return Ok(self.groups);
        }
        let (problems, more) = self.problems.into_parts();
        Err(LdapError::BadGroups(Box::new(BadEntries {
            url: self.url,
            base: self.base,
            filter: self.filter,
            key_attribute: self.key_attribute,
            name_attribute: Some(self.name_attribute),
            problems,
            more,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::nested::flatten;

    #[test]
    fn nested_groups_flatten_through_a_cycle() {
        // 0 ⊃ 1 ⊃ 2 ⊃ 0 (a cycle), 2 ⊃ 3; 3 has no children; 4 contains itself.
        let direct = vec![vec![10], vec![11, 10], vec![12], vec![13], vec![14]];
        let children = vec![vec![1], vec![2], vec![0, 3], vec![], vec![4]];
        let mut cycles = Vec::new();
        let flat = flatten(&direct, &children, |a, b| cycles.push((a, b)));
        assert_eq!(flat[0], vec![10, 11, 12, 13]);
        assert_eq!(flat[1], vec![10, 11, 12, 13]);
        assert_eq!(flat[2], vec![10, 11, 12, 13]);
        assert_eq!(flat[3], vec![13]);
        assert_eq!(flat[4], vec![14]);
        assert!(cycles.contains(&(2, 0)), "{cycles:?}");
        assert!(cycles.contains(&(4, 4)), "{cycles:?}");
    }

    #[test]
    fn a_diamond_is_not_a_cycle() {
        // 0 ⊃ 1, 0 ⊃ 2, 1 ⊃ 3, 2 ⊃ 3.
        let direct = vec![vec![], vec![1], vec![2], vec![3]];
        let children = vec![vec![1, 2], vec![3], vec![3], vec![]];
        let mut cycles = 0;
        let flat = flatten(&direct, &children, |_, _| cycles += 1);
        assert_eq!(flat[0], vec![1, 2, 3]);
        assert_eq!(cycles, 0);
    }

    #[test]
    fn member_attribute_descriptions_and_ranges_parse() {
        assert_eq!(
            MemberAttr::parse("member"),
            Some((MemberAttr::Member, None))
        );
        assert_eq!(
            MemberAttr::parse("uniquemember"),
            Some((MemberAttr::UniqueMember, None))
        );
        assert_eq!(
            MemberAttr::parse("member;range=0-1499"),
            Some((MemberAttr::Member, Some(Some(1499))))
        );
        assert_eq!(
            MemberAttr::parse("member;Range=1500-*"),
            Some((MemberAttr::Member, Some(None)))
        );
        assert_eq!(MemberAttr::parse("cn"), None);
    }

    /// Answers shaped as Windows AD gives them (range retrieval, MS-ADTS
    /// 3.1.1.3.1.3.3, MaxValRange 1500; Samba sends every value at once): the
    /// search gives `member;range=0-1499`, each follow-up the next slice, the
    /// last one ends in `*`.
    struct Recorded {
        answers: HashMap<String, Vec<(String, Vec<String>)>>,
        asked: Vec<String>,
    }

    impl RangeReader for Recorded {
        async fn read(
            &mut self,
            dn: &str,
            wanted: String,
        ) -> Result<Vec<(String, Vec<String>)>, LdapError> {
            let asked = format!("{dn} {wanted}");
            self.asked.push(asked.clone());
            Ok(self.answers.get(&asked).cloned().unwrap_or_default())
        }
    }

    fn dns(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("CN=u{i},OU=Staff,DC=corp")).collect()
    }

    fn reader() -> GroupReader {
        GroupReader {
            key_attribute: "objectGUID".into(),
            sids: false,
            name_attribute: "cn".into(),
            groups: Vec::new(),
            keys: HashMap::new(),
            pending: Vec::new(),
            problems: Problems::default(),
            url: "ldaps://dc01:636".into(),
            base: "DC=corp".into(),
            filter: "(objectClass=group)".into(),
        }
    }

    fn group_entry(dn: &str, guid: u8, attrs: Vec<(&str, Vec<String>)>) -> Entry {
        let mut text: Vec<(String, Vec<String>)> =
            attrs.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        text.push((
            "cn".into(),
            vec![dn[3..dn.find(',').unwrap_or(dn.len())].to_string()],
        ));
        Entry {
            dn: dn.into(),
            attrs: text,
            bin_attrs: vec![("objectGUID".to_string(), vec![vec![guid; 16]])],
        }
    }

    #[tokio::test]
    async fn ranged_member_values_are_fetched_slice_by_slice_as_windows_ad_sends_them() {
        let big = "CN=All Staff,OU=Groups,DC=corp";
        let small = "CN=Small,OU=Groups,DC=corp";
        let mut groups = reader();
        groups.add(group_entry(
            big,
            1,
            vec![("member;range=0-1499", dns(0..1500))],
        ));
        groups.add(group_entry(small, 2, vec![("member", dns(0..3))]));
        let mut server = Recorded {
            answers: HashMap::from([
                (
                    format!("{big} member;range=1500-*"),
                    vec![("member;range=1500-2999".into(), dns(1500..3000))],
                ),
                (
                    format!("{big} member;range=3000-*"),
                    vec![("member;range=3000-*".into(), dns(3000..3200))],
                ),
            ]),
            asked: Vec::new(),
        };
        groups
            .complete_ranges_from(&mut server, "ldaps://dc01:636")
            .await
            .unwrap();
        assert_eq!(
            server.asked,
            [
                format!("{big} member;range=1500-*"),
                format!("{big} member;range=3000-*")
            ],
            "only the sliced group is asked again, once per slice"
        );
        let raw = groups.finish().unwrap();
        assert_eq!(raw[0].members.len(), 3200);
        assert_eq!(
            raw[0].members[3199],
            Member::Dn(dn::normalize("CN=u3199,OU=Staff,DC=corp"))
        );
        assert_eq!(raw[1].members.len(), 3);
    }

    #[tokio::test]
    async fn a_range_that_stops_short_fails_the_read_naming_the_group() {
        let big = "CN=All Staff,OU=Groups,DC=corp";
        let mut groups = reader();
        groups.add(group_entry(
            big,
            1,
            vec![("member;range=0-1499", dns(0..1500))],
        ));
        // The group was deleted between the search and the follow-up.
        let mut server = Recorded {
            answers: HashMap::new(),
            asked: Vec::new(),
        };
        let error = groups
            .complete_ranges_from(&mut server, "ldaps://dc01:636")
            .await
            .unwrap_err();
        match error {
            LdapError::PartialMemberRange {
                group_dn,
                stopped_at,
                ..
            } => {
                assert_eq!(group_dn, big);
                assert_eq!(stopped_at, 1500);
            }
            other => panic!("unexpected {other}"),
        }
    }
}

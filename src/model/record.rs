//! What a source adapter reads: records with their origin (for error
//! messages) and their attributes as the source spells them.

use std::fmt;

pub use arcstr::ArcStr;

use super::attrs::{push_len, read_len};
use super::{GroupKey, SourceKey};

/// Where a source record came from, for error messages: `users.csv line 12`, a DN.
/// Cheap to clone: the file name is shared, the line kept as a number. In 16
/// bytes (a thin pointer to the counted name, and the line): every desired
/// user holds one, so at a million users each 8 bytes is 8 MB of the peak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    name: ArcStr,
    /// 1-based; 0 when the origin is not a line (a DN).
    line: u32,
}

const _: () = assert!(std::mem::size_of::<Origin>() == 16);

impl Origin {
    pub fn new(value: impl Into<ArcStr>) -> Self {
        Self {
            name: value.into(),
            line: 0,
        }
    }

    /// A line of a file; `file` is shared by every record of that file.
    pub fn line(file: ArcStr, line: u64) -> Self {
        Self {
            name: file,
            line: u32::try_from(line).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.name),
            line => write!(f, "{} line {line}", self.name),
        }
    }
}

/// A source record's attributes: names as the source spells them (looked up
/// case-insensitively, as LDAP does), each with zero or more values.
///
/// Held in one string, one entry per value: the name's length, the name, the
/// value's length, the value (lengths framed as in [`UserAttrs`]), in the order
/// pushed. At a million users this is a few hundred megabytes less than a
/// vector of named string values per record.
///
/// [`UserAttrs`]: super::UserAttrs
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SourceAttrs(String);

impl SourceAttrs {
    pub fn new() -> Self {
        Self(String::new())
    }

    /// Room for about `names` single values of a typical size.
    pub fn with_capacity(names: usize) -> Self {
        Self(String::with_capacity(names * 24))
    }

    /// Adds values under `name`, after any values already there (the name is
    /// copied in: nothing is kept of the caller's strings).
    pub fn push(&mut self, name: &str, values: impl IntoIterator<Item = impl AsRef<str>>) {
        for value in values {
            self.append(name, value.as_ref());
        }
    }

    /// Empties the record, keeping its buffer (to build the next one in).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn append(&mut self, name: &str, value: &str) {
        push_len(&mut self.0, name.len());
        self.0.push_str(name);
        push_len(&mut self.0, value.len());
        self.0.push_str(value);
    }

    /// A record from text already framed as records are.
    pub(super) fn from_framed(text: String) -> SourceAttrs {
        SourceAttrs(text)
    }

    /// A copy without spare capacity: for a record built in a reused buffer.
    pub fn compacted(&self) -> SourceAttrs {
        let mut text = String::with_capacity(self.0.len());
        text.push_str(&self.0);
        SourceAttrs(text)
    }

    /// All values of `name` (case-insensitive), in order; none when absent.
    pub fn get<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        // The mapping looks up every attribute it reads this way: names are
        // compared as bytes, and only a match's value is sliced out.
        let text = self.0.as_str();
        let bytes = text.as_bytes();
        let mut at = 0;
        std::iter::from_fn(move || {
            while at < bytes.len() {
                let (name_len, skip) = read_len(&bytes[at..]);
                let name_at = at + skip;
                let (value_len, skip) = read_len(&bytes[name_at + name_len..]);
                let value_at = name_at + name_len + skip;
                at = value_at + value_len;
                if bytes[name_at..name_at + name_len].eq_ignore_ascii_case(name.as_bytes()) {
                    return Some(&text[value_at..at]);
                }
            }
            None
        })
    }

    /// The first non-empty value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name).find(|v| !v.is_empty())
    }

    /// Every value with its name, in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        framed_pairs(&self.0)
    }
}

/// The name and value pairs of text framed as records are.
pub(super) fn framed_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let name;
        (name, rest) = take_framed(rest);
        let value;
        (value, rest) = take_framed(rest);
        Some((name, value))
    })
}

/// Splits one length-framed string off the front of `rest`.
pub(super) fn take_framed(rest: &str) -> (&str, &str) {
    let (len, at) = read_len(rest.as_bytes());
    (&rest[at..at + len], &rest[at + len..])
}

impl fmt::Debug for SourceAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A user as the source adapter read it, before mapping.
#[derive(Clone, Debug)]
pub struct SourceUser {
    pub key: SourceKey,
    pub origin: Origin,
    pub attrs: SourceAttrs,
}

/// Groups by position in a read's groups: those a user (or an assignment)
/// reaches through nested groups, and those it is a direct member of. A
/// source that resolves members only as its users arrive (LDAP) names each
/// user's groups this way.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupsOf<T> {
    pub all: T,
    pub direct: T,
}

/// A group as the source adapter read it: members are source keys of users
/// (already flattened when the source nests groups).
#[derive(Clone, Debug)]
pub struct SourceGroup {
    pub key: GroupKey,
    pub name: String,
    pub origin: Origin,
    /// Sorted, without duplicates: every user of the group, through nested
    /// groups too.
    pub members: Vec<SourceKey>,
    /// The users who are members themselves, not through a nested group
    /// (sorted, without duplicates), when the group has nested groups; `None`
    /// when every member is direct. Assignments that count direct members
    /// only (Entra's) read these.
    pub direct_members: Option<Vec<SourceKey>>,
    /// The group's distinguished name, for a source that has them (LDAP).
    pub dn: Option<String>,
}

impl SourceGroup {
    /// A group without nested groups and without a DN.
    pub fn new(key: GroupKey, name: String, origin: Origin, members: Vec<SourceKey>) -> Self {
        SourceGroup {
            key,
            name,
            origin,
            members,
            direct_members: None,
            dn: None,
        }
    }

    /// The users who are members themselves, not through a nested group.
    pub fn direct(&self) -> &[SourceKey] {
        self.direct_members.as_deref().unwrap_or(&self.members)
    }
}

/// What the source itself says is provisioned (Entra ID: the users and groups
/// assigned to the enterprise app), by key. An assigned group assigns its
/// direct members only, as Entra does. Only objects of this read are listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceAssignments {
    /// Where the assignments come from, for messages: `the app 5f6e…`.
    pub from: String,
    pub users: Vec<SourceKey>,
    pub groups: Vec<GroupKey>,
}

/// Everything one complete source read produced.
#[derive(Clone, Debug, Default)]
pub struct SourceDirectory {
    pub users: Vec<SourceUser>,
    pub groups: Vec<SourceGroup>,
    /// Members of groups that are not users of this read (outside the base DN,
    /// filtered out, unknown keys): counted, never provisioned.
    pub unresolved_members: usize,
    /// The source's own assignments, when it has them and the config asks
    /// for them (`assign.app`).
    pub assignments: Option<SourceAssignments>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_attrs_keep_every_value_under_its_name_in_order() {
        let mut attrs = SourceAttrs::new();
        attrs.push("mail", ["", "a@x.com"]);
        attrs.push("cn", ["Ann \u{1F600} Lee"]);
        attrs.push("Mail", ["b@x.com"]);
        attrs.push("title", ["x".repeat(5000)]);
        assert_eq!(
            attrs.get("MAIL").collect::<Vec<_>>(),
            ["", "a@x.com", "b@x.com"]
        );
        assert_eq!(attrs.first("mail"), Some("a@x.com"));
        assert_eq!(attrs.first("cn"), Some("Ann \u{1F600} Lee"));
        assert_eq!(attrs.get("title").next().map(str::len), Some(5000));
        assert_eq!(attrs.get("sn").count(), 0);
        assert_eq!(attrs.iter().count(), 5);
        assert_eq!(attrs.compacted(), attrs);
        attrs.clear();
        assert_eq!(attrs, SourceAttrs::new());
    }
}

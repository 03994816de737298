//! What a source adapter reads: records with their origin (for error
//! messages) and their attributes as the source spells them.

use std::fmt;
use std::sync::Arc;

use super::{GroupKey, SourceKey};

/// Where a source record came from, for error messages: `users.csv line 12`, a DN.
/// Cheap to clone: the file name is shared, the line kept as a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    name: Arc<str>,
    /// 1-based; 0 when the origin is not a line (a DN).
    line: u32,
}

impl Origin {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self {
            name: value.into(),
            line: 0,
        }
    }

    /// A line of a file; `file` is shared by every record of that file.
    pub fn line(file: Arc<str>, line: u64) -> Self {
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceAttrs(Vec<(Arc<str>, Values)>);

/// An attribute's values. Almost every attribute has exactly one value (every
/// CSV cell does), so that case is kept inline, without a vector of its own:
/// at a million users this is hundreds of megabytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn new(mut values: Vec<String>) -> Values {
        if values.len() == 1 {
            Values::One(values.pop().unwrap_or_default())
        } else {
            Values::Many(values)
        }
    }

    fn as_slice(&self) -> &[String] {
        match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Many(v) => v,
        }
    }

    fn extend(&mut self, more: Vec<String>) {
        let mut all = std::mem::replace(self, Values::Many(Vec::new())).into_vec();
        all.extend(more);
        *self = Values::new(all);
    }

    fn into_vec(self) -> Vec<String> {
        match self {
            Values::One(v) => vec![v],
            Values::Many(v) => v,
        }
    }
}

impl SourceAttrs {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Adds values under `name`, merging with values already there.
    pub fn push(&mut self, name: Arc<str>, values: Vec<String>) {
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some((_, existing)) => existing.extend(values),
            None => self.0.push((name, Values::new(values))),
        }
    }

    /// Adds the single value of a name the record does not have yet (the caller
    /// knows names are unique, as in a CSV header checked once).
    pub fn push_unique(&mut self, name: Arc<str>, value: String) {
        self.0.push((name, Values::One(value)));
    }

    /// All values of `name` (case-insensitive); empty when absent.
    pub fn get(&self, name: &str) -> &[String] {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// The first non-empty value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name)
            .iter()
            .map(String::as_str)
            .find(|v| !v.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.0.iter().map(|(n, v)| (&**n, v.as_slice()))
    }
}

/// A user as the source adapter read it, before mapping.
#[derive(Clone, Debug)]
pub struct SourceUser {
    pub key: SourceKey,
    pub origin: Origin,
    pub attrs: SourceAttrs,
}

/// A group as the source adapter read it: members are source keys of users
/// (already flattened when the source nests groups).
#[derive(Clone, Debug)]
pub struct SourceGroup {
    pub key: GroupKey,
    pub name: String,
    pub origin: Origin,
    pub members: Vec<SourceKey>,
}

/// Everything one complete source read produced.
#[derive(Clone, Debug, Default)]
pub struct SourceDirectory {
    pub users: Vec<SourceUser>,
    pub groups: Vec<SourceGroup>,
    /// Members of groups that are not users of this read (outside the base DN,
    /// filtered out, unknown keys): counted, never provisioned.
    pub unresolved_members: usize,
}

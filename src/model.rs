//! The vocabulary of the pipeline: typed identifiers, source records, the desired
//! snapshot that a mapping produces, and the SCIM user attributes idsync manages.
//!
//! Nothing here does I/O; every other module speaks in these types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Box<str>);

        impl $name {
            pub fn new(value: impl Into<Box<str>>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The stable key of a user in the source (CSV key column, entryUUID, objectGUID,
    /// Entra object id). It never changes when the user is renamed.
    SourceKey
);
string_id!(
    /// The stable key of a group in the source (its name, a `group_id` column, a DN's
    /// entryUUID, an Entra object id).
    GroupKey
);
string_id!(
    /// The `id` the SCIM target assigned to a resource.
    ScimId
);

/// A SCIM `userName`. Targets compare user names case-insensitively, so do we.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(Box<str>);

impl UserName {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Self(value.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The form used for comparisons and indexes.
    pub fn folded(&self) -> String {
        fold(&self.0)
    }
}

/// Case-folds a user name or group name for comparison.
pub fn fold(value: &str) -> String {
    if value.is_ascii() {
        value.to_ascii_lowercase()
    } else {
        value.to_lowercase()
    }
}

impl PartialEq for UserName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0) || self.folded() == other.folded()
    }
}
impl Eq for UserName {}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

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

/// A fast, randomly seeded hasher for the large in-memory maps of a cycle.
pub type FastHash = foldhash::fast::RandomState;
/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;
/// A `HashSet` with [`FastHash`].
pub type FastSet<K> = std::collections::HashSet<K, FastHash>;

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

/// A SCIM user attribute idsync can manage. `active` is not one of them: it is
/// decided by the source's `active` flag and the removal policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UserAttr {
    #[serde(rename = "userName")]
    UserName,
    #[serde(rename = "externalId")]
    ExternalId,
    #[serde(rename = "emails")]
    Email,
    #[serde(rename = "name.givenName")]
    GivenName,
    #[serde(rename = "name.familyName")]
    FamilyName,
    #[serde(rename = "name.middleName")]
    MiddleName,
    #[serde(rename = "name.formatted")]
    FormattedName,
    #[serde(rename = "name.honorificPrefix")]
    HonorificPrefix,
    #[serde(rename = "name.honorificSuffix")]
    HonorificSuffix,
    #[serde(rename = "displayName")]
    DisplayName,
    #[serde(rename = "nickName")]
    NickName,
    #[serde(rename = "title")]
    Title,
    #[serde(rename = "userType")]
    UserType,
    #[serde(rename = "preferredLanguage")]
    PreferredLanguage,
    #[serde(rename = "locale")]
    Locale,
    #[serde(rename = "timezone")]
    Timezone,
    #[serde(rename = "phoneNumbers")]
    PhoneNumber,
    #[serde(rename = "department")]
    Department,
    #[serde(rename = "organization")]
    Organization,
    #[serde(rename = "division")]
    Division,
    #[serde(rename = "costCenter")]
    CostCenter,
    #[serde(rename = "employeeNumber")]
    EmployeeNumber,
}

/// The SCIM enterprise user extension's schema URN.
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

impl UserAttr {
    pub const ALL: [UserAttr; 22] = [
        UserAttr::UserName,
        UserAttr::ExternalId,
        UserAttr::Email,
        UserAttr::GivenName,
        UserAttr::FamilyName,
        UserAttr::MiddleName,
        UserAttr::FormattedName,
        UserAttr::HonorificPrefix,
        UserAttr::HonorificSuffix,
        UserAttr::DisplayName,
        UserAttr::NickName,
        UserAttr::Title,
        UserAttr::UserType,
        UserAttr::PreferredLanguage,
        UserAttr::Locale,
        UserAttr::Timezone,
        UserAttr::PhoneNumber,
        UserAttr::Department,
        UserAttr::Organization,
        UserAttr::Division,
        UserAttr::CostCenter,
        UserAttr::EmployeeNumber,
    ];

    /// The name used in mapping files, plans and state: the SCIM attribute path.
    pub fn name(self) -> &'static str {
        match self {
            UserAttr::UserName => "userName",
            UserAttr::ExternalId => "externalId",
            UserAttr::Email => "emails",
            UserAttr::GivenName => "name.givenName",
            UserAttr::FamilyName => "name.familyName",
            UserAttr::MiddleName => "name.middleName",
            UserAttr::FormattedName => "name.formatted",
            UserAttr::HonorificPrefix => "name.honorificPrefix",
            UserAttr::HonorificSuffix => "name.honorificSuffix",
            UserAttr::DisplayName => "displayName",
            UserAttr::NickName => "nickName",
            UserAttr::Title => "title",
            UserAttr::UserType => "userType",
            UserAttr::PreferredLanguage => "preferredLanguage",
            UserAttr::Locale => "locale",
            UserAttr::Timezone => "timezone",
            UserAttr::PhoneNumber => "phoneNumbers",
            UserAttr::Department => "department",
            UserAttr::Organization => "organization",
            UserAttr::Division => "division",
            UserAttr::CostCenter => "costCenter",
            UserAttr::EmployeeNumber => "employeeNumber",
        }
    }

    /// Parses a mapping-file attribute name. `email` is accepted for `emails`.
    pub fn parse(name: &str) -> Option<UserAttr> {
        match name {
            "email" => Some(UserAttr::Email),
            "phoneNumber" => Some(UserAttr::PhoneNumber),
            _ => UserAttr::ALL.into_iter().find(|a| a.name() == name),
        }
    }

    /// Attributes that live in the enterprise user extension.
    pub fn is_enterprise(self) -> bool {
        matches!(
            self,
            UserAttr::Department
                | UserAttr::Organization
                | UserAttr::Division
                | UserAttr::CostCenter
                | UserAttr::EmployeeNumber
        )
    }
}

impl fmt::Display for UserAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The managed attributes of one user, each a single non-empty string.
pub type UserAttrs = BTreeMap<UserAttr, String>;

/// A user as the target should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredUser {
    pub key: SourceKey,
    pub origin: Origin,
    /// Always holds `userName` (the mapping refuses a user without one).
    pub attrs: UserAttrs,
    /// False when the source marks the user disabled: the target account is
    /// deactivated (never created just to be deactivated).
    pub active: bool,
}

impl DesiredUser {
    pub fn user_name(&self) -> &str {
        self.attrs
            .get(&UserAttr::UserName)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A group as the target should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredGroup {
    pub key: GroupKey,
    pub display_name: String,
    /// Sorted and without duplicates; only keys of in-scope users.
    pub members: Vec<SourceKey>,
}

/// What the mapping made of one complete source read: the desired state of the
/// target, sorted by key.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub users: Vec<DesiredUser>,
    pub groups: Vec<DesiredGroup>,
    /// Users present in the source but outside the mapping's scope (for
    /// `skip_out_of_scope_deletions`).
    pub out_of_scope: BTreeSet<SourceKey>,
    /// Attributes written only when a user is created, never updated.
    pub create_only: BTreeSet<UserAttr>,
    /// Group members that were not in-scope users (counted for the summary).
    pub ignored_members: usize,
}

/// A digest of a user's managed attributes, to find unchanged users without
/// comparing (or even loading) their last pushed attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttrHash(pub [u8; 16]);

impl AttrHash {
    /// Hashes `attrs`, leaving out `skip` (attributes written only on create, so a
    /// difference there never makes an update).
    pub fn of(attrs: &UserAttrs, skip: &BTreeSet<UserAttr>) -> AttrHash {
        // One contiguous buffer hashed at once: much cheaper than many small
        // incremental updates, and the same digest.
        let mut bytes = Vec::with_capacity(256);
        for (attr, value) in attrs {
            if skip.contains(attr) {
                continue;
            }
            bytes.extend_from_slice(attr.name().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
        AttrHash(out)
    }
}

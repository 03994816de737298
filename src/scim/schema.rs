//! What the target says about its own resources: `/Schemas` and
//! `/ResourceTypes` (RFC 7643 §7, §6) read into a typed model — for each User
//! and Group attribute and sub-attribute, whether the server publishes it, its
//! mutability, `caseExact`, `uniqueness`, `required` and `returned`.
//!
//! Parsing is tolerant: a server that serves neither document (or something
//! that is not a schema) gets the RFC 7643 defaults, and the model says so. A
//! field an attribute leaves out takes its RFC default (readWrite, not
//! caseExact, uniqueness none, not required, returned default). The common
//! attributes (`id`, `externalId`, `meta`) are not part of a schema by RFC
//! 7643 §3.1: when a server does not list them they keep their defaults, they
//! are not "unpublished".
//!
//! Pure functions and data; the client reads the documents (see
//! `ScimClient::read_schema`) and shapes payloads from [`PayloadShape`].

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::model::{AttrSchema, AttrShape, ENTERPRISE_USER, GROUP_SCHEMA, USER_SCHEMA, UserAttr};

/// RFC 7643 §2.2 `mutability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

/// RFC 7643 §2.2 `uniqueness`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

/// RFC 7643 §2.2 `returned`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

/// What the schema says about one attribute or sub-attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrRule {
    pub mutability: Mutability,
    pub case_exact: bool,
    pub uniqueness: Uniqueness,
    pub required: bool,
    pub returned: Returned,
    /// The sub-attributes the server lists (lower case), empty when it lists none.
    pub sub_attributes: Vec<String>,
}

impl Default for AttrRule {
    /// RFC 7643 §2.2's defaults for a field left out.
    fn default() -> Self {
        Self {
            mutability: Mutability::ReadWrite,
            case_exact: false,
            uniqueness: Uniqueness::None,
            required: false,
            returned: Returned::Default,
            sub_attributes: Vec::new(),
        }
    }
}

/// How the model came about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaOrigin {
    /// `/Schemas` was served and parsed.
    Served,
    /// It was not (the reason is said): RFC 7643 defaults stand in.
    Defaults { why: String },
}

/// The target's schema for the resources idsync writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSchema {
    pub origin: SchemaOrigin,
    /// Why `/ResourceTypes` is not used, when it is not.
    pub resource_types_note: Option<String>,
    /// Attribute rules by lower-case path: `username`, `emails`, `emails.value`,
    /// `name.givenname`, and `<enterprise urn>:department` (urn lower-cased).
    user: HashMap<String, AttrRule>,
    group: HashMap<String, AttrRule>,
    /// Schema ids `/Schemas` served (lower case).
    served: BTreeSet<String>,
    /// The User resource type's schema extensions, when `/ResourceTypes` said.
    user_extensions: Option<BTreeSet<String>>,
}

/// One attribute as the schema has it: published (with its rule), or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Published(AttrRule),
    /// The server serves the attribute's schema but does not list it (or its
    /// resource type does not use the schema).
    NotPublished,
}

impl TargetSchema {
    /// RFC 7643's defaults, for a server that does not serve `/Schemas`.
    pub fn defaults(why: impl Into<String>) -> Self {
        Self {
            origin: SchemaOrigin::Defaults { why: why.into() },
            resource_types_note: None,
            user: HashMap::new(),
            group: HashMap::new(),
            served: BTreeSet::new(),
            user_extensions: None,
        }
    }

    /// A schema that says only what a target requires on a create, as a cycle
    /// recorded it (lower-case paths): for checking a mapping against it
    /// without reaching the target.
    pub fn from_required(user: &[String], group: &[String]) -> Self {
        let required = |paths: &[String]| {
            paths
                .iter()
                .map(|p| {
                    let rule = AttrRule {
                        required: true,
                        ..AttrRule::default()
                    };
                    (p.to_ascii_lowercase(), rule)
                })
                .collect()
        };
        Self {
            origin: SchemaOrigin::Served,
            resource_types_note: None,
            user: required(user),
            group: required(group),
            served: [USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_USER]
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            user_extensions: None,
        }
    }

    /// Builds the model from the two documents; `resource_types` is `Err(why)`
    /// when `/ResourceTypes` could not be read.
    pub fn from_documents(schemas: &Value, resource_types: Result<&Value, String>) -> Self {
        let docs = resources(schemas);
        let mut model = Self::defaults("");
        let mut any = false;
        for doc in docs {
            let Some(id) = doc.get("id").and_then(Value::as_str) else {
                continue;
            };
            let Some(attributes) = doc.get("attributes").and_then(Value::as_array) else {
                continue;
            };
            let id_lower = id.to_ascii_lowercase();
            let (map, prefix) = if id.eq_ignore_ascii_case(USER_SCHEMA) {
                (&mut model.user, String::new())
            } else if id.eq_ignore_ascii_case(ENTERPRISE_USER) {
                (&mut model.user, format!("{id_lower}:"))
            } else if id.eq_ignore_ascii_case(GROUP_SCHEMA) {
                (&mut model.group, String::new())
            } else {
                continue;
            };
            any = true;
            model.served.insert(id_lower);
            for attr in attributes {
                insert_attribute(map, &prefix, attr);
            }
        }
        if !any {
            return Self::defaults("/Schemas holds no User or Group schema that could be read");
        }
        model.origin = SchemaOrigin::Served;
        match resource_types {
            Ok(doc) => match user_extensions(doc) {
                Some(ext) => model.user_extensions = Some(ext),
                None => {
                    model.resource_types_note =
                        Some("/ResourceTypes names no User resource type".to_owned())
                }
            },
            Err(why) => model.resource_types_note = Some(why),
        }
        model
    }

    pub fn is_served(&self) -> bool {
        self.origin == SchemaOrigin::Served
    }

    /// A User attribute by path (`userName`, `emails.type`, `name.givenName`,
    /// or `<enterprise urn>:department`).
    pub fn user_path(&self, path: &str) -> Lookup {
        let key = path.to_ascii_lowercase();
        lookup(
            &self.user,
            &key,
            || rfc_user_default(&key),
            |k| self.user_schema_published(k),
        )
    }

    /// A Group attribute by path (`displayName`, `members`, `members.value`).
    pub fn group_path(&self, path: &str) -> Lookup {
        let key = path.to_ascii_lowercase();
        let published = self.served.contains(&GROUP_SCHEMA.to_ascii_lowercase());
        lookup(&self.group, &key, || rfc_group_default(&key), |_| published)
    }

    /// A managed user attribute (for emails and phone numbers: the
    /// multi-valued attribute itself).
    pub fn user_attr(&self, attr: UserAttr) -> Lookup {
        self.user_path(&attr_path(attr))
    }

    /// The rule in force for a managed attribute: the published one, or the
    /// RFC default when the server does not publish it.
    fn rule(&self, attr: UserAttr) -> AttrRule {
        match self.user_attr(attr) {
            Lookup::Published(rule) => rule,
            Lookup::NotPublished => rfc_user_default(&attr_path(attr).to_ascii_lowercase()),
        }
    }

    /// Whether the target compares this attribute's values exactly. For
    /// emails and phone numbers, the `value` sub-attribute's rule.
    pub fn case_exact(&self, attr: UserAttr) -> bool {
        if attr.spec().shape == AttrShape::MultiValued {
            let value = format!("{}.value", attr_path(attr));
            if let Lookup::Published(rule) = self.user_path(&value) {
                return rule.case_exact;
            }
        }
        self.rule(attr).case_exact
    }

    pub fn mutability(&self, attr: UserAttr) -> Mutability {
        self.rule(attr).mutability
    }

    /// Whether `userName` is unique on the target: `Some(true)` when the
    /// published schema says `server` or `global`, `Some(false)` when it says
    /// `none`, `None` when the server did not say (no `/Schemas`).
    pub fn user_names_unique(&self) -> Option<bool> {
        if !self.is_served() {
            return None;
        }
        match self.user_path("userName") {
            Lookup::Published(rule) => Some(rule.uniqueness != Uniqueness::None),
            Lookup::NotPublished => None,
        }
    }

    /// Whether a group POST must carry members (`members` required).
    pub fn group_members_required(&self) -> bool {
        matches!(self.group_path("members"), Lookup::Published(r) if r.required)
    }

    /// Attributes the target compares ignoring case (`caseExact` false): a
    /// stored value differing only in case is the value idsync wants.
    pub fn folded(&self) -> BTreeSet<UserAttr> {
        UserAttr::all().filter(|a| !self.case_exact(*a)).collect()
    }

    /// Attributes the target does not hold as written: read-only (never
    /// sent), write-only or never returned (cannot be read back). idsync does
    /// not compare them with what the target holds.
    pub fn unheld(&self) -> BTreeSet<UserAttr> {
        UserAttr::all()
            .filter(|a| {
                let rule = self.rule(*a);
                matches!(
                    rule.mutability,
                    Mutability::ReadOnly | Mutability::WriteOnly
                ) || rule.returned == Returned::Never
            })
            .collect()
    }

    /// Whether the published schema marks this User path required (and not
    /// read-only: what the server sets itself is no client's business).
    fn user_requires(&self, key: &str) -> bool {
        self.user
            .get(key)
            .is_some_and(|r| r.required && r.mutability != Mutability::ReadOnly)
    }

    fn group_requires(&self, key: &str) -> bool {
        self.group
            .get(key)
            .is_some_and(|r| r.required && r.mutability != Mutability::ReadOnly)
    }

    /// The User paths (lower case) a create must carry: required and not
    /// read-only, leaving out what the server sets or idsync always sends.
    pub fn required_user_paths(&self) -> Vec<String> {
        required_paths(&self.user, &["username", "active", "schemas"])
    }

    /// The Group paths (lower case) a create must carry, as
    /// [`Self::required_user_paths`].
    pub fn required_group_paths(&self) -> Vec<String> {
        required_paths(&self.group, &["displayname", "externalid", "schemas"])
    }

    /// What the target requires beyond what a mapping writing `mapped`
    /// produces: each required attribute idsync fills in (as RFC 7643
    /// defines it), and each that nothing produces (every create would be
    /// refused). Attributes the mapping produces are left out.
    pub fn requirements(&self, mapped: &BTreeSet<UserAttr>) -> Vec<Requirement> {
        if !self.is_served() {
            return Vec::new();
        }
        let any_part = NAME_PARTS.iter().any(|a| mapped.contains(a));
        let formatted_from = if mapped.contains(&UserAttr::FormattedName) {
            None
        } else if any_part {
            Some(Meet::Filled("from the name parts (else displayName)"))
        } else if mapped.contains(&UserAttr::DisplayName) {
            Some(Meet::Filled("from displayName"))
        } else {
            Some(Meet::Missing)
        };
        let mut out = Vec::new();
        for key in self.required_user_paths() {
            let meet = match key.as_str() {
                "name" if any_part || mapped.contains(&UserAttr::FormattedName) => None,
                "name" | "name.formatted" => formatted_from.clone(),
                _ => match user_attr_at(&key) {
                    Some(attr) if mapped.contains(&attr) => None,
                    Some(_) => Some(Meet::Missing),
                    None => match split_sub(&key) {
                        // A sub-attribute matters only where its parent is sent.
                        Some((parent, sub)) => match user_attr_at(&parent) {
                            Some(attr) if mapped.contains(&attr) => {
                                (!sent_sub_attribute(&parent, sub)).then_some(Meet::Missing)
                            }
                            Some(_) => None,
                            None if key.starts_with("name.") => Some(Meet::Missing),
                            None => None,
                        },
                        None => Some(Meet::Missing),
                    },
                },
            };
            if let Some(meet) = meet {
                out.push(Requirement {
                    resource: "User",
                    path: published_path(&key),
                    meet,
                });
            }
        }
        for key in self.required_group_paths() {
            let meet = match key.as_str() {
                // Sent with the first members (see `group_members_required`).
                "members" | "members.value" => continue,
                "members.$ref" => Meet::Filled("the target's URL of the member (…/Users/<id>)"),
                "members.display" => Meet::Filled("the member's userName"),
                "members.type" => Meet::Filled("\"User\""),
                _ => Meet::Missing,
            };
            out.push(Requirement {
                resource: "Group",
                path: key,
                meet,
            });
        }
        out
    }

    /// How user payloads must be shaped for this target.
    pub fn payload_shape(&self) -> PayloadShape {
        let sub = |parent: &str, sub: &str| -> bool {
            match self.user_path(parent) {
                Lookup::Published(rule) if !rule.sub_attributes.is_empty() => {
                    rule.sub_attributes.iter().any(|s| s == sub)
                }
                _ => true,
            }
        };
        PayloadShape {
            email_type: sub("emails", "type"),
            email_primary: sub("emails", "primary"),
            phone_type: sub("phoneNumbers", "type"),
            not_sent: UserAttr::all()
                .filter(|a| self.rule(*a).mutability == Mutability::ReadOnly)
                .collect(),
            immutable: UserAttr::all()
                .filter(|a| self.rule(*a).mutability == Mutability::Immutable)
                .collect(),
            formatted_name: self.user_requires("name.formatted") || self.user_requires("name"),
            member_ref: self.group_requires("members.$ref"),
            member_display: self.group_requires("members.display"),
            member_type: self.group_requires("members.type"),
        }
    }

    /// What the schema means for a mapping that writes `attrs` with payloads
    /// shaped as `shape` (the client's, which may differ by flavour), one line each.
    pub fn notes(&self, attrs: &BTreeSet<UserAttr>, shape: &PayloadShape) -> Vec<String> {
        let mut notes = Vec::new();
        match &self.origin {
            SchemaOrigin::Served => notes.push(format!(
                "schema: read from /Schemas ({} User and {} Group attributes){}",
                top_level(&self.user),
                top_level(&self.group),
                match &self.resource_types_note {
                    None => " and /ResourceTypes".to_owned(),
                    Some(why) => format!("; {why}"),
                }
            )),
            SchemaOrigin::Defaults { why } => {
                notes.push(format!("schema: {why}; RFC 7643 defaults assumed"))
            }
        }
        let mut folded = Vec::new();
        for &attr in attrs {
            let name = attr.name();
            let rule = self.rule(attr);
            if let Lookup::NotPublished = self.user_attr(attr) {
                notes.push(format!(
                    "{name}: not in the target's published schema; sent anyway, the target may drop it"
                ));
            }
            match rule.mutability {
                Mutability::ReadOnly => notes.push(format!(
                    "{name}: read-only on the target; idsync does not send it and does not compare it"
                )),
                Mutability::Immutable => notes.push(format!(
                    "{name}: immutable on the target; set on create, a later change fails for that user without being sent"
                )),
                Mutability::WriteOnly => notes.push(format!(
                    "{name}: write-only on the target; sent, but not compared with what the target holds"
                )),
                Mutability::ReadWrite if rule.returned == Returned::Never => notes.push(format!(
                    "{name}: never returned by the target; sent, but not compared with what the target holds"
                )),
                Mutability::ReadWrite => {}
            }
            if !self.case_exact(attr) {
                folded.push(name);
            }
        }
        if attrs.contains(&UserAttr::Email) {
            let left_out: Vec<&str> = [
                (!shape.email_type).then_some("emails.type"),
                (!shape.email_primary).then_some("emails.primary"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !left_out.is_empty() {
                notes.push(format!(
                    "{} not published: emails are sent without {}",
                    left_out.join(" and "),
                    if left_out.len() == 1 { "it" } else { "them" }
                ));
            }
        }
        if attrs.contains(&UserAttr::PhoneNumber) && !shape.phone_type {
            notes.push(
                "phoneNumbers.type not published: phone numbers are sent without it".to_owned(),
            );
        }
        if !folded.is_empty() {
            notes.push(format!(
                "compared ignoring case (caseExact false): {}",
                folded.join(", ")
            ));
        }
        notes.push(match self.user_names_unique() {
            Some(true) => "userName: unique on the target".to_owned(),
            Some(false) => {
                "userName: the target does not promise uniqueness (uniqueness none)".to_owned()
            }
            None => "userName: uniqueness not published".to_owned(),
        });
        if self.group_members_required() {
            notes.push(
                "Group members: required by the target; a group is created with its first members"
                    .to_owned(),
            );
        }
        for r in self.requirements(attrs) {
            if let Meet::Filled(how) = r.meet {
                notes.push(format!(
                    "{} {}: required by the target; idsync fills it in, {how}",
                    r.resource, r.path
                ));
            }
        }
        notes
    }

    fn user_schema_published(&self, key: &str) -> bool {
        let enterprise = ENTERPRISE_USER.to_ascii_lowercase();
        if key.starts_with(&format!("{enterprise}:")) {
            return self.served.contains(&enterprise)
                && self
                    .user_extensions
                    .as_ref()
                    .is_none_or(|ext| ext.contains(&enterprise));
        }
        self.served.contains(&USER_SCHEMA.to_ascii_lowercase())
    }
}

/// The name parts `name.formatted` is made of, in order.
const NAME_PARTS: [UserAttr; 5] = [
    UserAttr::HonorificPrefix,
    UserAttr::GivenName,
    UserAttr::MiddleName,
    UserAttr::FamilyName,
    UserAttr::HonorificSuffix,
];

/// How idsync meets one attribute the target requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meet {
    /// Derived as RFC 7643 defines it: how.
    Filled(&'static str),
    /// Nothing produces it: the target would refuse every create.
    Missing,
}

/// One attribute the target's schema marks required, and how idsync meets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// `User` or `Group`.
    pub resource: &'static str,
    /// The attribute's path, as idsync names it where it knows it.
    pub path: String,
    pub meet: Meet,
}

/// The required, client-writable paths of a rule map, sorted, without `skip`
/// and the common attributes.
fn required_paths(map: &HashMap<String, AttrRule>, skip: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = map
        .iter()
        .filter(|(k, r)| {
            r.required
                && r.mutability != Mutability::ReadOnly
                && !is_common(k)
                && !skip.contains(&k.as_str())
        })
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys
}

/// The managed attribute at a lower-case User path (for emails and phone
/// numbers, the multi-valued attribute itself).
fn user_attr_at(key: &str) -> Option<UserAttr> {
    UserAttr::all().find(|a| attr_path(*a).eq_ignore_ascii_case(key))
}

/// A lower-case path's parent and sub-attribute (`emails.type` → `emails`,
/// `type`), the enterprise extension's URN (which holds dots) kept whole.
fn split_sub(key: &str) -> Option<(String, &str)> {
    let enterprise = format!("{}:", ENTERPRISE_USER.to_ascii_lowercase());
    match key.strip_prefix(&enterprise) {
        Some(local) => local
            .split_once('.')
            .map(|(parent, sub)| (format!("{enterprise}{parent}"), sub)),
        None => key
            .split_once('.')
            .map(|(parent, sub)| (parent.to_owned(), sub)),
    }
}

/// `name.givenname` → `name.givenName` where idsync knows the attribute.
pub fn published_path(key: &str) -> String {
    user_attr_at(key).map_or_else(|| key.to_owned(), attr_path)
}

/// Whether idsync sends this sub-attribute of a multi-valued attribute it
/// writes (`value` always; `type` and `primary` where the target publishes them).
fn sent_sub_attribute(parent: &str, sub: &str) -> bool {
    matches!(
        (parent, sub),
        (_, "value") | ("emails", "type" | "primary") | ("phonenumbers", "type")
    )
}

/// The required paths `body` (a resource about to be POSTed) lacks: a
/// sub-attribute counts only where its parent is there (a required parent
/// is its own path).
pub fn missing_paths(body: &Value, required: &[String]) -> Vec<String> {
    fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
        obj.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }
    let enterprise = ENTERPRISE_USER.to_ascii_lowercase();
    required
        .iter()
        .filter(|key| {
            let (container, rest) = match key.strip_prefix(&format!("{enterprise}:")) {
                Some(rest) => match field(body, ENTERPRISE_USER) {
                    Some(ext) => (ext, rest),
                    None => return !rest.contains('.'),
                },
                None => (body, key.as_str()),
            };
            match rest.split_once('.') {
                None => field(container, rest).is_none(),
                Some((parent, sub)) => match field(container, parent) {
                    None => false,
                    Some(Value::Array(items)) => items.iter().any(|i| field(i, sub).is_none()),
                    Some(obj) => field(obj, sub).is_none(),
                },
            }
        })
        .cloned()
        .collect()
}

/// How many attributes (not sub-attributes) a rule map holds.
fn top_level(map: &HashMap<String, AttrRule>) -> usize {
    map.keys()
        .filter(|k| !k.rsplit(':').next().unwrap_or_default().contains('.'))
        .count()
}

/// What user payloads carry on this target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadShape {
    pub email_type: bool,
    pub email_primary: bool,
    pub phone_type: bool,
    /// Read-only attributes: never sent.
    pub not_sent: BTreeSet<UserAttr>,
    /// Immutable attributes: sent on create, never changed.
    pub immutable: BTreeSet<UserAttr>,
    /// `name.formatted` (or `name`) is required: a create without one gets
    /// it from the name parts, else `displayName` (RFC 7643 §4.1.1).
    pub formatted_name: bool,
    /// Group members carry `$ref` (the member's URL), `display` (its
    /// userName) and `type` (`User`) where the target requires them.
    pub member_ref: bool,
    pub member_display: bool,
    pub member_type: bool,
}

impl Default for PayloadShape {
    /// Everything sent, as before the schema is known.
    fn default() -> Self {
        Self {
            email_type: true,
            email_primary: true,
            phone_type: true,
            not_sent: BTreeSet::new(),
            immutable: BTreeSet::new(),
            formatted_name: false,
            member_ref: false,
            member_display: false,
            member_type: false,
        }
    }
}

/// The schema path of a managed attribute.
pub fn attr_path(attr: UserAttr) -> String {
    let spec = attr.spec();
    match (spec.schema, spec.shape) {
        (AttrSchema::Enterprise, _) => format!("{ENTERPRISE_USER}:{}", spec.key),
        (AttrSchema::Core, AttrShape::Name) => format!("name.{}", spec.key),
        (AttrSchema::Core, _) => spec.key.to_owned(),
    }
}

/// RFC 7643 §2.1: the common attributes, which a schema need not list.
fn is_common(key: &str) -> bool {
    matches!(key, "id" | "externalid" | "meta") || key.starts_with("meta.")
}

fn lookup(
    map: &HashMap<String, AttrRule>,
    key: &str,
    default: impl Fn() -> AttrRule,
    schema_published: impl Fn(&str) -> bool,
) -> Lookup {
    if is_common(key) {
        return Lookup::Published(map.get(key).cloned().unwrap_or_else(default));
    }
    if !schema_published(key) {
        // Nothing served at all: the RFC defaults stand.
        return if map.is_empty() {
            Lookup::Published(default())
        } else {
            Lookup::NotPublished
        };
    }
    if let Some(rule) = map.get(key) {
        return Lookup::Published(rule.clone());
    }
    // A sub-attribute of a published attribute that lists no sub-attributes:
    // the server did not say, so the default stands.
    if let Some((parent, _)) = key.rsplit_once('.')
        && let Some(rule) = map.get(parent)
        && rule.sub_attributes.is_empty()
    {
        return Lookup::Published(default());
    }
    Lookup::NotPublished
}

/// RFC 7643 §4.1, §8.7.1 for the attributes idsync writes.
fn rfc_user_default(key: &str) -> AttrRule {
    match key {
        "username" => AttrRule {
            uniqueness: Uniqueness::Server,
            required: true,
            ..AttrRule::default()
        },
        "id" => AttrRule {
            mutability: Mutability::ReadOnly,
            case_exact: true,
            uniqueness: Uniqueness::Server,
            returned: Returned::Always,
            ..AttrRule::default()
        },
        "externalid" => AttrRule {
            case_exact: true,
            ..AttrRule::default()
        },
        _ => AttrRule::default(),
    }
}

fn rfc_group_default(key: &str) -> AttrRule {
    match key {
        "displayname" => AttrRule {
            required: true,
            ..AttrRule::default()
        },
        _ => rfc_user_default(key),
    }
}

/// The schema resources of a `/Schemas` answer: a ListResponse, a bare array,
/// or a single schema.
fn resources(doc: &Value) -> Vec<&Value> {
    if let Some(list) = doc
        .get("Resources")
        .or_else(|| doc.get("resources"))
        .and_then(Value::as_array)
    {
        return list.iter().collect();
    }
    if let Some(list) = doc.as_array() {
        return list.iter().collect();
    }
    if doc.get("attributes").is_some() {
        return vec![doc];
    }
    Vec::new()
}

fn insert_attribute(map: &mut HashMap<String, AttrRule>, prefix: &str, attr: &Value) {
    let Some(name) = attr.get("name").and_then(Value::as_str) else {
        return;
    };
    let key = format!("{prefix}{}", name.to_ascii_lowercase());
    let subs: Vec<&Value> = attr
        .get("subAttributes")
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    let mut rule = parse_rule(attr);
    rule.sub_attributes = subs
        .iter()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    for sub in subs {
        if let Some(sub_name) = sub.get("name").and_then(Value::as_str) {
            map.insert(
                format!("{key}.{}", sub_name.to_ascii_lowercase()),
                parse_rule(sub),
            );
        }
    }
    map.insert(key, rule);
}

fn text(attr: &Value, field: &str) -> Option<String> {
    attr.get(field)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_ascii_lowercase())
}

fn flag(attr: &Value, field: &str) -> Option<bool> {
    match attr.get(field)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn parse_rule(attr: &Value) -> AttrRule {
    let d = AttrRule::default();
    AttrRule {
        mutability: match text(attr, "mutability").as_deref() {
            Some("readonly") => Mutability::ReadOnly,
            Some("immutable") => Mutability::Immutable,
            Some("writeonly") => Mutability::WriteOnly,
            _ => d.mutability,
        },
        case_exact: flag(attr, "caseExact").unwrap_or(d.case_exact),
        uniqueness: match text(attr, "uniqueness").as_deref() {
            Some("server") => Uniqueness::Server,
            Some("global") => Uniqueness::Global,
            _ => d.uniqueness,
        },
        required: flag(attr, "required").unwrap_or(d.required),
        returned: match text(attr, "returned").as_deref() {
            Some("always") => Returned::Always,
            Some("never") => Returned::Never,
            Some("request") => Returned::Request,
            _ => d.returned,
        },
        sub_attributes: Vec::new(),
    }
}

/// The User resource type's schema extensions (lower case), if `/ResourceTypes`
/// names a User resource type.
fn user_extensions(doc: &Value) -> Option<BTreeSet<String>> {
    let user = resources_any(doc).into_iter().find(|rt| {
        rt.get("schema")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(USER_SCHEMA))
            || rt
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case("User"))
    })?;
    Some(
        user.get("schemaExtensions")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(|e| e.get("schema").and_then(Value::as_str))
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn resources_any(doc: &Value) -> Vec<&Value> {
    if let Some(list) = doc
        .get("Resources")
        .or_else(|| doc.get("resources"))
        .and_then(Value::as_array)
    {
        return list.iter().collect();
    }
    if let Some(list) = doc.as_array() {
        return list.iter().collect();
    }
    vec![doc]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What scim2-server serves, cut down to what idsync reads.
    fn scim2_server_like() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "Resources": [
                {"id": USER_SCHEMA, "attributes": [
                    {"name": "userName", "mutability": "readWrite", "caseExact": false, "uniqueness": "server", "required": true},
                    {"name": "name", "subAttributes": [{"name": "givenName"}, {"name": "familyName"}]},
                    {"name": "title"},
                    {"name": "emails", "subAttributes": [
                        {"name": "value", "caseExact": false}, {"name": "type"}, {"name": "primary"}]},
                    {"name": "groups", "mutability": "readOnly"},
                ]},
                {"id": GROUP_SCHEMA, "attributes": [
                    {"name": "displayName", "required": true},
                    {"name": "members", "subAttributes": [{"name": "value", "mutability": "immutable"}]},
                ]},
                {"id": ENTERPRISE_USER, "attributes": [{"name": "department"}]},
            ]
        })
    }

    fn resource_types(extensions: &[&str]) -> Value {
        let ext: Vec<Value> = extensions
            .iter()
            .map(|s| json!({"schema": s, "required": false}))
            .collect();
        json!({"Resources": [
            {"id": "User", "name": "User", "schema": USER_SCHEMA, "schemaExtensions": ext},
            {"id": "Group", "name": "Group", "schema": GROUP_SCHEMA},
        ]})
    }

    #[test]
    fn a_served_schema_is_read_per_attribute_and_sub_attribute() {
        let rt = resource_types(&[ENTERPRISE_USER]);
        let s = TargetSchema::from_documents(&scim2_server_like(), Ok(&rt));
        assert!(s.is_served());
        assert_eq!(s.resource_types_note, None);
        assert_eq!(s.user_names_unique(), Some(true));
        assert!(!s.case_exact(UserAttr::UserName));
        assert!(!s.case_exact(UserAttr::Email));
        // A common attribute the schema does not list keeps the RFC default.
        assert!(s.case_exact(UserAttr::ExternalId));
        assert!(matches!(
            s.user_attr(UserAttr::ExternalId),
            Lookup::Published(_)
        ));
        assert!(matches!(
            s.user_attr(UserAttr::Department),
            Lookup::Published(_)
        ));
        assert_eq!(
            s.user_attr(UserAttr::NickName),
            Lookup::NotPublished,
            "a core attribute left out of a served schema"
        );
        assert_eq!(s.payload_shape(), PayloadShape::default());
        assert!(!s.group_members_required());
        assert!(s.unheld().is_empty());
    }

    #[test]
    fn read_only_immutable_and_unpublished_sub_attributes_shape_payloads() {
        let doc = json!([
            {"id": USER_SCHEMA, "attributes": [
                {"name": "userName", "mutability": "IMMUTABLE", "uniqueness": "none"},
                {"name": "externalId", "mutability": "readOnly", "caseExact": "true"},
                {"name": "emails", "subAttributes": [{"name": "value"}, {"name": "display"}]},
            ]},
            {"id": GROUP_SCHEMA, "attributes": [{"name": "members", "required": "true"}]},
        ]);
        let s = TargetSchema::from_documents(&doc, Err("/ResourceTypes: HTTP 404".into()));
        let shape = s.payload_shape();
        assert!(!shape.email_type && !shape.email_primary);
        assert!(shape.phone_type, "phoneNumbers not published: nothing said");
        assert_eq!(shape.not_sent, [UserAttr::ExternalId].into());
        assert_eq!(shape.immutable, [UserAttr::UserName].into());
        assert_eq!(s.unheld(), [UserAttr::ExternalId].into());
        assert_eq!(s.user_names_unique(), Some(false));
        assert!(s.group_members_required());
        let notes = s.notes(
            &[UserAttr::UserName, UserAttr::ExternalId, UserAttr::Email].into(),
            &shape,
        );
        let text = notes.join("\n");
        assert!(text.contains("/ResourceTypes: HTTP 404"), "{text}");
        assert!(text.contains("externalId: read-only"), "{text}");
        assert!(text.contains("userName: immutable"), "{text}");
        assert!(
            text.contains("emails.type and emails.primary not published"),
            "{text}"
        );
        assert!(text.contains("Group members: required"), "{text}");
    }

    #[test]
    fn an_enterprise_extension_the_user_type_does_not_use_is_not_published() {
        let rt = resource_types(&[]);
        let s = TargetSchema::from_documents(&scim2_server_like(), Ok(&rt));
        assert_eq!(s.user_attr(UserAttr::Department), Lookup::NotPublished);
    }

    #[test]
    fn no_schema_falls_back_to_rfc_defaults_and_says_so() {
        for doc in [json!({}), json!("nope"), json!({"Resources": []})] {
            let s = TargetSchema::from_documents(&doc, Ok(&json!({})));
            assert!(!s.is_served());
            assert_eq!(s.user_names_unique(), None);
            assert_eq!(s.payload_shape(), PayloadShape::default());
            assert!(!s.case_exact(UserAttr::Email));
            assert!(s.case_exact(UserAttr::ExternalId));
            assert!(matches!(
                s.user_attr(UserAttr::Department),
                Lookup::Published(_)
            ));
            assert!(
                s.notes(&BTreeSet::new(), &PayloadShape::default())[0]
                    .contains("RFC 7643 defaults")
            );
        }
        let s = TargetSchema::defaults("/Schemas: HTTP 404");
        assert_eq!(s.folded(), TargetSchema::defaults("x").folded());
        assert!(!s.folded().contains(&UserAttr::ExternalId));
        assert!(s.folded().contains(&UserAttr::UserName));
    }

    /// A server that marks more attributes required than RFC 7643's examples.
    fn demanding() -> TargetSchema {
        let doc = json!({"Resources": [
            {"id": USER_SCHEMA, "attributes": [
                {"name": "userName", "required": true},
                {"name": "id", "required": true, "mutability": "readOnly"},
                {"name": "name", "required": true, "subAttributes": [
                    {"name": "formatted", "required": true}, {"name": "givenName"},
                    {"name": "familyName"}, {"name": "middleName", "required": true}]},
                {"name": "title", "required": true},
                {"name": "nickName", "required": true},
                {"name": "ims", "required": true},
                {"name": "emails", "subAttributes": [
                    {"name": "value", "required": true}, {"name": "display", "required": true}]},
            ]},
            {"id": GROUP_SCHEMA, "attributes": [
                {"name": "displayName", "required": true},
                {"name": "members", "subAttributes": [
                    {"name": "value", "required": true}, {"name": "$ref", "required": true},
                    {"name": "display", "required": true}]},
                {"name": "owner", "required": true},
            ]},
        ]});
        TargetSchema::from_documents(&doc, Err("no /ResourceTypes".into()))
    }

    #[test]
    fn required_attributes_are_filled_where_rfc_7643_defines_them_and_named_where_nothing_can() {
        let schema = demanding();
        let mapped: BTreeSet<UserAttr> = [
            UserAttr::UserName,
            UserAttr::Email,
            UserAttr::GivenName,
            UserAttr::FamilyName,
            UserAttr::Title,
        ]
        .into();
        let got: Vec<(&str, String, Meet)> = schema
            .requirements(&mapped)
            .into_iter()
            .map(|r| (r.resource, r.path, r.meet))
            .collect();
        let missing = Meet::Missing;
        assert_eq!(
            got,
            [
                ("User", "emails.display".to_owned(), missing.clone()),
                ("User", "ims".to_owned(), missing.clone()),
                (
                    "User",
                    "name.formatted".to_owned(),
                    Meet::Filled("from the name parts (else displayName)")
                ),
                ("User", "name.middleName".to_owned(), missing.clone()),
                ("User", "nickName".to_owned(), missing.clone()),
                (
                    "Group",
                    "members.$ref".to_owned(),
                    Meet::Filled("the target's URL of the member (…/Users/<id>)")
                ),
                (
                    "Group",
                    "members.display".to_owned(),
                    Meet::Filled("the member's userName")
                ),
                ("Group", "owner".to_owned(), missing),
            ]
        );
        let shape = schema.payload_shape();
        assert!(shape.formatted_name && shape.member_ref && shape.member_display);
        assert!(!shape.member_type);
        // With only a displayName, `name` and `name.formatted` come from it.
        let only_display: BTreeSet<UserAttr> = [UserAttr::UserName, UserAttr::DisplayName].into();
        let filled: Vec<String> = schema
            .requirements(&only_display)
            .into_iter()
            .filter(|r| r.meet == Meet::Filled("from displayName"))
            .map(|r| r.path)
            .collect();
        assert_eq!(filled, ["name", "name.formatted"]);
        // RFC defaults (no /Schemas) require nothing more.
        assert!(TargetSchema::defaults("x").requirements(&mapped).is_empty());
    }

    #[test]
    fn a_create_body_missing_a_required_path_is_named() {
        let required: Vec<String> = [
            "name.formatted",
            "title",
            "emails.display",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department",
        ]
        .map(str::to_owned)
        .into();
        let body = json!({
            "userName": "a@x.com",
            "name": {"givenName": "A"},
            "Title": "Eng",
            "emails": [{"value": "a@x.com", "display": "A"}, {"value": "b@x.com"}],
        });
        assert_eq!(
            missing_paths(&body, &required),
            [
                "name.formatted",
                "emails.display",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:department"
            ]
        );
        // A sub-attribute of something not sent is not missing by itself.
        let body =
            json!({"userName": "a@x.com", "title": "Eng", ENTERPRISE_USER: {"department": "D"}});
        assert_eq!(missing_paths(&body, &required), Vec::<String>::new());
    }
}

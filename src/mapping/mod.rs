//! Mapping and scope: turns source records into the desired SCIM users and groups.
//!
//! A mapping file is YAML, compiled once at load time ([`Mapping::load`]); every
//! mistake is reported with the file, line and column and a `hint:` saying how to
//! fix it. Mapping records ([`Mapping::build`]) never panics on bad values: a record
//! the mapping cannot turn into a valid user is a [`RecordError`] naming the record.
//! This module owns no I/O beyond reading the mapping file itself.
//!
//! # Mapping file format
//!
//! ```yaml
//! users:
//!   attributes:                  # SCIM attribute → rule
//!     userName: { expr: "lower(trim(email))" }
//!     emails: email                         # shorthand: copy a source attribute
//!     name.givenName: { from: given_name }  # the same, explicit
//!     displayName: { template: "{{ given_name }} {{ family_name }}", on: create }
//!     organization: { value: "Acme" }       # constant text
//!     externalId: { expr: "key" }           # `key` = the record's source key
//!   active: { expr: "default(active, 'true')" }
//!   required: [userName, emails]
//!   scope:
//!     include:
//!       - { attribute: department, equals: Sales }
//!       - all:                              # a rule with several clauses
//!           - { attribute: title, regex: "^Eng" }
//!           - { attribute: c, equals: de, ignore_case: true }
//!     exclude:
//!       - { attribute: email, absent: true }
//!       - { attribute: employeeType, not_equals: Employee }
//! groups:
//!   displayName: { expr: "name" }           # `name` = the group's name, `key` its key
//!   scope:
//!     include: [ { attribute: name, regex: "^team-" } ]
//! ```
//!
//! ## `users.attributes`
//!
//! Keys are SCIM attribute names: `userName`, `externalId`, `emails` (or `email`),
//! `name.givenName`, `name.familyName`, `name.middleName`, `name.formatted`,
//! `name.honorificPrefix`, `name.honorificSuffix`, `displayName`, `nickName`,
//! `title`, `userType`, `preferredLanguage`, `locale`, `timezone`, `phoneNumbers`
//! (or `phoneNumber`), and from the enterprise extension `department`,
//! `organization`, `division`, `costCenter`, `employeeNumber`. `userName` must be
//! mapped. Each value is a rule, exactly one of:
//!
//! - `attr_name` or `{ from: attr_name }`: the first non-empty value of a source
//!   attribute (names are matched case-insensitively, as LDAP does; `key` is the
//!   record's source key, and for groups `name` is the group's name);
//! - `{ expr: "…" }`: an expression (below);
//! - `{ template: "… {{ expr }} …" }`: text with expression placeholders. The result
//!   is trimmed, and is empty when every placeholder is empty (so `"{{ a }} {{ b }}"`
//!   with neither value leaves the attribute out);
//! - `{ value: "…" }`: constant text.
//!
//! and may add `on: always` (the default: kept in step on every cycle) or
//! `on: create` (written when idsync creates the user, never updated afterwards).
//! An empty or all-whitespace result means the attribute is absent.
//!
//! ## `users.active`
//!
//! Optional rule deciding whether the account is active. Its result must be
//! `true`/`false`, `yes`/`no` or `1`/`0` (any case); anything else, including an
//! empty result, is an error for that record: write `default(active, 'true')` to
//! treat a blank as active, or `if(condition, 'true', 'false')` for a condition.
//! Without `active:`, every user in scope is active.
//!
//! ## `users.required`
//!
//! SCIM attributes that must not be empty (`userName` always is). A user in scope
//! whose required attribute maps to empty is an error for that record, reported
//! with all other record errors; nothing is synced in that cycle.
//!
//! ## `scope` (users and groups)
//!
//! A record is in scope if it matches ANY `include` rule (or there are none) and NO
//! `exclude` rule; a rule is one clause, or `all: [clause, …]` whose clauses must
//! all hold. A clause names an `attribute` (a source attribute; `key`, and for groups
//! `name`, are the built-ins, and they are the only attributes groups have) and one
//! test:
//!
//! - `equals: text`: some value equals the text;
//! - `not_equals: text`: no value equals it (true when the attribute is absent);
//! - `regex: "…"`: some value matches (anywhere: anchor with `^…$`);
//! - `present: true` / `absent: true`: some value is / no value is non-empty;
//!
//! plus `ignore_case: true` for `equals`, `not_equals` and `regex`. Users out of
//! scope are not mapped at all (their data can't fail a cycle) and are reported
//! as out of scope; groups out of scope are dropped; group members who are not
//! in-scope users are left out of the group.
//!
//! ## Assignments
//!
//! The config's `assign:` section ([`Assign`], attached with
//! [`Mapping::with_assign`]) narrows both scopes: a user must also be assigned
//! (named in `assign.users`, a member of a group in `assign.groups`, or
//! assigned by the source itself: Entra's app assignments), and only assigned
//! groups are pushed, plus those a `groups.scope` include rule adds. A
//! `member_of` clause is the same lookup written in the mapping.
//!
//! ## `groups`
//!
//! `displayName:` is a rule over `name` and `key` (default: `name`). Two groups
//! with the same display name (case-insensitively) are an error.
//!
//! ## Expressions
//!
//! Used in `expr:` and inside `{{ … }}`. An expression is a string literal in
//! single or double quotes (inside one, `\\` is a backslash and `\'` or `\"` the
//! quote; any other backslash is kept, so `'\d+'` is a regex as written), a whole
//! number (`-1`), a source attribute name (letters, digits, `_`, `-`, `.`; it
//! yields the attribute's first non-empty value), `key` (the source key; `name` is
//! the group's name for groups), or a function call. Every value is text; a
//! missing attribute is the empty text. Conditions yield `'true'` or `''` (empty),
//! and anything non-empty counts as true, so they compose.
//!
//! | function | result |
//! |---|---|
//! | `attr('Some Name')` | the attribute with a name bare words can't spell |
//! | `first(attr)` | the attribute's first non-empty value (what a bare name gives) |
//! | `lower(v)`, `upper(v)` | Unicode case mapping |
//! | `trim(v)` | `v` without surrounding whitespace |
//! | `join(sep, a, b, …)` | the non-empty values joined with `sep` |
//! | `split(v, sep, i)` | the `i`-th part of `v` split on `sep` (0 is the first, -1 the last; `''` when there is none; `v` itself when `sep` is empty) |
//! | `replace(v, from, to)` | every `from` in `v` replaced with `to` |
//! | `coalesce(a, b, …)` | the first non-empty value |
//! | `default(a, fallback)` | `a`, or `fallback` when `a` is empty |
//! | `if(cond, then, else)` | `then` when `cond` is non-empty, else `else` |
//! | `eq(a, b)`, `ne(a, b)` | condition: equal / not equal (case-sensitive; use `lower`) |
//! | `present(a)` | condition: `a` is non-empty |
//! | `matches(a, 'regex')` | condition: `a` matches the regex (anywhere; `(?i)` ignores case) |
//! | `not(c)`, `and(c, …)`, `or(c, …)` | boolean logic over conditions |
//! | `flag(v, mask)` | condition: `v` is a whole number with any bit of `mask` set: `flag(userAccountControl, 2)` is true for a disabled AD account |
//!
//! Unknown functions, wrong numbers of arguments, bad regexes, unknown SCIM
//! attributes and unknown keys are errors when the mapping is loaded.

mod assign;
mod compile;
mod expr;
mod scope;

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::{
    Desired, DesiredGroup, DesiredUser, FastHash, FastSet, GroupKey, GroupName, HeldGroup, Origin,
    SourceAssignments, SourceAttrs, SourceDirectory, SourceGroup, SourceKey, SourceUser, UserAttr,
    UserAttrs,
};
pub use assign::{Assign, AssignConfig, AssignRules};
use assign::{Assigned, Memberships, Missing};
use expr::{Expr, Record};
use scope::Scope;

/// What group records see for `member_of` (a user-only clause).
static NO_MEMBERSHIPS: Memberships<'static> = Memberships::none();

/// The largest mapped value accepted. SCIM servers cap attributes far lower
/// (names and titles at a few hundred characters); a value this large is a
/// broken export, and sending it would fail that user on every cycle.
pub const MAX_VALUE_BYTES: usize = 4096;

/// A compiled mapping file.
#[derive(Debug)]
pub struct Mapping {
    file: Arc<str>,
    /// Sorted by attribute, so building a user's map only appends.
    attributes: Vec<(UserAttr, Expr)>,
    active: Option<Expr>,
    /// `userName` first, then the file's `required:` list.
    required: Vec<UserAttr>,
    user_scope: Scope,
    group_name: Expr,
    group_scope: Scope,
    source_attributes: BTreeSet<String>,
    create_only: BTreeSet<UserAttr>,
    /// The config's `assign:` section, when it has one.
    assign: Option<Assign>,
}

/// One mistake in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Arc<str>,
    /// 1-based; 0 when the position is unknown.
    pub line: u64,
    /// 1-based, in characters.
    pub column: u64,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        write!(f, "\n  hint: {}", self.hint)
    }
}

/// Why a mapping file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error(
        "cannot read mapping file {}: {source}\n  hint: check the `mapping:` path in the config (relative paths resolve against the config file's folder)",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every mistake found, in file order.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The record a [`RecordError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordId {
    User(SourceKey),
    Group(GroupKey),
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordId::User(k) => write!(f, "user {}", quoted(k)),
            RecordId::Group(k) => write!(f, "group {}", quoted(k)),
        }
    }
}

/// What is wrong with one source record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// Required attributes that mapped to empty, with the source attributes their
    /// rules read.
    MissingRequired {
        attributes: Vec<UserAttr>,
        sources: Vec<String>,
    },
    /// The `active` rule gave something other than a boolean.
    InvalidActive(String),
    /// Another user, earlier in the source, has the same `userName`
    /// (case-insensitively).
    DuplicateUserName {
        user_name: String,
        other: SourceKey,
        other_origin: Origin,
    },
    /// Another record, earlier in the source, has the same key.
    DuplicateKey { other_origin: Origin },
    /// A mapped value is larger than any SCIM target takes.
    TooLong { attribute: UserAttr, bytes: usize },
    /// The group's display name mapped to empty.
    EmptyGroupName,
    /// A `member_of` scope clause names a group the source does not have.
    UnknownScopeGroup,
    /// `assign.groups` names a group the source does not have.
    UnknownAssignedGroup,
}

/// A source record the mapping cannot turn into a valid SCIM object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub origin: Origin,
    pub record: RecordId,
    pub problem: RecordProblem,
}

/// A directory value in a message: quoted, with control and format characters
/// escaped, so a newline or a bidi override in a record cannot forge output.
fn quoted(value: &impl fmt::Display) -> String {
    crate::report::quote(&value.to_string())
}

fn quoted_list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RecordError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match &self.problem {
            RecordProblem::MissingRequired { sources, .. } if sources.is_empty() => {
                "fill in the source data, or leave the user out with a scope exclude rule".into()
            }
            RecordProblem::MissingRequired { sources, .. } => format!(
                "fill in {} for this record in the source, or leave such users out with a scope rule such as `exclude: [{{ attribute: {}, absent: true }}]`",
                quoted_list(sources),
                sources[0]
            ),
            RecordProblem::InvalidActive(_) => "the `active` rule must give true/false, yes/no or 1/0: fix the source value, or wrap the rule in default(…, 'true')".into(),
            RecordProblem::DuplicateUserName { .. } => "user names must be unique (compared case-insensitively): correct one of the two records in the source, or exclude one of them from scope".into(),
            RecordProblem::DuplicateKey { .. } => "source keys must be unique: check the key column or attribute (`source.key`)".into(),
            RecordProblem::TooLong { .. } => format!("values are limited to {MAX_VALUE_BYTES} bytes: fix the source value, or stop mapping it"),
            RecordProblem::UnknownScopeGroup => "check the group's name in the source (a renamed or deleted group would take every member out of scope), then correct `member_of` in the mapping; nothing was planned".into(),
            RecordProblem::UnknownAssignedGroup => "check the group's name in the source (a renamed or deleted group would take every member out of scope), then correct `assign.groups` in the config; nothing was planned".into(),
            RecordProblem::EmptyGroupName => "give the group a name in the source, or change the groups.displayName rule".into(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: ", self.origin, self.record)?;
        match &self.problem {
            RecordProblem::MissingRequired { attributes, .. } => write!(
                f,
                "required attribute{} {} mapped to empty",
                if attributes.len() == 1 { "" } else { "s" },
                quoted_list(attributes)
            )?,
            RecordProblem::InvalidActive(v) if v.is_empty() => {
                write!(f, "the `active` rule gave an empty value")?
            }
            RecordProblem::InvalidActive(v) => {
                write!(f, "the `active` rule gave {v:?}, not true or false")?
            }
            RecordProblem::DuplicateUserName {
                user_name,
                other,
                other_origin,
            } => write!(
                f,
                "userName {} is also the userName of user {} ({other_origin})",
                quoted(user_name),
                quoted(other)
            )?,
            RecordProblem::DuplicateKey { other_origin } => {
                write!(f, "the same key is also used at {other_origin}")?
            }
            RecordProblem::TooLong { attribute, bytes } => {
                write!(f, "`{attribute}` would be {bytes} bytes long")?
            }
            RecordProblem::EmptyGroupName => write!(f, "the group's displayName mapped to empty")?,
            RecordProblem::UnknownScopeGroup => write!(
                f,
                "the users' scope has `member_of` this group, but the source has no group with that name, DN or key"
            )?,
            RecordProblem::UnknownAssignedGroup => write!(
                f,
                "`assign.groups` names this group, but the source has no group with that name, DN or key"
            )?,
        }
        write!(f, "\n  hint: {}", self.hint())
    }
}

impl std::error::Error for RecordError {}

fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim();
    let is = |s: &str| v.eq_ignore_ascii_case(s);
    if is("true") || is("yes") || v == "1" {
        Some(true)
    } else if is("false") || is("no") || v == "0" {
        Some(false)
    } else {
        None
    }
}

impl Mapping {
    /// Reads and compiles a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })?;
        Mapping::parse(&text, &path.display().to_string())
    }

    /// Compiles mapping text; `file_name` names it in errors.
    pub fn parse(text: &str, file_name: &str) -> Result<Mapping, MappingError> {
        compile::compile(text, file_name)
    }

    /// The file the mapping was compiled from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Whether mapping a user looks at the groups it is in (a `member_of`
    /// scope clause, `assign`). When it does not, a source's groups can be
    /// read while its users are mapped, and are needed only to build the
    /// groups after.
    pub fn users_need_groups(&self) -> bool {
        self.assign.is_some() || self.user_scope.member_of().next().is_some()
    }

    /// Every source attribute the mapping reads, once each (compared
    /// case-insensitively, first spelling kept): what LDAP and Graph should request.
    pub fn source_attributes(&self) -> BTreeSet<String> {
        self.source_attributes.clone()
    }

    /// Every SCIM user attribute the mapping writes.
    pub fn target_attributes(&self) -> BTreeSet<UserAttr> {
        self.attributes.iter().map(|(a, _)| *a).collect()
    }

    /// SCIM attributes written only when a user is created.
    pub fn create_only(&self) -> BTreeSet<UserAttr> {
        self.create_only.clone()
    }

    /// The mapping with the config's `assign:` section (which narrows the
    /// users and groups in scope to those assigned).
    pub fn with_assign(mut self, assign: Option<Assign>) -> Mapping {
        self.assign = assign;
        self
    }

    /// The config's `assign:` section, when it has one.
    pub fn assign(&self) -> Option<&Assign> {
        self.assign.as_ref()
    }

    /// Maps one user of the read `dir` (whose groups and assignments decide
    /// `member_of` clauses and `assign`): `None` when the user is out of scope.
    pub fn map_user(
        &self,
        user: &SourceUser,
        dir: &SourceDirectory,
    ) -> Result<Option<DesiredUser>, RecordError> {
        let memberships = self
            .memberships(&dir.groups, dir.assignments.as_ref())
            .map_err(|mut errors| errors.swap_remove(0))?;
        let assigned = self.is_assigned(user.key.as_str(), &user.attrs, &memberships, None);
        match self.map_attrs(user.key.as_str(), &user.attrs, &memberships, assigned) {
            Ok(Some((attrs, active))) => Ok(Some(DesiredUser {
                key: user.key.clone(),
                origin: user.origin.clone(),
                attrs,
                active,
            })),
            Ok(None) => Ok(None),
            Err(problem) => Err(RecordError {
                origin: user.origin.clone(),
                record: RecordId::User(user.key.clone()),
                problem,
            }),
        }
    }

    /// Which assignment and which scope rule put `user` in or out of scope,
    /// in words (`explain`).
    pub fn scope_verdict(&self, user: &SourceUser, dir: &SourceDirectory) -> String {
        let memberships = match self.memberships(&dir.groups, dir.assignments.as_ref()) {
            Ok(m) => m,
            Err(errors) => {
                let what = match errors[0].problem {
                    RecordProblem::UnknownAssignedGroup => "`assign.groups`",
                    _ => "a `member_of` scope clause",
                };
                return format!(
                    "unknown: {what} names a group the source does not have ({})",
                    errors[0].record
                );
            }
        };
        let rec = Record {
            key: user.key.as_str(),
            name: "",
            attrs: &user.attrs,
            memberships: &memberships,
        };
        let verdict = self.user_scope.verdict(&rec);
        let Some(assigned) = memberships.assigned() else {
            return match (verdict.in_scope, verdict.rule) {
                (true, None) => "in scope: the mapping has no scope rules".into(),
                (true, Some(rule)) => format!("in scope: {rule}"),
                (false, rule) => format!("out of scope: {}", rule.unwrap_or_default()),
            };
        };
        let user_name = self.user_name_of(&rec);
        let reasons = assigned.reasons(rec.key, Some(user_name.trim()));
        if reasons.is_empty() {
            return format!("out of scope: {}", assigned.unassigned());
        }
        let reasons = reasons.join(", ");
        match (verdict.in_scope, verdict.rule) {
            (true, None) => format!("in scope: {reasons}"),
            (true, Some(rule)) => format!("in scope: {reasons}; {rule}"),
            (false, rule) => format!("out of scope: {reasons}, but {}", rule.unwrap_or_default()),
        }
    }

    /// Resolves the `member_of` scope clauses and the `assign:` section
    /// against a read's groups (and the source's own assignments). A group
    /// either names that the source does not have fails the read: its members
    /// would all drop out of scope, which looks exactly like a mass departure.
    fn memberships<'d>(
        &'d self,
        groups: &'d [SourceGroup],
        source: Option<&'d SourceAssignments>,
    ) -> Result<Memberships<'d>, Vec<RecordError>> {
        Memberships::resolve(
            self.user_scope.member_of(),
            self.assign.as_ref(),
            groups,
            source,
        )
        .map_err(|missing| {
            let Missing {
                member_of,
                assigned_groups,
            } = missing;
            let assign_file = self.assign.as_ref().map_or(&self.file, |a| &a.file);
            let unknown = |file: &Arc<str>, problem: RecordProblem, name: Box<str>| RecordError {
                origin: Origin::new(file.clone()),
                record: RecordId::Group(GroupKey::new(name)),
                problem,
            };
            member_of
                .into_iter()
                .map(|name| unknown(&self.file, RecordProblem::UnknownScopeGroup, name))
                .chain(
                    assigned_groups.into_iter().map(|name| {
                        unknown(assign_file, RecordProblem::UnknownAssignedGroup, name)
                    }),
                )
                .collect()
        })
    }

    /// The userName `rec` maps to (empty when none).
    fn user_name_of<'a>(&'a self, rec: &Record<'a>) -> Cow<'a, str> {
        self.attributes
            .iter()
            .find(|(attr, _)| *attr == UserAttr::UserName)
            .map_or(Cow::Borrowed(""), |(_, expr)| expr.eval(rec))
    }

    /// Whether `assign` (if any) holds for a user: through an assigned group,
    /// by the source, or named in `assign.users` by key or userName. `found`
    /// records which `assign.users` entries named someone.
    fn is_assigned(
        &self,
        key: &str,
        attrs: &SourceAttrs,
        memberships: &Memberships<'_>,
        found: Option<&mut Vec<bool>>,
    ) -> bool {
        let Some(assigned) = memberships.assigned() else {
            return true;
        };
        let mut yes = memberships.through_groups(key);
        if assigned.names_users() {
            let rec = Record {
                key,
                name: "",
                attrs,
                memberships,
            };
            let user_name = self.user_name_of(&rec);
            let entries = assigned.named_entries(key, Some(user_name.trim()));
            if let Some(found) = found {
                for i in &entries {
                    found[*i] = true;
                }
            }
            yes |= !entries.is_empty();
        }
        yes
    }

    /// Maps one group's display name by the mapping alone (not `assign`):
    /// `None` when the group is out of the mapping's scope.
    pub fn map_group(&self, group: &SourceGroup) -> Result<Option<String>, RecordError> {
        if self.group_scope_of(group, None) != GroupScope::Pushed {
            return Ok(None);
        }
        self.group_display_name(group)
            .map(Some)
            .map_err(|problem| RecordError {
                origin: group.origin.clone(),
                record: RecordId::Group(group.key.clone()),
                problem,
            })
    }

    /// Whether a group is pushed: in the mapping's group scope and, with
    /// `assign` (`assigned` given), assigned or added by an include rule.
    fn group_scope_of(&self, group: &SourceGroup, assigned: Option<bool>) -> GroupScope {
        let empty = SourceAttrs::new();
        let rec = group_record(group, &empty);
        match assigned {
            None if self.group_scope.contains(&rec) => GroupScope::Pushed,
            Some(_) if self.group_scope.excludes(&rec) => GroupScope::Out,
            Some(true) => GroupScope::Pushed,
            Some(false) if self.group_scope.includes(&rec) => GroupScope::Pushed,
            Some(false) => GroupScope::Unassigned,
            None => GroupScope::Out,
        }
    }

    /// The group's display name, by the `groups.displayName` rule.
    fn group_display_name(&self, group: &SourceGroup) -> Result<String, RecordProblem> {
        let empty = SourceAttrs::new();
        let rec = group_record(group, &empty);
        let name = self.group_name.eval(&rec);
        if name.trim().is_empty() {
            return Err(RecordProblem::EmptyGroupName);
        }
        Ok(name.into_owned())
    }

    /// A user's attributes and whether it is active: `None` when it is not
    /// `assigned` or out of the mapping's scope.
    fn map_attrs(
        &self,
        key: &str,
        attrs: &SourceAttrs,
        memberships: &Memberships<'_>,
        assigned: bool,
    ) -> Result<Option<(UserAttrs, bool)>, RecordProblem> {
        let rec = Record {
            key,
            name: "",
            attrs,
            memberships,
        };
        if !assigned || !self.user_scope.contains(&rec) {
            return Ok(None);
        }
        // Evaluated first, packed once: a packed insert rebuilds the buffer.
        let mut values: Vec<(UserAttr, Cow<'_, str>)> = Vec::with_capacity(self.attributes.len());
        for (attr, expr) in &self.attributes {
            let value = expr.eval(&rec);
            if value.len() > MAX_VALUE_BYTES {
                return Err(RecordProblem::TooLong {
                    attribute: *attr,
                    bytes: value.len(),
                });
            }
            if !value.trim().is_empty() {
                values.push((*attr, value));
            }
        }
        let missing: Vec<UserAttr> = self
            .required
            .iter()
            .filter(|a| !values.iter().any(|(v, _)| v == *a))
            .copied()
            .collect();
        if !missing.is_empty() {
            let mut sources = BTreeSet::new();
            for (attr, expr) in &self.attributes {
                if missing.contains(attr) {
                    expr.collect_attrs(&mut sources);
                }
            }
            return Err(RecordProblem::MissingRequired {
                attributes: missing,
                sources: sources.into_iter().collect(),
            });
        }
        let active = match &self.active {
            None => true,
            Some(rule) => {
                let value = rule.eval(&rec);
                parse_bool(&value)
                    .ok_or_else(|| RecordProblem::InvalidActive(value.into_owned()))?
            }
        };
        Ok(Some((values.into_iter().collect(), active)))
    }

    /// Maps a whole source read into the desired state, sorted by key. Every
    /// record error is collected; any error fails the whole build, since
    /// provisioning a partial directory would deprovision the rest.
    pub fn build(&self, dir: SourceDirectory) -> Result<Desired, Vec<RecordError>> {
        let SourceDirectory {
            users,
            groups,
            unresolved_members,
            assignments,
        } = dir;
        let mut mapper = self.user_mapper(&groups, assignments.as_ref(), users.len())?;
        for user in users {
            mapper.push(user);
        }
        let mapped = mapper.finish();
        self.build_groups(mapped, groups, unresolved_members)
    }

    /// Maps users one at a time, as a source hands them over (so a large
    /// directory's records need not all be held at once); `groups` are the
    /// read's groups and `source` its own assignments, for `member_of` scope
    /// clauses and `assign`. Then [`Mapping::build_groups`] completes the
    /// desired state.
    pub fn user_mapper<'m, 'g>(
        &'m self,
        groups: &'g [SourceGroup],
        source: Option<&'g SourceAssignments>,
        expected_users: usize,
    ) -> Result<UserMapper<'m, 'g>, Vec<RecordError>>
    where
        'm: 'g,
    {
        let memberships = self.memberships(groups, source)?;
        let assigned_groups = memberships.assigned().map(|a| AssignedGroups {
            keys: a.group_keys(),
            reason: a.unassigned_group(),
        });
        Ok(UserMapper {
            mapping: self,
            named_found: vec![false; self.assign.as_ref().map_or(0, |a| a.users.len())],
            memberships,
            mapped: MappedUsers {
                users: Vec::with_capacity(expected_users),
                out_of_scope: Vec::new(),
                unassigned: Vec::new(),
                errors: Vec::new(),
                assigned_groups,
                warnings: Vec::new(),
            },
        })
    }

    /// The desired state from users mapped by a [`UserMapper`] and the read's
    /// groups: duplicate userNames and keys found, group names mapped, members
    /// kept only when they are in-scope users. Every record error is collected;
    /// any error fails the whole build, since provisioning a partial directory
    /// would deprovision the rest.
    pub fn build_groups(
        &self,
        mapped: MappedUsers,
        source_groups: Vec<SourceGroup>,
        unresolved_members: usize,
    ) -> Result<Desired, Vec<RecordError>> {
        let MappedUsers {
            mut users,
            out_of_scope,
            unassigned,
            mut errors,
            assigned_groups,
            warnings,
        } = mapped;

        errors.extend(duplicate_user_names(&users));
        if !users.is_sorted_by(|a, b| a.key <= b.key) {
            users.sort_by(|a, b| a.key.cmp(&b.key));
        }
        for pair in users.windows(2) {
            if pair[0].key == pair[1].key {
                errors.push(RecordError {
                    origin: pair[1].origin.clone(),
                    record: RecordId::User(pair[1].key.clone()),
                    problem: RecordProblem::DuplicateKey {
                        other_origin: pair[0].origin.clone(),
                    },
                });
            }
        }

        let mut built = self.pushed_groups(&users, source_groups, assigned_groups.as_ref());
        built.ignored_members += unresolved_members;
        errors.append(&mut built.errors);
        let mut groups = built.groups;
        let held_groups = hold_shared_names(&mut groups, built.shared_names);
        groups.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        for pair in groups.windows(2) {
            if pair[0].0.key == pair[1].0.key {
                errors.push(RecordError {
                    origin: pair[1].1.clone(),
                    record: RecordId::Group(pair[1].0.key.clone()),
                    problem: RecordProblem::DuplicateKey {
                        other_origin: pair[0].1.clone(),
                    },
                });
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Desired {
            users,
            groups: groups.into_iter().map(|(g, _)| g).collect(),
            // Bulk-built from (usually already sorted) keys: far cheaper than
            // inserting one by one.
            out_of_scope: out_of_scope.into_iter().collect(),
            unassigned_users: unassigned.into_iter().collect(),
            create_only: self.create_only.clone(),
            ignored_members: built.ignored_members,
            held_groups,
            unassigned_groups: built.unassigned,
            warnings,
        })
    }

    /// The groups to push, their names mapped and their members kept only
    /// when they are in-scope `users`; groups sharing a display name set
    /// apart; with `assign`, the groups left out because nothing assigns them.
    fn pushed_groups(
        &self,
        users: &[DesiredUser],
        source_groups: Vec<SourceGroup>,
        assigned: Option<&AssignedGroups>,
    ) -> PushedGroups {
        let mut out = PushedGroups {
            groups: Vec::with_capacity(source_groups.len()),
            ..PushedGroups::default()
        };
        let mut names: HashMap<GroupName, usize> = HashMap::with_capacity(source_groups.len());
        let in_scope = if source_groups.iter().any(|g| !g.members.is_empty()) {
            UserIndex::of(users)
        } else {
            UserIndex::default()
        };
        for group in source_groups {
            match self.group_scope_of(&group, assigned.map(|a| a.keys.contains(&group.key))) {
                GroupScope::Pushed => {}
                GroupScope::Out => continue,
                GroupScope::Unassigned => {
                    let reason = assigned.map_or("", |a| a.reason);
                    out.unassigned.insert(group.key, reason.to_string());
                    continue;
                }
            }
            let display_name = match self.group_display_name(&group) {
                Ok(name) => name,
                Err(problem) => {
                    out.errors.push(RecordError {
                        origin: group.origin.clone(),
                        record: RecordId::Group(group.key.clone()),
                        problem,
                    });
                    continue;
                }
            };
            match names.entry(GroupName::new(display_name.as_str())) {
                Entry::Occupied(first) => {
                    // Common in Active Directory (a `cn` is unique only within
                    // its OU): a problem of these groups, not of the whole read.
                    out.shared_names
                        .entry(*first.get())
                        .or_default()
                        .push((group.key, group.origin));
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(out.groups.len());
                }
            }
            out.groups.push((
                DesiredGroup {
                    key: group.key,
                    display_name: display_name.into(),
                    members: group.members,
                },
                group.origin,
            ));
        }
        out.ignored_members +=
            keep_user_members(&mut out.groups, users, &in_scope, MEMBERS_PER_THREAD);
        out
    }
}

/// Members below this many are kept on the calling thread alone.
const MEMBERS_PER_THREAD: usize = 100_000;

/// Keeps each group's members that are in-scope `users`, sorted and once
/// each, and returns how many were dropped. Each kept member shares its
/// user's key (one copy of a long key, however many groups name it). At a
/// million users the groups hold millions of members, each looked up in
/// `in_scope`: the groups are shared out between the machine's cores, a
/// thread for every `per_thread` members at most.
fn keep_user_members(
    groups: &mut [(DesiredGroup, Origin)],
    users: &[DesiredUser],
    in_scope: &UserIndex,
    per_thread: usize,
) -> usize {
    let keep = |groups: &mut [(DesiredGroup, Origin)]| -> usize {
        let mut dropped = 0;
        for (group, _) in groups {
            let members = &mut group.members;
            members.sort_unstable();
            members.dedup();
            let before = members.len();
            members.retain_mut(|m| match in_scope.find(users, m) {
                Some(user) => {
                    *m = user.key.clone();
                    true
                }
                None => false,
            });
            dropped += before - members.len();
        }
        dropped
    };
    let total: usize = groups.iter().map(|(g, _)| g.members.len()).sum();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = cores.min(total / per_thread.max(1)).max(1);
    if threads == 1 || groups.len() < 2 {
        return keep(groups);
    }
    // Slices of about equal members, not of equal groups: one large group
    // (everyone) is common.
    let share = total.div_ceil(threads);
    let mut slices = Vec::with_capacity(threads);
    let mut rest = groups;
    while !rest.is_empty() {
        let mut members = 0;
        let end = rest
            .iter()
            .position(|(g, _)| {
                members += g.members.len();
                members >= share
            })
            .map_or(rest.len(), |i| i + 1);
        let (slice, after) = rest.split_at_mut(end);
        slices.push(slice);
        rest = after;
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = slices
            .into_iter()
            .map(|slice| scope.spawn(|| keep(slice)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    })
}

/// What the group rules see of a group: its key and name (`empty`: groups
/// have no other attributes).
fn group_record<'a>(group: &'a SourceGroup, empty: &'a SourceAttrs) -> Record<'a> {
    Record {
        key: group.key.as_str(),
        name: &group.name,
        attrs: empty,
        memberships: &NO_MEMBERSHIPS,
    }
}

/// Whether a source group is pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupScope {
    Pushed,
    /// Out of the mapping's group scope.
    Out,
    /// In the mapping's group scope, but nothing assigns it.
    Unassigned,
}

/// The groups `assign` pushes, and why the others are left out.
#[derive(Debug)]
struct AssignedGroups {
    keys: FastSet<GroupKey>,
    reason: &'static str,
}

/// What [`Mapping::pushed_groups`] made of a read's groups.
#[derive(Default)]
struct PushedGroups {
    groups: Vec<(DesiredGroup, Origin)>,
    /// The first group with a name (an index into `groups`) → the later ones.
    shared_names: BTreeMap<usize, Vec<(GroupKey, Origin)>>,
    unassigned: BTreeMap<GroupKey, String>,
    ignored_members: usize,
    errors: Vec<RecordError>,
}

/// The positions of users by key, to tell whether a group member is an
/// in-scope user. Hashing the keys once beats a binary search per member over
/// large, pointer-heavy user records; and a table of 4-byte positions (the keys
/// stay where they are) takes a quarter of a set of keys' 16 bytes a slot.
#[derive(Default)]
struct UserIndex {
    hasher: FastHash,
    positions: hashbrown::HashTable<u32>,
}

impl UserIndex {
    fn of(users: &[DesiredUser]) -> UserIndex {
        let hasher = FastHash::default();
        let hash = |i: u32| hasher.hash_one(users[i as usize].key.as_str());
        let mut positions = hashbrown::HashTable::with_capacity(users.len());
        for i in 0..users.len() as u32 {
            positions.insert_unique(hash(i), i, |&j| hash(j));
        }
        UserIndex { hasher, positions }
    }

    /// The user with `key`, if any.
    fn find<'a>(&self, users: &'a [DesiredUser], key: &SourceKey) -> Option<&'a DesiredUser> {
        self.positions
            .find(self.hasher.hash_one(key.as_str()), |&i| {
                users[i as usize].key == *key
            })
            .map(|&i| &users[i as usize])
    }
}

/// A user whose userName (compared folded) an earlier user already has, against
/// the first one that has it, in source order: the later record is the one
/// reported. Found by sorting digests of the folded names (8 bytes a user)
/// rather than in a hash map of names, which at a million users was one of the
/// largest allocations of a cycle.
fn duplicate_user_names(users: &[DesiredUser]) -> Vec<RecordError> {
    let hasher = FastHash::default();
    let digest = |u: &DesiredUser| hasher.hash_one(u.user_name_ref());
    // The digests alone first (8 bytes a user); only the users whose digest
    // repeats are digested again, with their positions.
    let mut all: Vec<u64> = users.iter().map(digest).collect();
    all.sort_unstable();
    let repeated: FastSet<u64> = all
        .chunk_by(|a, b| a == b)
        .filter(|run| run.len() > 1)
        .map(|run| run[0])
        .collect();
    drop(all);
    if repeated.is_empty() {
        return Vec::new();
    }
    let mut digests: Vec<(u64, u32)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (digest(u), i as u32))
        .filter(|(d, _)| repeated.contains(d))
        .collect();
    digests.sort_unstable();
    let mut found: Vec<(usize, usize)> = Vec::new();
    for run in digests
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
    {
        // Sorted by position, so the first equal name is the first occurrence.
        for (j, &(_, later)) in run.iter().enumerate().skip(1) {
            let later = later as usize;
            let name = users[later].user_name_ref();
            if let Some(&(_, first)) = run[..j]
                .iter()
                .find(|(_, k)| users[*k as usize].user_name_ref() == name)
            {
                found.push((later, first as usize));
            }
        }
    }
    found.sort_unstable();
    found
        .into_iter()
        .map(|(later, first)| {
            let (user, first) = (&users[later], &users[first]);
            RecordError {
                origin: user.origin.clone(),
                record: RecordId::User(user.key.clone()),
                problem: RecordProblem::DuplicateUserName {
                    user_name: user.user_name().to_string(),
                    other: first.key.clone(),
                    other_origin: first.origin.clone(),
                },
            }
        })
        .collect()
}

/// Maps a read's users one at a time (see [`Mapping::user_mapper`]).
pub struct UserMapper<'m, 'g> {
    mapping: &'m Mapping,
    memberships: Memberships<'g>,
    /// Which `assign.users` entries named a user of the read so far.
    named_found: Vec<bool>,
    mapped: MappedUsers,
}

impl UserMapper<'_, '_> {
    /// Maps one user: kept when in scope, noted when out of scope, its error
    /// collected otherwise. The source record is not kept.
    pub fn push(&mut self, user: SourceUser) {
        let key = user.key.as_str();
        let assigned = self.mapping.is_assigned(
            key,
            &user.attrs,
            &self.memberships,
            Some(&mut self.named_found),
        );
        let mapped = &mut self.mapped;
        match self
            .mapping
            .map_attrs(key, &user.attrs, &self.memberships, assigned)
        {
            Ok(Some((attrs, active))) => mapped.users.push(DesiredUser {
                key: user.key,
                origin: user.origin,
                attrs,
                active,
            }),
            Ok(None) => {
                if !assigned {
                    mapped.unassigned.push(user.key.clone());
                }
                mapped.out_of_scope.push(user.key);
            }
            Err(problem) => mapped.errors.push(RecordError {
                origin: user.origin,
                record: RecordId::User(user.key),
                problem,
            }),
        }
    }

    /// Maps one user whose groups the source names with it (positions in
    /// the groups given to [`Mapping::user_mapper`], each list sorted): for a
    /// source that resolves members only as its users arrive, so those
    /// groups' member lists are still empty here.
    pub fn push_in(&mut self, user: SourceUser, groups: crate::model::GroupsOf<&[usize]>) {
        self.memberships.set_current(user.key.as_str(), groups);
        self.push(user);
        self.memberships.clear_current();
    }

    /// The users mapped so far, in the order given. An `assign.users` entry
    /// that named none of them is a warning, not an error: most often the
    /// person left the directory, and a leaver is removed as any other is
    /// (one user, counted by the removal guard), while failing the cycle
    /// would hold back everyone else until the config is edited. A misspelt
    /// entry is warned of every cycle, in the plan's warnings: `plan` and a
    /// pull-request comment show it before anything is applied, and a sync's
    /// log and summary carry it.
    pub fn finish(mut self) -> MappedUsers {
        if let (Some(assigned), Some(assign)) =
            (self.memberships.assigned(), self.mapping.assign.as_ref())
        {
            for (i, _) in self.named_found.iter().enumerate().filter(|(_, f)| !**f) {
                self.mapped
                    .warnings
                    .push(unknown_named_user(assigned, assign, i));
            }
        }
        self.mapped
    }
}

fn unknown_named_user(assigned: &Assigned<'_>, assign: &Assign, i: usize) -> String {
    format!(
        "{}: `assign.users` names \"{}\", which the source does not have (they left, or the key or userName is misspelt): nothing assigns them, so an account idsync made for them is removed per remove_action; take the entry out of `assign.users`, or correct it",
        assign.file,
        assigned.named(i)
    )
}

/// Users mapped one by one, before the groups complete the desired state.
#[derive(Debug, Default)]
pub struct MappedUsers {
    users: Vec<DesiredUser>,
    out_of_scope: Vec<SourceKey>,
    /// Out of scope because nothing assigns them (also in `out_of_scope`).
    unassigned: Vec<SourceKey>,
    errors: Vec<RecordError>,
    /// With `assign`: the groups it pushes.
    assigned_groups: Option<AssignedGroups>,
    /// What the read's mapping warns of (see [`UserMapper::finish`]).
    warnings: Vec<String>,
}

impl MappedUsers {
    /// Users read (in scope, out of scope or in error).
    pub fn read(&self) -> usize {
        self.users.len() + self.out_of_scope.len() + self.errors.len()
    }
}

/// Takes every group whose display name another group shares out of `groups`,
/// and says why each is held: none of them can be told apart in the target.
fn hold_shared_names(
    groups: &mut Vec<(DesiredGroup, Origin)>,
    shared_names: BTreeMap<usize, Vec<(GroupKey, Origin)>>,
) -> Vec<HeldGroup> {
    if shared_names.is_empty() {
        return Vec::new();
    }
    let mut held = Vec::new();
    for (first, others) in &shared_names {
        let (group, origin) = &groups[*first];
        let mut all = vec![(group.key.clone(), origin.clone())];
        all.extend(others.iter().cloned());
        let places = all
            .iter()
            .map(|(_, origin)| origin.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        for (key, origin) in &all {
            held.push(HeldGroup {
                key: key.clone(),
                origin: origin.clone(),
                reason: format!(
                    "{} groups share the displayName {}: {places}; none of them is changed in the target this cycle (not created, renamed or deleted, memberships kept as they are); rename all but one in the source, exclude them with groups.scope, or map a name that is unique (Active Directory: group_name_attribute: sAMAccountName)",
                    all.len(),
                    quoted(&group.display_name)
                ),
            });
        }
    }
    let mut index = 0;
    groups.retain(|_| {
        let keep = !shared_names.contains_key(&index);
        index += 1;
        keep
    });
    held
}

#[cfg(test)]
mod assign_tests;
#[cfg(test)]
mod tests;

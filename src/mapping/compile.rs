//! Compiling a mapping file: the file as written (stage one, with the position of
//! every value for error messages), then the checked, compiled [`Mapping`]
//! (stage two). Every mistake found is reported, not just the first.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use regex::RegexBuilder;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::expr::{self, Expr, ExprError, RecordKind};
use super::scope::{Clause, Scope, Subject, Test};
use super::{Diagnostic, Mapping, MappingError};
use crate::model::{UserAttr, fold};
use crate::yaml::{find_key, unknown_field};

pub(super) fn compile(text: &str, file_name: &str) -> Result<Mapping, MappingError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let file: Arc<str> = Arc::from(file_name);
    let options = serde_saphyr::Options {
        with_snippet: false,
        ..serde_saphyr::Options::default()
    };
    let raw: RawMapping = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| MappingError::Invalid(vec![yaml_diagnostic(&file, text, &e)]))?;
    let mut c = Compiler {
        src: text,
        file,
        diagnostics: Vec::new(),
        member_of_slots: 0,
    };
    let mapping = c.mapping(raw);
    if c.diagnostics.is_empty() {
        Ok(mapping)
    } else {
        c.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(MappingError::Invalid(c.diagnostics))
    }
}

// ---------------------------------------------------------------------------
// The file as written (stage one), with positions for error messages.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    users: Spanned<RawUsers>,
    #[serde(default)]
    groups: Option<RawGroups>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsers {
    attributes: Spanned<Entries>,
    #[serde(default)]
    active: Option<Spanned<RawRule>>,
    #[serde(default)]
    required: Vec<Spanned<String>>,
    #[serde(default)]
    scope: Option<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroups {
    #[serde(rename = "displayName", default)]
    display_name: Option<Spanned<RawRule>>,
    #[serde(default)]
    scope: Option<RawScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    include: Vec<Spanned<RawClause>>,
    #[serde(default)]
    exclude: Vec<Spanned<RawClause>>,
}

/// A scope rule: either one clause, or `all:` with several.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClause {
    all: Option<Vec<Spanned<RawClause>>>,
    attribute: Option<Spanned<String>>,
    equals: Option<Spanned<String>>,
    not_equals: Option<Spanned<String>>,
    regex: Option<Spanned<String>>,
    present: Option<Spanned<bool>>,
    absent: Option<Spanned<bool>>,
    ignore_case: Option<Spanned<bool>>,
    member_of: Option<Spanned<Vec<String>>>,
}

/// `users.attributes`, in file order, with the position of each key.
struct Entries(Vec<(Spanned<String>, Spanned<RawRule>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from SCIM attribute names to rules")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A value rule: a bare source attribute name, or a map.
enum RawRule {
    From(String),
    Map(Box<RawRuleMap>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleMap {
    expr: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    on: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRule;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a source attribute name or a map with one of expr, from, template, value",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRule, E> {
                Ok(RawRule::From(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRule, A::Error> {
                RawRuleMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|m| RawRule::Map(Box::new(m)))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Compilation (stage two).

fn yaml_diagnostic(file: &Arc<str>, src: &str, err: &serde_saphyr::Error) -> Diagnostic {
    let err = err.without_snippet();
    let (mut line, mut column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = err.to_string();
    let suffix = format!(" at line {line}, column {column}");
    if let Some(stripped) = message.strip_suffix(&suffix) {
        message.truncate(stripped.len());
    }
    let hint = if let Some(field) = unknown_field(&message) {
        // The parser reports the enclosing map; point at the key itself.
        if let Some((l, c)) = find_key(src, field, line, column) {
            (line, column) = (l, c);
        }
        "remove or rename this key; the valid keys are listed above"
    } else if message.contains("missing field") {
        "add the missing key; see the mapping file format in the README"
    } else if message.contains("duplicate mapping key") {
        "each key may appear once in a map: remove one of them"
    } else if message.contains("end of input") {
        "the file is empty or cut short; a mapping needs at least `users: { attributes: { userName: … } }`"
    } else {
        "fix the YAML here; see the mapping file format in the README"
    };
    Diagnostic {
        file: file.clone(),
        line,
        column,
        message,
        hint: hint.into(),
    }
}

struct Compiler<'s> {
    src: &'s str,
    file: Arc<str>,
    diagnostics: Vec<Diagnostic>,
    /// `member_of` clauses numbered so far (each gets the next slot).
    member_of_slots: usize,
}

fn attribute_names() -> String {
    UserAttr::all()
        .map(UserAttr::name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Compiler<'_> {
    fn error_at(&mut self, line: u64, column: u64, message: String, hint: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message,
            hint,
        });
    }

    fn error(&mut self, at: Location, message: impl Into<String>, hint: impl Into<String>) {
        self.error_at(at.line(), at.column(), message.into(), hint.into());
    }

    /// Reports an error inside an expression at its exact character when the
    /// YAML scalar is a verbatim copy of the text up to there (plain or quoted
    /// without escapes before it); otherwise at the scalar's start.
    fn expr_error(&mut self, value: &Spanned<String>, e: ExprError) {
        let at = value.referenced;
        let (line, mut column) = (at.line(), at.column());
        if let Some(raw_line) = self.src.lines().nth((line as usize).saturating_sub(1)) {
            let raw = raw_line.chars().skip((column as usize).saturating_sub(1));
            let mut raw = raw.peekable();
            let skip = usize::from(matches!(raw.peek(), Some('"' | '\'')));
            let verbatim = raw
                .skip(skip)
                .take(e.offset)
                .eq(value.value.chars().take(e.offset));
            if verbatim {
                column += (skip + e.offset) as u64;
            }
        }
        let message = format!("in `{}`: {}", value.value, e.message);
        self.error_at(line, column, message, e.hint);
    }

    fn expression(
        &mut self,
        src: &Spanned<String>,
        kind: RecordKind,
        template: bool,
    ) -> Option<Expr> {
        let compiled = if template {
            expr::compile_template(&src.value, kind)
        } else {
            expr::compile(&src.value, kind)
        };
        compiled.map_err(|e| self.expr_error(src, e)).ok()
    }

    fn reference(&mut self, name: &str, at: Location, kind: RecordKind) -> Option<Expr> {
        match (name, kind) {
            ("", _) => {
                self.error(at, "empty attribute name", "name a source attribute");
                None
            }
            ("key", _) => Some(Expr::Key),
            ("name", RecordKind::Group) => Some(Expr::Name),
            (other, RecordKind::Group) => {
                self.error(
                    at,
                    format!("unknown group attribute `{other}`"),
                    "groups have only `name` (the group's name in the source) and `key`",
                );
                None
            }
            (other, RecordKind::User) => Some(Expr::Attr(other.into())),
        }
    }

    /// Compiles a value rule; the flag is true for `on: create`.
    fn rule(&mut self, rule: &Spanned<RawRule>, kind: RecordKind) -> Option<(Expr, bool)> {
        let map = match &rule.value {
            RawRule::From(name) => {
                return Some((self.reference(name, rule.referenced, kind)?, false));
            }
            RawRule::Map(map) => map,
        };
        let create_only = match &map.on {
            None => false,
            Some(on) if on.value == "always" => false,
            Some(on) if on.value == "create" => true,
            Some(on) => {
                self.error(
                    on.referenced,
                    format!("unknown `on: {}`", on.value),
                    "write `on: always` (kept in step, the default) or `on: create` (written only when the user is created)",
                );
                false
            }
        };
        let expr = match (&map.expr, &map.from, &map.template, &map.value) {
            (Some(e), None, None, None) => self.expression(e, kind, false)?,
            (None, Some(f), None, None) => self.reference(&f.value, f.referenced, kind)?,
            (None, None, Some(t), None) => self.expression(t, kind, true)?,
            (None, None, None, Some(v)) => Expr::Lit(v.value.as_str().into()),
            _ => {
                self.error(
                    rule.referenced,
                    "a rule needs exactly one of `expr`, `from`, `template`, `value`",
                    "e.g. { from: mail }, { expr: \"lower(mail)\" }, { template: \"{{ givenName }} {{ sn }}\" } or { value: \"Acme\" }",
                );
                return None;
            }
        };
        Some((expr, create_only))
    }

    fn scope(&mut self, raw: Option<RawScope>, kind: RecordKind) -> Scope {
        let Some(raw) = raw else {
            return Scope::default();
        };
        let rules = |list: Vec<Spanned<RawClause>>, c: &mut Self| -> Vec<Vec<Clause>> {
            list.into_iter()
                .filter_map(|rule| c.scope_rule(rule, kind))
                .collect()
        };
        Scope {
            include: rules(raw.include, self),
            exclude: rules(raw.exclude, self),
        }
    }

    fn scope_rule(
        &mut self,
        mut rule: Spanned<RawClause>,
        kind: RecordKind,
    ) -> Option<Vec<Clause>> {
        let Some(all) = rule.value.all.take() else {
            return self.clause(rule, kind).map(|c| vec![c]);
        };
        let r = &rule.value;
        let has_clause = r.attribute.is_some()
            || r.equals.is_some()
            || r.not_equals.is_some()
            || r.regex.is_some()
            || r.present.is_some()
            || r.absent.is_some()
            || r.ignore_case.is_some()
            || r.member_of.is_some();
        if has_clause {
            self.error(
                rule.referenced,
                "a scope rule has either `all:` or a single clause, not both",
                "move this clause into the `all:` list",
            );
            return None;
        }
        if all.is_empty() {
            self.error(
                rule.referenced,
                "`all:` has no clauses",
                "list clauses such as { attribute: department, equals: Sales }",
            );
            return None;
        }
        let mut clauses = Vec::with_capacity(all.len());
        let mut ok = true;
        for c in all {
            if c.value.all.is_some() {
                self.error(
                    c.referenced,
                    "`all:` cannot be nested",
                    "list the clauses directly in the outer `all:`",
                );
                ok = false;
            } else if let Some(c) = self.clause(c, kind) {
                clauses.push(c);
            } else {
                ok = false;
            }
        }
        ok.then_some(clauses)
    }

    fn clause(&mut self, raw: Spanned<RawClause>, kind: RecordKind) -> Option<Clause> {
        const TESTS: &str = "equals, not_equals, regex, present: true, absent: true";
        let at = raw.referenced;
        let mut c = raw.value;
        if let Some(groups) = c.member_of.take() {
            return self.member_of_clause(at, groups, &c, kind);
        }
        let Some(attribute) = c.attribute else {
            self.error(
                at,
                "a scope clause needs `attribute:`",
                "e.g. { attribute: department, equals: Sales }",
            );
            return None;
        };
        let subject = match self.reference(&attribute.value, attribute.referenced, kind)? {
            Expr::Key => Subject::Key,
            Expr::Name => Subject::Name,
            Expr::Attr(name) => Subject::Attr(name),
            _ => unreachable!("references are attributes or built-ins"),
        };
        let ignore_case = c.ignore_case.as_ref().is_some_and(|s| s.value);
        let tests = [
            c.equals.is_some(),
            c.not_equals.is_some(),
            c.regex.is_some(),
            c.present.is_some(),
            c.absent.is_some(),
        ];
        if tests.iter().filter(|t| **t).count() != 1 {
            self.error(
                at,
                format!(
                    "a scope clause needs exactly one test on `{}`",
                    attribute.value
                ),
                format!("use one of: {TESTS}"),
            );
            return None;
        }
        let text = |s: Spanned<String>| -> Box<str> {
            if ignore_case {
                fold(&s.value).into()
            } else {
                s.value.into()
            }
        };
        let test = if let Some(v) = c.equals {
            Test::Equals {
                text: text(v),
                folded: ignore_case,
            }
        } else if let Some(v) = c.not_equals {
            Test::NotEquals {
                text: text(v),
                folded: ignore_case,
            }
        } else if let Some(pattern) = c.regex {
            match RegexBuilder::new(&pattern.value)
                .case_insensitive(ignore_case)
                .build()
            {
                Ok(re) => Test::Regex(re),
                Err(e) => {
                    self.error(
                        pattern.referenced,
                        format!("invalid regular expression {:?}", pattern.value),
                        format!(
                            "fix the pattern (Rust regex syntax): {}",
                            e.to_string().lines().last().unwrap_or_default().trim()
                        ),
                    );
                    return None;
                }
            }
        } else {
            let want = match (c.present, c.absent) {
                (Some(p), _) => p.value,
                (_, Some(a)) => !a.value,
                _ => unreachable!("one test is set"),
            };
            if let Some(ic) = c.ignore_case.filter(|ic| ic.value) {
                self.error(
                    ic.referenced,
                    "`ignore_case` has no effect on present/absent",
                    "remove `ignore_case`",
                );
            }
            Test::Present(want)
        };
        Some(Clause::Attr { subject, test })
    }

    /// `{ member_of: [group, …] }`: users only, and a clause of its own.
    fn member_of_clause(
        &mut self,
        at: Location,
        groups: Spanned<Vec<String>>,
        rest: &RawClause,
        kind: RecordKind,
    ) -> Option<Clause> {
        if kind == RecordKind::Group {
            self.error(
                at,
                "`member_of` is a user scope clause",
                "scope groups by `name` or `key` instead",
            );
            return None;
        }
        let mixed = rest.attribute.is_some()
            || rest.equals.is_some()
            || rest.not_equals.is_some()
            || rest.regex.is_some()
            || rest.present.is_some()
            || rest.absent.is_some()
            || rest.ignore_case.is_some();
        if mixed {
            self.error(
                at,
                "`member_of` is a clause of its own",
                "put attribute tests in another clause, together under `all:` if both must hold",
            );
            return None;
        }
        let names: Vec<Box<str>> = groups
            .value
            .iter()
            .map(|g| g.trim())
            .filter(|g| !g.is_empty())
            .map(Box::from)
            .collect();
        if names.is_empty() {
            self.error(
                groups.referenced,
                "`member_of` lists no group",
                "name groups by display name or key, e.g. member_of: [Atlassian users]",
            );
            return None;
        }
        let slot = self.member_of_slots;
        self.member_of_slots += 1;
        Some(Clause::MemberOf {
            slot,
            groups: names,
        })
    }

    fn mapping(&mut self, raw: RawMapping) -> Mapping {
        let users = raw.users.value;
        let mut attributes: Vec<(UserAttr, Expr)> = Vec::new();
        let mut positions: Vec<(UserAttr, Location)> = Vec::new();
        let mut create_only = BTreeSet::new();
        for (name, rule) in &users.attributes.value.0 {
            let Some(attr) = UserAttr::parse(&name.value) else {
                let suggestion = UserAttr::all()
                    .find(|a| a.name().eq_ignore_ascii_case(&name.value))
                    .map(|a| format!("did you mean `{a}`? "))
                    .unwrap_or_default();
                self.error(
                    name.referenced,
                    format!("unknown SCIM attribute `{}`", name.value),
                    format!("{suggestion}valid attributes are: {}", attribute_names()),
                );
                continue;
            };
            if let Some((_, first)) = positions.iter().find(|(a, _)| *a == attr) {
                let first = *first;
                self.error(
                    name.referenced,
                    format!("`{attr}` is mapped twice (first at line {})", first.line()),
                    "keep one rule per SCIM attribute (`email` and `emails` are the same)",
                );
                continue;
            }
            positions.push((attr, name.referenced));
            let Some((expr, on_create)) = self.rule(rule, RecordKind::User) else {
                continue;
            };
            if on_create {
                if attr == UserAttr::UserName {
                    self.error(
                        name.referenced,
                        "`userName` cannot be `on: create`",
                        "userName identifies the account in the target and is always kept in step; remove `on: create`",
                    );
                }
                create_only.insert(attr);
            }
            attributes.push((attr, expr));
        }
        attributes.sort_by_key(|(a, _)| *a);
        if !positions.iter().any(|(a, _)| *a == UserAttr::UserName) {
            self.error(
                users.attributes.referenced,
                "`userName` is not mapped",
                "add a rule such as `userName: { expr: \"trim(email)\" }`",
            );
        }

        let active = users.active.as_ref().and_then(|rule| {
            if let RawRule::Map(map) = &rule.value
                && let Some(on) = &map.on
            {
                self.error(
                    on.referenced,
                    "`on:` applies to attributes, not to `active`",
                    "remove `on:`",
                );
            }
            self.rule(rule, RecordKind::User).map(|(e, _)| e)
        });

        let mut required = vec![UserAttr::UserName];
        for name in &users.required {
            match UserAttr::parse(&name.value) {
                None => self.error(
                    name.referenced,
                    format!("unknown SCIM attribute `{}` in `required`", name.value),
                    format!("valid attributes are: {}", attribute_names()),
                ),
                Some(attr) if !positions.iter().any(|(a, _)| *a == attr) => self.error(
                    name.referenced,
                    format!("required attribute `{attr}` is not mapped"),
                    format!("add a rule for `{attr}` under users.attributes, or remove it from `required`"),
                ),
                Some(attr) => {
                    if !required.contains(&attr) {
                        required.push(attr);
                    }
                }
            }
        }

        let user_scope = self.scope(users.scope, RecordKind::User);
        let (group_name, group_scope) = match raw.groups {
            None => (Expr::Name, Scope::default()),
            Some(groups) => {
                let name = match &groups.display_name {
                    None => Some(Expr::Name),
                    Some(rule) => self.rule(rule, RecordKind::Group).map(|(e, _)| e),
                };
                (
                    name.unwrap_or(Expr::Name),
                    self.scope(groups.scope, RecordKind::Group),
                )
            }
        };

        let mut names = BTreeSet::new();
        for (_, e) in &attributes {
            e.collect_attrs(&mut names);
        }
        if let Some(e) = &active {
            e.collect_attrs(&mut names);
        }
        names.extend(user_scope.attributes().map(str::to_owned));
        // One spelling per attribute: sources match names case-insensitively.
        let mut source_attributes = BTreeSet::new();
        let mut folded = BTreeSet::new();
        for n in names {
            if folded.insert(fold(&n)) {
                source_attributes.insert(n);
            }
        }

        Mapping {
            file: self.file.clone(),
            attributes,
            active,
            required,
            user_scope,
            group_name,
            group_scope,
            source_attributes,
            create_only,
            assign: None,
        }
    }
}

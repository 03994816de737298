//! Scope rules: which users and groups a mapping provisions.
//!
//! A record is in scope when it matches any include rule (or there are none) and
//! no exclude rule; a rule matches when all of its clauses hold. This is the model
//! of Entra ID's scoping filters (OR of AND-groups), plus exclusions that win.
//! `member_of` clauses are assignments written in the mapping (see `assign`):
//! users who are members of any listed group, nested groups flattened, so
//! membership is transitive.

use regex::Regex;

use super::expr::Record;
use crate::model::fold;

/// What a clause looks at.
#[derive(Debug)]
pub(crate) enum Subject {
    /// A source attribute: the clause looks at every value.
    Attr(Box<str>),
    Key,
    Name,
}

#[derive(Debug)]
pub(crate) enum Test {
    /// Some value equals the text (`folded`: compared case-insensitively, the
    /// text already folded).
    Equals { text: Box<str>, folded: bool },
    /// No value equals the text.
    NotEquals { text: Box<str>, folded: bool },
    /// Some value matches (anywhere; anchor with `^…$`).
    Regex(Regex),
    /// Some value is non-empty (`true`), or none is (`false`).
    Present(bool),
}

#[derive(Debug)]
pub(crate) enum Clause {
    /// A test on an attribute's values.
    Attr { subject: Subject, test: Test },
    /// The user is a member of one of these groups (names or keys, as written).
    /// `slot` indexes the resolved sets in [`Memberships`](super::assign::Memberships).
    MemberOf { slot: usize, groups: Vec<Box<str>> },
}

#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// Rules in any of which all clauses hold.
    pub include: Vec<Vec<Clause>>,
    pub exclude: Vec<Vec<Clause>>,
}

fn equals(value: &str, text: &str, folded: bool) -> bool {
    if folded {
        value.eq_ignore_ascii_case(text) || (!value.is_ascii() && fold(value) == text)
    } else {
        value == text
    }
}

impl Clause {
    fn holds(&self, rec: &Record<'_>) -> bool {
        match self {
            Clause::Attr { subject, test } => match subject {
                Subject::Attr(name) => test.check(rec.attrs.get(name)),
                Subject::Key => test.check(std::iter::once(rec.key)),
                Subject::Name => test.check(std::iter::once(rec.name)),
            },
            Clause::MemberOf { slot, .. } => rec.memberships.contains(*slot, rec.key),
        }
    }
}

impl Test {
    fn check<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match self {
            Test::Equals { text, folded } => values.any(|v| equals(v, text, *folded)),
            Test::NotEquals { text, folded } => !values.any(|v| equals(v, text, *folded)),
            Test::Regex(re) => values.any(|v| re.is_match(v)),
            Test::Present(want) => values.any(|v| !v.is_empty()) == *want,
        }
    }
}

/// Which scope rule decided about a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub in_scope: bool,
    /// The rule, in words (rules are numbered from 1 in the order the mapping
    /// lists them); `None` when the mapping has no scope rules.
    pub rule: Option<String>,
}

impl Scope {
    /// Which rule decided whether `rec` is in scope.
    pub(crate) fn verdict(&self, rec: &Record<'_>) -> Verdict {
        let rule = |clauses: &Vec<Clause>| clauses.iter().all(|c| c.holds(rec));
        let (in_scope, rule) = if let Some(i) = self.exclude.iter().position(rule) {
            (false, format!("exclude rule {} matches", i + 1))
        } else if self.include.is_empty() {
            if self.exclude.is_empty() {
                return Verdict {
                    in_scope: true,
                    rule: None,
                };
            }
            (
                true,
                format!("none of the {} exclude rule(s) matches", self.exclude.len()),
            )
        } else {
            match self.include.iter().position(rule) {
                Some(i) => (true, format!("include rule {} matches", i + 1)),
                None => (
                    false,
                    format!("none of the {} include rule(s) matches", self.include.len()),
                ),
            }
        };
        Verdict {
            in_scope,
            rule: Some(rule),
        }
    }

    pub(crate) fn contains(&self, rec: &Record<'_>) -> bool {
        (self.include.is_empty() || self.includes(rec)) && !self.excludes(rec)
    }

    /// Whether an include rule matches (false when there are none).
    pub(crate) fn includes(&self, rec: &Record<'_>) -> bool {
        self.include
            .iter()
            .any(|clauses| clauses.iter().all(|c| c.holds(rec)))
    }

    /// Whether an exclude rule matches.
    pub(crate) fn excludes(&self, rec: &Record<'_>) -> bool {
        self.exclude
            .iter()
            .any(|clauses| clauses.iter().all(|c| c.holds(rec)))
    }

    pub(crate) fn attributes(&self) -> impl Iterator<Item = &str> {
        self.clauses().filter_map(|c| match c {
            Clause::Attr {
                subject: Subject::Attr(name),
                ..
            } => Some(&**name),
            _ => None,
        })
    }

    /// The group lists of `member_of` clauses, in slot order.
    pub(crate) fn member_of(&self) -> impl Iterator<Item = &[Box<str>]> {
        let mut lists: Vec<(usize, &[Box<str>])> = self
            .clauses()
            .filter_map(|c| match c {
                Clause::MemberOf { slot, groups } => Some((*slot, groups.as_slice())),
                _ => None,
            })
            .collect();
        lists.sort_by_key(|(slot, _)| *slot);
        lists.into_iter().map(|(_, groups)| groups)
    }

    fn clauses(&self) -> impl Iterator<Item = &Clause> {
        self.include.iter().chain(&self.exclude).flatten()
    }
}

//! Scope rules: which users and groups a mapping provisions.
//!
//! A record is in scope when it matches any include rule (or there are none) and
//! no exclude rule; a rule matches when all of its clauses hold. This is the model
//! of Entra ID's scoping filters (OR of AND-groups), plus exclusions that win.

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
pub(crate) struct Clause {
    pub subject: Subject,
    pub test: Test,
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
        match &self.subject {
            Subject::Attr(name) => self
                .test
                .check(rec.attrs.get(name).iter().map(String::as_str)),
            Subject::Key => self.test.check(std::iter::once(rec.key)),
            Subject::Name => self.test.check(std::iter::once(rec.name)),
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

impl Scope {
    pub(crate) fn contains(&self, rec: &Record<'_>) -> bool {
        let rule = |clauses: &Vec<Clause>| clauses.iter().all(|c| c.holds(rec));
        (self.include.is_empty() || self.include.iter().any(rule)) && !self.exclude.iter().any(rule)
    }

    pub(crate) fn attributes(&self) -> impl Iterator<Item = &str> {
        self.include
            .iter()
            .chain(&self.exclude)
            .flatten()
            .filter_map(|c| match &c.subject {
                Subject::Attr(name) => Some(&**name),
                _ => None,
            })
    }
}

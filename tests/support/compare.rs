//! Pieces of the comparisons of a target with what a directory says it must
//! hold: the differences collected and reported together (`Diffs`), resources
//! indexed by an attribute (`index_by`), and group members (`member_ids`,
//! `Diffs::members`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use super::scim::{TargetContents, str_at};

/// How many differences a failure lists.
const SHOWN: usize = 60;

/// Differences between a target and what it should hold, collected so that a
/// failure names every one of them.
#[derive(Debug, Default)]
pub struct Diffs(Vec<String>);

impl Diffs {
    pub fn push(&mut self, diff: String) {
        self.0.push(diff);
    }

    /// `WHO: WHAT: target GOT, expected WANT` unless `got == want`.
    pub fn check(&mut self, who: &str, what: &str, got: &str, want: &str) {
        if got != want {
            self.push(format!("{who}: {what}: target {got:?}, expected {want:?}"));
        }
    }

    /// `WHO: emails: …` unless `u` has exactly one email, primary, of type
    /// `work`, whose value is `user_name`.
    pub fn check_one_work_email(&mut self, who: &str, u: &Value, user_name: &str) {
        let emails = u
            .get("emails")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let email_ok = emails.len() == 1
            && str_at(&emails[0], "value") == user_name
            && emails[0].get("primary").and_then(Value::as_bool) == Some(true)
            && str_at(&emails[0], "type") == "work";
        if !email_ok {
            self.push(format!(
                "{who}: emails: target {}, expected one primary work email {user_name:?}",
                Value::Array(emails)
            ));
        }
    }

    /// `group NAME: members missing […]; members not expected […]` unless the
    /// SCIM ids `got` are `want`; `label` names an id (its key) where it can.
    pub fn members(
        &mut self,
        name: &str,
        want: &BTreeSet<String>,
        got: &BTreeSet<String>,
        label: impl Fn(&str) -> Option<String>,
    ) {
        if got == want {
            return;
        }
        let show = |ids: Vec<&String>| {
            ids.iter()
                .map(|id| label(id).map_or_else(|| (*id).clone(), |k| format!("{k}({id})")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.push(format!(
            "group {name:?}: members missing: [{}]; members not expected: [{}]",
            show(want.difference(got).collect()),
            show(got.difference(want).collect()),
        ));
    }

    /// Panics listing the differences (the first 60) unless there are none.
    pub fn finish(self, target: &TargetContents) {
        if self.0.is_empty() {
            return;
        }
        let mut msg = format!(
            "the target does not match the directory ({} differences; {} users, {} groups on the target):\n",
            self.0.len(),
            target.users.len(),
            target.groups.len()
        );
        for d in self.0.iter().take(SHOWN) {
            let _ = writeln!(msg, "  - {d}");
        }
        if self.0.len() > SHOWN {
            let _ = writeln!(msg, "  … and {} more", self.0.len() - SHOWN);
        }
        panic!("{msg}");
    }
}

/// The resources by the value of their string attribute `field`, lower-cased
/// when `fold`: more than one under a value are duplicates.
pub fn index_by<'a>(
    resources: &'a [Value],
    field: &str,
    fold: bool,
) -> BTreeMap<String, Vec<&'a Value>> {
    let mut index: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in resources {
        let value = str_at(r, field);
        let value = if fold {
            value.to_lowercase()
        } else {
            value.to_owned()
        };
        index.entry(value).or_default().push(r);
    }
    index
}

/// The SCIM ids of a group's members.
pub fn member_ids(group: &Value) -> BTreeSet<String> {
    group
        .get("members")
        .and_then(Value::as_array)
        .map(|ms| ms.iter().map(|m| str_at(m, "value").to_owned()).collect())
        .unwrap_or_default()
}

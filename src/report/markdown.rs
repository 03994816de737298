//! `plan --format markdown` (and `revert --format markdown`): the plan as
//! GitHub-flavoured Markdown for a pull-request comment or a change ticket —
//! the summary table, a table per kind of change naming users by userName and
//! key and members by userName, the guard verdict and the fingerprint, so a
//! reviewer approves exactly the plan `sync --plan` applies.
//!
//! Every value from the directory or the target goes through [`md`]: control
//! and format characters escaped as in text output, then every character
//! Markdown or HTML could read as syntax escaped, so a display name holding
//! `|`, `*`, `<`, a backtick or a newline can neither break a table nor inject
//! HTML or a mention.

use std::fmt::Write as _;

use crate::model::{OpKind, SourceKey};
use crate::plan::{Changes, MemberNames, Operation, Plan};

use super::plan::{SECTIONS, no_changes, step_note};
use super::{escape, plural, quote, show};

/// Rows shown as they are; a longer table is folded into `<details>`.
const ROWS_SHOWN: usize = 50;

/// What is said about a plan beside its operations.
#[derive(Clone, Debug)]
pub struct PlanReview {
    /// The heading: "idsync plan", "idsync revert of run 3".
    pub title: String,
    /// The stops a plain `sync` of this plan would make, each a message and
    /// a hint.
    pub would_stop: Vec<(String, Option<String>)>,
    /// The plan is applied as a saved plan (a revert): it is reviewed, so
    /// the removal guards let it through.
    pub saved_only: bool,
}

/// A value from outside, as Markdown text: [`escape`]d, then HTML's `<`, `>`
/// and `&` as entities, and Markdown's punctuation (`\`, `` ` ``, `*`, `_`,
/// `|`, `[`, `]`, `#`, `~`, `$`) and an `@` that could start a mention
/// backslash-escaped.
pub fn md(text: &str) -> String {
    let text = escape(text);
    let mut out = String::with_capacity(text.len() + 8);
    let mut prev: Option<char> = None;
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '|' | '[' | ']' | '#' | '~' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '@' if !prev.is_some_and(char::is_alphanumeric) => out.push_str("\\@"),
            c => out.push(c),
        }
        prev = Some(c);
    }
    out
}

/// Text idsync composed (a guard's message and hint) as Markdown: its
/// backticks stay code; what could be HTML or a raw control character does
/// not.
fn prose(text: &str) -> String {
    escape(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A name (userName, key, group) in a cell: bare when plain, quoted when odd.
fn name(text: &str) -> String {
    md(&show(text))
}

/// A table: its header and rows of cells already escaped.
struct Table {
    head: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &'static [&'static str]) -> Table {
        Table {
            head,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table, folded into `<details>` past [`ROWS_SHOWN`] rows; a last
    /// `note` column left out when no row has a note.
    fn write(&self, out: &mut String, what: &str) {
        let width = match self.head.last() {
            Some(&"note")
                if self
                    .rows
                    .iter()
                    .all(|r| r.last().is_none_or(String::is_empty)) =>
            {
                self.head.len() - 1
            }
            _ => self.head.len(),
        };
        let fold = self.rows.len() > ROWS_SHOWN;
        if fold {
            let _ = writeln!(
                out,
                "<details><summary>{what}: {} rows</summary>\n",
                self.rows.len()
            );
        }
        let _ = writeln!(out, "| {} |", self.head[..width].join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(width));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row[..width.min(row.len())].join(" | "));
        }
        if fold {
            out.push_str("\n</details>\n");
        }
    }
}

/// The member cells of one membership change: userName (where known) and key.
fn member_cells(key: &SourceKey, names: &MemberNames) -> [String; 2] {
    [
        names
            .get(key)
            .map_or_else(|| "—".to_string(), |n| name(n.as_str())),
        name(key.as_str()),
    ]
}

/// One row per changed attribute.
fn change_rows(t: &mut Table, user: [String; 2], changes: &Changes, note: &str) {
    for (attr, c) in changes {
        let side =
            |v: &Option<String>| v.as_deref().map_or("(none)".to_string(), |v| md(&quote(v)));
        t.row(vec![
            user[0].clone(),
            user[1].clone(),
            attr.to_string(),
            side(&c.old),
            side(&c.new),
            note.to_string(),
        ]);
    }
}

/// The table of one kind of operation.
fn section_table(kind: OpKind, ops: &[&Operation], names: &MemberNames) -> Table {
    let mut t = Table::new(match kind {
        OpKind::AdoptUser => &["userName", "key", "matched by", "SCIM id"],
        OpKind::AdoptGroup => &["group", "key", "SCIM id"],
        OpKind::CreateUser => &["userName", "key", "note"],
        OpKind::UpdateUser | OpKind::EnableUser => {
            &["userName", "key", "attribute", "old", "new", "note"]
        }
        OpKind::DisableUser | OpKind::DeleteUser => &["userName", "key", "reason", "note"],
        OpKind::CreateGroup => &["group", "key"],
        OpKind::UpdateGroup => &["key", "old name", "new name"],
        OpKind::DeleteGroup => &["group", "key", "reason"],
        OpKind::AddMembers | OpKind::RemoveMembers => &["group", "member", "member key", "note"],
    });
    for op in ops {
        let note = step_note(op).map(|n| md(&n)).unwrap_or_default();
        let user = || [name(op.display_subject()), name(op.subject().as_str())];
        match op {
            Operation::AdoptUser {
                matched_by,
                scim_id,
                ..
            } => {
                let [n, k] = user();
                t.row(vec![
                    n,
                    k,
                    format!("{matched_by:?}"),
                    name(scim_id.as_str()),
                ]);
            }
            Operation::AdoptGroup { scim_id, .. } => {
                let [n, k] = user();
                t.row(vec![n, k, name(scim_id.as_str())]);
            }
            Operation::CreateUser { .. } => {
                let [n, k] = user();
                t.row(vec![n, k, note]);
            }
            Operation::UpdateUser { changes, .. } => change_rows(&mut t, user(), changes, &note),
            Operation::EnableUser { changes, .. } => {
                let [n, k] = user();
                t.row(vec![
                    n.clone(),
                    k.clone(),
                    "active".into(),
                    "false".into(),
                    "true".into(),
                    note.clone(),
                ]);
                change_rows(&mut t, [n, k], changes, &note);
            }
            Operation::DisableUser { reason, .. } | Operation::DeleteUser { reason, .. } => {
                let [n, k] = user();
                t.row(vec![n, k, md(reason), note]);
            }
            Operation::CreateGroup { .. } => {
                let [n, k] = user();
                t.row(vec![n, k]);
            }
            Operation::UpdateGroup {
                key,
                display_name,
                old_display_name,
                ..
            } => t.row(vec![
                name(key.as_str()),
                name(old_display_name.as_str()),
                name(display_name.as_str()),
            ]),
            Operation::DeleteGroup { reason, .. } => {
                let [n, k] = user();
                t.row(vec![n, k, md(reason)]);
            }
            Operation::AddMembers {
                display_name,
                members,
                ..
            }
            | Operation::RemoveMembers {
                display_name,
                members,
                ..
            } => {
                for m in members {
                    let [member, key] = member_cells(m, names);
                    t.row(vec![name(display_name.as_str()), member, key, note.clone()]);
                }
                if let Operation::RemoveMembers { dangling, .. } = op {
                    for v in dangling {
                        t.row(vec![
                            name(display_name.as_str()),
                            format!("{} (no such user: dangling)", name(v)),
                            "—".into(),
                            note.clone(),
                        ]);
                    }
                }
            }
        }
    }
    t
}

/// The summary table: every count `plan` prints, and the others when not zero.
fn summary_table(plan: &Plan) -> Table {
    let s = &plan.summary;
    let mut t = Table::new(&["change", "count"]);
    let always = [
        ("users to create", s.create_users),
        ("users to update", s.update_users),
        ("users to disable", s.disable_users),
        ("users to delete", s.delete_users),
        ("groups to create", s.create_groups),
        ("groups to update", s.update_groups),
        ("groups to delete", s.delete_groups),
        ("members to add", s.add_members),
        ("members to remove", s.remove_members),
    ];
    let when_any = [
        ("users to adopt", s.adopt_users),
        ("groups to adopt", s.adopt_groups),
        ("of the updates, users to enable", s.enable_users),
        (
            "dangling members (no such user) to remove",
            s.remove_dangling_members,
        ),
    ];
    for (what, n) in always
        .into_iter()
        .chain(when_any.into_iter().filter(|(_, n)| *n > 0))
    {
        t.row(vec![what.to_string(), n.to_string()]);
    }
    t
}

/// The guard verdict and how to apply exactly this plan.
fn verdict(out: &mut String, plan: &Plan, review: &PlanReview) {
    out.push_str("\n### Guards\n\n");
    if review.saved_only {
        out.push_str(
            "Applied as a saved plan (`idsync sync --plan FILE`): it has been reviewed, so the removal guards let it through.\n",
        );
    } else if review.would_stop.is_empty() {
        out.push_str("No guard stops this plan: `idsync sync` would apply it.\n");
    } else {
        for (stop, hint) in &review.would_stop {
            let _ = writeln!(out, "- **`idsync sync` would stop here:** {}", prose(stop));
            if let Some(hint) = hint {
                let _ = writeln!(out, "  - hint: {}", prose(hint));
            }
        }
        out.push_str(
            "\nApplied as a saved plan (`idsync sync --plan FILE`) after review, its removals pass the removal guards.\n",
        );
    }
    out.push_str("\n### Fingerprint\n\n");
    let fingerprint = if plan
        .fingerprint
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !plan.fingerprint.is_empty()
    {
        format!("`{}`", plan.fingerprint)
    } else {
        md(&plan.fingerprint)
    };
    let _ = writeln!(out, "{fingerprint}\n");
    out.push_str(if plan.full {
        "A `--full` plan cannot be saved: `idsync sync --full` plans again against the target as it is then.\n"
    } else {
        "Save this plan with `--out FILE` and apply exactly it with `idsync sync --plan FILE`: a plan whose config, mapping, state or operations changed since no longer matches its fingerprint and is refused.\n"
    });
}

/// Warnings and notes, as a list.
fn warnings(out: &mut String, plan: &Plan) {
    let mut lines: Vec<String> = plan.warnings.iter().map(|w| md(w)).collect();
    if plan.ignored_members > 0 {
        lines.push(format!(
            "{} group member{} left out: not users in scope (outside the base DN, filtered out, or unknown)",
            plan.ignored_members,
            plural(plan.ignored_members as usize)
        ));
    }
    if plan.full && plan.observed_objects() > 0 {
        lines.push(format!(
            "`--full` first records what the target holds for {} managed object{}",
            plan.observed_objects(),
            plural(plan.observed_objects())
        ));
    }
    if lines.is_empty() {
        return;
    }
    out.push_str("\n### Warnings\n\n");
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
}

/// The plan as GitHub-flavoured Markdown.
pub fn plan_markdown(plan: &Plan, review: &PlanReview) -> String {
    let mut out = format!("## {}\n\n", md(&review.title));
    if plan.operations.is_empty() {
        out.push_str(no_changes(plan));
    } else {
        summary_table(plan).write(&mut out, "Summary");
    }
    for (kind, heading) in SECTIONS {
        let ops: Vec<&Operation> = plan
            .operations
            .iter()
            .filter(|op| op.kind() == kind)
            .collect();
        if ops.is_empty() {
            continue;
        }
        let count: usize = match kind {
            OpKind::AddMembers | OpKind::RemoveMembers => ops
                .iter()
                .map(|op| match op {
                    Operation::AddMembers { members, .. } => members.len(),
                    Operation::RemoveMembers {
                        members, dangling, ..
                    } => members.len() + dangling.len(),
                    _ => 0,
                })
                .sum(),
            _ => ops.len(),
        };
        let _ = writeln!(out, "\n### {heading} ({count})\n");
        section_table(kind, &ops, &plan.member_names).write(&mut out, heading);
    }
    warnings(&mut out, plan);
    verdict(&mut out, plan, review);
    out
}

#[cfg(test)]
mod tests;

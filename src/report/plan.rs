//! The terraform-style plan, its JSON form, and the removals a guard held back.

use std::fmt::Write as _;

use crate::plan::{Change, Changes, Operation, Plan};

use super::{Style, plural, quote, show};

fn show_change(c: &Change) -> String {
    let side = |v: &Option<String>| {
        v.as_deref()
            .map(quote)
            .unwrap_or_else(|| "(none)".to_string())
    };
    format!("{} → {}", side(&c.old), side(&c.new))
}

fn change_lines(out: &mut String, changes: &Changes) {
    for (attr, c) in changes {
        let _ = writeln!(out, "      {attr}: {}", show_change(c));
    }
}

/// The human plan: one summary line, then one line per operation.
pub fn plan_text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    let s = &plan.summary;
    if plan.operations.is_empty() {
        out.push_str("No changes. The target matches the source.\n");
    } else {
        let _ = writeln!(
            out,
            "Plan: users {} to create, {} to update, {} to disable, {} to delete; groups {} to create, {} to update, {} to delete; members {} to add, {} to remove.",
            s.create_users,
            s.update_users,
            s.disable_users,
            s.delete_users,
            s.create_groups,
            s.update_groups,
            s.delete_groups,
            s.add_members,
            s.remove_members
        );
        out.push('\n');
    }
    for op in &plan.operations {
        let line = match op {
            Operation::AdoptUser {
                user_name,
                matched_by,
                ..
            } => style.paint(
                "36",
                &format!(
                    "= adopt user {} (matched by {matched_by:?})",
                    show(user_name.as_str())
                ),
            ),
            Operation::AdoptGroup { display_name, .. } => style.paint(
                "36",
                &format!(
                    "= adopt group {} (matched by displayName)",
                    show(display_name.as_str())
                ),
            ),
            Operation::CreateUser { user_name, key, .. } => style.paint(
                "32",
                &format!(
                    "+ create user {} (key {})",
                    show(user_name.as_str()),
                    show(key.as_str())
                ),
            ),
            Operation::UpdateUser {
                user_name, changes, ..
            } => {
                let mut l =
                    style.paint("33", &format!("~ update user {}", show(user_name.as_str())));
                l.push('\n');
                change_lines(&mut l, changes);
                l.trim_end().to_string()
            }
            Operation::EnableUser {
                user_name, changes, ..
            } => {
                let mut l =
                    style.paint("33", &format!("~ enable user {}", show(user_name.as_str())));
                l.push('\n');
                change_lines(&mut l, changes);
                l.trim_end().to_string()
            }
            Operation::DisableUser {
                user_name, reason, ..
            } => style.paint(
                "31",
                &format!("- disable user {} ({reason})", show(user_name.as_str())),
            ),
            Operation::DeleteUser {
                user_name, reason, ..
            } => style.paint(
                "31",
                &format!("- delete user {} ({reason})", show(user_name.as_str())),
            ),
            Operation::CreateGroup { display_name, .. } => style.paint(
                "32",
                &format!("+ create group {}", show(display_name.as_str())),
            ),
            Operation::UpdateGroup {
                display_name,
                old_display_name,
                ..
            } => style.paint(
                "33",
                &format!(
                    "~ rename group {} → {}",
                    quote(old_display_name.as_str()),
                    quote(display_name.as_str())
                ),
            ),
            Operation::DeleteGroup {
                display_name,
                reason,
                ..
            } => style.paint(
                "31",
                &format!("- delete group {} ({reason})", show(display_name.as_str())),
            ),
            Operation::AddMembers {
                display_name,
                members,
                ..
            } => style.paint(
                "32",
                &format!(
                    "+ add {} member{} to group {}",
                    members.len(),
                    plural(members.len()),
                    show(display_name.as_str())
                ),
            ),
            Operation::RemoveMembers {
                display_name,
                members,
                ..
            } => style.paint(
                "31",
                &format!(
                    "- remove {} member{} from group {}",
                    members.len(),
                    plural(members.len()),
                    show(display_name.as_str())
                ),
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if plan.ignored_members > 0 {
        let _ = writeln!(
            out,
            "note: {} group member{} left out: not users in scope (outside the base DN, filtered out, or unknown)",
            plan.ignored_members,
            plural(plan.ignored_members as usize)
        );
    }
    if plan.full && plan.observed_objects() > 0 {
        let _ = writeln!(
            out,
            "note: --full first records what the target holds for {} managed object{}",
            plan.observed_objects(),
            plural(plan.observed_objects())
        );
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "{} {w}", style.paint("33", "warning:"));
    }
    out
}

/// Removals a guard held back, for the operator to review: a heading, then up
/// to `limit` plan lines.
pub fn held_text(held: &[Operation], limit: usize) -> String {
    let mut out = format!("held back {} removal(s):\n", held.len());
    let preview = Plan {
        fingerprint: String::new(),
        full: false,
        summary: Default::default(),
        operations: held.iter().take(limit).cloned().collect(),
        warnings: Vec::new(),
        ignored_members: 0,
        held_groups: 0,
        source_users: 0,
        managed_users: 0,
        managed_memberships: 0,
        observed: Vec::new(),
    };
    for line in plan_text(&preview, Style { color: false })
        .lines()
        .filter(|l| l.starts_with('-'))
    {
        let _ = writeln!(out, "  {line}");
    }
    if held.len() > limit {
        let _ = writeln!(
            out,
            "  … and {} more (see `idsync plan`)",
            held.len() - limit
        );
    }
    out
}

/// The plan as JSON (the documented plan format).
pub fn plan_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).expect("a plan always serialises")
}

/// Streams the plan as JSON, without building the whole text in memory first
/// (a million operations would be a gigabyte of string).
pub fn write_plan_json(plan: &Plan, out: impl std::io::Write) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, plan).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

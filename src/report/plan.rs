//! The terraform-style plan, its JSON form, and the removals a guard held back.
//!
//! The text plan is for a reviewer: a summary line, then the operations under
//! one heading per kind ("Users to create", "Memberships to remove", …), each
//! membership change naming its members by userName and key (up to
//! [`MEMBERS_LISTED`] a group; by key alone where the plan does not know the
//! name, as in the removals a guard held back).
//! With `detail`, a created user shows every mapped attribute it is created with.
//! What the plan skips because its action is switched off follows, under a
//! heading per switch, after everything it sends.

use std::fmt::Write as _;

use crate::model::OpKind;
use crate::model::{GroupName, SourceKey, UserAttrs};
use crate::plan::{Action, Change, Changes, MemberNames, NameStep, Operation, Plan, released_name};

use super::{Style, escape, plural, quote, show};

/// Members named per group and membership operation before "… and N more".
pub const MEMBERS_LISTED: usize = 20;

/// How much the text plan shows.
#[derive(Clone, Copy, Debug)]
pub struct PlanView {
    pub style: Style,
    /// Show the attributes a created user is created with.
    pub detail: bool,
}

impl PlanView {
    pub fn new(style: Style) -> PlanView {
        PlanView {
            style,
            detail: false,
        }
    }
}

/// The headings, in the order a reviewer reads them (and the executor runs
/// them, removals last).
pub(super) const SECTIONS: [(OpKind, &str); 12] = [
    (OpKind::AdoptUser, "Users to adopt"),
    (OpKind::AdoptGroup, "Groups to adopt"),
    (OpKind::CreateUser, "Users to create"),
    (OpKind::UpdateUser, "Users to update"),
    (OpKind::EnableUser, "Users to enable"),
    (OpKind::CreateGroup, "Groups to create"),
    (OpKind::UpdateGroup, "Groups to rename"),
    (OpKind::AddMembers, "Memberships to add"),
    (OpKind::RemoveMembers, "Memberships to remove"),
    (OpKind::DisableUser, "Users to disable"),
    (OpKind::DeleteUser, "Users to delete"),
    (OpKind::DeleteGroup, "Groups to delete"),
];

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

fn created_lines(out: &mut String, attrs: &UserAttrs) {
    for (attr, value) in attrs {
        let _ = writeln!(out, "      {attr}: {}", quote(value));
    }
}

fn member_lines(out: &mut String, sign: char, members: &[SourceKey], names: &MemberNames) {
    for m in members.iter().take(MEMBERS_LISTED) {
        let _ = match names.get(m) {
            Some(name) => writeln!(
                out,
                "      {sign} {} (key {})",
                show(name.as_str()),
                show(m.as_str())
            ),
            None => writeln!(out, "      {sign} key {}", show(m.as_str())),
        };
    }
    if members.len() > MEMBERS_LISTED {
        let _ = writeln!(out, "      … and {} more", members.len() - MEMBERS_LISTED);
    }
}

/// One operation's lines, indented under its heading; members by userName
/// where `names` knows it, and by key.
pub(crate) fn op_lines(op: &Operation, view: PlanView, names: &MemberNames) -> String {
    let style = view.style;
    let mut out = String::new();
    let mut head = |color: &str, text: String| {
        let _ = writeln!(out, "  {}", style.paint(color, &text));
    };
    match op {
        Operation::AdoptUser {
            user_name,
            matched_by,
            ..
        } => head(
            "36",
            format!(
                "= adopt user {} (matched by {matched_by:?})",
                show(user_name.as_str())
            ),
        ),
        Operation::AdoptGroup { display_name, .. } => head(
            "36",
            format!(
                "= adopt group {} (matched by displayName)",
                show(display_name.as_str())
            ),
        ),
        Operation::CreateUser {
            user_name,
            key,
            attrs,
            ..
        } => {
            head(
                "32",
                format!(
                    "+ create user {} (key {})",
                    show(user_name.as_str()),
                    show(key.as_str())
                ),
            );
            if view.detail {
                created_lines(&mut out, attrs);
            }
        }
        Operation::UpdateUser {
            user_name, changes, ..
        } => {
            head("33", format!("~ update user {}", show(user_name.as_str())));
            change_lines(&mut out, changes);
        }
        Operation::EnableUser {
            user_name, changes, ..
        } => {
            head("33", format!("~ enable user {}", show(user_name.as_str())));
            change_lines(&mut out, changes);
        }
        Operation::DisableUser {
            user_name, reason, ..
        } => head(
            "31",
            format!(
                "- disable user {} ({})",
                show(user_name.as_str()),
                escape(reason)
            ),
        ),
        Operation::DeleteUser {
            user_name, reason, ..
        } => head(
            "31",
            format!(
                "- delete user {} ({})",
                show(user_name.as_str()),
                escape(reason)
            ),
        ),
        Operation::CreateGroup { display_name, .. } => head(
            "32",
            format!("+ create group {}", show(display_name.as_str())),
        ),
        Operation::UpdateGroup {
            display_name,
            old_display_name,
            ..
        } => head(
            "33",
            format!(
                "~ rename group {} → {}",
                quote(old_display_name.as_str()),
                quote(display_name.as_str())
            ),
        ),
        Operation::DeleteGroup {
            display_name,
            reason,
            ..
        } => head(
            "31",
            format!(
                "- delete group {} ({})",
                show(display_name.as_str()),
                escape(reason)
            ),
        ),
        Operation::AddMembers {
            display_name,
            members,
            ..
        } => {
            head(
                "32",
                format!(
                    "+ add {} member{} to group {}",
                    members.len(),
                    plural(members.len()),
                    show(display_name.as_str())
                ),
            );
            member_lines(&mut out, '+', members, names);
        }
        Operation::RemoveMembers {
            display_name,
            members,
            dangling,
            ..
        } => removal_lines(&mut out, style, display_name, members, dangling, names),
    }
    if let Some(note) = step_note(op) {
        let _ = writeln!(out, "      ↳ {note}");
    }
    out
}

/// A membership removal: the members idsync removes, and the dangling values
/// (no such user) it removes as the group stores them.
fn removal_lines(
    out: &mut String,
    style: Style,
    display_name: &GroupName,
    members: &[SourceKey],
    dangling: &[String],
    names: &MemberNames,
) {
    let head = |out: &mut String, text: String| {
        let _ = writeln!(out, "  {}", style.paint("31", &text));
    };
    if !members.is_empty() || dangling.is_empty() {
        head(
            out,
            format!(
                "- remove {} member{} from group {}",
                members.len(),
                plural(members.len()),
                show(display_name.as_str())
            ),
        );
        member_lines(out, '-', members, names);
    }
    if !dangling.is_empty() {
        head(
            out,
            format!(
                "- remove {} dangling member{} (no such user) from group {}",
                dangling.len(),
                plural(dangling.len()),
                show(display_name.as_str())
            ),
        );
        for v in dangling.iter().take(MEMBERS_LISTED) {
            let _ = writeln!(out, "      - value {}", show(v));
        }
        if dangling.len() > MEMBERS_LISTED {
            let _ = writeln!(out, "      … and {} more", dangling.len() - MEMBERS_LISTED);
        }
    }
}

/// The human plan: one summary line, then the operations under a heading per
/// kind.
pub fn plan_text(plan: &Plan, view: PlanView) -> String {
    let mut out = String::new();
    let s = &plan.summary;
    let skipped = plan.skipped.len();
    if plan.operations.is_empty() && skipped > 0 {
        let _ = writeln!(
            out,
            "No changes to send; {skipped} operation{} skipped because {} action is off (policy.actions).",
            plural(skipped),
            if skipped == 1 { "its" } else { "their" }
        );
    } else if plan.operations.is_empty() {
        out.push_str(no_changes(plan));
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
        if s.remove_dangling_members > 0 {
            let _ = writeln!(
                out,
                "Dangling members (no such user) to remove: {}.",
                s.remove_dangling_members
            );
        }
        if skipped > 0 {
            let _ = writeln!(
                out,
                "Skipped, not sent: {skipped} operation{} whose action is off (policy.actions).",
                plural(skipped)
            );
        }
    }
    for (kind, heading) in SECTIONS {
        let mut ops = plan
            .operations
            .iter()
            .filter(|op| op.kind() == kind)
            .peekable();
        if ops.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "\n{heading}:");
        for op in ops {
            out.push_str(&op_lines(op, view, &plan.member_names));
        }
    }
    skipped_sections(&mut out, plan, view);
    if !(plan.operations.is_empty() && plan.skipped.is_empty())
        && (plan.ignored_members > 0
            || (plan.full && plan.observed_objects() > 0)
            || !plan.warnings.is_empty())
    {
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
        let _ = writeln!(out, "{} {w}", view.style.paint("33", "warning:"));
    }
    out
}

/// What the plan skips because its action is off: a heading per switch, in
/// the order the switches are written, then the operations as they would be.
fn skipped_sections(out: &mut String, plan: &Plan, view: PlanView) {
    for action in Action::ALL {
        let mut ops = plan
            .skipped
            .iter()
            .filter(|s| s.action_off == action)
            .peekable();
        if ops.peek().is_none() {
            continue;
        }
        let _ = writeln!(out, "\nSkipped, not sent (policy.actions.{action} is off):");
        for skipped in ops {
            out.push_str(&op_lines(&skipped.op, view, &plan.member_names));
        }
    }
}

/// What an empty plan says: only a plan that read the target knows what it
/// holds.
pub(super) fn no_changes(plan: &Plan) -> &'static str {
    if plan.full {
        "No changes. The target matches the source.\n"
    } else {
        "No changes.\n"
    }
}

/// Removals a guard held back, for the operator to review: a heading, then up
/// to `limit` of them.
pub fn held_text(held: &[Operation], limit: usize) -> String {
    let mut out = format!("held back {} removal(s):\n", held.len());
    let view = PlanView::new(Style { color: false });
    for op in held.iter().take(limit) {
        out.push_str(&op_lines(op, view, &MemberNames::default()));
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

/// Streams the plan as JSON, without building the whole text in memory first
/// (a million operations would be a gigabyte of string).
pub fn write_plan_json(plan: &Plan, out: impl std::io::Write) -> std::io::Result<()> {
    use std::io::Write as _;
    // serde_json writes token by token: buffered first, so the escaping
    // writer looks at large chunks, not at every comma.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, super::JsonSafe::new(out));
    serde_json::to_writer_pretty(&mut out, plan).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The line under an operation that moves a userName between users: what the
/// planner decided, for the reviewer.
pub(super) fn step_note(op: &Operation) -> Option<String> {
    let step = op.name_step()?;
    Some(match (step, op) {
        (NameStep::Frees { for_key }, Operation::RemoveMembers { .. }) => format!(
            "runs first: the leaving account leaves its groups before its address goes to user {}",
            show(for_key.as_str())
        ),
        (NameStep::Frees { for_key }, _) => format!(
            "runs first: frees userName {} for user {}",
            show(
                released_name(op)
                    .as_ref()
                    .map_or(op.display_subject(), |n| n.as_str())
            ),
            show(for_key.as_str())
        ),
        (NameStep::Temporary { for_key }, _) => format!(
            "temporary userName, to break a swap: user {} takes the old name, then this user gets its final one",
            show(for_key.as_str())
        ),
        (NameStep::TakesOver { from, scim_id }, _) => format!(
            "takes over the account of user {} (SCIM id {}) once its removal is done (policy.reuse_accounts: after_removal)",
            show(from.as_str()),
            show(scim_id.as_str())
        ),
        (NameStep::Refused { holder, status }, Operation::UpdateUser { .. }) => format!(
            "refused: the userName belongs to the account of user {} ({}); free the address in the target",
            show(holder.as_str()),
            status.as_str()
        ),
        (NameStep::Refused { holder, status }, _) => format!(
            "refused: the userName belongs to the account of user {} ({}); policy.reuse_accounts is never — free the address in the target, or set reuse_accounts: after_removal",
            show(holder.as_str()),
            status.as_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupKey, ScimId, Status};
    use crate::plan::testkit::{desired, person, plan, state_of};
    use crate::plan::{Policy, RemoveAction};

    /// A saved plan (`sync --plan FILE`) is read back from a file, so its
    /// removal reasons are text from outside like any other. Found by the
    /// `saved_plan` fuzz target (fuzz/regressions/saved-plan-raw-reason): a
    /// DEL in a group's removal reason reached the terminal raw.
    #[test]
    fn a_saved_plans_removal_reasons_are_escaped_in_the_text_plan() {
        let leaver = person("k1", "a@example.com", "Eng");
        let stayer = person("k2", "b@example.com", "Eng");
        let state = state_of(&[(&leaver, Status::Active), (&stayer, Status::Active)]);
        let d = desired(vec![stayer.clone()], Vec::new());
        let hostile = "gone\u{7f}\u{1b}[2J\u{202e}";
        for remove_action in [RemoveAction::Disable, RemoveAction::Delete] {
            let policy = Policy {
                remove_action,
                ..Policy::default()
            };
            let mut p = plan(&d, &state, &policy);
            let mut reasons = 0;
            for op in &mut p.operations {
                if let Operation::DisableUser { reason, .. }
                | Operation::DeleteUser { reason, .. }
                | Operation::DeleteGroup { reason, .. } = op
                {
                    *reason = hostile.to_string();
                    reasons += 1;
                }
            }
            assert_eq!(reasons, 1, "the leaver removed: {p:?}");
            p.operations.push(Operation::DeleteGroup {
                key: GroupKey::new("ops"),
                scim_id: ScimId::new("g1"),
                display_name: "Ops".into(),
                reason: hostile.to_string(),
            });
            let text = plan_text(&p, PlanView::new(Style { color: false }));
            assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
            assert!(!text.contains('\u{202e}'), "{text}");
            assert!(text.contains(r"gone\u{7f}\u{1b}[2J\u{202e}"), "{text}");
        }
    }
}

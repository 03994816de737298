//! Output for people and programs: the terraform-style plan, the run summary, and
//! their JSON forms. Data goes to stdout; nothing here logs. Directory values are
//! printed quoted and escaped, so a name with a newline or an escape sequence
//! cannot forge a line of output.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::{Change, Changes, Operation, Plan, Summary};

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Terminal styling, off under `NO_COLOR` or when stdout is not a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Style {
        use std::io::IsTerminal;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Quotes a directory value for display, escaping control characters.
pub fn quote(value: &str) -> String {
    format!("{value:?}")
}

/// A value shown bare when it is plain, quoted when it holds anything odd.
fn show(value: &str) -> String {
    if !value.is_empty()
        && value.chars().all(|c| !c.is_control() && c != '"')
        && !value.contains(char::is_whitespace)
    {
        value.to_string()
    } else {
        quote(value)
    }
}

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
                    show(user_name)
                ),
            ),
            Operation::AdoptGroup { display_name, .. } => style.paint(
                "36",
                &format!(
                    "= adopt group {} (matched by displayName)",
                    show(display_name)
                ),
            ),
            Operation::CreateUser { user_name, key, .. } => style.paint(
                "32",
                &format!(
                    "+ create user {} (key {})",
                    show(user_name),
                    show(key.as_str())
                ),
            ),
            Operation::UpdateUser {
                user_name, changes, ..
            } => {
                let mut l = style.paint("33", &format!("~ update user {}", show(user_name)));
                l.push('\n');
                change_lines(&mut l, changes);
                l.trim_end().to_string()
            }
            Operation::EnableUser {
                user_name, changes, ..
            } => {
                let mut l = style.paint("33", &format!("~ enable user {}", show(user_name)));
                l.push('\n');
                change_lines(&mut l, changes);
                l.trim_end().to_string()
            }
            Operation::DisableUser {
                user_name, reason, ..
            } => style.paint(
                "31",
                &format!("- disable user {} ({reason})", show(user_name)),
            ),
            Operation::DeleteUser {
                user_name, reason, ..
            } => style.paint(
                "31",
                &format!("- delete user {} ({reason})", show(user_name)),
            ),
            Operation::CreateGroup { display_name, .. } => {
                style.paint("32", &format!("+ create group {}", show(display_name)))
            }
            Operation::UpdateGroup {
                display_name,
                old_display_name,
                ..
            } => style.paint(
                "33",
                &format!(
                    "~ rename group {} → {}",
                    quote(old_display_name),
                    quote(display_name)
                ),
            ),
            Operation::DeleteGroup {
                display_name,
                reason,
                ..
            } => style.paint(
                "31",
                &format!("- delete group {} ({reason})", show(display_name)),
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
                    show(display_name)
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
                    show(display_name)
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
    for w in &plan.warnings {
        let _ = writeln!(out, "{} {w}", style.paint("33", "warning:"));
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The plan as JSON (DESIGN.md's plan format).
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

/// One failed operation, for the run summary.
#[derive(Clone, Debug, Serialize)]
pub struct FailedOp {
    pub op: &'static str,
    pub subject: String,
    pub http_status: Option<u16>,
    pub error: String,
}

/// What a `sync` did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub summary: Summary,
    pub applied: u64,
    pub failed: u64,
    pub skipped: u64,
    pub duration_ms: u64,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailedOp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub dry_run: bool,
    /// The plan a dry run stopped at, for the text output.
    #[serde(skip)]
    pub dry_run_plan: Option<Plan>,
}

pub fn run_json(run: &RunSummary) -> String {
    serde_json::to_string_pretty(run).expect("a summary always serialises")
}

pub fn run_text(run: &RunSummary, style: Style) -> String {
    let mut out = String::new();
    if run.dry_run {
        if let Some(plan) = &run.dry_run_plan {
            out.push_str(&plan_text(plan, style));
        }
        out.push_str("Dry run: nothing was changed.\n");
        return out;
    }
    let status = if run.failed == 0 && run.stopped.is_none() {
        style.paint("32", "Sync complete")
    } else {
        style.paint("31", "Sync finished with failures")
    };
    let _ = writeln!(
        out,
        "{status}: {} applied, {} failed, {} skipped in {:.1}s.",
        run.applied,
        run.failed,
        run.skipped,
        run.duration_ms as f64 / 1000.0
    );
    if let Some(stopped) = &run.stopped {
        let _ = writeln!(out, "Stopped early: {stopped}");
    }
    for f in run.failures.iter().take(50) {
        let status = f
            .http_status
            .map(|s| format!(" (HTTP {s})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  ✗ {} {}{status}: {}",
            f.op,
            show(&f.subject),
            f.error
        );
    }
    if run.failures.len() > 50 {
        let _ = writeln!(
            out,
            "  … and {} more (see `idsync status`)",
            run.failures.len() - 50
        );
    }
    if run.failed > 0 {
        out.push_str("Failed operations are retried on the next cycle.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_control_characters_are_escaped() {
        assert_eq!(show("plain@example.com"), "plain@example.com");
        assert_eq!(show("evil\nINFO forged"), "\"evil\\nINFO forged\"");
        assert_eq!(show("\u{1b}[31mred"), "\"\\u{1b}[31mred\"");
    }
}

//! The summary of a `sync`.

use std::fmt::Write as _;

use crate::sync::RunSummary;

use super::{PlanView, Style, escape, json_text, plan_text, show};

pub fn run_json(run: &RunSummary) -> String {
    json_text(serde_json::to_string_pretty(run).expect("a summary always serialises"))
}

/// `sync --dry-run`: the plan it stopped at, as `plan` shows it.
pub fn dry_run_text(run: &RunSummary, view: PlanView) -> String {
    let mut out = String::new();
    if let Some(plan) = &run.dry_run_plan {
        out.push_str(&plan_text(plan, view));
    }
    out.push_str("Dry run: nothing was changed.\n");
    out
}

pub fn run_text(run: &RunSummary, style: Style) -> String {
    let mut out = String::new();
    if run.dry_run {
        return dry_run_text(run, PlanView::new(style));
    }
    let status = if run.failed == 0 && run.stopped.is_none() && run.held_groups > 0 {
        style.paint("33", "Sync complete, some groups held back")
    } else if run.failed == 0 && run.stopped.is_none() {
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
    if run.skipped_action_off > 0 {
        let _ = writeln!(
            out,
            "Not sent: {} operation{} whose action is off (policy.actions); `idsync log --outcome skipped` lists them.",
            run.skipped_action_off,
            if run.skipped_action_off == 1 { "" } else { "s" }
        );
    }
    if let Some(stopped) = &run.stopped {
        let _ = writeln!(out, "Stopped early: {}", escape(stopped));
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
            escape(&f.error)
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
    if run.held_groups > 0 {
        let _ = writeln!(
            out,
            "{} group(s) share a name with another group and were left unchanged (see the \
             warnings); the run ends with exit 1 until the names are unique.",
            run.held_groups
        );
    }
    out
}

//! `idsync status`: last runs, failures, pending work, quarantine.

use std::fmt::Write as _;

use crate::sync::inspect::StatusReport;

use super::{NOTE_EFFECT, escape, json_text, quote};

pub fn status_json(report: &StatusReport) -> String {
    if !report.exists {
        let paused = if report.paused {
            ",\"paused\":true"
        } else {
            ""
        };
        return format!("{{\"runs\":[],\"managed_users\":0,\"managed_groups\":0{paused}}}");
    }
    json_text(serde_json::to_string_pretty(report).expect("a status report always serialises"))
}

/// The line `status` starts with while provisioning is paused.
const PAUSED: &str = "Provisioning: paused (`paused: true` in the config): sync and daemon cycles are skipped with exit 6, reading and sending nothing; `idsync plan` shows what the next cycle would do";

pub fn status_text(report: &StatusReport) -> String {
    let mut out = String::new();
    if report.paused {
        let _ = writeln!(out, "{PAUSED}");
    }
    if !report.exists {
        let _ = writeln!(
            out,
            "No runs yet: {} does not exist.",
            report.state.display()
        );
        return out;
    }
    let _ = writeln!(out, "State: {}", report.state.display());
    let _ = writeln!(
        out,
        "Managed: {} users ({} active, {} disabled), {} groups; {} users removed",
        report.managed_users,
        report.active_users,
        report.disabled_users,
        report.managed_groups,
        report.removed_users
    );
    if let Some(m) = &report.mirror {
        let _ = writeln!(
            out,
            "Source mirror: {} users, {} groups; last full round {}; {}",
            m.users,
            m.groups,
            m.last_full_round.as_deref().unwrap_or("never"),
            if m.delta_links {
                "delta links committed"
            } else {
                "no delta link yet (the next cycle is a full round)"
            }
        );
    }
    if let Some(q) = report.quarantine.as_ref().filter(|q| q.failed_cycles > 0) {
        let _ = writeln!(
            out,
            "Quarantine: {} failed cycle(s) in a row{}; last reason: {}",
            q.failed_cycles,
            q.until
                .map(|u| format!(
                    ", cycles held until {} (`sync --force` runs one now)",
                    u.to_rfc3339()
                ))
                .unwrap_or_default(),
            q.reason.as_deref().map(quote).unwrap_or_default()
        );
    }
    for note in &report.target_notes {
        let _ = writeln!(out, "Target: {}; {NOTE_EFFECT}", escape(&note.to_string()));
    }
    let running = report.running.map(|holder| match holder.pid {
        Some(pid) => format!("running (PID {pid})"),
        None => "running".to_string(),
    });
    if let Some(running) = &running {
        let _ = writeln!(out, "Now: a sync is {running}");
    }
    if report.interrupted_operations > 0 {
        match &running {
            Some(running) => {
                let _ = writeln!(
                    out,
                    "Pending: {} operation(s) of the run that is {running}",
                    report.interrupted_operations
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "Pending: a run was interrupted with {} operation(s) in flight; the next sync resumes safely",
                    report.interrupted_operations
                );
            }
        }
    }
    out.push_str("\nRecent runs:\n");
    if report.runs.is_empty() {
        out.push_str("  none\n");
    }
    // Only the newest run can be the one holding the lock.
    let newest = report.runs.first().map(|r| r.id);
    for r in &report.runs {
        let code = match (r.exit_code, &running) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(running)) if Some(r.id) == newest && r.ended_at.is_none() => {
                running.clone()
            }
            (None, _) => "interrupted".into(),
        };
        let _ = writeln!(
            out,
            "  #{} {} {} {code}: {} planned, {} applied, {} failed{}",
            r.id,
            r.started_at,
            r.command,
            r.planned,
            r.applied,
            r.failed,
            r.error
                .as_deref()
                .map(|e| format!(" — {}", quote(e)))
                .unwrap_or_default()
        );
    }
    if let Some(first) = report.failures.first() {
        let _ = writeln!(out, "\nFailures of run #{}:", first.run_id);
        for f in &report.failures {
            let status = f
                .http_status
                .map(|s| format!(" HTTP {s}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {}{status}: {}",
                f.op,
                quote(&f.subject),
                escape(f.error.as_deref().unwrap_or(""))
            );
        }
    }
    out
}

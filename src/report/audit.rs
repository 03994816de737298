//! `idsync audit` as text, JSON, CSV and one self-contained HTML page.
//!
//! Text shows names through [`show`] and reasons through [`escape`]; JSON
//! carries the same characters as `\u` escapes; CSV quotes and escapes every
//! field and neutralises what a spreadsheet would take for a formula, as the
//! provisioning log does; the HTML page is rendered by a minijinja template
//! with auto-escaping, every string escaped as in text first, and nothing
//! loaded from anywhere (a Content-Security-Policy of `default-src 'none'`).

use std::fmt::Write as _;

use crate::plan::audit::Audit;
use crate::sync::audit::AuditReport;

use super::html::environment;
use super::log::spreadsheet_safe;
use super::{escape, json_text, plural, show};

const TEMPLATE: &str = include_str!("audit.html.j2");

/// A user as text: its userName (or id) and, when idsync manages it, its key.
fn who(user_name: Option<&str>, key: Option<&str>, scim_id: &str) -> String {
    let mut out = match user_name {
        Some(name) => show(name),
        None => format!("(no userName; SCIM id {})", show(scim_id)),
    };
    match key {
        Some(key) => {
            let _ = write!(out, " (key {})", show(key));
        }
        None => out.push_str(" (not managed by idsync)"),
    }
    out
}

fn orphans_text(out: &mut String, a: &Audit) {
    if a.orphans.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nOrphans ({}): active accounts no source record backs and idsync does not manage",
        a.orphans.len()
    );
    for o in &a.orphans {
        let name = o
            .user_name
            .as_deref()
            .map_or_else(|| "(no userName)".to_owned(), show);
        let mut facts = vec![format!("SCIM id {}", show(o.scim_id.as_str()))];
        if let Some(ext) = &o.external_id {
            facts.push(format!("externalId {}", show(ext)));
        }
        facts.push(match &o.created {
            Some(at) => format!("created {}", show(at)),
            None => "creation time not reported".to_owned(),
        });
        facts.push(if o.groups.is_empty() {
            "in no group".to_owned()
        } else {
            let groups: Vec<String> = o.groups.iter().map(|g| show(g)).collect();
            format!("in groups {}", groups.join(", "))
        });
        let _ = writeln!(out, "  - {name} ({})", facts.join("; "));
        if let Some(note) = &o.note {
            let _ = writeln!(out, "      {}", escape(note));
        }
    }
}

fn stale_text(out: &mut String, a: &Audit) {
    if a.stale.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nStale access ({}): accounts idsync manages, active although the source says otherwise",
        a.stale.len()
    );
    for s in &a.stale {
        let _ = writeln!(
            out,
            "  - {}: {}\n      {}",
            who(Some(&s.user_name), Some(s.key.as_str()), s.scim_id.as_str()),
            s.source,
            escape(&s.reason)
        );
    }
}

fn groups_text(out: &mut String, a: &Audit) {
    if !a.foreign_members.is_empty() {
        let _ = writeln!(
            out,
            "\nGroup access not from the directory ({}): members of idsync's groups the source does not put there",
            a.foreign_members.len()
        );
        for m in &a.foreign_members {
            let _ = writeln!(
                out,
                "  - {}: {}\n      {}",
                show(&m.group),
                who(
                    m.user_name.as_deref(),
                    m.key.as_ref().map(|k| k.as_str()),
                    m.scim_id.as_str()
                ),
                escape(&m.reason)
            );
        }
    }
    if !a.unmanaged_groups.is_empty() {
        let _ = writeln!(
            out,
            "\nGroups idsync neither manages nor was told to leave alone ({}):",
            a.unmanaged_groups.len()
        );
        for g in &a.unmanaged_groups {
            let created = g.created.as_deref().map_or_else(
                || "creation time not reported".to_owned(),
                |at| format!("created {}", show(at)),
            );
            let _ = writeln!(
                out,
                "  - {} (SCIM id {}; {} member{}; {created})",
                show(&g.display_name),
                show(g.scim_id.as_str()),
                g.members,
                plural(g.members)
            );
        }
    }
}

fn drift_text(out: &mut String, a: &Audit) {
    let d = &a.drift;
    if d.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nDrift (what `sync --full` would repair):");
    if d.users > 0 {
        let _ = writeln!(
            out,
            "  {} managed user{} differ{} from the source:",
            d.users,
            plural(d.users),
            if d.users == 1 { "s" } else { "" }
        );
        for (attr, n) in &d.by_attribute {
            let _ = writeln!(out, "    {attr}: {n} user{}", plural(*n));
        }
    }
    for (n, what) in [
        (d.missing_users, "managed user"),
        (d.missing_groups, "managed group"),
        (d.missing_memberships, "membership idsync pushed"),
    ] {
        if n > 0 {
            let _ = writeln!(out, "  {n} {what}{} missing from the target", plural(n));
        }
    }
}

fn protected_text(out: &mut String, a: &Audit) {
    if a.protected.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nProtected by policy.protect ({}; listed apart, not findings):",
        a.protected.len()
    );
    for p in &a.protected {
        let _ = writeln!(
            out,
            "  - {} {}: {}",
            p.kind,
            show(&p.name),
            escape(&p.finding)
        );
    }
}

/// The audit for people.
pub fn audit_text(report: &AuditReport) -> String {
    let a = &report.audit;
    let c = &a.counts;
    let mut out = format!(
        "Audit of {} at {}: the target holds {} user{} and {} group{}; idsync manages {} user{} and {} group{}; the source has {} user{} and {} group{} in scope.\n",
        escape(&report.target),
        report.generated_at,
        c.target_users,
        plural(c.target_users),
        c.target_groups,
        plural(c.target_groups),
        c.managed_users,
        plural(c.managed_users),
        c.managed_groups,
        plural(c.managed_groups),
        c.source_users,
        plural(c.source_users),
        c.source_groups,
        plural(c.source_groups),
    );
    orphans_text(&mut out, a);
    stale_text(&mut out, a);
    groups_text(&mut out, a);
    drift_text(&mut out, a);
    protected_text(&mut out, a);
    if a.is_clean() {
        out.push_str("\nNothing found: every active account, group and membership in the target is the source's, as idsync last pushed it.\n");
    } else {
        let n = a.findings();
        let _ = writeln!(out, "\n{n} finding{}.", plural(n));
    }
    out
}

/// The audit as JSON.
pub fn audit_json(report: &AuditReport) -> String {
    json_text(serde_json::to_string_pretty(report).expect("an audit always serialises"))
}

/// One CSV row: the finding, the object's name, key and SCIM id, its group,
/// when it was created, and the detail.
type Row = [String; 7];

fn csv_rows(a: &Audit) -> Vec<Row> {
    let text = |s: &str| s.to_owned();
    let opt = |s: Option<&str>| s.unwrap_or_default().to_owned();
    let mut rows: Vec<Row> = Vec::new();
    for o in &a.orphans {
        rows.push([
            text("orphan"),
            opt(o.user_name.as_deref()),
            String::new(),
            text(o.scim_id.as_str()),
            o.groups.join("; "),
            opt(o.created.as_deref()),
            opt(o.note.as_deref()),
        ]);
    }
    for s in &a.stale {
        rows.push([
            text("stale_access"),
            text(&s.user_name),
            text(s.key.as_str()),
            text(s.scim_id.as_str()),
            String::new(),
            String::new(),
            format!("{}: {}", s.source, s.reason),
        ]);
    }
    for m in &a.foreign_members {
        rows.push([
            text("member_not_from_source"),
            opt(m.user_name.as_deref()),
            opt(m.key.as_ref().map(|k| k.as_str())),
            text(m.scim_id.as_str()),
            text(&m.group),
            String::new(),
            text(&m.reason),
        ]);
    }
    for g in &a.unmanaged_groups {
        rows.push([
            text("unmanaged_group"),
            text(&g.display_name),
            String::new(),
            text(g.scim_id.as_str()),
            String::new(),
            opt(g.created.as_deref()),
            format!("{} members", g.members),
        ]);
    }
    let d = &a.drift;
    let drift = d
        .by_attribute
        .iter()
        .map(|(attr, n)| (attr.as_str(), *n))
        .chain([
            ("missing_users", d.missing_users),
            ("missing_groups", d.missing_groups),
            ("missing_memberships", d.missing_memberships),
        ]);
    for (what, n) in drift.filter(|(_, n)| *n > 0) {
        rows.push([
            text("drift"),
            text(what),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            n.to_string(),
        ]);
    }
    for p in &a.protected {
        rows.push([
            format!("protected_{}", p.kind),
            text(&p.name),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            text(&p.finding),
        ]);
    }
    rows
}

/// The findings as CSV, one row each, every field quoted, escaped and
/// neutralised.
pub fn audit_csv(report: &AuditReport) -> String {
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    let _ = writer.write_record([
        "finding", "name", "key", "scim_id", "group", "created", "detail",
    ]);
    for row in csv_rows(&report.audit) {
        let _ = writer.write_record(row.iter().map(|f| spreadsheet_safe(&escape(f))));
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

/// The audit as one self-contained HTML page.
pub fn audit_html(report: &AuditReport) -> String {
    let env = environment("audit.html", TEMPLATE);
    env.get_template("audit.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                report => report,
            })
        })
        .expect("the audit template renders any audit")
}

#[cfg(test)]
mod tests;

//! `idsync report --html FILE`: one self-contained HTML page — a chart of
//! operations and failures per run, managed users and groups over time, the
//! last run's operations, the quarantine and the guards. The charts are SVG
//! drawn here from numbers; the page is rendered by a minijinja template with
//! HTML auto-escaping, so every value from outside (names, errors) is escaped,
//! and every string is [`super::escape`]d first, as in text output: a control
//! character or a bidi override shows as `\u{202e}`, not as itself.
//! No script, font, style sheet or image is loaded from anywhere: a
//! Content-Security-Policy of `default-src 'none'` says so to the browser.

use minijinja::{AutoEscape, Environment, Value, context};
use serde::Serialize;

use crate::state::RunPoint;
use crate::sync::inspect::ReportData;

const TEMPLATE: &str = include_str!("report.html.j2");

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 40.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 20.0;

/// One run's bar: applied below, failed stacked on top.
#[derive(Serialize)]
struct Mark {
    id: i64,
    title: String,
    x: String,
    /// Where the run's number is written, under its bar.
    label_x: String,
    y_applied: String,
    h_applied: String,
    y_failed: String,
    h_failed: String,
}

#[derive(Serialize)]
struct OpsChart {
    width: f64,
    height: f64,
    left: f64,
    top: f64,
    base: f64,
    bar: String,
    max: i64,
    marks: Vec<Mark>,
}

#[derive(Serialize)]
struct Point {
    x: String,
    y: String,
    title: String,
}

#[derive(Serialize)]
struct CountChart {
    width: f64,
    height: f64,
    left: f64,
    top: f64,
    base: f64,
    max: i64,
    users: Vec<Point>,
    groups: Vec<Point>,
}

fn num(v: f64) -> String {
    format!("{v:.1}")
}

/// The horizontal slot of run `i` of `n`: its left edge and width.
fn slot(i: usize, n: usize) -> (f64, f64) {
    let width = (WIDTH - LEFT) / n.max(1) as f64;
    (LEFT + i as f64 * width, width)
}

fn ops_chart(runs: &[RunPoint]) -> OpsChart {
    let base = HEIGHT - BOTTOM;
    let span = base - TOP;
    let max = runs
        .iter()
        .map(|r| r.applied + r.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |v: i64| v as f64 / max as f64 * span;
    let (_, width) = slot(0, runs.len());
    let marks = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (x, _) = slot(i, runs.len());
            let (ha, hf) = (scale(r.applied), scale(r.failed));
            Mark {
                id: r.id,
                title: format!(
                    "run #{} ({}) {}: {} applied, {} failed",
                    r.id, r.command, r.started_at, r.applied, r.failed
                ),
                x: num(x + width * 0.15),
                label_x: num(x + width * 0.5),
                y_applied: num(base - ha),
                h_applied: num(ha),
                y_failed: num(base - ha - hf),
                h_failed: num(hf),
            }
        })
        .collect();
    OpsChart {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        top: TOP,
        base,
        bar: num((width * 0.7).max(1.0)),
        max,
        marks,
    }
}

fn count_chart(runs: &[RunPoint]) -> CountChart {
    let base = HEIGHT - BOTTOM;
    let span = base - TOP;
    let counted: Vec<&RunPoint> = runs
        .iter()
        .filter(|r| r.managed_users.is_some() && r.managed_groups.is_some())
        .collect();
    let max = counted
        .iter()
        .flat_map(|r| [r.managed_users, r.managed_groups])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1);
    let point = |i: usize, r: &RunPoint, v: i64, what: &str| {
        let (x, width) = slot(i, counted.len());
        Point {
            x: num(x + width / 2.0),
            y: num(base - v as f64 / max as f64 * span),
            title: format!("run #{} {}: {v} {what}", r.id, r.started_at),
        }
    };
    CountChart {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        top: TOP,
        base,
        max,
        users: counted
            .iter()
            .enumerate()
            .map(|(i, r)| point(i, r, r.managed_users.unwrap_or(0), "users"))
            .collect(),
        groups: counted
            .iter()
            .enumerate()
            .map(|(i, r)| point(i, r, r.managed_groups.unwrap_or(0), "groups"))
            .collect(),
    }
}

/// A template environment with HTML auto-escaping on, and every string
/// [`super::escape`]d before it is HTML-escaped; `template` added as `name`.
pub(super) fn environment(name: &'static str, template: &'static str) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_formatter(|out, state, value| match value.as_str() {
        Some(text) if !value.is_safe() => {
            minijinja::escape_formatter(out, state, &Value::from(super::escape(text)))
        }
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_template(name, template)
        .expect("the page's template compiles");
    env
}

/// The report page.
pub fn report_html(data: &ReportData) -> String {
    let env = environment("report.html", TEMPLATE);
    let ops = ops_chart(&data.runs);
    let counts = count_chart(&data.runs);
    env.get_template("report.html")
        .and_then(|t| {
            t.render(context! {
                data => data,
                ops_chart => ops,
                count_chart => counts,
            })
        })
        .expect("the report template renders any report")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OpKind;
    use crate::state::OpOutcome;

    fn run(id: i64, applied: i64, failed: i64) -> RunPoint {
        RunPoint {
            id,
            command: "sync".into(),
            started_at: format!("2026-01-0{id}T00:00:00Z"),
            exit_code: Some(if failed > 0 {
                crate::model::Exit::Partial
            } else {
                crate::model::Exit::Ok
            }),
            planned: applied + failed,
            applied,
            failed,
            error: None,
            managed_users: Some(10 + id),
            managed_groups: Some(2),
        }
    }

    fn data(runs: Vec<RunPoint>) -> ReportData {
        ReportData {
            generated_at: "2026-01-09T00:00:00Z".into(),
            since: "2025-12-10T00:00:00Z".into(),
            managed_users: 12,
            managed_groups: 2,
            last_run: runs.last().cloned(),
            runs,
            last_run_ops: vec![crate::state::OpLine {
                seq: 0,
                at: "2026-01-02T00:00:00Z".into(),
                op: OpKind::UpdateUser,
                subject: "<script>alert(1)</script>".into(),
                outcome: OpOutcome::Failed,
                http_status: Some(500),
                error: Some("\"quoted\" & <b>bold</b>\nerror: fake\u{1b}[2J\u{202e}".into()),
            }],
            quarantine: None,
            max_removals: "5%".into(),
            max_member_removals: "10%".into(),
            guard_stop: None,
        }
    }

    #[test]
    fn values_from_outside_are_escaped() {
        let html = report_html(&data(vec![run(1, 3, 0), run(2, 1, 1)]));
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&quot;quoted&quot; &amp; &lt;b&gt;bold&lt;&#x2f;b&gt;\\nerror: fake\\u{1b}[2J\\u{202e}"),
            "{html}"
        );
        assert!(!html.contains(['\u{1b}', '\u{202e}']), "{html}");
    }

    #[test]
    fn the_chart_has_one_mark_per_run_and_bars_in_proportion() {
        let chart = ops_chart(&[run(1, 4, 0), run(2, 1, 1)]);
        assert_eq!(chart.marks.len(), 2);
        assert_eq!(chart.max, 4);
        // The tallest bar spans the whole plot; a failure sits on its applied.
        assert_eq!(chart.marks[0].h_applied, num(HEIGHT - BOTTOM - TOP));
        assert_eq!(chart.marks[1].h_applied, chart.marks[1].h_failed);
        let html = report_html(&data(vec![run(1, 4, 0), run(2, 1, 1)]));
        assert_eq!(html.matches("class=\"run-mark\"").count(), 2);
        assert_eq!(html.matches("class=\"users-point\"").count(), 2);
    }

    #[test]
    fn a_report_without_runs_says_so() {
        let html = report_html(&data(Vec::new()));
        assert!(html.contains("No runs in this period."));
        assert!(!html.contains("<svg"));
    }
}

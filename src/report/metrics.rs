//! The metrics file: Prometheus text format (version 0.0.4) for
//! node_exporter's textfile collector, rendered from a cycle's facts.
//!
//! No sample carries a timestamp (the collector adds the scrape's), and no
//! label carries a user's or group's name: labels are operation names,
//! outcomes, kinds, statuses and HTTP codes. The `_total` counters continue
//! from the previous file, so they only grow while the file is kept; the last
//! success time is the state DB's, or the previous file's when the DB cannot
//! say.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::sync::facts::{ConcurrencyFacts, CycleFacts, DaemonFacts};

const LAST_SUCCESS: &str = "idsync_last_success_timestamp_seconds";
const OPERATIONS: &str = "idsync_operations_total";
const HTTP: &str = "idsync_http_requests_total";
const THROTTLED: &str = "idsync_throttled_total";

/// Renders the metrics file for `facts`; `previous` is the file as it was.
pub fn metrics_text(facts: &CycleFacts, previous: Option<&str>) -> String {
    let previous = previous.map(samples).unwrap_or_default();
    let mut out = String::new();

    let last_success = facts
        .last_success
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .or_else(|| previous.get(LAST_SUCCESS).copied())
        .unwrap_or(0.0);
    gauge(
        &mut out,
        LAST_SUCCESS,
        "Unix time the last cycle that ended with exit code 0 finished (0: never).",
        &[(String::new(), last_success)],
    );
    gauge(
        &mut out,
        "idsync_last_run_timestamp_seconds",
        "Unix time the last cycle finished, however it ended.",
        &[(
            String::new(),
            facts.finished_at.timestamp_millis() as f64 / 1000.0,
        )],
    );
    gauge(
        &mut out,
        "idsync_last_exit_code",
        "Exit code of the last cycle (0 ok, 1 failures, 2 input, 3 guard stop, 4 locked, 5 unreachable, 6 paused).",
        &[(String::new(), f64::from(facts.exit_code.code()))],
    );
    gauge(
        &mut out,
        "idsync_cycle_duration_seconds",
        "How long the last cycle took.",
        &[(String::new(), facts.duration.as_secs_f64())],
    );

    let operations = facts
        .operations
        .iter()
        .map(|(op, outcome, n)| (labels(&[("action", op), ("outcome", outcome)]), *n as f64));
    counter(
        &mut out,
        OPERATIONS,
        "Operations applied, failed or skipped, by action and outcome.",
        accumulate(&previous, OPERATIONS, operations),
    );

    let objects: Vec<(String, f64)> = facts
        .objects
        .iter()
        .map(|(kind, status, n)| (labels(&[("kind", kind), ("status", status)]), *n as f64))
        .collect();
    gauge(
        &mut out,
        "idsync_objects",
        "Users and groups idsync manages, by kind and status, after the last cycle.",
        &objects,
    );
    if let Some(source) = facts.source_objects {
        gauge(
            &mut out,
            "idsync_source_objects",
            "Users and groups in scope in the source at the last cycle that read it.",
            &[
                (labels(&[("kind", "user")]), source.users as f64),
                (labels(&[("kind", "group")]), source.groups as f64),
            ],
        );
    }

    let http = facts.http.iter().map(|(code, n)| {
        let code = if *code == 0 {
            "none".to_string()
        } else {
            code.to_string()
        };
        (labels(&[("code", &code)]), *n as f64)
    });
    counter(
        &mut out,
        HTTP,
        "SCIM requests by HTTP status (code=\"none\": no answer), retries included.",
        accumulate(&previous, HTTP, http),
    );
    counter(
        &mut out,
        THROTTLED,
        "429 answers from the target.",
        accumulate(
            &previous,
            THROTTLED,
            std::iter::once((String::new(), facts.throttled as f64)),
        ),
    );
    if let Some(c) = &facts.concurrency {
        concurrency(&mut out, c);
    }
    gauge(
        &mut out,
        "idsync_quarantined",
        "1 while cycles are quarantined (held back after repeated failures), else 0.",
        &[(String::new(), if facts.quarantined { 1.0 } else { 0.0 })],
    );
    gauge(
        &mut out,
        "idsync_paused",
        "1 when the last cycle was skipped because provisioning is paused (paused: true), else 0.",
        &[(
            String::new(),
            if facts.exit_code == crate::model::Exit::Paused {
                1.0
            } else {
                0.0
            },
        )],
    );
    out
}

/// The requests in flight the cycle allowed.
fn concurrency(out: &mut String, c: &ConcurrencyFacts) {
    gauge(
        out,
        "idsync_concurrency_auto",
        "1 when the requests in flight are found from the target's answers (concurrency: auto), 0 when fixed.",
        &[(String::new(), if c.auto { 1.0 } else { 0.0 })],
    );
    gauge(
        out,
        "idsync_concurrency_ceiling",
        "The most requests in flight allowed (concurrency_max under auto, else concurrency).",
        &[(String::new(), c.ceiling as f64)],
    );
    let limits: Vec<(String, f64)> = [
        ("settled", c.settled),
        ("last", c.last),
        ("min", c.min),
        ("max", c.max),
    ]
    .iter()
    .map(|(stat, v)| (labels(&[("stat", stat)]), *v as f64))
    .collect();
    gauge(
        out,
        "idsync_concurrency_limit",
        "The limit on requests in flight during the last cycle: the one most requests were sent under (settled), at the end (last), lowest and highest.",
        &limits,
    );
}

/// The daemon's own series, served on `/metrics` after the last cycle's
/// (never in the metrics file: they describe the process serving them).
pub fn daemon_metrics_text(facts: &DaemonFacts) -> String {
    let mut out = String::new();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    gauge(
        &mut out,
        "idsync_daemon_start_time_seconds",
        "Unix time the daemon started.",
        &[(String::new(), seconds(facts.started_at))],
    );
    gauge(
        &mut out,
        "idsync_daemon_cycle_running",
        "1 while a cycle runs, 0 while the daemon waits for the next.",
        &[(String::new(), flag(facts.cycle_running))],
    );
    if let Some(next) = facts.next_cycle_at {
        gauge(
            &mut out,
            "idsync_daemon_next_cycle_timestamp_seconds",
            "Unix time the next cycle is due (while the daemon waits for it).",
            &[(String::new(), seconds(next))],
        );
    }
    gauge(
        &mut out,
        "idsync_daemon_live",
        "1 when /healthz answers 200 (the loop is not stuck).",
        &[(String::new(), flag(facts.live))],
    );
    gauge(
        &mut out,
        "idsync_daemon_ready",
        "1 when /readyz answers 200 (the last cycle ended with exit 0 or 6).",
        &[(String::new(), flag(facts.ready))],
    );
    out
}

fn seconds(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// `{a="x",b="y"}` with the values escaped as the format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn gauge(out: &mut String, name: &str, help: &str, series: &[(String, f64)]) {
    family(out, name, help, "gauge", series.iter().cloned());
}

fn counter(out: &mut String, name: &str, help: &str, series: BTreeMap<String, f64>) {
    family(out, name, help, "counter", series.into_iter());
}

fn family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    series: impl Iterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in series {
        let _ = writeln!(out, "{name}{labels} {}", number(value));
    }
}

/// A sample value: integers without a fraction, others as Rust prints them.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// This cycle's counts added to the previous file's totals of `name`; series
/// the cycle did not see keep their total.
fn accumulate(
    previous: &BTreeMap<String, f64>,
    name: &str,
    now: impl Iterator<Item = (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut totals: BTreeMap<String, f64> = previous
        .iter()
        .filter_map(|(series, v)| {
            let labels = series.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then(|| (labels.to_string(), *v))
        })
        .collect();
    for (labels, n) in now {
        *totals.entry(labels).or_insert(0.0) += n;
    }
    totals
}

/// The samples of a file this module wrote: `name{labels}` → value. Lines it
/// cannot read are ignored (the counters then start again, which Prometheus
/// reads as a reset).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            value.is_finite().then(|| (series.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::facts::SourceCounts;
    use std::time::Duration;

    fn facts() -> CycleFacts {
        CycleFacts {
            finished_at: chrono::DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap(),
            duration: Duration::from_millis(1500),
            exit_code: crate::model::Exit::Partial,
            last_success: None,
            operations: vec![
                ("create_user".into(), "applied".into(), 3),
                ("create_user".into(), "failed".into(), 1),
            ],
            objects: vec![("user", "active".into(), 3), ("group", "active".into(), 1)],
            source_objects: Some(SourceCounts {
                users: 4,
                groups: 1,
            }),
            http: [(201, 3), (500, 2), (0, 1)].into_iter().collect(),
            throttled: 0,
            concurrency: Some(ConcurrencyFacts {
                auto: true,
                ceiling: 32,
                settled: 12,
                last: 11,
                min: 3,
                max: 14,
            }),
            quarantined: false,
            entered_quarantine: false,
            applied: 3,
            failed: 1,
            trouble: None,
            recovered: None,
        }
    }

    #[test]
    fn counters_continue_from_the_previous_file_and_last_success_survives_a_failure() {
        let first = metrics_text(
            &CycleFacts {
                last_success: chrono::DateTime::from_timestamp(1_699_999_000, 0),
                ..facts()
            },
            None,
        );
        assert!(first.contains("\nidsync_last_success_timestamp_seconds 1699999000\n"));
        assert!(first.contains("\nidsync_last_run_timestamp_seconds 1700000000.5\n"));
        assert!(
            first.contains(
                "\nidsync_operations_total{action=\"create_user\",outcome=\"applied\"} 3\n"
            )
        );
        assert!(first.contains("\nidsync_http_requests_total{code=\"none\"} 1\n"));
        // The DB cannot say: the previous file's success time is kept.
        let second = metrics_text(&facts(), Some(&first));
        assert!(second.contains("\nidsync_last_success_timestamp_seconds 1699999000\n"));
        assert!(
            second.contains(
                "\nidsync_operations_total{action=\"create_user\",outcome=\"applied\"} 6\n"
            )
        );
        assert!(second.contains("\nidsync_http_requests_total{code=\"500\"} 4\n"));
        assert!(second.contains("\nidsync_throttled_total 0\n"));
        // Never a timestamp on a sample: two fields per sample line.
        for line in second.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                series.ends_with('}') || !series.contains(' '),
                "a third field: {line}"
            );
        }
    }

    #[test]
    fn a_paused_cycle_says_so_and_keeps_the_last_success() {
        let paused = metrics_text(
            &CycleFacts {
                exit_code: crate::model::Exit::Paused,
                last_success: chrono::DateTime::from_timestamp(1_699_999_000, 0),
                operations: Vec::new(),
                failed: 0,
                ..facts()
            },
            None,
        );
        assert!(paused.contains("\nidsync_paused 1\n"), "{paused}");
        assert!(paused.contains("\nidsync_last_exit_code 6\n"), "{paused}");
        assert!(paused.contains("\nidsync_last_success_timestamp_seconds 1699999000\n"));
        let running = metrics_text(&facts(), None);
        assert!(running.contains("\nidsync_paused 0\n"), "{running}");
    }

    #[test]
    fn the_concurrency_chosen_is_shown_and_absent_when_the_target_was_not_reached() {
        let text = metrics_text(&facts(), None);
        for line in [
            "\nidsync_concurrency_auto 1\n",
            "\nidsync_concurrency_ceiling 32\n",
            "\nidsync_concurrency_limit{stat=\"settled\"} 12\n",
            "\nidsync_concurrency_limit{stat=\"last\"} 11\n",
            "\nidsync_concurrency_limit{stat=\"min\"} 3\n",
            "\nidsync_concurrency_limit{stat=\"max\"} 14\n",
            "\n# TYPE idsync_concurrency_limit gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
        let unreached = metrics_text(
            &CycleFacts {
                concurrency: None,
                ..facts()
            },
            None,
        );
        assert!(!unreached.contains("idsync_concurrency"), "{unreached}");
    }

    #[test]
    fn the_daemon_series_say_what_it_does_and_the_next_cycle_only_while_waiting() {
        let waiting = DaemonFacts {
            started_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            cycle_running: false,
            next_cycle_at: chrono::DateTime::from_timestamp(1_700_002_400, 0),
            live: true,
            ready: false,
        };
        let text = daemon_metrics_text(&waiting);
        for line in [
            "\nidsync_daemon_start_time_seconds 1700000000\n",
            "\nidsync_daemon_cycle_running 0\n",
            "\nidsync_daemon_next_cycle_timestamp_seconds 1700002400\n",
            "\nidsync_daemon_live 1\n",
            "\nidsync_daemon_ready 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let running = daemon_metrics_text(&DaemonFacts {
            cycle_running: true,
            next_cycle_at: None,
            ..waiting
        });
        assert!(running.contains("\nidsync_daemon_cycle_running 1\n"));
        assert!(!running.contains("idsync_daemon_next_cycle"), "{running}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\n")]), "{a=\"x\\\"y\\\\z\\n\"}");
    }
}

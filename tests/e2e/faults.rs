//! A misbehaving target: the real `scim2-server` behind the fault-injecting proxy
//! (`proxy.rs`), answering 429 storms (`Retry-After`, `X-RateLimit-Reset`), 5xx,
//! dropped connections (before and after the server acted), slow answers, a
//! revoked token, a target where every write fails, and one object the target
//! always refuses. After each, the target must hold exactly what the CSV says,
//! with no duplicate users or groups; and the client-side rate limit must hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Directory, Idsync, Output, ScimServer, TargetContents, Workspace, assert_target_matches,
    fresh_token, str_at,
};
use crate::proxy::{Fault, FaultProxy, Schedule, max_in_window, seeded, steady_rate};

/// A server, the proxy in front of it, and a workspace whose target is the proxy.
pub struct Rig {
    pub server: ScimServer,
    pub proxy: FaultProxy,
    pub ws: Workspace,
    pub dir: Directory,
}

pub fn rig(tag: &str, n_users: usize, n_groups: usize, schedule: Schedule) -> Rig {
    let server = ScimServer::start(&fresh_token(tag));
    let proxy = FaultProxy::start(server.port(), schedule);
    let ws = Workspace::with_target(&proxy.base_url(), server.token());
    let dir = Directory::generate(n_users, n_groups);
    ws.write_directory(&dir);
    Rig {
        server,
        proxy,
        ws,
        dir,
    }
}

/// Rewrites the generated config: each `(from, to)` must occur in it.
pub fn edit_config(ws: &mut Workspace, edits: &[(&str, &str)]) {
    ws.edit_config(edits);
}

pub use crate::harness::{DEFAULT_RATE, DEFAULT_TIMEOUT_LINE};

/// Panics when two users share a userName or two groups a displayName.
pub fn assert_no_duplicates(target: &TargetContents) {
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for u in &target.users {
        *users
            .entry(str_at(u, "userName").to_lowercase())
            .or_default() += 1;
    }
    let dup_users: Vec<_> = users.iter().filter(|(_, n)| **n > 1).collect();
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for g in &target.groups {
        *groups
            .entry(str_at(g, "displayName").to_owned())
            .or_default() += 1;
    }
    let dup_groups: Vec<_> = groups.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup_users.is_empty() && dup_groups.is_empty(),
        "duplicates on the target: users {dup_users:?}, groups {dup_groups:?}"
    );
}

/// The target holds exactly `dir` (no duplicates), and a new plan is empty.
pub fn assert_exact(server: &ScimServer, ws: &Workspace, dir: &Directory) {
    let contents = server.contents();
    assert_no_duplicates(&contents);
    assert_target_matches(dir, &[], &contents);
    ws.assert_plan_empty();
}

/// `sync --format json`; exit 0, or exit 1 (a storm outlasted a retry budget)
/// followed by syncs until one exits 0 (at most `runs` in all).
pub fn sync_until_ok(ws: &Workspace, runs: usize) -> Vec<Output> {
    let mut outs = Vec::new();
    for _ in 0..runs {
        let out = ws.run(&["sync", "--format", "json"]);
        let code = out.code;
        outs.push(out);
        match code {
            0 => return outs,
            1 => continue,
            _ => break,
        }
    }
    let last = outs.last().expect("one run");
    panic!(
        "sync did not reach exit 0 in {} run(s); last exit {}\n{}",
        outs.len(),
        last.code,
        last.dump()
    );
}

/// After a 429 answered at `t` that asked for a wait of about a second, no request
/// may reach the target between `t + lo` and `t + hi`.
fn assert_waits_honoured(proxy: &FaultProxy, label: &str, lo: f64, hi: f64) {
    let entries = proxy.entries();
    let throttled: Vec<Duration> = entries
        .iter()
        .filter(|e| e.fault == label)
        .map(|e| e.arrived)
        .collect();
    assert!(
        !throttled.is_empty(),
        "no {label} answered: {}",
        proxy.summary()
    );
    for t in &throttled {
        let from = *t + Duration::from_secs_f64(lo);
        let to = *t + Duration::from_secs_f64(hi);
        let early: Vec<_> = entries
            .iter()
            .filter(|e| e.arrived > from && e.arrived < to)
            .map(|e| format!("{} {} at {:?}", e.method, e.path, e.arrived))
            .collect();
        assert!(
            early.is_empty(),
            "requests arrived within a second of a {label} answered at {t:?}: {early:?}"
        );
    }
}

#[test]
fn storm_of_429_with_retry_after() {
    // Bursts of five 429s every 20 requests.
    let schedule: Schedule = Arc::new(|r| {
        if r.seq >= 10 && r.seq % 20 < 5 {
            Fault::RetryAfter(1)
        } else {
            Fault::Forward
        }
    });
    let rig = rig("retry-after", 120, 4, schedule);
    sync_until_ok(&rig.ws, 3);
    assert!(
        rig.proxy.count_fault("429-retry-after") >= 20,
        "{}",
        rig.proxy.summary()
    );
    assert_waits_honoured(&rig.proxy, "429-retry-after", 0.3, 0.8);
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn storm_of_429_with_rate_limit_reset() {
    let schedule: Schedule = Arc::new(|r| {
        if r.seq >= 10 && r.seq % 20 < 5 {
            Fault::RateLimitReset(Duration::from_secs(1))
        } else {
            Fault::Forward
        }
    });
    let rig = rig("reset", 120, 4, schedule);
    sync_until_ok(&rig.ws, 3);
    assert!(
        rig.proxy.count_fault("429-reset") >= 20,
        "{}",
        rig.proxy.summary()
    );
    // The reset time has millisecond precision: allow for a shorter wait.
    assert_waits_honoured(&rig.proxy, "429-reset", 0.3, 0.7);
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn a_long_429_storm_fails_the_cycle_and_the_next_one_finishes() {
    // Everything after the first 30 requests is throttled for 12 s, longer than
    // `retry.max_elapsed` (5 s; 429s naming their reset do not use up attempts,
    // but max_elapsed bounds them): the cycle ends with failures (exit 1), and
    // the next one completes.
    let storm_until: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let schedule: Schedule = {
        let storm_until = Arc::clone(&storm_until);
        Arc::new(move |r| {
            let mut until = storm_until.lock().unwrap();
            if r.seq < 30 {
                return Fault::Forward;
            }
            let end = *until.get_or_insert_with(|| Instant::now() + Duration::from_secs(12));
            if Instant::now() < end {
                Fault::RetryAfter(1)
            } else {
                Fault::Forward
            }
        })
    };
    let mut rig = rig("long-storm", 100, 3, schedule);
    edit_config(
        &mut rig.ws,
        &[(
            DEFAULT_TIMEOUT_LINE,
            "  retry: { max_attempts: 3, max_elapsed: 5s }\n  timeout: ",
        )],
    );
    let first = rig.ws.run(&["sync", "--format", "json"]);
    first.assert_code(1);
    assert!(
        first.json()["failed"].as_u64().unwrap_or(0) > 0,
        "{}",
        first.dump()
    );
    // Wait out the storm, then finish.
    let end = storm_until.lock().unwrap().expect("the storm started");
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    rig.ws.sync_ok();
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn intermittent_503() {
    let rig = rig(
        "503",
        150,
        4,
        seeded(
            503,
            0.15,
            Fault::Status(503, "service unavailable (proxy)".into()),
        ),
    );
    sync_until_ok(&rig.ws, 3);
    assert!(
        rig.proxy.count_fault("status") >= 10,
        "{}",
        rig.proxy.summary()
    );
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn connections_dropped_before_forwarding() {
    let rig = rig("drop", 150, 4, seeded(7, 0.12, Fault::Drop));
    sync_until_ok(&rig.ws, 3);
    assert!(
        rig.proxy.count_fault("drop") >= 10,
        "{}",
        rig.proxy.summary()
    );
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn connections_dropped_after_the_target_created_the_object() {
    // Every 4th user create and every other group create reaches the server, which
    // creates the object; the client never sees the answer. The retry must come
    // back as 409 and be adopted, not duplicated.
    let schedule: Schedule = Arc::new(|r| {
        let users = r.is("POST", "Users") && r.kind_seq % 4 == 1;
        let groups = r.is("POST", "Groups") && r.kind_seq % 2 == 0;
        if users || groups {
            Fault::ForwardThenDrop
        } else {
            Fault::Forward
        }
    });
    let rig = rig("drop-after", 120, 5, schedule);
    sync_until_ok(&rig.ws, 3);
    let entries = rig.proxy.entries();
    let dropped_user_creates = entries
        .iter()
        .filter(|e| {
            e.kind == "POST /Users" && e.fault == "forward-then-drop" && e.status == Some(201)
        })
        .count();
    let conflicts = entries
        .iter()
        .filter(|e| e.kind == "POST /Users" && e.status == Some(409))
        .count();
    assert!(dropped_user_creates >= 20, "{}", rig.proxy.summary());
    assert!(
        conflicts >= 20,
        "retries of dropped creates should meet 409: {}",
        rig.proxy.summary()
    );
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn slow_answers_under_the_timeout() {
    let schedule: Schedule = Arc::new(|r| {
        if r.seq % 3 == 0 {
            Fault::Delay(Duration::from_millis(1500))
        } else {
            Fault::Forward
        }
    });
    let rig = rig("slow", 100, 3, schedule);
    // timeout 10s (the workspace default): every slow answer arrives in time.
    let out = rig.ws.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    assert_eq!(out.json()["failed"], 0, "{}", out.dump());
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn creates_slower_than_the_timeout_are_not_duplicated() {
    // Every 5th user create is held 3 s, then forwarded anyway, with a 2 s client
    // timeout: the client retries while (or before) the first request creates the user.
    let schedule: Schedule = Arc::new(|r| {
        if r.is("POST", "Users") && r.kind_seq % 5 == 0 {
            Fault::Delay(Duration::from_secs(3))
        } else {
            Fault::Forward
        }
    });
    let mut rig = rig("timeout", 60, 3, schedule);
    rig.ws.timeout = "2s".into();
    sync_until_ok(&rig.ws, 3);
    // Let the held requests land before looking.
    std::thread::sleep(Duration::from_secs(4));
    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn a_refused_token_stops_at_once_and_changes_nothing() {
    let server = ScimServer::start(&fresh_token("refused"));
    let proxy = FaultProxy::start(server.port(), crate::proxy::pass_through());
    let mut ws = Workspace::with_target(&proxy.base_url(), &fresh_token("wrong"));
    ws.extra_secrets.push(server.token().to_owned());
    ws.write_directory(&Directory::generate(50, 3));
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(5);
    assert!(
        proxy.requests() <= 3,
        "a refused token should stop the cycle at once: {}",
        proxy.summary()
    );
    assert_eq!(proxy.count_kind("POST /Users"), 0, "{}", proxy.summary());
    let contents = server.contents();
    assert!(contents.users.is_empty() && contents.groups.is_empty());
}

#[test]
fn a_token_revoked_mid_run_stops_the_cycle_at_once() {
    const REVOKED_AT: usize = 40;
    let schedule: Schedule = Arc::new(|r| {
        if r.seq >= REVOKED_AT {
            Fault::Status(401, "token revoked (proxy)".into())
        } else {
            Fault::Forward
        }
    });
    let rig = rig("revoked", 150, 3, schedule);
    let out = rig.ws.run(&["sync", "--format", "json"]);
    out.assert_code(5);
    let after = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.seq >= REVOKED_AT)
        .count();
    // Concurrency 4: at most the requests already in flight follow the first 401.
    assert!(
        after <= 6,
        "{after} requests after the token was refused: {}",
        rig.proxy.summary()
    );
    // What was created is recorded: the next (healthy) sync finishes without duplicates.
    rig.proxy.set_schedule(crate::proxy::pass_through());
    rig.ws.sync_ok();
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn failure_budget_stops_early_and_repeated_failures_quarantine() {
    let schedule: Schedule = Arc::new(|r| {
        if r.method == "POST" || r.method == "PATCH" {
            Fault::Status(500, "internal error (proxy)".into())
        } else {
            Fault::Forward
        }
    });
    let mut rig = rig("budget", 150, 3, schedule);
    edit_config(
        &mut rig.ws,
        &[(
            DEFAULT_TIMEOUT_LINE,
            "  retry: { max_attempts: 2, max_elapsed: 20s }\n  timeout: ",
        )],
    );
    let out = rig.ws.run(&["sync", "--format", "json"]);
    assert!(
        matches!(out.code, 1 | 5),
        "exit {}\n{}",
        out.code,
        out.dump()
    );
    let attempted: std::collections::BTreeSet<String> = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.kind == "POST /Users")
        .map(|e| e.body.clone())
        .collect();
    assert!(
        attempted.len() <= 40,
        "the cycle should stop well before sending all 150 creates; sent {}",
        attempted.len()
    );
    let status = rig
        .ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    let failures = status["failures"].as_array().cloned().unwrap_or_default();
    assert!(!failures.is_empty(), "status shows no failures: {status:#}");

    // A second failed cycle in a row: quarantine.
    let out = rig.ws.run(&["sync", "--format", "json"]);
    assert!(
        matches!(out.code, 1 | 5),
        "exit {}\n{}",
        out.code,
        out.dump()
    );
    let status = rig
        .ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert!(
        status["quarantine"]["failed_cycles"].as_u64().unwrap_or(0) >= 2,
        "{status:#}"
    );
    let text = rig.ws.run(&["status"]).assert_code(0).stdout.to_lowercase();
    assert!(text.contains("quarantine"), "status text: {text}");

    // The target recovers: a sync is still held until the quarantine ends
    // (exit 7); `--force` runs one at once, which lifts it.
    rig.proxy.set_schedule(crate::proxy::pass_through());
    rig.ws.run(&["sync"]).assert_code(7);
    rig.ws
        .run(&["sync", "--force", "--format", "json"])
        .assert_code(0);
    assert_exact(&rig.server, &rig.ws, &rig.dir);
    let status = rig
        .ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(status["quarantine"]["failed_cycles"], 0, "{status:#}");
}

#[test]
fn one_refused_user_fails_alone_and_is_retried_next_cycle() {
    const BAD: &str = "user0050@example.com";
    const DETAIL: &str = "userName user0050@example.com is reserved by the target (proxy)";
    let refuse = Arc::new(AtomicBool::new(true));
    let schedule: Schedule = {
        let refuse = Arc::clone(&refuse);
        Arc::new(move |r| {
            if refuse.load(Ordering::SeqCst) && r.is("POST", "Users") && r.body.contains(BAD) {
                Fault::Status(400, DETAIL.into())
            } else {
                Fault::Forward
            }
        })
    };
    let rig = rig("isolation", 120, 4, schedule);
    let out = rig.ws.run(&["sync", "--format", "json"]);
    out.assert_code(1);
    let summary = out.json();
    let failures = summary["failures"].as_array().cloned().unwrap_or_default();
    let ours: Vec<&Value> = failures
        .iter()
        .filter(|f| f["op"] == "create_user")
        .collect();
    assert_eq!(ours.len(), 1, "{summary:#}");
    let f = ours[0];
    assert!(
        str_at(f, "subject").contains(BAD) || str_at(f, "subject").contains("u0050"),
        "{f}"
    );
    assert_eq!(f["http_status"], 400, "{f}");
    assert!(
        str_at(f, "error").contains(DETAIL),
        "the SCIM detail is lost: {f}"
    );
    // Only one POST for the refused user: a 400 is not retried.
    let posts = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.kind == "POST /Users" && e.body.contains(BAD))
        .count();
    assert_eq!(posts, 1, "{}", rig.proxy.summary());
    // Everyone else is there.
    let mut without = rig.dir.clone();
    without.remove_user("u0050");
    let contents = rig.server.contents();
    assert_no_duplicates(&contents);
    assert_target_matches(&without, &[], &contents);

    // The target accepts the user now: the next cycle creates it.
    refuse.store(false, Ordering::SeqCst);
    rig.ws.sync_ok();
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn rate_limit_is_never_exceeded() {
    rate_limit_holds_at("  concurrency: 4\n");
}

/// `concurrency: auto` grows its limit while the round trip holds, which it
/// does under a rate limit: the token bucket still paces every request.
#[test]
fn rate_limit_is_never_exceeded_under_auto_concurrency() {
    rate_limit_holds_at("  concurrency: auto\n");
}

/// A sync at `concurrency` (its config line) under a limit of 20 requests
/// a second, burst 1: never more, and not much less.
fn rate_limit_holds_at(concurrency: &str) {
    const RATE: usize = 20;
    const BURST: usize = 1;
    let mut rig = rig("pacing", 110, 0, crate::proxy::pass_through());
    edit_config(
        &mut rig.ws,
        &[
            (DEFAULT_RATE, "rate_limit: { per_second: 20, burst: 1 }"),
            ("  concurrency: 4\n", concurrency),
        ],
    );
    rig.ws.sync_ok();
    let times = rig.proxy.forwarded_times();
    assert!(times.len() >= 100, "only {} requests", times.len());
    let max = max_in_window(&times, Duration::from_secs(1));
    let rate = steady_rate(&times, 0.1);
    assert!(
        max <= RATE + BURST,
        "{max} requests in one second with rate {RATE}/s, burst {BURST}"
    );
    assert!(
        rate <= RATE as f64 * 1.05 && rate >= RATE as f64 * 0.75,
        "steady rate {rate:.1}/s with rate {RATE}/s"
    );
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn the_daemon_keeps_running_after_a_cycle_stopped_by_the_failure_budget() {
    // A cycle stopped by the failure budget must not look like SIGTERM to the
    // daemon: it logs the failure and runs the next cycle on schedule.
    let schedule: Schedule = Arc::new(|r| {
        if r.method == "POST" || r.method == "PATCH" {
            Fault::Status(500, "internal error (proxy)".into())
        } else {
            Fault::Forward
        }
    });
    let mut rig = rig("daemon", 120, 2, schedule);
    edit_config(
        &mut rig.ws,
        &[
            (
                DEFAULT_TIMEOUT_LINE,
                "  retry: { max_attempts: 1 }\n  timeout: ",
            ),
            (
                "state: state/idsync.db\n",
                "state: state/idsync.db\nschedule: { interval: 1s }\n",
            ),
        ],
    );
    let mut daemon = rig.ws.spawn(&["daemon"]);
    let runs = |ws: &Workspace| -> usize {
        let status = ws.run(&["status", "--format", "json"]);
        if status.code != 0 {
            return 0;
        }
        status.json()["runs"].as_array().map_or(0, Vec::len)
    };
    // Two failed cycles (the second one a second after the first).
    let two = crate::harness::wait_until(Duration::from_secs(60), || {
        !daemon.is_running() || runs(&rig.ws) >= 2
    });
    assert!(
        two,
        "the daemon did not run two cycles: {}",
        rig.proxy.summary()
    );
    assert!(
        daemon.is_running(),
        "the daemon exited after a failed cycle: {}",
        rig.proxy.summary()
    );
    // Quarantined now: still alive, holding cycles.
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.is_running(), "the daemon exited while quarantined");
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(15));
    assert_eq!(out.code, 0, "{}", out.dump());
    assert!(
        out.stderr.to_lowercase().contains("quarantine"),
        "the daemon should log the quarantine\n{}",
        out.dump()
    );
}

/// `concurrency: auto` against a server 50 ms away that answers 429
/// (`Retry-After: 1`) whenever more than `LIMIT` requests are in flight
/// (without the distance, the local server's round trip rises first and
/// auto stays under `LIMIT` without a 429): the sync converges
/// exactly, nothing lost or duplicated, and the limit it reports (log and
/// metrics file) settled at or below `LIMIT`, with few 429s beyond the first
/// ones that taught it.
#[test]
fn auto_concurrency_settles_under_a_servers_in_flight_limit() {
    const LIMIT: usize = 6;
    let mut rig = rig(
        "auto-concurrency",
        300,
        4,
        crate::proxy::in_flight_limit(LIMIT, 1, Duration::from_millis(50)),
    );
    edit_config(
        &mut rig.ws,
        &[("  concurrency: 4\n", "  concurrency: auto\n")],
    );
    rig.ws.raw_config = Some(rig.ws.config_text() + "metrics_file: metrics.prom\n");
    let out = rig.ws.run(&["sync", "--format", "json"]);
    out.assert_code(0);
    let throttled = rig.proxy.count_fault("429-retry-after");
    let requests = rig.proxy.requests();
    assert!(
        throttled > 0,
        "the limit was never met: {}",
        rig.proxy.summary()
    );
    assert!(
        throttled * 10 < requests,
        "{throttled} of {requests} requests answered 429: it did not settle"
    );

    let settled = |text: &str| -> usize {
        let (_, rest) = text
            .split_once("concurrency: auto settled at ")
            .unwrap_or_else(|| panic!("no settled line in the log:\n{text}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let logged = settled(&out.stderr);
    let metrics = std::fs::read_to_string(rig.ws.path().join("metrics.prom")).expect("metrics");
    let sample = |series: &str| -> usize {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(sample("idsync_concurrency_limit{stat=\"settled\"}"), logged);
    assert_eq!(sample("idsync_concurrency_auto"), 1);
    assert_eq!(sample("idsync_concurrency_ceiling"), 32);
    assert!(
        (1..=LIMIT).contains(&logged),
        "settled at {logged}, the server allows {LIMIT}\n{}",
        out.stderr
    );
    assert!(
        sample("idsync_concurrency_limit{stat=\"max\"}") > LIMIT,
        "it never tried more"
    );

    rig.proxy.set_schedule(crate::proxy::pass_through());
    assert_exact(&rig.server, &rig.ws, &rig.dir);
    // No create sent twice: one answered create per user on the target.
    let posts = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.kind == "POST /Users" && e.status == Some(201))
        .count();
    assert_eq!(posts, rig.server.users().len(), "{}", rig.proxy.summary());
    eprintln!(
        "settled at {logged} under a limit of {LIMIT}; {throttled} of {requests} requests answered 429"
    );
}

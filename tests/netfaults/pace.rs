//! The concurrency sweep behind the README's `concurrency: auto` figures:
//! an initial sync into a fresh scim2-server over a link with a 100 ms round
//! trip (netem where the kernel has it, else the delaying relay), at each
//! fixed concurrency of a sweep and then with `concurrency: auto`; it prints
//! each rate, the best fixed one, and auto's ratio to it against the 90 %
//! target. Not a timed test: ignored by default, run by
//! `scripts/concurrency-bench.sh`; each sync is checked (exit 0, every user
//! on the target), the rates only printed.
//!
//! `PACE_USERS` (3,000 by default) users per sync; the slow points
//! (concurrency 1 and 2, where a 3,000-user sync takes ten and five
//! minutes) sync `PACE_SLOW_USERS` (600) instead: their rate is flat over a
//! run. `PACE_POINTS` lists the fixed concurrencies (`1,2,4,8,16,32`).

use std::time::{Duration, Instant};

use crate::rig::ScimRig;
use crate::support::netns::available;
use crate::support::relay::Delay;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 50 ms ± 2 ms each way, nothing reordered: a 100 ms round trip.
fn rtt_100ms() -> Delay {
    Delay {
        one_way: Duration::from_millis(50),
        jitter: Duration::from_millis(2),
        reorder: 0.0,
        handshake: true,
    }
}

/// One sync of the sweep: its users, time, and (auto) the limit it settled at.
struct Point {
    users: usize,
    took: Duration,
    settled: Option<String>,
}

impl Point {
    fn rate(&self) -> f64 {
        self.users as f64 / self.took.as_secs_f64()
    }
}

/// An initial sync of `users` users at `concurrency` (`auto` or a number)
/// into a fresh server behind the delayed link.
fn sync_at(concurrency: &str, users: usize) -> Point {
    let mut rig = ScimRig::start("nf-pace", users, 10, Some(rtt_100ms()));
    rig.ws.edit_config(&[(
        "  concurrency: 4\n",
        &format!("  concurrency: {concurrency}\n"),
    )]);
    // Two round trips a request (a new connection each), one at a time at
    // worst: more than that is a hang.
    rig.ws.run_timeout = Duration::from_secs(120) + Duration::from_millis(250) * users as u32;
    // PACE_LOG_DIR keeps each sync's debug log (the limit's every move).
    let log_dir = std::env::var_os("PACE_LOG_DIR");
    let args: &[&str] = if log_dir.is_some() {
        &["sync", "-vv"]
    } else {
        &["sync"]
    };
    let started = Instant::now();
    let out = rig.ws.run(args);
    let took = started.elapsed();
    if let Some(dir) = log_dir {
        let file = std::path::Path::new(&dir).join(format!("{concurrency}-{users}.log"));
        std::fs::write(&file, &out.stderr).expect("write the sync's log");
    }
    out.assert_code(0);
    let active = rig.dir.users.iter().filter(|u| u.active).count();
    assert_eq!(
        rig.user_count(),
        active as u64,
        "every active user on the target"
    );
    let settled = out
        .stderr
        .split_once("concurrency: auto settled at ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(figures, _)| format!("{figures})"));
    let how = rig.link.as_ref().map_or("-", |l| l.how);
    let p = Point {
        users,
        took,
        settled,
    };
    println!(
        "figure: concurrency {concurrency}: {users} users in {:.1} s = {:.1} users/s ({how}){}",
        took.as_secs_f64(),
        p.rate(),
        p.settled
            .as_deref()
            .map(|s| format!("; settled at {s}"))
            .unwrap_or_default()
    );
    p
}

#[test]
#[ignore = "a benchmark of several minutes: scripts/concurrency-bench.sh runs it"]
fn concurrency_sweep_at_100ms_rtt() {
    if !available() {
        return;
    }
    let users: usize = env_or("PACE_USERS", 3000);
    let slow_users: usize = env_or("PACE_SLOW_USERS", 600).min(users);
    let points: Vec<usize> = std::env::var("PACE_POINTS")
        .unwrap_or_else(|_| "1,2,4,8,16,32".into())
        .split(',')
        .map(|p| p.trim().parse().expect("PACE_POINTS: numbers like 1,2,4"))
        .collect();
    let mut best: Option<(usize, f64)> = None;
    for &c in &points {
        let n = if c <= 2 { slow_users } else { users };
        let rate = sync_at(&c.to_string(), n).rate();
        if best.is_none_or(|(_, r)| rate > r) {
            best = Some((c, rate));
        }
    }
    let auto = sync_at("auto", users);
    let (best_c, best_rate) = best.expect("at least one fixed point");
    let ratio = auto.rate() / best_rate;
    println!(
        "figure: best fixed concurrency {best_c} at {best_rate:.1} users/s; auto {:.1} users/s = {:.1} % of it (target at least 90 %) {}",
        auto.rate(),
        ratio * 100.0,
        if ratio >= 0.90 { "✔" } else { "✘" }
    );
}

/// The short form, run by `scripts/test.sh` after the other tests and by
/// itself (it compares rates, which a neighbour's load would skew): 300
/// users at fixed concurrency 8 and 16, each followed by an auto run. The
/// better auto run must reach half the better fixed one: on two busy cores a
/// 300-user sync's rate moves by a third from run to run, and one stall of
/// this server's listen queue (a second or more) weighs on a sync this
/// short whatever its concurrency (the 90 % target is the sweep's, which
/// `scripts/concurrency-bench.sh` measures); but a controller that holds a
/// limit the target cannot take falls far below half in both runs (one
/// that took a stalled target for a slower path synced 17.2 users/s against
/// 45.6 at a fixed 16). And the limit must have grown past its start (4).
#[test]
#[ignore = "compares rates, so it runs alone: scripts/test.sh runs it after the other tests"]
fn auto_keeps_up_with_fixed_8_and_16_at_100ms_rtt() {
    if !available() {
        return;
    }
    let users = 300;
    let (mut fixed, mut auto, mut grew) = (0.0f64, 0.0f64, 0usize);
    for c in ["8", "16"] {
        fixed = fixed.max(sync_at(c, users).rate());
        let run = sync_at("auto", users);
        let max: usize = run
            .settled
            .as_deref()
            .and_then(|s| s.split_once("max ")?.1.split(',').next()?.parse().ok())
            .expect("the log says how high auto went");
        grew = grew.max(max);
        auto = auto.max(run.rate());
    }
    assert!(grew >= 8, "auto never grew past its start");
    assert!(
        auto >= 0.5 * fixed,
        "auto {auto:.1} users/s at best, below half the better fixed rate {fixed:.1} users/s"
    );
}

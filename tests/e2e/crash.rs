//! Crashes: `idsync sync` killed with SIGKILL at many points of a run (creates,
//! groups, memberships, removals; with and without requests in flight at a slow
//! target), and stopped with SIGTERM. The next full sync must finish with exit 0,
//! the target must hold exactly what the CSV says with no duplicates, and the
//! state must agree (a following plan is empty).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::faults::{assert_exact, assert_no_duplicates, rig};
use crate::harness::{
    Directory, Idsync, ScimServer, Workspace, assert_target_matches, fresh_token,
};
use crate::proxy::{Fault, Rng, Schedule, pass_through};

/// How long one uninterrupted first sync of `dir` takes here (its own server).
fn measure_sync(dir: &Directory) -> Duration {
    let server = ScimServer::start(&fresh_token("measure"));
    let ws = Workspace::new(&server);
    ws.write_directory(dir);
    let started = Instant::now();
    ws.sync_ok();
    started.elapsed()
}

/// Starts `sync`, SIGKILLs it after `delay`; returns its exit code (-1 when the
/// kill landed, otherwise the code it finished with first).
fn sync_killed_after(ws: &Workspace, delay: Duration) -> i32 {
    let mut running = ws.spawn(&["sync", "--format", "json"]);
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline && running.is_running() {
        std::thread::sleep(Duration::from_millis(5));
    }
    running.signal("KILL");
    let out = running.wait(Duration::from_secs(30));
    assert!(
        (-1..=1).contains(&out.code),
        "sync ended with exit {} before the kill\n{}",
        out.code,
        out.dump()
    );
    out.code
}

/// Users, groups and memberships on the target now.
fn progress(server: &ScimServer) -> (usize, usize, usize) {
    let c = server.contents();
    let members = c
        .groups
        .iter()
        .map(|g| g["members"].as_array().map_or(0, Vec::len))
        .sum();
    (c.users.len(), c.groups.len(), members)
}

/// Starts `sync`, SIGKILLs it once `cond` holds or after `limit`; returns its exit
/// code (-1 when the kill landed, otherwise the code it finished with first).
fn sync_killed_when(ws: &Workspace, limit: Duration, cond: impl Fn() -> bool) -> i32 {
    let mut running = ws.spawn(&["sync", "--format", "json"]);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && running.is_running() && !cond() {
        std::thread::sleep(Duration::from_millis(2));
    }
    running.signal("KILL");
    let out = running.wait(Duration::from_secs(30));
    assert!(
        (-1..=1).contains(&out.code),
        "sync ended with exit {} before the kill\n{}",
        out.code,
        out.dump()
    );
    out.code
}

/// `status` works on the state a kill left behind.
fn status_ok(ws: &Workspace) {
    let status = ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    assert!(status["runs"].is_array(), "{status:#}");
}

#[test]
fn sigkill_at_many_points_then_resume() {
    let dir = Directory::generate(600, 10);
    let full = measure_sync(&dir);
    // The same sync through a pass-through proxy, counting its requests: the kill
    // points are request counts, spread over the whole run (user creates, group
    // creates, memberships), so they do not all land in the long first phase.
    let total = {
        let rig = rig("sigkill-measure", 600, 10, pass_through());
        rig.ws.sync_ok();
        rig.proxy.writes()
    };
    eprintln!("uninterrupted sync of 600 users / 10 groups: {full:?}, {total} writes");

    let rig = rig("sigkill", 600, 10, pass_through());
    let (server, ws, dir) = (&rig.server, &rig.ws, &rig.dir);
    let mut rng = Rng::new(0x5eed_c4a5);
    let mut killed = 0;
    let mut phases = std::collections::BTreeSet::new();
    for i in 0..8 {
        // The kill lands once the proxy has seen `at` writes in all (completed
        // work is not repeated, so the running count of POST/PATCH/DELETE tracks
        // progress; after a kill, the lookups of interrupted creates are GETs);
        // a time limit (a seeded share of an uninterrupted run) kills a run that
        // gets there late.
        // Six kills spread over the user creates (about 97% of the writes), then
        // two in the short tail: group creates, then membership adds.
        let at = match i {
            0..6 => ((i as f64 + rng.unit()) / 6.0 * 0.95 * total as f64) as usize,
            6 => total - 18 + rng.range(0, 5) as usize,
            _ => total - 6 + rng.range(0, 3) as usize,
        };
        let limit = full.mul_f64(0.5 + rng.unit());
        let code = sync_killed_when(ws, limit, || rig.proxy.writes() >= at);
        let (users, groups, members) = progress(server);
        eprintln!(
            "run {i}: killed at write {} (aimed at {at}) -> exit {code}; target: {users} users, {groups} groups, {members} memberships",
            rig.proxy.writes()
        );
        if code == -1 {
            killed += 1;
            let active = dir.users.iter().filter(|u| u.active).count();
            phases.insert(match (users, groups) {
                (u, _) if u < active => "user creates",
                (_, g) if g < 10 => "group creates",
                _ => "memberships or later",
            });
        }
        if rng.unit() < 0.4 {
            status_ok(ws);
        }
        if code == 0 {
            break;
        }
    }
    assert!(killed >= 3, "only {killed} of the runs were killed mid-way");
    eprintln!("kills landed during: {phases:?}");
    assert!(phases.len() >= 2, "the kills all landed during {phases:?}");
    ws.sync_ok();
    assert_exact(server, ws, dir);
}

#[test]
fn sigkill_during_removals_loses_none() {
    let dir = Directory::generate(600, 10);
    let server = ScimServer::start(&fresh_token("sigkill-rm"));
    let mut ws = Workspace::new(&server);
    ws.remove_action = "delete".into();
    ws.max_removals = "100%".into();
    ws.write_directory(&dir);
    let started = Instant::now();
    ws.sync_ok();
    let full = started.elapsed();

    // Remove 30% of the users (and their memberships).
    let mut smaller = dir.clone();
    let removed: Vec<String> = dir
        .users
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 < 3)
        .map(|(_, u)| u.id.clone())
        .collect();
    for id in &removed {
        smaller.remove_user(id);
    }
    ws.write_directory(&smaller);
    let mut rng = Rng::new(0x0de1_e7e5);
    let mut killed = 0;
    for i in 0..5 {
        // The removals are about a third of the first sync's work.
        let delay = full.mul_f64(0.05 + 0.1 * rng.unit());
        let code = sync_killed_after(&ws, delay);
        let (users, _, members) = progress(&server);
        eprintln!(
            "removal run {i}: killed after {delay:?} -> exit {code}; target: {users} users, {members} memberships"
        );
        if code == -1 {
            killed += 1;
        }
        if code == 0 {
            break;
        }
    }
    assert!(killed >= 1, "no removal run was killed mid-way");
    ws.sync_ok();
    let contents = server.contents();
    assert_no_duplicates(&contents);
    for id in &removed {
        let name = dir.user(id).user_name();
        assert!(
            contents.users_named(&name).is_empty(),
            "removed user {id} ({name}) is still on the target"
        );
    }
    assert_target_matches(&smaller, &[], &contents);
    ws.assert_plan_empty();
}

/// Every request held `ms` at the proxy before it is forwarded.
fn slow(ms: u64) -> Schedule {
    Arc::new(move |_| Fault::Delay(Duration::from_millis(ms)))
}

#[test]
fn sigterm_stops_soon_records_the_run_and_the_next_sync_finishes() {
    let rig = rig("sigterm", 150, 4, slow(150));
    let mut running = rig.ws.spawn(&["sync", "--format", "json"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(running.is_running(), "the slow sync ended before SIGTERM");
    let posts_before = rig.proxy.count_kind("POST /Users");
    running.signal("TERM");
    let sent = Instant::now();
    let out = running.wait(Duration::from_secs(30));
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to stop the run"
    );
    assert_eq!(out.code, 1, "an interrupted run exits 1\n{}", out.dump());
    let summary = out.json();
    assert!(
        summary["stopped"].as_str().unwrap_or("").contains("signal"),
        "{summary:#}"
    );
    // No new work after the signal: at most the requests in flight (concurrency 4).
    let posts_after = rig.proxy.count_kind("POST /Users");
    assert!(
        posts_after <= posts_before + 8,
        "{} creates were sent after SIGTERM",
        posts_after - posts_before
    );
    let status = rig
        .ws
        .run(&["status", "--format", "json"])
        .assert_code(0)
        .json();
    let last = &status["runs"][0];
    assert_eq!(
        last["exit_code"], 1,
        "the interrupted run is recorded: {status:#}"
    );
    assert_eq!(status["interrupted_operations"], 0, "{status:#}");

    rig.proxy.set_schedule(pass_through());
    rig.ws.sync_ok();
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

#[test]
fn sigkill_with_requests_in_flight_at_a_slow_target() {
    // Each request is held 300 ms: a kill lands with requests in flight, which
    // the proxy still delivers to the server after idsync is gone.
    let rig = rig("sigkill-slow", 120, 4, slow(300));
    let mut rng = Rng::new(0x51_0e);
    let mut killed = 0;
    for i in 0..5 {
        let delay = Duration::from_millis(rng.range(800, 2500));
        let code = sync_killed_after(&rig.ws, delay);
        eprintln!("slow run {i}: killed after {delay:?} -> exit {code}");
        if code == -1 {
            killed += 1;
        }
        // Let the orphaned requests land.
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(killed >= 3, "only {killed} runs were killed mid-way");
    rig.proxy.set_schedule(pass_through());
    rig.ws.sync_ok();
    assert_exact(&rig.server, &rig.ws, &rig.dir);
}

/// `plan` and `sync --dry-run` after a run killed with creates in flight
/// settle them in memory as the next `sync` does: they show the plan that
/// sync applies, not creates of accounts the target already holds, and
/// record nothing.
#[test]
fn plan_after_a_kill_is_the_plan_the_next_sync_applies() {
    let rig = rig("plan-after-kill", 80, 3, slow(300));
    let code = sync_killed_when(&rig.ws, Duration::from_secs(30), || {
        progress(&rig.server).0 >= 8
    });
    assert_eq!(code, -1, "the kill landed before the run finished");
    // Let the orphaned requests land, then take the delay away.
    std::thread::sleep(Duration::from_millis(400));
    rig.proxy.set_schedule(pass_through());
    let interrupted = || {
        rig.ws
            .run(&["status", "--format", "json"])
            .assert_code(0)
            .json()["interrupted_operations"]
            .as_u64()
    };
    let in_flight = interrupted();
    assert!(
        in_flight > Some(0),
        "the journal holds the killed run's operations"
    );

    let plan = rig.ws.run(&["plan", "--format", "json"]);
    plan.assert_code(0);
    assert!(
        plan.stderr
            .contains("this plan settles them as the next `sync` will"),
        "{}",
        plan.dump()
    );
    let plan = plan.json();
    let dry = rig
        .ws
        .run(&["sync", "--dry-run", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(dry, plan, "sync --dry-run --format json is not the plan");
    // Every user on the target was made by idsync: the audit counts the
    // killed run's as its own too, as the next sync records them.
    let audit = rig.ws.run(&["audit", "--format", "json"]).json();
    assert_eq!(
        audit["counts"]["managed_users"].as_u64(),
        Some(rig.server.contents().users.len() as u64),
        "{audit:#}"
    );
    assert_eq!(
        interrupted(),
        in_flight,
        "plan, --dry-run and audit recorded nothing"
    );

    // Such a plan cannot be saved: `sync --plan` would find the state it
    // counted on missing from the DB and refuse it as stale.
    let saved = rig.ws.path().join("saved-plan.json");
    let refused = rig
        .ws
        .run(&["plan", "--out", saved.to_str().expect("utf-8 path")]);
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("only `idsync sync` records") && !saved.exists(),
        "{}",
        refused.dump()
    );

    let synced = rig
        .ws
        .run(&["sync", "--format", "json"])
        .assert_code(0)
        .json();
    assert_eq!(
        plan["summary"], synced["summary"],
        "the plan shown after the kill is not the one the next sync applied\nplan: {plan:#}\nsync: {synced:#}"
    );
    assert_exact(&rig.server, &rig.ws, &rig.dir);
    // Settled by that sync: plans are saved again.
    rig.ws
        .run(&["plan", "--out", saved.to_str().expect("utf-8 path")])
        .assert_code(0);
    assert!(saved.exists());
}

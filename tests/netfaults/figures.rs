//! A sync over a slow link (150 ms ± 30 ms round trip, some segments held
//! longer so answers overtake each other), with and without 5 % of the
//! segments lost: the initial sync, then a round of changes (attributes,
//! leavers, memberships) under the same faults. Each run converges exactly
//! or ends with an honest exit 1 that the next run (link healed) completes.
//!
//! The cycle time of the initial sync is printed as a figure line. CI runs
//! 200 users; `NETFAULTS_USERS=2000` (what `scripts/netfaults-figures.sh`
//! sets) gives the README's figures.

use std::time::{Duration, Instant};

use crate::harness::{Directory, Idsync, Output, UserRow};
use crate::rig::{ScimRig, assert_exact, assert_honest, assert_no_duplicates};
use crate::support::netns::available;
use crate::support::relay::Delay;

/// Users in the initial sync (`NETFAULTS_USERS`, 200 by default).
fn users() -> usize {
    std::env::var("NETFAULTS_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn initial_sync_at_150ms_rtt() {
    sync_over_a_slow_link(0.0);
}

#[test]
fn initial_sync_at_150ms_rtt_with_5_percent_loss() {
    sync_over_a_slow_link(0.05);
}

/// A run under faults: exit 0 (then the caller checks the target is exact),
/// or an honest exit 1 that names its failures. Never a duplicate.
fn faulty_run(rig: &ScimRig, what: &str) -> Output {
    let out = rig.ws.run(&["sync", "--format", "json"]);
    assert_honest(&out, &[0, 1], what);
    assert_no_duplicates(&rig.server.contents());
    out
}

/// After a faulty run: exact when it exited 0; otherwise the link heals for
/// one run that must finish the work, and then breaks again (`lose`).
fn settle(rig: &ScimRig, out: &Output, disabled: &[UserRow], loss: f64) {
    if out.code != 0 {
        rig.ns.heal();
        rig.ws.sync_ok();
        if loss > 0.0 {
            rig.ns.lose(rig.idsync_port(), loss);
        }
    }
    assert_exact(&rig.server, &rig.ws, &rig.dir, disabled);
}

fn sync_over_a_slow_link(loss: f64) {
    if !available() {
        return;
    }
    let n = users();
    let groups = (n / 20).clamp(4, 100);
    let mut rig = ScimRig::start("nf-slow", n, groups, Some(Delay::rtt_150ms()));
    // A request-answer costs two round trips (a new connection each), four
    // at a time; lost segments cost retransmits. Far more than that is a hang.
    rig.ws.run_timeout = Duration::from_secs(120) + Duration::from_millis(300) * n as u32;
    if loss > 0.0 {
        rig.ns.lose(rig.idsync_port(), loss);
    }
    let how = rig.link.as_ref().map_or("-", |l| l.how);
    let started = Instant::now();
    let out = faulty_run(&rig, "initial sync");
    let took = started.elapsed();
    println!(
        "figure: initial sync of {n} users and {groups} groups at 150 ms RTT ({how}), \
         loss {:.0} %: {:.1} s, exit {}, {} retries",
        loss * 100.0,
        took.as_secs_f64(),
        out.code,
        retries(&out)
    );
    settle(&rig, &out, &[], loss);
    if loss > 0.0 {
        assert!(rig.ns.matched("DROP") > 0, "no segment was dropped");
    }

    // Changes under the same faults: titles, a leaver, memberships moved.
    let disabled = change(&mut rig.dir);
    rig.ws.write_directory(&rig.dir);
    let out = faulty_run(&rig, "changes");
    settle(&rig, &out, &disabled, loss);
}

/// Retries the run's log mentions (idsync logs each one it makes).
fn retries(out: &Output) -> usize {
    out.stderr.matches("retrying").count()
}

/// Removes every 25th user (disabled on the target, `remove_action:
/// disable`), changes a tenth of the others' titles and moves a few members between groups.
/// Returns the removed users.
fn change(dir: &mut Directory) -> Vec<UserRow> {
    let ids: Vec<String> = dir.users.iter().map(|u| u.id.clone()).collect();
    let mut removed = Vec::new();
    for id in ids.iter().skip(20).step_by(25) {
        if dir.user(id).active {
            removed.push(dir.remove_user(id));
        }
    }
    let kept: Vec<String> = dir.users.iter().map(|u| u.id.clone()).collect();
    for id in kept.iter().step_by(10) {
        dir.user_mut(id).title = "Principal Engineer".into();
    }
    let names: Vec<String> = dir.groups.keys().cloned().collect();
    if names.len() >= 3 {
        let second = dir.groups[&names[1]].clone();
        let moved: Vec<String> = dir.groups[&names[0]]
            .iter()
            .filter(|m| !second.contains(m))
            .take(3)
            .cloned()
            .collect();
        dir.groups
            .get_mut(&names[0])
            .expect("group")
            .retain(|m| !moved.contains(m));
        dir.groups.get_mut(&names[1]).expect("group").extend(moved);
    }
    removed
}

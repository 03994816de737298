//! Identity lifecycle across users: a leaver's address given to a new hire (in
//! the same cycle and in the next, under both remove actions and both
//! `policy.reuse_accounts` settings), and users swapping or rotating addresses.
//! Each scenario runs the built binary against a real scim2-server (which keeps
//! userNames unique), compares the target with the source, and checks that the
//! next `plan` is empty — or, where idsync refuses on purpose, that it says so
//! and touches nothing that is not the new user's.

use crate::harness::{
    Directory, Idsync, ScimServer, UserRow, Workspace, assert_target_matches, ops_of, synced,
};

/// Writes the workspace's config with `policy.reuse_accounts: REUSE` (and the
/// remove action already set on `ws`).
fn set_reuse(ws: &mut Workspace, reuse: &str) {
    ws.raw_config = None;
    let config = ws.config_text();
    assert!(config.contains("policy:\n"), "{config}");
    ws.raw_config = Some(config.replace(
        "policy:\n",
        &format!("policy:\n  reuse_accounts: {reuse}\n"),
    ));
}

/// A synced directory; then `u0002` leaves and new hire `n0001` gets the
/// leaver's email (and a group), in the same cycle or the next one. Returns the
/// server, workspace, the directory as now wanted, the leaver, and the SCIM id
/// the leaver's account had.
fn leaver_and_new_hire(
    remove: &str,
    reuse: &str,
    same_cycle: bool,
) -> (ScimServer, Workspace, Directory, UserRow, String) {
    let (server, mut ws, mut dir) = synced(8, 3);
    ws.remove_action = remove.into();
    set_reuse(&mut ws, reuse);
    let leaver = dir.remove_user("u0002");
    let leaver_id = server.contents().user_id(&leaver.user_name());
    if !same_cycle {
        ws.write_directory(&dir);
        ws.sync_ok();
    }
    let mut hire = UserRow::new("n0001", &leaver.email, "Nova", "Hire");
    hire.title = "Apprentice".into();
    dir.users.push(hire);
    dir.groups
        .get_mut("group-01")
        .expect("group-01")
        .push("n0001".into());
    ws.write_directory(&dir);
    (server, ws, dir, leaver, leaver_id)
}

fn reuse_under_delete(reuse: &str, same_cycle: bool) {
    let (server, ws, dir, leaver, leaver_id) = leaver_and_new_hire("delete", reuse, same_cycle);
    if same_cycle {
        // The plan deletes the leaver first, then creates the new hire.
        let plan = ws.plan_json();
        let delete = &ops_of(&plan, "delete_user")[0];
        assert_eq!(delete["name_step"]["step"], "frees", "{plan}");
        assert_eq!(delete["name_step"]["for_key"], "n0001", "{plan}");
    }
    ws.sync_ok();
    let target = server.contents();
    assert_target_matches(&dir, &[], &target);
    assert_ne!(
        target.user_id(&leaver.user_name()),
        leaver_id,
        "the new hire got the leaver's deleted account"
    );
    ws.assert_plan_empty();
}

fn reuse_under_disable_after_removal(same_cycle: bool) {
    let (server, ws, dir, leaver, leaver_id) =
        leaver_and_new_hire("disable", "after_removal", same_cycle);
    let plan = ws.plan_json();
    let create = &ops_of(&plan, "create_user")[0];
    assert_eq!(create["name_step"]["step"], "takes_over", "{plan}");
    assert_eq!(create["name_step"]["from"], "u0002", "{plan}");
    ws.sync_ok();
    let target = server.contents();
    // The leaver's account is now the new hire's, with the new hire's data,
    // active, and only in the new hire's groups.
    assert_target_matches(&dir, &[], &target);
    assert_eq!(target.user_id(&leaver.user_name()), leaver_id);
    ws.assert_plan_empty();
}

fn reuse_refused_under_disable_never(same_cycle: bool) {
    let (server, mut ws, dir, leaver, leaver_id) =
        leaver_and_new_hire("disable", "never", same_cycle);
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(1);
    let said = format!("{}{}", out.stdout, out.stderr);
    for needed in ["u0002", "n0001", "reuse_accounts: after_removal"] {
        assert!(said.contains(needed), "{needed:?} not said:\n{said}");
    }
    // The leaver's account stays disabled with the leaver's data; the new hire
    // has no account.
    let mut without_hire = dir.clone();
    without_hire.remove_user("n0001");
    let target = server.contents();
    assert_target_matches(&without_hire, std::slice::from_ref(&leaver), &target);
    assert_eq!(target.user_id(&leaver.user_name()), leaver_id);
    // The next plan says the same, and why.
    let text = ws.run(&["plan"]);
    text.assert_code(0);
    assert!(
        text.stdout
            .contains("refused: the userName belongs to the account of user u0002 (disabled)"),
        "{}",
        text.stdout
    );
    // The fix the message names: hand the account over.
    set_reuse(&mut ws, "after_removal");
    ws.sync_ok();
    let target = server.contents();
    assert_target_matches(&dir, &[], &target);
    assert_eq!(target.user_id(&leaver.user_name()), leaver_id);
    ws.assert_plan_empty();
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_same_cycle_under_delete_never() {
    reuse_under_delete("never", true);
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_same_cycle_under_delete_after_removal() {
    reuse_under_delete("after_removal", true);
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_next_cycle_under_delete() {
    reuse_under_delete("never", false);
    reuse_under_delete("after_removal", false);
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_same_cycle_under_disable_after_removal() {
    reuse_under_disable_after_removal(true);
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_next_cycle_under_disable_after_removal() {
    reuse_under_disable_after_removal(false);
}

#[test]
fn a_leavers_mail_is_refused_to_a_new_hire_in_the_same_cycle_under_disable_never() {
    reuse_refused_under_disable_never(true);
}

#[test]
fn a_leavers_mail_is_refused_to_a_new_hire_in_the_next_cycle_under_disable_never() {
    reuse_refused_under_disable_never(false);
}

/// Gives each of `keys` the email of the next one (the last gets the first's),
/// syncs (or, `saved`, applies a plan saved with `plan --out`), and checks that
/// every account kept its SCIM id and the target matches the source.
fn rotate(keys: &[&str], saved: bool) {
    let (server, ws, mut dir) = synced(8, 3);
    let ids = rotate_mail(&server, &mut dir, keys);
    ws.write_directory(&dir);
    let plan = ws.plan_json();
    let temporaries: Vec<_> = ops_of(&plan, "update_user")
        .into_iter()
        .filter(|op| op["name_step"]["step"] == "temporary")
        .collect();
    assert_eq!(
        temporaries.len(),
        1,
        "one temporary name breaks the ring: {plan}"
    );
    if saved {
        // A reviewed plan applies as made: its steps check against the state
        // one after another (the final rename starts from the temporary name).
        ws.run(&["plan", "--out", "rotation.json"]).assert_code(0);
        ws.run(&["sync", "--plan", "rotation.json"]).assert_code(0);
    } else {
        ws.sync_ok();
    }
    assert_rotated(&server, &ws, &dir, keys, &ids);
}

/// Gives each of `keys` the next one's email (the last takes the first's) in
/// `dir`; returns each one's account id on the target before.
fn rotate_mail<K: AsRef<str>>(server: &ScimServer, dir: &mut Directory, keys: &[K]) -> Vec<String> {
    let before = server.contents();
    let ids = keys
        .iter()
        .map(|k| before.user_id(&dir.user(k.as_ref()).user_name()))
        .collect();
    let emails: Vec<String> = keys
        .iter()
        .map(|k| dir.user(k.as_ref()).email.clone())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        dir.user_mut(k.as_ref()).email = emails[(i + 1) % keys.len()].clone();
    }
    ids
}

/// After a rotation: the target matches the source, each of `keys` kept its
/// account (`ids`), and nothing is left to do.
fn assert_rotated<K: AsRef<str>>(
    server: &ScimServer,
    ws: &Workspace,
    dir: &Directory,
    keys: &[K],
    ids: &[String],
) {
    let after = server.contents();
    assert_target_matches(dir, &[], &after);
    for (k, id) in keys.iter().zip(ids) {
        let k = k.as_ref();
        assert_eq!(
            &after.user_id(&dir.user(k).user_name()),
            id,
            "user {k} changed accounts"
        );
    }
    ws.assert_plan_empty();
}

#[test]
fn two_users_swapping_mail_converge_in_one_cycle() {
    rotate(&["u0001", "u0003"], false);
}

#[test]
fn three_users_rotating_mail_converge_in_one_cycle() {
    rotate(&["u0001", "u0003", "u0004"], false);
}

#[test]
fn a_saved_plan_of_a_rotation_applies_step_by_step() {
    rotate(&["u0002", "u0005", "u0006"], true);
}

/// Starts `sync`, SIGKILLs it once the proxy has seen `at` writes (or after
/// `limit`); returns its exit code (-1 when the kill landed).
fn sync_killed_at_write(
    ws: &Workspace,
    proxy: &crate::proxy::FaultProxy,
    at: usize,
    limit: std::time::Duration,
) -> i32 {
    let mut running = ws.spawn(&["sync", "--format", "json"]);
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && running.is_running() && proxy.writes() < at {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    running.signal("KILL");
    let out = running.wait(std::time::Duration::from_secs(30));
    assert!(
        (-1..=1).contains(&out.code),
        "sync ended with exit {} before the kill\n{}",
        out.code,
        out.dump()
    );
    out.code
}

#[test]
fn sigkill_between_the_steps_of_a_rotation_resumes_without_a_lost_or_shared_name() {
    let rig = crate::faults::rig("lc-kill", 40, 3, crate::proxy::pass_through());
    let (server, ws, mut dir) = (&rig.server, &rig.ws, rig.dir.clone());
    ws.sync_ok();
    // A ring of 20 users (skipping the one with padded email and the inactive
    // one): each takes the next one's address. One temporary name, then 20
    // renames that must run one after another.
    let keys: Vec<String> = (10..=30)
        .filter(|n| *n != 14)
        .map(|n| format!("u{n:04}"))
        .collect();
    let ids = rotate_mail(server, &mut dir, &keys);
    ws.write_directory(&dir);
    let mut killed = 0;
    for step in [2, 5, 9] {
        let at = rig.proxy.writes() + step;
        let code = sync_killed_at_write(ws, &rig.proxy, at, std::time::Duration::from_secs(20));
        if code == -1 {
            killed += 1;
        }
        let now = server.contents();
        crate::faults::assert_no_duplicates(&now);
        let temporary = now
            .users
            .iter()
            .filter(|u| crate::harness::str_at(u, "userName").starts_with("idsync-tmp-"))
            .count();
        eprintln!(
            "killed at write {} (aimed at {at}) -> exit {code}; {temporary} temporary name(s) on the target",
            rig.proxy.writes()
        );
    }
    assert!(killed > 0, "no kill landed inside a run");
    ws.sync_ok();
    assert_rotated(server, ws, &dir, &keys, &ids);
}

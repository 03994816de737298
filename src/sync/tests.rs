//! Whole cycles in-process: a CSV source on disk, the real mapping, planner,
//! guards, executor and state DB, and an in-memory target.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::apply::NoProgress;
use crate::apply::testkit::MemoryTarget;
use crate::model::{SourceDirectory, UserName};

const HEADER: &str = "id,email,given_name,family_name,display_name,title,department,active\n";

/// A config with a CSV source of `users` rows (`id,email,title`) and one group
/// holding everyone, written into `dir`.
fn workspace(dir: &Path, users: &[(&str, &str, &str)]) -> PathBuf {
    write_users(dir, users);
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml");
    let config = dir.join("idsync.yaml");
    std::fs::write(
        &config,
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {}\n\
             target: {{ kind: scim, base_url: http://127.0.0.1:9/v2, token_env: IDSYNC_UNUSED }}\n\
             policy: {{ max_removals: 1 }}\n\
             state: state/idsync.db\n",
            mapping.display()
        ),
    )
    .unwrap();
    config
}

fn write_users(dir: &Path, users: &[(&str, &str, &str)]) {
    let mut csv = HEADER.to_string();
    let mut groups = "group,member\n".to_string();
    for (id, email, title) in users {
        csv.push_str(&format!("{id},{email},A,B,A B,{title},R&D,true\n"));
        groups.push_str(&format!("everyone,{id}\n"));
    }
    std::fs::write(dir.join("users.csv"), csv).unwrap();
    std::fs::write(dir.join("groups.csv"), groups).unwrap();
}

/// A workspace of the four users of [`FOUR`], synced once into an in-memory
/// target.
async fn synced_four() -> (tempfile::TempDir, Settings, MemoryTarget) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(&workspace(dir.path(), &FOUR)).unwrap();
    let target = MemoryTarget::default();
    run(&settings, &target).await.unwrap();
    (dir, settings, target)
}

async fn run(settings: &Settings, target: &MemoryTarget) -> Result<RunSummary, SyncError> {
    run_with(settings, target, &SyncOptions::default()).await
}

async fn run_with(
    settings: &Settings,
    target: &MemoryTarget,
    opts: &SyncOptions,
) -> Result<RunSummary, SyncError> {
    cycle(
        settings,
        settings.source.adapter(),
        target,
        opts,
        Arc::new(AtomicBool::new(false)),
        &NoProgress,
    )
    .await
}

/// What `plan` shows: the plan and its input, the state DB read only.
async fn plan_read_only(
    settings: &Settings,
    full: bool,
) -> Result<(Plan, PlanningInput), SyncError> {
    let opts = SyncOptions {
        full,
        ..SyncOptions::default()
    };
    let planned = preview(settings, &opts, Purpose::Review).await?;
    Ok((planned.plan, planned.input))
}

fn user_names(target: &MemoryTarget) -> Vec<String> {
    let w = target.world.lock().unwrap();
    let mut names: Vec<String> = w
        .users
        .values()
        .filter(|u| u.active)
        .filter_map(|u| u.user_name().map(|n| n.to_string()))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_provisions_the_source_and_the_next_finds_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let people = [
        ("e1", "ada@example.com", "Engineer"),
        ("e2", "bob@example.com", "Designer"),
        ("e3", "cy@example.com", "Lead"),
    ];
    let settings = Settings::load(&workspace(dir.path(), &people)).unwrap();
    let target = MemoryTarget::default();

    let first = run(&settings, &target).await.unwrap();
    assert_eq!((first.exit_code, first.failed), (Exit::Ok, 0));
    assert_eq!(first.summary.create_users, 3);
    assert_eq!(
        user_names(&target),
        ["ada@example.com", "bob@example.com", "cy@example.com"]
    );
    let members = {
        let w = target.world.lock().unwrap();
        let everyone = w
            .groups
            .values()
            .find(|g| g.display_name.as_str() == "everyone")
            .expect("the group was created");
        everyone.members.len()
    };
    assert_eq!(members, 3);

    let second = run(&settings, &target).await.unwrap();
    assert_eq!((second.applied, second.failed, second.skipped), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_stop_changes_nothing_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let people = [
        ("e1", "ada@example.com", "Engineer"),
        ("e2", "bob@example.com", "Designer"),
        ("e3", "cy@example.com", "Lead"),
    ];
    let config = workspace(dir.path(), &people);
    let settings = Settings::load(&config).unwrap();
    let target = MemoryTarget::default();
    run(&settings, &target).await.unwrap();

    // Two of three leave at once, above max_removals 1.
    write_users(dir.path(), &people[..1]);
    let err = run(&settings, &target).await.unwrap_err();
    let SyncError::Guard { held, dry_run, .. } = &err else {
        panic!("expected a guard stop, got {err}");
    };
    assert!(!dry_run);
    assert_eq!(held.len(), 2);
    assert_eq!(user_names(&target).len(), 3, "nothing was disabled");
    let report = inspect::status(&settings).unwrap();
    assert_eq!(report.runs[0].exit_code, Some(Exit::Guard));
    assert_eq!(report.active_users, 3);

    // The operator's reviewed override lets it through.
    let opts = SyncOptions {
        allow_deletes: true,
        ..SyncOptions::default()
    };
    let done = run_with(&settings, &target, &opts).await.unwrap();
    assert_eq!(done.summary.disable_users, 2);
    assert_eq!(user_names(&target), ["ada@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_is_applied_only_against_the_state_it_was_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let people = [("e1", "ada@example.com", "Engineer")];
    let config = workspace(dir.path(), &people);
    let settings = Settings::load(&config).unwrap();
    let target = MemoryTarget::default();
    run(&settings, &target).await.unwrap();

    write_users(dir.path(), &[("e1", "ada@example.com", "Principal")]);
    let (plan, _) = plan_read_only(&settings, false).await.unwrap();
    let saved = dir.path().join("plan.json");
    std::fs::write(&saved, serde_json::to_string(&plan).unwrap()).unwrap();
    let opts = SyncOptions {
        plan_file: Some(saved.clone()),
        ..SyncOptions::default()
    };
    let applied = run_with(&settings, &target, &opts).await.unwrap();
    assert_eq!((applied.applied, applied.failed), (1, 0));
    {
        let w = target.world.lock().unwrap();
        let ada = w
            .users
            .values()
            .find(|u| u.user_name() == Some(UserName::new("ada@example.com")))
            .unwrap();
        assert_eq!(
            ada.attrs.get(crate::model::UserAttr::Title).unwrap(),
            "Principal"
        );
    }
    // Applying it again: the state moved on since it was made.
    let again = run_with(&settings, &target, &opts).await.unwrap_err();
    assert!(matches!(again, SyncError::StalePlan { .. }), "{again}");
}

/// The SCIM id the target gave `user_name`.
fn id_of(target: &MemoryTarget, user_name: &str) -> crate::model::ScimId {
    let w = target.world.lock().unwrap();
    w.users
        .values()
        .find(|u| u.user_name().is_some_and(|n| n.as_str() == user_name))
        .map(|u| u.id.clone())
        .expect("the user exists")
}

const FOUR: [(&str, &str, &str); 4] = [
    ("e1", "ada@example.com", "Engineer"),
    ("e2", "bob@example.com", "Designer"),
    ("e3", "cy@example.com", "Lead"),
    ("e4", "di@example.com", "Analyst"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_confirms_a_leaver_the_listing_left_out_and_disables_them() {
    let (dir, settings, target) = synced_four().await;
    // Di leaves, and the target's listing does not show her.
    let di = id_of(&target, "di@example.com");
    target.world.lock().unwrap().hidden.insert(di.clone());
    write_users(dir.path(), &FOUR[..3]);
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let out = run_with(&settings, &target, &full).await.unwrap();
    assert_eq!(out.exit_code, Exit::Ok, "{out:?}");
    assert_eq!(out.summary.disable_users, 1);
    assert!(!target.world.lock().unwrap().users[&di].active);
    let again = run(&settings, &target).await.unwrap();
    assert_eq!((again.applied, again.failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_refuses_a_listing_far_smaller_than_the_state() {
    let (_dir, settings, target) = synced_four().await;
    {
        let mut w = target.world.lock().unwrap();
        w.hidden = w.users.keys().cloned().collect();
    }
    let calls = target.world.lock().unwrap().calls;
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let err = run_with(&settings, &target, &full).await.unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::PartialListing {
                listed: 0,
                managed: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.exit(), Exit::Unreachable);
    assert_eq!(
        target.world.lock().unwrap().calls,
        calls,
        "nothing was sent"
    );
    let again = run(&settings, &target).await.unwrap();
    assert_eq!(
        (again.applied, again.failed),
        (0, 0),
        "the state still knows everyone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_without_state_against_a_populated_target_stops_until_full() {
    let dir = tempfile::tempdir().unwrap();
    let people = [("e1", "ada@example.com", "Engineer")];
    let settings = Settings::load(&workspace(dir.path(), &people)).unwrap();
    let target = MemoryTarget::default();
    run(&settings, &target).await.unwrap();
    let calls = target.world.lock().unwrap().calls;

    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let err = run(&settings, &target).await.unwrap_err();
    assert!(matches!(err, SyncError::NoState { .. }), "{err}");
    assert_eq!(err.exit(), Exit::Guard);
    assert_eq!(
        target.world.lock().unwrap().calls,
        calls,
        "nothing was sent"
    );
    let (_, input) = plan_read_only(&settings, false).await.unwrap();
    assert!(records_nothing(input.state(), None).unwrap());
    // The stop is recorded, and does not make the state look used.
    let err = run(&settings, &target).await.unwrap_err();
    assert!(matches!(err, SyncError::NoState { .. }), "{err}");

    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let adopted = run_with(&settings, &target, &full).await.unwrap();
    assert_eq!(
        (adopted.summary.adopt_users, adopted.summary.adopt_groups),
        (1, 1)
    );
    let again = run(&settings, &target).await.unwrap();
    assert_eq!((again.applied, again.failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_running_sync_from_an_interrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let people = [("e1", "ada@example.com", "Engineer")];
    let settings = Settings::load(&workspace(dir.path(), &people)).unwrap();
    let target = MemoryTarget::default();
    run(&settings, &target).await.unwrap();

    // A run in progress: the lock held, a run begun with work in its journal.
    let mut db = StateDb::open(&settings.state_path).unwrap();
    let started = db
        .begin_run("sync", &[("update_user", "e1".into())])
        .unwrap();
    db.mark_started_from(started, 0, 1).unwrap();
    let report = inspect::status(&settings).unwrap();
    let pid = std::process::id();
    assert_eq!(report.running.and_then(|r| r.pid), Some(pid));
    let text = crate::report::status_text(&report);
    assert!(text.contains(&format!("running (PID {pid})")), "{text}");
    assert!(!text.contains("interrupted"), "{text}");
    assert!(
        text.contains(&format!(
            "Pending: 1 operation(s) of the run that is running (PID {pid})"
        )),
        "{text}"
    );
    let json = crate::report::status_json(&report);
    assert!(json.contains(&format!("\"pid\": {pid}")), "{json}");

    // The same run, its process gone: interrupted.
    drop(db);
    let report = inspect::status(&settings).unwrap();
    assert_eq!(report.running, None);
    let text = crate::report::status_text(&report);
    assert!(!text.contains("running"), "{text}");
    assert!(text.contains("Pending: a run was interrupted"), "{text}");
    assert!(text.contains("sync interrupted"), "{text}");
}

/// What the engine maps from a CSV read whole, from the same files streamed
/// user by user after the groups, and streamed with the groups read beside
/// the users (the path a cycle takes when the mapping needs no user's
/// groups). The two streamed reads must agree, to the error.
async fn whole_and_streamed(
    settings: &Settings,
) -> (Result<Desired, String>, Result<Desired, String>) {
    let source = settings.source.adapter();
    let attributes = settings.mapping.source_attributes();
    let whole = match source.read(&attributes).await {
        Ok(dir) => settings
            .mapping
            .build(dir)
            .map_err(|e| format!("mapping: {}", e.len())),
        Err(e) => Err(format!("source: {e}")),
    };
    let outcome = |built: Result<StreamedBuild, SourceError>| match built {
        Ok((built, _, _)) => built.map_err(|e| format!("mapping: {}", e.len())),
        Err(e) => Err(format!("source: {e}")),
    };
    let streamed = source.stream(&attributes).expect("a CSV source streams");
    let streamed = outcome(stream_mapped(streamed, None, 0, &settings.mapping).await);
    assert!(!settings.mapping.users_need_groups());
    let beside = source.streamed().expect("a CSV source streams");
    let beside = outcome(mapped_beside_groups(beside, &settings.mapping));
    match (&streamed, &beside) {
        (Ok(a), Ok(b)) => assert_maps_alike(a, b),
        (a, b) => assert_eq!(a.as_ref().err(), b.as_ref().err()),
    }
    (whole, streamed)
}

/// Two reads of one directory mapped to the same desired state.
fn assert_maps_alike(a: &Desired, b: &Desired) {
    assert_eq!(a.users, b.users);
    assert_eq!(a.groups, b.groups);
    assert_eq!(a.out_of_scope, b.out_of_scope);
    assert_eq!(a.unassigned_users, b.unassigned_users);
    assert_eq!(a.ignored_members, b.ignored_members);
    assert_eq!(a.held_groups, b.held_groups);
    assert_eq!(a.warnings, b.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_csv_read_maps_to_exactly_what_a_whole_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = workspace(
        dir.path(),
        &[
            ("3", "c@x.com", "Eng"),
            ("1", "a@x.com", "Lead"),
            ("2", "b@x.com", "Eng"),
        ],
    );
    // Members that are not users, a repeated membership, an inactive user.
    std::fs::write(
        dir.path().join("groups.csv"),
        "group,member\neveryone,1\neveryone,ghost\neveryone,1\nleads,1\nleads,2\nempty,nobody\n",
    )
    .unwrap();
    let mut users = std::fs::read_to_string(dir.path().join("users.csv")).unwrap();
    users.push_str("4,d@x.com,D,E,D E,Eng,R&D,false\n");
    std::fs::write(dir.path().join("users.csv"), users).unwrap();
    let settings = Settings::load(&config).unwrap();
    let (whole, streamed) = whole_and_streamed(&settings).await;
    let (whole, streamed) = (whole.unwrap(), streamed.unwrap());
    assert_maps_alike(&streamed, &whole);
    assert_eq!(streamed.ignored_members, 2);
    assert_eq!(
        streamed
            .users
            .iter()
            .map(|u| u.key.as_str())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4"]
    );
}

/// An Entra mirror of five users: `ga` holds u1 and, through the nested
/// `gb`, u2 and u3; `gb` also names a device; `gc` has no name; u4 is a guest
/// and u5 is in no group.
fn entra_mirror() -> Mirror {
    use crate::source::entra::{apply_groups, apply_users};
    let mut m = Mirror::default();
    let user = |n: u32, kind: &str| {
        serde_json::json!({
            "id": format!("u{n}"),
            "userPrincipalName": format!("user{n}@contoso.com"),
            "givenName": format!("Given{n}"),
            "surname": "Sur",
            "userType": kind,
        })
    };
    let users = serde_json::json!([
        user(3, "Member"),
        user(1, "Member"),
        user(2, "Member"),
        user(4, "Guest"),
        user(5, "Member"),
    ]);
    apply_users(&mut m.users, users.as_array().unwrap());
    let groups = serde_json::json!([
        {"id": "ga", "displayName": "A", "members@delta": [{"id": "u1"}, {"id": "gb"}]},
        {"id": "gb", "displayName": "B", "members@delta": [{"id": "u3"}, {"id": "u2"}, {"id": "device-1"}]},
        {"id": "gc", "members@delta": [{"id": "u5"}]}
    ]);
    apply_groups(&mut m.groups, groups.as_array().unwrap());
    m
}

/// The mapping a cycle builds from `mirror` read whole, and streamed user by
/// user after the groups (the path a cycle takes), with `assignments`.
async fn mirror_whole_and_streamed(
    mapping: &crate::mapping::Mapping,
    mirror: &Mirror,
    assignments: Option<SourceAssignments>,
) -> (Desired, Desired) {
    let dir = crate::source::entra::directory(mirror);
    let whole = mapping
        .build(SourceDirectory {
            assignments: assignments.clone(),
            ..dir
        })
        .expect("the whole directory maps");
    let read = Box::new(crate::source::entra::MirrorRead::new(mirror));
    let (built, users, _) = stream_mapped(read, assignments.as_ref(), 5, mapping)
        .await
        .expect("the mirror reads");
    assert_eq!(users, mirror.users.len());
    (whole, built.expect("the streamed directory maps"))
}

#[tokio::test]
async fn a_mirror_streamed_maps_to_exactly_what_its_whole_directory_does() {
    use crate::mapping::{AssignConfig, AssignRules, Mapping};
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/entra.yaml"))
            .unwrap();
    let plain = Mapping::parse(&text, "entra.yaml").unwrap();
    let app = "5f6e0000-0000-0000-0000-000000000001";
    let section: AssignConfig = serde_saphyr::from_str(&format!(
        "app: {app}
groups: [B]
"
    ))
    .unwrap();
    let assigned = Mapping::parse(&text, "entra.yaml")
        .unwrap()
        .with_assign(Some(
            section
                .compile(
                    "idsync.yaml",
                    serde_saphyr::Location::UNKNOWN,
                    AssignRules::entra(),
                )
                .unwrap(),
        ));
    // The app assigns u5 and the group `gb` (u2 and u3), not u1.
    let by_app = || SourceAssignments {
        from: format!("the app {app}"),
        users: vec![SourceKey::new("u5")],
        groups: vec![crate::model::GroupKey::new("gb")],
    };
    let mirror = entra_mirror();
    for (mapping, assignments) in [(&plain, None), (&assigned, Some(by_app()))] {
        let (whole, streamed) = mirror_whole_and_streamed(mapping, &mirror, assignments).await;
        assert_maps_alike(&streamed, &whole);
    }
    // What each read holds, so the two cannot agree on nothing.
    let (_, plain) = mirror_whole_and_streamed(&plain, &mirror, None).await;
    let keys = |d: &Desired| {
        d.users
            .iter()
            .map(|u| u.key.as_str().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&plain),
        ["u1", "u2", "u3", "u5"],
        "the guest is out of scope"
    );
    assert_eq!(plain.groups.len(), 2, "the unnamed group is left out");
    assert_eq!(plain.ignored_members, 1, "the device");
    let (_, assigned) = mirror_whole_and_streamed(&assigned, &mirror, Some(by_app())).await;
    assert_eq!(keys(&assigned), ["u2", "u3", "u5"], "u1 is not assigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_csv_read_with_bad_rows_fails_as_a_source_error_before_any_mapping_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = workspace(
        dir.path(),
        &[("1", "a@x.com", "Eng"), ("2", "b@x.com", "Eng")],
    );
    // A duplicate key (a source problem) and a user without an email (a
    // mapping problem).
    let mut users = std::fs::read_to_string(dir.path().join("users.csv")).unwrap();
    users.push_str("1,again@x.com,A,B,A B,Eng,R&D,true\n5,,A,B,A B,Eng,R&D,true\n");
    std::fs::write(dir.path().join("users.csv"), &users).unwrap();
    let settings = Settings::load(&config).unwrap();
    let (whole, streamed) = whole_and_streamed(&settings).await;
    let whole = whole.unwrap_err();
    assert!(
        whole.starts_with("source: ") && whole.contains("line 4"),
        "{whole}"
    );
    assert_eq!(streamed.unwrap_err(), whole);

    // Without the duplicate, both report the mapping problem.
    users = users.replace("1,again@x.com", "6,again@x.com");
    std::fs::write(dir.path().join("users.csv"), &users).unwrap();
    let (whole, streamed) = whole_and_streamed(&settings).await;
    assert_eq!(whole.unwrap_err(), "mapping: 1");
    assert_eq!(streamed.unwrap_err(), "mapping: 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_read_beside_the_users_fail_the_read_first_as_when_read_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = workspace(
        dir.path(),
        &[("1", "a@x.com", "Eng"), ("2", "b@x.com", "Eng")],
    );
    // A groups row without its member, and a users row with a field too many.
    std::fs::write(
        dir.path().join("groups.csv"),
        "group,member
everyone,1
leads
",
    )
    .unwrap();
    let mut users = std::fs::read_to_string(dir.path().join("users.csv")).unwrap();
    users.push_str("3,c@x.com,A,B,A B,Eng,R&D,true,extra\n");
    std::fs::write(dir.path().join("users.csv"), &users).unwrap();
    let settings = Settings::load(&config).unwrap();
    let (whole, streamed) = whole_and_streamed(&settings).await;
    let streamed = streamed.unwrap_err();
    assert!(streamed.contains("groups.csv"), "{streamed}");
    assert!(whole.unwrap_err().starts_with("source: "));

    // The groups fixed, the users' row is the one reported.
    std::fs::write(
        dir.path().join("groups.csv"),
        "group,member
everyone,1
",
    )
    .unwrap();
    let (_, streamed) = whole_and_streamed(&settings).await;
    let streamed = streamed.unwrap_err();
    assert!(
        streamed.contains("users.csv") && streamed.contains("line 4"),
        "{streamed}"
    );
}

/// The newest run in the history: (command, exit code, error).
fn latest_run(settings: &Settings) -> (String, Option<Exit>, Option<String>) {
    let report = inspect::status(settings).unwrap();
    let run = report.runs.into_iter().next().expect("a run is recorded");
    (run.command, run.exit_code, run.error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_full_sync_is_recorded_as_sync_full() {
    let (_dir, settings, target) = synced_four().await;
    {
        let mut w = target.world.lock().unwrap();
        w.hidden = w.users.keys().cloned().collect();
    }
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    let err = run_with(&settings, &target, &full).await.unwrap_err();
    assert!(matches!(err, SyncError::PartialListing { .. }), "{err}");
    let (command, exit_code, error) = latest_run(&settings);
    assert_eq!(command, "sync --full");
    assert_eq!(exit_code, Some(Exit::Unreachable));
    assert_eq!(error, Some(err.to_string()));

    // A successful one has the same name.
    target.world.lock().unwrap().hidden.clear();
    run_with(&settings, &target, &full).await.unwrap();
    assert_eq!(latest_run(&settings).0, "sync --full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_only_sync_is_recorded_as_sync_only() {
    let (dir, settings, target) = synced_four().await;
    let only = |who: &str| SyncOptions {
        only: vec![who.to_string()],
        ..SyncOptions::default()
    };
    let err = run_with(&settings, &target, &only("nobody@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::UnknownUser { .. }), "{err}");
    let (command, exit_code, _) = latest_run(&settings);
    assert_eq!(command, "sync --only");
    assert_eq!(exit_code, Some(Exit::Usage));

    let mut moved = FOUR;
    moved[0].2 = "Principal";
    write_users(dir.path(), &moved);
    let done = run_with(&settings, &target, &only("e1")).await.unwrap();
    assert_eq!(done.applied, 1);
    assert_eq!(latest_run(&settings).0, "sync --only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_saved_plan_is_recorded_as_sync_plan() {
    let (dir, settings, target) = synced_four().await;
    let saved = dir.path().join("plan.json");
    let opts = SyncOptions {
        plan_file: Some(saved.clone()),
        ..SyncOptions::default()
    };

    std::fs::write(&saved, "not a plan").unwrap();
    let err = run_with(&settings, &target, &opts).await.unwrap_err();
    assert!(matches!(err, SyncError::NotAPlan { .. }), "{err}");
    assert_eq!(
        latest_run(&settings),
        (
            "sync --plan".to_string(),
            Some(Exit::Usage),
            Some(err.to_string())
        )
    );

    // A plan made before the state moved on.
    let mut moved = FOUR;
    moved[0].2 = "Principal";
    write_users(dir.path(), &moved);
    let (plan, _) = plan_read_only(&settings, false).await.unwrap();
    std::fs::write(&saved, serde_json::to_string(&plan).unwrap()).unwrap();
    run(&settings, &target).await.unwrap();
    let err = run_with(&settings, &target, &opts).await.unwrap_err();
    assert!(matches!(err, SyncError::StalePlan { .. }), "{err}");
    assert_eq!(latest_run(&settings).0, "sync --plan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_that_cannot_be_recorded_still_fails_with_its_own_error() {
    let (dir, settings, target) = synced_four().await;
    let runs = inspect::status(&settings).unwrap().runs.len();
    // The history refuses new runs; the rest of the DB works.
    rusqlite::Connection::open(&settings.state_path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse_runs BEFORE INSERT ON runs
             BEGIN SELECT RAISE(ABORT, 'the history is full'); END;",
        )
        .unwrap();
    std::fs::remove_file(dir.path().join("users.csv")).unwrap();

    let err = run(&settings, &target).await.unwrap_err();
    assert!(matches!(err, SyncError::Source(_)), "{err}");
    assert_eq!(inspect::status(&settings).unwrap().runs.len(), runs);
}

/// `settings`' config file with its `policy:` line replaced by `policy` (a
/// flow mapping's inside), loaded again.
fn with_policy(settings: &Settings, policy: &str) -> Settings {
    let path = &settings.config_path;
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line.starts_with("policy:") {
            true => format!("policy: {{ {policy} }}\n"),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(path, text).unwrap();
    Settings::load(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_actions_are_logged_as_skipped_and_counted_but_never_sent() {
    let (dir, settings, target) = synced_four().await;
    let settings = with_policy(
        &settings,
        "max_removals: 1, actions: { users: { create: false, disable: false } }",
    );
    let held = |target: &MemoryTarget| {
        let w = target.world.lock().unwrap();
        format!("{:?} {:?}", w.users, w.groups)
    };
    let before = held(&target);
    // e4 leaves, e5 joins: a disable and a create, and their memberships.
    let mut people = FOUR[..3].to_vec();
    people.push(("e5", "eve@example.com", "Engineer"));
    write_users(dir.path(), &people);
    let summary = run(&settings, &target).await.unwrap();
    assert_eq!(summary.exit_code, Exit::Ok);
    assert_eq!((summary.applied, summary.failed), (0, 0));
    assert_eq!((summary.skipped, summary.skipped_action_off), (4, 4));
    assert_eq!(summary.summary.removals(), 0);
    assert_eq!(held(&target), before, "something was sent");

    let filter = crate::state::LogFilter {
        outcome: Some(crate::state::OpOutcome::Skipped),
        ..Default::default()
    };
    let log = inspect::log(&settings, &filter).unwrap();
    let mut lines: Vec<String> = log
        .iter()
        .map(|r| format!("{} {}", r.op, r.subject))
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "add_members everyone",
            "create_user e5",
            "disable_user e4",
            "remove_members everyone"
        ]
    );
    assert_eq!(log.len(), 4, "{lines:?}");
    for r in &log {
        let why = r.error.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("action off: policy.actions.users."),
            "{why}"
        );
    }
    // Each is planned again, and sent once switched on.
    let settings = with_policy(&settings, "max_removals: 1");
    let again = run(&settings, &target).await.unwrap();
    assert_eq!(again.skipped_action_off, 0);
    assert_eq!(again.applied, 4);
    assert!(user_names(&target).contains(&"eve@example.com".to_string()));
    assert!(!user_names(&target).contains(&"di@example.com".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_read_counts_toward_the_quarantine() {
    let (dir, settings, target) = synced_four().await;
    std::fs::remove_file(dir.path().join("users.csv")).unwrap();
    for round in 1..=2 {
        let err = run(&settings, &target).await.unwrap_err();
        assert_eq!(err.exit(), Exit::Unreachable, "round {round}: {err}");
    }
    let db = StateDb::open(&settings.state_path).unwrap();
    let now = chrono::Utc::now();
    let q = quarantine::load(&db).unwrap();
    assert_eq!(q.failed_cycles, 2);
    assert!(q.holds(now), "{q:?}");
    assert!(
        q.reason
            .as_deref()
            .unwrap_or_default()
            .contains("users.csv"),
        "{q:?}"
    );
    let held = held_by_quarantine(&db, now).unwrap_err();
    assert_eq!(held.exit(), Exit::Quarantined);
    assert!(
        held.to_string().contains("2 failed cycles in a row"),
        "{held}"
    );
    // An hour later it holds no more; a cycle that succeeds lifts it.
    assert!(held_by_quarantine(&db, now + chrono::Duration::minutes(61)).is_ok());
    drop(db);
    write_users(dir.path(), &FOUR);
    run(&settings, &target).await.unwrap();
    let db = StateDb::open(&settings.state_path).unwrap();
    assert!(held_by_quarantine(&db, chrono::Utc::now()).is_ok());
    assert_eq!(quarantine::load(&db).unwrap().failed_cycles, 0);
}

/// The runs the history holds, newest first: (command, exit code).
fn history(settings: &Settings) -> Vec<(String, Option<Exit>)> {
    inspect::status(settings)
        .unwrap()
        .runs
        .into_iter()
        .map(|r| (r.command, r.exit_code))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_that_keep_stopping_at_a_guard_still_prune_the_history() {
    let (dir, settings, target) = synced_four().await;
    // The history so far is long past `history_days`.
    let conn = rusqlite::Connection::open(&settings.state_path).unwrap();
    conn.execute(
        "UPDATE runs SET started_at = '2001-01-01T00:00:00.000Z'",
        [],
    )
    .unwrap();
    drop(conn);
    // Then every cycle stops at the removal guard (three of four leave,
    // above max_removals 1): nothing is applied, no run finishes.
    write_users(dir.path(), &FOUR[..1]);
    for _ in 0..2 {
        let err = run(&settings, &target).await.unwrap_err();
        assert!(matches!(err, SyncError::Guard { .. }), "{err}");
    }
    assert_eq!(
        history(&settings),
        [
            ("sync".to_string(), Some(Exit::Guard)),
            ("sync".to_string(), Some(Exit::Guard))
        ],
        "the runs older than history_days are pruned by stopped cycles too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_runs_bounds_the_history_of_frequent_cycles() {
    let (dir, mut settings, target) = synced_four().await;
    settings.history_runs = Some(3);
    for title in ["A", "B", "C", "D", "E"] {
        let people: Vec<(&str, &str, &str)> = FOUR
            .iter()
            .map(|(id, email, _)| (*id, *email, title))
            .collect();
        write_users(dir.path(), &people);
        let done = run(&settings, &target).await.unwrap();
        assert_eq!(done.summary.update_users, 4);
    }
    assert_eq!(history(&settings).len(), 3);
    let log = crate::state::StateDb::open_read_only(&settings.state_path)
        .unwrap()
        .unwrap()
        .op_log(&crate::state::LogFilter::default())
        .unwrap();
    assert_eq!(log.len(), 12, "the operations of the three runs kept");
}

// ---------------------------------------------------------------------------
// A run killed with a change in flight, then the source changing again before
// the next run: what landed must not outlive the source's mind.

/// Writes the FOUR users (`e3` with `active`, everyone titled `title`) in
/// group `everyone`, and group `team` holding `team`.
fn write_four(dir: &Path, title: &str, e3_active: bool, team: &[&str]) {
    let mut csv = HEADER.to_string();
    for (id, email, _) in FOUR {
        let active = id != "e3" || e3_active;
        csv.push_str(&format!("{id},{email},A,B,A B,{title},R&D,{active}\n"));
    }
    let mut groups = "group,member\n".to_string();
    for (id, _, _) in FOUR {
        groups.push_str(&format!("everyone,{id}\n"));
    }
    for id in team {
        groups.push_str(&format!("team,{id}\n"));
    }
    std::fs::write(dir.join("users.csv"), csv).unwrap();
    std::fs::write(dir.join("groups.csv"), groups).unwrap();
}

/// One cycle whose first request reaches the target and then the process
/// dies (the cycle's future is dropped, as a SIGKILL leaves the state DB).
async fn killed_at_first_request(settings: &Settings, target: &MemoryTarget) {
    killed_at_request(settings, target, 0).await;
}

/// One cycle killed once its request `nth` (0: the first) reached the target.
async fn killed_at_request(settings: &Settings, target: &MemoryTarget, nth: usize) {
    {
        let mut w = target.world.lock().unwrap();
        let next = w.calls + nth;
        w.faults.insert(next, crate::apply::testkit::Fault::Crash);
    }
    let crashed = target.crashed.clone();
    tokio::select! {
        out = run(settings, target) => panic!("the cycle was not killed: {out:?}"),
        _ = crashed.notified() => {}
    }
}

/// A workspace whose source is [`write_four`]`(title "Engineer", e3 active,
/// team [e2])`, synced once.
async fn synced_with_team() -> (tempfile::TempDir, Settings, MemoryTarget) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(&workspace(dir.path(), &FOUR)).unwrap();
    write_four(dir.path(), "Engineer", true, &["e2"]);
    let target = MemoryTarget::default();
    let first = run(&settings, &target).await.unwrap();
    assert_eq!(first.exit_code, Exit::Ok);
    (dir, settings, target)
}

fn team_members(target: &MemoryTarget) -> Vec<String> {
    let w = target.world.lock().unwrap();
    let team = w
        .groups
        .values()
        .find(|g| g.display_name.as_str() == "team")
        .expect("team");
    let mut names: Vec<String> = team
        .members
        .iter()
        .filter_map(|m| w.users.get(&crate::model::ScimId::new(m.value.as_str())))
        .filter_map(|u| u.user_name().map(|n| n.to_string()))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_by_a_killed_run_is_removed_when_the_source_drops_it_before_the_resume() {
    let (dir, settings, target) = synced_with_team().await;
    // Ada joins the team; the add reaches the target, the run dies.
    write_four(dir.path(), "Engineer", true, &["e1", "e2"]);
    killed_at_first_request(&settings, &target).await;
    assert_eq!(
        team_members(&target),
        ["ada@example.com", "bob@example.com"]
    );
    // Before the next run, the source takes her out again.
    write_four(dir.path(), "Engineer", true, &["e2"]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    assert_eq!(team_members(&target), ["bob@example.com"]);
    let again = run(&settings, &target).await.unwrap();
    assert_eq!((again.applied, again.failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_sent_by_a_killed_run_is_undone_when_the_source_keeps_the_user() {
    let (dir, settings, target) = synced_with_team().await;
    write_four(dir.path(), "Engineer", false, &["e2"]);
    killed_at_first_request(&settings, &target).await;
    let cy = id_of(&target, "cy@example.com");
    assert!(!target.world.lock().unwrap().users[&cy].active);
    write_four(dir.path(), "Engineer", true, &["e2"]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    assert!(
        target.world.lock().unwrap().users[&cy].active,
        "Cy is in the source, active, and must be active in the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_sent_by_a_killed_run_is_undone_when_the_source_reverts_it() {
    let (dir, settings, target) = synced_with_team().await;
    write_four(dir.path(), "Director", true, &["e2"]);
    killed_at_first_request(&settings, &target).await;
    write_four(dir.path(), "Engineer", true, &["e2"]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    let w = target.world.lock().unwrap();
    let titles: BTreeSet<&str> = w
        .users
        .values()
        .filter_map(|u| u.attrs.get(crate::model::UserAttr::Title))
        .collect();
    assert_eq!(titles, BTreeSet::from(["Engineer"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_only_run_after_a_kill_leaves_the_changes_in_flight_for_the_next_cycle_to_settle() {
    let (dir, settings, target) = synced_with_team().await;
    write_four(dir.path(), "Engineer", true, &["e1", "e2"]);
    killed_at_first_request(&settings, &target).await;
    // Someone provisions Di on demand in between: a run of its own that
    // neither reads the target nor settles what the killed run left.
    let only = SyncOptions {
        only: vec!["e4".into()],
        ..SyncOptions::default()
    };
    run_with(&settings, &target, &only).await.unwrap();
    write_four(dir.path(), "Engineer", true, &["e2"]);
    run(&settings, &target).await.unwrap();
    assert_eq!(team_members(&target), ["bob@example.com"]);
}

/// Writes `users` (`id,email`, all active, titled Engineer) and `groups`
/// (`group,member` rows).
fn write_source(dir: &Path, users: &[(&str, &str)], groups: &[(&str, &str)]) {
    let mut csv = HEADER.to_string();
    for (id, email) in users {
        csv.push_str(&format!("{id},{email},A,B,A B,Engineer,R&D,true\n"));
    }
    let mut rows = "group,member\n".to_string();
    for (group, member) in groups {
        rows.push_str(&format!("{group},{member}\n"));
    }
    std::fs::write(dir.join("users.csv"), csv).unwrap();
    std::fs::write(dir.join("groups.csv"), rows).unwrap();
}

const FOUR_IDS: [(&str, &str); 4] = [
    ("e1", "ada@example.com"),
    ("e2", "bob@example.com"),
    ("e3", "cy@example.com"),
    ("e4", "di@example.com"),
];

/// The FOUR users and a joiner `e5` (Eve) whose create reaches the target
/// before the run is killed.
async fn joiner_created_by_a_killed_run() -> (tempfile::TempDir, Settings, MemoryTarget) {
    let (dir, settings, target) = synced_four().await;
    let mut five = FOUR_IDS.to_vec();
    five.push(("e5", "eve@example.com"));
    write_source(dir.path(), &five, &[]);
    killed_at_first_request(&settings, &target).await;
    assert_eq!(accounts_named(&target, "eve@example.com"), [true]);
    (dir, settings, target)
}

/// Whether each account named `user_name` is active.
fn accounts_named(target: &MemoryTarget, user_name: &str) -> Vec<bool> {
    let w = target.world.lock().unwrap();
    w.users
        .values()
        .filter(|u| u.user_name().is_some_and(|n| n.as_str() == user_name))
        .map(|u| u.active)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_created_by_a_killed_run_is_removed_when_the_joiner_leaves_before_the_resume() {
    let (dir, settings, target) = joiner_created_by_a_killed_run().await;
    write_source(dir.path(), &FOUR_IDS, &[]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    assert_eq!(
        accounts_named(&target, "eve@example.com"),
        [false],
        "Eve's account, made by idsync, is disabled as a leaver's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_created_by_a_killed_run_is_renamed_not_duplicated_when_the_joiner_is_renamed() {
    let (dir, settings, target) = joiner_created_by_a_killed_run().await;
    let mut five = FOUR_IDS.to_vec();
    five.push(("e5", "eve.adams@example.com"));
    write_source(dir.path(), &five, &[]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    assert_eq!(
        accounts_named(&target, "eve@example.com"),
        Vec::<bool>::new()
    );
    assert_eq!(accounts_named(&target, "eve.adams@example.com"), [true]);
    assert_eq!(target.world.lock().unwrap().users.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_by_a_killed_run_is_deleted_when_the_source_drops_it_before_the_resume() {
    let (dir, settings, target) = synced_four().await;
    let settings = with_policy(&settings, "max_removals: 1, groups: { delete: true }");
    write_source(dir.path(), &FOUR_IDS, &[("everyone", "e1"), ("team", "e1")]);
    run(&settings, &target).await.unwrap();
    write_source(
        dir.path(),
        &FOUR_IDS,
        &[("everyone", "e1"), ("team", "e1"), ("guild", "e2")],
    );
    // The create is looked up by name first, then sent.
    killed_at_request(&settings, &target, 1).await;
    let groups = |target: &MemoryTarget| -> Vec<String> {
        let w = target.world.lock().unwrap();
        let mut names: Vec<String> = w
            .groups
            .values()
            .map(|g| g.display_name.to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(groups(&target), ["everyone", "guild", "team"]);
    write_source(dir.path(), &FOUR_IDS, &[("everyone", "e1"), ("team", "e1")]);
    let resumed = run(&settings, &target).await.unwrap();
    assert_eq!(resumed.exit_code, Exit::Ok, "{resumed:?}");
    assert_eq!(groups(&target), ["everyone", "team"]);
}

/// A CSV source that asks to be read on one thread, and notes the threads
/// its read and a task its read spawns ran on.
struct OnOneThread {
    csv: crate::source::csv::CsvSettings,
    threads: std::sync::Mutex<Vec<std::thread::ThreadId>>,
}

impl Source for OnOneThread {
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> futures_util::future::BoxFuture<'a, Result<crate::model::SourceDirectory, SourceError>>
    {
        Box::pin(async move {
            let spawned = tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap();
            let reading = std::thread::current().id();
            self.threads.lock().unwrap().extend([reading, spawned]);
            self.csv.read(attributes).await
        })
    }

    fn reads_on_one_thread(&self) -> bool {
        true
    }

    fn check(&self) -> futures_util::future::BoxFuture<'_, Result<String, SourceError>> {
        self.csv.check()
    }

    fn describe(&self) -> String {
        self.csv.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_read_on_one_thread_runs_its_tasks_on_the_reading_thread() {
    let dir = tempfile::tempdir().unwrap();
    let config = workspace(
        dir.path(),
        &[("1", "a@x.com", "Eng"), ("2", "b@x.com", "Eng")],
    );
    let settings = Settings::load(&config).unwrap();
    let source = OnOneThread {
        csv: crate::source::csv::CsvSettings {
            users: dir.path().join("users.csv"),
            groups: None,
            key: "id".into(),
            delimiter: b',',
        },
        threads: Default::default(),
    };
    let (input, _) = planning_input(
        &settings,
        &source,
        None,
        None::<&MemoryTarget>,
        false,
        TargetRules::default(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(input.desired().users.len(), 2);
    let threads = source.threads.lock().unwrap();
    assert_eq!(threads.len(), 2);
    // The LDAP connection's driver is such a task: it parses each message on
    // the thread that decodes its entries.
    assert_eq!(
        threads[0], threads[1],
        "the spawned task ran on another thread"
    );
}

#[test]
fn a_cycle_that_ends_the_process_leaves_what_it_held_to_the_exit() {
    struct Counted<'a>(&'a std::cell::Cell<usize>);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let dropped = std::cell::Cell::new(0);
    release(Counted(&dropped), &SyncOptions::default());
    assert_eq!(dropped.get(), 1, "a daemon's cycle frees what it held");
    let last = SyncOptions {
        exits_after: true,
        ..SyncOptions::default()
    };
    release(Counted(&dropped), &last);
    assert_eq!(dropped.get(), 1, "the exit frees it");
}

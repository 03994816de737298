//! The executor against an in-memory target that can fail, lose answers and
//! crash between operations: convergence and ownership are properties of the
//! planner and the real executor together, checked here with the real state
//! store underneath.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;

use super::testkit::{Fault, Keep, MemoryTarget, target_for};
use super::*;
use crate::model::{
    Desired, RemoteUser, ScimId, SourceKey, State, Status, TargetSnapshot, UserAttr, UserAttrs,
    UserName,
};
use crate::plan::testkit::{arb_policy, arb_world, options};
use crate::plan::{Plan, PlanningInput, Policy};
use crate::state::StateDb;

/// Writes `state` to a fresh DB through the store, as earlier runs would have.
fn seed(db: &mut StateDb, state: &State) {
    let mut changes = Vec::new();
    for (key, user) in &state.users {
        changes.push(crate::model::StateChange::PutUser {
            key: key.clone(),
            user: user.clone(),
        });
    }
    for (key, group) in &state.groups {
        changes.push(crate::model::StateChange::PutGroup {
            key: key.clone(),
            group: group.clone(),
        });
    }
    for (group, users) in &state.memberships {
        changes.push(crate::model::StateChange::SetMembers {
            group: group.clone(),
            users: users.clone(),
        });
    }
    db.commit_changes(&changes).unwrap();
}

/// The plan for `desired` against what `db` holds, as `sync` makes it.
fn plan_from_db(
    db: &mut StateDb,
    desired: &Desired,
    policy: &Policy,
    full: Option<TargetSnapshot>,
) -> (Plan, State) {
    let state = db.load().unwrap();
    let input = PlanningInput::new(desired.clone(), state, full, options(policy), |s, keys| {
        db.load_attrs(s, keys.iter())
    })
    .unwrap();
    let plan = crate::plan::plan(&input);
    (plan, input.into_state())
}

/// One executor run; returns false when the target "crashed" the process.
async fn run_once(
    db: &mut StateDb,
    target: &MemoryTarget,
    plan: &Plan,
    state: State,
    create_only: &BTreeSet<UserAttr>,
    concurrency: usize,
) -> bool {
    let mut executor = Executor {
        target: target.clone(),
        db,
        state,
        create_only: create_only.clone(),
        concurrency,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    let crashed = target.crashed.clone();
    tokio::select! {
        result = executor.run("sync", plan) => {
            result.unwrap();
            true
        }
        _ = crashed.notified() => false,
    }
}

/// The target holds what `desired` asks for, found through the state idsync
/// recorded: each user once with its attributes and active flag, each group with
/// its name and members; and nothing foreign was touched.
fn assert_target_matches(
    target: &MemoryTarget,
    state: &State,
    desired: &Desired,
    policy: &Policy,
) -> Result<(), TestCaseError> {
    let w = target.world.lock().unwrap();
    for d in &desired.users {
        let name = d.user_name();
        let found = w
            .users
            .values()
            .filter(|u| u.user_name().as_ref() == Some(&name))
            .count();
        let Some(pushed) = state.live_user(&d.key) else {
            // Never created just to be disabled.
            prop_assert!(!d.active, "user {} was not provisioned", name);
            prop_assert_eq!(found, 0, "user {} exists unrecorded", name);
            continue;
        };
        prop_assert_eq!(found, 1, "user {} should exist once", name);
        let remote = w.users.get(&pushed.scim_id.to_scim_id());
        prop_assert!(remote.is_some(), "user {} recorded with a missing id", name);
        let remote = remote.unwrap();
        prop_assert_eq!(&remote.attrs, &d.attrs, "attributes of {}", name);
        prop_assert_eq!(remote.active, d.active, "active flag of {}", name);
    }
    if policy.provision_groups {
        for g in &desired.groups {
            let pushed = state.live_group(&g.key);
            prop_assert!(pushed.is_some(), "group {} not provisioned", g.display_name);
            let remote = w.groups.get(&pushed.unwrap().scim_id);
            prop_assert!(
                remote.is_some(),
                "group {} recorded with a missing id",
                g.display_name
            );
            let remote = remote.unwrap();
            if policy.target_renames_groups || policy.on_rename == crate::plan::OnRename::Recreate {
                prop_assert_eq!(&remote.display_name, &g.display_name);
            }
            let have: BTreeSet<String> = remote.members.iter().map(|m| m.value.clone()).collect();
            let want: BTreeSet<String> = g
                .members
                .iter()
                .filter_map(|k| state.live_user(k).map(|u| u.scim_id.to_string()))
                .collect();
            prop_assert_eq!(have, want, "members of {}", g.display_name);
        }
    }
    prop_assert!(
        w.touched_foreign.is_empty(),
        "foreign objects touched: {:?}",
        w.touched_foreign
    );
    prop_assert!(w.users.contains_key(&ScimId::new("stranger")));
    prop_assert!(w.groups.contains_key(&ScimId::new("admins")));
    Ok(())
}

fn arb_faults() -> impl Strategy<Value = BTreeMap<usize, Fault>> {
    prop::collection::btree_map(
        0..40usize,
        prop_oneof![
            Just(Fault::Fail),
            Just(Fault::Refuse),
            Just(Fault::LoseAnswer),
            Just(Fault::Crash),
            Just(Fault::NotApplied)
        ],
        0..4,
    )
}

/// Cycles after the faulty one, each planned from the store; enough for any
/// work a fault or a crash left behind.
const RECOVERY_CYCLES: usize = 4;

/// Gives every user a userName of its own key (`u3.1@example.com` for key
/// `u3`), so no two keys ever want the same name: a reused or swapped address
/// is a lifecycle case of its own, not what these properties are about.
fn own_names(mut desired: Desired, mut state: State) -> (Desired, State) {
    let rename = |key: &SourceKey, attrs: &mut UserAttrs| {
        let old = attrs.get(UserAttr::UserName).unwrap_or_default().to_owned();
        let rest = old.split_once('.').map_or(old.as_str(), |(_, r)| r);
        let name = format!("{key}.{rest}");
        attrs.insert(UserAttr::UserName, name.clone());
        attrs.insert(UserAttr::Email, name.clone());
        UserName::new(name)
    };
    for d in &mut desired.users {
        rename(&d.key, &mut d.attrs);
    }
    for (key, u) in &mut state.users {
        if let Some(attrs) = u.attrs.as_mut() {
            u.user_name = rename(key, attrs);
            u.hash = crate::model::AttrHash::of(attrs, &desired.create_only);
        }
    }
    (desired, state)
}

fn converges(
    desired: Desired,
    state: State,
    policy: Policy,
    faults: BTreeMap<usize, Fault>,
    concurrency: usize,
    full_first: bool,
) -> Result<(), TestCaseError> {
    let (desired, state) = own_names(desired, state);
    converges_as_named(desired, state, policy, faults, concurrency, full_first)
}

/// [`converges`] with the userNames as given: keys may trade names.
fn converges_as_named(
    desired: Desired,
    state: State,
    policy: Policy,
    faults: BTreeMap<usize, Fault>,
    concurrency: usize,
    full_first: bool,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    seed(&mut db, &state);
    let target = target_for(&state);
    {
        let mut w = target.world.lock().unwrap();
        w.faults = faults;
        w.renames_groups = policy.target_renames_groups;
    }
    let create_only = desired.create_only.clone();
    let mut history = Vec::new();
    for cycle in 0..=RECOVERY_CYCLES {
        let full = (cycle == 0 && full_first).then(|| rt.block_on(target.read_all()).unwrap());
        let (plan, loaded) = plan_from_db(&mut db, &desired, &policy, full);
        history.push(crate::plan::testkit::names(&plan));
        if plan.is_empty() && plan.observed.is_empty() {
            break;
        }
        rt.block_on(run_once(
            &mut db,
            &target,
            &plan,
            loaded,
            &create_only,
            concurrency,
        ));
        // Faults only in the first cycle: recovery runs against a healthy target.
        target.world.lock().unwrap().faults.clear();
    }
    let (last, _) = plan_from_db(&mut db, &desired, &policy, None);
    prop_assert!(
        last.is_empty(),
        "not converged after {} cycles: {:#?}\nleft: {:#?}",
        RECOVERY_CYCLES + 1,
        history,
        last.operations
    );
    let stored = db.load().unwrap();
    assert_target_matches(&target, &stored, &desired, &policy)?;
    // The state the executor kept in memory is the state the store holds: a
    // full reconcile of the converged target changes nothing.
    let snapshot = rt.block_on(target.read_all()).unwrap();
    let (full, _) = plan_from_db(&mut db, &desired, &policy, Some(snapshot));
    prop_assert!(
        full.is_empty(),
        "a --full plan after convergence: {:#?}",
        full.operations
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_executor_converges_despite_failures_lost_answers_and_crashes(
        (desired, state) in arb_world(),
        policy in arb_policy(),
        faults in arb_faults(),
        concurrency in 1..4usize,
        full_first in any::<bool>(),
    ) {
        // Deletions of users are allowed and groups may be deleted: the worst
        // case for ownership.
        converges(desired, state, policy, faults, concurrency, full_first)?;
    }
}

#[test]
fn a_crash_between_create_and_commit_resumes_without_a_duplicate() {
    let (a, b) = (
        crate::plan::testkit::person("1", "a@x.com", "Eng"),
        crate::plan::testkit::person("2", "b@x.com", "Eng"),
    );
    let desired = crate::plan::testkit::desired(vec![a, b], vec![]);
    // The second request (b's create) reaches the target, then the process dies.
    let faults = BTreeMap::from([(1, Fault::Crash)]);
    converges(
        desired,
        State::default(),
        Policy::default(),
        faults,
        1,
        false,
    )
    .unwrap();
}

#[test]
fn adoptions_are_committed_like_any_other_operation() {
    let a = crate::plan::testkit::person("1", "a@x.com", "Eng");
    let desired = crate::plan::testkit::desired(vec![a.clone()], vec![]);
    let target = target_for(&State::default());
    // The account exists already (made by hand), in another case.
    let mut attrs = a.attrs.clone();
    attrs.insert(UserAttr::UserName, "A@X.com");
    attrs.insert(UserAttr::Title, "Hand-made");
    target.world.lock().unwrap().users.insert(
        ScimId::new("hand"),
        RemoteUser {
            id: ScimId::new("hand"),
            attrs,
            active: false,
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let snapshot = rt.block_on(target.read_all()).unwrap();
    let (plan, state) = plan_from_db(&mut db, &desired, &Policy::default(), Some(snapshot));
    let names: Vec<&str> = plan.operations.iter().map(|op| op.name()).collect();
    assert_eq!(names, ["adopt_user", "enable_user"]);
    assert!(rt.block_on(run_once(
        &mut db,
        &target,
        &plan,
        state,
        &BTreeSet::new(),
        2
    )));
    let stored = db.load().unwrap();
    let user = &stored.users[&SourceKey::new("1")];
    assert_eq!(user.scim_id.to_string(), "hand");
    assert_eq!(user.ownership, crate::model::Ownership::Adopted);
    assert_eq!(user.status, Status::Active);
    let (next, _) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    assert!(next.is_empty(), "{:#?}", next.operations);
}

/// Runs one create of `Ann@X.com` against a target holding `ann@x.com` (made
/// by hand) that compares userName ignoring case; `fixed`: the target's
/// immutable attributes. Returns the requests made and the userName it holds.
fn adopt_in_another_case(fixed: BTreeSet<UserAttr>) -> (usize, String) {
    let a = crate::plan::testkit::person("1", "Ann@X.com", "Eng");
    let desired = crate::plan::testkit::desired(vec![a.clone()], vec![]);
    let target = target_for(&State::default());
    let mut attrs = a.attrs.clone();
    attrs.insert(UserAttr::UserName, "ann@x.com");
    {
        let mut w = target.world.lock().unwrap();
        w.rules.folded = [UserAttr::UserName, UserAttr::Email].into();
        w.rules.fixed = fixed;
        w.users.insert(
            ScimId::new("hand"),
            RemoteUser {
                id: ScimId::new("hand"),
                attrs,
                active: true,
            },
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let (plan, state) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    assert_eq!(plan.operations[0].name(), "create_user");
    let calls_before = target.world.lock().unwrap().calls;
    assert!(rt.block_on(run_once(
        &mut db,
        &target,
        &plan,
        state,
        &BTreeSet::new(),
        1
    )));
    let stored = db.load().unwrap();
    assert_eq!(
        stored.users[&SourceKey::new("1")].scim_id.to_string(),
        "hand"
    );
    let w = target.world.lock().unwrap();
    (
        w.calls - calls_before,
        w.users[&ScimId::new("hand")]
            .attrs
            .get(UserAttr::UserName)
            .unwrap()
            .to_owned(),
    )
}

/// A create that meets an account whose immutable userName differs only in
/// case adopts it without a PATCH: the change would be refused every cycle.
#[test]
fn adopting_an_account_whose_immutable_user_name_differs_in_case_sends_no_change() {
    let (calls, held) = adopt_in_another_case([UserAttr::UserName].into());
    // POST (409) and the lookup; no PATCH.
    assert_eq!(calls, 2);
    assert_eq!(held, "ann@x.com");
}

/// Where the target can change it, an adopted account's case-only difference
/// is brought in line with the source once (later cycles compare as the
/// target does).
#[test]
fn adopting_an_account_in_another_case_fixes_the_case_where_the_target_can_change_it() {
    let (calls, held) = adopt_in_another_case(BTreeSet::new());
    // POST (409), the lookup, and one PATCH.
    assert_eq!(calls, 3);
    assert_eq!(held, "Ann@X.com");
}

#[test]
fn refused_updates_do_not_starve_the_removals() {
    // Every update is refused with a 400 (one attribute the target rejects),
    // far more than the failure budget's minimum: the leaver is still
    // disabled in the same cycle, after the updates.
    const USERS: usize = 3 * FAILURE_BUDGET_MIN_OPS as usize;
    let people: Vec<_> = (0..USERS)
        .map(|i| crate::plan::testkit::person(&format!("{i:03}"), &format!("p{i}@x.com"), "Eng"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let target = MemoryTarget::default();
    let policy = Policy::default();
    let first = crate::plan::testkit::desired(people.clone(), vec![]);
    let (plan, state) = plan_from_db(&mut db, &first, &policy, None);
    assert!(rt.block_on(run_once(
        &mut db,
        &target,
        &plan,
        state,
        &BTreeSet::new(),
        2
    )));

    // Everyone gets a new title; the last one leaves.
    let mut stayers = people.clone();
    let leaver = stayers.pop().unwrap();
    for p in &mut stayers {
        p.attrs.insert(UserAttr::Title, "Refused");
    }
    {
        let mut w = target.world.lock().unwrap();
        let from = w.calls;
        w.faults = (from..from + USERS).map(|c| (c, Fault::Refuse)).collect();
        // The disable is the last call: let it through.
        w.faults.remove(&(from + USERS - 1));
    }
    let second = crate::plan::testkit::desired(stayers, vec![]);
    let (plan, state) = plan_from_db(&mut db, &second, &policy, None);
    assert_eq!(plan.summary.update_users as usize, USERS - 1);
    assert_eq!(plan.summary.disable_users, 1);
    let mut executor = Executor {
        target: target.clone(),
        db: &mut db,
        state,
        create_only: BTreeSet::new(),
        concurrency: 2,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    let (outcome, _) = rt.block_on(executor.run("sync", &plan)).unwrap();
    assert_eq!(outcome.stopped, None);
    assert_eq!(outcome.failed as usize, USERS - 1);
    assert_eq!(outcome.applied, 1);
    let stored = db.load().unwrap();
    assert_eq!(stored.users[&leaver.key].status, Status::Disabled);
    let w = target.world.lock().unwrap();
    let remote = &w.users[&stored.users[&leaver.key].scim_id.to_scim_id()];
    assert!(!remote.active, "the leaver keeps access");
}

/// Sixty new users created through `target` at `concurrency` from a fresh
/// state DB (within ten seconds, or the test fails): the outcome, and the DB.
fn create_sixty(
    target: &MemoryTarget,
    concurrency: usize,
) -> (Outcome, StateDb, tempfile::TempDir) {
    let people: Vec<_> = (0..60)
        .map(|i| crate::plan::testkit::person(&format!("{i:03}"), &format!("p{i}@x.com"), "Eng"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let desired = crate::plan::testkit::desired(people, vec![]);
    let (plan, state) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    let mut executor = Executor {
        target: target.clone(),
        db: &mut db,
        state,
        create_only: BTreeSet::new(),
        concurrency,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    let run = async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            executor.run("sync", &plan),
        )
        .await
    };
    let (outcome, _) = rt
        .block_on(run)
        .expect("the run ends within ten seconds")
        .unwrap();
    (outcome, db, dir)
}

#[test]
fn target_failures_still_stop_the_cycle_early() {
    // The same cycle against a target answering 500: the failure budget stops
    // it long before the end.
    let target = MemoryTarget::default();
    target.world.lock().unwrap().faults = (0..60).map(|c| (c, Fault::Fail)).collect();
    let (outcome, _, _) = create_sixty(&target, 1);
    assert!(
        matches!(outcome.stopped, Some(Stop::FailureBudget { .. })),
        "{:?}",
        outcome.stopped
    );
    assert_eq!(outcome.failed, FAILURE_BUDGET_MIN_OPS);
}

#[test]
fn a_kill_at_32_in_flight_leaves_at_most_128_creates_marked_and_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let desired = crate::plan::testkit::desired(vec![], vec![]);
    let (_, state) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    let mut executor = Executor {
        target: MemoryTarget::default(),
        db: &mut db,
        state,
        create_only: BTreeSet::new(),
        concurrency: 32,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    assert_eq!(executor.window(), 128, "32 slots");
    executor.concurrency = 4;
    assert_eq!(executor.window(), 4 * START_WINDOW_PER_SLOT, "4 slots");
}

#[test]
fn a_slow_create_does_not_hold_back_the_creates_after_its_window() {
    // Creates are marked started window by window (concurrency × 16). The
    // first create is answered only once 45 requests were made, more than one
    // window holds: the other slot must go on into the next window meanwhile
    // instead of waiting for the whole window to finish.
    let target = MemoryTarget::default();
    const { assert!(2 * START_WINDOW_PER_SLOT < 45) };
    target.world.lock().unwrap().hold = Some((0, 45));
    let (outcome, db, _dir) = create_sixty(&target, 2);
    assert_eq!(outcome.applied, 60);
    assert!(db.interrupted_ops().unwrap().is_empty());
}

#[test]
fn a_membership_change_the_target_did_not_take_is_failed_and_not_recorded() {
    let people: Vec<_> = (0..3)
        .map(|i| crate::plan::testkit::person(&format!("{i:03}"), &format!("p{i}@x.com"), "Eng"))
        .collect();
    let group = crate::plan::testkit::group("g", "G", &["000", "001", "002"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let target = MemoryTarget::default();
    let desired = crate::plan::testkit::desired(people, vec![group]);
    let (plan, state) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    // Calls: three creates, one group lookup and create, then the members.
    let members_call = plan
        .operations
        .iter()
        .position(|op| op.name() == "add_members")
        .expect("add_members")
        + 1;
    target
        .world
        .lock()
        .unwrap()
        .faults
        .insert(members_call, Fault::NotApplied);
    let mut executor = Executor {
        target: target.clone(),
        db: &mut db,
        state,
        create_only: BTreeSet::new(),
        concurrency: 1,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    let (outcome, _) = rt.block_on(executor.run("sync", &plan)).unwrap();
    assert_eq!(outcome.failed, 1, "{:?}", outcome.failures);
    assert_eq!(outcome.failures[0].op, OpKind::AddMembers);
    assert_eq!(
        outcome.target_failed, 0,
        "the object's failure, not the target's"
    );
    let stored = db.load().unwrap();
    assert!(
        stored
            .memberships
            .get(&crate::model::GroupKey::new("g"))
            .is_none_or(|m| m.is_empty()),
        "nothing recorded as pushed"
    );
    let (again, _) = plan_from_db(&mut db, &desired, &Policy::default(), None);
    assert!(again.operations.iter().any(|op| op.name() == "add_members"));
}

#[test]
fn assuming_every_request_succeeds_leaves_nothing_to_do() {
    use crate::plan::testkit::{desired, group, person, plan};
    let (a, b) = (person("1", "a@x.com", "Eng"), person("2", "b@x.com", "Ops"));
    let d = desired(vec![a, b], vec![group("g", "G", &["1", "2"])]);
    let first = plan(&d, &State::default(), &Policy::default());
    let mut state = State::default();
    for change in assume_success(&State::default(), &first, &d.create_only) {
        state.apply(&change);
    }
    assert_eq!(state.managed_users(), 2);
    let next = plan(&d, &state, &Policy::default());
    assert!(next.is_empty(), "{:#?}", next.operations);
}

/// Lifecycle worlds: keys trading a small pool of userNames — swaps, rotations,
/// chains, leavers whose address a new key takes — under the policies that let
/// every such plan finish (`reuse_accounts: never` with `disable` refuses a
/// reused address on purpose; it has tests of its own).
fn arb_name_world() -> impl Strategy<Value = (Desired, State, Policy)> {
    let keys = 5usize;
    (
        prop::sample::subsequence((0..keys).collect::<Vec<_>>(), 0..=keys).prop_shuffle(),
        prop::sample::subsequence((0..keys).collect::<Vec<_>>(), 0..=keys).prop_shuffle(),
        prop::collection::vec(arb_status_no_removed(), keys),
        any::<bool>(),
    )
        .prop_map(move |(had, want, statuses, delete)| {
            use crate::plan::testkit::{desired, person, pushed};
            let name = |n: usize| format!("n{n}@example.com");
            // Key i held name `had[i]` before and wants `want[i]` now.
            let mut state = State::default();
            for (i, n) in had.iter().enumerate() {
                let p = person(&format!("k{i}"), &name(*n), "Eng");
                state.users.insert(p.key.clone(), pushed(&p, statuses[i]));
            }
            let users = want
                .iter()
                .enumerate()
                .map(|(i, n)| person(&format!("k{}", keys - 1 - i), &name(*n), "Eng"))
                .collect();
            let policy = Policy {
                remove_action: if delete {
                    crate::plan::RemoveAction::Delete
                } else {
                    crate::plan::RemoveAction::Disable
                },
                reuse_accounts: crate::plan::ReuseAccounts::AfterRemoval,
                ..Policy::default()
            };
            (desired(users, vec![]), state, policy)
        })
}

fn arb_status_no_removed() -> impl Strategy<Value = Status> {
    prop_oneof![Just(Status::Active), Just(Status::Disabled)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn names_moving_between_keys_converge_despite_failures_and_crashes(
        (desired, state, policy) in arb_name_world(),
        faults in arb_faults(),
        concurrency in 1..4usize,
    ) {
        // Under `disable`, a user renamed to a leaver's address is refused for
        // as long as the leaver's account holds it: not a convergence case.
        if policy.remove_action == crate::plan::RemoveAction::Disable {
            let leavers: Vec<&UserName> = state
                .users
                .iter()
                .filter(|(k, _)| !desired.users.iter().any(|d| d.key == **k))
                .map(|(_, u)| &u.user_name)
                .collect();
            prop_assume!(!desired.users.iter().any(|d| {
                state.users.contains_key(&d.key)
                    && leavers.contains(&&d.user_name())
            }));
        }
        converges_as_named(desired, state, policy, faults, concurrency, false)?;
    }
}

fn swap_world(rotation: usize) -> (Desired, State) {
    use crate::plan::testkit::{desired, person, state_of};
    let name = |n: usize| format!("p{n}@example.com");
    let before: Vec<_> = (0..rotation)
        .map(|i| person(&format!("{i}"), &name(i), "Eng"))
        .collect();
    let after = (0..rotation)
        .map(|i| person(&format!("{i}"), &name((i + 1) % rotation), "Eng"))
        .collect();
    let state = state_of(
        &before
            .iter()
            .map(|p| (p, Status::Active))
            .collect::<Vec<_>>(),
    );
    (desired(after, vec![]), state)
}

#[test]
fn a_swap_resumes_after_a_crash_between_any_two_steps() {
    for rotation in [2, 3] {
        // One request per step: a crash after each of them in turn.
        for at in 0..=rotation + 1 {
            let (desired, state) = swap_world(rotation);
            let faults = BTreeMap::from([(at, Fault::Crash)]);
            converges_as_named(desired, state, Policy::default(), faults, 1, false)
                .unwrap_or_else(|e| panic!("rotation {rotation}, crash at request {at}: {e}"));
        }
    }
}

/// Leaver `1` (in group `g`) held `a@x.com`; new hire `2` gets it.
fn reuse_world() -> (Desired, State) {
    use crate::plan::testkit::{desired, group, person, state_of, with_group};
    let old = person("1", "a@x.com", "Eng");
    let new = person("2", "a@x.com", "Lead");
    let stays = person("3", "c@x.com", "Eng");
    let state = with_group(
        state_of(&[(&old, Status::Active), (&stays, Status::Active)]),
        "g",
        "Staff",
        &["1", "3"],
    );
    (
        desired(vec![new, stays], vec![group("g", "Staff", &["3"])]),
        state,
    )
}

#[test]
fn a_reused_address_converges_under_delete_and_after_removal_despite_crashes() {
    for (remove, reuse) in [
        (
            crate::plan::RemoveAction::Delete,
            crate::plan::ReuseAccounts::Never,
        ),
        (
            crate::plan::RemoveAction::Delete,
            crate::plan::ReuseAccounts::AfterRemoval,
        ),
        (
            crate::plan::RemoveAction::Disable,
            crate::plan::ReuseAccounts::AfterRemoval,
        ),
    ] {
        for at in 0..5 {
            let (desired, state) = reuse_world();
            let policy = Policy {
                remove_action: remove,
                reuse_accounts: reuse,
                ..Policy::default()
            };
            let faults = BTreeMap::from([(at, Fault::Crash)]);
            converges_as_named(desired, state, policy, faults, 1, false)
                .unwrap_or_else(|e| panic!("{remove:?} {reuse:?}, crash at {at}: {e}"));
        }
    }
}

/// Plans and applies one cycle from `db`; the executor's outcome.
fn cycle(db: &mut StateDb, target: &MemoryTarget, desired: &Desired, policy: &Policy) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plan, state) = plan_from_db(db, desired, policy, None);
    let mut executor = Executor {
        target: target.clone(),
        db,
        state,
        create_only: BTreeSet::new(),
        concurrency: 2,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    rt.block_on(executor.run("sync", &plan)).unwrap().0
}

#[test]
fn under_never_a_new_hire_is_refused_the_leavers_account_naming_both_keys() {
    let (desired, state) = reuse_world();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    seed(&mut db, &state);
    let target = target_for(&state);
    for _ in 0..2 {
        let outcome = cycle(&mut db, &target, &desired, &Policy::default());
        assert_eq!(outcome.failed, 1, "{:?}", outcome.failures);
        let error = &outcome.failures[0].error;
        assert!(
            error.contains("user 1") && error.contains("user 2") && error.contains("after_removal"),
            "{error}"
        );
    }
    let stored = db.load().unwrap();
    assert!(!stored.users.contains_key(&SourceKey::new("2")));
    assert_eq!(stored.users[&SourceKey::new("1")].status, Status::Disabled);
    let w = target.world.lock().unwrap();
    let leaver = &w.users[&ScimId::new("id-1")];
    assert!(!leaver.active, "the leaver's account was re-enabled");
    assert_eq!(leaver.attrs.get(UserAttr::Title).unwrap(), "Eng");
}

#[test]
fn a_conflict_with_a_removed_leavers_account_still_in_the_target_is_not_adopted() {
    // The state says the leaver's account is gone, but the target still holds
    // it (a delete the target acknowledged without doing): the planner sees no
    // holder, the create meets a 409, and the lookup finds key 1's account.
    let (desired, mut state) = reuse_world();
    state.users.get_mut(&SourceKey::new("1")).unwrap().status = Status::Disabled;
    let target = target_for(&state);
    state.users.get_mut(&SourceKey::new("1")).unwrap().status = Status::Removed;
    state.memberships.clear();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    seed(&mut db, &state);
    let policy = Policy {
        reuse_accounts: crate::plan::ReuseAccounts::AfterRemoval,
        ..Policy::default()
    };
    let outcome = cycle(&mut db, &target, &desired, &policy);
    assert_eq!(outcome.failed, 1, "{:?}", outcome.failures);
    assert!(
        outcome.failures[0]
            .error
            .contains("account of user 1 (removed)"),
        "{}",
        outcome.failures[0].error
    );
    assert!(!db.load().unwrap().users.contains_key(&SourceKey::new("2")));
    assert!(!target.world.lock().unwrap().users[&ScimId::new("id-1")].active);
}

#[test]
fn one_scim_id_is_never_recorded_for_two_live_keys() {
    let (_, state) = reuse_world();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idsync.db");
    let mut db = StateDb::open(&path).unwrap();
    seed(&mut db, &state);
    let mut twin = state.users[&SourceKey::new("1")].clone();
    twin.attrs = Some(Box::new(UserAttrs::new()));
    let err = db
        .commit_changes(&[crate::model::StateChange::PutUser {
            key: SourceKey::new("2"),
            user: twin,
        }])
        .unwrap_err();
    assert!(
        err.to_string().contains("already belongs to user 1"),
        "{err}"
    );
    // A DB written by an earlier version that did it is refused on load, with
    // the way out.
    drop(db);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO users (key, scim_id, user_name, attrs, hash, status, ownership, updated_at)
         SELECT '2', scim_id, user_name, attrs, hash, status, ownership, updated_at FROM users WHERE key = '1'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = StateDb::open(&path).unwrap().load().unwrap_err();
    assert!(err.to_string().contains("both hold SCIM id"), "{err}");
}

#[test]
fn a_takeover_waits_when_the_leavers_disable_failed() {
    let (desired, state) = reuse_world();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    seed(&mut db, &state);
    let target = target_for(&state);
    let policy = Policy {
        reuse_accounts: crate::plan::ReuseAccounts::AfterRemoval,
        ..Policy::default()
    };
    // Release phase: the leaver leaves group g (request 0), then its disable
    // (request 1) is refused.
    target.world.lock().unwrap().faults = BTreeMap::from([(1, Fault::Refuse)]);
    let outcome = cycle(&mut db, &target, &desired, &policy);
    let errors: Vec<&str> = outcome.failures.iter().map(|f| f.error.as_str()).collect();
    assert_eq!(outcome.failed, 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("only once 1's removal is done")),
        "{errors:?}"
    );
    {
        let w = target.world.lock().unwrap();
        let leaver = &w.users[&ScimId::new("id-1")];
        assert_eq!(
            leaver.attrs.get(UserAttr::ExternalId).unwrap(),
            "1",
            "taken over too early"
        );
    }
    // The next cycle finishes the work: the leaver's account is user 2's.
    let outcome = cycle(&mut db, &target, &desired, &policy);
    assert_eq!(outcome.failed, 0, "{:?}", outcome.failures);
    let stored = db.load().unwrap();
    assert_eq!(
        stored.users[&SourceKey::new("2")].scim_id.to_string(),
        "id-1"
    );
    assert_eq!(stored.users[&SourceKey::new("1")].status, Status::Removed);
    let (next, _) = plan_from_db(&mut db, &desired, &policy, None);
    assert!(next.is_empty(), "{:#?}", next.operations);
}

#[test]
fn the_transition_never_records_another_keys_account_for_a_create() {
    let (_, state) = reuse_world();
    let hire = crate::plan::testkit::person("2", "a@x.com", "Lead");
    let op = crate::plan::Operation::CreateUser {
        key: hire.key.clone(),
        user_name: UserName::new("a@x.com"),
        attrs: Default::default(),
        name_step: None,
    };
    let t = transition(
        &state,
        &op,
        Response::UserCreated {
            id: ScimId::new("id-1"),
            ownership: crate::model::Ownership::Adopted,
            attrs: hire.attrs.clone(),
        },
        &BTreeSet::new(),
    );
    assert_eq!(t.change, None);
    assert_eq!(t.outcome, crate::state::OpOutcome::Failed);
    assert!(t.error.unwrap().contains("belongs to user 1"));
}

#[test]
fn a_failed_update_is_recorded_once_and_the_log_shows_what_it_tried() {
    // One record per operation: the operation as attempted (`new_values`) is
    // what `idsync log` shows, for a failed one too; `revert` sees only the
    // applied ones.
    let ann = crate::plan::testkit::person("1", "ann@x.com", "Eng");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
    let target = MemoryTarget::default();
    let policy = Policy::default();
    let first = crate::plan::testkit::desired(vec![ann.clone()], vec![]);
    let (plan, state) = plan_from_db(&mut db, &first, &policy, None);
    assert!(rt.block_on(run_once(
        &mut db,
        &target,
        &plan,
        state,
        &BTreeSet::new(),
        1
    )));
    let mut promoted = ann.clone();
    promoted.attrs.insert(UserAttr::Title, "Lead");
    {
        let mut w = target.world.lock().unwrap();
        let next = w.calls;
        w.faults = BTreeMap::from([(next, Fault::Refuse)]);
    }
    let second = crate::plan::testkit::desired(vec![promoted], vec![]);
    let (plan, state) = plan_from_db(&mut db, &second, &policy, None);
    assert_eq!(plan.summary.update_users, 1);
    let mut executor = Executor {
        target: target.clone(),
        db: &mut db,
        state,
        create_only: BTreeSet::new(),
        concurrency: 1,
        shutdown: Arc::new(AtomicBool::new(false)),
        progress: &NoProgress,
    };
    let (outcome, run) = rt.block_on(executor.run("sync", &plan)).unwrap();
    assert_eq!(outcome.failed, 1);
    let log = db
        .op_log(&crate::state::LogFilter {
            run: Some(run),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].outcome, OpOutcome::Failed);
    assert_eq!(log[0].http_status, Some(400));
    assert_eq!(
        log[0].detail,
        Some(serde_json::json!({"changes": {"title": {"old": "Eng", "new": "Lead"}}}))
    );
    assert!(db.applied_ops(run).unwrap().is_empty());
}

/// How the random target of the property below holds one value.
fn arb_keep() -> impl Strategy<Value = Option<Keep>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Keep::Drop)),
        1 => Just(Some(Keep::Store("held otherwise".into()))),
    ]
}

/// The managed values the target holds otherwise than the source wants:
/// (key, attribute).
fn differences(target: &MemoryTarget, desired: &Desired) -> BTreeSet<(String, UserAttr)> {
    let world = target.world.lock().unwrap();
    let mut out = BTreeSet::new();
    for d in &desired.users {
        let name = d.user_name();
        let Some(held) = world
            .users
            .values()
            .find(|u| u.user_name().as_ref() == Some(&name))
        else {
            continue;
        };
        for (attr, wanted) in d.attrs.iter() {
            if held.attrs.get(attr) != Some(wanted) {
                out.insert((d.key.as_str().to_owned(), attr));
            }
        }
    }
    out
}

/// The plan `sync` would make, with the notes the state DB holds.
fn plan_with_notes(db: &mut StateDb, desired: &Desired, full: Option<TargetSnapshot>) -> Plan {
    let state = db.load().unwrap();
    let mut opts = options(&Policy::default());
    opts.notes = db.note_summaries().unwrap();
    let input = PlanningInput::new(desired.clone(), state, full, opts, |s, keys| {
        db.load_attrs(s, keys.iter())
    })
    .unwrap();
    crate::plan::plan(&input)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Targets that keep or drop each user's values at random: whatever
    /// idsync learned, a plan never implies the target holds a value it does
    /// not. A plain plan either sends the value or names its attribute in a
    /// warning; `--full` plans every difference; a note rests only on users
    /// whose value the target did not keep.
    #[test]
    fn no_note_ever_hides_a_real_difference(
        keeps in proptest::collection::vec((arb_keep(), arb_keep()), 1..6),
        changed in proptest::collection::vec(any::<bool>(), 6),
    ) {
        use crate::plan::testkit::{desired, person};
        let users: Vec<_> = (0..keeps.len())
            .map(|i| person(&format!("k{i}"), &format!("p{i}@example.com"), "Eng"))
            .collect();
        let target = MemoryTarget::default();
        {
            let mut world = target.world.lock().unwrap();
            for (i, (title, external_id)) in keeps.iter().enumerate() {
                let name = UserName::new(format!("p{i}@example.com").as_str());
                for (attr, keep) in [(UserAttr::Title, title), (UserAttr::ExternalId, external_id)] {
                    if let Some(keep) = keep {
                        world.keeps.insert((name.clone(), attr), keep.clone());
                    }
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("s.db")).unwrap();
        let first = desired(users.clone(), vec![]);
        let outcome = cycle(&mut db, &target, &first, &Policy::default());
        prop_assert_eq!(outcome.failed, 0);
        // Some titles change in the source; a second cycle sends them.
        let mut users = users;
        for (u, change) in users.iter_mut().zip(&changed) {
            if *change {
                u.attrs.insert(UserAttr::Title, "Lead");
            }
        }
        let second = desired(users, vec![]);
        cycle(&mut db, &target, &second, &Policy::default());

        let differ = differences(&target, &second);
        let plain = plan_with_notes(&mut db, &second, None);
        for (key, attr) in &differ {
            let planned = plain.operations.iter().any(|op| {
                op.subject().as_str() == key.as_str()
                    && serde_json::to_value(op).unwrap()["changes"].get(attr.name()).is_some()
            });
            let warned = plain
                .warnings
                .iter()
                .any(|w| w.contains(&format!("`{}` not kept as sent", attr.name())));
            prop_assert!(planned || warned, "{key} {attr:?} differs, unsaid: {plain:?}");
        }
        let snapshot = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(target.read_all())
            .unwrap();
        let full = plan_with_notes(&mut db, &second, Some(snapshot));
        for (key, attr) in &differ {
            let planned = full.operations.iter().any(|op| {
                op.subject().as_str() == key.as_str()
                    && serde_json::to_value(op).unwrap()["changes"].get(attr.name()).is_some()
            });
            prop_assert!(planned, "--full leaves {key} {attr:?} out: {full:?}");
        }
        if differ.is_empty() {
            prop_assert!(full.operations.is_empty(), "{full:?}");
        }
        // Notes rest only on users whose value the target did not keep.
        let kept_by = |attr: UserAttr| {
            keeps
                .iter()
                .filter(|(title, ext)| {
                    let keep = if attr == UserAttr::Title { title } else { ext };
                    keep.is_some()
                })
                .count() as u64
        };
        for note in db.note_summaries().unwrap() {
            prop_assert!(note.users <= kept_by(note.attr), "{note:?}");
        }
    }
}

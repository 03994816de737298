//! The audit's findings from small worlds: a source, a state as a sync left
//! it, and a target someone worked on by hand.

use super::*;
use crate::model::{DesiredUser, RemoteMember};
use crate::plan::testkit::{attrs, desired, group, options, person, state_of, with_group};
use crate::plan::{PlanningInput, RemovalLimit};

fn remote(d: &DesiredUser, active: bool) -> RemoteUser {
    RemoteUser {
        id: ScimId::new(format!("id-{}", d.key)),
        attrs: d.attrs.clone(),
        active,
    }
}

fn remote_group(key: &str, name: &str, member_ids: &[&str]) -> RemoteGroup {
    RemoteGroup {
        id: ScimId::new(format!("gid-{key}")),
        display_name: name.into(),
        external_id: None,
        members: member_ids.iter().map(|id| RemoteMember::id(*id)).collect(),
    }
}

fn stranger(id: &str, name: &str, active: bool) -> RemoteUser {
    RemoteUser {
        id: ScimId::new(id),
        attrs: attrs(&[(UserAttr::UserName, name)]),
        active,
    }
}

/// A world after a clean sync: ann and bob in Engineering, everything in
/// the target as pushed.
struct World {
    desired: Desired,
    state: State,
    target: TargetSnapshot,
    policy: Policy,
    failed: FailedOps,
}

fn synced() -> World {
    let ann = person("e1", "ann@x.com", "Engineer");
    let bob = person("e2", "bob@x.com", "Engineer");
    let state = with_group(
        state_of(&[(&ann, Status::Active), (&bob, Status::Active)]),
        "eng",
        "Engineering",
        &["e1", "e2"],
    );
    let target = TargetSnapshot {
        users: vec![remote(&ann, true), remote(&bob, true)],
        groups: vec![remote_group("eng", "Engineering", &["id-e1", "id-e2"])],
        ..TargetSnapshot::default()
    };
    World {
        desired: desired(
            vec![ann, bob],
            vec![group("eng", "Engineering", &["e1", "e2"])],
        ),
        state,
        target,
        policy: Policy {
            max_removals: RemovalLimit::Percent(100.0),
            ..Policy::default()
        },
        failed: FailedOps::default(),
    }
}

/// Audits `w` as `idsync audit` does: the `--full` plan and the guards' verdict.
fn run(w: &World) -> Audit {
    let input = PlanningInput::new(
        w.desired.clone(),
        w.state.clone(),
        Some(w.target.clone()),
        options(&w.policy),
        |_, _| Ok::<(), ()>(()),
    )
    .expect("nothing to load");
    let plan = crate::plan::plan(&input);
    let stop = crate::plan::guard::check(&plan, &w.policy, false).err();
    audit(&AuditInput {
        desired: input.desired(),
        state: input.state(),
        target: input.target().expect("read"),
        policy: &w.policy,
        plan: &plan,
        guard: stop.as_ref(),
        failed: &w.failed,
    })
}

#[test]
fn a_target_as_the_last_sync_left_it_is_clean() {
    let a = run(&synced());
    assert!(a.is_clean(), "{a:#?}");
    assert_eq!(a.findings(), 0);
    assert_eq!(a.counts.target_users, 2);
    assert_eq!(a.counts.managed_groups, 1);
}

#[test]
fn hand_made_accounts_are_orphans_with_their_groups_and_creation_time() {
    let mut w = synced();
    w.target.users.push(stranger("hand-1", "zed@x.com", true));
    // Inactive accounts give no access; a match for a source user is adopted.
    w.target.users.push(stranger("hand-2", "old@x.com", false));
    let cy = person("e3", "cy@x.com", "Designer");
    w.target.users.push(RemoteUser {
        id: ScimId::new("hand-3"),
        ..remote(&cy, true)
    });
    w.desired.users.push(cy);
    w.target.groups[0].members.push(RemoteMember::id("hand-1"));
    w.target
        .created
        .users
        .insert(ScimId::new("hand-1"), "2024-05-01T10:00:00Z".into());
    let a = run(&w);
    assert_eq!(a.orphans.len(), 1, "{a:#?}");
    let o = &a.orphans[0];
    assert_eq!(o.user_name.as_deref(), Some("zed@x.com"));
    assert_eq!(o.created.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert_eq!(o.groups, ["Engineering"]);
    // Its membership of a managed group is not from the directory either.
    assert_eq!(a.foreign_members.len(), 1, "{a:#?}");
    let m = &a.foreign_members[0];
    assert_eq!((m.group.as_str(), m.key.as_ref()), ("Engineering", None));
    assert!(m.reason.starts_with("added by hand"), "{}", m.reason);
    assert!(!a.is_clean());
}

#[test]
fn a_leaver_still_active_is_stale_with_why_it_still_is() {
    let mut w = synced();
    let bob = w.desired.users.remove(1);
    w.desired.groups[0].members.retain(|k| *k != bob.key);
    let a = run(&w);
    assert_eq!(a.stale.len(), 1, "{a:#?}");
    let s = &a.stale[0];
    assert_eq!((s.key.as_str(), s.source), ("e2", "not in the source"));
    assert_eq!(s.reason, "pending: the next `sync` disables it");
    // The membership idsync pushed is pending removal too.
    assert!(
        a.foreign_members[0]
            .reason
            .starts_with("pushed by idsync; the source no longer has it there; pending"),
        "{a:#?}"
    );

    // Held by a guard, and failed in the last run.
    w.policy.max_removals = RemovalLimit::Count(0);
    w.failed
        .users
        .insert(bob.key.clone(), "HTTP 500: boom".into());
    let a = run(&w);
    let reason = &a.stale[0].reason;
    assert!(
        reason.starts_with("its removal is held by a guard: the plan removes 1 objects"),
        "{reason}"
    );
    assert!(
        reason.contains("failed in the last run that had failures (HTTP 500: boom)"),
        "{reason}"
    );
}

#[test]
fn an_account_enabled_again_by_hand_or_left_out_of_scope_is_stale() {
    let mut w = synced();
    // Bob was disabled by idsync (inactive in the source); someone enabled him.
    w.desired.users[1].active = false;
    w.state.users.get_mut(&SourceKey::new("e2")).unwrap().status = Status::Disabled;
    // Ann left the scope, and out-of-scope users are left alone.
    let ann = w.desired.users.remove(0);
    w.desired.out_of_scope.insert(ann.key.clone());
    w.desired.groups[0].members.retain(|k| *k != ann.key);
    w.policy.skip_out_of_scope_deletions = true;
    let a = run(&w);
    let stale: Vec<(&str, &str)> = a.stale.iter().map(|s| (s.key.as_str(), s.source)).collect();
    assert_eq!(
        stale,
        [("e1", "out of scope"), ("e2", "disabled in the source")]
    );
    assert!(
        a.stale[0].reason.contains("skip_out_of_scope_deletions"),
        "{a:#?}"
    );
    assert!(
        a.stale[1].reason.starts_with("enabled again in the target"),
        "{a:#?}"
    );
}

#[test]
fn members_and_groups_added_by_hand_are_reported_and_protected_ones_listed_apart() {
    let mut w = synced();
    // Bob added by hand to a second managed group the source has without him.
    w.state = with_group(w.state, "ops", "Ops", &["e1"]);
    w.desired.groups.push(group("ops", "Ops", &["e1"]));
    w.target
        .groups
        .push(remote_group("ops", "Ops", &["id-e1", "id-e2"]));
    // A group made by hand, and one the policy protects.
    w.target
        .groups
        .push(remote_group("hand", "Contractors", &["id-e1"]));
    w.target
        .created
        .groups
        .insert(ScimId::new("gid-hand"), "2023-01-02T03:04:05Z".into());
    w.target
        .groups
        .push(remote_group("admins", "site-admins", &["id-e2"]));
    w.policy.protected_groups.insert("site-admins".into());
    // A protected account made by hand.
    w.target.users.push(stranger("root", "admin@x.com", true));
    w.policy
        .protected_users
        .insert(UserName::new("Admin@x.com"));
    let a = run(&w);
    assert_eq!(a.foreign_members.len(), 1, "{a:#?}");
    let m = &a.foreign_members[0];
    assert_eq!(
        (
            m.group.as_str(),
            m.user_name.as_deref(),
            m.key.as_ref().map(SourceKey::as_str)
        ),
        ("Ops", Some("bob@x.com"), Some("e2"))
    );
    assert!(
        m.reason.contains("`sync --full` removes it"),
        "{}",
        m.reason
    );
    assert_eq!(a.unmanaged_groups.len(), 1, "{a:#?}");
    let g = &a.unmanaged_groups[0];
    assert_eq!((g.display_name.as_str(), g.members), ("Contractors", 1));
    assert_eq!(g.created.as_deref(), Some("2023-01-02T03:04:05Z"));
    assert!(a.orphans.is_empty(), "{a:#?}");
    let protected: Vec<(&str, &str)> = a
        .protected
        .iter()
        .map(|p| (p.kind, p.name.as_str()))
        .collect();
    assert_eq!(
        protected,
        [("group", "site-admins"), ("user", "admin@x.com")]
    );
}

#[test]
fn drift_is_what_sync_full_repairs_counted_by_attribute() {
    let mut w = synced();
    w.target.users[0]
        .attrs
        .insert(UserAttr::Title, "Hand-edited");
    // Bob deleted by hand (and gone from his group, as real targets do).
    w.target.users.remove(1);
    w.target.groups[0].members.retain(|m| m.value != "id-e2");
    let a = run(&w);
    assert_eq!(a.drift.users, 1, "{a:#?}");
    assert_eq!(a.drift.by_attribute.get("title"), Some(&1));
    assert_eq!(a.drift.missing_users, 1);
    assert_eq!(
        a.drift.missing_memberships, 0,
        "a recreated user is added as new"
    );
    assert!(a.orphans.is_empty() && a.stale.is_empty());
    assert_eq!(a.findings(), 2);

    // A membership removed by hand.
    let mut w = synced();
    w.target.groups[0].members.retain(|m| m.value != "id-e2");
    let a = run(&w);
    assert_eq!(a.drift.missing_memberships, 1, "{a:#?}");
}

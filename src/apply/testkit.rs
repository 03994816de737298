//! An in-memory [`Target`] for tests: unique userNames and group names, 404
//! for unknown ids, and scripted faults — refusals, lost answers, and crashes
//! between a request and its commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{Target, TargetError};
use crate::model::{
    GroupName, MemberRef, RemoteGroup, RemoteMember, RemoteUser, ScimId, State, Status,
    TargetSnapshot, UserAttr, UserAttrs, UserName,
};

/// What the in-memory target does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refuses with a 500; nothing happens.
    Fail,
    /// Refuses with a 400 (the object, not the target, is at fault); nothing
    /// happens.
    Refuse,
    /// Does it, but the answer is lost (a timeout after the server acted).
    LoseAnswer,
    /// Does it, then the process dies before the answer is committed.
    Crash,
    /// Answers as if done, but reading back shows nothing happened (a
    /// membership PATCH answered 200 that changed nothing).
    NotApplied,
}

#[derive(Debug, Default)]
pub struct World {
    /// Like Atlassian when false: renaming a group is refused.
    pub renames_groups: bool,
    pub users: BTreeMap<ScimId, RemoteUser>,
    pub groups: BTreeMap<ScimId, RemoteGroup>,
    pub next_id: usize,
    /// Requests seen so far (the index faults are keyed by).
    pub calls: usize,
    pub faults: BTreeMap<usize, Fault>,
    /// Ids that existed before idsync ran and that it must never change.
    pub foreign: BTreeSet<ScimId>,
    pub touched_foreign: Vec<String>,
    /// Ids `read_all` leaves out (a listing that under-reports); lookups by id
    /// still find them.
    pub hidden: BTreeSet<ScimId>,
    /// What the target's schema would say (`Target::rules`).
    pub rules: crate::model::TargetRules,
    /// A slow request: request `.0` is answered only once `.1` requests have
    /// been made.
    pub hold: Option<(usize, usize)>,
    /// What the target does with one user's value of one attribute, by
    /// userName: drops it, or stores another value (every write, create or
    /// PATCH). Absent: kept as sent.
    pub keeps: BTreeMap<(UserName, UserAttr), Keep>,
}

/// How the in-memory target holds one user's value (see [`World::keeps`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    Drop,
    Store(String),
}

impl World {
    /// `user` as this target holds it after a write.
    fn hold(&self, user: &mut RemoteUser) {
        let Some(name) = user.user_name() else {
            return;
        };
        for ((who, attr), keep) in &self.keeps {
            if *who != name || user.attrs.get(*attr).is_none() {
                continue;
            }
            match keep {
                Keep::Drop => {
                    user.attrs.remove(attr);
                }
                Keep::Store(v) => {
                    user.attrs.insert(*attr, v.clone());
                }
            }
        }
    }
}

/// A SCIM-like target in memory: unique userNames and group names, 404 for
/// unknown ids, and scripted faults.
#[derive(Clone, Default)]
pub struct MemoryTarget {
    pub world: Arc<Mutex<World>>,
    pub crashed: Arc<Notify>,
}

enum Verdict {
    Answer,
    Lose,
    Crash,
}

impl MemoryTarget {
    /// Runs one request: `effect` changes the world unless the scripted fault
    /// refuses it.
    async fn call<R>(
        &self,
        touches: Option<&ScimId>,
        effect: impl FnOnce(&mut World) -> Result<R, TargetError>,
    ) -> Result<R, TargetError> {
        let (call, hold) = {
            let mut w = self.world.lock().unwrap();
            let call = w.calls;
            w.calls += 1;
            (call, w.hold.filter(|(held, _)| *held == call))
        };
        if let Some((_, until)) = hold {
            while self.world.lock().unwrap().calls < until {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let verdict = {
            let mut w = self.world.lock().unwrap();
            let fault = w.faults.get(&call).copied();
            if fault == Some(Fault::Fail) {
                return Err(TargetError::Failed {
                    status: Some(500),
                    message: "HTTP 500: injected".into(),
                });
            }
            if fault == Some(Fault::NotApplied) {
                return Err(TargetError::NotApplied {
                    message: "the group read back does not hold the change: injected".into(),
                });
            }
            if fault == Some(Fault::Refuse) {
                return Err(TargetError::Failed {
                    status: Some(400),
                    message: "HTTP 400 (invalidValue): injected".into(),
                });
            }
            if let Some(id) = touches
                && w.foreign.contains(id)
            {
                w.touched_foreign.push(id.to_string());
            }
            let result = effect(&mut w);
            match fault {
                Some(Fault::LoseAnswer) => (Verdict::Lose, result),
                Some(Fault::Crash) => (Verdict::Crash, result),
                _ => (Verdict::Answer, result),
            }
        };
        match verdict {
            (Verdict::Answer, result) => result,
            (Verdict::Lose, _) => Err(TargetError::Failed {
                status: None,
                message: "timed out".into(),
            }),
            (Verdict::Crash, _) => {
                self.crashed.notify_one();
                std::future::pending().await
            }
        }
    }

    fn fresh_id(w: &mut World, prefix: &str) -> ScimId {
        w.next_id += 1;
        ScimId::new(format!("{prefix}-{}", w.next_id))
    }
}

fn user_name_of(attrs: &UserAttrs) -> UserName {
    UserName::new(attrs.get(UserAttr::UserName).unwrap_or_default())
}

impl Target for MemoryTarget {
    async fn check(&self) -> Result<(), TargetError> {
        Ok(())
    }

    fn rules(&self) -> crate::model::TargetRules {
        self.world.lock().unwrap().rules.clone()
    }

    async fn holds_anything(&self) -> Result<bool, TargetError> {
        let w = self.world.lock().unwrap();
        Ok(!w.users.is_empty() || !w.groups.is_empty())
    }

    async fn read_all(&self) -> Result<TargetSnapshot, TargetError> {
        let w = self.world.lock().unwrap();
        let listed = |id: &ScimId| !w.hidden.contains(id);
        Ok(TargetSnapshot {
            users: w
                .users
                .values()
                .filter(|u| listed(&u.id))
                .cloned()
                .collect(),
            groups: w
                .groups
                .values()
                .filter(|g| listed(&g.id))
                .cloned()
                .collect(),
            ..TargetSnapshot::default()
        })
    }

    async fn get_user(&self, id: &ScimId) -> Result<Option<RemoteUser>, TargetError> {
        self.call(None, |w| Ok(w.users.get(id).cloned())).await
    }

    async fn get_group(&self, id: &ScimId) -> Result<Option<RemoteGroup>, TargetError> {
        self.call(None, |w| Ok(w.groups.get(id).cloned())).await
    }

    async fn create_user(&self, attrs: &UserAttrs) -> Result<RemoteUser, TargetError> {
        self.call(None, |w| {
            let name = user_name_of(attrs);
            if w.users
                .values()
                .any(|u| u.user_name().as_ref() == Some(&name))
            {
                return Err(TargetError::Conflict {
                    detail: "userName exists".into(),
                });
            }
            let id = Self::fresh_id(w, "u");
            let mut user = RemoteUser {
                id: id.clone(),
                attrs: attrs.clone(),
                active: true,
            };
            w.hold(&mut user);
            w.users.insert(id, user.clone());
            Ok(user)
        })
        .await
    }

    async fn find_user(&self, user_name: &UserName) -> Result<Option<RemoteUser>, TargetError> {
        self.call(None, |w| {
            Ok(w.users
                .values()
                .find(|u| u.user_name().as_ref() == Some(user_name))
                .cloned())
        })
        .await
    }

    async fn patch_user(
        &self,
        id: &ScimId,
        changes: &[(UserAttr, Option<String>)],
        active: Option<bool>,
    ) -> Result<Option<RemoteUser>, TargetError> {
        self.call(Some(id), |w| {
            // userNames stay unique, case-insensitively (as on Atlassian).
            if let Some((_, Some(name))) = changes.iter().find(|(a, _)| *a == UserAttr::UserName) {
                let name = UserName::new(name.as_str());
                if w.users
                    .values()
                    .any(|u| u.id != *id && u.user_name().as_ref() == Some(&name))
                {
                    return Err(TargetError::Conflict {
                        detail: "userName exists".into(),
                    });
                }
            }
            let mut u = w.users.get(id).cloned().ok_or(TargetError::NotFound)?;
            for (attr, value) in changes {
                match value {
                    Some(v) => u.attrs.insert(*attr, v.clone()),
                    None => u.attrs.remove(attr),
                };
            }
            if let Some(a) = active {
                u.active = a;
            }
            w.hold(&mut u);
            w.users.insert(id.clone(), u.clone());
            Ok(Some(u))
        })
        .await
    }

    async fn delete_user(&self, id: &ScimId) -> Result<(), TargetError> {
        self.call(Some(id), |w| {
            w.users.remove(id).ok_or(TargetError::NotFound)?;
            for g in w.groups.values_mut() {
                g.members.retain(|m| m.value != id.as_str());
            }
            Ok(())
        })
        .await
    }

    async fn create_group(
        &self,
        name: &GroupName,
        external_id: &str,
        _members: &[MemberRef],
    ) -> Result<ScimId, TargetError> {
        self.call(None, |w| {
            if w.groups.values().any(|g| g.display_name == *name) {
                return Err(TargetError::Conflict {
                    detail: "displayName exists".into(),
                });
            }
            let id = Self::fresh_id(w, "g");
            w.groups.insert(
                id.clone(),
                RemoteGroup {
                    id: id.clone(),
                    display_name: name.clone(),
                    external_id: Some(external_id.to_string()),
                    members: Vec::new(),
                },
            );
            Ok(id)
        })
        .await
    }

    async fn find_group(&self, name: &GroupName) -> Result<Option<RemoteGroup>, TargetError> {
        self.call(None, |w| {
            Ok(w.groups.values().find(|g| g.display_name == *name).cloned())
        })
        .await
    }

    async fn rename_group(&self, id: &ScimId, name: &GroupName) -> Result<(), TargetError> {
        self.call(Some(id), |w| {
            if !w.renames_groups {
                return Err(TargetError::Failed {
                    status: None,
                    message: "not supported by the target: renaming groups".into(),
                });
            }
            w.groups
                .get_mut(id)
                .ok_or(TargetError::NotFound)?
                .display_name = name.clone();
            Ok(())
        })
        .await
    }

    async fn add_members(&self, group: &ScimId, members: &[MemberRef]) -> Result<(), TargetError> {
        self.call(Some(group), |w| {
            let g = w.groups.get_mut(group).ok_or(TargetError::NotFound)?;
            for m in members {
                if !g.members.iter().any(|stored| stored.is(m)) {
                    g.members.push(RemoteMember::id(m.id.as_str()));
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> Result<(), TargetError> {
        self.call(Some(group), |w| {
            let g = w.groups.get_mut(group).ok_or(TargetError::NotFound)?;
            g.members
                .retain(|stored| !members.iter().any(|m| stored.is(m)));
            Ok(())
        })
        .await
    }

    async fn delete_group(&self, id: &ScimId) -> Result<(), TargetError> {
        self.call(Some(id), |w| {
            w.groups.remove(id).ok_or(TargetError::NotFound)?;
            Ok(())
        })
        .await
    }
}

/// A target holding what `state` says idsync pushed, plus accounts and a group
/// nobody told idsync about.
pub fn target_for(state: &State) -> MemoryTarget {
    let target = MemoryTarget::default();
    {
        let mut w = target.world.lock().unwrap();
        for u in state.users.values().filter(|u| u.status != Status::Removed) {
            w.users.insert(
                u.scim_id.to_scim_id(),
                RemoteUser {
                    id: u.scim_id.to_scim_id(),
                    attrs: u.attrs.as_deref().cloned().unwrap_or_default(),
                    active: u.status == Status::Active,
                },
            );
        }
        for (key, g) in &state.groups {
            if g.status == Status::Removed {
                continue;
            }
            let members = state
                .memberships
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|k| {
                    state
                        .live_user(k)
                        .map(|u| RemoteMember::id(&*u.scim_id.text()))
                })
                .collect();
            w.groups.insert(
                g.scim_id.clone(),
                RemoteGroup {
                    id: g.scim_id.clone(),
                    display_name: g.display_name.clone(),
                    external_id: Some(key.to_string()),
                    members,
                },
            );
        }
        let stranger = ScimId::new("stranger");
        let mut attrs = UserAttrs::new();
        attrs.insert(UserAttr::UserName, "stranger@elsewhere.org");
        w.users.insert(
            stranger.clone(),
            RemoteUser {
                id: stranger.clone(),
                attrs,
                active: true,
            },
        );
        let admins = ScimId::new("admins");
        w.groups.insert(
            admins.clone(),
            RemoteGroup {
                id: admins.clone(),
                display_name: GroupName::new("Site admins"),
                external_id: None,
                members: vec![RemoteMember::id(stranger.as_str())],
            },
        );
        w.foreign = BTreeSet::from([stranger, admins]);
    }
    target
}

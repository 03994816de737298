//! Group membership changes: PATCHes in chunks, checked against what the group
//! holds afterwards, with the member form the target accepts (by id or by
//! userName) learned and kept for the cycle.

use super::*;

impl ScimClient {
    /// Adds members, `member_chunk` per request, and checks the group holds
    /// them afterwards (see [`Self::change_members`]). Callers should only add
    /// members not already there: some servers duplicate them.
    pub async fn add_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> Result<(), ScimError> {
        // scim2-server stores an id twice when one request names it twice.
        let mut members = distinct(members);
        let sent = self
            .inner
            .sent_at_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group.as_str());
        if let Some(sent) = sent {
            members.retain(|m| !sent.contains(&m.id));
        }
        for chunk in members.chunks(self.inner.member_chunk) {
            self.change_members(group, chunk, true).await?;
        }
        Ok(())
    }

    /// Removes members, one `members[value eq "…"]` operation each,
    /// `member_chunk` operations per request, and checks the group no longer
    /// holds them.
    pub async fn remove_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> Result<(), ScimError> {
        let members = distinct(members);
        for chunk in members.chunks(self.inner.member_chunk) {
            self.change_members(group, chunk, false).await?;
        }
        Ok(())
    }

    /// Whether membership changes go out by `userName` (learned: the target
    /// stores members by userName and ignores ids).
    pub fn members_by_user_name(&self) -> bool {
        self.inner.members_by_user_name.load(Ordering::Relaxed)
    }

    /// One membership PATCH, then what the group holds afterwards (the PATCH
    /// answer when it carries the members, else the group read back): a
    /// server may answer 200 and change nothing. A change that did not take is
    /// sent once more in the other form — adds by `userName` instead of id (or
    /// back), removals by the value the server shows it stores — and if the
    /// group still does not hold what was asked, the change fails with
    /// [`ScimError::NotApplied`]. The form that worked is remembered for the
    /// next changes.
    pub(super) async fn change_members(
        &self,
        group: &ScimId,
        chunk: &[MemberRef],
        add: bool,
    ) -> Result<(), ScimError> {
        let by_name = self.members_by_user_name();
        let values: Vec<String> = chunk
            .iter()
            .map(|m| member_send_value(m, by_name))
            .collect();
        let held = self
            .send_members(group, &values, chunk, add, |g| {
                unsettled_members(g, chunk, add).is_empty()
            })
            .await?;
        let unsettled = unsettled_members(&held, chunk, add);
        if unsettled.is_empty() {
            return Ok(());
        }
        let retry: Vec<String> = if add {
            unsettled
                .iter()
                .map(|m| member_send_value(m, !by_name))
                .filter(|v| !values.contains(v))
                .collect()
        } else {
            // What the server shows it stores for them.
            held.members
                .iter()
                .filter(|stored| unsettled.iter().any(|m| stored.is(m)))
                .map(|stored| stored.value.clone())
                .filter(|v| !values.contains(v))
                .collect()
        };
        let held = if retry.is_empty() {
            held
        } else {
            self.send_members(group, &retry, &unsettled, add, |g| {
                unsettled_members(g, &unsettled, add).is_empty()
            })
            .await?
        };
        let still = unsettled_members(&held, &unsettled, add);
        if still.is_empty() {
            let stored_by_name = if add {
                !by_name
            } else {
                retry
                    .iter()
                    .any(|v| !unsettled.iter().any(|m| m.id.as_str() == v))
            };
            if stored_by_name != by_name
                && self
                    .inner
                    .members_by_user_name
                    .compare_exchange(
                        by_name,
                        stored_by_name,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    group = %group,
                    by_user_name = stored_by_name,
                    "the SCIM target ignored a membership change by {}; it worked by {}, so member changes now go out that way",
                    if by_name { "userName" } else { "id" },
                    if stored_by_name { "userName" } else { "id" },
                );
            }
            return Ok(());
        }
        let names: Vec<String> = still
            .iter()
            .map(|m| {
                m.user_name
                    .as_ref()
                    .map_or_else(|| m.id.to_string(), |n| n.as_str().to_owned())
            })
            .collect();
        Err(ScimError::NotApplied(format!(
            "the target accepted {} {} member(s) {} group {group}, but the group read back {} them (by id, $ref and userName): {}",
            if add { "adding" } else { "removing" },
            still.len(),
            if add { "to" } else { "from" },
            if add { "does not hold" } else { "still holds" },
            names.join(", ")
        )))
    }

    /// Sends one membership PATCH (or, without PATCH, GET + PUT) with these
    /// member values (of `members`), and returns the group as it is
    /// afterwards: the answer when it shows the change `settled`, else the
    /// group read back.
    pub(super) async fn send_members(
        &self,
        group: &ScimId,
        values: &[String],
        members: &[MemberRef],
        add: bool,
        settled: impl Fn(&RemoteGroup) -> bool,
    ) -> Result<RemoteGroup, ScimError> {
        let objects: Vec<Value> = values
            .iter()
            .map(|v| {
                match members
                    .iter()
                    .find(|m| member_send_value(m, true) == *v || member_send_value(m, false) == *v)
                {
                    Some(m) => self.member_object(v, m),
                    None => serde_json::json!({ "value": v }),
                }
            })
            .collect();
        let ops = if add {
            vec![resource::members_add_operation(objects.clone())]
        } else {
            values
                .iter()
                .map(|v| resource::member_remove_operation(v))
                .collect()
        };
        let reply = self
            .patch_group(group, ops, |g| {
                edit_members(g, |list| {
                    if add {
                        for (v, object) in values.iter().zip(&objects) {
                            if !list.iter().any(|m| member_value(m) == Some(v.as_str())) {
                                list.push(object.clone());
                            }
                        }
                    } else {
                        list.retain(|m| {
                            !values.iter().any(|v| member_value(m) == Some(v.as_str()))
                        });
                    }
                })
            })
            .await?;
        // The answer, when it is the group with its members and shows the
        // change; else (no body, no members, or a body that may list only
        // some members) the group read back.
        if let Some(body) = reply
            && body.get("members").is_some_and(Value::is_array)
            && let Ok(held) = resource::group_from_json(&body)
            && held.id == *group
            && settled(&held)
        {
            return Ok(held);
        }
        self.get_group(group).await?.ok_or(ScimError::NotFound)
    }

    /// A group member as this target wants it sent (see
    /// [`resource::member_object`]).
    pub(super) fn member_object(&self, value: &str, member: &MemberRef) -> Value {
        resource::member_object(
            value,
            member,
            |id| self.url(&["Users", id.as_str()]).to_string(),
            &self.payload_shape(),
        )
    }
}

/// The members in their first-seen order, each id once.
pub(super) fn distinct(members: &[MemberRef]) -> Vec<MemberRef> {
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .filter(|m| seen.insert(m.id.as_str()))
        .cloned()
        .collect()
}

/// The `value` a membership change names a member by: its id, or its
/// userName on a target that stores those (a member without one goes by id).
pub(super) fn member_send_value(member: &MemberRef, by_name: bool) -> String {
    match (&member.user_name, by_name) {
        (Some(name), true) => name.as_str().to_owned(),
        _ => member.id.to_string(),
    }
}

/// The members a change did not settle: for an add, those the group does not
/// hold; for a removal, those it still holds.
pub(super) fn unsettled_members(
    held: &RemoteGroup,
    members: &[MemberRef],
    add: bool,
) -> Vec<MemberRef> {
    members
        .iter()
        .filter(|m| held.members.iter().any(|stored| stored.is(m)) != add)
        .cloned()
        .collect()
}

/// Runs `edit` on a group resource's `members` list (made empty if absent).
pub(super) fn edit_members(group: &mut Value, edit: impl FnOnce(&mut Vec<Value>)) {
    let Some(obj) = group.as_object_mut() else {
        return;
    };
    let mut list = match obj.remove("members") {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    edit(&mut list);
    obj.insert("members".into(), Value::Array(list));
}

pub(super) fn member_value(member: &Value) -> Option<&str> {
    member.get("value").and_then(Value::as_str)
}

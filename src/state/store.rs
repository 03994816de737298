//! The store: loading the last pushed snapshot and persisting [`StateChange`]s —
//! the same values the executor applies in memory with [`State::apply`].

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension, params};

use super::{StateDb, StateError, now, sqlite};
use crate::model::{
    AttrHash, GroupKey, GroupName, Ownership, ScimId, SourceKey, State, StateChange, StateGroup,
    StateUser, StateUsers, Status, StoredId, UserAttrs, UserName,
};

impl StateDb {
    /// Loads the whole snapshot (without per-user attributes) in one read
    /// transaction, so a concurrent writer cannot tear it.
    pub fn load(&mut self) -> Result<State, StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let generation: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE name = 'generation'",
                [],
                |r| r.get::<_, String>(0),
            )
            .map_err(|e| sqlite(&path, e))?
            .parse()
            .unwrap_or(0);
        let mut state = State {
            generation,
            ..State::default()
        };
        {
            // Sized once: growing a million entries by doubling would hold the
            // old and the new vector at once.
            let count: i64 = tx
                .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
                .map_err(|e| sqlite(&path, e))?;
            let mut users = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let mut stmt = tx
                .prepare("SELECT key, scim_id, user_name, hash, status, ownership FROM users")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                // Read in place: a million users are five million strings
                // otherwise, each copied once more into its field.
                let text = |i: usize| {
                    row.get_ref(i)
                        .and_then(|v| v.as_str().map_err(Into::into))
                        .map_err(|e| sqlite(&path, e))
                };
                let key = text(0)?;
                let corrupt = |what: &str| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("user {key:?}: {what}"),
                };
                let hash = row
                    .get_ref(3)
                    .and_then(|v| v.as_blob().map_err(Into::into))
                    .map_err(|e| sqlite(&path, e))?;
                let hash: [u8; 16] = hash.try_into().map_err(|_| corrupt("bad hash"))?;
                let user = StateUser {
                    scim_id: StoredId::new(text(1)?),
                    user_name: UserName::new(text(2)?),
                    hash: AttrHash(hash),
                    status: Status::parse(text(4)?).ok_or_else(|| corrupt("bad status"))?,
                    ownership: Ownership::parse(text(5)?)
                        .ok_or_else(|| corrupt("bad ownership"))?,
                    attrs: None,
                };
                users.push((SourceKey::new(key), user));
            }
            state.users = StateUsers::from_unique(users).map_err(|key| StateError::Corrupt {
                path: path.clone(),
                message: format!("user {key:?} is recorded twice"),
            })?;
        }
        {
            let mut stmt = tx
                .prepare("SELECT key, scim_id, display_name, status, ownership FROM groups")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                let key: String = row.get(0).map_err(|e| sqlite(&path, e))?;
                let status: String = row.get(3).map_err(|e| sqlite(&path, e))?;
                let ownership: String = row.get(4).map_err(|e| sqlite(&path, e))?;
                let corrupt = |what: &str| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("group {key:?}: {what}"),
                };
                let group = StateGroup {
                    scim_id: ScimId::new(row.get::<_, String>(1).map_err(|e| sqlite(&path, e))?),
                    display_name: GroupName::new(
                        row.get::<_, String>(2).map_err(|e| sqlite(&path, e))?,
                    ),
                    status: Status::parse(&status).ok_or_else(|| corrupt("bad status"))?,
                    ownership: Ownership::parse(&ownership)
                        .ok_or_else(|| corrupt("bad ownership"))?,
                };
                state.groups.insert(GroupKey::new(key), group);
            }
        }
        {
            // Rows arrive in key order (the primary key), so each group's set is
            // built in bulk from a sorted run. A group's member keys are
            // gathered first and shared with the users' records in one pass
            // (see `shared_keys`).
            let mut stmt = tx
                .prepare("SELECT group_key, user_key FROM memberships ORDER BY group_key, user_key")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            let mut current: Option<String> = None;
            let mut members = MemberRun::default();
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                let group = row
                    .get_ref(0)
                    .map_err(|e| sqlite(&path, e))?
                    .as_str()
                    .map_err(|e| sqlite(&path, e.into()))?;
                let user = row
                    .get_ref(1)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(|e| sqlite(&path, e))?;
                if current.as_deref() != Some(group) {
                    if let Some(g) = current.take() {
                        let keys = members.shared_keys(&state);
                        state.memberships.insert(GroupKey::new(g), keys);
                    }
                    current = Some(group.to_string());
                }
                members.push(user);
            }
            if let Some(g) = current {
                let keys = members.shared_keys(&state);
                state.memberships.insert(GroupKey::new(g), keys);
            }
        }
        if let Some((a, b, scim_id)) = shared_account(&state) {
            return Err(StateError::Corrupt {
                path: path.clone(),
                message: format!(
                    "users {a:?} and {b:?} both hold SCIM id {scim_id:?} (left by an earlier version that adopted a leaver's account for a new user); \
                     mark the one that no longer owns the account as removed (UPDATE users SET status = 'removed' WHERE key = '…') and run `idsync sync --full`"
                ),
            });
        }
        tx.finish().map_err(|e| sqlite(&path, e))?;
        Ok(state)
    }

    /// Loads the last pushed attributes of `keys` into `state`.
    pub fn load_attrs<'a>(
        &self,
        state: &mut State,
        keys: impl IntoIterator<Item = &'a SourceKey>,
    ) -> Result<(), StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT attrs FROM users WHERE key = ?1")
            .map_err(|e| self.err(e))?;
        for key in keys {
            let json: Option<String> = stmt
                .query_row([key.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let (Some(json), Some(user)) = (json, state.users.get_mut(key)) {
                let attrs: UserAttrs = serde_json::from_str(&json)
                    .map_err(|e| self.corrupt(&format!("user {key}: attrs: {e}")))?;
                user.attrs = Some(Box::new(attrs));
            }
        }
        Ok(())
    }

    /// The last pushed attributes of one user, for `explain`.
    pub fn user_attrs(&self, key: &SourceKey) -> Result<Option<UserAttrs>, StateError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT attrs FROM users WHERE key = ?1",
                [key.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| self.corrupt(&format!("user {key}: {e}")))
        })
        .transpose()
    }

    /// Persists `changes` in one transaction, as one generation: a `--full`
    /// resync's observations of the target, or a benchmark's seed. Each change
    /// means what [`State::apply`] makes of it.
    pub fn commit_changes(&mut self, changes: &[StateChange]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let at = now();
        for change in changes {
            apply_change(&tx, change, &at).map_err(|e| sqlite(&path, e))?;
        }
        bump_generation(&tx).map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }
}

/// One group's member keys as its rows give them, in one buffer.
#[derive(Default)]
struct MemberRun {
    text: String,
    ends: Vec<usize>,
}

impl MemberRun {
    fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    /// The keys gathered (then forgotten), each as the state's user record
    /// holds it, so the membership shares that copy; a key short enough to
    /// sit inline (or of no recorded user) is made anew, which costs no
    /// allocation or no more than before. The look-ups run one after another
    /// with nothing in between: each waits on memory (the table, the record,
    /// the key's text), and run together the waits overlap (with a database
    /// row read between each, they did not).
    fn shared_keys(&mut self, state: &State) -> BTreeSet<SourceKey> {
        let mut start = 0;
        let keys: Vec<SourceKey> = self
            .ends
            .iter()
            .map(|&end| {
                let key = &self.text[start..end];
                start = end;
                if key.len() <= SourceKey::INLINE {
                    return SourceKey::new(key);
                }
                state
                    .users
                    .get_key_value(key)
                    .map_or_else(|| SourceKey::new(key), |(k, _)| k.clone())
            })
            .collect();
        self.text.clear();
        self.ends.clear();
        // In order: the set is built without a search per member.
        keys.into_iter().collect()
    }
}

/// Two live users recorded with one SCIM id, if any: `(key, key, id)`. A sort
/// of 32-bit digests (tens of milliseconds at a million users, against a second
/// for the same check in SQL); a digest collision is confirmed on the ids, so
/// the digests need not resist crafted ids, and a fast hash and four bytes
/// do (the few ids that share a digest by chance are compared). This runs
/// as the load ends, often while the source read's last stage holds its own
/// index: four bytes a user there are part of the cycle's peak.
fn shared_account(state: &State) -> Option<(String, String, String)> {
    use std::hash::BuildHasher;
    let hasher = crate::model::FastHash::default();
    let digest = |id: &StoredId| (hasher.hash_one(id) >> 32) as u32;
    let mut digests: Vec<u32> = state
        .users
        .values()
        .filter(|u| u.status != Status::Removed)
        .map(|u| digest(&u.scim_id))
        .collect();
    digests.sort_unstable();
    let suspects: std::collections::HashSet<u32> = digests
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    if suspects.is_empty() {
        return None;
    }
    let mut seen: std::collections::HashMap<&StoredId, &SourceKey> =
        std::collections::HashMap::new();
    let mut live: Vec<(&SourceKey, &StateUser)> = state
        .users
        .iter()
        .filter(|(_, u)| u.status != Status::Removed && suspects.contains(&digest(&u.scim_id)))
        .collect();
    live.sort_by(|a, b| a.0.cmp(b.0));
    for (key, u) in live {
        if let Some(first) = seen.insert(&u.scim_id, key) {
            return Some((first.to_string(), key.to_string(), u.scim_id.to_string()));
        }
    }
    None
}

pub(super) fn bump_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE name = 'generation'",
    )?
    .execute([])?;
    Ok(())
}

fn put_user(
    tx: &rusqlite::Transaction<'_>,
    key: &SourceKey,
    user: &StateUser,
    at: &str,
) -> rusqlite::Result<()> {
    // A pushed user is always written whole: a change without attributes would
    // erase what was pushed, so it is refused rather than stored as empty.
    let attrs = user.attrs.as_ref().ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("user {key}: a state change must carry the pushed attributes").into(),
        )
    })?;
    let attrs = serde_json::to_string(attrs)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    // One SCIM id belongs to one source key: a second live row for it would let
    // a later removal of one key act on the other's account.
    if user.status != Status::Removed {
        let holder: Option<String> = tx
            .prepare_cached(
                "SELECT key FROM users WHERE scim_id = ?1 AND key != ?2 AND status != 'removed' LIMIT 1",
            )?
            .query_row(params![&*user.scim_id.text(), key.as_str()], |r| r.get(0))
            .optional()?;
        if let Some(holder) = holder {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!(
                    "user {key}: SCIM id {} already belongs to user {holder}; one account cannot be recorded for two keys",
                    user.scim_id
                )
                .into(),
            ));
        }
    }
    tx.prepare_cached(
        "INSERT INTO users (key, scim_id, user_name, attrs, hash, status, ownership, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (key) DO UPDATE SET scim_id = excluded.scim_id, user_name = excluded.user_name,
            attrs = excluded.attrs, hash = excluded.hash, status = excluded.status,
            ownership = excluded.ownership, updated_at = excluded.updated_at",
    )?
    .execute(params![
        key.as_str(),
        &*user.scim_id.text(),
        user.user_name.as_str(),
        attrs,
        &user.hash.0[..],
        user.status.as_str(),
        user.ownership.as_str(),
        at
    ])?;
    Ok(())
}

fn put_group(
    tx: &rusqlite::Transaction<'_>,
    key: &GroupKey,
    group: &StateGroup,
    at: &str,
) -> rusqlite::Result<()> {
    // A group recreated under a new id starts with no members pushed.
    tx.prepare_cached(
        "DELETE FROM memberships WHERE group_key = ?1
         AND EXISTS (SELECT 1 FROM groups WHERE key = ?1 AND scim_id != ?2)",
    )?
    .execute(params![key.as_str(), group.scim_id.as_str()])?;
    tx.prepare_cached(
        "INSERT INTO groups (key, scim_id, display_name, status, ownership, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (key) DO UPDATE SET scim_id = excluded.scim_id, display_name = excluded.display_name,
            status = excluded.status, ownership = excluded.ownership, updated_at = excluded.updated_at",
    )?
    .execute(params![
        key.as_str(),
        group.scim_id.as_str(),
        group.display_name.as_str(),
        group.status.as_str(),
        group.ownership.as_str(),
        at
    ])?;
    Ok(())
}

pub(super) fn apply_change(
    tx: &rusqlite::Transaction<'_>,
    change: &StateChange,
    at: &str,
) -> rusqlite::Result<()> {
    match change {
        StateChange::PutUser { key, user } => put_user(tx, key, user, at),
        StateChange::UserStatus { key, status } => {
            tx.prepare_cached("UPDATE users SET status = ?2, updated_at = ?3 WHERE key = ?1")?
                .execute(params![key.as_str(), status.as_str(), at])?;
            if *status == Status::Removed {
                tx.prepare_cached("DELETE FROM memberships WHERE user_key = ?1")?
                    .execute([key.as_str()])?;
            }
            Ok(())
        }
        StateChange::HandOver { from, key, user } => {
            tx.prepare_cached(
                "UPDATE users SET status = 'removed', updated_at = ?2 WHERE key = ?1",
            )?
            .execute(params![from.as_str(), at])?;
            tx.prepare_cached("DELETE FROM memberships WHERE user_key = ?1")?
                .execute([from.as_str()])?;
            put_user(tx, key, user, at)
        }
        StateChange::PutGroup { key, group } => put_group(tx, key, group, at),
        StateChange::GroupStatus { key, status } => {
            tx.prepare_cached("UPDATE groups SET status = ?2, updated_at = ?3 WHERE key = ?1")?
                .execute(params![key.as_str(), status.as_str(), at])?;
            if *status == Status::Removed {
                tx.prepare_cached("DELETE FROM memberships WHERE group_key = ?1")?
                    .execute([key.as_str()])?;
            }
            Ok(())
        }
        StateChange::MembersAdded { group, users } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO memberships (group_key, user_key) VALUES (?1, ?2)",
            )?;
            for user in users {
                stmt.execute(params![group.as_str(), user.as_str()])?;
            }
            Ok(())
        }
        StateChange::SetMembers { group, users } => {
            tx.prepare_cached("DELETE FROM memberships WHERE group_key = ?1")?
                .execute([group.as_str()])?;
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO memberships (group_key, user_key) VALUES (?1, ?2)",
            )?;
            for user in users {
                stmt.execute(params![group.as_str(), user.as_str()])?;
            }
            Ok(())
        }
        StateChange::MembersRemoved { group, users } => {
            let mut stmt = tx
                .prepare_cached("DELETE FROM memberships WHERE group_key = ?1 AND user_key = ?2")?;
            for user in users {
                stmt.execute(params![group.as_str(), user.as_str()])?;
            }
            Ok(())
        }
    }
}

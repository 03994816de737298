//! The target as the executor sees it: the requests one plan needs, and how they
//! fail. The SCIM client implements it for real servers; tests implement it in
//! memory to drive the real executor through failures, lost answers and stops.

use std::future::Future;

use crate::model::TargetRules;
use crate::model::{
    GroupName, MemberRef, RemoteGroup, RemoteUser, ScimId, TargetSnapshot, UserAttr, UserAttrs,
    UserName,
};

/// How a request to the target failed, after the target's own retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// 404: the object does not exist (any more).
    #[error("not found (HTTP 404)")]
    NotFound,
    /// 409: the object exists already (perhaps from an earlier attempt).
    #[error("conflict (HTTP 409): {detail}")]
    Conflict { detail: String },
    /// 401/403: the credentials were refused. No other operation can succeed.
    #[error("authentication refused (HTTP {status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    /// The target accepted the change, but reading it back shows it did not
    /// take (a membership PATCH answered 200 that changed nothing). The same
    /// request would do the same again: this object's failure, not the target's.
    #[error("{message}")]
    NotApplied { message: String },
    /// The target's published schema does not allow this change of this object
    /// (an immutable `userName`, say): nothing was sent, and the same request
    /// would be refused again. That object's failure, not the target's.
    #[error("{detail}")]
    Refused { detail: String },
    /// Anything else: an HTTP error, an unreachable target, a bad answer.
    #[error("{message}")]
    Failed {
        status: Option<u16>,
        message: String,
    },
}

impl TargetError {
    /// The HTTP status behind this error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            TargetError::NotFound => Some(404),
            TargetError::Conflict { .. } => Some(409),
            TargetError::Unauthorized { status, .. } => Some(*status),
            TargetError::Failed { status, .. } => *status,
            TargetError::NotApplied { .. } => None,
            TargetError::Refused { .. } => None,
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, TargetError::Unauthorized { .. })
    }

    /// The target itself failed (5xx, a timeout, a dropped connection, retries
    /// exhausted, 429 that outlasted them): what the failure budget counts. A
    /// deterministic refusal of one object (400, 409, 422 …) is that object's
    /// failure and says nothing about the target's health; 401/403 stop the
    /// run on their own.
    pub fn is_transient(&self) -> bool {
        match self {
            TargetError::NotFound | TargetError::Conflict { .. } => false,
            TargetError::Unauthorized { .. }
            | TargetError::NotApplied { .. }
            | TargetError::Refused { .. } => false,
            TargetError::Failed { status, .. } => !status.is_some_and(is_deterministic_refusal),
        }
    }
}

/// A 4xx answer the same request would get again: the object is refused, the
/// target is fine. Not 401/403 (credentials) nor 408/429 (the target is busy).
fn is_deterministic_refusal(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 429)
}

/// What a target's schema requires on a create (lower-case paths), as
/// `/Schemas` said it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequiredPaths {
    pub user: Vec<String>,
    pub group: Vec<String>,
}

/// A target directory idsync provisions into.
pub trait Target: Clone + Send + Sync + 'static {
    /// One cheap authenticated request: a wrong token or URL fails here, before
    /// anything changes.
    fn check(&self) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// How the target holds values, as far as [`Self::check`] learned it (its
    /// schema): what the planner compares ignoring case, and what it does not
    /// compare at all. Nothing learned: everything compared exactly.
    fn rules(&self) -> TargetRules {
        TargetRules::default()
    }

    /// The attribute paths the target's schema requires on a create, as far
    /// as [`Self::check`] learned them; `None` when it learned nothing.
    /// Recorded in the state DB, so `validate` can hold a mapping against
    /// them without reaching the target.
    fn required_paths(&self) -> Option<RequiredPaths> {
        None
    }

    /// The requests the target's client lets in flight now, when it finds
    /// that itself (`concurrency: auto`); `None`: the executor's slots bound
    /// them.
    fn in_flight_limit(&self) -> Option<usize> {
        None
    }

    /// Whether the target holds any user or group at all: a cheap look (one
    /// resource asked for per collection), made when the state DB records
    /// nothing, to tell a first run from a lost state DB.
    fn holds_anything(&self) -> impl Future<Output = Result<bool, TargetError>> + Send;

    /// Everything the target holds, for `--full`.
    fn read_all(&self) -> impl Future<Output = Result<TargetSnapshot, TargetError>> + Send;

    /// The user with this SCIM id; `None` only when the target answers 404.
    fn get_user(
        &self,
        id: &ScimId,
    ) -> impl Future<Output = Result<Option<RemoteUser>, TargetError>> + Send;

    /// The group with this SCIM id, with its members; `None` only on a 404.
    fn get_group(
        &self,
        id: &ScimId,
    ) -> impl Future<Output = Result<Option<RemoteGroup>, TargetError>> + Send;

    /// Creates an active user; a `userName` that exists gives
    /// [`TargetError::Conflict`]. Returns the user as the target stored it.
    fn create_user(
        &self,
        attrs: &UserAttrs,
    ) -> impl Future<Output = Result<RemoteUser, TargetError>> + Send;

    /// The user with this `userName` (compared case-insensitively), if any.
    /// Asked only where the user should exist (after a 409, or to resume an
    /// interrupted create), so an implementation may look harder than one
    /// filter (a target whose `eq` compares case-sensitively).
    fn find_user(
        &self,
        user_name: &UserName,
    ) -> impl Future<Output = Result<Option<RemoteUser>, TargetError>> + Send;

    /// Changes the given attributes (`None` removes one) and, if given,
    /// `active`. Returns the user as the target stored it, when its answer
    /// said (`None`: an answer without the resource).
    fn patch_user(
        &self,
        id: &ScimId,
        changes: &[(UserAttr, Option<String>)],
        active: Option<bool>,
    ) -> impl Future<Output = Result<Option<RemoteUser>, TargetError>> + Send;

    fn delete_user(&self, id: &ScimId) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Creates a group; an existing name may give [`TargetError::Conflict`].
    /// `members` are the users the plan adds to it next: a target that
    /// requires members gets them in the create (the later add then sends
    /// only the others); others may ignore them.
    fn create_group(
        &self,
        name: &GroupName,
        external_id: &str,
        members: &[MemberRef],
    ) -> impl Future<Output = Result<ScimId, TargetError>> + Send;

    /// The group with this `displayName`, if any.
    fn find_group(
        &self,
        name: &GroupName,
    ) -> impl Future<Output = Result<Option<RemoteGroup>, TargetError>> + Send;

    fn rename_group(
        &self,
        id: &ScimId,
        name: &GroupName,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Adds members; succeeds only when the group holds them afterwards
    /// (matched by id, `$ref` or userName), else [`TargetError::NotApplied`].
    fn add_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Removes members; succeeds only when the group no longer holds them.
    fn remove_members(
        &self,
        group: &ScimId,
        members: &[MemberRef],
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    fn delete_group(&self, id: &ScimId) -> impl Future<Output = Result<(), TargetError>> + Send;
}

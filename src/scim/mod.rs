//! The SCIM 2.0 client: sends idsync's user and group operations to one target
//! (Atlassian Cloud or a generic SCIM server), paced by a token bucket and retried
//! per [`retry`]. It speaks HTTP and SCIM; it knows nothing of plans, state, or why
//! an operation is made (adopting a user after a 409 is the caller's decision).
//! Its `config` part reads the `target:` section of the configuration.

pub(crate) mod config;
mod connect;
mod learned;
mod listing;
mod lookup;
mod members;
mod paging;
pub(crate) mod redact;
pub(crate) mod resource;
pub(crate) mod retry;
pub(crate) mod schema;
mod target;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::apply::RequiredPaths;
use crate::model::TargetRules;
use crate::model::{
    CreatedAt, GroupName, MemberRef, RemoteGroup, RemoteUser, ScimId, UserAttr, UserAttrs, UserName,
};
use crate::pace::Pace;
pub use crate::pace::Record as PaceRecord;
pub use crate::retry::RetryPolicy;
use crate::retry::{Attempt, Outcome, PacedTooLong, TransportKind, Verdict};
use connect::ConnectDeadline;
use learned::{Learned, flavour_shape};
use listing::Listing;
use lookup::CreateLookup;
use members::{distinct, member_send_value};
use paging::Pager;
use redact::Redactor;
pub use resource::ServiceProviderConfig;
use schema::PayloadShape;
pub use schema::{Meet, TargetSchema};
use transport::{Reply, error_chain, paced_too_long, rate_limiter};

const SCIM_JSON: &str = "application/scim+json";
const ACCEPT_JSON: &str = "application/scim+json, application/json;q=0.9";

/// Atlassian documents no larger page size; 100 is known to work.
const ATLASSIAN_MAX_PAGE: u32 = 100;

/// The largest page a generic target is asked for, whatever it advertises: a
/// page is one response body held in memory.
const GENERIC_MAX_PAGE: u32 = 1000;

/// The page size when neither the configuration nor the target says one.
const DEFAULT_PAGE: u32 = 100;

/// The connect timeout never exceeds this, whatever the total timeout: a target
/// that does not accept a connection in 10 s is down, not slow.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which target dialect to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Atlassian Cloud user provisioning: page size ≤ 100, no group rename.
    Atlassian,
    /// Any SCIM 2.0 server, per RFC 7643/7644.
    Generic,
}

/// A token bucket: `per_second` sustained, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Everything needed to build a [`ScimClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The SCIM base URL, e.g. `https://api.atlassian.com/scim/directory/{id}`.
    pub base_url: String,
    pub token: SecretString,
    pub flavour: Flavour,
    pub rate_limit: Option<RateLimit>,
    /// The whole request, connect included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Resources per list request (further capped by the target's
    /// `maxResults` and the flavour's limit); `None`: the target's `maxResults`
    /// within the flavour's limit, else 100.
    pub page_size: Option<u32>,
    /// Members per group PATCH request.
    pub member_chunk: usize,
    /// `concurrency: auto`: the requests in flight are found from the
    /// target's answers, never more than this (see [`crate::pace`]); `None`:
    /// the caller bounds them.
    pub adaptive_ceiling: Option<usize>,
}

impl ClientOptions {
    /// Options with the defaults: no rate limit, 30 s timeout, default retries,
    /// pages at the target's `maxResults`, member chunks of 100.
    pub fn new(base_url: impl Into<String>, token: SecretString, flavour: Flavour) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            flavour,
            rate_limit: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            page_size: None,
            member_chunk: 100,
            adaptive_ceiling: None,
        }
    }
}

/// Errors of the SCIM layer. Statuses are final: retryable failures only show up
/// here once the retry budget is spent.
#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    #[error("conflict (HTTP 409): {detail}")]
    Conflict { detail: String },
    #[error("not found (HTTP 404)")]
    NotFound,
    #[error("authentication refused (HTTP {status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    #[error("HTTP {status}{}: {detail}", scim_type_suffix(.scim_type))]
    Http {
        status: u16,
        scim_type: Option<String>,
        detail: String,
    },
    /// The target rate-limits us (429) until later than `retry.max_elapsed` allows.
    #[error(
        "rate limited (HTTP 429): the target asks to wait {}s, more than the {:.1}s left of retry.max_elapsed",
        .wait.as_secs_f64().ceil(),
        .left.as_secs_f64()
    )]
    RateLimited { wait: Duration, left: Duration },
    #[error("cannot reach the target: {0}")]
    Transport(String),
    #[error("unexpected response from the target: {0}")]
    InvalidResponse(String),
    #[error("invalid SCIM client configuration: {0}")]
    Config(String),
    /// The target accepted a change but does not hold it when read back (a
    /// membership PATCH answered 200 that changed nothing).
    #[error("the change did not take: {0}")]
    NotApplied(String),
    /// The caller asked for something that cannot be sent (no `userName`, say).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The target cannot do this (a group rename on Atlassian).
    #[error("not supported by the target: {0}")]
    Unsupported(String),
    /// The target's schema does not allow this change of this object; nothing
    /// was sent (`userName` immutable, say). The same request would fail again.
    #[error("{0}")]
    Refused(String),
}

fn scim_type_suffix(scim_type: &Option<String>) -> String {
    scim_type
        .as_deref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default()
}

impl ScimError {
    /// The HTTP status behind this error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ScimError::Conflict { .. } => Some(409),
            ScimError::NotFound => Some(404),
            ScimError::RateLimited { .. } => Some(429),
            ScimError::Unauthorized { status, .. } | ScimError::Http { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The target refused our credentials: no point in trying other operations.
    pub fn is_auth(&self) -> bool {
        matches!(self, ScimError::Unauthorized { .. })
    }

    /// Maps a final non-success response to an error. What the target wrote
    /// (detail, scimType) is cleaned by `redactor`: no credential, bounded size.
    fn from_response(status: StatusCode, body: &[u8], redactor: &Redactor) -> Self {
        let parsed = resource::parse_error_body(body);
        let detail = parsed.detail.map_or_else(
            || {
                status
                    .canonical_reason()
                    .unwrap_or("no detail given")
                    .to_owned()
            },
            |d| redactor.clean(&d),
        );
        let scim_type = parsed.scim_type.map(|t| redactor.clean(&t));
        match status.as_u16() {
            401 | 403 => ScimError::Unauthorized {
                status: status.as_u16(),
                detail,
            },
            404 => ScimError::NotFound,
            409 => ScimError::Conflict { detail },
            code => ScimError::Http {
                status: code,
                scim_type,
                detail,
            },
        }
    }
}

/// Counters since the client was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Request attempts sent, retries included.
    pub requests: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// 429 responses seen.
    pub throttled: u64,
}

/// A SCIM client for one target. Cheap to clone; clones share the rate limiter,
/// the learned capabilities and the counters.
#[derive(Clone)]
pub struct ScimClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Holds the bearer token as a sensitive default header.
    http: reqwest::Client,
    /// Cleans every string the target sends before it becomes an error.
    redactor: Redactor,
    base: Url,
    flavour: Flavour,
    limiter: Option<DefaultDirectRateLimiter>,
    /// `concurrency: auto`: the gate every request passes.
    pace: Option<Pace>,
    retry: RetryPolicy,
    page_size: Option<u32>,
    member_chunk: usize,
    capabilities: RwLock<ServiceProviderConfig>,
    /// What `/Schemas` and `/ResourceTypes` said and what it means for
    /// payloads and comparisons, worked out once per read (every request
    /// consults it); `None` until read.
    learned: RwLock<Option<Arc<Learned>>>,
    /// How payloads are shaped before the schema is read (the flavour's).
    default_shape: Arc<PayloadShape>,
    /// Members sent in a group's POST (targets requiring members), by group
    /// id: the add that follows leaves them out.
    sent_at_create: Mutex<std::collections::HashMap<String, Vec<ScimId>>>,
    warned_filter_ignored: AtomicBool,
    /// The target failed a list request that carried `count`: this cycle pages
    /// with its default page size.
    count_refused: AtomicBool,
    /// The user collection as listed this cycle, kept up to date with the
    /// creates, changes and deletes sent since (see [`ScimClient::list_users`]).
    users: Mutex<Option<Listing>>,
    /// Changes (any request but a GET) that have ended, answered or not.
    changes: AtomicU64,
    /// The first page of `Users` read this cycle, with the count of changes
    /// it was read at: the connectivity probe, the empty-target guard and the
    /// create lookup ask the same question, and an empty page is the listing.
    users_first_page: Mutex<Option<(u64, resource::ListPage)>>,
    /// Held while the users are listed: lookups that need the listing at the
    /// same time (concurrent 409s) wait for one read instead of each making one.
    listing_users: tokio::sync::Mutex<()>,
    /// Learned: the target stores group members by userName, so member
    /// changes go out by userName.
    members_by_user_name: AtomicBool,
    /// Whether the target refuses a second user with an existing userName:
    /// set from its schema (`uniqueness`), or learned `false` from a listing
    /// holding two users with one userName. `None`: unknown, trusted.
    user_names_unique: RwLock<Option<bool>>,
    warned_eq_case: AtomicBool,
    /// How this cycle looks userNames up before creates (see
    /// [`ScimClient::holder_of`]), once worked out.
    /// `Some(None)`: worked out, and the target could not be asked.
    create_lookup: tokio::sync::Mutex<Option<Option<CreateLookup>>>,
    /// userName lookups made before creates this cycle.
    create_lookups: AtomicU64,
    /// When the target last asked us (429/503 with a wait) to hold off: every
    /// request waits for it, not only the one that was told.
    cooldown_until: Mutex<Option<tokio::time::Instant>>,
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    /// Answers by HTTP status; 0 counts attempts that got no answer.
    statuses: Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl std::fmt::Debug for ScimClient {
    // By hand, so the token (inside the reqwest client) can never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScimClient")
            .field("base_url", &self.inner.base.as_str())
            .field("flavour", &self.inner.flavour)
            .finish_non_exhaustive()
    }
}

impl ScimClient {
    pub fn new(opts: ClientOptions) -> Result<Self, ScimError> {
        let base = Url::parse(opts.base_url.trim_end_matches('/'))
            .map_err(|e| ScimError::Config(format!("base URL {:?}: {e}", opts.base_url)))?;
        if !matches!(base.scheme(), "https" | "http") || base.cannot_be_a_base() {
            return Err(ScimError::Config(format!(
                "base URL {:?} is not an http(s) URL",
                opts.base_url
            )));
        }
        if opts.timeout.is_zero() {
            return Err(ScimError::Config("timeout must be more than zero".into()));
        }
        if opts.page_size == Some(0) || opts.member_chunk == 0 {
            return Err(ScimError::Config(
                "page size and member chunk must be at least 1".into(),
            ));
        }
        if opts.retry.max_attempts == 0 {
            return Err(ScimError::Config(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        let limiter = opts.rate_limit.map(rate_limiter).transpose()?;

        let mut bearer = format!("Bearer {}", opts.token.expose_secret());
        let auth = HeaderValue::try_from(bearer.as_str());
        // Do not leave a copy of the token behind in freed memory.
        bearer.zeroize();
        let mut auth = auth.map_err(|_| {
            ScimError::Config("the token contains characters not allowed in an HTTP header".into())
        })?;
        // Keeps the token out of reqwest's and hyper's Debug output and HPACK tables.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_JSON));

        let tls = crate::tls::client_config()
            .map_err(|e| ScimError::Config(format!("HTTP client: {e}")))?;
        let connect_timeout = opts.timeout.min(MAX_CONNECT_TIMEOUT);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .default_headers(headers)
            .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.timeout)
            .connect_timeout(connect_timeout)
            .connector_layer(ConnectDeadline::new(connect_timeout))
            .build()
            .map_err(|e| ScimError::Config(format!("HTTP client: {}", error_chain(&e))))?;

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                redactor: Redactor::new(opts.token.clone()),
                base,
                flavour: opts.flavour,
                limiter,
                pace: opts.adaptive_ceiling.map(Pace::new),
                retry: opts.retry,
                page_size: opts.page_size,
                member_chunk: opts.member_chunk,
                capabilities: RwLock::new(ServiceProviderConfig::default()),
                learned: RwLock::new(None),
                default_shape: Arc::new(flavour_shape(PayloadShape::default(), opts.flavour)),
                sent_at_create: Mutex::new(Default::default()),
                warned_filter_ignored: AtomicBool::new(false),
                count_refused: AtomicBool::new(false),
                users: Mutex::new(None),
                changes: AtomicU64::new(0),
                users_first_page: Mutex::new(None),
                listing_users: tokio::sync::Mutex::new(()),
                members_by_user_name: AtomicBool::new(false),
                user_names_unique: RwLock::new(None),
                warned_eq_case: AtomicBool::new(false),
                create_lookup: tokio::sync::Mutex::new(None),
                create_lookups: AtomicU64::new(0),
                cooldown_until: Mutex::new(None),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                throttled: AtomicU64::new(0),
                statuses: Mutex::new(std::collections::BTreeMap::new()),
            }),
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.inner.flavour
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.inner.requests.load(Ordering::Relaxed),
            retries: self.inner.retries.load(Ordering::Relaxed),
            throttled: self.inner.throttled.load(Ordering::Relaxed),
        }
    }

    /// `concurrency: auto`: the limits it had this cycle; `None` when the
    /// concurrency is fixed.
    pub fn concurrency_record(&self) -> Option<PaceRecord> {
        self.inner.pace.as_ref().map(Pace::record)
    }

    /// `concurrency: auto`: the limit on requests in flight now.
    pub fn concurrency_limit(&self) -> Option<usize> {
        self.inner.pace.as_ref().map(Pace::limit)
    }

    /// Request attempts by the HTTP status they were answered with (0: no
    /// answer: refused, timed out, cut off), since the client was built.
    pub fn status_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Creates a user. An existing `userName` gives [`ScimError::Conflict`]; so does
    /// the retry of a create that timed out but succeeded. On a target known
    /// not to enforce unique userNames, the userName is looked up first and
    /// an existing user gives the same conflict, instead of a duplicate.
    pub async fn create_user(
        &self,
        attrs: &UserAttrs,
        active: bool,
    ) -> Result<RemoteUser, ScimError> {
        let Some(user_name) = attrs.get(UserAttr::UserName).filter(|u| !u.is_empty()) else {
            return Err(ScimError::InvalidInput("a user needs a userName".into()));
        };
        // Known once the schema is read (RFC 7643's default: not case-exact).
        let folds_case = self
            .schema()
            .is_some_and(|s| !s.case_exact(UserAttr::UserName));
        let mut existing = if folds_case {
            self.holder_of(user_name).await?
        } else {
            None
        };
        if existing.is_none() && self.user_names_unique() == Some(false) {
            existing = self.find_user_after_conflict(user_name).await?;
        }
        if let Some(existing) = existing {
            return Err(ScimError::Conflict {
                detail: format!(
                    "userName {:?} is taken by user {} (looked up before creating: the target may not refuse it in another case, or at all)",
                    user_name, existing.id
                ),
            });
        }
        let body = resource::user_to_json(attrs, active, &self.payload_shape());
        self.refuse_incomplete(&body, Resource::User, || format!("user {user_name:?}"))?;
        let reply = self
            .call(Method::POST, self.url(&["Users"]), &[], Some(&body))
            .await?;
        let user = match self.created(&reply, &["Users"]).await? {
            Some(created) => {
                resource::user_from_json(&created).map_err(ScimError::InvalidResponse)?
            }
            None => {
                return Err(ScimError::InvalidResponse(
                    "user created, but the response names no id".into(),
                ));
            }
        };
        self.edit_cached_users(|users| users.push(user.clone()));
        Ok(user)
    }

    /// Changes only the given attributes (`None` removes one) and, if given, `active`.
    /// Nothing is sent when there is nothing to change. A change of an
    /// attribute the target's schema marks immutable is refused here, unsent
    /// ([`ScimError::Refused`]); read-only attributes are left out. Returns the
    /// user as the target holds it afterwards: the answer's resource, or (for
    /// an attribute change answered without one) the user read back; `None`
    /// when neither could be had.
    pub async fn patch_user(
        &self,
        id: &ScimId,
        changes: &[(UserAttr, Option<String>)],
        active: Option<bool>,
    ) -> Result<Option<RemoteUser>, ScimError> {
        let shape = self.payload_shape();
        if let Some((attr, value)) = changes.iter().find(|(a, _)| shape.immutable.contains(a)) {
            let to = value
                .as_deref()
                .map_or_else(|| "nothing".to_owned(), |v| format!("{v:?}"));
            return Err(ScimError::Refused(format!(
                "the target does not allow changing {name} (immutable in its /Schemas): the change to {to} was not sent, nor the rest of this update; \
                 keep the mapped {name} unchanged, or delete the account in the target and run `idsync sync --full` to create it again under the new value",
                name = attr.name()
            )));
        }
        let changes: Vec<(UserAttr, Option<String>)> = changes
            .iter()
            .filter(|(a, _)| !shape.not_sent.contains(a))
            .cloned()
            .collect();
        if changes.is_empty() && active.is_none() {
            return Ok(None);
        }
        let answered = self
            .patch_resource(
                "Users",
                id,
                resource::user_patch_operations(&changes, active, &shape),
                |user| resource::apply_user_changes(user, &changes, active, &shape),
            )
            .await?;
        let mut stored = answered
            .filter(|body| resource::resource_id(body).is_ok_and(|got| got == *id))
            .and_then(|body| resource::user_from_json(&body).ok());
        // An answer without the resource (204) says nothing of what was kept:
        // an attribute change is read back (one GET), so a value the target
        // drops is seen now rather than planned again forever.
        if stored.is_none() && !changes.is_empty() {
            stored = self.get_user(id).await.ok().flatten();
        }
        self.edit_cached_users(|users| {
            if let Some(user) = users.get_mut(id) {
                for (attr, value) in &changes {
                    match value {
                        Some(v) => user.attrs.insert(*attr, v.clone()),
                        None => user.attrs.remove(attr),
                    };
                }
                if let Some(active) = active {
                    user.active = active;
                }
            }
        });
        Ok(stored)
    }

    /// Deletes a user; on Atlassian this deactivates the account and unlinks it.
    pub async fn delete_user(&self, id: &ScimId) -> Result<(), ScimError> {
        let result = self
            .call(Method::DELETE, self.url(&["Users", id.as_str()]), &[], None)
            .await
            .map(drop);
        if matches!(result, Ok(()) | Err(ScimError::NotFound)) {
            self.edit_cached_users(|users| users.remove(id));
        }
        result
    }

    /// Creates a group. An existing `displayName` gives [`ScimError::Conflict`] on
    /// targets that enforce uniqueness (Atlassian; scim2-server does not).
    pub async fn create_group(
        &self,
        display_name: &str,
        external_id: Option<&str>,
    ) -> Result<RemoteGroup, ScimError> {
        if display_name.is_empty() {
            return Err(ScimError::InvalidInput(
                "a group needs a displayName".into(),
            ));
        }
        let body = resource::group_to_json(display_name, external_id);
        self.post_group(display_name, &body).await
    }

    /// Creates a group for the executor: on a target whose schema requires
    /// `members`, with `first_members` in the POST (and a later
    /// [`Self::add_members`] to this group leaves them out); a group without
    /// members there is refused unsent. Elsewhere, as [`Self::create_group`].
    pub async fn create_group_for(
        &self,
        display_name: &str,
        external_id: Option<&str>,
        first_members: &[MemberRef],
    ) -> Result<RemoteGroup, ScimError> {
        if !self.schema().is_some_and(|s| s.group_members_required()) {
            return self.create_group(display_name, external_id).await;
        }
        if display_name.is_empty() {
            return Err(ScimError::InvalidInput(
                "a group needs a displayName".into(),
            ));
        }
        let members = distinct(first_members);
        if members.is_empty() {
            return Err(ScimError::Refused(format!(
                "the target requires members in a new group (members required in its /Schemas), and group {display_name:?} has none that exist in the target yet; \
                 it is created on the first cycle after it has a member"
            )));
        }
        let by_name = self.members_by_user_name();
        let objects = members
            .iter()
            .map(|m| self.member_object(&member_send_value(m, by_name), m))
            .collect();
        let body = resource::group_with_members_to_json(display_name, external_id, objects);
        let group = self.post_group(display_name, &body).await?;
        self.inner
            .sent_at_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                group.id.as_str().to_owned(),
                members.into_iter().map(|m| m.id).collect(),
            );
        Ok(group)
    }

    /// Refuses, unsent, a create the target's schema says it would refuse:
    /// `body` lacks a path the schema marks required (nothing could fill it).
    fn refuse_incomplete(
        &self,
        body: &Value,
        resource: Resource,
        what: impl FnOnce() -> String,
    ) -> Result<(), ScimError> {
        let Some(learned) = self.learned() else {
            return Ok(());
        };
        let required = match resource {
            Resource::User => &learned.required.user,
            Resource::Group => &learned.required.group,
        };
        let missing: Vec<String> = schema::missing_paths(body, required)
            .iter()
            .map(|p| schema::published_path(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (it, fix) = match (resource, missing.len()) {
            (Resource::User, 1) => (
                "it",
                "map it in the mapping (`idsync check` names the line to add)",
            ),
            (Resource::User, _) => (
                "them",
                "map them in the mapping (`idsync check` names the lines to add)",
            ),
            // A group carries only its name, its key and its members.
            (Resource::Group, _) => (
                "it",
                "idsync sends no other group attribute: ask the target's administrator to make it optional",
            ),
        };
        Err(ScimError::Refused(format!(
            "{} is not created: the target requires {} on every {} (required in its /Schemas) and idsync has no value for {it} to send; {fix}",
            what(),
            missing.join(", "),
            resource.noun(),
        )))
    }

    /// POSTs a group body and reads the created group back.
    async fn post_group(&self, display_name: &str, body: &Value) -> Result<RemoteGroup, ScimError> {
        self.refuse_incomplete(body, Resource::Group, || format!("group {display_name:?}"))?;
        let reply = match self.create_group_once(display_name, body).await? {
            GroupCreate::Sent(reply) => reply,
            GroupCreate::Found(group) => return Ok(group),
        };
        match self.created(&reply, &["Groups"]).await? {
            Some(created) => {
                resource::group_from_json(&created).map_err(ScimError::InvalidResponse)
            }
            None => Err(ScimError::InvalidResponse(
                "group created, but the response names no id".into(),
            )),
        }
    }

    /// POSTs a group with retries. Many servers (scim2-server among them) do not
    /// enforce unique group names, so a retried POST whose first attempt reached
    /// the server (the answer was lost, timed out, or a gateway failed after the
    /// backend acted) would create a second group: before every retry, the group
    /// is looked up by `displayName`, and an existing one is returned instead.
    async fn create_group_once(
        &self,
        display_name: &str,
        body: &Value,
    ) -> Result<GroupCreate, ScimError> {
        let url = self.url(&["Groups"]);
        let bytes = body.to_string().into_bytes();
        let inner = &self.inner;
        crate::retry::run(
            &inner.retry,
            fastrand::f64,
            |attempt, error: &ScimError, wait| {
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(method = "POST", path = url.path(), attempt, wait_ms = wait.as_millis() as u64, error = ?error.to_string(), "retrying SCIM request");
            },
            paced_too_long,
            |attempt| {
                let url = &url;
                let bytes = &bytes;
                async move {
                    if attempt > 1 {
                        match self.find_group_by_display_name(display_name).await {
                            Ok(Some(group)) => return Attempt::Success(GroupCreate::Found(group)),
                            Ok(None) => {}
                            Err(error) => return Attempt::Retryable { error, wait: None },
                        }
                    }
                    match self.attempt(&Method::POST, url, &[], Some(bytes)).await {
                        Attempt::Success(reply) => Attempt::Success(GroupCreate::Sent(reply)),
                        Attempt::Fatal(e) => Attempt::Fatal(e),
                        Attempt::Retryable { error, wait } => Attempt::Retryable { error, wait },
                        Attempt::Paced { error, wait } => Attempt::Paced { error, wait },
                    }
                }
            },
        )
        .await
    }

    /// Finds a group by `displayName`: an exact match first, else one differing
    /// only in case.
    pub async fn find_group_by_display_name(
        &self,
        name: &str,
    ) -> Result<Option<RemoteGroup>, ScimError> {
        let pick = |groups: Vec<RemoteGroup>| -> (bool, Option<RemoteGroup>) {
            let wanted = GroupName::new(name);
            let any_other = groups.iter().any(|g| g.display_name != wanted);
            let exact = groups.iter().position(|g| g.display_name.as_str() == name);
            let folded = groups.iter().position(|g| g.display_name == wanted);
            let found = exact.or(folded).and_then(|i| groups.into_iter().nth(i));
            (any_other, found)
        };
        match self
            .search("Groups", "displayName", name, resource::group_from_json)
            .await?
        {
            Some(groups) => match pick(groups) {
                (_, Some(found)) => Ok(Some(found)),
                (false, None) => Ok(None),
                (true, None) => {
                    self.warn_filter_ignored();
                    Ok(pick(self.list_groups().await?).1)
                }
            },
            None => Ok(pick(self.list_groups().await?).1),
        }
    }

    /// The group with this id, with its members; `None` only when the target
    /// answers 404.
    pub async fn get_group(&self, id: &ScimId) -> Result<Option<RemoteGroup>, ScimError> {
        match self
            .call(Method::GET, self.url(&["Groups", id.as_str()]), &[], None)
            .await
        {
            Ok(reply) => resource::group_from_json(&reply.json()?)
                .map(Some)
                .map_err(ScimError::InvalidResponse),
            Err(ScimError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All groups with their members, every page.
    pub async fn list_groups(&self) -> Result<Vec<RemoteGroup>, ScimError> {
        self.list("Groups", resource::group_from_json).await
    }

    /// Renames a group. Refused for Atlassian, where products key on group names:
    /// the caller recreates the group instead.
    pub async fn rename_group(&self, id: &ScimId, display_name: &str) -> Result<(), ScimError> {
        if self.inner.flavour == Flavour::Atlassian {
            return Err(ScimError::Unsupported(
                "Atlassian does not support renaming groups; recreate the group instead".into(),
            ));
        }
        self.patch_group(
            id,
            vec![resource::group_rename_operation(display_name)],
            |group| {
                if let Some(obj) = group.as_object_mut() {
                    obj.insert("displayName".into(), Value::from(display_name));
                }
            },
        )
        .await
        .map(drop)
    }

    /// Deletes a group. On Atlassian this strips the product roles it granted.
    pub async fn delete_group(&self, id: &ScimId) -> Result<(), ScimError> {
        self.call(
            Method::DELETE,
            self.url(&["Groups", id.as_str()]),
            &[],
            None,
        )
        .await
        .map(drop)
    }

    /// PATCHes a group; the answer is returned.
    async fn patch_group(
        &self,
        id: &ScimId,
        operations: Vec<Value>,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Option<Value>, ScimError> {
        self.patch_resource("Groups", id, operations, edit).await
    }

    /// PATCHes a resource of `collection` (`Users`, `Groups`), or, when the
    /// target has no PATCH, applies `edit` to the resource read back and PUTs it.
    /// Returns the answer's body when it is a JSON object (the resource as
    /// stored, on most servers).
    async fn patch_resource(
        &self,
        collection: &str,
        id: &ScimId,
        operations: Vec<Value>,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Option<Value>, ScimError> {
        let url = self.url(&[collection, id.as_str()]);
        let reply = if self.capabilities().patch {
            let body = resource::patch_body(operations);
            self.call(Method::PATCH, url, &[], Some(&body)).await?
        } else {
            let mut current = self
                .call(Method::GET, url.clone(), &[], None)
                .await?
                .json()?;
            if !current.is_object() {
                return Err(ScimError::InvalidResponse(format!(
                    "the {collection} resource {id} is not a JSON object"
                )));
            }
            edit(&mut current);
            if let Some(obj) = current.as_object_mut() {
                obj.remove("meta");
            }
            self.call(Method::PUT, url, &[], Some(&current)).await?
        };
        Ok(serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .filter(Value::is_object))
    }

    /// The resource a create returned: the body, or (for servers answering 201
    /// without one) what `Location` points to.
    async fn created(
        &self,
        reply: &Reply,
        collection: &[&str],
    ) -> Result<Option<Value>, ScimError> {
        if let Ok(body) = serde_json::from_slice::<Value>(&reply.body)
            && resource::resource_id(&body).is_ok()
        {
            return Ok(Some(body));
        }
        let Some(location) = &reply.location else {
            return Ok(None);
        };
        let Some(id) = location
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let mut segments = collection.to_vec();
        segments.push(id);
        let reply = self
            .call(Method::GET, self.url(&segments), &[], None)
            .await?;
        reply.json().map(Some)
    }
}

/// The kind of resource a create makes.
#[derive(Clone, Copy, Debug)]
enum Resource {
    User,
    Group,
}

impl Resource {
    fn noun(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Group => "group",
        }
    }
}

/// What a group POST with retries ended with.
enum GroupCreate {
    /// The target answered the POST.
    Sent(Reply),
    /// A retry found the group an earlier attempt had created.
    Found(RemoteGroup),
}

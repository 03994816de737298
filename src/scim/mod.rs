//! The SCIM 2.0 client: sends idsync's user and group operations to one target
//! (Atlassian Cloud or a generic SCIM server), paced by a token bucket and retried
//! per [`retry`]. It speaks HTTP and SCIM; it knows nothing of plans, state, or why
//! an operation is made (adopting a user after a 409 is the caller's decision).

mod paging;
pub mod redact;
pub mod resource;
pub mod retry;
pub mod schema;
mod target;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::model::{GroupName, RemoteGroup, RemoteUser, ScimId, UserAttr, UserAttrs, UserName};
use paging::Pager;
use redact::Redactor;
pub use resource::ServiceProviderConfig;
pub use retry::RetryPolicy;
use retry::{Attempt, Outcome, PacedTooLong, TransportKind, Verdict};
use schema::{PayloadShape, TargetSchema};

const SCIM_JSON: &str = "application/scim+json";
const ACCEPT_JSON: &str = "application/scim+json, application/json;q=0.9";

/// Atlassian documents no larger page size; 100 is known to work.
const ATLASSIAN_MAX_PAGE: u32 = 100;

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
    /// Resources per list request (further capped by the target).
    pub page_size: u32,
    /// Members per group PATCH request.
    pub member_chunk: usize,
}

impl ClientOptions {
    /// Options with the defaults: no rate limit, 30 s timeout, default retries,
    /// pages and member chunks of 100.
    pub fn new(base_url: impl Into<String>, token: SecretString, flavour: Flavour) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            flavour,
            rate_limit: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            page_size: 100,
            member_chunk: 100,
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
    retry: RetryPolicy,
    page_size: u32,
    member_chunk: usize,
    capabilities: RwLock<ServiceProviderConfig>,
    /// What `/Schemas` and `/ResourceTypes` said; `None` until read.
    schema: RwLock<Option<TargetSchema>>,
    /// Members sent in a group's POST (targets requiring members), by group
    /// id: the add that follows leaves them out.
    sent_at_create: Mutex<std::collections::HashMap<String, Vec<ScimId>>>,
    warned_filter_ignored: AtomicBool,
    /// When the target last asked us (429/503 with a wait) to hold off: every
    /// request waits for it, not only the one that was told.
    cooldown_until: Mutex<Option<tokio::time::Instant>>,
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
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

/// A successful response.
struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Result<Value, ScimError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ScimError::InvalidResponse(format!(
                "HTTP {} body is not JSON: {e}",
                self.status.as_u16()
            ))
        })
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
        if opts.page_size == 0 || opts.member_chunk == 0 {
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

        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(MAX_CONNECT_TIMEOUT))
            .build()
            .map_err(|e| ScimError::Config(format!("HTTP client: {}", error_chain(&e))))?;

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                redactor: Redactor::new(opts.token.clone()),
                base,
                flavour: opts.flavour,
                limiter,
                retry: opts.retry,
                page_size: opts.page_size,
                member_chunk: opts.member_chunk,
                capabilities: RwLock::new(ServiceProviderConfig::default()),
                schema: RwLock::new(None),
                sent_at_create: Mutex::new(Default::default()),
                warned_filter_ignored: AtomicBool::new(false),
                cooldown_until: Mutex::new(None),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                throttled: AtomicU64::new(0),
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

    /// Reads `/ServiceProviderConfig` and remembers it: later calls honour its
    /// PATCH and filter support and its `maxResults`. Until it is read, the client
    /// assumes PATCH and filters work (true of Atlassian).
    pub async fn service_provider_config(&self) -> Result<ServiceProviderConfig, ScimError> {
        let reply = self
            .call(Method::GET, self.url(&["ServiceProviderConfig"]), &[], None)
            .await?;
        let config = resource::parse_service_provider_config(&reply.json()?)
            .map_err(ScimError::InvalidResponse)?;
        *self
            .inner
            .capabilities
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.clone();
        Ok(config)
    }

    /// The capabilities in force (defaults until [`Self::service_provider_config`] ran).
    pub fn capabilities(&self) -> ServiceProviderConfig {
        self.inner
            .capabilities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads `/Schemas` and `/ResourceTypes` and remembers what they say: later
    /// payloads are shaped by it (see [`schema`]). A server that does not serve
    /// them (an error status, a body that is not a schema) gets RFC 7643's
    /// defaults, and the model says why; a refused token or a target that
    /// cannot be reached is an error. Read at the start of every cycle.
    pub async fn read_schema(&self) -> Result<TargetSchema, ScimError> {
        let fetch = |name: &'static str| async move {
            match self.call(Method::GET, self.url(&[name]), &[], None).await {
                Ok(reply) => reply
                    .json()
                    .map_err(|e| Err(format!("/{name} could not be read ({e})"))),
                // Not an answer about the schema: the target cannot be asked.
                Err(e)
                    if e.is_auth()
                        || matches!(e, ScimError::Transport(_) | ScimError::RateLimited { .. }) =>
                {
                    Err(Ok(e))
                }
                Err(e) => Err(Err(format!("/{name} could not be read ({e})"))),
            }
        };
        let model = match fetch("Schemas").await {
            Ok(schemas) => {
                let types = match fetch("ResourceTypes").await {
                    Ok(doc) => Ok(doc),
                    Err(Ok(auth)) => return Err(auth),
                    Err(Err(why)) => Err(why),
                };
                TargetSchema::from_documents(&schemas, types.as_ref().map_err(Clone::clone))
            }
            Err(Ok(auth)) => return Err(auth),
            Err(Err(why)) => TargetSchema::defaults(why),
        };
        if let schema::SchemaOrigin::Defaults { why } = &model.origin {
            tracing::info!(target_url = %self.inner.base, "{why}; RFC 7643 defaults assumed");
        }
        *self.inner.schema.write().unwrap_or_else(|p| p.into_inner()) = Some(model.clone());
        Ok(model)
    }

    /// The schema read last by [`Self::read_schema`], if any.
    pub fn schema(&self) -> Option<TargetSchema> {
        self.inner
            .schema
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the target enforces unique `userName`s, as its schema says:
    /// `None` when it did not say (schema not read, or not served).
    pub fn user_names_unique(&self) -> Option<bool> {
        self.schema().and_then(|s| s.user_names_unique())
    }

    /// How user payloads are shaped for this target: as its schema says,
    /// except that Atlassian always gets `emails.primary`, which it requires.
    pub fn payload_shape(&self) -> PayloadShape {
        let mut shape = self.schema().map(|s| s.payload_shape()).unwrap_or_default();
        if self.inner.flavour == Flavour::Atlassian {
            shape.email_primary = true;
        }
        shape
    }

    /// Creates a user. An existing `userName` gives [`ScimError::Conflict`]; so does
    /// the retry of a create that timed out but succeeded.
    pub async fn create_user(
        &self,
        attrs: &UserAttrs,
        active: bool,
    ) -> Result<RemoteUser, ScimError> {
        if attrs.get(&UserAttr::UserName).is_none_or(|u| u.is_empty()) {
            return Err(ScimError::InvalidInput("a user needs a userName".into()));
        }
        let body = resource::user_to_json_shaped(attrs, active, &self.payload_shape());
        let reply = self
            .call(Method::POST, self.url(&["Users"]), &[], Some(&body))
            .await?;
        match self.created(&reply, &["Users"]).await? {
            Some(created) => resource::user_from_json(&created).map_err(ScimError::InvalidResponse),
            None => Err(ScimError::InvalidResponse(
                "user created, but the response names no id".into(),
            )),
        }
    }

    /// Changes only the given attributes (`None` removes one) and, if given, `active`.
    /// Nothing is sent when there is nothing to change. A change of an
    /// attribute the target's schema marks immutable is refused here, unsent
    /// ([`ScimError::Refused`]); read-only attributes are left out.
    pub async fn patch_user(
        &self,
        id: &ScimId,
        changes: &[(UserAttr, Option<String>)],
        active: Option<bool>,
    ) -> Result<(), ScimError> {
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
            return Ok(());
        }
        self.patch_resource(
            "Users",
            id,
            resource::user_patch_operations_shaped(&changes, active, &shape),
            |user| resource::apply_user_changes_shaped(user, &changes, active, &shape),
        )
        .await
    }

    /// Deletes a user; on Atlassian this deactivates the account and unlinks it.
    pub async fn delete_user(&self, id: &ScimId) -> Result<(), ScimError> {
        self.call(Method::DELETE, self.url(&["Users", id.as_str()]), &[], None)
            .await
            .map(drop)
    }

    /// The user with this id; `None` only when the target answers 404.
    pub async fn get_user(&self, id: &ScimId) -> Result<Option<RemoteUser>, ScimError> {
        match self
            .call(Method::GET, self.url(&["Users", id.as_str()]), &[], None)
            .await
        {
            Ok(reply) => resource::user_from_json(&reply.json()?)
                .map(Some)
                .map_err(ScimError::InvalidResponse),
            Err(ScimError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds a user by `userName`, compared case-insensitively here too (servers
    /// may ignore the filter or compare exactly).
    pub async fn find_user_by_user_name(
        &self,
        user_name: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.find_user(UserAttr::UserName, user_name).await
    }

    /// Finds a user by `externalId`, compared exactly (Atlassian treats it as case-sensitive).
    pub async fn find_user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.find_user(UserAttr::ExternalId, external_id).await
    }

    async fn find_user(
        &self,
        attr: UserAttr,
        value: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        // Compared as the attribute table says the target compares it.
        let case_exact = attr.spec().case_exact;
        let wanted = UserName::new(value);
        let matches = |u: &RemoteUser| {
            u.attrs.get(&attr).is_some_and(|v| {
                if case_exact {
                    v == value
                } else {
                    UserName::new(v.as_str()) == wanted
                }
            })
        };
        // What a server that honoured the filter could return, whichever way it compares.
        let plausible = |u: &RemoteUser| {
            u.attrs
                .get(&attr)
                .is_some_and(|v| UserName::new(v.as_str()) == wanted)
        };
        match self
            .search("Users", attr.name(), value, resource::user_from_json)
            .await?
        {
            Candidates::Filtered(users) if users.iter().all(plausible) => {
                Ok(users.into_iter().find(|u| matches(u)))
            }
            Candidates::Filtered(_) => {
                self.warn_filter_ignored();
                Ok(self.list_users().await?.into_iter().find(|u| matches(u)))
            }
            Candidates::All(users) => Ok(users.into_iter().find(|u| matches(u))),
        }
    }

    /// Whether a collection (`Users`, `Groups`) holds at least one resource:
    /// one request for one resource, not a read of the collection.
    pub async fn holds_any(&self, collection: &str) -> Result<bool, ScimError> {
        let url = self.url(&[collection]);
        let one = [("startIndex", "1".to_string()), ("count", "1".to_string())];
        let reply = match self.call(Method::GET, url.clone(), &one, None).await {
            // Some servers refuse any `count`: ask with their default page size.
            Err(ScimError::Http { status: 400, .. }) => {
                self.call(Method::GET, url, &[], None).await?
            }
            other => other?,
        };
        let page = resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)?;
        Ok(page.total.is_some_and(|n| n > 0) || !page.resources.is_empty())
    }

    /// All users, every page.
    pub async fn list_users(&self) -> Result<Vec<RemoteUser>, ScimError> {
        self.list("Users", resource::user_from_json).await
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
        first_members: &[ScimId],
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
        let body = resource::group_with_members_to_json(display_name, external_id, &members);
        let group = self.post_group(display_name, &body).await?;
        self.inner
            .sent_at_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.id.as_str().to_owned(), members);
        Ok(group)
    }

    /// POSTs a group body and reads the created group back.
    async fn post_group(&self, display_name: &str, body: &Value) -> Result<RemoteGroup, ScimError> {
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
        retry::run(
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
            Candidates::Filtered(groups) => match pick(groups) {
                (_, Some(found)) => Ok(Some(found)),
                (false, None) => Ok(None),
                (true, None) => {
                    self.warn_filter_ignored();
                    Ok(pick(self.list_groups().await?).1)
                }
            },
            Candidates::All(groups) => Ok(pick(groups).1),
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
    }

    /// Adds members (SCIM user ids), `member_chunk` per request. Callers should
    /// only add members not already there: some servers duplicate them.
    pub async fn add_members(&self, group: &ScimId, members: &[ScimId]) -> Result<(), ScimError> {
        // scim2-server stores an id twice when one request names it twice.
        let mut members = distinct(members);
        let sent = self
            .inner
            .sent_at_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group.as_str());
        if let Some(sent) = sent {
            members.retain(|m| !sent.contains(m));
        }
        for chunk in members.chunks(self.inner.member_chunk) {
            self.patch_group(group, vec![resource::members_add_operation(chunk)], |g| {
                edit_members(g, |list| {
                    for id in chunk {
                        if !list.iter().any(|m| member_value(m) == Some(id.as_str())) {
                            list.push(serde_json::json!({ "value": id.as_str() }));
                        }
                    }
                })
            })
            .await?;
        }
        Ok(())
    }

    /// Removes members, one `members[value eq "id"]` operation each, `member_chunk`
    /// operations per request.
    pub async fn remove_members(
        &self,
        group: &ScimId,
        members: &[ScimId],
    ) -> Result<(), ScimError> {
        let members = distinct(members);
        for chunk in members.chunks(self.inner.member_chunk) {
            let ops = chunk
                .iter()
                .map(resource::member_remove_operation)
                .collect();
            self.patch_group(group, ops, |g| {
                edit_members(g, |list| {
                    list.retain(|m| !chunk.iter().any(|id| member_value(m) == Some(id.as_str())))
                })
            })
            .await?;
        }
        Ok(())
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

    /// PATCHes a group.
    async fn patch_group(
        &self,
        id: &ScimId,
        operations: Vec<Value>,
        edit: impl FnOnce(&mut Value),
    ) -> Result<(), ScimError> {
        self.patch_resource("Groups", id, operations, edit).await
    }

    /// PATCHes a resource of `collection` (`Users`, `Groups`), or, when the
    /// target has no PATCH, applies `edit` to the resource read back and PUTs it.
    async fn patch_resource(
        &self,
        collection: &str,
        id: &ScimId,
        operations: Vec<Value>,
        edit: impl FnOnce(&mut Value),
    ) -> Result<(), ScimError> {
        let url = self.url(&[collection, id.as_str()]);
        if self.capabilities().patch {
            let body = resource::patch_body(operations);
            self.call(Method::PATCH, url, &[], Some(&body)).await?;
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
            self.call(Method::PUT, url, &[], Some(&current)).await?;
        }
        Ok(())
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

    /// The page size in force and why, for `check`.
    pub fn paging_note(&self) -> String {
        let size = self.page_size();
        let mut why = vec![format!("target.page_size {}", self.inner.page_size)];
        if let Some(max) = self.capabilities().filter_max_results {
            why.push(format!("the server's maxResults {max}"));
        } else {
            why.push("the server publishes no maxResults".to_owned());
        }
        if self.inner.flavour == Flavour::Atlassian {
            why.push(format!("Atlassian's limit {ATLASSIAN_MAX_PAGE}"));
        }
        format!("{size} per page ({})", why.join(", "))
    }

    fn page_size(&self) -> u32 {
        let mut size = self.inner.page_size;
        if let Some(max) = self.capabilities().filter_max_results {
            size = size.min(max);
        }
        if self.inner.flavour == Flavour::Atlassian {
            size = size.min(ATLASSIAN_MAX_PAGE);
        }
        size.max(1)
    }

    /// Every resource of a collection, paged (see [`paging`]).
    async fn list<T>(
        &self,
        collection: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Vec<T>, ScimError> {
        let url = self.url(&[collection]);
        let mut pager = Pager::new(self.page_size());
        let mut all = Vec::new();
        loop {
            let mut query = vec![("startIndex", pager.start_index().to_string())];
            if let Some(count) = pager.count() {
                query.push(("count", count.to_string()));
            }
            let reply = match self.call(Method::GET, url.clone(), &query, None).await {
                // Some servers refuse any `count`: page with their default size instead.
                Err(ScimError::Http { status: 400, .. })
                    if pager.start_index() == 1 && pager.count().is_some() =>
                {
                    tracing::warn!(
                        collection,
                        "the SCIM target refused a page size; using its default"
                    );
                    pager = Pager::with_server_page_size();
                    continue;
                }
                other => other?,
            };
            let page = resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)?;
            let items = page
                .resources
                .iter()
                .map(|r| {
                    let id = resource::resource_id(r).map_err(ScimError::InvalidResponse)?;
                    let item = parse(r).map_err(ScimError::InvalidResponse)?;
                    Ok((id.as_str().to_owned(), item))
                })
                .collect::<Result<Vec<_>, ScimError>>()?;
            let (fresh, more) = pager.accept(page.total, items).map_err(|e| {
                ScimError::InvalidResponse(format!(
                    "/{collection} kept returning new resources after {} pages; refusing an unbounded read",
                    e.pages
                ))
            })?;
            all.extend(fresh);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Candidates for `attr eq value`: one filtered request, or the whole
    /// collection when the target does not support filters.
    async fn search<T>(
        &self,
        collection: &str,
        attr: &str,
        value: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Candidates<T>, ScimError> {
        if !self.capabilities().filter {
            return self.list(collection, parse).await.map(Candidates::All);
        }
        let query = [("filter", resource::eq_filter(attr, value))];
        let reply = match self
            .call(Method::GET, self.url(&[collection]), &query, None)
            .await
        {
            // The target does not filter on this attribute after all.
            Err(ScimError::Http {
                status: 400,
                scim_type: Some(t),
                ..
            }) if t == "invalidFilter" => {
                self.warn_filter_ignored();
                return self.list(collection, parse).await.map(Candidates::All);
            }
            other => other?,
        };
        let page = resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)?;
        page.resources
            .iter()
            .map(|r| parse(r).map_err(ScimError::InvalidResponse))
            .collect::<Result<Vec<_>, _>>()
            .map(Candidates::Filtered)
    }

    fn warn_filter_ignored(&self) {
        if !self
            .inner
            .warned_filter_ignored
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                target_url = %self.inner.base,
                "the SCIM target ignored or refused a filter; falling back to full listings"
            );
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        // Checked in `new`: the base URL can be a base, so this always applies.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request with retries; `Ok` only for a 2xx response.
    async fn call(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ScimError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let inner = &self.inner;
        retry::run(
            &inner.retry,
            fastrand::f64,
            |attempt, error: &ScimError, wait| {
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%method, path = url.path(), attempt, wait_ms = wait.as_millis() as u64, error = ?error.to_string(), "retrying SCIM request");
            },
            paced_too_long,
            |_| self.attempt(&method, &url, query, body.as_deref()),
        )
        .await
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Attempt<Reply, ScimError> {
        let inner = &self.inner;
        let cooldown = *inner
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = cooldown {
            tokio::time::sleep_until(until).await;
        }
        if let Some(limiter) = &inner.limiter {
            limiter.until_ready().await;
        }
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = inner.http.request(method.clone(), url.clone());
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, SCIM_JSON).body(body.to_vec());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return transport_failure(&e, &inner.redactor),
        };
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header(LOCATION.as_str());
        let retry_after = header("retry-after");
        let rate_limit_reset = header("x-ratelimit-reset");
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => return transport_failure(&e, &inner.redactor),
        };
        tracing::debug!(%method, path = url.path(), status = status.as_u16(), "SCIM request");
        if status.is_success() {
            return Attempt::Success(Reply {
                status,
                location,
                body,
            });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            inner.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let error = ScimError::from_response(status, &body, &inner.redactor);
        let outcome = Outcome::Status {
            status: status.as_u16(),
            retry_after: retry_after.as_deref(),
            rate_limit_reset: rate_limit_reset.as_deref(),
        };
        let verdict = retry::classify(outcome, SystemTime::now());
        match verdict {
            Verdict::After(wait) => self.hold_off(wait.min(inner.retry.max_delay)),
            // The whole client waits for the reset, as long as a request may wait.
            Verdict::Paced(wait) => self.hold_off(wait.min(inner.retry.max_elapsed)),
            Verdict::Fatal | Verdict::Backoff => {}
        }
        verdict_to_attempt(verdict, error)
    }

    /// Makes every request wait `wait` from now (or longer, if already asked to).
    fn hold_off(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut cooldown = self
            .inner
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cooldown.is_none_or(|current| current < until) {
            *cooldown = Some(until);
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

/// Candidates from a search: filtered by the server, or the whole collection.
enum Candidates<T> {
    Filtered(Vec<T>),
    All(Vec<T>),
}

/// The ids in their first-seen order, each once.
fn distinct(ids: &[ScimId]) -> Vec<ScimId> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// Runs `edit` on a group resource's `members` list (made empty if absent).
fn edit_members(group: &mut Value, edit: impl FnOnce(&mut Vec<Value>)) {
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

fn member_value(member: &Value) -> Option<&str> {
    member.get("value").and_then(Value::as_str)
}

fn rate_limiter(limit: RateLimit) -> Result<DefaultDirectRateLimiter, ScimError> {
    let per_second = std::num::NonZeroU32::new(limit.per_second)
        .ok_or_else(|| ScimError::Config("rate_limit.per_second must be at least 1".into()))?;
    let burst = std::num::NonZeroU32::new(limit.burst)
        .ok_or_else(|| ScimError::Config("rate_limit.burst must be at least 1".into()))?;
    Ok(RateLimiter::direct(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

fn transport_kind(error: &reqwest::Error) -> TransportKind {
    if error.is_timeout() {
        TransportKind::Timeout
    } else if error.is_connect() {
        TransportKind::Connect
    } else if error.is_builder() || error.is_decode() || error.is_redirect() {
        TransportKind::Local
    } else {
        TransportKind::Interrupted
    }
}

fn transport_failure<T>(error: &reqwest::Error, redactor: &Redactor) -> Attempt<T, ScimError> {
    let kind = transport_kind(error);
    // A proxy's or TLS library's message may quote what the target sent.
    let error_value = ScimError::Transport(redactor.clean(&error_chain(error)));
    verdict_to_attempt(
        retry::classify(Outcome::Transport(kind), SystemTime::now()),
        error_value,
    )
}

/// The error a paced request ends with when the target's reset is past
/// `retry.max_elapsed`.
fn paced_too_long(_: ScimError, t: PacedTooLong) -> ScimError {
    ScimError::RateLimited {
        wait: t.wait,
        left: t.left,
    }
}

fn verdict_to_attempt<T>(verdict: Verdict, error: ScimError) -> Attempt<T, ScimError> {
    match verdict {
        Verdict::Fatal => Attempt::Fatal(error),
        Verdict::Backoff => Attempt::Retryable { error, wait: None },
        Verdict::After(wait) => Attempt::Retryable {
            error,
            wait: Some(wait),
        },
        Verdict::Paced(wait) => Attempt::Paced { error, wait },
    }
}

/// An error and its causes on one line: reqwest's own message is terse
/// ("error sending request"), the cause says what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

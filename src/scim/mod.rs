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

use crate::model::{
    GroupName, MemberRef, RemoteGroup, RemoteUser, ScimId, UserAttr, UserAttrs, UserName,
};
use crate::plan::TargetRules;
pub use crate::retry::RetryPolicy;
use crate::retry::{Attempt, Outcome, PacedTooLong, TransportKind, Verdict};
use paging::Pager;
use redact::Redactor;
pub use resource::ServiceProviderConfig;
use schema::PayloadShape;
pub use schema::{Meet, TargetSchema};

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

/// The cycle's user listing, in the target's order, with each user's place by
/// id: the cycle's own changes edit it in place, without a scan per request.
struct Listing {
    users: Vec<RemoteUser>,
    by_id: HashMap<String, usize>,
}

impl Listing {
    fn new(users: Vec<RemoteUser>) -> Listing {
        let by_id = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.as_str().to_owned(), i))
            .collect();
        Listing { users, by_id }
    }

    fn push(&mut self, user: RemoteUser) {
        self.by_id
            .insert(user.id.as_str().to_owned(), self.users.len());
        self.users.push(user);
    }

    fn get_mut(&mut self, id: &ScimId) -> Option<&mut RemoteUser> {
        let i = *self.by_id.get(id.as_str())?;
        self.users.get_mut(i)
    }

    /// Removes a user, keeping the others' order (deletes are few: the
    /// removal guards bound them).
    fn remove(&mut self, id: &ScimId) {
        if let Some(i) = self.by_id.remove(id.as_str()) {
            self.users.remove(i);
            for u in &self.users[i..] {
                if let Some(at) = self.by_id.get_mut(u.id.as_str()) {
                    *at -= 1;
                }
            }
        }
    }
}

/// What the target's schema means for this client.
struct Learned {
    schema: Arc<TargetSchema>,
    shape: Arc<PayloadShape>,
    rules: TargetRules,
}

/// `shape` as `flavour` needs it: Atlassian always gets `emails.primary`,
/// which it requires, whatever its schema lists.
fn flavour_shape(mut shape: PayloadShape, flavour: Flavour) -> PayloadShape {
    if flavour == Flavour::Atlassian {
        shape.email_primary = true;
    }
    shape
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
    create_lookup: tokio::sync::Mutex<Option<CreateLookup>>,
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
                learned: RwLock::new(None),
                default_shape: Arc::new(flavour_shape(PayloadShape::default(), opts.flavour)),
                sent_at_create: Mutex::new(Default::default()),
                warned_filter_ignored: AtomicBool::new(false),
                count_refused: AtomicBool::new(false),
                users: Mutex::new(None),
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

    /// Request attempts by the HTTP status they were answered with (0: no
    /// answer: refused, timed out, cut off), since the client was built.
    pub fn status_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Whether the target enforces unique userNames, as its schema says
    /// (`uniqueness` of `userName`): `Some(false)` makes every create look the
    /// userName up first; `None` (unknown) trusts the target's 409. A listing
    /// that shows two users with one userName sets `Some(false)` too.
    pub fn set_user_names_unique(&self, unique: Option<bool>) {
        *self
            .inner
            .user_names_unique
            .write()
            .unwrap_or_else(|p| p.into_inner()) = unique;
    }

    /// Whether the target enforces unique `userName`s: `Some(false)` once a
    /// listing showed it does not (see [`Self::set_user_names_unique`]), else
    /// what its schema says (`uniqueness`), else `None` (unknown: the target's
    /// 409 is trusted).
    pub fn user_names_unique(&self) -> Option<bool> {
        let learned = *self
            .inner
            .user_names_unique
            .read()
            .unwrap_or_else(|p| p.into_inner());
        learned.or_else(|| self.schema().and_then(|s| s.user_names_unique()))
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
        let shape = flavour_shape(model.payload_shape(), self.inner.flavour);
        let rules = TargetRules {
            folded: model.folded(),
            unheld: model.unheld(),
            fixed: shape.immutable.clone(),
        };
        *self
            .inner
            .learned
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Learned {
            schema: Arc::new(model.clone()),
            shape: Arc::new(shape),
            rules,
        }));
        Ok(model)
    }

    fn learned(&self) -> Option<Arc<Learned>> {
        self.inner
            .learned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The schema read last by [`Self::read_schema`], if any.
    pub fn schema(&self) -> Option<Arc<TargetSchema>> {
        self.learned().map(|l| Arc::clone(&l.schema))
    }

    /// How user payloads are shaped for this target: as its schema says,
    /// except that Atlassian always gets `emails.primary`, which it requires.
    pub fn payload_shape(&self) -> Arc<PayloadShape> {
        self.learned().map_or_else(
            || Arc::clone(&self.inner.default_shape),
            |l| Arc::clone(&l.shape),
        )
    }

    /// How idsync compares what this target holds, as its schema says (empty
    /// until the schema is read).
    pub fn rules(&self) -> TargetRules {
        self.learned().map(|l| l.rules.clone()).unwrap_or_default()
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
        let body = resource::user_to_json_shaped(attrs, active, &self.payload_shape());
        self.refuse_incomplete(
            &body,
            "user",
            &format!("user {user_name:?}"),
            TargetSchema::required_user_paths,
        )?;
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
                resource::user_patch_operations_shaped(&changes, active, &shape),
                |user| resource::apply_user_changes_shaped(user, &changes, active, &shape),
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

    /// Finds a user by `userName` where one is known to exist (after a 409,
    /// or before a create on a target that accepts duplicates): an empty
    /// filter answer is suspect there, since some targets compare `eq`
    /// case-sensitively although `userName` is not case-exact. The users are
    /// then listed (once per client, that is once per cycle) and compared
    /// case-insensitively.
    pub async fn find_user_after_conflict(
        &self,
        user_name: &str,
    ) -> Result<Option<RemoteUser>, ScimError> {
        if let Some(found) = self.find_user_by_user_name(user_name).await? {
            return Ok(Some(found));
        }
        let wanted = UserName::new(user_name);
        let found = self
            .find_listed(|u| u.user_name().as_ref() == Some(&wanted))
            .await?;
        if found.is_some() && !self.inner.warned_eq_case.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target_url = %self.inner.base,
                "the SCIM target's userName eq filter missed a user that a listing holds (it compares case-sensitively?); lookups after a conflict fall back to the listing"
            );
        }
        Ok(found)
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
            u.attrs.get(attr).is_some_and(|v| {
                if case_exact {
                    v == value
                } else {
                    UserName::new(v) == wanted
                }
            })
        };
        // What a server that honoured the filter could return, whichever way it compares.
        let plausible = |u: &RemoteUser| {
            u.attrs
                .get(attr)
                .is_some_and(|v| UserName::new(v) == wanted)
        };
        match self
            .search("Users", attr.name(), value, resource::user_from_json)
            .await?
        {
            Some(users) if users.iter().all(plausible) => {
                Ok(users.into_iter().find(|u| matches(u)))
            }
            Some(_) => {
                self.warn_filter_ignored();
                self.find_listed(matches).await
            }
            None => self.find_listed(matches).await,
        }
    }

    /// Whether a collection (`Users`, `Groups`) holds at least one resource:
    /// one request for one resource, not a read of the collection. Also the
    /// connectivity probe of [`crate::apply::Target::check`].
    pub async fn holds_any(&self, collection: &str) -> Result<bool, ScimError> {
        let page = self.first_page(collection).await?;
        Ok(page.total.is_some_and(|n| n > 0) || !page.resources.is_empty())
    }

    /// The first page of a collection, one resource long where the target
    /// takes `count`.
    async fn first_page(&self, collection: &str) -> Result<resource::ListPage, ScimError> {
        let url = self.url(&[collection]);
        let page = if self.inner.count_refused.load(Ordering::Relaxed) {
            self.list_page(&url, &[], false).await?
        } else {
            let one = [("startIndex", "1".to_string()), ("count", "1".to_string())];
            match self.list_page(&url, &one, true).await {
                // Some servers refuse or fail any `count`: ask with their default
                // page size (one page, whatever its size).
                Err(e) if count_may_be_at_fault(&e) => {
                    self.count_failed(collection, &e);
                    self.list_page(&url, &[], false).await?
                }
                other => other?,
            }
        };
        Ok(page)
    }

    /// Before a create on a target whose `userName` is not case-exact: the
    /// user it already holds under this userName in another case, whatever
    /// it says about uniqueness (some servers enforce it case-sensitively and
    /// would take `Ann@x.com` beside `ann@x.com`). Answered from the cycle's
    /// listing when there is one; else by the `eq` filter, one request a
    /// create, until those requests would have paid for a listing (then the
    /// users are listed once for the cycle); listed at once on a target whose
    /// `eq` compares case-sensitively or that has no filter.
    async fn holder_of(&self, user_name: &str) -> Result<Option<RemoteUser>, ScimError> {
        let wanted = UserName::new(user_name);
        let is = |u: &RemoteUser| u.user_name().as_ref() == Some(&wanted);
        if let Some(listing) = self.users_cache().as_ref() {
            return Ok(listing.users.iter().find(|u| is(u)).cloned());
        }
        let Some(how) = self.create_lookup().await? else {
            return Ok(None);
        };
        let made = self.inner.create_lookups.fetch_add(1, Ordering::Relaxed);
        if !how.eq_folds_case || made >= how.listing_pages {
            return self.find_listed(is).await;
        }
        self.find_user_by_user_name(user_name).await
    }

    /// Works out, once a cycle, how [`Self::holder_of`] looks names up: what
    /// a listing would cost (from the first page's `totalResults`), and
    /// whether `eq` finds a user the target holds when asked in another case.
    /// `None` when the target cannot be asked (nothing is looked up then, and
    /// its 409 is trusted); a refused credential is an error.
    async fn create_lookup(&self) -> Result<Option<CreateLookup>, ScimError> {
        let mut known = self.inner.create_lookup.lock().await;
        if let Some(how) = *known {
            return Ok(Some(how));
        }
        let page = match self.first_page("Users").await {
            Ok(page) => page,
            Err(e) if e.is_auth() => return Err(e),
            Err(_) => return Ok(None),
        };
        let total = page.total.unwrap_or(page.resources.len() as u64);
        let listing_pages = total.div_ceil(u64::from(self.page_size().max(1)));
        let eq_folds_case = if !self.capabilities().filter {
            false
        } else {
            let probe = page
                .resources
                .first()
                .and_then(|r| resource::user_from_json(r).ok())
                .and_then(|u| u.attrs.get(UserAttr::UserName).map(swap_case))
                .filter(|probe| probe.chars().any(char::is_alphabetic));
            match probe {
                Some(probe) => match self
                    .search("Users", "userName", &probe, resource::user_from_json)
                    .await
                {
                    Ok(Some(found)) => !found.is_empty(),
                    Ok(None) => false,
                    Err(e) if e.is_auth() => return Err(e),
                    Err(_) => false,
                },
                // Nothing to ask about (an empty target): a listing is one page.
                None => true,
            }
        };
        if !eq_folds_case && total > 0 {
            tracing::debug!(
                target_url = %self.inner.base,
                "the SCIM target's userName eq filter compares case-sensitively (or there is none): creates look userNames up in one listing of the users"
            );
        }
        let how = CreateLookup {
            listing_pages,
            eq_folds_case,
        };
        *known = Some(how);
        Ok(Some(how))
    }

    /// All users, every page: read once per cycle (see [`Self::begin_cycle`]),
    /// then answered from that listing as kept up to date by this client's
    /// own creates, changes and deletes. A listing with two users of one
    /// userName (case-insensitively) shows the target accepts duplicates:
    /// creates look the userName up first from then on.
    pub async fn list_users(&self) -> Result<Vec<RemoteUser>, ScimError> {
        self.ensure_listed().await?;
        Ok(self
            .users_cache()
            .as_ref()
            .map(|l| l.users.clone())
            .unwrap_or_default())
    }

    /// The user of this cycle's listing that `matches` (listing the users
    /// first if this cycle has not): only the match is copied, so a lookup on
    /// a target without filters costs a scan, not a copy of every user.
    async fn find_listed(
        &self,
        matches: impl Fn(&RemoteUser) -> bool,
    ) -> Result<Option<RemoteUser>, ScimError> {
        self.ensure_listed().await?;
        Ok(self
            .users_cache()
            .as_ref()
            .and_then(|l| l.users.iter().find(|u| matches(u)).cloned()))
    }

    /// Lists the users unless this cycle already has.
    async fn ensure_listed(&self) -> Result<(), ScimError> {
        let _one_at_a_time = self.inner.listing_users.lock().await;
        if self.users_cache().is_some() {
            return Ok(());
        }
        let users = self.list("Users", resource::user_from_json).await?;
        if self.user_names_unique() != Some(false)
            && let Some(name) = duplicate_user_name(&users)
        {
            tracing::warn!(
                user_name = name.as_str(),
                "the SCIM target holds two users with one userName, so it does not refuse duplicates; every create looks the userName up first"
            );
            self.set_user_names_unique(Some(false));
        }
        *self.users_cache() = Some(Listing::new(users));
        Ok(())
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

    /// A group member as this target wants it sent (see
    /// [`resource::member_object`]).
    fn member_object(&self, value: &str, member: &MemberRef) -> Value {
        resource::member_object(
            value,
            member,
            |id| self.url(&["Users", id.as_str()]).to_string(),
            &self.payload_shape(),
        )
    }

    /// Refuses, unsent, a create the target's schema says it would refuse:
    /// `body` lacks a path the schema marks required (nothing could fill it).
    fn refuse_incomplete(
        &self,
        body: &Value,
        resource: &str,
        what: &str,
        required: impl FnOnce(&TargetSchema) -> Vec<String>,
    ) -> Result<(), ScimError> {
        let Some(schema) = self.schema() else {
            return Ok(());
        };
        let missing: Vec<String> = schema::missing_paths(body, &required(&schema))
            .iter()
            .map(|p| schema::published_path(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ScimError::Refused(format!(
            "{what} is not created: the target requires {} on every {resource} (required in its /Schemas) and idsync has no value for {} to send; \
             map {} in the mapping (`idsync check` names what is missing)",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            if missing.len() == 1 { "it" } else { "them" },
        )))
    }

    /// POSTs a group body and reads the created group back.
    async fn post_group(&self, display_name: &str, body: &Value) -> Result<RemoteGroup, ScimError> {
        self.refuse_incomplete(
            body,
            "group",
            &format!("group {display_name:?}"),
            TargetSchema::required_group_paths,
        )?;
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
    async fn change_members(
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
    async fn send_members(
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

    /// The page size in force: the configured one, else the target's
    /// advertised `maxResults`, else 100; never above what the target
    /// advertises nor the flavour's limit (Atlassian 100, others 1000).
    fn page_size(&self) -> u32 {
        let cap = match self.inner.flavour {
            Flavour::Atlassian => ATLASSIAN_MAX_PAGE,
            Flavour::Generic => GENERIC_MAX_PAGE,
        };
        let advertised = self.capabilities().filter_max_results.filter(|n| *n > 0);
        let size = match (self.inner.page_size, advertised) {
            (Some(configured), Some(max)) => configured.min(max),
            (Some(configured), None) => configured,
            (None, Some(max)) => max,
            (None, None) => DEFAULT_PAGE,
        };
        size.clamp(1, cap)
    }

    /// The page size list requests ask for (see [`Self::page_size`]); `None`
    /// when the target failed a request with `count` this cycle.
    pub fn page_size_in_force(&self) -> Option<u32> {
        (!self.inner.count_refused.load(Ordering::Relaxed)).then(|| self.page_size())
    }

    /// Starts a cycle: forgets the user listing and what paging taught, so
    /// this cycle's reads see the target as it is now.
    pub fn begin_cycle(&self) {
        *self.users_cache() = None;
        self.inner.count_refused.store(false, Ordering::Relaxed);
        self.inner.create_lookups.store(0, Ordering::Relaxed);
        if let Ok(mut lookup) = self.inner.create_lookup.try_lock() {
            *lookup = None;
        }
    }

    fn users_cache(&self) -> std::sync::MutexGuard<'_, Option<Listing>> {
        self.inner.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Edits the cycle's user listing, if there is one.
    fn edit_cached_users(&self, edit: impl FnOnce(&mut Listing)) {
        if let Some(users) = self.users_cache().as_mut() {
            edit(users);
        }
    }

    /// The first page of a list request that carries `count` failed: page with
    /// the target's default page size from now on in this cycle, and say so.
    fn count_failed(&self, collection: &str, error: &ScimError) {
        if !self.inner.count_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                collection,
                error = %error,
                "the SCIM target failed a list request carrying `count`; paging with its default page size instead (no `count` sent this cycle)"
            );
        }
    }

    /// GETs one page of a list. A request carrying `count` is tried once
    /// (not retried): any failure but a refused credential or a missing
    /// collection makes the caller fall back to the target's default page size,
    /// where the retry layer applies again.
    async fn list_page(
        &self,
        url: &Url,
        query: &[(&str, String)],
        with_count: bool,
    ) -> Result<resource::ListPage, ScimError> {
        let reply = if with_count {
            let once = RetryPolicy {
                max_attempts: 1,
                ..self.inner.retry
            };
            match self
                .call_with(&once, Method::GET, url.clone(), query, None)
                .await
            {
                // Nothing reached the target: says nothing of `count`; the
                // attempts left are tried as usual.
                Err(ScimError::Transport(_)) if self.inner.retry.max_attempts > 1 => {
                    let rest = RetryPolicy {
                        max_attempts: self.inner.retry.max_attempts - 1,
                        ..self.inner.retry
                    };
                    self.call_with(&rest, Method::GET, url.clone(), query, None)
                        .await?
                }
                other => other?,
            }
        } else {
            self.call(Method::GET, url.clone(), query, None).await?
        };
        resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)
    }

    /// Every resource of a collection, paged (see [`paging`]).
    async fn list<T>(
        &self,
        collection: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Vec<T>, ScimError> {
        let url = self.url(&[collection]);
        let mut pager = if self.inner.count_refused.load(Ordering::Relaxed) {
            Pager::with_server_page_size()
        } else {
            Pager::new(self.page_size())
        };
        tracing::debug!(
            collection,
            page_size = pager
                .count()
                .map_or_else(|| "target default".to_owned(), |n| n.to_string()),
            "listing"
        );
        let mut all = Vec::new();
        loop {
            let mut query = vec![("startIndex", pager.start_index().to_string())];
            if let Some(count) = pager.count() {
                query.push(("count", count.to_string()));
            }
            let first_with_count = pager.start_index() == 1 && pager.count().is_some();
            let page = match self.list_page(&url, &query, first_with_count).await {
                // Some servers refuse or fail any `count` (400, 500, a body that
                // is no list): page with their default size instead.
                Err(e) if first_with_count && count_may_be_at_fault(&e) => {
                    self.count_failed(collection, &e);
                    pager = Pager::with_server_page_size();
                    continue;
                }
                other => other?,
            };
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

    /// Candidates for `attr eq value` from one filtered request; `None` when
    /// the target does not support filters (the caller reads the collection).
    async fn search<T>(
        &self,
        collection: &str,
        attr: &str,
        value: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, ScimError> {
        if !self.capabilities().filter {
            return Ok(None);
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
                return Ok(None);
            }
            other => other?,
        };
        let page = resource::parse_list(reply.json()?).map_err(ScimError::InvalidResponse)?;
        page.resources
            .iter()
            .map(|r| parse(r).map_err(ScimError::InvalidResponse))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
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
        let policy = self.inner.retry;
        self.call_with(&policy, method, url, query, body).await
    }

    /// [`Self::call`] with its own retry policy.
    async fn call_with(
        &self,
        policy: &RetryPolicy,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ScimError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let inner = &self.inner;
        crate::retry::run(
            policy,
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
        let count = |status: u16| {
            *inner
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(status)
                .or_insert(0) += 1;
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                count(0);
                return transport_failure(&e, &inner.redactor);
            }
        };
        let status = response.status();
        count(status.as_u16());
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
        verdict.attempt(error)
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

/// How a cycle looks userNames up before creates (see
/// [`ScimClient::holder_of`]).
#[derive(Clone, Copy, Debug)]
struct CreateLookup {
    /// Requests a listing of the users would take.
    listing_pages: u64,
    /// Whether the `eq` filter on userName ignores case, as the schema says.
    eq_folds_case: bool,
}

/// `Ann@X.com` → `aNN@x.COM`: the same userName in another case.
fn swap_case(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            if c.is_uppercase() {
                c.to_lowercase().collect::<Vec<_>>()
            } else {
                c.to_uppercase().collect::<Vec<_>>()
            }
        })
        .collect()
}

/// What a group POST with retries ended with.
enum GroupCreate {
    /// The target answered the POST.
    Sent(Reply),
    /// A retry found the group an earlier attempt had created.
    Found(RemoteGroup),
}

/// Whether a failed list request that carried `count` may have failed because
/// of it: any answer but a refused credential or a missing collection, and not
/// a target that could not be reached.
fn count_may_be_at_fault(error: &ScimError) -> bool {
    !error.is_auth() && !matches!(error, ScimError::NotFound | ScimError::Transport(_))
}

/// A userName two users share (compared case-insensitively), if any.
fn duplicate_user_name(users: &[RemoteUser]) -> Option<UserName> {
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    users
        .iter()
        .filter_map(RemoteUser::user_name)
        .find(|name| !seen.insert(name.clone()))
}

/// The members in their first-seen order, each id once.
fn distinct(members: &[MemberRef]) -> Vec<MemberRef> {
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    members
        .iter()
        .filter(|m| seen.insert(m.id.as_str()))
        .cloned()
        .collect()
}

/// The `value` a membership change names a member by: its id, or its
/// userName on a target that stores those (a member without one goes by id).
fn member_send_value(member: &MemberRef, by_name: bool) -> String {
    match (&member.user_name, by_name) {
        (Some(name), true) => name.as_str().to_owned(),
        _ => member.id.to_string(),
    }
}

/// The members a change did not settle: for an add, those the group does not
/// hold; for a removal, those it still holds.
fn unsettled_members(held: &RemoteGroup, members: &[MemberRef], add: bool) -> Vec<MemberRef> {
    members
        .iter()
        .filter(|m| held.members.iter().any(|stored| stored.is(m)) != add)
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

fn transport_failure<T>(error: &reqwest::Error, redactor: &Redactor) -> Attempt<T, ScimError> {
    let kind = TransportKind::of(error);
    // A proxy's or TLS library's message may quote what the target sent.
    let error_value = ScimError::Transport(redactor.clean(&error_chain(error)));
    retry::classify(Outcome::Transport(kind), SystemTime::now()).attempt(error_value)
}

/// The error a paced request ends with when the target's reset is past
/// `retry.max_elapsed`.
fn paced_too_long(_: ScimError, t: PacedTooLong) -> ScimError {
    ScimError::RateLimited {
        wait: t.wait,
        left: t.left,
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

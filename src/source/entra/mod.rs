//! The Microsoft Entra ID source, read through Microsoft Graph with delta
//! queries into a local mirror.
//!
//! Delta queries return changes, not a directory. The mirror (users with the
//! selected properties, groups with their names and member ids, the committed
//! delta links) lives in the state DB; a cycle applies the delta pages to a
//! copy and hands the planner the whole directory the copy stands for, so
//! planning, guards and `explain` are the same as for any other source. The
//! engine commits the copy — objects and links in one transaction — only after
//! the cycle applied its plan (or found it empty): a failed cycle reads the
//! same changes again.
//!
//! A full round (every user and group from scratch) runs when there is no
//! committed link, when Graph says the link expired (400/410 with
//! `syncStateNotFound`/`resyncRequired`), when the mapping's `$select` changed,
//! and every `full_every`.
//!
//! With `assign.app`, the enterprise app's assignments
//! (`/servicePrincipals/{id}/appRoleAssignedTo`) are read whole every cycle
//! after the delta rounds (they have no delta) and handed over with the
//! directory; they are not kept in the mirror.
//!
//! Owns: the `source` section for `kind: entra`, the token, Graph requests,
//! the merge rules (`delta`). Does not own: storing the mirror (`state`), when it
//! is committed (`sync`).

mod credential;
mod delta;
mod error;
mod graph;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, LocalBoxFuture};
use serde_saphyr::Spanned;

use super::{MirroredSource, Source, SourceConfigError, SourceError, StreamedRead, UserEach};
use crate::model::{Mirror, SourceAssignments, SourceDirectory, SourceGroup};
use credential::Credential;
pub use delta::{
    AssignmentStats, MirrorRead, PageStats, app_assignments, apply_groups, apply_users, directory,
};
pub use error::EntraError;
use graph::{Answer, Graph, shown};
#[cfg(fuzzing)]
pub(crate) use graph::{renew_at, token_answer};

pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// A full round every day catches anything delta missed (peers do the same).
const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Graph requests per second. The identity quota is shared by every app of the
/// tenant; delta pages hold about 200 users, so this reads 4,000 users a second.
const DEFAULT_RATE_LIMIT: u32 = 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages of one delta round: at about 200 users a page, 20 million objects.
/// A round that does not end by then is a broken server, not a directory.
pub const MAX_PAGES_PER_ROUND: usize = 100_000;
/// What `/groups/delta` selects: the name and the member edges.
const GROUP_SELECT: &str = "displayName,members";

/// The `source:` section for `kind: entra`, as written.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    tenant_id: Spanned<String>,
    client_id: Spanned<String>,
    #[serde(default)]
    client_secret_env: Option<Spanned<String>>,
    #[serde(default)]
    client_secret_file: Option<Spanned<String>>,
    /// A certificate credential: the certificate (PEM) registered with the
    /// app, and its RSA private key (PEM, mode 600).
    #[serde(default)]
    certificate_file: Option<Spanned<String>>,
    #[serde(default)]
    private_key_file: Option<Spanned<String>>,
    #[serde(default)]
    authority_url: Option<Spanned<String>>,
    #[serde(default)]
    graph_url: Option<Spanned<String>>,
    /// A humantime duration (`24h`).
    #[serde(default)]
    full_every: Option<Spanned<String>>,
    /// Graph requests per second.
    #[serde(default)]
    rate_limit: Option<Spanned<u32>>,
    /// Per request (`60s`).
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

/// A checked Entra source configuration (never the secret itself).
#[derive(Clone, Debug)]
pub struct EntraSettings {
    tenant_id: String,
    client_id: String,
    credential: Credential,
    authority_url: String,
    graph_url: String,
    full_every: Duration,
    rate_limit: u32,
    timeout: Duration,
    /// The enterprise app (service principal object id) whose assignments
    /// are read every cycle (`assign.app`).
    app: Option<String>,
}

const README_HINT: &str = "see the Entra ID source section of the README";

fn refuse<T>(field: &Spanned<T>, message: impl Into<String>) -> SourceConfigError {
    SourceConfigError {
        location: field.referenced,
        message: message.into(),
        hint: README_HINT.into(),
    }
}

fn duration(
    name: &str,
    field: Option<&Spanned<String>>,
    default: Duration,
) -> Result<Duration, SourceConfigError> {
    let Some(field) = field else {
        return Ok(default);
    };
    match humantime::parse_duration(field.value.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(refuse(field, format!("{name} must be longer than zero"))),
        Err(e) => Err(refuse(
            field,
            format!(
                "{name} {:?} is not a duration ({e}); write e.g. 30s, 2m or 24h",
                field.value
            ),
        )),
    }
}

fn base_url(
    name: &str,
    field: Option<&Spanned<String>>,
    default: &str,
) -> Result<String, SourceConfigError> {
    let Some(field) = field else {
        return Ok(default.to_string());
    };
    let text = field.value.trim().trim_end_matches('/');
    let parsed = url::Url::parse(text)
        .map_err(|e| refuse(field, format!("{name} {text:?} is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(refuse(
            field,
            format!("{name} {text:?} must be an https:// URL with a host"),
        ));
    }
    if parsed.query().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            field,
            format!("{name} must be a base URL, without credentials or a query"),
        ));
    }
    Ok(text.to_string())
}

impl EntraConfig {
    /// Checks the section; no network and no secrets (`idsync validate`).
    pub fn compile(&self, config_dir: &Path) -> Result<EntraSettings, SourceConfigError> {
        let non_empty = |name: &str, f: &Spanned<String>| {
            let v = f.value.trim();
            if v.is_empty() {
                Err(refuse(f, format!("`{name}` is empty")))
            } else if v.chars().any(|c| c.is_whitespace() || c == '/' || c == '?') {
                Err(refuse(
                    f,
                    format!("`{name}` {v:?} is not an id (a GUID or a domain)"),
                ))
            } else {
                Ok(v.to_string())
            }
        };
        let tenant_id = non_empty("tenant_id", &self.tenant_id)?;
        let client_id = non_empty("client_id", &self.client_id)?;
        let resolve = |f: &Spanned<String>| {
            let p = Path::new(f.value.trim());
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                config_dir.join(p)
            }
        };
        let given: Vec<(&str, &Spanned<String>)> = [
            ("client_secret_env", &self.client_secret_env),
            ("client_secret_file", &self.client_secret_file),
            ("certificate_file", &self.certificate_file),
            ("private_key_file", &self.private_key_file),
        ]
        .into_iter()
        .filter_map(|(name, f)| f.as_ref().map(|f| (name, f)))
        .collect();
        if let Some((name, empty)) = given.iter().find(|(_, f)| f.value.trim().is_empty()) {
            return Err(refuse(*empty, format!("`{name}` is empty")));
        }
        let credential = match (
            &self.client_secret_env,
            &self.client_secret_file,
            &self.certificate_file,
            &self.private_key_file,
        ) {
            (Some(var), None, None, None) => Credential::SecretEnv(var.value.trim().into()),
            (None, Some(file), None, None) => Credential::SecretFile(resolve(file)),
            (None, None, Some(cert), Some(key)) => Credential::Certificate {
                certificate: resolve(cert),
                private_key: resolve(key),
            },
            (None, None, None, None) => {
                return Err(refuse(
                    &self.client_id,
                    "no credential: set `client_secret_env` (an environment variable's name), \
                     `client_secret_file` (a file only idsync can read), or \
                     `certificate_file` and `private_key_file`",
                ));
            }
            (None, None, Some(_), None) | (None, None, None, Some(_)) => {
                let (_, field) = given[0];
                return Err(refuse(
                    field,
                    "a certificate credential needs both `certificate_file` and `private_key_file`",
                ));
            }
            _ => {
                // At the one written last: that is the one to reconsider.
                let at = |l: &serde_saphyr::Location| (l.line(), l.column());
                let (_, later) = given
                    .iter()
                    .max_by_key(|(_, f)| at(&f.referenced))
                    .expect("two or more are set");
                return Err(refuse(
                    *later,
                    format!(
                        "{} are set: use one credential (a client secret from a variable or a \
                         file, or a certificate)",
                        given
                            .iter()
                            .map(|(n, _)| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ));
            }
        };
        let authority_url = base_url(
            "authority_url",
            self.authority_url.as_ref(),
            DEFAULT_AUTHORITY_URL,
        )?;
        let graph_url = base_url("graph_url", self.graph_url.as_ref(), DEFAULT_GRAPH_URL)?;
        let full_every = duration("full_every", self.full_every.as_ref(), DEFAULT_FULL_EVERY)?;
        let timeout = duration("timeout", self.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        let rate_limit = match &self.rate_limit {
            None => DEFAULT_RATE_LIMIT,
            Some(r) if (1..=1000).contains(&r.value) => r.value,
            Some(r) => {
                return Err(refuse(
                    r,
                    format!(
                        "rate_limit {} is out of range: 1 to 1000 requests a second",
                        r.value
                    ),
                ));
            }
        };
        Ok(EntraSettings {
            tenant_id,
            client_id,
            credential,
            authority_url,
            graph_url,
            full_every,
            rate_limit,
            timeout,
            app: None,
        })
    }
}

impl EntraSettings {
    /// Reads the assignments of the enterprise app `app` (its service
    /// principal's object id) every cycle, beside the delta rounds.
    pub fn read_app_assignments(&mut self, app: &str) {
        self.app = Some(app.to_string());
    }
}

impl Source for EntraSettings {
    /// Without a mirror (never used by the engine, which reads through
    /// [`Source::mirrored`]): a full round.
    fn read<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>> {
        Box::pin(async move {
            let (mirror, assignments) = update(self, attributes, Mirror::default()).await?;
            Ok(SourceDirectory {
                assignments,
                ..directory(&mirror)
            })
        })
    }

    fn mirrored(&self) -> Option<&dyn MirroredSource> {
        Some(self)
    }

    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>> {
        Box::pin(async move { Ok(check(self).await?) })
    }

    fn describe(&self) -> String {
        format!("entra tenant {} ({})", self.tenant_id, self.graph_url)
    }
}

impl MirroredSource for EntraSettings {
    fn update<'a>(
        &'a self,
        attributes: &'a BTreeSet<String>,
        mirror: Mirror,
    ) -> BoxFuture<'a, Result<(Mirror, Option<SourceAssignments>), SourceError>> {
        Box::pin(async move { Ok(update(self, attributes, mirror).await?) })
    }

    fn directory<'m>(&self, mirror: &'m Mirror) -> Box<dyn StreamedRead + 'm> {
        Box::new(MirrorRead::new(mirror))
    }
}

impl StreamedRead for MirrorRead<'_> {
    fn groups(&mut self) -> LocalBoxFuture<'_, Result<Vec<SourceGroup>, SourceError>> {
        Box::pin(async move { Ok(MirrorRead::groups(self)) })
    }

    fn users<'a>(
        &'a mut self,
        each: &'a mut UserEach<'_>,
    ) -> LocalBoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            MirrorRead::users(self, |user| each(user, None));
            Ok(())
        })
    }

    fn finish(self: Box<Self>, _groups: &mut [SourceGroup]) -> Result<usize, SourceError> {
        Ok(self.unresolved())
    }
}

/// The user properties to `$select`: `id` and every source attribute the
/// mapping references (sorted, one spelling each), never `*`.
pub fn user_select(attributes: &BTreeSet<String>) -> String {
    let mut names: Vec<&str> = vec!["id"];
    for a in attributes {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(a)) {
            names.push(a);
        }
    }
    names[1..].sort_unstable();
    names.join(",")
}

fn select_hash(user_select: &str) -> String {
    let text = format!("users:{user_select}\ngroups:{GROUP_SELECT}");
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Why the next read is a full round, or `None` when it can continue from
/// the committed links.
fn full_round_reason(
    mirror: &Mirror,
    hash: &str,
    now: i64,
    full_every: Duration,
) -> Option<&'static str> {
    if !mirror.has_links() {
        return Some("no committed delta link");
    }
    if mirror.select_hash != hash {
        return Some("the mapping selects other properties");
    }
    match mirror.full_at {
        Some(at) if now.saturating_sub(at) < full_every.as_secs() as i64 => None,
        _ => Some("full_every has passed since the last full round"),
    }
}

/// Reads the changes since `mirror` (or everything, see the module docs) and
/// returns the updated mirror, with the app's assignments when the config
/// reads them.
pub async fn update(
    settings: &EntraSettings,
    attributes: &BTreeSet<String>,
    mirror: Mirror,
) -> Result<(Mirror, Option<SourceAssignments>), EntraError> {
    let started = Instant::now();
    let select = user_select(attributes);
    let hash = select_hash(&select);
    let graph = Graph::new(settings)?;
    let now = unix_now();
    let (updated, kind) = match full_round_reason(&mirror, &hash, now, settings.full_every) {
        None => match incremental(&graph, mirror).await? {
            Some(m) => (m, "incremental"),
            None => {
                tracing::warn!(
                    "the Entra delta link expired or is unknown to Graph; starting a full round"
                );
                (full(&graph, settings, &select, hash, now).await?, "full")
            }
        },
        Some(reason) => {
            tracing::info!(reason, "Entra full round");
            (full(&graph, settings, &select, hash, now).await?, "full")
        }
    };
    let assignments = match &settings.app {
        Some(app) => Some(read_assignments(&graph, settings, app, &updated).await?),
        None => None,
    };
    tracing::info!(
        round = kind,
        users = updated.users.len(),
        groups = updated.groups.len(),
        graph_requests = graph.requests(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Entra directory read"
    );
    Ok((updated, assignments))
}

/// Continues from the committed links, applying the changes to `mirror` (the
/// engine's copy); `None` when Graph says a link is no longer valid.
async fn incremental(graph: &Graph<'_>, mirror: Mirror) -> Result<Option<Mirror>, EntraError> {
    let mut m = mirror;
    let (Some(users_link), Some(groups_link)) = (m.users_link.clone(), m.groups_link.clone())
    else {
        return Ok(None);
    };
    let Some(link) = round(graph, &users_link, |page| apply_users(&mut m.users, page)).await?
    else {
        return Ok(None);
    };
    m.users_link = Some(link);
    let Some(link) = round(graph, &groups_link, |page| {
        apply_groups(&mut m.groups, page)
    })
    .await?
    else {
        return Ok(None);
    };
    m.groups_link = Some(link);
    Ok(Some(m))
}

/// A full round into an empty mirror.
async fn full(
    graph: &Graph<'_>,
    settings: &EntraSettings,
    select: &str,
    select_hash: String,
    now: i64,
) -> Result<Mirror, EntraError> {
    let mut m = Mirror {
        select_hash,
        full_at: Some(now),
        ..Mirror::default()
    };
    let users = format!("{}/v1.0/users/delta?$select={select}", settings.graph_url);
    let groups = format!(
        "{}/v1.0/groups/delta?$select={GROUP_SELECT}",
        settings.graph_url
    );
    let stale = |url: &str| EntraError::GraphBadAnswer {
        url: shown(url),
        reason: "a new delta round was answered as expired".into(),
    };
    m.users_link = Some(
        round(graph, &users, |page| apply_users(&mut m.users, page))
            .await?
            .ok_or_else(|| stale(&users))?,
    );
    m.groups_link = Some(
        round(graph, &groups, |page| apply_groups(&mut m.groups, page))
            .await?
            .ok_or_else(|| stale(&groups))?,
    );
    Ok(m)
}

/// The enterprise app's assignments, resolved against the updated mirror.
/// Graph's replication can lag behind an assignment made or removed a moment
/// ago; the next cycle reads them again.
async fn read_assignments(
    graph: &Graph<'_>,
    settings: &EntraSettings,
    app: &str,
    mirror: &Mirror,
) -> Result<SourceAssignments, EntraError> {
    let url = assignments_url(settings, app, 999);
    let items = list(graph, &url).await?;
    let (assigned, stats) = app_assignments(&items, mirror);
    if !stats.unknown.is_empty() {
        tracing::warn!(
            count = stats.unknown.len(),
            principals = %stats.unknown.join(", "),
            "users or groups assigned to the app are not in the directory read (not replicated yet, or deleted); left out this cycle"
        );
    }
    tracing::info!(
        assignments = items.len(),
        users = assigned.users.len(),
        groups = assigned.groups.len(),
        service_principals = stats.service_principals,
        "Entra app assignments read"
    );
    Ok(assigned)
}

fn assignments_url(settings: &EntraSettings, app: &str, top: usize) -> String {
    format!(
        "{}/v1.0/servicePrincipals/{app}/appRoleAssignedTo?$top={top}",
        settings.graph_url
    )
}

/// Every item of a paged list (not a delta round): `@odata.nextLink` is
/// followed until a page has none.
async fn list(graph: &Graph<'_>, start: &str) -> Result<Vec<serde_json::Value>, EntraError> {
    let mut next = start.to_string();
    let mut items = Vec::new();
    for _ in 0..MAX_PAGES_PER_ROUND {
        let bad = |reason: &str| EntraError::GraphBadAnswer {
            url: shown(&next),
            reason: reason.to_string(),
        };
        let page = match graph.get(&next).await? {
            Answer::Ok(page) => page,
            Answer::Resync { .. } => return Err(bad("a list answered as an expired delta link")),
        };
        let objects = page["value"]
            .as_array()
            .ok_or_else(|| bad("a page without a `value` list"))?;
        items.extend(objects.iter().cloned());
        match page["@odata.nextLink"].as_str() {
            Some(link) => next = link.to_string(),
            None => return Ok(items),
        }
    }
    Err(EntraError::GraphBadAnswer {
        url: shown(start),
        reason: format!("the list did not end within {MAX_PAGES_PER_ROUND} pages"),
    })
}

/// Follows `@odata.nextLink` from `start` to the `@odata.deltaLink`, giving
/// each page's objects to `apply`. The link in progress is local to the round;
/// only the final delta link is returned. `None`: the link was expired.
async fn round(
    graph: &Graph<'_>,
    start: &str,
    mut apply: impl FnMut(&[serde_json::Value]) -> PageStats,
) -> Result<Option<String>, EntraError> {
    let mut next = start.to_string();
    for _ in 0..MAX_PAGES_PER_ROUND {
        let page = match graph.get(&next).await? {
            Answer::Ok(page) => page,
            Answer::Resync { status, code } => {
                tracing::debug!(status, code = %code, url = %shown(&next), "delta link refused");
                return Ok(None);
            }
        };
        let bad = |reason: &str| EntraError::GraphBadAnswer {
            url: shown(&next),
            reason: reason.to_string(),
        };
        let objects = page["value"]
            .as_array()
            .ok_or_else(|| bad("a delta page without a `value` list"))?;
        let stats = apply(objects);
        tracing::trace!(?stats, "delta page applied");
        if let Some(link) = page["@odata.deltaLink"].as_str() {
            return Ok(Some(link.to_string()));
        }
        match page["@odata.nextLink"].as_str() {
            Some(link) => next = link.to_string(),
            None => return Err(bad("a delta page with neither a nextLink nor a deltaLink")),
        }
    }
    Err(EntraError::GraphBadAnswer {
        url: shown(start),
        reason: format!("the delta round did not end within {MAX_PAGES_PER_ROUND} pages"),
    })
}

/// `idsync check`: a token, one user and one group.
pub async fn check(settings: &EntraSettings) -> Result<String, EntraError> {
    let graph = Graph::new(settings)?;
    let mut found = Vec::new();
    let mut urls: Vec<(String, String)> = ["users", "groups"]
        .iter()
        .map(|what| {
            let url = format!("{}/v1.0/{what}?$select=id&$top=1", settings.graph_url);
            (what.to_string(), url)
        })
        .collect();
    if let Some(app) = &settings.app {
        let what = format!("assignments of enterprise app {app}");
        urls.push((what, assignments_url(settings, app, 1)));
    }
    for (what, url) in urls {
        match graph.get(&url).await? {
            Answer::Ok(page) => {
                let n = page["value"].as_array().map_or(0, Vec::len);
                found.push(if n > 0 {
                    format!("{what} readable")
                } else {
                    format!("NO {what} visible")
                });
            }
            Answer::Resync { status, code } => {
                return Err(EntraError::GraphRefused {
                    url: shown(&url),
                    status,
                    code,
                    message: "unexpected answer to a plain read".into(),
                    permission: None,
                });
            }
        }
    }
    Ok(format!(
        "Entra tenant {}: token obtained for client {}; Graph {} reachable, {}",
        settings.tenant_id,
        settings.client_id,
        settings.graph_url,
        found.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_is_id_plus_the_mapping_attributes_and_never_a_star() {
        let attrs: BTreeSet<String> = ["surname", "accountEnabled", "ID", "mail"]
            .map(String::from)
            .into();
        assert_eq!(user_select(&attrs), "id,accountEnabled,mail,surname");
        assert_eq!(user_select(&BTreeSet::new()), "id");
    }

    #[test]
    fn a_full_round_is_due_without_links_on_a_new_select_and_every_full_every() {
        let day = Duration::from_secs(86_400);
        let mut m = Mirror::default();
        assert!(full_round_reason(&m, "h", 1000, day).is_some());
        m.users_link = Some("u".into());
        m.groups_link = Some("g".into());
        m.select_hash = "h".into();
        m.full_at = Some(1000);
        assert_eq!(full_round_reason(&m, "h", 2000, day), None);
        assert!(full_round_reason(&m, "other", 2000, day).is_some());
        assert!(full_round_reason(&m, "h", 1000 + 86_400, day).is_some());
    }
}

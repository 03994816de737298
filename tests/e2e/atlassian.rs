//! An Atlassian Cloud stand-in, and idsync's Atlassian flavour run against it.
//!
//! Atlassian's user-provisioning API cannot be reached from the tests, so the
//! stand-in plays what Atlassian documents about it, as quirks the proxy plays
//! over the real scim2-server (storage, PATCH and paging stay the real
//! server's; only the documented differences are added):
//!
//! - [`DirectoryPath`]: one directory under `/scim/directory/{id}`; another id,
//!   or an endpoint Atlassian does not list, is a 404; `/v2` locations in
//!   answers (`meta.location`, `Location`, `$ref`) are written back as the
//!   directory's.
//! - [`SingleEqFilters`]: one `eq`, on `userName` or `externalId` for users and
//!   `displayName` for groups; anything else is a 400 `invalidFilter`.
//! - [`PagesOf100`]: pages of at most 100, and `maxResults` 100 advertised.
//! - [`PrimaryEmailRequired`], [`VerifiedDomains`]: a create needs exactly one
//!   primary email, and a create or email change needs a verified domain.
//! - [`UniqueNames`]: userNames unique case-insensitively and group names
//!   unique, refused with Atlassian's 409 bodies.
//! - [`DisplayNameSetsName`]: a write that sets `displayName` overwrites first
//!   and last name from it.
//! - [`NoGroupRename`]: a group's `displayName` cannot change (400 `mutability`).
//! - [`PerSecondBucket`], [`PerMinuteWindow`]: the two 429 shapes Atlassian's
//!   APIs answer (`Retry-After`, or `X-RateLimit-*` with the reset written to
//!   the minute), each switched on by the test that needs it.
//!
//! DELETE is scim2-server's own: the id is gone (404) and bringing the user
//! back is a new POST with a new id, as Atlassian unlinks.
//!
//! The tests check the stand-in itself, then run idsync (`target.kind:
//! atlassian`, the repository's CSV mapping) through a whole lifecycle on it,
//! through display names that disagree with the name parts, and through each
//! rate limit; after every step the target holds what the source says and
//! `plan --full` is empty.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::faults::assert_no_duplicates;
use crate::harness::{
    Directory, Output, ScimServer, TOKEN_ENV, UserRow, Workspace, assert_target_matches, csv_line,
    fresh_token, operations, str_at,
};
use crate::proxy::{
    Answer, Exchange, FaultProxy, Quirk, Upstream, minute_window_429, next_minute, pass_through,
    wait_early_in_a_minute,
};

/// The directory the stand-in serves.
const DIRECTORY_ID: &str = "4f0c2a9e-7b1d-4c3e-9a5f-1e2d3c4b5a69";
/// The organisation's verified domains (the stand-in's and idsync's config).
const VERIFIED: &[&str] = &["example.com"];
/// A domain nobody verified.
const UNVERIFIED: &str = "partner.example.org";
/// The largest page the stand-in serves and advertises.
const MAX_PAGE: u64 = 100;
/// The endpoints Atlassian lists under a directory.
const ENDPOINTS: &[&str] = &[
    "Users",
    "Groups",
    "Schemas",
    "ResourceTypes",
    "ServiceProviderConfig",
];

// ---------------------------------------------------------------------------
// Helpers shared by the quirks

/// The path without its query.
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or("")
}

/// `/v2/Users/abc` names one resource; `/v2/Users` the collection.
fn names_one(path: &str) -> bool {
    path_only(path).split('/').filter(|s| !s.is_empty()).count() > 2
}

/// A query parameter of a request path, decoded.
fn query_param(path: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x{path}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `filter=<attr eq "value">`, percent-encoded.
fn eq_query(attr: &str, value: &str) -> String {
    let filter = format!("{attr} eq {}", json!(value));
    let url = reqwest::Url::parse_with_params("http://x/", &[("filter", filter)]).expect("url");
    url.query().unwrap_or_default().to_owned()
}

/// The resources of the real server's answer to `attr eq value` on `collection`.
fn upstream_find(up: &Upstream, collection: &str, attr: &str, value: &str) -> Vec<Value> {
    let answer = up.call(
        "GET",
        &format!("/v2/{collection}?{}", eq_query(attr, value)),
        "",
    );
    answer
        .json()
        .and_then(|list| list["Resources"].as_array().cloned())
        .unwrap_or_default()
}

/// What a write sets `attr` to: a POST or PUT body's value, or the last PATCH
/// operation that adds or replaces it (by path, or inside a value object).
fn value_set(req: &Exchange, attr: &str) -> Option<Value> {
    let body = req.json()?;
    match req.method.as_str() {
        "POST" | "PUT" => body.get(attr).cloned(),
        "PATCH" => body["Operations"]
            .as_array()?
            .iter()
            .filter(|op| {
                let kind = str_at(op, "op").to_ascii_lowercase();
                kind == "add" || kind == "replace"
            })
            .filter_map(|op| match op.get("path").and_then(Value::as_str) {
                Some(path) if path.eq_ignore_ascii_case(attr) => Some(op["value"].clone()),
                Some(_) => None,
                None => op["value"].get(attr).cloned(),
            })
            .next_back(),
        _ => None,
    }
}

/// The primary email of an `emails` value; the only one when none is marked.
fn primary_email(emails: &Value) -> Option<&str> {
    let list = emails.as_array()?;
    let primary = list.iter().find(|e| e["primary"] == json!(true));
    match (primary, list.as_slice()) {
        (Some(e), _) | (None, [e]) => e["value"].as_str(),
        (None, _) => None,
    }
}

// ---------------------------------------------------------------------------
// The stand-in's quirks

/// One directory under `/scim/directory/{id}`, played over scim2-server's `/v2`.
struct DirectoryPath;

impl DirectoryPath {
    fn prefix() -> String {
        format!("/scim/directory/{DIRECTORY_ID}/")
    }
}

impl Quirk for DirectoryPath {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        let Some(rest) = req.path.strip_prefix(&Self::prefix()) else {
            return Some(Answer::error(404, "Directory not found"));
        };
        let endpoint = rest.split(['/', '?']).next().unwrap_or("");
        if !ENDPOINTS.contains(&endpoint) {
            return Some(Answer::error(404, "Resource not found"));
        }
        req.path = format!("/v2/{rest}");
        None
    }

    fn response(&self, _: &Exchange, answer: &mut Answer, _: &Upstream) {
        let to = Self::prefix();
        for (name, value) in &mut answer.headers {
            if name.eq_ignore_ascii_case("location") {
                *value = value.replacen("/v2/", &to, 1);
            }
        }
        if let Some(mut body) = answer.json() {
            relocate(&mut body, &to);
            answer.body = body.to_string();
        }
    }
}

/// Rewrites every `location` and `$ref` under `value` from `/v2/` to `to`.
fn relocate(value: &mut Value, to: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if key == "location" || key == "$ref" => {
                        *s = s.replacen("/v2/", to, 1);
                    }
                    other => relocate(other, to),
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| relocate(v, to)),
        _ => {}
    }
}

/// A single `eq` on the attributes Atlassian filters on; anything else 400.
struct SingleEqFilters;

/// The attribute of a filter that is one `attr eq "string"` comparison.
fn single_eq_attribute(filter: &str) -> Option<String> {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r#"(?i)^\s*([a-z][a-z0-9_.:$-]*)\s+eq\s+"(?:[^"\\]|\\.)*"\s*$"#)
            .expect("filter regex")
    });
    re.captures(filter).map(|c| c[1].to_owned())
}

impl Quirk for SingleEqFilters {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.method != "GET" {
            return None;
        }
        let filter = query_param(&req.path, "filter")?;
        let (kind, allowed): (&str, &[&str]) = match req.resource() {
            "Users" => ("USER", &["userName", "externalId"]),
            "Groups" => ("GROUP", &["displayName"]),
            _ => return None,
        };
        let ok = single_eq_attribute(&filter)
            .is_some_and(|attr| allowed.iter().any(|a| a.eq_ignore_ascii_case(&attr)));
        (!ok).then(|| {
            Answer::error_typed(
                400,
                "invalidFilter",
                &format!("Resource [{kind}] invalid filter"),
            )
        })
    }
}

/// Pages of at most [`MAX_PAGE`] (also without `count`), and
/// `/ServiceProviderConfig` saying so; no sorting and no `/Bulk`, which
/// Atlassian does not offer.
struct PagesOf100;

impl Quirk for PagesOf100 {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        let listing = req.method == "GET"
            && matches!(req.resource(), "Users" | "Groups")
            && !names_one(&req.path);
        if !listing {
            return None;
        }
        let (base, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let base = base.to_owned();
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        match params.iter_mut().find(|p| p.starts_with("count=")) {
            Some(p) => {
                if p["count=".len()..]
                    .parse::<u64>()
                    .is_ok_and(|n| n > MAX_PAGE)
                {
                    *p = format!("count={MAX_PAGE}");
                }
            }
            None => params.push(format!("count={MAX_PAGE}")),
        }
        req.path = format!("{base}?{}", params.join("&"));
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        if req.resource() != "ServiceProviderConfig" {
            return;
        }
        if let Some(mut spc) = answer.json() {
            spc["filter"]["maxResults"] = json!(MAX_PAGE);
            spc["sort"]["supported"] = json!(false);
            spc["bulk"]["supported"] = json!(false);
            answer.body = spc.to_string();
        }
    }
}

/// A user create needs `emails` with exactly one primary.
struct PrimaryEmailRequired;

impl Quirk for PrimaryEmailRequired {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.method != "POST" || req.resource() != "Users" {
            return None;
        }
        let emails = value_set(req, "emails").unwrap_or(Value::Null);
        let primaries = emails.as_array().map_or(0, |l| {
            l.iter().filter(|e| e["primary"] == json!(true)).count()
        });
        (primaries != 1).then(|| {
            Answer::error_typed(
                400,
                "invalidValue",
                "Resource [USER]: emails must hold exactly one primary email",
            )
        })
    }
}

/// A create or an email change whose primary email is on a domain the
/// organisation has not verified is refused.
struct VerifiedDomains;

impl Quirk for VerifiedDomains {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.resource() != "Users" || !matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
            return None;
        }
        let emails = value_set(req, "emails")?;
        let email = primary_email(&emails)?;
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        let verified = VERIFIED.iter().any(|v| v.eq_ignore_ascii_case(domain));
        (!verified).then(|| {
            Answer::error_typed(
                400,
                "invalidValue",
                &format!(
                    "Resource [USER]: the domain of email[{email}] is not verified in this organization"
                ),
            )
        })
    }
}

/// userNames unique case-insensitively, group names unique; refused with
/// Atlassian's bodies.
struct UniqueNames;

fn user_conflict(email: &str) -> Answer {
    Answer::error_typed(
        409,
        "uniqueness",
        &format!("Resource [USER]: with email[{email}] already exists."),
    )
}

impl Quirk for UniqueNames {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        if req.method != "POST" {
            return None;
        }
        let body = req.json()?;
        match req.resource() {
            "Users" => {
                let name = body["userName"].as_str()?;
                upstream_find(up, "Users", "userName", name)
                    .iter()
                    .any(|u| str_at(u, "userName").eq_ignore_ascii_case(name))
                    .then(|| user_conflict(name))
            }
            "Groups" => {
                let name = body["displayName"].as_str()?;
                upstream_find(up, "Groups", "displayName", name)
                    .iter()
                    .any(|g| str_at(g, "displayName") == name)
                    .then(|| {
                        Answer::error_typed(
                            409,
                            "uniqueness",
                            "Resource [GROUP]: with displayName already exists.",
                        )
                    })
            }
            _ => None,
        }
    }

    /// A rename onto a taken userName, refused by the real server, in
    /// Atlassian's words.
    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        if answer.status != 409 || req.resource() != "Users" {
            return;
        }
        let name = value_set(req, "userName")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *answer = user_conflict(&name);
    }
}

/// Setting `displayName` overwrites first and last name: the first word
/// becomes `name.givenName`, the rest `name.familyName` (none when there is
/// no rest). A write of name parts alone leaves `displayName` as it is.
struct DisplayNameSetsName;

/// `"Lee, Ann"` → (`"Lee,"`, `Some("Ann")`).
fn split_display_name(display: &str) -> Option<(String, Option<String>)> {
    let mut words = display.split_whitespace();
    let first = words.next()?.to_owned();
    let rest: Vec<&str> = words.collect();
    Some((first, (!rest.is_empty()).then(|| rest.join(" "))))
}

impl Quirk for DisplayNameSetsName {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.resource() != "Users" {
            return None;
        }
        let display = value_set(req, "displayName")?;
        let (given, family) = split_display_name(display.as_str()?)?;
        let mut body = req.json()?;
        match req.method.as_str() {
            "POST" | "PUT" => {
                if !body["name"].is_object() {
                    body["name"] = json!({});
                }
                let name = body["name"].as_object_mut()?;
                name.insert("givenName".into(), json!(given));
                match family {
                    Some(f) => name.insert("familyName".into(), json!(f)),
                    None => name.remove("familyName"),
                };
            }
            "PATCH" => {
                let ops = body["Operations"].as_array_mut()?;
                ops.push(json!({ "op": "replace", "path": "name.givenName", "value": given }));
                ops.push(match family {
                    Some(f) => json!({ "op": "replace", "path": "name.familyName", "value": f }),
                    None => json!({ "op": "remove", "path": "name.familyName" }),
                });
            }
            _ => return None,
        }
        req.body = body.to_string();
        None
    }
}

/// Groups cannot be renamed: products key on their names.
struct NoGroupRename;

impl Quirk for NoGroupRename {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        if req.resource() != "Groups"
            || !matches!(req.method.as_str(), "PATCH" | "PUT")
            || !names_one(&req.path)
        {
            return None;
        }
        let wanted = value_set(req, "displayName")?;
        let current = up.call("GET", path_only(&req.path), "").json()?;
        (current["displayName"] != wanted).then(|| {
            Answer::error_typed(
                400,
                "mutability",
                "Resource [GROUP]: displayName cannot be changed",
            )
        })
    }
}

/// A per-second token bucket: `rate` requests a second, `burst` at once; a
/// request without a token gets 429 with `Retry-After` (whole seconds).
struct PerSecondBucket {
    rate: f64,
    burst: f64,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl PerSecondBucket {
    fn new(rate: u32, burst: u32) -> PerSecondBucket {
        PerSecondBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }
}

impl Quirk for PerSecondBucket {
    fn request(&self, _: &mut Exchange, _: &Upstream) -> Option<Answer> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let tokens = (state.0 + self.rate * (now - state.1).as_secs_f64()).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            return None;
        }
        *state = (tokens, now);
        let wait = ((1.0 - tokens) / self.rate).ceil().max(1.0) as u64;
        Some(Answer::error(429, "Too many requests").with_header("Retry-After", wait.to_string()))
    }
}

/// A per-minute window: `limit` requests per UTC minute; past it, 429 with
/// `X-RateLimit-Limit`, `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`
/// at the next minute, written to the minute; no `Retry-After`. Refused
/// requests do not count.
struct PerMinuteWindow {
    limit: u32,
    /// The minute counted (Unix minutes), and its requests so far.
    state: Mutex<(i64, u32)>,
}

impl Quirk for PerMinuteWindow {
    fn request(&self, _: &mut Exchange, _: &Upstream) -> Option<Answer> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = chrono::Utc::now();
        let minute = now.timestamp().div_euclid(60);
        if state.0 != minute {
            *state = (minute, 0);
        }
        if state.1 < self.limit {
            state.1 += 1;
            return None;
        }
        Some(minute_window_429(self.limit, now))
    }
}

/// Which of the documented rate limits the stand-in plays.
#[derive(Clone, Copy)]
enum Limit {
    None,
    PerSecond { rate: u32, burst: u32 },
    PerMinute(u32),
}

/// The stand-in's quirks, in the order they are played: the rate limit first
/// (a refused request reaches nothing), then the path, then the rules.
fn stand_in_quirks(limit: Limit) -> Vec<Arc<dyn Quirk>> {
    let mut quirks: Vec<Arc<dyn Quirk>> = Vec::new();
    match limit {
        Limit::None => {}
        Limit::PerSecond { rate, burst } => {
            quirks.push(Arc::new(PerSecondBucket::new(rate, burst)))
        }
        Limit::PerMinute(limit) => quirks.push(Arc::new(PerMinuteWindow {
            limit,
            state: Mutex::new((0, 0)),
        })),
    }
    quirks.extend([
        Arc::new(DirectoryPath) as Arc<dyn Quirk>,
        Arc::new(SingleEqFilters),
        Arc::new(PagesOf100),
        Arc::new(PrimaryEmailRequired),
        Arc::new(VerifiedDomains),
        Arc::new(UniqueNames),
        Arc::new(DisplayNameSetsName),
        Arc::new(NoGroupRename),
    ]);
    quirks
}

// ---------------------------------------------------------------------------
// The stand-in

/// scim2-server and the proxy playing Atlassian in front of it.
struct StandIn {
    server: ScimServer,
    proxy: FaultProxy,
}

/// An answer read whole: status, headers, body (JSON, or `Null` when empty).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl StandIn {
    fn start(tag: &str, limit: Limit) -> StandIn {
        let server = ScimServer::start(&fresh_token(tag));
        let proxy = FaultProxy::start(server.port(), pass_through());
        proxy.set_quirks(stand_in_quirks(limit));
        StandIn { server, proxy }
    }

    /// `http://127.0.0.1:PORT/scim/directory/<id>`: the base URL Atlassian shows.
    fn base_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/scim/directory/{DIRECTORY_ID}",
            self.proxy.port()
        )
    }

    /// `rest` under the directory: `/Users` → `/scim/directory/<id>/Users`.
    fn at(rest: &str) -> String {
        format!("/scim/directory/{DIRECTORY_ID}{rest}")
    }

    /// One request to the stand-in with the directory's key, as an
    /// administrator's tool sends it; `path` is the whole path.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.proxy.port())).expect("connect to the stand-in");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\
             Accept: application/scim+json\r\nContent-Type: application/scim+json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.proxy.port(),
            self.server.token(),
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send");
        stream.write_all(body.as_bytes()).expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read the answer");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let body = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Answers the stand-in gave that refused a request (400, 409), for
    /// messages and for "idsync never sent what Atlassian refuses".
    fn refusals(&self) -> Vec<String> {
        self.proxy
            .entries()
            .iter()
            .filter(|e| matches!(e.status, Some(400 | 409)))
            .map(|e| format!("{} {} → {:?}: {}", e.method, e.path, e.status, e.body))
            .collect()
    }
}

fn user_body(user_name: &str, given: &str, family: &str, display: Option<&str>) -> Value {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": { "givenName": given, "familyName": family },
        "emails": [{ "value": user_name, "type": "work", "primary": true }],
    });
    if let Some(d) = display {
        body["displayName"] = json!(d);
    }
    body
}

fn patch(operations: Value) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": operations,
    })
}

fn assert_refused(reply: &Reply, status: u16, scim_type: &str, detail: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert_eq!(str_at(&reply.body, "status"), status.to_string(), "{what}");
    assert_eq!(str_at(&reply.body, "scimType"), scim_type, "{what}");
    assert!(
        str_at(&reply.body, "detail").contains(detail),
        "{what}: detail {:?} does not say {detail:?}",
        reply.body["detail"]
    );
}

#[test]
fn atlassian_stand_in_answers_as_documented() {
    let s = StandIn::start("atl-self", Limit::None);
    answers_the_directory_paths_only(&s);
    let ann_id = creates_need_one_primary_email_on_a_verified_domain(&s);
    user_names_are_unique_case_insensitively(&s);
    let lee_id = display_name_overwrites_the_name_parts(&s);
    filters_are_one_eq_on_documented_attributes(&s);
    groups_have_unique_names_members_by_id_and_no_rename(&s, &ann_id, &lee_id);
    pages_hold_at_most_100(&s);
    delete_unlinks(&s, &ann_id);
}

/// Paths: the directory's only.
fn answers_the_directory_paths_only(s: &StandIn) {
    let spc = s.call("GET", &StandIn::at("/ServiceProviderConfig"), None);
    assert_eq!(spc.status, 200);
    assert_eq!(spc.body["filter"]["maxResults"], json!(MAX_PAGE));
    for other in [
        "/scim/directory/00000000-0000-0000-0000-000000000000/Users".to_owned(),
        "/v2/Users".to_owned(),
        StandIn::at("/Bulk"),
    ] {
        assert_eq!(s.call("GET", &other, None).status, 404, "{other}");
    }
}

/// Creates: a primary email on a verified domain; locations rewritten.
/// Returns the id of the user created.
fn creates_need_one_primary_email_on_a_verified_domain(s: &StandIn) -> String {
    let users = StandIn::at("/Users");
    let ann = s.call(
        "POST",
        &users,
        Some(user_body("ann@example.com", "Ann", "Lee", None)),
    );
    assert_eq!(ann.status, 201, "{}", ann.body);
    let ann_id = str_at(&ann.body, "id").to_owned();
    let location = ann.header("Location").unwrap_or_default();
    assert!(
        location.ends_with(&StandIn::at(&format!("/Users/{ann_id}"))),
        "Location {location:?}"
    );
    assert!(
        str_at(&ann.body["meta"], "location").ends_with(&StandIn::at(&format!("/Users/{ann_id}"))),
        "{}",
        ann.body
    );
    let mut no_primary = user_body("bo@example.com", "Bo", "Chen", None);
    no_primary["emails"] = json!([{ "value": "bo@example.com", "type": "work" }]);
    assert_refused(
        &s.call("POST", &users, Some(no_primary)),
        400,
        "invalidValue",
        "exactly one primary",
        "create without a primary email",
    );
    let mut no_emails = user_body("bo@example.com", "Bo", "Chen", None);
    no_emails.as_object_mut().expect("object").remove("emails");
    assert_eq!(s.call("POST", &users, Some(no_emails)).status, 400);
    let stranger = format!("pat@{UNVERIFIED}");
    assert_refused(
        &s.call(
            "POST",
            &users,
            Some(user_body(&stranger, "Pat", "Partner", None)),
        ),
        400,
        "invalidValue",
        "is not verified",
        "create on an unverified domain",
    );
    let moved = s.call(
        "PATCH",
        &StandIn::at(&format!("/Users/{ann_id}")),
        Some(patch(
            json!([{ "op": "replace", "path": "emails", "value": [{ "value": stranger, "primary": true }] }]),
        )),
    );
    assert_refused(
        &moved,
        400,
        "invalidValue",
        "is not verified",
        "email change to an unverified domain",
    );
    ann_id
}

/// userName unique case-insensitively, in Atlassian's words (`ann@example.com`
/// exists).
fn user_names_are_unique_case_insensitively(s: &StandIn) {
    let users = StandIn::at("/Users");
    let twin = s.call(
        "POST",
        &users,
        Some(user_body("ANN@Example.com", "Ann", "Twin", None)),
    );
    assert_eq!(twin.status, 409);
    assert_eq!(
        twin.body,
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": "409",
            "scimType": "uniqueness",
            "detail": "Resource [USER]: with email[ANN@Example.com] already exists.",
        })
    );
}

/// displayName overwrites first and last name; name parts alone do not
/// touch displayName. Returns the id of the user created.
fn display_name_overwrites_the_name_parts(s: &StandIn) -> String {
    let users = StandIn::at("/Users");
    let lee = s.call(
        "POST",
        &users,
        Some(user_body("lee@example.com", "Ann", "Lee", Some("Lee, Ann"))),
    );
    assert_eq!(lee.status, 201, "{}", lee.body);
    assert_eq!(lee.body["name"]["givenName"], "Lee,");
    assert_eq!(lee.body["name"]["familyName"], "Ann");
    let lee_path = StandIn::at(&format!("/Users/{}", str_at(&lee.body, "id")));
    let parts = s.call(
        "PATCH",
        &lee_path,
        Some(patch(json!([
            { "op": "replace", "path": "name.givenName", "value": "Ann" },
            { "op": "replace", "path": "name.familyName", "value": "Lee" },
        ]))),
    );
    assert!(matches!(parts.status, 200 | 204), "{}", parts.body);
    let read = s.call("GET", &lee_path, None).body;
    assert_eq!(
        (
            &read["name"]["givenName"],
            &read["name"]["familyName"],
            &read["displayName"]
        ),
        (&json!("Ann"), &json!("Lee"), &json!("Lee, Ann"))
    );
    s.call(
        "PATCH",
        &lee_path,
        Some(patch(
            json!([{ "op": "replace", "value": { "displayName": "Solo" } }]),
        )),
    );
    let read = s.call("GET", &lee_path, None).body;
    assert_eq!(read["name"]["givenName"], "Solo", "{read}");
    assert_eq!(read["name"].get("familyName"), None, "{read}");
    str_at(&lee.body, "id").to_owned()
}

/// Filters: one `eq` on the documented attributes.
fn filters_are_one_eq_on_documented_attributes(s: &StandIn) {
    let users = StandIn::at("/Users");
    let found = s.call(
        "GET",
        &format!("{users}?{}", eq_query("userName", "ANN@example.com")),
        None,
    );
    assert_eq!(found.status, 200);
    assert_eq!(found.body["totalResults"], 1, "{}", found.body);
    let by_external = s.call(
        "GET",
        &format!("{users}?{}", eq_query("externalId", "nobody")),
        None,
    );
    assert_eq!(by_external.status, 200);
    for filter in [
        r#"displayName eq "Solo""#,
        r#"userName co "ann""#,
        r#"userName sw "ann""#,
        r#"userName eq "ann@example.com" or userName eq "lee@example.com""#,
        r#"userName eq "ann@example.com" and active eq true"#,
        r#"emails.value eq "ann@example.com""#,
    ] {
        let url = reqwest::Url::parse_with_params("http://x/", &[("filter", filter)]).expect("url");
        let reply = s.call(
            "GET",
            &format!("{users}?{}", url.query().unwrap_or_default()),
            None,
        );
        assert_refused(
            &reply,
            400,
            "invalidFilter",
            "Resource [USER] invalid filter",
            filter,
        );
    }
}

/// Groups: unique names, members by id, no rename, one filter.
fn groups_have_unique_names_members_by_id_and_no_rename(s: &StandIn, ann_id: &str, lee_id: &str) {
    let groups = StandIn::at("/Groups");
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Engineering",
        "members": [{ "value": ann_id }],
    });
    let made = s.call("POST", &groups, Some(group.clone()));
    assert_eq!(made.status, 201, "{}", made.body);
    let group_path = StandIn::at(&format!("/Groups/{}", str_at(&made.body, "id")));
    assert_refused(
        &s.call("POST", &groups, Some(group.clone())),
        409,
        "uniqueness",
        "Resource [GROUP]: with displayName already exists.",
        "a second group of that name",
    );
    assert_refused(
        &s.call(
            "PATCH",
            &group_path,
            Some(patch(
                json!([{ "op": "replace", "path": "displayName", "value": "Platform" }]),
            )),
        ),
        400,
        "mutability",
        "cannot be changed",
        "a rename by PATCH",
    );
    let mut renamed = group.clone();
    renamed["displayName"] = json!("Platform");
    assert_refused(
        &s.call("PUT", &group_path, Some(renamed)),
        400,
        "mutability",
        "cannot be changed",
        "a rename by PUT",
    );
    let same_name = s.call(
        "PATCH",
        &group_path,
        Some(patch(json!([
            { "op": "replace", "path": "displayName", "value": "Engineering" },
            { "op": "add", "path": "members", "value": [{ "value": lee_id }] },
        ]))),
    );
    assert!(matches!(same_name.status, 200 | 204), "{}", same_name.body);
    assert_eq!(
        s.call(
            "GET",
            &format!("{groups}?{}", eq_query("displayName", "Engineering")),
            None
        )
        .body["totalResults"],
        1
    );
    assert_refused(
        &s.call("GET", &format!("{groups}?{}", eq_query("id", "x")), None),
        400,
        "invalidFilter",
        "Resource [GROUP] invalid filter",
        "a group filter on id",
    );
}

/// Pages of at most 100, whatever is asked (107 users: two made before, 105
/// here).
fn pages_hold_at_most_100(s: &StandIn) {
    let users = StandIn::at("/Users");
    for i in 0..105 {
        let name = format!("page{i:03}@example.com");
        let reply = s.call("POST", &users, Some(user_body(&name, "Page", "User", None)));
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    for query in ["?startIndex=1&count=1000", "?startIndex=1", ""] {
        let page = s.call("GET", &format!("{users}{query}"), None);
        assert_eq!(page.status, 200, "{query}");
        assert_eq!(page.body["totalResults"], 107, "{query}");
        assert_eq!(
            page.body["Resources"].as_array().map(Vec::len),
            Some(100),
            "{query}"
        );
    }
    let rest = s.call("GET", &format!("{users}?startIndex=101&count=100"), None);
    assert_eq!(rest.body["Resources"].as_array().map(Vec::len), Some(7));
    let listed = rest.body.to_string();
    assert!(!listed.contains("/v2/"), "a /v2/ location leaked: {listed}");
}

/// DELETE unlinks: the id is gone, and coming back is a new POST.
fn delete_unlinks(s: &StandIn, ann_id: &str) {
    let users = StandIn::at("/Users");
    let deleted = s.call("DELETE", &StandIn::at(&format!("/Users/{ann_id}")), None);
    assert_eq!(deleted.status, 204);
    assert_eq!(
        s.call("GET", &StandIn::at(&format!("/Users/{ann_id}")), None)
            .status,
        404
    );
    let back = s.call(
        "POST",
        &users,
        Some(user_body("ann@example.com", "Ann", "Lee", None)),
    );
    assert_eq!(back.status, 201, "{}", back.body);
    assert_ne!(str_at(&back.body, "id"), ann_id);
}

#[test]
fn atlassian_stand_in_rate_limits_answer_in_both_documented_shapes() {
    let spc = StandIn::at("/ServiceProviderConfig");

    let bucket = StandIn::start("atl-bucket", Limit::PerSecond { rate: 2, burst: 2 });
    let answers: Vec<Reply> = (0..3).map(|_| bucket.call("GET", &spc, None)).collect();
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[1].status, 200);
    assert_eq!(answers[2].status, 429);
    assert_eq!(answers[2].header("Retry-After"), Some("1"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(bucket.call("GET", &spc, None).status, 200);

    let window = StandIn::start("atl-window", Limit::PerMinute(3));
    // Four requests inside one minute (if the minute turns, the count starts again).
    wait_early_in_a_minute(55);
    let answers: Vec<Reply> = (0..4).map(|_| window.call("GET", &spc, None)).collect();
    let now = chrono::Utc::now();
    assert!(answers[..3].iter().all(|a| a.status == 200));
    let refused = &answers[3];
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("Retry-After"), None);
    assert_eq!(refused.header("X-RateLimit-Limit"), Some("3"));
    assert_eq!(refused.header("X-RateLimit-Remaining"), Some("0"));
    let reset = refused.header("X-RateLimit-Reset").unwrap_or_default();
    assert_eq!(
        reset,
        next_minute(now).format("%Y-%m-%dT%H:%MZ").to_string(),
        "the reset is the next minute, to the minute"
    );
    assert!(
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\dZ$")
            .expect("regex")
            .is_match(reset),
        "{reset}"
    );
}

// ---------------------------------------------------------------------------
// The source and idsync's config

/// The CSV source: users, and groups by key (`group_id`) with a name and members.
struct Source {
    users: Vec<UserRow>,
    groups: BTreeMap<String, (String, Vec<String>)>,
}

/// A user on the verified domain, `local@example.com`, whose display name is
/// "given family".
fn person(key: &str, local: &str, given: &str, family: &str) -> UserRow {
    UserRow::new(key, &format!("{local}@example.com"), given, family)
}

/// `n` people whose display names agree with their name parts.
fn people(n: usize) -> Vec<UserRow> {
    (1..=n)
        .map(|i| {
            person(
                &format!("p{i:03}"),
                &format!("person{i:03}"),
                &format!("Given{i}"),
                &format!("Family{i}"),
            )
        })
        .collect()
}

fn verified(user: &UserRow) -> bool {
    let domain = user
        .user_name()
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase());
    domain.is_some_and(|d| VERIFIED.contains(&d.as_str()))
}

impl Source {
    /// `users`, and groups `(key, name, members)`.
    fn new(users: Vec<UserRow>, groups: &[(&str, &str, &[&str])]) -> Source {
        let groups = groups
            .iter()
            .map(|(key, name, members)| {
                let members = members.iter().map(|m| (*m).to_owned()).collect();
                ((*key).to_owned(), ((*name).to_owned(), members))
            })
            .collect();
        Source { users, groups }
    }

    fn write(&self, ws: &Workspace) {
        let users = Directory {
            users: self.users.clone(),
            groups: BTreeMap::new(),
        };
        ws.write_file("users.csv", users.users_csv().as_bytes());
        let mut groups = String::from("group_id,group,member\n");
        for (key, (name, members)) in &self.groups {
            if members.is_empty() {
                groups.push_str(&csv_line(&[key.clone(), name.clone(), String::new()]));
                groups.push('\n');
            }
            for m in members {
                groups.push_str(&csv_line(&[key.clone(), name.clone(), m.clone()]));
                groups.push('\n');
            }
        }
        ws.write_file("groups.csv", groups.as_bytes());
    }

    fn user(&self, key: &str) -> &UserRow {
        self.users
            .iter()
            .find(|u| u.id == key)
            .unwrap_or_else(|| panic!("no user {key}"))
    }

    fn user_mut(&mut self, key: &str) -> &mut UserRow {
        self.users
            .iter_mut()
            .find(|u| u.id == key)
            .unwrap_or_else(|| panic!("no user {key}"))
    }

    /// Removes a user and their memberships; returns the user and the groups
    /// they were in.
    fn remove_user(&mut self, key: &str) -> (UserRow, Vec<String>) {
        let pos = self
            .users
            .iter()
            .position(|u| u.id == key)
            .unwrap_or_else(|| panic!("no user {key}"));
        let mut was_in = Vec::new();
        for (group, (_, members)) in &mut self.groups {
            if members.contains(&key.to_owned()) {
                was_in.push(group.clone());
                members.retain(|m| m != key);
            }
        }
        (self.users.remove(pos), was_in)
    }

    fn join(&mut self, group: &str, user: &str) {
        let members = &mut self.groups.get_mut(group).expect("group").1;
        assert!(
            !members.contains(&user.to_owned()),
            "{user} already in {group}"
        );
        members.push(user.to_owned());
    }

    fn leave(&mut self, group: &str, user: &str) {
        let members = &mut self.groups.get_mut(group).expect("group").1;
        assert!(members.contains(&user.to_owned()), "{user} not in {group}");
        members.retain(|m| m != user);
    }

    /// What the target should hold: the users on verified domains, and each
    /// group under the name the target has for it (`names`, by key; the
    /// source's name when absent), with those of its members who are there.
    fn expected(&self, names: &BTreeMap<String, String>) -> Directory {
        let users: Vec<UserRow> = self.users.iter().filter(|u| verified(u)).cloned().collect();
        let groups = self
            .groups
            .iter()
            .map(|(key, (name, members))| {
                let name = names.get(key).unwrap_or(name).clone();
                let members = members
                    .iter()
                    .filter(|m| users.iter().any(|u| &u.id == *m))
                    .cloned()
                    .collect();
                (name, members)
            })
            .collect();
        Directory { users, groups }
    }
}

/// The settings of idsync's config that the tests change.
struct Knobs {
    remove_action: &'static str,
    on_rename: &'static str,
    /// Whether the mapping sends displayName too (the shipped mapping sends
    /// the name parts only, as Atlassian wants; the other SCIM targets' line
    /// adds displayName).
    display_name: bool,
}

/// An Atlassian config as `examples/atlassian.yaml` has it (the repository's
/// CSV mapping, verified domains), fast pacing for the tests, and `knobs`.
fn atlassian_config(base_url: &str, knobs: &Knobs) -> String {
    format!(
        "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
         mapping: {mapping}\n\
         target:\n\
         \x20 kind: atlassian\n\
         \x20 base_url: {base_url}\n\
         \x20 token_env: {TOKEN_ENV}\n\
         \x20 rate_limit: {{ per_second: 1000, burst: 100 }}\n\
         \x20 concurrency: 4\n\
         \x20 timeout: 10s\n\
         \x20 verified_domains: [{verified}]\n\
         policy:\n\
         \x20 remove_action: {remove_action}\n\
         \x20 max_removals: 100%\n\
         \x20 max_member_removals: 100%\n\
         \x20 groups: {{ provision: true, delete: false, on_rename: {on_rename} }}\n\
         state: state/idsync.db\n",
        mapping = if knobs.display_name {
            Workspace::mapping_path()
        } else {
            Workspace::shipped_mapping_path()
        }
        .display(),
        verified = VERIFIED.join(", "),
        remove_action = knobs.remove_action,
        on_rename = knobs.on_rename,
    )
}

/// A stand-in, a workspace whose target it is, and the source.
struct Rig {
    standin: StandIn,
    ws: Workspace,
    knobs: Knobs,
    source: Source,
    /// Group key → the name the target holds it under, where that is not
    /// the source's (a rename kept).
    names: BTreeMap<String, String>,
    /// Users removed under `remove_action: disable`.
    disabled: Vec<UserRow>,
    /// The stderr of every idsync run.
    logs: String,
}

impl Rig {
    fn start(tag: &str, limit: Limit, source: Source) -> Rig {
        let standin = StandIn::start(tag, limit);
        let ws = Workspace::with_target(&standin.base_url(), standin.server.token());
        let mut rig = Rig {
            standin,
            ws,
            knobs: Knobs {
                remove_action: "disable",
                on_rename: "keep",
                display_name: false,
            },
            source,
            names: BTreeMap::new(),
            disabled: Vec::new(),
            logs: String::new(),
        };
        rig.write();
        rig
    }

    /// Writes the config the knobs describe and the source.
    fn write(&mut self) {
        self.ws.raw_config = Some(atlassian_config(&self.standin.base_url(), &self.knobs));
        self.ws.write_config();
        self.source.write(&self.ws);
    }

    /// Runs idsync with `args`, keeps its stderr.
    fn run(&mut self, args: &[&str]) -> Output {
        let out = self.ws.run(args);
        self.logs.push_str(&out.stderr);
        out
    }

    /// `sync` (with `extra` args): exit 0, nothing failed.
    fn sync(&mut self, step: &str, extra: &[&str]) {
        self.write();
        let mut args = vec!["sync", "--format", "json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_eq!(
            out.code,
            0,
            "{step}: `idsync {}` exited {}\n{}\nrefused by the stand-in: {:#?}",
            args.join(" "),
            out.code,
            out.dump(),
            self.standin.refusals()
        );
        let summary = out.json();
        assert_eq!(summary["failed"], 0, "{step}: {summary:#}");
    }

    /// The target holds what the source says (users on unverified domains
    /// absent, leavers disabled), no duplicates; `plan` and `plan --full` are
    /// empty.
    fn assert_settled(&mut self, step: &str) {
        let contents = self.standin.server.contents();
        assert_no_duplicates(&contents);
        let mut expected = self.source.expected(&self.names);
        let mut disabled = self.disabled.clone();
        if !self.knobs.display_name {
            // Not sent, so not idsync's: whatever the target holds (none, or
            // what an admin set by hand).
            let held: BTreeMap<String, String> = contents
                .users
                .iter()
                .map(|u| {
                    (
                        str_at(u, "userName").to_lowercase(),
                        str_at(u, "displayName").to_owned(),
                    )
                })
                .collect();
            for u in expected.users.iter_mut().chain(disabled.iter_mut()) {
                u.display_name = held
                    .get(&u.user_name().to_lowercase())
                    .cloned()
                    .unwrap_or_default();
            }
        }
        let compared = std::panic::catch_unwind(|| {
            assert_target_matches(&expected, &disabled, &contents);
        });
        if let Err(e) = compared {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "after {step}: {msg}\nrefused by the stand-in: {:#?}\nidsync's stderr so far:\n{}",
                self.standin.refusals(),
                self.logs
            );
        }
        for args in [
            &["plan", "--format", "json"][..],
            &["plan", "--full", "--format", "json"][..],
        ] {
            let out = self.run(args);
            assert_eq!(out.code, 0, "{step}: {args:?}\n{}", out.dump());
            let plan = out.json();
            assert!(
                operations(&plan).is_empty(),
                "after {step}: `idsync {}` is not empty:\n{plan:#}",
                args.join(" ")
            );
        }
    }

    /// The SCIM id the target has for user `key` (by userName).
    fn id_of(&self, key: &str) -> String {
        let name = self.source.user(key).user_name();
        self.standin.server.contents().user_id(&name)
    }
}

// ---------------------------------------------------------------------------
// The lifecycle

/// Users of the lifecycle: non-ASCII names, a family name of several words,
/// one user without a display name, two on a domain nobody verified.
fn lifecycle_source() -> Source {
    let mut users = vec![
        person("u01", "ann.lee", "Ann", "Lee"),
        person("u02", "jurgen", "Jürgen", "Müller"),
        person("u03", "jose", "José", "Nuñez"),
        person("u04", "soren", "Søren", "Østergaard"),
        person("u05", "taro", "太郎", "山田"),
        person("u06", "wim", "Wim", "van der Berg"),
        person("u07", "kim", "Kim", "Park"),
        person("u08", "user08", "Given8", "Family8"),
        person("u09", "user09", "Given9", "Family9"),
        person("u10", "user10", "Given10", "Family10"),
        person("u11", "user11", "Given11", "Family11"),
        person("u12", "user12", "Given12", "Family12"),
        UserRow::new("c01", &format!("pat@{UNVERIFIED}"), "Pat", "Partner"),
        UserRow::new("c02", &format!("sam@{UNVERIFIED}"), "Sam", "Supplier"),
    ];
    users[6].display_name.clear();
    Source::new(
        users,
        &[
            ("g1", "Engineering", &["u01", "u02", "u03", "u06", "c01"]),
            ("g2", "Finance", &["u04", "u05", "u07", "c02"]),
            ("g3", "Support", &["u01", "u08", "u09", "u10", "u11", "u12"]),
            ("g4", "Empty", &[]),
        ],
    )
}

#[test]
fn atlassian_stand_in_lifecycle_converges_exactly() {
    let mut rig = Rig::start("atl-life", Limit::None, lifecycle_source());
    initial_sync_skips_the_unverified_domain(&mut rig);
    attribute_changes_converge(&mut rig);
    membership_moves_converge(&mut rig);
    a_disabled_leaver_comes_back_to_the_same_account(&mut rig);
    a_deleted_leaver_comes_back_as_a_new_account(&mut rig);
    a_group_rename_is_kept_then_recreated(&mut rig);
    assert_no_display_name_sent(&rig);
    drift_by_hand_is_repaired(&mut rig);
    assert_nothing_refused_nor_unverified_sent(&rig);
    a_sync_without_changes_writes_nothing(&mut rig);
}

/// Initial sync: users on the unverified domain are skipped with a warning
/// and never sent.
fn initial_sync_skips_the_unverified_domain(rig: &mut Rig) {
    rig.sync("the initial sync", &[]);
    rig.assert_settled("the initial sync");
    for skipped in ["pat@", "sam@"] {
        let said = rig.logs.lines().any(|l| {
            l.contains(&format!("{skipped}{UNVERIFIED}")) && l.contains("target.verified_domains")
        });
        assert!(
            said,
            "no warning that {skipped}{UNVERIFIED} was skipped:\n{}",
            rig.logs
        );
    }
}

/// Attribute changes: a title, a department and an email (so userName),
/// a first name with the display name, a family name alone (no display
/// name), a marriage (family and display name), and the contractor moving
/// to the verified domain.
fn attribute_changes_converge(rig: &mut Rig) {
    rig.source.user_mut("u02").title = "Staff Engineer".into();
    let u03 = rig.source.user_mut("u03");
    u03.department = "Platform".into();
    u03.email = "jose.nunez@example.com".into();
    let u04 = rig.source.user_mut("u04");
    u04.given_name = "Sören".into();
    u04.display_name = "Sören Østergaard".into();
    rig.source.user_mut("u07").family_name = "Park-Lee".into();
    let u08 = rig.source.user_mut("u08");
    u08.family_name = "Smith Jones".into();
    u08.display_name = "Given8 Smith Jones".into();
    rig.source.user_mut("c01").email = "pat@example.com".into();
    rig.sync("attribute changes", &[]);
    rig.assert_settled("attribute changes");
}

/// Membership moves.
fn membership_moves_converge(rig: &mut Rig) {
    rig.source.leave("g1", "u02");
    rig.source.join("g2", "u02");
    rig.source.join("g4", "u07");
    rig.source.leave("g3", "u01");
    rig.sync("membership moves", &[]);
    rig.assert_settled("membership moves");
}

/// A leaver is disabled (and leaves their groups), then comes back to the
/// same account.
fn a_disabled_leaver_comes_back_to_the_same_account(rig: &mut Rig) {
    let before = rig.id_of("u05");
    let (leaver, groups) = rig.source.remove_user("u05");
    rig.disabled.push(leaver.clone());
    rig.sync("a leaver disabled", &[]);
    rig.assert_settled("a leaver disabled");
    rig.disabled.clear();
    rig.source.users.push(leaver);
    for g in &groups {
        rig.source.join(g, "u05");
    }
    rig.sync("the leaver back", &[]);
    rig.assert_settled("the leaver back");
    assert_eq!(rig.id_of("u05"), before, "re-enabled, not created again");
}

/// remove_action: delete: the record is unlinked (404), and a return is a
/// new account.
fn a_deleted_leaver_comes_back_as_a_new_account(rig: &mut Rig) {
    rig.knobs.remove_action = "delete";
    let gone_id = rig.id_of("u09");
    let (leaver, groups) = rig.source.remove_user("u09");
    rig.sync("a leaver deleted", &[]);
    rig.assert_settled("a leaver deleted");
    let read = rig
        .standin
        .call("GET", &StandIn::at(&format!("/Users/{gone_id}")), None);
    assert_eq!(read.status, 404, "deleted means unlinked: {}", read.body);
    rig.source.users.push(leaver);
    for g in &groups {
        rig.source.join(g, "u09");
    }
    rig.sync("the deleted leaver back", &[]);
    rig.assert_settled("the deleted leaver back");
    assert_ne!(rig.id_of("u09"), gone_id, "a new POST, a new id");
}

/// A group renamed in the source: Atlassian cannot rename, so under
/// `keep` the target keeps the old name (and the group stays managed); under
/// `recreate` the new group is made, filled, and the old one deleted. No
/// rename is ever sent.
fn a_group_rename_is_kept_then_recreated(rig: &mut Rig) {
    rig.source.groups.get_mut("g1").expect("g1").0 = "Platform Engineering".into();
    rig.names.insert("g1".into(), "Engineering".into());
    rig.source.join("g1", "u10");
    rig.sync("a group rename kept", &[]);
    rig.assert_settled("a group rename kept");
    assert!(
        rig.logs.contains("keeps its old name"),
        "the kept rename is not said:\n{}",
        rig.logs
    );
    // ...and under `recreate` the new group is made, filled, and the old one
    // deleted.
    rig.knobs.on_rename = "recreate";
    rig.names.clear();
    let old_group = rig.standin.server.contents().group_id("Engineering");
    rig.sync("a group rename recreated", &[]);
    rig.assert_settled("a group rename recreated");
    assert_ne!(
        rig.standin
            .server
            .contents()
            .group_id("Platform Engineering"),
        old_group
    );
    let renames: Vec<_> = rig
        .standin
        .proxy
        .entries()
        .into_iter()
        .filter(|e| e.kind == "PATCH /Groups" && e.body.contains("displayName"))
        .map(|e| e.body)
        .collect();
    assert!(renames.is_empty(), "a rename was sent: {renames:?}");
}

/// So far, the shipped mapping sent the name parts, never displayName
/// (which Atlassian would turn into other name parts).
fn assert_no_display_name_sent(rig: &Rig) {
    let display_names: Vec<String> = rig
        .standin
        .proxy
        .entries()
        .into_iter()
        .filter(|e| e.path.contains("/Users") && e.method != "GET")
        .filter(|e| e.body.contains("displayName"))
        .map(|e| format!("{} {} {}", e.method, e.path, e.body))
        .collect();
    assert!(display_names.is_empty(), "{display_names:#?}");
}

/// Drift made by hand in Atlassian's admin: a title, a display name (which
/// overwrites the name parts: idsync sends those back; the display name is
/// not idsync's), a membership removed, an account deleted.
fn drift_by_hand_is_repaired(rig: &mut Rig) {
    let u10 = rig.id_of("u10");
    let u11 = rig.id_of("u11");
    let u12 = rig.id_of("u12");
    let support = rig.standin.server.contents().group_id("Support");
    for (path, ops) in [
        (
            format!("/Users/{u10}"),
            json!([{ "op": "replace", "path": "title", "value": "Changed by hand" }]),
        ),
        (
            format!("/Users/{u11}"),
            json!([{ "op": "replace", "path": "displayName", "value": "Someone Else" }]),
        ),
        (
            format!("/Groups/{support}"),
            json!([{ "op": "remove", "path": format!("members[value eq \"{u10}\"]") }]),
        ),
    ] {
        let reply = rig
            .standin
            .call("PATCH", &StandIn::at(&path), Some(patch(ops)));
        assert!(matches!(reply.status, 200 | 204), "{path}: {}", reply.body);
    }
    let deleted = rig
        .standin
        .call("DELETE", &StandIn::at(&format!("/Users/{u12}")), None);
    assert_eq!(deleted.status, 204);
    rig.sync("drift by hand + sync --full", &["--full"]);
    rig.assert_settled("drift by hand + sync --full");
}

/// Never a request Atlassian refuses; never one for the user still on the
/// unverified domain.
fn assert_nothing_refused_nor_unverified_sent(rig: &Rig) {
    let refused = rig.standin.refusals();
    assert!(refused.is_empty(), "{refused:#?}");
    let unverified: Vec<String> = rig
        .standin
        .proxy
        .entries()
        .into_iter()
        .filter(|e| e.path.contains(UNVERIFIED) || e.body.contains(UNVERIFIED))
        .map(|e| format!("{} {} {}", e.method, e.path, e.body))
        .collect();
    assert!(unverified.is_empty(), "{unverified:#?}");
}

/// Nothing changed: nothing written.
fn a_sync_without_changes_writes_nothing(rig: &mut Rig) {
    rig.standin.proxy.clear_log();
    rig.sync("a sync without changes", &[]);
    let writes: Vec<String> = rig
        .standin
        .proxy
        .entries()
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(writes.is_empty(), "a no-change sync wrote: {writes:?}");
    rig.assert_settled("a sync without changes");
}

// ---------------------------------------------------------------------------
// Display names that disagree with the name parts

/// What a user PATCH sets: (name parts, displayName).
fn patch_sets(body: &str) -> (bool, bool) {
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut sets = (false, false);
    for op in body["Operations"].as_array().into_iter().flatten() {
        let path = str_at(op, "path").to_ascii_lowercase();
        sets.0 |= path == "name" || path.starts_with("name.") || op["value"].get("name").is_some();
        sets.1 |= path == "displayname" || op["value"].get("displayName").is_some();
    }
    sets
}

/// User PATCHes the stand-in received, by SCIM id: (sets name parts, sets displayName).
fn user_patches(proxy: &FaultProxy) -> BTreeMap<String, Vec<(bool, bool)>> {
    let mut out: BTreeMap<String, Vec<(bool, bool)>> = BTreeMap::new();
    for e in proxy.entries() {
        if e.kind == "PATCH /Users" {
            let id = path_only(&e.path)
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned();
            out.entry(id).or_default().push(patch_sets(&e.body));
        }
    }
    out
}

/// Display names written "Last, First" while the mapping also sends the name
/// parts: Atlassian overwrites first and last name from the display name, so
/// idsync must send the name parts once more (alone), converge, and keep
/// comparing the name parts for everyone.
#[test]
fn atlassian_display_names_written_last_first_converge_and_name_parts_stay_compared() {
    let mut users = vec![
        person("u01", "ann.lee", "Ann", "Lee"),
        person("u02", "bo.chen", "Bo", "Chen"),
        person("u03", "kim", "Kim", "Park"),
        person("u04", "dana", "Dana", "Scully"),
    ];
    users[0].display_name = "Lee, Ann".into();
    users[1].display_name = "Chen, Bo".into();
    users[2].display_name.clear();
    let source = Source::new(users, &[("g1", "Everyone", &["u01", "u02", "u03", "u04"])]);
    let mut rig = Rig::start("atl-last-first", Limit::None, source);
    // A mapping that sends displayName too (the shipped one does not).
    rig.knobs.display_name = true;

    rig.sync("the initial sync", &[]);
    rig.assert_settled("the initial sync");
    let patches = user_patches(&rig.standin.proxy);
    for key in ["u01", "u02"] {
        let sent = patches.get(&rig.id_of(key)).cloned().unwrap_or_default();
        assert_eq!(
            sent,
            vec![(true, false)],
            "{key}: the name parts once more, without displayName (which would overwrite them again)"
        );
    }
    for key in ["u03", "u04"] {
        assert_eq!(
            patches.get(&rig.id_of(key)),
            None,
            "{key}: created as sent, nothing to send again"
        );
    }

    // A later family-name change (a user without a display name, so no
    // overwrite can do it instead) is still pushed.
    rig.standin.proxy.clear_log();
    rig.source.user_mut("u03").family_name = "Park-Lee".into();
    rig.sync("a family-name change", &[]);
    rig.assert_settled("a family-name change");
    let sent = user_patches(&rig.standin.proxy)
        .get(&rig.id_of("u03"))
        .cloned()
        .unwrap_or_default();
    assert!(
        sent.iter().any(|(name, _)| *name),
        "the family-name change was not sent: {sent:?}"
    );

    rig.standin.proxy.clear_log();
    rig.sync("a sync without changes", &[]);
    assert_eq!(
        rig.standin.proxy.writes(),
        0,
        "{}",
        rig.standin.proxy.summary()
    );

    assert!(
        !rig.logs.contains("no longer compared"),
        "one user's display name silenced an attribute:\n{}",
        rig.logs
    );
    let status = rig.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.dump());
    assert!(
        !status.stdout.contains("no longer compared"),
        "{}",
        status.dump()
    );
}

// ---------------------------------------------------------------------------
// Rate limits

/// `n` people in three groups (evens, odds, the first five).
fn crowd(n: usize) -> Source {
    let users = people(n);
    let keys = |pick: &dyn Fn(usize) -> bool| -> Vec<String> {
        users
            .iter()
            .enumerate()
            .filter(|(i, _)| pick(*i))
            .map(|(_, u)| u.id.clone())
            .collect()
    };
    let groups = BTreeMap::from([
        ("g1".to_owned(), ("Evens".to_owned(), keys(&|i| i % 2 == 0))),
        ("g2".to_owned(), ("Odds".to_owned(), keys(&|i| i % 2 == 1))),
        ("g3".to_owned(), ("First Five".to_owned(), keys(&|i| i < 5))),
    ]);
    Source { users, groups }
}

/// A per-minute window of 40 requests, and a first sync that needs about 60:
/// the window shuts once, idsync waits for the minute the reset names (to
/// the minute), and the run ends with everything done.
#[test]
fn atlassian_per_minute_window_is_waited_out_within_one_run() {
    const LIMIT: u32 = 40;
    let mut rig = Rig::start("atl-minute", Limit::PerMinute(LIMIT), crowd(45));
    // Early in a minute: more than LIMIT requests fall in it, and the window
    // then stays shut long enough that only waiting for the reset gets through.
    wait_early_in_a_minute(30);
    rig.sync("one run under a per-minute window", &[]);

    let proxy = &rig.standin.proxy;
    let entries = proxy.entries();
    let refused: Vec<_> = entries.iter().filter(|e| e.status == Some(429)).collect();
    assert!(
        !refused.is_empty() && entries.len() > LIMIT as usize,
        "the window was never exceeded: {}",
        proxy.summary()
    );
    // Only the requests already in flight meet the shut window; after them,
    // nothing arrives before the reset.
    assert!(
        refused.len() <= 8,
        "{} requests refused: {}",
        refused.len(),
        proxy.summary()
    );
    let first = proxy.wall_time(refused[0].arrived);
    let reset = next_minute(first);
    let early: Vec<String> = entries
        .iter()
        .filter(|e| {
            let at = proxy.wall_time(e.arrived);
            at > first + chrono::Duration::seconds(1)
                && at < reset - chrono::Duration::milliseconds(200)
        })
        .map(|e| format!("{} {} at {}", e.method, e.path, proxy.wall_time(e.arrived)))
        .collect();
    assert!(
        early.is_empty(),
        "requests before the reset {reset} named by a 429 at {first}: {early:#?}"
    );
    rig.assert_settled("one run under a per-minute window");
}

/// A per-second bucket (10 a second) that idsync's own pacing does not know
/// about: 429s with `Retry-After` are ridden out within one run.
#[test]
fn atlassian_per_second_bucket_with_retry_after_is_ridden_out_within_one_run() {
    let mut rig = Rig::start(
        "atl-second",
        Limit::PerSecond {
            rate: 10,
            burst: 10,
        },
        crowd(60),
    );
    rig.sync("one run under a per-second bucket", &[]);
    let entries = rig.standin.proxy.entries();
    let refused = entries.iter().filter(|e| e.status == Some(429)).count();
    assert!(
        refused >= 1,
        "the bucket never ran dry: {}",
        rig.standin.proxy.summary()
    );
    assert!(
        refused < entries.len() / 2,
        "more 429s than answers: Retry-After was not waited for: {}",
        rig.standin.proxy.summary()
    );
    rig.assert_settled("one run under a per-second bucket");
}

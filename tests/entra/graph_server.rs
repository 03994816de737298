//! A small stand-in for Microsoft Graph and the Entra token endpoint on
//! 127.0.0.1, answering Graph's documented shapes from an in-memory directory
//! the test edits:
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials; a wrong secret is
//!   `401 invalid_client`);
//! - `GET /v1.0/users/delta?$select=…` and `/v1.0/groups/delta?$select=displayName,members`:
//!   a round is computed when it starts (the changes since the delta token's
//!   snapshot, or everything), split into pages linked by `@odata.nextLink`,
//!   the last one carrying `@odata.deltaLink`. `$select` is honoured (selected
//!   properties never set come back as null) and baked into the round; removed
//!   users carry `@removed` with `changed` (soft-deleted) or `deleted`;
//!   `members@delta` of a big group is split over pages, each page repeating
//!   the group; with `repeat_objects`, every user of a round appears twice
//!   (first with only some properties);
//! - `GET /v1.0/users` and `/v1.0/groups` (`$top`), for `idsync check`;
//! - `GET /v1.0/servicePrincipals/{id}/appRoleAssignedTo` (`$top`): the
//!   enterprise app's `appRoleAssignment`s (principal types `User`, `Group`,
//!   `ServicePrincipal`), paged by `@odata.nextLink` with a `$skiptoken`; no
//!   delta; an unknown service principal is `404 Request_ResourceNotFound`;
//! - faults: expired delta tokens (410 `SyncStateNotFound` or 400
//!   `syncStateNotFound`), 429 with `Retry-After`, 403 on a resource.
//!
//! Every request is counted. Plain threads and blocking sockets, one request
//! per connection (`Connection: close`); every socket has timeouts and the
//! accept loop ends on drop or after at most 15 minutes. Depends on nothing
//! test-only: `examples/entra_bench.rs` includes it with `#[path]`.

#![allow(dead_code)] // not every test uses every knob

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);
const MAX_REQUEST: usize = 1024 * 1024;
/// Group objects (or slices of a big group's members) per delta page.
const GROUPS_PER_PAGE: usize = 2;

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const CLIENT_ID: &str = "0a1b2c3d-1111-2222-3333-444455556666";

/// The lines of a config's `source:` section that point idsync at a
/// stand-in listening at `url` (its `url()`): kind, tenant, client,
/// `credential` (its lines, each ending in a newline) and both URLs. The
/// caller adds what else it wants (`rate_limit:`, `timeout:`, …).
pub fn source_yaml(url: &str, credential: &str) -> String {
    format!(
        "source:\n\
         \x20 kind: entra\n\
         \x20 tenant_id: {TENANT}\n\
         \x20 client_id: {CLIENT_ID}\n\
         {credential}\
         \x20 authority_url: {url}\n\
         \x20 graph_url: {url}\n"
    )
}

/// A user: its properties (without `id`).
pub type Props = Map<String, Value>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    pub name: String,
    /// Member ids (users or groups).
    pub members: BTreeSet<String>,
}

/// One `appRoleAssignment` of an enterprise app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// `User`, `Group` or `ServicePrincipal`.
    pub principal_type: String,
    pub principal_id: String,
    pub principal_name: String,
}

/// The directory the test edits.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub users: BTreeMap<String, Props>,
    /// Soft-deleted users (restorable): reported `@removed: changed`.
    pub deleted_users: BTreeMap<String, Props>,
    pub groups: BTreeMap<String, Group>,
    /// Enterprise apps (service principal object ids) and their assignments.
    pub apps: BTreeMap<String, Vec<Assignment>>,
}

impl Directory {
    /// Assigns the user or group `id` to the app `sp` (found in the directory
    /// by id; anything else is a service principal).
    pub fn assign(&mut self, sp: &str, id: &str) {
        let (principal_type, principal_name) = if let Some(g) = self.groups.get(id) {
            ("Group", g.name.clone())
        } else if let Some(u) = self.users.get(id) {
            let name = u.get("displayName").and_then(Value::as_str).unwrap_or("");
            ("User", name.to_string())
        } else {
            ("ServicePrincipal", "Some daemon app".to_string())
        };
        self.apps
            .entry(sp.to_string())
            .or_default()
            .push(Assignment {
                principal_type: principal_type.into(),
                principal_id: id.to_string(),
                principal_name,
            });
    }

    /// Removes every assignment of `id` to the app `sp`.
    pub fn unassign(&mut self, sp: &str, id: &str) {
        if let Some(list) = self.apps.get_mut(sp) {
            list.retain(|a| a.principal_id != id);
        }
    }

    pub fn soft_delete(&mut self, id: &str) {
        let u = self.users.remove(id).expect("user to soft-delete");
        self.deleted_users.insert(id.to_string(), u);
    }

    pub fn restore(&mut self, id: &str) {
        let u = self.deleted_users.remove(id).expect("user to restore");
        self.users.insert(id.to_string(), u);
    }

    /// A permanent delete (also from the recycle bin).
    pub fn hard_delete(&mut self, id: &str) {
        self.users.remove(id);
        self.deleted_users.remove(id);
    }

    /// The ids of the users of group `id`, groups of groups flattened (each
    /// group once, so a cycle ends).
    pub fn flattened_users(&self, id: &str) -> BTreeSet<String> {
        let mut users = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![id.to_owned()];
        while let Some(next) = todo.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            for m in self
                .groups
                .get(&next)
                .map(|g| &g.members)
                .into_iter()
                .flatten()
            {
                if self.groups.contains_key(m) {
                    todo.push(m.clone());
                } else if self.users.contains_key(m) {
                    users.insert(m.clone());
                }
            }
        }
        users
    }
}

/// What was handed out at the end of a round: the state the next round diffs
/// against.
#[derive(Clone)]
struct Snapshot {
    users: BTreeMap<String, Props>,
    groups: BTreeMap<String, Group>,
    select: Vec<String>,
    expired: bool,
}

struct State {
    dir: Directory,
    /// Round id → its pages (computed when the round started).
    rounds: HashMap<u64, Vec<Value>>,
    snapshots: HashMap<u64, Snapshot>,
    next_id: u64,
    /// Access tokens handed out, with when they stop being accepted.
    tokens: HashMap<String, Instant>,
    token_lifetime: u64,
    secret: String,
    /// A certificate credential accepted besides the secret: the public key
    /// (PEM) and the expected `x5t` thumbprint.
    certificate: Option<(Vec<u8>, String)>,
    /// Knobs.
    pub users_per_page: usize,
    pub members_per_page: usize,
    /// Assignments per `appRoleAssignedTo` page (at most the `$top` asked).
    pub assignments_per_page: usize,
    pub repeat_objects: bool,
    /// Status of an expired delta token: 410 or 400.
    pub expired_status: u16,
    /// The next `n` Graph requests answer 429 with this Retry-After.
    throttle: Option<(usize, u64)>,
    forbid: Option<&'static str>,
    /// Requests: (method, path with query).
    log: Vec<(String, String)>,
    /// Time spent computing answers (under the lock), for the benchmark.
    busy: Duration,
}

pub struct GraphServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl GraphServer {
    /// Starts on a free loopback port; `secret` is the client secret it accepts.
    pub fn start(secret: &str) -> GraphServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            dir: Directory::default(),
            rounds: HashMap::new(),
            snapshots: HashMap::new(),
            next_id: 1,
            tokens: HashMap::new(),
            token_lifetime: 3599,
            secret: secret.to_string(),
            certificate: None,
            users_per_page: 200,
            members_per_page: 400,
            assignments_per_page: 100,
            repeat_objects: true,
            expired_status: 410,
            throttle: None,
            forbid: None,
            log: Vec::new(),
            busy: Duration::ZERO,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || serve(stream, port, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        GraphServer {
            port,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`: both `authority_url` and `graph_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Edits the directory.
    pub fn edit<R>(&self, f: impl FnOnce(&mut Directory) -> R) -> R {
        f(&mut self.state.lock().unwrap().dir)
    }

    pub fn directory(&self) -> Directory {
        self.state.lock().unwrap().dir.clone()
    }

    /// Sets page sizes: users per page, member entries per page.
    pub fn pages(&self, users: usize, members: usize) {
        let mut s = self.state.lock().unwrap();
        s.users_per_page = users;
        s.members_per_page = members;
    }

    /// Sets how many assignments an `appRoleAssignedTo` page holds.
    pub fn assignment_pages(&self, per_page: usize) {
        self.state.lock().unwrap().assignments_per_page = per_page;
    }

    /// Whether every user of a round appears twice (first with only some
    /// properties), as Graph may send them; on by default.
    pub fn repeat_objects(&self, on: bool) {
        self.state.lock().unwrap().repeat_objects = on;
    }

    /// Every delta token handed out so far becomes unknown, answered with
    /// `status` (410 `SyncStateNotFound` or 400 `syncStateNotFound`).
    pub fn expire_tokens(&self, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.expired_status = status;
        for snap in s.snapshots.values_mut() {
            snap.expired = true;
        }
    }

    /// The next `n` Graph requests are answered 429 with `Retry-After: secs`.
    pub fn throttle(&self, n: usize, secs: u64) {
        self.state.lock().unwrap().throttle = Some((n, secs));
    }

    /// Also accepts client assertions signed by the key whose public half is
    /// `public_key_pem`, naming the certificate by `x5t`.
    pub fn accept_certificate(&self, public_key_pem: &[u8], x5t: &str) {
        self.state.lock().unwrap().certificate = Some((public_key_pem.to_vec(), x5t.to_string()));
    }

    /// Access tokens handed out from now on live `secs` seconds.
    pub fn token_lifetime(&self, secs: u64) {
        self.state.lock().unwrap().token_lifetime = secs;
    }

    /// Requests under `/v1.0/{resource}` are answered 403.
    pub fn forbid(&self, resource: &'static str) {
        self.state.lock().unwrap().forbid = Some(resource);
    }

    /// Every request so far: (method, path and query).
    pub fn log(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        let mut s = self.state.lock().unwrap();
        s.log.clear();
        s.busy = Duration::ZERO;
    }

    /// Time spent computing answers since the log was last cleared.
    pub fn busy(&self) -> Duration {
        self.state.lock().unwrap().busy
    }

    /// Requests to Graph (not the token endpoint) so far.
    pub fn graph_requests(&self) -> usize {
        self.log()
            .iter()
            .filter(|(_, p)| p.starts_with("/v1.0/"))
            .count()
    }

    pub fn token_requests(&self) -> usize {
        self.log()
            .iter()
            .filter(|(_, p)| p.contains("/oauth2/"))
            .count()
    }
}

impl Drop for GraphServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length.min(MAX_REQUEST) {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn respond(stream: &mut TcpStream, status: u16, extra: &[(&str, String)], body: &Value) {
    let text = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

fn graph_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    (path.to_string(), params)
}

fn serve(mut stream: TcpStream, port: u16, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let base = format!("http://127.0.0.1:{port}");
    let (status, extra, body) = {
        let mut s = state.lock().unwrap();
        let started = Instant::now();
        let reply = handle(&req, &base, &mut s);
        s.busy += started.elapsed();
        reply
    };
    respond(&mut stream, status, &extra, &body);
}

type Reply = (u16, Vec<(&'static str, String)>, Value);

fn handle(req: &Request, base: &str, s: &mut State) -> Reply {
    s.log.push((req.method.clone(), req.target.clone()));
    let (path, params) = query(&req.target);
    if req.method == "POST" && path == format!("/{TENANT}/oauth2/v2.0/token") {
        let form: HashMap<String, String> = query(&format!("?{}", req.body)).1;
        let common = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("scope") == Some(&format!("{base}/.default"));
        let proof = match (form.get("client_secret"), form.get("client_assertion")) {
            (Some(secret), None) => *secret == s.secret,
            (None, Some(jwt)) => {
                form.get("client_assertion_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    && assertion_ok(jwt, &format!("{base}{path}"), s.certificate.as_ref())
            }
            _ => false,
        };
        let ok = common && proof;
        if !ok {
            return (
                401,
                vec![],
                json!({"error": "invalid_client",
                       "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: 1"}),
            );
        }
        let token = format!("tok-{}", s.next_id);
        s.next_id += 1;
        let lifetime = s.token_lifetime;
        s.tokens.insert(
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        );
        return (
            200,
            vec![],
            json!({"token_type": "Bearer", "expires_in": lifetime, "access_token": token}),
        );
    }
    if req.method != "GET" || !path.starts_with("/v1.0/") {
        return (404, vec![], graph_error("notFound", "no such endpoint"));
    }
    let bearer = req
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let valid = bearer
        .and_then(|t| s.tokens.get(&t).copied())
        .is_some_and(|until| Instant::now() < until);
    if !valid {
        s.log.push(("401".into(), "unauthorized".into()));
        return (
            401,
            vec![],
            graph_error(
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            ),
        );
    }
    if let Some((n, secs)) = s.throttle {
        s.throttle = (n > 1).then_some((n - 1, secs));
        return (
            429,
            vec![("Retry-After", secs.to_string())],
            graph_error("TooManyRequests", "Too many requests"),
        );
    }
    let resource = path
        .trim_start_matches("/v1.0/")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    if s.forbid == Some(resource.as_str()) {
        return (
            403,
            vec![],
            graph_error(
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        );
    }
    match path.as_str() {
        "/v1.0/users" | "/v1.0/groups" => {
            let top: usize = params
                .get("$top")
                .and_then(|t| t.parse().ok())
                .unwrap_or(100);
            let ids: Vec<Value> = if resource == "users" {
                s.dir
                    .users
                    .keys()
                    .take(top)
                    .map(|id| json!({"id": id}))
                    .collect()
            } else {
                s.dir
                    .groups
                    .keys()
                    .take(top)
                    .map(|id| json!({"id": id}))
                    .collect()
            };
            (200, vec![], json!({"value": ids}))
        }
        "/v1.0/users/delta" | "/v1.0/groups/delta" => delta(s, base, &resource, &params),
        _ if path.starts_with("/v1.0/servicePrincipals/")
            && path.ends_with("/appRoleAssignedTo") =>
        {
            let sp = path
                .trim_start_matches("/v1.0/servicePrincipals/")
                .trim_end_matches("/appRoleAssignedTo");
            assignments(s, base, sp, &params)
        }
        _ => (404, vec![], graph_error("notFound", "no such endpoint")),
    }
}

fn delta(s: &mut State, base: &str, resource: &str, params: &HashMap<String, String>) -> Reply {
    let link = |kind: &str, token: String| format!("{base}/v1.0/{resource}/delta?{kind}={token}");
    if let Some(skip) = params.get("$skiptoken") {
        if params.contains_key("$deltatoken") {
            return (
                400,
                vec![],
                graph_error("badRequest", "skip and delta token together"),
            );
        }
        let (round, page) = skip.split_once('p').expect("skip token");
        let (round, page): (u64, usize) = (round.parse().unwrap(), page.parse().unwrap());
        let Some(pages) = s.rounds.get(&round) else {
            return (400, vec![], graph_error("badRequest", "unknown skip token"));
        };
        return (200, vec![], pages[page].clone());
    }
    let (previous, select) = match params.get("$deltatoken") {
        Some(token) => {
            let Some(snap) = token.parse().ok().and_then(|t: u64| s.snapshots.get(&t)) else {
                return (
                    400,
                    vec![],
                    graph_error("syncStateNotFound", "unknown token"),
                );
            };
            if snap.expired {
                let (status, code) = if s.expired_status == 410 {
                    (410, "SyncStateNotFound")
                } else {
                    (400, "syncStateNotFound")
                };
                return (
                    status,
                    vec![],
                    graph_error(code, "The sync state is no longer valid; do a full resync."),
                );
            }
            (Some(snap.clone()), snap.select.clone())
        }
        None => {
            let select: Vec<String> = params
                .get("$select")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            assert!(!select.iter().any(|p| p == "*"), "$select=* is never sent");
            (None, select)
        }
    };
    let objects: Vec<Value> = if resource == "users" {
        user_changes(s, previous.as_ref(), &select)
    } else {
        group_changes(s, previous.as_ref(), s.members_per_page)
    };
    let per_page = if resource == "users" {
        s.users_per_page
    } else {
        GROUPS_PER_PAGE
    };
    let mut chunks: Vec<Vec<Value>> = objects
        .chunks(per_page.max(1))
        .map(<[Value]>::to_vec)
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let round = s.next_id;
    s.next_id += 1;
    let snap = Snapshot {
        users: s.dir.users.clone(),
        groups: s.dir.groups.clone(),
        select,
        expired: false,
    };
    // The token id is this round's id: the snapshot is what the round handed out.
    s.snapshots.insert(round, snap);
    let n = chunks.len();
    let pages: Vec<Value> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let mut page = json!({"@odata.context": format!("{base}/v1.0/$metadata#{resource}"), "value": value});
            if i + 1 < n {
                page["@odata.nextLink"] = json!(link("$skiptoken", format!("{round}p{}", i + 1)));
            } else {
                page["@odata.deltaLink"] = json!(link("$deltatoken", round.to_string()));
            }
            page
        })
        .collect();
    let first = pages[0].clone();
    s.rounds.insert(round, pages);
    (200, vec![], first)
}

/// A page of the app `sp`'s assignments, from `$skiptoken` (an offset).
fn assignments(s: &State, base: &str, sp: &str, params: &HashMap<String, String>) -> Reply {
    let Some(all) = s.dir.apps.get(sp) else {
        return (
            404,
            vec![],
            graph_error(
                "Request_ResourceNotFound",
                &format!(
                    "Resource '{sp}' does not exist or one of its queried reference-property objects are not present."
                ),
            ),
        );
    };
    let top: usize = params
        .get("$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    let per_page = top.min(s.assignments_per_page).max(1);
    let from: usize = params
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let value: Vec<Value> = all
        .iter()
        .enumerate()
        .skip(from)
        .take(per_page)
        .map(|(i, a)| {
            json!({
                "id": format!("assignment-{i}"),
                "appRoleId": "00000000-0000-0000-0000-000000000000",
                "principalType": a.principal_type,
                "principalId": a.principal_id,
                "principalDisplayName": a.principal_name,
                "resourceId": sp,
                "resourceDisplayName": "Atlassian Cloud"
            })
        })
        .collect();
    let mut page = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#servicePrincipals('{sp}')/appRoleAssignedTo"),
        "value": value
    });
    if from + per_page < all.len() {
        page["@odata.nextLink"] = json!(format!(
            "{base}/v1.0/servicePrincipals/{sp}/appRoleAssignedTo?$top={top}&$skiptoken={}",
            from + per_page
        ));
    }
    (200, vec![], page)
}

/// A user as Graph sends it: `id` and every selected property (null when not set).
fn shape(id: &str, props: &Props, select: &[String]) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(id));
    for name in select.iter().filter(|n| *n != "id") {
        out.insert(
            name.clone(),
            props.get(name).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

fn user_changes(s: &State, previous: Option<&Snapshot>, select: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for (id, props) in &s.dir.users {
        let changed = previous.is_none_or(|p| {
            p.users
                .get(id)
                .is_none_or(|old| select.iter().any(|n| old.get(n) != props.get(n)))
        });
        if changed {
            out.push(shape(id, props, select));
        }
    }
    if s.repeat_objects && !out.is_empty() {
        // Each changed user also comes first with only one of its selected
        // properties (the same object twice in one round; the later one
        // completes it).
        let first = select.iter().find(|n| *n != "id");
        let partial: Vec<Value> = out
            .iter()
            .filter_map(|u| {
                let name = first?;
                Some(json!({"id": u["id"], name.as_str(): u.get(name.as_str()).cloned().unwrap_or(Value::Null)}))
            })
            .collect();
        let mut all = partial;
        all.append(&mut out);
        out = all;
    }
    if let Some(p) = previous {
        for id in p.users.keys().filter(|id| !s.dir.users.contains_key(*id)) {
            let reason = if s.dir.deleted_users.contains_key(id) {
                "changed"
            } else {
                "deleted"
            };
            out.push(json!({"id": id, "@removed": {"reason": reason}}));
        }
    }
    out
}

fn member(id: &str, s: &State, removed: bool) -> Value {
    let kind = if s.dir.groups.contains_key(id) {
        "#microsoft.graph.group"
    } else {
        "#microsoft.graph.user"
    };
    let mut m = json!({"@odata.type": kind, "id": id});
    if removed {
        m["@removed"] = json!({"reason": "deleted"});
    }
    m
}

/// Changed groups, each split into slices of at most `per_page` member
/// entries (every slice repeats the group's id and name).
fn group_changes(s: &State, previous: Option<&Snapshot>, per_page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for (id, group) in &s.dir.groups {
        let old = previous.and_then(|p| p.groups.get(id));
        if old == Some(group) {
            continue;
        }
        let mut entries: Vec<Value> = Vec::new();
        let old_members = old.map(|g| g.members.clone()).unwrap_or_default();
        for m in group.members.difference(&old_members) {
            entries.push(member(m, s, false));
        }
        for m in old_members.difference(&group.members) {
            entries.push(member(m, s, true));
        }
        if entries.is_empty() {
            out.push(json!({"id": id, "displayName": group.name}));
        }
        for slice in entries.chunks(per_page.max(1)) {
            out.push(json!({"id": id, "displayName": group.name, "members@delta": slice}));
        }
    }
    if let Some(p) = previous {
        for id in p.groups.keys().filter(|id| !s.dir.groups.contains_key(*id)) {
            out.push(json!({"id": id, "@removed": {"reason": "deleted"}}));
        }
    }
    out
}

/// A client assertion as Entra checks it: RS256 signed by the registered
/// certificate's key, named by its thumbprint, for this token endpoint, from
/// the client, not expired.
fn assertion_ok(jwt: &str, token_url: &str, certificate: Option<&(Vec<u8>, String)>) -> bool {
    let Some((public_key, x5t)) = certificate else {
        return false;
    };
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return false;
    };
    if header.alg != jsonwebtoken::Algorithm::RS256 || header.x5t.as_deref() != Some(x5t.as_str()) {
        return false;
    }
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(public_key) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => data.claims["sub"] == CLIENT_ID && data.claims["jti"].is_string(),
        Err(_) => false,
    }
}

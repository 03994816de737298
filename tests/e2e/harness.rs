//! Shared harness of the end-to-end tests: a real `scim2-server` on loopback
//! (`ScimServer`), a throw-away working directory with config, CSV files and state
//! (`Workspace`) that runs the built `idsync` binary, a generator of CSV
//! directories (`Directory`), and the comparison of a target's contents with what
//! a directory should have produced (`assert_target_matches`).
//!
//! Everything here is synchronous: HTTP calls to the server go through a private
//! current-thread tokio runtime, so tests are plain `#[test]` functions.
//!
//! Safety rules every test inherits: servers listen on 127.0.0.1 only and are killed
//! by PID on drop (also on panic); every wait is bounded; the bearer token must never
//! appear in anything `idsync` prints (checked on every run).

#![allow(dead_code)] // not every test module uses every helper

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// SCIM schema URNs used by the default CSV mapping.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// How long one `idsync` invocation may take before the harness kills it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `scim2-server` may take to answer after start.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on list pages read from the server (1000 per page).
const MAX_PAGES: usize = 1000;

/// The environment variable the generated configs name in `target.token_env`.
pub const TOKEN_ENV: &str = "IDSYNC_TEST_TOKEN";

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A token unlikely to appear anywhere by accident (so the "never printed" check
/// has no false positives).
pub fn fresh_token(tag: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("tok-{tag}-{}-{n}-{nanos:09}-Zq7", std::process::id())
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free port on 127.0.0.1 (bound and released; the small race with other
/// processes is handled by the callers retrying when their server fails to bind).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------
// Child processes

/// Kills a child process by PID when dropped (also while unwinding from a panic).
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `Some(exit code)` once the process has exited (-1 when killed by a signal).
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            Ok(None) => None,
            Err(e) => panic!("waiting for {}: {e}", self.what),
        }
    }

    fn take(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to exactly this PID.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one `idsync` run printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Output {
    /// Panics with the whole output unless the exit code is `expected`.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code,
            expected,
            "`idsync {}` exited {} (expected {expected})\n{}",
            self.args.join(" "),
            self.code,
            self.dump()
        );
        self
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout of `idsync {}` is not JSON ({e})\n{}",
                self.args.join(" "),
                self.dump()
            )
        })
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.stdout, self.stderr
        )
    }
}

fn read_pipe<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// An `idsync` process started in the background (see `Workspace::spawn`).
pub struct Running {
    guard: ChildGuard,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    args: Vec<String>,
    secrets: Vec<String>,
}

impl Running {
    pub fn is_running(&mut self) -> bool {
        self.guard.try_exit_code().is_none()
    }

    /// Waits (bounded by `timeout`) for the process to end; kills it and panics
    /// when it does not.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(code) = self.guard.try_exit_code() {
                break code;
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.guard.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let out = self.collect(-1);
                panic!(
                    "`idsync {}` did not finish within {timeout:?}; killed\n{}",
                    out.args.join(" "),
                    out.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.guard.take().map(|mut c| c.wait());
        self.collect(code)
    }

    fn collect(&mut self, code: i32) -> Output {
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let out = Output {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            args: self.args.clone(),
        };
        assert_no_secret(&out, &self.secrets);
        out
    }
}

/// Panics if any secret appears in what `idsync` printed.
fn assert_no_secret(out: &Output, secrets: &[String]) {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains(secret.as_str()),
                "the bearer token appears in the {stream} of `idsync {}`: secrets must never be printed",
                out.args.join(" ")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// scim2-server

/// Users and groups read from a SCIM server.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetContents {
    pub users: Vec<Value>,
    pub groups: Vec<Value>,
}

impl TargetContents {
    /// The users whose `userName` equals `user_name` (case-insensitively).
    pub fn users_named(&self, user_name: &str) -> Vec<&Value> {
        self.users
            .iter()
            .filter(|u| str_at(u, "userName").eq_ignore_ascii_case(user_name))
            .collect()
    }

    /// The one user named `user_name`; panics when there is none or more than one.
    pub fn user(&self, user_name: &str) -> &Value {
        let found = self.users_named(user_name);
        assert_eq!(
            found.len(),
            1,
            "expected exactly one user with userName {user_name:?}, found {}",
            found.len()
        );
        found[0]
    }

    pub fn user_id(&self, user_name: &str) -> String {
        str_at(self.user(user_name), "id").to_owned()
    }

    pub fn group(&self, display_name: &str) -> Option<&Value> {
        self.groups
            .iter()
            .find(|g| str_at(g, "displayName") == display_name)
    }

    pub fn group_id(&self, display_name: &str) -> String {
        let g = self
            .group(display_name)
            .unwrap_or_else(|| panic!("no group {display_name:?} on the target"));
        str_at(g, "id").to_owned()
    }

    /// The same contents without the users named `user_name` (a stray account made
    /// by hand that a sync must leave alone).
    pub fn without_user(&self, user_name: &str) -> TargetContents {
        TargetContents {
            users: self
                .users
                .iter()
                .filter(|u| !str_at(u, "userName").eq_ignore_ascii_case(user_name))
                .cloned()
                .collect(),
            groups: self.groups.clone(),
        }
    }

    /// The contents with server-maintained metadata (`meta`: timestamps, versions)
    /// removed, and users/groups sorted by id, for before/after equality checks.
    pub fn normalized(&self) -> TargetContents {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("meta");
            }
            v
        };
        let mut users: Vec<Value> = self.users.iter().map(strip).collect();
        let mut groups: Vec<Value> = self.groups.iter().map(strip).collect();
        users.sort_by(|a, b| str_at(a, "id").cmp(str_at(b, "id")));
        groups.sort_by(|a, b| str_at(a, "id").cmp(str_at(b, "id")));
        for g in &mut groups {
            if let Some(Value::Array(members)) = g.get_mut("members") {
                members.sort_by(|a, b| str_at(a, "value").cmp(str_at(b, "value")));
            }
        }
        TargetContents { users, groups }
    }
}

/// `scim2-server` running on a free loopback port; killed by PID on drop.
pub struct ScimServer {
    guard: ChildGuard,
    port: u16,
    token: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    _log_dir: tempfile::TempDir,
}

fn scim2_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("IDSYNC_SCIM2_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "IDSYNC_SCIM2_SERVER={} does not exist\nhint: run scripts/test-env.sh",
            p.display()
        );
        return p;
    }
    let p = manifest_dir().join(".test-env/venv/bin/scim2-server");
    assert!(
        p.exists(),
        "scim2-server not found (neither $IDSYNC_SCIM2_SERVER nor {})\nhint: run scripts/test-env.sh",
        p.display()
    );
    p
}

impl ScimServer {
    /// Starts a server that requires `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> ScimServer {
        let program = scim2_server_path();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .expect("reqwest client");
        let log_dir = tempfile::tempdir().expect("tempdir");
        let mut last_log = String::new();
        // A few attempts: another process may take the port between our probe and
        // the server's bind.
        for attempt in 0..5 {
            let port = free_port();
            let log_path = log_dir.path().join(format!("scim2-server-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("server log");
            let child = Command::new(&program)
                .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
                .args(["--bearer-token", token])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
            let mut guard = ChildGuard::new(child, format!("scim2-server on port {port}"));
            let url = format!("http://127.0.0.1:{port}/v2/ServiceProviderConfig");
            let users_url = format!("http://127.0.0.1:{port}/v2/Users?count=1");
            let deadline = Instant::now() + SERVER_START_TIMEOUT;
            let ready = loop {
                if guard.try_exit_code().is_some() {
                    break false; // most likely the port was taken
                }
                // Ready when the public endpoint answers and our own token is
                // accepted: tokens are unique per test, so a stranger that took
                // the port (another test's server) answers 401 here.
                let answered = runtime.block_on(async {
                    let get = |u: String| {
                        http.get(u)
                            .bearer_auth(token)
                            .timeout(Duration::from_secs(2))
                            .send()
                    };
                    match get(url.clone()).await {
                        Ok(r) if r.status().is_success() => {}
                        _ => return false,
                    }
                    matches!(get(users_url.clone()).await, Ok(r) if r.status().is_success())
                });
                if answered && guard.try_exit_code().is_none() {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if ready {
                return ScimServer {
                    guard,
                    port,
                    token: token.to_owned(),
                    runtime,
                    http,
                    _log_dir: log_dir,
                };
            }
            drop(guard);
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!(
            "scim2-server did not start ({}); last log:\n{last_log}\nhint: run scripts/test-env.sh",
            program.display()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `http://127.0.0.1:PORT/v2`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request_at(&self.base_url(), method, path, body)
    }

    /// One request with this server's token to `base` (the server itself, or a
    /// proxy in front of it): the status and the JSON answer.
    pub fn request_at(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{base}{path}");
        self.runtime.block_on(async {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .header("Accept", "application/scim+json");
            if let Some(body) = body {
                req = req
                    .header("Content-Type", "application/scim+json")
                    .body(body.to_string());
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            (status, value)
        })
    }

    fn expect_status(&self, what: &str, got: (u16, Value), ok: &[u16]) -> Value {
        assert!(
            ok.contains(&got.0),
            "{what}: HTTP {} (expected one of {ok:?}): {}",
            got.0,
            got.1
        );
        got.1
    }

    /// Every resource of `/Users` or `/Groups`, paged 1000 at a time (bounded).
    fn list_all(&self, resource: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut start = 1usize;
        for _ in 0..MAX_PAGES {
            let page = self.expect_status(
                &format!("list {resource}"),
                self.request(
                    reqwest::Method::GET,
                    &format!("/{resource}?startIndex={start}&count=1000"),
                    None,
                ),
                &[200],
            );
            let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
            let items = page["Resources"].as_array().cloned().unwrap_or_default();
            let n = items.len();
            all.extend(items);
            start += n;
            if n == 0 || all.len() >= total {
                return all;
            }
        }
        panic!("listing {resource} did not end within {MAX_PAGES} pages");
    }

    pub fn users(&self) -> Vec<Value> {
        self.list_all("Users")
    }

    pub fn groups(&self) -> Vec<Value> {
        self.list_all("Groups")
    }

    pub fn contents(&self) -> TargetContents {
        TargetContents {
            users: self.users(),
            groups: self.groups(),
        }
    }

    /// Creates a user by hand (as an administrator would in the target's UI).
    /// Returns the new SCIM id.
    pub fn create_user(&self, user: Value) -> String {
        let created = self.expect_status(
            "create user by hand",
            self.request(reqwest::Method::POST, "/Users", Some(user)),
            &[201],
        );
        str_at(&created, "id").to_owned()
    }

    /// A plain user body with the attributes the CSV mapping writes.
    pub fn user_body(row: &UserRow) -> Value {
        let email = row.email.trim();
        let mut u = json!({
            "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
            "userName": email,
            "externalId": row.id,
            "name": { "givenName": row.given_name, "familyName": row.family_name },
            "emails": [ { "value": email, "type": "work", "primary": true } ],
            "active": row.active,
        });
        if !row.display_name.is_empty() {
            u["displayName"] = json!(row.display_name);
        }
        if !row.title.is_empty() {
            u["title"] = json!(row.title);
        }
        if !row.department.is_empty() {
            u[ENTERPRISE_SCHEMA] = json!({ "department": row.department });
        }
        u
    }

    /// Creates a group by hand; returns its SCIM id.
    pub fn create_group(&self, display_name: &str, members: Vec<Value>) -> String {
        let created = self.expect_status(
            "create group by hand",
            self.request(
                reqwest::Method::POST,
                "/Groups",
                Some(json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": display_name,
                    "members": members,
                })),
            ),
            &[201],
        );
        str_at(&created, "id").to_owned()
    }

    pub fn patch_user_title(&self, id: &str, title: &str) {
        self.patch(
            &format!("/Users/{id}"),
            json!([{ "op": "replace", "path": "title", "value": title }]),
        );
    }

    pub fn delete_user(&self, id: &str) {
        self.expect_status(
            "delete user by hand",
            self.request(reqwest::Method::DELETE, &format!("/Users/{id}"), None),
            &[204, 200],
        );
    }

    /// Removes one member from a group by hand (scim2-server wants the filtered
    /// path form).
    pub fn remove_group_member(&self, group_id: &str, user_id: &str) {
        self.patch(
            &format!("/Groups/{group_id}"),
            json!([{ "op": "remove", "path": format!("members[value eq \"{user_id}\"]") }]),
        );
    }

    fn patch(&self, path: &str, operations: Value) {
        self.expect_status(
            &format!("PATCH {path}"),
            self.request(
                reqwest::Method::PATCH,
                path,
                Some(json!({ "schemas": [PATCH_SCHEMA], "Operations": operations })),
            ),
            &[200, 204],
        );
    }
}

// ---------------------------------------------------------------------------
// Fake targets for failure modes

/// A TCP listener on loopback that accepts connections and never answers (a hung
/// target). Counts the connections; stops accepting and closes them on drop.
pub struct SilentTarget {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentTarget {
    pub fn start() -> SilentTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let held: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());
                // Bounded: at most 10 minutes, or until dropped.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            held.lock().expect("lock").push(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        SilentTarget {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for SilentTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A base URL on loopback where nothing listens.
pub fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}/v2", free_port())
}

/// Waits (bounded) until `cond` holds; false on time-out.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// Workspace

/// A temporary directory with `users.csv`, `groups.csv`, `config.yaml` and a
/// `state/` folder, running `idsync` against one target.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// The token handed to idsync through `IDSYNC_TEST_TOKEN`.
    pub token: String,
    /// Other secrets that must not be printed either (e.g. the server's real token
    /// when `token` is deliberately wrong).
    pub extra_secrets: Vec<String>,
    pub base_url: String,
    /// `policy.remove_action`: `disable` | `delete`.
    pub remove_action: String,
    /// `policy.max_removals`, e.g. `100%`, `10%`, `5`.
    pub max_removals: String,
    /// `policy.max_member_removals`, e.g. `100%`; `None` leaves it out (the
    /// default applies).
    pub max_member_removals: Option<String>,
    /// `policy.groups.delete`.
    pub groups_delete: bool,
    /// `target.timeout`.
    pub timeout: String,
    /// When set, written as `config.yaml` verbatim instead of the generated config.
    pub raw_config: Option<String>,
    /// When set, `idsync` runs under this umask (through `sh -c 'umask …'`).
    pub umask: Option<u32>,
    /// More environment variables for `idsync` (e.g. a webhook URL).
    pub env: Vec<(String, String)>,
}

impl Workspace {
    /// A workspace whose target is `server`, with its token.
    pub fn new(server: &ScimServer) -> Workspace {
        Workspace::with_target(&server.base_url(), server.token())
    }

    pub fn with_target(base_url: &str, token: &str) -> Workspace {
        let mapping = Self::mapping_path();
        assert!(
            mapping.exists(),
            "the default CSV mapping {} is missing; the e2e tests use the repository's own",
            mapping.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("idsync-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        let ws = Workspace {
            dir,
            token: token.to_owned(),
            extra_secrets: Vec::new(),
            base_url: base_url.to_owned(),
            remove_action: "disable".into(),
            max_removals: "100%".into(),
            max_member_removals: Some("100%".into()),
            groups_delete: true,
            timeout: "10s".into(),
            raw_config: None,
            umask: None,
            env: Vec::new(),
        };
        ws.write_file("users.csv", Directory::default().users_csv().as_bytes());
        ws.write_file("groups.csv", Directory::default().groups_csv().as_bytes());
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.yaml")
    }

    /// The state DB (`state: state/idsync.db`).
    pub fn state_db(&self) -> PathBuf {
        self.path().join("state/idsync.db")
    }

    /// The state DB's bytes (empty when it does not exist yet).
    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state_db()).unwrap_or_default()
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.path().join(name), bytes)
            .unwrap_or_else(|e| panic!("write {name}: {e}"));
    }

    /// Writes `users.csv` and `groups.csv` for `dir`.
    pub fn write_directory(&self, dir: &Directory) {
        self.write_file("users.csv", dir.users_csv().as_bytes());
        self.write_file("groups.csv", dir.groups_csv().as_bytes());
    }

    /// The CSV mapping shipped in the repository, for Atlassian: name parts,
    /// no displayName.
    pub fn shipped_mapping_path() -> PathBuf {
        manifest_dir().join("mappings/csv.yaml")
    }

    /// The shipped CSV mapping with its line for other SCIM targets
    /// uncommented (displayName sent too), as the tests against scim2-server
    /// use it: written once per test binary beside the build.
    pub fn mapping_path() -> PathBuf {
        static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let shipped = std::fs::read_to_string(Self::shipped_mapping_path())
                .expect("read mappings/csv.yaml");
            let line = "    # displayName: display_name\n";
            assert!(
                shipped.contains(line),
                "mappings/csv.yaml lost its line for other SCIM targets"
            );
            let generic = shipped.replace(line, "    displayName: display_name\n");
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let path = dir.join("csv-generic-scim.yaml");
            // Written under a name of this process's own, then renamed: test
            // binaries running at once never read a half-written file.
            let tmp = dir.join(format!("csv-generic-scim.yaml.{}", std::process::id()));
            std::fs::write(&tmp, generic).expect("write the generic mapping");
            std::fs::rename(&tmp, &path).expect("rename the generic mapping");
            path
        })
        .clone()
    }

    /// The config the knobs describe.
    pub fn config_text(&self) -> String {
        if let Some(raw) = &self.raw_config {
            return raw.clone();
        }
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {mapping}\n\
             target:\n\
             \x20 kind: scim\n\
             \x20 base_url: {base_url}\n\
             \x20 token_env: {TOKEN_ENV}\n\
             \x20 rate_limit: {{ per_second: 1000, burst: 100 }}\n\
             \x20 concurrency: 4\n\
             \x20 timeout: {timeout}\n\
             policy:\n\
             \x20 remove_action: {remove_action}\n\
             \x20 max_removals: {max_removals}\n\
             {member_limit}\
             \x20 groups: {{ provision: true, delete: {groups_delete} }}\n\
             state: state/idsync.db\n",
            mapping = Self::mapping_path().display(),
            base_url = self.base_url,
            timeout = self.timeout,
            remove_action = self.remove_action,
            max_removals = self.max_removals,
            member_limit = self
                .max_member_removals
                .as_ref()
                .map(|l| format!("  max_member_removals: {l}\n"))
                .unwrap_or_default(),
            groups_delete = self.groups_delete,
        )
    }

    /// Writes `config.yaml` whole (a temporary file renamed over it), and only
    /// when it changed: a daemon started earlier reads its config again every
    /// cycle, and must never see it half written by a later `run`.
    pub fn write_config(&self) {
        let text = self.config_text();
        let path = self.config_path();
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return;
        }
        let tmp = self.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, text.as_bytes()).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config into place");
    }

    fn command(&self, args: &[&str]) -> (Command, Vec<String>) {
        self.write_config();
        let config = self.config_path();
        let mut full: Vec<String> = Vec::new();
        // `-c` right after the subcommand works whether it is declared on the
        // subcommands or globally.
        if let Some((sub, rest)) = args.split_first() {
            full.push((*sub).to_owned());
            if !sub.starts_with('-') {
                full.push("-c".into());
                full.push(config.display().to_string());
            }
            full.extend(rest.iter().map(|s| (*s).to_owned()));
        }
        let mut cmd = match self.umask {
            None => Command::new(env!("CARGO_BIN_EXE_idsync")),
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_idsync"));
                sh
            }
        };
        cmd.args(&full)
            .current_dir(self.path())
            .env(TOKEN_ENV, &self.token)
            .env("NO_COLOR", "1")
            .env_remove("IDSYNC_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("CLICOLOR_FORCE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (cmd, full)
    }

    fn secrets(&self) -> Vec<String> {
        let mut s = vec![self.token.clone()];
        s.extend(self.extra_secrets.iter().cloned());
        s
    }

    /// Starts `idsync ARGS -c config.yaml` in the background.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let (mut cmd, full) = self.command(args);
        let mut child = cmd.spawn().expect("spawn idsync");
        let stdout = child.stdout.take().map(read_pipe);
        let stderr = child.stderr.take().map(read_pipe);
        Running {
            guard: ChildGuard::new(child, "idsync"),
            stdout,
            stderr,
            args: full,
            secrets: self.secrets(),
        }
    }

    /// Runs `idsync ARGS -c config.yaml` to the end (killed after 120 s).
    pub fn run(&self, args: &[&str]) -> Output {
        self.spawn(args).wait(RUN_TIMEOUT)
    }

    /// `sync --format json`, expected to exit 0; returns the run summary.
    pub fn sync_ok(&self) -> Value {
        self.run(&["sync", "--format", "json"])
            .assert_code(0)
            .json()
    }

    /// `plan --format json`, expected to exit 0; returns the plan.
    pub fn plan_json(&self) -> Value {
        self.run(&["plan", "--format", "json"])
            .assert_code(0)
            .json()
    }

    /// Asserts that `plan --format json` has no operations.
    pub fn assert_plan_empty(&self) {
        let plan = self.plan_json();
        assert_eq!(
            operations(&plan).len(),
            0,
            "expected an empty plan, got:\n{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    }
}

/// A server, a workspace on it, and a generated directory already synced into it
/// (checked).
pub fn synced(n_users: usize, n_groups: usize) -> (ScimServer, Workspace, Directory) {
    let server = ScimServer::start(&fresh_token("e2e"));
    let ws = Workspace::new(&server);
    let dir = Directory::generate(n_users, n_groups);
    ws.write_directory(&dir);
    ws.sync_ok();
    assert_target_matches(&dir, &[], &server.contents());
    (server, ws, dir)
}

/// The `operations` array of a JSON plan.
pub fn operations(plan: &Value) -> Vec<Value> {
    plan["operations"]
        .as_array()
        .unwrap_or_else(|| panic!("plan without an `operations` array: {plan}"))
        .clone()
}

/// `summary.<key>` of a plan or run summary, as a number.
pub fn summary_count(v: &Value, key: &str) -> u64 {
    v["summary"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric summary.{key} in {v}"))
}

/// The operations of one kind (`op`) in a JSON plan.
pub fn ops_of(plan: &Value, op: &str) -> Vec<Value> {
    operations(plan)
        .into_iter()
        .filter(|o| o["op"] == op)
        .collect()
}

/// True when `text` names line `n`: the number `n` standing alone (no digit
/// right before or after it) with the word "line" at most 40 characters before it
/// (`line 5`, `line: 5`, `lines 5 and 9`, `line=5`) or right after a colon
/// (`users.csv:5:`).
pub fn mentions_line(text: &str, n: usize) -> bool {
    let lower = text.to_lowercase();
    let bytes = lower.as_bytes();
    let needle = n.to_string();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        from = end;
        let digit_before = start > 0 && bytes[start - 1].is_ascii_digit();
        let digit_after = end < bytes.len() && bytes[end].is_ascii_digit();
        if digit_before || digit_after {
            continue;
        }
        if start > 0 && bytes[start - 1] == b':' {
            return true;
        }
        let mut window_start = start.saturating_sub(40);
        while !lower.is_char_boundary(window_start) {
            window_start -= 1;
        }
        if lower[window_start..start].contains("line") {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// CSV directories

/// One row of `users.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub title: String,
    pub department: String,
    pub active: bool,
}

impl UserRow {
    pub fn new(id: &str, email: &str, given: &str, family: &str) -> UserRow {
        UserRow {
            id: id.into(),
            email: email.into(),
            given_name: given.into(),
            family_name: family.into(),
            display_name: format!("{given} {family}"),
            title: "Engineer".into(),
            department: "R&D".into(),
            active: true,
        }
    }

    /// The userName the default mapping derives: the trimmed email.
    pub fn user_name(&self) -> String {
        self.email.trim().to_owned()
    }

    fn fields(&self) -> [String; 8] {
        [
            self.id.clone(),
            self.email.clone(),
            self.given_name.clone(),
            self.family_name.clone(),
            self.display_name.clone(),
            self.title.clone(),
            self.department.clone(),
            if self.active { "true" } else { "false" }.into(),
        ]
    }
}

pub const USERS_HEADER: &str =
    "id,email,given_name,family_name,display_name,title,department,active";
pub const GROUPS_HEADER: &str = "group,member";

/// One field, quoted per RFC 4180 when it needs to be.
pub fn csv_field(s: &str) -> String {
    let needs_quotes = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.starts_with('\t');
    if needs_quotes {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// A CSV directory: users and groups (group name → member keys; an empty list is a
/// group with no members).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    pub users: Vec<UserRow>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Names that exercise non-ASCII handling end to end.
const SPECIAL_NAMES: &[(&str, &str)] = &[
    ("Jürgen", "Müller"),
    ("José", "Nuñez"),
    ("Søren", "Østergaard"),
    ("太郎", "山田"),
];
const DEPARTMENTS: &[&str] = &["Engineering", "Sales", "Finance", "Support", "Marketing"];
const TITLES: &[&str] = &[
    "Engineer",
    "Senior Engineer",
    "Manager",
    "Analyst",
    "Director",
];

impl Directory {
    /// `n_users` users (keys `u0001`…) and `n_groups` groups (`group-01`…). The
    /// users include non-ASCII names, a value with a comma and double quotes, a
    /// backslash, an email with surrounding spaces, users without a display name,
    /// and (when `n_users >= 20`) one user with `active=false`. Every active user
    /// is a member of one or two groups; the last group has no members.
    pub fn generate(n_users: usize, n_groups: usize) -> Directory {
        let mut users = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let (given, family) = match SPECIAL_NAMES.get(i) {
                Some((g, f)) => ((*g).to_owned(), (*f).to_owned()),
                None => (format!("Given{i}"), format!("Family{i}")),
            };
            let mut u = UserRow {
                id: format!("u{:04}", i + 1),
                email: format!("user{:04}@example.com", i + 1),
                display_name: format!("{given} {family}"),
                given_name: given,
                family_name: family,
                title: TITLES[i % TITLES.len()].into(),
                department: DEPARTMENTS[i % DEPARTMENTS.len()].into(),
                active: true,
            };
            match i {
                4 => u.title = "Director, \"Special\" Projects".into(),
                5 => u.department = "R\\D Lab".into(),
                6 => u.email = format!("  user{:04}@example.com ", i + 1),
                7 => u.display_name.clear(),
                8 => u.given_name = "Anne-Marie, Jr.".into(),
                _ => {}
            }
            if i == 13 && n_users >= 20 {
                u.active = false;
            }
            users.push(u);
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in 0..n_groups {
            groups.insert(format!("group-{:02}", g + 1), Vec::new());
        }
        let names: Vec<String> = groups.keys().cloned().collect();
        // The last group stays empty; the others share the active users.
        let populated = names.len().saturating_sub(1);
        if populated > 0 {
            for (i, u) in users.iter().enumerate().filter(|(_, u)| u.active) {
                let first = &names[i % populated];
                groups.get_mut(first).expect("group").push(u.id.clone());
                if i % 3 == 0 && populated > 1 {
                    let second = &names[(i / 3) % populated];
                    if second != first {
                        groups.get_mut(second).expect("group").push(u.id.clone());
                    }
                }
            }
        }
        Directory { users, groups }
    }

    pub fn user(&self, id: &str) -> &UserRow {
        self.users
            .iter()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    pub fn user_mut(&mut self, id: &str) -> &mut UserRow {
        self.users
            .iter_mut()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    /// Removes a user and their memberships; returns the removed row.
    pub fn remove_user(&mut self, id: &str) -> UserRow {
        let pos = self
            .users
            .iter()
            .position(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"));
        for members in self.groups.values_mut() {
            members.retain(|m| m != id);
        }
        self.users.remove(pos)
    }

    /// The 1-based line of user `id` in `users.csv` (header is line 1; the
    /// generator writes no embedded line breaks).
    pub fn line_of(&self, id: &str) -> usize {
        2 + self
            .users
            .iter()
            .position(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    pub fn users_csv(&self) -> String {
        let mut out = String::from(USERS_HEADER);
        out.push('\n');
        for u in &self.users {
            out.push_str(&csv_line(&u.fields()));
            out.push('\n');
        }
        out
    }

    pub fn groups_csv(&self) -> String {
        let mut out = String::from(GROUPS_HEADER);
        out.push('\n');
        for (group, members) in &self.groups {
            if members.is_empty() {
                out.push_str(&csv_line(&[group.clone(), String::new()]));
                out.push('\n');
            }
            for m in members {
                out.push_str(&csv_line(&[group.clone(), m.clone()]));
                out.push('\n');
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Comparing a target with a directory

pub fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A string attribute; empty string when absent or null.
fn attr<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// Checks that the target holds exactly what the default CSV mapping makes of
/// `dir`, plus the users of `disabled` (removed from the source under
/// `remove_action: disable`) as inactive accounts. A user with `active=false` in
/// the CSV must be inactive on the target, or absent when it was never
/// provisioned. Panics with a readable list of every difference.
pub fn assert_target_matches(dir: &Directory, disabled: &[UserRow], target: &TargetContents) {
    let mut diffs: Vec<String> = Vec::new();

    // Expected users by lower-cased userName: (row, expected active).
    let mut expected: BTreeMap<String, (&UserRow, bool)> = BTreeMap::new();
    for u in &dir.users {
        expected.insert(u.user_name().to_lowercase(), (u, u.active));
    }
    for u in disabled {
        expected.insert(u.user_name().to_lowercase(), (u, false));
    }

    let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for u in &target.users {
        by_name
            .entry(str_at(u, "userName").to_lowercase())
            .or_default()
            .push(u);
    }

    for (name, found) in &by_name {
        if !expected.contains_key(name) {
            diffs.push(format!("unexpected user on the target: userName {name:?}"));
        }
        if found.len() > 1 {
            diffs.push(format!(
                "{} users with userName {name:?} (duplicates)",
                found.len()
            ));
        }
    }

    // key -> SCIM id, for group members.
    let mut id_of_key: BTreeMap<&str, String> = BTreeMap::new();
    for (name, (row, active)) in &expected {
        let Some(found) = by_name.get(name) else {
            // A user inactive in the source that was never provisioned need not
            // be created (as an inactive account) at all.
            let never_provisioned_inactive = !row.active && !disabled.contains(row);
            if !never_provisioned_inactive {
                diffs.push(format!(
                    "missing user {name:?} (key {}) on the target",
                    row.id
                ));
            }
            continue;
        };
        let u = found[0];
        id_of_key.insert(row.id.as_str(), str_at(u, "id").to_owned());
        let who = format!("user {} ({name})", row.id);
        let mut check = |what: &str, got: &str, want: &str| {
            if got != want {
                diffs.push(format!("{who}: {what}: target {got:?}, expected {want:?}"));
            }
        };
        check("userName", str_at(u, "userName"), &row.user_name());
        check("externalId", str_at(u, "externalId"), &row.id);
        check(
            "name.givenName",
            attr(u, &["name", "givenName"]),
            &row.given_name,
        );
        check(
            "name.familyName",
            attr(u, &["name", "familyName"]),
            &row.family_name,
        );
        check("displayName", str_at(u, "displayName"), &row.display_name);
        check("title", str_at(u, "title"), &row.title);
        check(
            "department",
            attr(u, &[ENTERPRISE_SCHEMA, "department"]),
            &row.department,
        );
        let got_active = u.get("active").and_then(Value::as_bool);
        if got_active != Some(*active) {
            diffs.push(format!(
                "{who}: active: target {got_active:?}, expected {active}"
            ));
        }
        let emails = u
            .get("emails")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let email_ok = emails.len() == 1
            && str_at(&emails[0], "value") == row.user_name()
            && emails[0].get("primary").and_then(Value::as_bool) == Some(true)
            && str_at(&emails[0], "type") == "work";
        if !email_ok {
            diffs.push(format!(
                "{who}: emails: target {}, expected one primary work email {:?}",
                Value::Array(emails),
                row.user_name()
            ));
        }
    }

    // Groups by displayName, members by SCIM id.
    let mut groups_by_name: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for g in &target.groups {
        groups_by_name
            .entry(str_at(g, "displayName"))
            .or_default()
            .push(g);
    }
    for (name, found) in &groups_by_name {
        if !dir.groups.contains_key(*name) {
            diffs.push(format!("unexpected group on the target: {name:?}"));
        }
        if found.len() > 1 {
            diffs.push(format!(
                "{} groups named {name:?} (duplicates)",
                found.len()
            ));
        }
    }
    for (name, members) in &dir.groups {
        let Some(found) = groups_by_name.get(name.as_str()) else {
            diffs.push(format!("missing group {name:?} on the target"));
            continue;
        };
        let g = found[0];
        let got: BTreeSet<String> = g
            .get("members")
            .and_then(Value::as_array)
            .map(|ms| ms.iter().map(|m| str_at(m, "value").to_owned()).collect())
            .unwrap_or_default();
        let want: BTreeSet<String> = members
            .iter()
            .map(|k| {
                id_of_key
                    .get(k.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("<id of missing user {k}>"))
            })
            .collect();
        if got != want {
            let key_of_id: BTreeMap<&String, &str> =
                id_of_key.iter().map(|(k, id)| (id, *k)).collect();
            let show = |ids: Vec<&String>| {
                ids.iter()
                    .map(|id| match key_of_id.get(id) {
                        Some(k) => format!("{k}({id})"),
                        None => (*id).clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            diffs.push(format!(
                "group {name:?}: members missing: [{}]; members not expected: [{}]",
                show(want.difference(&got).collect()),
                show(got.difference(&want).collect()),
            ));
        }
    }

    if !diffs.is_empty() {
        let mut msg = format!(
            "the target does not match the directory ({} differences; {} users, {} groups on the target):\n",
            diffs.len(),
            target.users.len(),
            target.groups.len()
        );
        for d in diffs.iter().take(60) {
            let _ = writeln!(msg, "  - {d}");
        }
        if diffs.len() > 60 {
            let _ = writeln!(msg, "  … and {} more", diffs.len() - 60);
        }
        panic!("{msg}");
    }
}

/// Appends raw bytes to a file (for hand-made broken inputs).
pub fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

// ---------------------------------------------------------------------------
// Signals (used by the crash and fault tests)

impl Running {
    /// The PID of the `idsync` process.
    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Sends `signal` (`KILL`, `TERM`, …) to exactly this PID with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        assert!(pid > 0, "no process to signal");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run kill(1)");
        // The process may have ended on its own just before: that is fine.
        let _ = status;
    }
}

//! A real `scim2-server` on loopback (`ScimServer`), what a target holds
//! (`TargetContents`), and reading plans and run summaries.
//!
//! Synchronous: HTTP calls to the server go through a private current-thread
//! tokio runtime, so tests are plain `#[test]` functions. Servers listen on
//! 127.0.0.1 only and are killed by PID on drop (also on panic); every wait is
//! bounded.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::{ChildGuard, free_port, repo};

/// SCIM schema URNs used by the default mappings.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// How long `scim2-server` may take to answer after start.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on list pages read from the server (1000 per page).
const MAX_PAGES: usize = 1000;

/// The environment variable the generated configs name in `target.token_env`.
pub const TOKEN_ENV: &str = "IDSYNC_TEST_TOKEN";

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
    host: String,
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
    let p = repo().join(".test-env/venv/bin/scim2-server");
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
        ScimServer::start_with(token, "127.0.0.1", &|p| Command::new(p), &free_port)
    }

    /// Starts a server listening on `host` (an address of this machine),
    /// launched by the command `launch` makes of the program (e.g. wrapped in
    /// `ip netns exec`; the child's PID must be the server's), on a port
    /// `port` picks.
    pub fn start_with(
        token: &str,
        host: &str,
        launch: &dyn Fn(&std::path::Path) -> Command,
        port: &dyn Fn() -> u16,
    ) -> ScimServer {
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
            let port = port();
            let log_path = log_dir.path().join(format!("scim2-server-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("server log");
            let child = launch(&program)
                .args(["--hostname", host, "--port", &port.to_string()])
                .args(["--bearer-token", token])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
            let mut guard = ChildGuard::new(child, format!("scim2-server on port {port}"));
            let url = format!("http://{host}:{port}/v2/ServiceProviderConfig");
            let users_url = format!("http://{host}:{port}/v2/Users?count=1");
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
                    host: host.to_owned(),
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

    /// `http://127.0.0.1:PORT/v2` (the server's host and port)
    pub fn base_url(&self) -> String {
        format!("http://{}:{}/v2", self.host, self.port)
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

/// A base URL on loopback where nothing listens.
pub fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}/v2", free_port())
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

pub fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A string attribute; empty string when absent or null.
pub fn attr<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// The counts of operations in the `summary` of a plan or a run.
pub const SUMMARY_KEYS: [&str; 9] = [
    "create_users",
    "update_users",
    "disable_users",
    "delete_users",
    "create_groups",
    "update_groups",
    "delete_groups",
    "add_members",
    "remove_members",
];

/// `sync --format json`: the run summary on stdout.
pub const SYNC_JSON: &[&str] = &["sync", "--format", "json"];
/// `plan --format json`: the plan on stdout.
pub const PLAN_JSON: &[&str] = &["plan", "--format", "json"];

/// Panics unless the JSON `plan` has no operations.
pub fn assert_plan_empty(plan: &Value) {
    assert!(
        operations(plan).is_empty(),
        "expected an empty plan, got:\n{}",
        serde_json::to_string_pretty(plan).unwrap_or_default()
    );
}

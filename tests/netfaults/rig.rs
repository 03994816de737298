//! What the network-fault tests share: a `scim2-server` inside a namespace
//! with a workspace pointed at its veth address (`ScimRig`), a delayed link
//! (`Link`: netem, or the relay), the checks (`assert_exact`,
//! `assert_no_duplicates`) and the time bound a run must keep (`Bounds`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::{
    Directory, Idsync, Output, ScimServer, TargetContents, Workspace, assert_target_matches,
    fresh_token, str_at,
};
use crate::support::netns::Netns;
use crate::support::relay::{Delay, Relay};

/// The port scim2-server listens on inside its namespace (the namespace is
/// the test's own: nothing else listens there).
pub const SCIM_PORT: u16 = 8080;

/// A delay on the way to a server in a namespace: netem on the veth when the
/// kernel has it (then idsync talks to the server's own port), else the
/// relay (idsync talks to the relay's port).
pub struct Link {
    /// Kept for its drop (which stops it).
    _relay: Option<Relay>,
    /// The port idsync connects to on the namespace's address.
    pub port: u16,
    /// What delays: `netem` or `relay`.
    pub how: &'static str,
}

impl Link {
    /// `delay` each way to `upstream` (inside `ns`). A server that listens on
    /// the namespace's loopback only (`exposed`) always goes through a relay,
    /// one that adds nothing when netem delays.
    pub fn delayed(ns: &Netns, upstream: SocketAddr, delay: Delay, exposed: bool) -> Link {
        let reorder_pct = (delay.reorder * 100.0).round() as u32;
        if delay.one_way > Duration::ZERO && ns.netem(delay.one_way, delay.jitter, reorder_pct) {
            let relay = exposed.then(|| Relay::start(ns, upstream, Delay::NONE));
            let port = relay.as_ref().map_or(upstream.port(), |r| r.port);
            return Link {
                _relay: relay,
                port,
                how: "netem",
            };
        }
        let relay = Relay::start(ns, upstream, delay);
        Link {
            port: relay.port,
            _relay: Some(relay),
            how: "relay",
        }
    }
}

/// scim2-server in a namespace, a CSV workspace in the root namespace whose
/// target is the server's veth address (or the relay's), and its directory.
/// Fields drop in order: the workspace, the relay, the server (killed by
/// PID), then the namespace.
pub struct ScimRig {
    pub ws: Workspace,
    pub dir: Directory,
    pub link: Option<Link>,
    pub server: ScimServer,
    pub ns: Netns,
}

impl ScimRig {
    /// A namespace with scim2-server on `SCIM_PORT`, `n_users` users and
    /// `n_groups` groups written as CSV, and a workspace whose target is the
    /// server, or the link to it when `delay` is given.
    pub fn start(tag: &str, n_users: usize, n_groups: usize, delay: Option<Delay>) -> ScimRig {
        let ns = Netns::new();
        let host = ns.ns_addr.to_string();
        let server = ScimServer::start_with(
            &fresh_token(tag),
            &host,
            &|program| ns.command(program),
            &|| SCIM_PORT,
        );
        let upstream = SocketAddr::from((ns.ns_addr, SCIM_PORT));
        let link = delay.map(|d| Link::delayed(&ns, upstream, d, false));
        let port = link.as_ref().map_or(SCIM_PORT, |l| l.port);
        let base_url = format!("http://{host}:{port}/v2");
        let ws = Workspace::with_target(&base_url, server.token());
        let dir = Directory::generate(n_users, n_groups);
        ws.write_directory(&dir);
        ScimRig {
            ws,
            dir,
            link,
            server,
            ns,
        }
    }

    /// The port idsync's connections go to (the one the faults apply to).
    pub fn idsync_port(&self) -> u16 {
        self.link.as_ref().map_or(SCIM_PORT, |l| l.port)
    }

    /// Users on the server now (one small request, straight to the server).
    pub fn user_count(&self) -> u64 {
        let (status, page) = self.server.request_at(
            &self.server.base_url(),
            reqwest::Method::GET,
            "/Users?count=1",
            None,
        );
        assert_eq!(status, 200, "{page}");
        page["totalResults"].as_u64().unwrap_or(0)
    }
}

/// Panics unless `out` ended with one of `codes`, and unless an exit 1 (some
/// operations failed) names its failures in the run summary: an honest end.
pub fn assert_honest(out: &Output, codes: &[i32], what: &str) {
    assert!(
        codes.contains(&out.code),
        "{what}: exit {}\n{}",
        out.code,
        out.dump()
    );
    if out.code == 1 {
        let summary = out.json();
        assert!(
            summary["failed"].as_u64().unwrap_or(0) > 0,
            "{what}: exit 1 without a failure named\n{}",
            out.dump()
        );
    }
}

/// Panics when two users share a userName (counted case-insensitively, as
/// the server compares them) or two groups a displayName.
pub fn assert_no_duplicates(target: &TargetContents) {
    let count = |items: &[serde_json::Value], field: &str, fold: bool| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for item in items {
            let v = str_at(item, field);
            *seen
                .entry(if fold { v.to_lowercase() } else { v.to_owned() })
                .or_default() += 1;
        }
        seen.into_iter().filter(|(_, n)| *n > 1).collect::<Vec<_>>()
    };
    let users = count(&target.users, "userName", true);
    let groups = count(&target.groups, "displayName", false);
    assert!(
        users.is_empty() && groups.is_empty(),
        "duplicates on the target: users {users:?}, groups {groups:?}"
    );
}

/// The target holds exactly what `dir` says (users, attributes, groups,
/// members), without duplicates, and a new plan is empty.
pub fn assert_exact(
    server: &ScimServer,
    ws: &Workspace,
    dir: &Directory,
    disabled: &[crate::harness::UserRow],
) {
    let contents = server.contents();
    assert_no_duplicates(&contents);
    assert_target_matches(dir, disabled, &contents);
    ws.assert_plan_empty();
}

/// What bounds the time of one request and of a cycle, from the config's
/// `timeout` and `retry` settings and the client's fixed backoff
/// (`base_delay` 500 ms, doubled per retry).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub concurrency: u32,
}

/// The client's first backoff ceiling (`RetryPolicy::default().base_delay`).
const BASE_DELAY: Duration = Duration::from_millis(500);
/// The executor stops once this many operations ran and more than half failed.
const FAILURE_BUDGET_MIN_OPS: u64 = 20;
/// Requests one operation may make at most: a create, the lookup of its lost
/// answer, and the adoption (or a group's create, lookup, member update).
const REQUESTS_PER_OP: u32 = 3;

impl Bounds {
    /// One request with its retries: every attempt is bounded by `timeout`;
    /// no retry starts past `max_elapsed`, so at most one attempt runs past
    /// it; and there are at most `max_attempts` attempts with their backoffs.
    pub fn request(&self) -> Duration {
        let by_elapsed = self.max_elapsed + self.timeout;
        let backoffs: Duration = (0..self.max_attempts.saturating_sub(1))
            .map(|k| BASE_DELAY * 2u32.pow(k))
            .sum();
        let by_attempts = self.timeout * self.max_attempts + backoffs;
        by_elapsed.min(by_attempts)
    }

    /// After the target goes silent with `applied` operations done: the
    /// failures the failure budget needs before it stops the cycle, plus the
    /// operations in flight, run `concurrency` at a time, each at most
    /// `REQUESTS_PER_OP` bounded requests.
    pub fn after_silence(&self, applied: u64) -> Duration {
        let needed = FAILURE_BUDGET_MIN_OPS
            .saturating_sub(applied)
            .max(applied + 1);
        let ops = needed + u64::from(self.concurrency);
        let waves = ops.div_ceil(u64::from(self.concurrency)) as u32 + 1;
        self.request() * REQUESTS_PER_OP * waves
    }
}

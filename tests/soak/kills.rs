//! SIGKILL at random moments, across CSV, LDAP and Entra cycles: each round
//! changes the source, starts `idsync sync` and kills it (by PID) after a
//! random share of how long an uninterrupted cycle takes; the next round's
//! run resumes what the killed one left. Writes are held 15–45 ms at a proxy
//! in front of the SCIM server, so a kill often lands with requests in
//! flight. Some kills are placed where a signal from outside almost never
//! lands, through the debug build's `IDSYNC_TEST_KILL_AT` hook: every
//! operation committed but the Entra mirror and its delta links not yet
//! (`before-mirror-commit`), and everything committed but the run not yet
//! closed (`before-finish`). Every few kills, and at the end, a run is let
//! finish and the target must be exactly the source's, with no userName or
//! group name twice.
//!
//! CI kills 10 times per source; `scripts/soak.sh kills N` spreads N kills
//! over the three (`kills_long`, ignored by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::churn::Churn;
use crate::harness::{Directory, Workspace, assert_target_matches};
use crate::probe::{self, report};
use crate::support::process::{Output, Running, fresh_token};
use crate::support::proxy::{Fault, FaultProxy, Req, Rng, Schedule};
use crate::support::scim::{PLAN_JSON, SYNC_JSON, ScimServer, TOKEN_ENV, assert_plan_empty};
use crate::support::workdir::Workdir;

/// Runs needed at most to finish after a kill (each resumes the last).
const FINISH_RUNS: usize = 5;
/// How long a killed run may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

/// One source and target pair the kills are aimed at.
pub trait World {
    /// `CSV`, `LDAP` or `Entra`.
    fn source(&self) -> &'static str;
    fn workdir(&self) -> &Workdir;
    fn config(&self) -> String;
    fn proxy(&self) -> &FaultProxy;
    /// Environment and secrets a run needs besides the target's token.
    fn run_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Changes the source: `changes` random edits.
    fn churn(&mut self, changes: usize);
    /// Panics unless the target holds exactly what the source says.
    fn assert_exact(&self);
    /// What the target holds twice (userNames, group names).
    fn duplicates(&self) -> Vec<String>;
}

/// Writes held 15–45 ms, so the apply phase of a run is long enough to be
/// hit; reads pass. Deterministic per request.
pub fn slow_writes(seed: u64) -> Schedule {
    Arc::new(move |req: &Req| {
        if !req.is_write() {
            return Fault::Forward;
        }
        let mut rng = Rng::new(seed ^ (req.seq as u64).wrapping_mul(0x9E37_79B9));
        Fault::Delay(Duration::from_millis(rng.range(15, 46)))
    })
}

/// Starts `idsync sync` in `world`, with `kill_at` set as the hook's point.
fn spawn_sync(world: &dyn World, kill_at: Option<&str>) -> Running {
    let mut env: Vec<(String, String)> = world.run_env();
    if let Some(point) = kill_at {
        env.push(("IDSYNC_TEST_KILL_AT".into(), point.into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    world
        .workdir()
        .spawn_with(&world.config(), SYNC_JSON, &env, &[])
}

/// `idsync ARGS` in `world` to the end.
pub fn run(world: &dyn World, args: &[&str]) -> Output {
    let env = world.run_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    world.workdir().run_with(&world.config(), args, &env, &[])
}

/// Syncs until a run exits 0 (each resuming the one before); panics after
/// [`FINISH_RUNS`] or on any exit but 0 and 1. Returns how long the last took.
pub fn finish(world: &dyn World) -> Duration {
    for _ in 0..FINISH_RUNS {
        let started = Instant::now();
        let out = run(world, SYNC_JSON);
        match out.code {
            0 => return started.elapsed(),
            1 => continue,
            code => panic!(
                "{}: sync after a kill exited {code}\n{}",
                world.source(),
                out.dump()
            ),
        }
    }
    panic!("{}: no sync exited 0 in {FINISH_RUNS} runs", world.source());
}

/// Finishes, then checks the target against the source and the plan. On a
/// difference, the provisioning log is written beside the build
/// (`target/tmp/kills-SOURCE.log`) before the panic goes on.
fn verify(world: &dyn World) {
    finish(world);
    let exact = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.assert_exact()));
    if let Err(panic) = exact {
        let log = run(world, &["log", "--format", "text"]);
        let status = run(world, &["status"]);
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kills-{}.log", world.source()));
        let _ = std::fs::write(&path, format!("{}\n{}", status.stdout, log.stdout));
        eprintln!("the provisioning log: {}", path.display());
        std::panic::resume_unwind(panic);
    }
    let twice = world.duplicates();
    assert!(twice.is_empty(), "{}: duplicates {twice:?}", world.source());
    let plan = run(world, PLAN_JSON);
    assert_eq!(plan.code, 0, "{}", plan.dump());
    assert_plan_empty(&plan.json());
}

/// What the kills of one source came to.
#[derive(Debug, Default)]
pub struct Kills {
    /// Runs killed by a signal from outside, at a random moment.
    pub random: usize,
    /// Of those, runs that had sent writes before the kill.
    pub with_writes: usize,
    /// Runs killed by the hook, by point.
    pub at_points: BTreeMap<&'static str, usize>,
    /// Runs that finished before their kill (not counted as kills).
    pub missed: usize,
    /// Checks of the target against the source along the way, and at the end.
    pub checks: usize,
    pub duplicates: usize,
}

impl Kills {
    pub fn landed(&self) -> usize {
        self.random + self.at_points.values().sum::<usize>()
    }
}

/// The hook's point for the `i`-th kill of `source`, if it is one of those.
fn point_for(source: &str, i: usize) -> Option<&'static str> {
    match i % 10 {
        2 | 5 | 8 if source == "Entra" => Some("before-mirror-commit"),
        7 => Some("before-finish"),
        _ => None,
    }
}

/// `kills` kills of `world`'s cycles; checks every `check_every` kills and
/// at the end. Returns what happened.
pub fn kill_cycles(world: &mut dyn World, kills: usize, check_every: usize, seed: u64) -> Kills {
    let mut rng = Rng::new(seed);
    let mut k = Kills::default();
    // How long an uninterrupted run with some changes takes.
    world.churn(15);
    let mut cycle = finish(world);
    let mut attempts = 0;
    while k.landed() < kills {
        attempts += 1;
        assert!(
            attempts <= kills * 4,
            "{}: {} of {kills} kills landed in {attempts} runs",
            world.source(),
            k.landed()
        );
        let changes = rng.range(5, 26) as usize;
        world.churn(changes);
        let point = point_for(world.source(), k.landed());
        let writes_before = world.proxy().writes();
        let started = Instant::now();
        let mut running = spawn_sync(world, point);
        let delay = match point {
            // The hook kills it; wait for that (bounded).
            Some(_) => Duration::from_secs(120),
            None => cycle.mul_f64(rng.unit() * 1.2),
        };
        while started.elapsed() < delay && running.is_running() {
            std::thread::sleep(Duration::from_millis(2));
        }
        running.signal("KILL");
        let out = running.wait(REAP_TIMEOUT);
        match (out.code, point) {
            (-1, Some(p)) => *k.at_points.entry(p).or_default() += 1,
            (-1, None) => {
                k.random += 1;
                if world.proxy().writes() > writes_before {
                    k.with_writes += 1;
                }
            }
            (0 | 1, None) => {
                k.missed += 1;
                // It ran to its end: a better estimate of a cycle.
                cycle = (cycle + started.elapsed()) / 2;
            }
            (code, _) => panic!(
                "{}: a run to be killed ended with exit {code} ({point:?})\n{}",
                world.source(),
                out.dump()
            ),
        }
        if out.code == -1 && k.landed() % check_every == 0 && k.landed() < kills {
            verify(world);
            k.checks += 1;
        }
    }
    verify(world);
    k.checks += 1;
    k.duplicates = world.duplicates().len();
    k
}

/// Reports one source's kills.
pub fn report_kills(source: &str, k: &Kills, took: Duration) {
    report(&format!(
        "kills: {source}: {} runs killed ({} at random moments, {} of them after writes were sent; at the hook's points {:?}); {} runs finished before their kill; target checked {} times, exact; duplicates: {} ({:.1} min)",
        k.landed(),
        k.random,
        k.with_writes,
        k.at_points,
        k.missed,
        k.checks,
        k.duplicates,
        took.as_secs_f64() / 60.0
    ));
}

// ---------------------------------------------------------------------------
// CSV

/// A CSV directory synced into scim2-server through the proxy.
pub struct CsvWorld {
    server: ScimServer,
    proxy: FaultProxy,
    ws: Workdir,
    dir: Directory,
    churn: Churn,
}

impl CsvWorld {
    pub fn new(seed: u64) -> CsvWorld {
        let server = ScimServer::start(&fresh_token("kills-csv"));
        let proxy = FaultProxy::start(server.port(), slow_writes(seed));
        let ws = Workdir::new("idsync-kills-csv-", server.token());
        let world = CsvWorld {
            server,
            proxy,
            ws,
            dir: Directory::generate(120, 8),
            churn: Churn::new(seed, 120),
        };
        world.write_source();
        world
    }

    fn write_source(&self) {
        probe::write_whole(self.ws.path(), "users.csv", self.dir.users_csv().as_bytes());
        probe::write_whole(
            self.ws.path(),
            "groups.csv",
            self.dir.groups_csv().as_bytes(),
        );
    }
}

impl World for CsvWorld {
    fn source(&self) -> &'static str {
        "CSV"
    }

    fn workdir(&self) -> &Workdir {
        &self.ws
    }

    fn proxy(&self) -> &FaultProxy {
        &self.proxy
    }

    fn config(&self) -> String {
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {mapping}\n\
             target: {{ kind: scim, base_url: {url}, token_env: {TOKEN_ENV}, concurrency: 4, timeout: 10s }}\n\
             policy:\n\
             \x20 remove_action: delete\n\
             \x20 max_removals: 100%\n\
             \x20 max_member_removals: 100%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             state: state/idsync.db\n",
            mapping = Workspace::mapping_path().display(),
            url = self.proxy.base_url(),
        )
    }

    fn churn(&mut self, changes: usize) {
        self.churn.step(&mut self.dir, changes);
        self.write_source();
    }

    fn assert_exact(&self) {
        assert_target_matches(&self.dir, &[], &self.server.contents());
    }

    fn duplicates(&self) -> Vec<String> {
        probe::duplicates(&self.server.contents())
    }
}

// ---------------------------------------------------------------------------
// The tests

/// Kills per source in CI.
const SHORT_KILLS: usize = 10;

fn seed() -> u64 {
    probe::knob("IDSYNC_SOAK_SEED", 0x0c1a_55e5)
}

fn kills_of(world: &mut dyn World, kills: usize, check_every: usize, seed: u64) -> Kills {
    let started = Instant::now();
    let k = kill_cycles(world, kills, check_every, seed);
    report_kills(world.source(), &k, started.elapsed());
    assert_eq!(k.duplicates, 0);
    k
}

#[test]
fn csv_cycles_killed_at_random_moments_resume_exactly_without_duplicates() {
    let mut world = CsvWorld::new(seed());
    kills_of(&mut world, SHORT_KILLS, 5, seed());
}

#[test]
fn ldap_cycles_killed_at_random_moments_resume_exactly_without_duplicates() {
    let mut world = crate::kill_ldap::LdapWorld::new(seed());
    kills_of(&mut world, SHORT_KILLS, 5, seed());
}

#[test]
fn entra_cycles_killed_at_random_moments_and_before_the_link_commit_resume_exactly() {
    let mut world = crate::kill_entra::EntraWorld::new(seed());
    let k = kills_of(&mut world, SHORT_KILLS, 5, seed());
    assert!(k.at_points.contains_key("before-mirror-commit"), "{k:?}");
}

/// `scripts/soak.sh kills N`: N kills spread over the three sources.
#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn kills_long() {
    let total = probe::knob("IDSYNC_SOAK_KILLS", 100) as usize;
    let seed = seed() ^ 0x100;
    let share = |i: usize| total / 3 + usize::from(i < total % 3);
    let csv = kills_of(&mut CsvWorld::new(seed), share(0), 10, seed);
    let ldap = kills_of(
        &mut crate::kill_ldap::LdapWorld::new(seed),
        share(1),
        10,
        seed,
    );
    let entra = kills_of(
        &mut crate::kill_entra::EntraWorld::new(seed),
        share(2),
        10,
        seed,
    );
    report(&format!(
        "kills: {} in all (CSV {}, LDAP {}, Entra {}); duplicates found: {}",
        csv.landed() + ldap.landed() + entra.landed(),
        csv.landed(),
        ldap.landed(),
        entra.landed(),
        csv.duplicates + ldap.duplicates + entra.duplicates
    ));
}

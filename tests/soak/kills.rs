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
use crate::probe::{self, POLICY, report};
use crate::support::process::{Output, Running, fresh_token};
use crate::support::proxy::{Fault, FaultProxy, Req, Rng, Schedule};
use crate::support::scim::{PLAN_JSON, SYNC_JSON, ScimServer, assert_plan_empty};
use crate::support::workdir::{Workdir, scim_target_yaml};

/// Runs needed at most to finish after a kill (each resumes the last).
const FINISH_RUNS: usize = 5;
/// How long a killed run may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

/// The target side of every world: a scim2-server, the proxy in front of it
/// holding writes ([`slow_writes`]), and the folder idsync runs in.
pub struct Rig {
    pub server: ScimServer,
    pub proxy: FaultProxy,
    pub ws: Workdir,
}

impl Rig {
    pub fn start(tag: &str, seed: u64) -> Rig {
        let server = ScimServer::start(&fresh_token(tag));
        let proxy = FaultProxy::start(server.port(), slow_writes(seed));
        let ws = Workdir::new(&format!("idsync-{tag}-"), server.token());
        Rig { server, proxy, ws }
    }

    /// The `target:`, `policy:` and `state:` lines every world's config ends
    /// with.
    pub fn config_tail(&self) -> String {
        format!(
            "{}{POLICY}",
            scim_target_yaml(&self.proxy.base_url(), "10s")
        )
    }
}

/// One source and target pair the kills are aimed at.
pub trait World {
    /// `CSV`, `LDAP` or `Entra`.
    fn source(&self) -> &'static str;
    fn rig(&self) -> &Rig;
    fn config(&self) -> String;
    /// Changes the source: `changes` random edits.
    fn churn(&mut self, changes: usize);
    /// Panics unless the target holds exactly what the source says.
    fn assert_exact(&self);
    /// What the target holds twice (userNames, group names).
    fn duplicates(&self) -> Vec<String> {
        probe::duplicates(&self.rig().server.contents())
    }
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
    let env: Vec<(&str, &str)> = kill_at
        .map(|point| ("IDSYNC_TEST_KILL_AT", point))
        .into_iter()
        .collect();
    world
        .rig()
        .ws
        .spawn_with(&world.config(), SYNC_JSON, &env, &[])
}

/// `idsync ARGS` in `world` to the end.
pub fn run(world: &dyn World, args: &[&str]) -> Output {
    world.rig().ws.run(&world.config(), args)
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
        let writes_before = world.rig().proxy.writes();
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
                if world.rig().proxy.writes() > writes_before {
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
    rig: Rig,
    dir: Directory,
    churn: Churn,
}

impl CsvWorld {
    pub fn new(seed: u64) -> CsvWorld {
        let world = CsvWorld {
            rig: Rig::start("kills-csv", seed),
            dir: Directory::generate(120, 8),
            churn: Churn::new(seed, 120),
        };
        probe::write_directory(world.rig.ws.path(), &world.dir);
        world
    }
}

impl World for CsvWorld {
    fn source(&self) -> &'static str {
        "CSV"
    }

    fn rig(&self) -> &Rig {
        &self.rig
    }

    fn config(&self) -> String {
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {}\n{}",
            Workspace::mapping_path().display(),
            self.rig.config_tail(),
        )
    }

    fn churn(&mut self, changes: usize) {
        self.churn.step(&mut self.dir, changes);
        probe::write_directory(self.rig.ws.path(), &self.dir);
    }

    fn assert_exact(&self) {
        assert_target_matches(&self.dir, &[], &self.rig.server.contents());
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

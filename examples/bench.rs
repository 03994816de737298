//! Planning benchmark: generates a CSV directory of N users and G groups, then
//! measures (1) a plan from an empty state and (2) a no-change cycle (source read,
//! mapping, state load, plan: the work `idsync sync` does before it has anything
//! to send), each in a fresh process so peak memory (VmHWM) is that stage's own.
//!
//!     cargo run --release --example bench -- 100000 1000
//!     cargo run --release --example bench -- 1000000 1000

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use idsync::apply::assume_success;
use idsync::config::Settings;
use idsync::model::{SourceKey, State};
use idsync::plan::{self, Plan, PlanningInput};
use idsync::state::StateDb;

// The same allocator as the `idsync` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--stage") => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(stage(&args[2], Path::new(&args[3])));
        }
        _ => {
            let users: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
            let groups: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000);
            orchestrate(users, groups);
        }
    }
}

fn orchestrate(users: usize, groups: usize) {
    // BENCH_DIR keeps the generated directory and state for profiling.
    let dir = tempfile::tempdir().expect("tempdir");
    let base =
        std::env::var_os("BENCH_DIR").map_or_else(|| dir.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    let started = Instant::now();
    let config = generate(&base, users, groups);
    println!(
        "generated {users} users, {groups} groups, {} memberships in {:.1}s",
        users * 2,
        started.elapsed().as_secs_f64()
    );
    let me = std::env::current_exe().expect("current exe");
    for name in ["empty-state-plan", "seed-state", "no-change-cycle"] {
        let out = std::process::Command::new(&me)
            .args(["--stage", name])
            .arg(&config)
            .output()
            .expect("run stage");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
    }
    // The real thing: the release `idsync` binary, as an operator runs it
    // (source read and state load overlap there), several times over.
    let idsync = me
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("idsync"))
        .filter(|p| p.exists());
    let Some(idsync) = idsync else {
        println!(
            "(build the release binary with `cargo build --release` to also time `idsync plan`)"
        );
        return;
    };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let empty = empty_state_config(&config);
    let rows = [
        (
            format!("{users} users, no-change `idsync plan`"),
            (0..runs)
                .map(|_| run_idsync(&idsync, &["plan"], &config))
                .collect::<Vec<_>>(),
            targets(users, false),
        ),
        (
            format!("{users} users, empty state, `idsync plan --format json` ({users} creates)"),
            (0..runs)
                .map(|_| run_idsync(&idsync, &["plan", "--format", "json"], &empty))
                .collect(),
            targets(users, true),
        ),
    ];
    println!();
    println!(
        "| scenario (CSV, {groups} groups, release `idsync`, {runs} runs) | wall time | CPU (user + sys) | peak RSS | target | met |"
    );
    println!("|---|---|---|---|---|---|");
    for (scenario, runs, (wall_target, rss_target)) in rows {
        let wall = Spread::of(runs.iter().map(|r| r.wall));
        let cpu = Spread::of(runs.iter().map(|r| r.cpu));
        let rss = Spread::of(runs.iter().map(|r| r.peak_mib));
        let mut target = Vec::new();
        let mut met = Vec::new();
        if let Some(t) = wall_target {
            target.push(format!("under {t} s"));
            met.push(format!(
                "{} (slowest {:.2}× the target)",
                if wall.max < t { "✔" } else { "✘" },
                wall.max / t
            ));
        }
        if let Some(t) = rss_target {
            target.push(format!("under {t} MiB"));
            met.push(format!(
                "{} (largest {:.2}× the target)",
                if rss.max < t { "✔" } else { "✘" },
                rss.max / t
            ));
        }
        let none = || "—".to_string();
        println!(
            "| {scenario} | {} s | {} s | {} MiB | {} | {} |",
            wall.show(2),
            cpu.show(2),
            rss.show(0),
            if target.is_empty() {
                none()
            } else {
                target.join(", ")
            },
            if met.is_empty() {
                none()
            } else {
                met.join(", ")
            },
        );
    }
}

/// The targets for a size, `(wall seconds, peak MiB)`: the no-change
/// cycle, or the empty-state JSON plan (`creates`).
fn targets(users: usize, creates: bool) -> (Option<f64>, Option<f64>) {
    match (users, creates) {
        (100_000, false) => (Some(0.5), None),
        (1_000_000, false) => (Some(1.5), Some(384.0)),
        (1_000_000, true) => (Some(4.0), Some(512.0)),
        _ => (None, None),
    }
}

/// A copy of `config` with a state DB that does not exist: a first sync's plan.
fn empty_state_config(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("config");
    let empty = config.with_file_name("bench-empty.yaml");
    std::fs::write(&empty, text.replace("state: bench.db", "state: empty.db")).expect("config");
    let _ = std::fs::remove_file(config.with_file_name("empty.db"));
    empty
}

/// The smallest and largest of a figure over the runs.
struct Spread {
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        values.fold(
            Spread {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            },
            |s, v| Spread {
                min: s.min.min(v),
                max: s.max.max(v),
            },
        )
    }

    fn show(&self, decimals: usize) -> String {
        let (min, max) = (
            format!("{:.*}", decimals, self.min),
            format!("{:.*}", decimals, self.max),
        );
        if min == max {
            min
        } else {
            format!("{min}–{max}")
        }
    }
}

/// One run of the `idsync` binary: wall seconds, CPU seconds, peak RSS (MiB).
struct Run {
    wall: f64,
    cpu: f64,
    peak_mib: f64,
}

/// Runs `idsync ARGS -c CONFIG` (output discarded) and reaps it with `wait4`
/// for its own CPU time and peak RSS (this process, forked from, is small).
// Reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_idsync(idsync: &Path, args: &[&str], config: &Path) -> Run {
    let started = Instant::now();
    let child = std::process::Command::new(idsync)
        .args(args)
        .arg("-c")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run idsync");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(waited, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "idsync {args:?} failed (status {status})"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn vm_hwm_kib(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn generate(dir: &Path, users: usize, groups: usize) -> PathBuf {
    let mut u = std::io::BufWriter::new(std::fs::File::create(dir.join("users.csv")).unwrap());
    writeln!(
        u,
        "id,email,given_name,family_name,display_name,title,department,active"
    )
    .unwrap();
    let given = ["Ada", "Bjørn", "Chloé", "Dmitri", "Elena", "José", "Zoë"];
    let family = [
        "Lovelace",
        "Østergaard",
        "Müller",
        "Nuñez",
        "Hopper",
        "Tanaka",
    ];
    let titles = [
        "Engineer",
        "Senior Engineer",
        "Designer",
        "Account Executive",
    ];
    for i in 0..users {
        let (g, f) = (given[i % given.len()], family[i % family.len()]);
        writeln!(
            u,
            "u{i:07},user{i}@example.com,{g},{f},{g} {f},{},Dept {},true",
            titles[i % titles.len()],
            i % 50
        )
        .unwrap();
    }
    let mut g = std::io::BufWriter::new(std::fs::File::create(dir.join("groups.csv")).unwrap());
    writeln!(g, "group,member").unwrap();
    for i in 0..users {
        writeln!(g, "team-{},u{i:07}", i % groups).unwrap();
        writeln!(g, "site-{},u{i:07}", i % 10).unwrap();
    }
    let config = dir.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {}/mappings/csv.yaml\n\
             target: {{ kind: scim, base_url: http://127.0.0.1:9/v2, token_env: BENCH_TOKEN }}\n\
             policy: {{ max_removals: 5% }}\n\
             state: bench.db\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    config
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    vm_hwm_kib(&status).map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Plans `desired` against `state`, loading attributes from `db` as `sync` does.
fn make_plan(
    settings: &Settings,
    desired: idsync::model::Desired,
    state: State,
    db: Option<&StateDb>,
) -> Plan {
    let input = PlanningInput::new(
        desired,
        state,
        None,
        settings.plan_options(),
        |state: &mut State, keys: &[SourceKey]| match db {
            Some(db) => db.load_attrs(state, keys.iter()),
            None => Ok(()),
        },
    )
    .expect("attrs");
    plan::plan(&input)
}

async fn stage(name: &str, config: &Path) {
    let settings = Settings::load(config).expect("config");
    let t = Instant::now();
    let dir = settings
        .source
        .adapter()
        .read(&settings.mapping.source_attributes())
        .await
        .expect("source");
    let read = t.elapsed();
    let rss_read = rss_mib();
    let desired = settings.mapping.build(dir).expect("mapping");
    let mapped = t.elapsed();
    let rss_mapped = rss_mib();
    match name {
        "empty-state-plan" => {
            let plan = make_plan(&settings, desired, State::default(), None);
            let total = t.elapsed();
            println!(
                "plan from empty state: {} operations; read {:.2}s, map {:.2}s, plan {:.2}s, total {:.2}s, peak RSS {:.0} MiB",
                plan.operations.len(),
                read.as_secs_f64(),
                (mapped - read).as_secs_f64(),
                (total - mapped).as_secs_f64(),
                total.as_secs_f64(),
                peak_rss_mib()
            );
        }
        "seed-state" => {
            // The state a successful first sync leaves behind: every operation of
            // the first plan answered with success, through the executor's own
            // state transition.
            let plan = make_plan(&settings, desired, State::default(), None);
            let changes = assume_success(&State::default(), &plan, &settings.mapping.create_only());
            let t = Instant::now();
            let mut db = StateDb::open(&settings.state_path).expect("state");
            db.commit_changes(&changes).expect("seed");
            let state = db.load().expect("load");
            println!(
                "seeded the state DB with {} users, {} groups in {:.2}s",
                state.users.len(),
                state.groups.len(),
                t.elapsed().as_secs_f64()
            );
        }
        _ => {
            let mut db = StateDb::open_read_only(&settings.state_path)
                .expect("state")
                .expect("seeded");
            let state = db.load().expect("load");
            let loaded = t.elapsed();
            let rss_loaded = rss_mib();
            let plan = make_plan(&settings, desired, state, Some(&db));
            let total = t.elapsed();
            assert!(
                plan.is_empty(),
                "a no-change cycle planned {} operations",
                plan.operations.len()
            );
            println!(
                "no-change cycle: read {:.2}s, map {:.2}s, load state {:.2}s, plan {:.2}s, total {:.2}s, peak RSS {:.0} MiB",
                read.as_secs_f64(),
                (mapped - read).as_secs_f64(),
                (loaded - mapped).as_secs_f64(),
                (total - loaded).as_secs_f64(),
                total.as_secs_f64(),
                peak_rss_mib()
            );
            println!(
                "  resident after the read {rss_read:.0} MiB, the mapping {rss_mapped:.0} MiB, the state load {rss_loaded:.0} MiB"
            );
        }
    }
}

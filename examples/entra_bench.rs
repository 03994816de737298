//! Entra ID read benchmark: a local Graph stand-in (the one the Entra tests
//! use, `tests/entra/graph_server.rs`) holding N users in G groups (two
//! memberships per user) on 127.0.0.1, read by the release `idsync` binary:
//!
//! (a) a first full round into an empty state: `idsync plan` without a state
//!     DB (every user and group read page by page, N creates planned);
//! (b) a no-change cycle: the state DB seeded as a completed first sync leaves
//!     it (the state of every create answered, and the mirror with its delta
//!     links, and sealed as a clean close seals it), then `idsync sync`,
//!     which reads the (empty) changes from the committed links, plans
//!     nothing and commits the mirror; three cycles on the sealed file, then
//!     one with the seal removed (the first cycle after anything but a clean
//!     close, which runs SQLite's `quick_check` in full).
//!
//! Each no-change `sync` is checked against the target (CPU under 0.5 s, peak
//! RSS under 200 MiB at 100,000 users in 1,000 groups) with ✔ or ✘.
//!
//! Each `idsync` run is a child process; its CPU time and peak RSS come from
//! `wait4` (rusage), its Graph requests from the stand-in's log. The SCIM
//! target is a minimal stand-in answering the connectivity check (a no-change
//! cycle writes nothing).
//!
//!     cargo build --release --bin idsync --example entra_bench
//!     ./target/release/examples/entra_bench 100000 1000

#[path = "../tests/entra/graph_server.rs"]
mod graph_server;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graph_server::{Directory, GraphServer, Group};
use idsync::apply::assume_success;
use idsync::config::Settings;
use idsync::model::{Mirror, MirrorDigest, State};
use idsync::plan::{self, PlanningInput};
use idsync::state::StateDb;
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-client-secret-value";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--launch") {
        launch(&args[2..]);
    }
    let users: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let groups: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let me = std::env::current_exe().expect("current exe");
    let idsync = me
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("idsync"))
        .filter(|p| p.exists())
        .expect("build the binary too: cargo build --release --bin idsync --example entra_bench");

    let graph = GraphServer::start(SECRET);
    graph.repeat_objects(false);
    let started = Instant::now();
    graph.edit(|d| *d = directory(users, groups));
    println!(
        "Graph stand-in: {users} users, {groups} groups, {} memberships (built in {:.1}s)",
        2 * users,
        started.elapsed().as_secs_f64()
    );
    let scim = ScimStandIn::start();

    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &graph.url(), scim.port);

    // (a) A first full round, read into an empty mirror: `idsync plan` on an
    // empty state (no DB).
    graph.clear_log();
    let a = run(&idsync, &["plan", "--format", "json"], &config);
    let plan: serde_json::Value = serde_json::from_slice(&a.stdout).expect("plan JSON");
    let (user_pages, group_pages) = pages(&graph.log());
    println!(
        "(a) first full round, `idsync plan` on an empty state: {:.2}s wall, {:.2}s CPU \
         (user {:.2}s + sys {:.2}s), peak RSS {:.0} MiB; {} Graph requests \
         ({user_pages} users/delta pages, {group_pages} groups/delta pages) + {} token request(s), \
         the stand-in busy {:.2}s answering them; {} user creates planned",
        a.wall.as_secs_f64(),
        a.cpu().as_secs_f64(),
        a.user.as_secs_f64(),
        a.sys.as_secs_f64(),
        a.max_rss_kib as f64 / 1024.0,
        graph.graph_requests(),
        graph.token_requests(),
        graph.busy().as_secs_f64(),
        plan["summary"]["create_users"]
    );

    // Seed the state as a completed first sync leaves it.
    let started = Instant::now();
    seed(&config);
    println!(
        "seeded the state DB (users, groups, memberships, mirror, delta links) in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // (b) A no-change delta cycle over the mirror: first the read side alone
    // (`idsync plan`, which writes nothing), then whole cycles.
    graph.clear_log();
    let p = run(&idsync, &["plan", "--format", "json"], &config);
    let plan: serde_json::Value = serde_json::from_slice(&p.stdout).expect("plan JSON");
    assert_eq!(
        plan["operations"].as_array().map_or(0, Vec::len),
        0,
        "not a no-change plan"
    );
    println!(
        "(b) no-change delta read, `idsync plan` on the seeded state: {:.2}s wall, {:.2}s CPU \
         (user {:.2}s + sys {:.2}s), peak RSS {:.0} MiB; {} Graph requests + {} token request(s), the stand-in busy \
         {:.2}s answering them",
        p.wall.as_secs_f64(),
        p.cpu().as_secs_f64(),
        p.user.as_secs_f64(),
        p.sys.as_secs_f64(),
        p.max_rss_kib as f64 / 1024.0,
        graph.graph_requests(),
        graph.token_requests(),
        graph.busy().as_secs_f64(),
    );
    let seal = {
        let mut name = Settings::load(&config)
            .expect("config")
            .state_path
            .into_os_string();
        name.push(".sealed");
        PathBuf::from(name)
    };
    for round in 1..=4 {
        let what = if round == 4 {
            // As after a run that did not end cleanly: no seal to trust.
            std::fs::remove_file(&seal).expect("the last cycle sealed the file");
            "after an unclean close (no seal: full `quick_check`)"
        } else {
            assert!(
                seal.exists(),
                "the file is not sealed before cycle #{round}"
            );
            "on the sealed file"
        };
        graph.clear_log();
        let b = run(&idsync, &["sync", "--format", "json"], &config);
        let summary: serde_json::Value = serde_json::from_slice(&b.stdout).expect("summary JSON");
        assert_eq!(summary["applied"], 0, "not a no-change cycle: {summary}");
        assert_eq!(summary["exit_code"], 0, "{summary}");
        let log = graph.log();
        let (user_pages, group_pages) = pages(&log);
        println!(
            "(b) no-change delta cycle #{round}, `idsync sync` {what}: {:.2}s wall, {:.2}s CPU \
             (user {:.2}s + sys {:.2}s), peak RSS {:.0} MiB; {} Graph requests \
             ({user_pages} users/delta, {group_pages} groups/delta) + {} token request(s), \
             the stand-in busy {:.2}s answering them; {} operations",
            b.wall.as_secs_f64(),
            b.cpu().as_secs_f64(),
            b.user.as_secs_f64(),
            b.sys.as_secs_f64(),
            b.max_rss_kib as f64 / 1024.0,
            graph.graph_requests(),
            graph.token_requests(),
            graph.busy().as_secs_f64(),
            summary["applied"].as_u64().unwrap_or(0) + summary["failed"].as_u64().unwrap_or(0)
        );
        println!("    {}", against_target(&b, users, groups));
        assert_eq!(
            log.iter().filter(|(_, p)| p.contains("$select=")).count(),
            0,
            "the no-change cycle started a full round: {log:?}"
        );
    }
    drop(scim);
}

/// The no-change cycle's target at 100,000 users in 1,000 groups.
const TARGET_CPU: Duration = Duration::from_millis(500);
const TARGET_RSS_MIB: f64 = 200.0;

/// `run` against the no-change target: ✔ or ✘ for CPU and for peak RSS.
fn against_target(run: &Run, users: usize, groups: usize) -> String {
    let mark = |ok: bool| if ok { "✔" } else { "✘" };
    let rss_mib = run.max_rss_kib as f64 / 1024.0;
    let scale = if (users, groups) == (100_000, 1_000) {
        ""
    } else {
        " (the target is set for 100000 users in 1000 groups)"
    };
    format!(
        "target: CPU under {:.1} s {}, peak RSS under {TARGET_RSS_MIB:.0} MiB {}{scale}",
        TARGET_CPU.as_secs_f64(),
        mark(run.cpu() < TARGET_CPU),
        mark(rss_mib < TARGET_RSS_MIB),
    )
}

fn uid(i: usize) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

fn gid(i: usize) -> String {
    format!("10000000-0000-0000-0000-{i:012}")
}

/// `users` users; user `i` is in group `i % groups` and in the group half-way
/// round from it.
fn directory(users: usize, groups: usize) -> Directory {
    let given = ["Ada", "Bjørn", "Chloé", "Dmitri", "Elena", "José", "Zoë"];
    let family = ["Lovelace", "Østergaard", "Müller", "Nuñez", "Hopper"];
    let titles = [
        "Engineer",
        "Senior Engineer",
        "Designer",
        "Account Executive",
    ];
    let mut d = Directory::default();
    let mut teams: Vec<Group> = (0..groups)
        .map(|g| Group {
            name: format!("team-{g}"),
            members: Default::default(),
        })
        .collect();
    for i in 0..users {
        let (g, f) = (given[i % given.len()], family[i % family.len()]);
        let props = json!({
            "userPrincipalName": format!("user{i}@contoso.com"),
            "mail": format!("user{i}@contoso.com"),
            "givenName": g,
            "surname": f,
            "displayName": format!("{g} {f}"),
            "jobTitle": titles[i % titles.len()],
            "department": format!("Dept {}", i % 50),
            "employeeId": format!("E{i}"),
            "accountEnabled": true,
            "userType": "Member",
        });
        d.users
            .insert(uid(i), props.as_object().cloned().expect("object"));
        if groups > 0 {
            teams[i % groups].members.insert(uid(i));
            if groups > 1 {
                teams[(i % groups + groups / 2) % groups]
                    .members
                    .insert(uid(i));
            }
        }
    }
    for (g, team) in teams.into_iter().enumerate() {
        d.groups.insert(gid(g), team);
    }
    d
}

fn write_config(dir: &Path, graph_url: &str, scim_port: u16) -> PathBuf {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = dir.join("bench.yaml");
    std::fs::write(
        &config,
        format!(
            "{source}\
             \x20 rate_limit: 1000\n\
             \x20 timeout: 60s\n\
             mapping: {}/mappings/entra.yaml\n\
             target:\n\
             \x20 kind: scim\n\
             \x20 base_url: http://127.0.0.1:{scim_port}/v2\n\
             \x20 token_env: BENCH_TOKEN\n\
             policy:\n\
             \x20 max_removals: 5%\n\
             \x20 groups: {{ provision: true }}\n\
             state: bench.db\n",
            env!("CARGO_MANIFEST_DIR"),
            source = graph_server::source_yaml(graph_url, "  client_secret_file: client-secret\n"),
        ),
    )
    .expect("config");
    config
}

/// Pages of users/delta and of groups/delta in `log`.
fn pages(log: &[(String, String)]) -> (usize, usize) {
    let count = |prefix: &str| log.iter().filter(|(_, p)| p.starts_with(prefix)).count();
    (count("/v1.0/users/delta"), count("/v1.0/groups/delta"))
}

/// The state DB a completed first sync leaves: every operation of the first
/// plan answered with success (through the executor's own state transition),
/// and the mirror as the first full round read it, with its delta links.
fn seed(config: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let settings = Settings::load(config).expect("config");
    let attributes = settings.mapping.source_attributes();
    let source = settings
        .source
        .adapter()
        .mirrored()
        .expect("Entra keeps a mirror");
    let (dir, mirror) = rt
        .block_on(async {
            let (mirror, assignments) = source.update(&attributes, Mirror::default()).await?;
            let dir = idsync::source::read_whole(source.directory(&mirror), assignments).await?;
            Ok::<_, idsync::source::SourceError>((dir, mirror))
        })
        .expect("full round");
    assert!(mirror.has_links(), "the full round ended without links");
    let desired = settings.mapping.build(dir).expect("mapping");
    let input = PlanningInput::new(
        desired,
        State::default(),
        None,
        settings.plan_options(),
        |_: &mut State, _: &[idsync::model::SourceKey]| Ok::<(), std::convert::Infallible>(()),
    )
    .expect("planning input");
    let plan = plan::plan(&input);
    let changes = assume_success(&State::default(), &plan, &settings.mapping.create_only());
    let mut db = StateDb::open(&settings.state_path).expect("state");
    db.commit_changes(&changes).expect("seed");
    db.save_mirror(&MirrorDigest::default(), &mirror)
        .expect("seed mirror");
    // A completed first sync ends cleanly: the file is sealed as it is closed.
    db.seal_on_close();
}

/// One finished `idsync` process.
struct Run {
    wall: Duration,
    user: Duration,
    sys: Duration,
    max_rss_kib: i64,
    stdout: Vec<u8>,
}

impl Run {
    fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

/// Runs `idsync ARGS -c CONFIG` in the config's folder, through a small
/// launcher (this program with `--launch`): the resource usage `wait4` reports
/// for a child includes the peak RSS of the process it was forked from, and
/// this one holds the whole stand-in directory, so idsync is forked from the
/// launcher, which reports idsync's own wall time and rusage.
fn run(idsync: &Path, args: &[&str], config: &Path) -> Run {
    let usage_file = config.with_file_name("rusage");
    let me = std::env::current_exe().expect("current exe");
    // `ENTRA_BENCH_WRAP="perf record -g -o FILE"` (or valgrind) runs the
    // `sync` cycles under a profiler; the figures then measure the profiler too.
    let wrap: Vec<String> = match std::env::var("ENTRA_BENCH_WRAP") {
        Ok(w) if args.first() == Some(&"sync") => w.split_whitespace().map(String::from).collect(),
        _ => Vec::new(),
    };
    let mut command = std::process::Command::new(me);
    command.arg("--launch").arg(&usage_file);
    match wrap.split_first() {
        Some((program, rest)) => command.arg(program).args(rest).arg(idsync),
        None => command.arg(idsync),
    };
    let out = command
        .args(args)
        .arg("-c")
        .arg(config)
        .current_dir(config.parent().expect("config dir"))
        .env("BENCH_TOKEN", "bench-token")
        .env("NO_COLOR", "1")
        .env_remove("IDSYNC_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run idsync");
    if std::env::var_os("ENTRA_BENCH_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        out.status.success(),
        "idsync {args:?} failed ({})\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&usage_file).expect("rusage file");
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    Run {
        wall: Duration::from_micros(n[0]),
        user: Duration::from_micros(n[1]),
        sys: Duration::from_micros(n[2]),
        max_rss_kib: n[3] as i64,
        stdout: out.stdout,
    }
}

/// `--launch FILE PROGRAM ARGS…`: runs PROGRAM (stdio inherited), writes its
/// wall time, user and system CPU time (µs) and peak RSS (KiB) to FILE, and
/// exits with its exit code.
// Reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn launch(args: &[String]) -> ! {
    let started = Instant::now();
    let child = std::process::Command::new(&args[1])
        .args(&args[2..])
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(waited, pid, "wait4");
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    std::fs::write(
        &args[0],
        format!(
            "{} {} {} {}\n",
            wall.as_micros(),
            micros(usage.ru_utime),
            micros(usage.ru_stime),
            usage.ru_maxrss
        ),
    )
    .expect("write rusage");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    std::process::exit(code)
}

/// A SCIM target that answers the connectivity check and every read with an
/// empty list (a no-change cycle sends nothing else); on 127.0.0.1.
struct ScimStandIn {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScimStandIn {
    fn start() -> ScimStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(900) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            std::thread::spawn(move || answer(stream));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        ScimStandIn {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ScimStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 1 << 20 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if !head.starts_with("GET ") {
        (501, json!({"detail": "this stand-in only reads"}))
    } else if target.starts_with("/v2/ServiceProviderConfig") {
        (
            200,
            json!({"patch": {"supported": true}, "filter": {"supported": true, "maxResults": 200}}),
        )
    } else {
        (
            200,
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                   "totalResults": 0, "Resources": []}),
        )
    };
    let text = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

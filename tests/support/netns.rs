//! A network namespace of a test's own (`Netns`), joined to the root
//! namespace by a veth pair with private addresses (`10.213.X.Y/30`: the root
//! side `.1`, the namespace side `.2`), for faults below HTTP: `iptables`
//! rules inside the namespace (loss, a silent peer, resets) and, where the
//! kernel has it, `netem` on both ends of the veth (delay, jitter, reorder).
//!
//! Servers run inside the namespace (`Netns::command` wraps a command in
//! `ip netns exec`); idsync stays in the root namespace and reaches them at
//! `ns_addr`. Nothing listens on a public interface: the addresses exist only
//! on the veth pair, and the namespace's only other interface is its own
//! loopback.
//!
//! Names are unique per process and per namespace (`idsync-nf-PID-N`, veth
//! `nfPIDhN`/`nfPIDnN`), so tests run in parallel. Dropping the guard (also
//! while unwinding from a panic) kills by PID every process still in the
//! namespace, deletes the namespace (its iptables rules and qdiscs go with
//! it) and the root end of the veth. Namespaces left by a test process that
//! was killed are removed by the next one.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::process::{kill, run_bounded};

/// The prefix of every namespace these tests make.
const PREFIX: &str = "idsync-nf-";
/// The private /16 the /30 links are taken from.
const NET: [u8; 2] = [10, 213];
/// How long one `ip`, `tc` or `iptables` command may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether these tests can run here: root, `ip netns` and `iptables`. Prints
/// why not and returns false (the test is skipped) when not root or `ip
/// netns` is unavailable; under `CI` that is a failure instead. A missing
/// `iptables` always fails (`scripts/test-env.sh` installs it).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        Some("network-fault tests need root (network namespaces, veth, iptables)".to_owned())
    } else {
        match tool(&["ip", "netns", "list"]) {
            Ok(_) => None,
            Err(e) => Some(format!("`ip netns` is unavailable: {e}")),
        }
    };
    if let Some(why) = why {
        assert!(std::env::var_os("CI").is_none(), "{why} (CI must run them)");
        eprintln!("skipped: {why}");
        return false;
    }
    if let Err(e) = tool(&["iptables", "-V"]) {
        panic!(
            "iptables does not run ({e})\nhint: run scripts/test-env.sh (apt-get install -y iptables)"
        );
    }
    true
}

/// Runs a command to the end (bounded); its stdout, or what went wrong.
fn tool(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_bounded(cmd, TOOL_TIMEOUT, None);
    if out.code == 0 {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`{}` exited {}: {}",
            args.join(" "),
            out.code,
            out.stderr.trim()
        ))
    }
}

/// Like [`tool`], panicking on failure.
fn must(args: &[&str]) -> String {
    tool(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace with a veth link to the root namespace; deleted on drop.
pub struct Netns {
    pub name: String,
    /// The veth end in the root namespace, and the one in the namespace.
    pub host_if: String,
    pub ns_if: String,
    /// The root side's address (where idsync's connections come from).
    pub host_addr: Ipv4Addr,
    /// The namespace side's address (where its servers listen).
    pub ns_addr: Ipv4Addr,
}

impl Netns {
    /// A new namespace and link. Call [`available`] first.
    pub fn new() -> Netns {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let lock = Lock::take();
        let base = free_subnet(pid as usize * 31 + n * 7);
        let ns = Netns {
            name: format!("{PREFIX}{pid}-{n}"),
            host_if: format!("nf{pid:x}h{n}"),
            ns_if: format!("nf{pid:x}n{n}"),
            host_addr: Ipv4Addr::new(NET[0], NET[1], base[0], base[1] + 1),
            ns_addr: Ipv4Addr::new(NET[0], NET[1], base[0], base[1] + 2),
        };
        // From here on the guard exists: a failure below still cleans up.
        must(&["ip", "netns", "add", &ns.name]);
        let (h, i) = (ns.host_if.as_str(), ns.ns_if.as_str());
        must(&["ip", "link", "add", h, "type", "veth", "peer", "name", i]);
        must(&["ip", "link", "set", i, "netns", &ns.name]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            h,
        ]);
        must(&["ip", "link", "set", h, "up"]);
        drop(lock); // the address is taken: others see it now
        ns.exec(&["ip", "addr", "add", &format!("{}/30", ns.ns_addr), "dev", i]);
        ns.exec(&["ip", "link", "set", i, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME PROGRAM`: run `program` inside the namespace
    /// (`ip` execs it, so the child's PID is the program's own).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        must(&full)
    }

    /// The path `setns` opens to enter the namespace.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `iptables ARGS` inside the namespace.
    pub fn iptables(&self, args: &[&str]) {
        let mut full = vec!["iptables", "-w", "5"];
        full.extend_from_slice(args);
        self.exec(&full);
    }

    /// Drops a fraction `p` of the TCP segments to and from `port` on the
    /// veth, each direction on its own: real losses, real retransmits.
    pub fn lose(&self, port: u16, p: f64) {
        let p = format!("{p}");
        let port = port.to_string();
        let stat = ["-m", "statistic", "--mode", "random", "--probability", &p];
        self.rule("INPUT", "-i", "--dport", &port, &stat, &["-j", "DROP"]);
        self.rule("OUTPUT", "-o", "--sport", &port, &stat, &["-j", "DROP"]);
    }

    /// Every segment to and from `port` dropped, from now on: the peer goes
    /// silent (no answer, no reset; connections in flight stall). Inserted
    /// first, so it wins over any other rule.
    pub fn silence(&self, port: u16) {
        let port = port.to_string();
        let i = &self.ns_if;
        self.iptables(&[
            "-I", "INPUT", "-i", i, "-p", "tcp", "--dport", &port, "-j", "DROP",
        ]);
        self.iptables(&[
            "-I", "OUTPUT", "-o", i, "-p", "tcp", "--sport", &port, "-j", "DROP",
        ]);
    }

    /// Resets connections to `port` in the middle of a response: once the
    /// server has sent `from`..`to` bytes on a connection (`connbytes`, IP
    /// headers included), each segment the client sends (its ACKs of the
    /// answer) is refused with a TCP reset with probability `p`. The client
    /// sees "connection reset" while it reads the answer.
    pub fn reset_mid_response(&self, port: u16, from: u64, to: u64, p: f64) {
        let range = format!("{from}:{to}");
        let p = format!("{p}");
        let port = port.to_string();
        let matches = [
            "-m",
            "connbytes",
            "--connbytes",
            &range,
            "--connbytes-dir",
            "reply",
            "--connbytes-mode",
            "bytes",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
        ];
        let reject = ["-j", "REJECT", "--reject-with", "tcp-reset"];
        self.rule("INPUT", "-i", "--dport", &port, &matches, &reject);
    }

    fn rule(&self, chain: &str, dir: &str, port_opt: &str, port: &str, m: &[&str], j: &[&str]) {
        let mut args = vec!["-A", chain, dir, &self.ns_if, "-p", "tcp", port_opt, port];
        args.extend_from_slice(m);
        args.extend_from_slice(j);
        self.iptables(&args);
    }

    /// Removes every rule: the link heals.
    pub fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
        self.iptables(&["-F", "OUTPUT"]);
    }

    /// How many packets the rules that end in `target` (`DROP`, `REJECT`)
    /// matched so far.
    pub fn matched(&self, target: &str) -> u64 {
        let listing = self.exec(&["iptables", "-w", "5", "-L", "-v", "-x", "-n"]);
        listing
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() > 2 && cols[2] == target).then(|| cols[0].parse::<u64>().ok())?
            })
            .sum()
    }

    /// Delay (and jitter, reordering) by `netem` on both ends of the veth, when
    /// this kernel has it: `one_way` ± `jitter` each way. False when it has not
    /// (then a [`super::relay::Relay`] delays instead).
    pub fn netem(&self, one_way: Duration, jitter: Duration, reorder_pct: u32) -> bool {
        if !netem_available() {
            return false;
        }
        let d = format!("{}ms", one_way.as_millis());
        let j = format!("{}ms", jitter.as_millis());
        let r = format!("{reorder_pct}%");
        let args = ["root", "netem", "delay", &d, &j, "reorder", &r];
        let mut host = vec!["tc", "qdisc", "add", "dev", &self.host_if];
        host.extend_from_slice(&args);
        must(&host);
        let mut inner = vec!["tc", "qdisc", "add", "dev", &self.ns_if];
        inner.extend_from_slice(&args);
        self.exec(&inner);
        true
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_members(&self.name);
        let _ = tool(&["ip", "netns", "del", &self.name]);
        // The namespace is torn down asynchronously; the root end goes now.
        let _ = tool(&["ip", "link", "del", &self.host_if]);
    }
}

/// Kills (SIGKILL, by PID) every process still inside namespace `name`.
fn kill_members(name: &str) {
    if let Ok(pids) = tool(&["ip", "netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let _ = kill("KILL", pid);
        }
    }
}

/// Whether `tc qdisc add … netem` works on this kernel (tried once, on a
/// dummy link in a namespace of its own).
pub fn netem_available() -> bool {
    static NETEM: OnceLock<bool> = OnceLock::new();
    *NETEM.get_or_init(|| {
        let name = format!("{PREFIX}{}-probe", std::process::id());
        if tool(&["ip", "netns", "add", &name]).is_err() {
            return false;
        }
        let exec = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &name];
            full.extend_from_slice(args);
            tool(&full)
        };
        let ok = exec(&["ip", "link", "add", "probe0", "type", "dummy"]).is_ok()
            && exec(&[
                "tc", "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms",
            ])
            .is_ok();
        let _ = tool(&["ip", "netns", "del", &name]);
        if !ok {
            eprintln!("note: this kernel has no netem qdisc; the delaying relay stands in");
        }
        ok
    })
}

/// Deletes namespaces a killed test process left behind (once per process):
/// `idsync-nf-PID-…` whose PID no longer runs.
fn remove_stale() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(list) = tool(&["ip", "netns", "list"]) else {
            return;
        };
        for name in list.split_whitespace().filter(|n| n.starts_with(PREFIX)) {
            let owner = name[PREFIX.len()..].split('-').next().unwrap_or("");
            let alive = owner
                .parse::<u32>()
                .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                kill_members(name);
                let _ = tool(&["ip", "netns", "del", name]);
            }
        }
    });
}

/// A /30 in `10.213.0.0/16` that no address or route of the root namespace
/// overlaps, searched from `start`: `[third octet, fourth octet]` of its base.
fn free_subnet(start: usize) -> [u8; 2] {
    let used = format!(
        "{}\n{}",
        must(&["ip", "-4", "-o", "addr", "show"]),
        must(&["ip", "-4", "route", "show", "table", "all"])
    );
    let taken: Vec<(u32, u32)> = used.split_whitespace().filter_map(parse_net).collect();
    for i in 0..(1usize << 14) {
        let slot = ((start + i) % (1 << 14)) as u32;
        let lo = u32::from_be_bytes([NET[0], NET[1], 0, 0]) + slot * 4;
        let hi = lo + 3;
        if taken.iter().all(|&(a, b)| b < lo || a > hi) {
            let [_, _, x, y] = lo.to_be_bytes();
            return [x, y];
        }
    }
    panic!("no free /30 left in 10.213.0.0/16");
}

/// `A.B.C.D/LEN` (or a bare address) as its first and last address.
fn parse_net(word: &str) -> Option<(u32, u32)> {
    let (addr, len) = word.split_once('/').unwrap_or((word, "32"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let lo = u32::from(addr) & mask;
    // The default route covers everything; it is not an overlap.
    (len > 0).then_some((lo, lo | !mask))
}

/// An exclusive lock held while a subnet is chosen and assigned, so that test
/// processes starting at once never pick the same one.
struct Lock(std::fs::File);

impl Lock {
    fn take() -> Lock {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("idsync-netfaults.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: a valid, open descriptor; flock blocks until it is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", path.display());
        let _ = writeln!(file, "{}", std::process::id());
        Lock(file)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Enters namespace `path` on the calling thread only (sockets it opens from
/// then on belong to that namespace, wherever they are used).
pub fn enter(path: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid descriptor of a network namespace; CLONE_NEWNET only
    // moves this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

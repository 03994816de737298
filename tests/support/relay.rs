//! A delaying TCP relay inside a network namespace (`Relay`): what stands in
//! for `netem` on a kernel without it. It listens on the namespace's veth
//! address and forwards every connection to a server in the namespace,
//! holding each chunk of data `one_way ± jitter` in each direction before it
//! passes it on.
//!
//! - **Delay**: every chunk read from one side is written to the other at
//!   `now + one_way + U(-jitter, +jitter)`, never before the chunk ahead of it
//!   (a TCP stream stays in order), so a request costs about one round trip.
//! - **Handshake**: the relay's kernel completes the client's TCP handshake at
//!   once; the first chunk a client sends is held two more one-way delays (the
//!   SYN and SYN-ACK a real path would have carried), so a new connection
//!   costs its round trip as it would.
//! - **Reordering**: with probability `reorder` a chunk is held one more
//!   one-way delay (and the chunks behind it on its connection with it).
//!   Within a connection TCP hands bytes on in order whatever the network
//!   does, so what the application can see is reordering *across*
//!   connections: with jitter and these holds, a request sent later on one
//!   connection overtakes one sent earlier on another, and answers arrive in
//!   another order than the requests went out.
//! - **Loss** is not the relay's: `iptables -m statistic` drops segments on
//!   the veth (see `Netns::lose`), and the kernels retransmit them.
//!
//! The relay runs as threads of the test process that entered the namespace
//! (`setns` moves one thread; the sockets it opens stay in the namespace).
//! Every loop ends on the relay's stop flag (set on drop) or after an hour.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{Netns, enter};

/// The longest a relay runs, whatever happens.
const LIFETIME: Duration = Duration::from_secs(3600);
/// How often blocked threads look at the stop flag.
const TICK: Duration = Duration::from_millis(50);

/// How the relay delays traffic.
#[derive(Clone, Copy, Debug)]
pub struct Delay {
    /// Added in each direction.
    pub one_way: Duration,
    /// Each chunk's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// The probability that a chunk is held one more `one_way`.
    pub reorder: f64,
    /// Whether a new connection's first chunk pays for the handshake.
    pub handshake: bool,
}

impl Delay {
    /// Nothing added: the relay only exposes a server on the veth address.
    pub const NONE: Delay = Delay {
        one_way: Duration::ZERO,
        jitter: Duration::ZERO,
        reorder: 0.0,
        handshake: false,
    };

    /// 75 ms ± 15 ms each way: a round trip of 150 ms ± 30 ms, 2 % of the
    /// chunks held longer.
    pub fn rtt_150ms() -> Delay {
        Delay {
            one_way: Duration::from_millis(75),
            jitter: Duration::from_millis(15),
            reorder: 0.02,
            handshake: true,
        }
    }
}

/// What went through a relay.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Bytes from clients to the server, and back.
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// A relay from `ns_addr:port` in a namespace to a server there; stops on drop.
pub struct Relay {
    pub port: u16,
    pub addr: Ipv4Addr,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on a free port of `ns`'s veth address, forwarding to
    /// `upstream` (an address reachable inside `ns`).
    pub fn start(ns: &Netns, upstream: SocketAddr, delay: Delay) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (path, addr) = (ns.path(), ns.ns_addr);
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            std::thread::spawn(move || {
                let listener = enter(&path)
                    .and_then(|()| TcpListener::bind((addr, 0)))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l));
                match listener {
                    Ok(l) => {
                        let _ = tx.send(l.local_addr().map(|a| a.port()));
                        accept_loop(&l, upstream, delay, &stop, &stats);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
        };
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the relay thread reports its port")
            .unwrap_or_else(|e| panic!("relay in {}: {e}", ns.name));
        Relay {
            port,
            addr: ns.ns_addr,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    /// Bytes the server has sent through the relay so far.
    pub fn down_bytes(&self) -> u64 {
        self.stats.down.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    delay: Delay,
    stop: &Arc<AtomicBool>,
    stats: &Arc<Stats>,
) {
    let deadline = Instant::now() + LIFETIME;
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    let mut seed = 0x5eed_u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => continue,
        };
        // Opened by this thread: inside the namespace.
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            continue; // the client sees its connection closed
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        seed = seed.wrapping_add(1);
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let up = Direction {
            delay,
            first_extra: delay.handshake,
            seed,
        };
        let down = Direction {
            first_extra: false,
            seed: seed ^ 0xdead_beef,
            ..up
        };
        pumps.extend(pump(client, s2, up, stop, Arc::clone(stats), true));
        pumps.extend(pump(server, c2, down, stop, Arc::clone(stats), false));
        pumps.retain(|h| !h.is_finished());
    }
    for p in pumps {
        let _ = p.join();
    }
}

/// One direction of one connection.
#[derive(Clone, Copy)]
struct Direction {
    delay: Delay,
    first_extra: bool,
    seed: u64,
}

/// What the reader hands the writer.
enum Chunk {
    Data(Instant, Vec<u8>),
    /// The source closed its side: close ours once what came before is out.
    End(Instant),
    /// The source broke (reset): reset the other side.
    Broken,
}

/// Reads from `src` and writes to `dst`, delayed: two threads, joined by the
/// relay.
fn pump(
    src: TcpStream,
    dst: TcpStream,
    dir: Direction,
    stop: &Arc<AtomicBool>,
    stats: Arc<Stats>,
    upward: bool,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<Chunk>();
    let reader = {
        let stop = Arc::clone(stop);
        std::thread::spawn(move || read_side(src, dir, &stop, &tx, &stats, upward))
    };
    let writer = {
        let stop = Arc::clone(stop);
        std::thread::spawn(move || write_side(dst, &stop, &rx))
    };
    [reader, writer]
}

fn read_side(
    mut src: TcpStream,
    dir: Direction,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Chunk>,
    stats: &Stats,
    upward: bool,
) {
    let _ = src.set_read_timeout(Some(TICK));
    let mut rng = fastrand::Rng::with_seed(dir.seed);
    let mut last_due = Instant::now();
    let mut first = dir.first_extra;
    let deadline = Instant::now() + LIFETIME;
    let mut buf = vec![0u8; 16 * 1024];
    let d = dir.delay;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let due = |rng: &mut fastrand::Rng, first: bool| {
            let jitter = d.jitter.as_secs_f64() * (rng.f64() * 2.0 - 1.0);
            let mut secs = (d.one_way.as_secs_f64() + jitter).max(0.0);
            if first {
                secs += 2.0 * d.one_way.as_secs_f64();
            }
            if d.reorder > 0.0 && rng.f64() < d.reorder {
                secs += d.one_way.as_secs_f64();
            }
            Instant::now() + Duration::from_secs_f64(secs)
        };
        match src.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Chunk::End(last_due.max(due(&mut rng, false))));
                return;
            }
            Ok(n) => {
                let counter = if upward { &stats.up } else { &stats.down };
                counter.fetch_add(n as u64, Ordering::Relaxed);
                last_due = last_due.max(due(&mut rng, first));
                first = false;
                if tx.send(Chunk::Data(last_due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = tx.send(Chunk::Broken);
                return;
            }
        }
    }
}

fn write_side(mut dst: TcpStream, stop: &AtomicBool, rx: &mpsc::Receiver<Chunk>) {
    let deadline = Instant::now() + LIFETIME;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let chunk = match rx.recv_timeout(TICK) {
            Ok(chunk) => chunk,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let due = match &chunk {
            Chunk::Data(due, _) | Chunk::End(due) => Some(*due),
            Chunk::Broken => None,
        };
        if let Some(due) = due
            && !sleep_until(due, stop)
        {
            return;
        }
        match chunk {
            Chunk::Data(_, bytes) => {
                if dst.write_all(&bytes).is_err() {
                    abort(&dst);
                    return;
                }
            }
            Chunk::End(_) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Chunk::Broken => {
                abort(&dst);
                return;
            }
        }
    }
    abort(&dst);
}

/// Sleeps until `due` in short steps; false when the relay stops meanwhile.
fn sleep_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(TICK));
    }
}

/// Resets a connection (RST, not FIN): a TCP socket "connected" to
/// `AF_UNSPEC` disconnects with a reset; then both directions are shut so the
/// threads on its other descriptors wake up.
fn abort(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC is a valid argument, and
    // the descriptor is open for the duration of the call.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
        libc::connect(stream.as_raw_fd(), &addr, len);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

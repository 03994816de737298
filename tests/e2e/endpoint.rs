//! The daemon's endpoint (`metrics_listen:`), from outside: a real daemon against a
//! real scim2-server, fetched over TCP by a bounded client. `/metrics` says
//! what the metrics file says after a cycle (then the daemon's own series),
//! `/healthz` and `/readyz` answer, bad and oversized requests are refused,
//! idle clients are cut off and connections are capped; without `metrics_listen:`
//! nothing listens.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Workspace, closed_port_url, fresh_token, synced};
use crate::support::process::{free_port, wait_until};

/// The most a response may hold before the client stops reading.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `request` to `port` and reads the answer to its end (the server
/// closes every connection), bounded in time and size. `None`: no
/// connection, or it was closed or reset with nothing said.
fn exchange(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    stream.write_all(request).ok()?;
    let mut bytes = Vec::new();
    let _ = stream.take(MAX_RESPONSE).read_to_end(&mut bytes);
    let text = String::from_utf8(bytes).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// GETs `path`: the status and the body, headers checked.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let (status, text) = exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
        "{head}"
    );
    Some((status, body.to_string()))
}

/// The synced workspace's config with an endpoint, a metrics file and one
/// cycle an hour (so one cycle runs in the test).
fn with_endpoint(ws: &mut Workspace, port: u16) {
    ws.raw_config = Some(format!(
        "{}schedule: {{ interval: 1h }}\nmetrics_file: metrics.prom\nmetrics_listen: 127.0.0.1:{port}\n",
        ws.config_text()
    ));
}

#[test]
fn the_endpoint_serves_the_metrics_files_series_and_says_it_is_live_and_ready() {
    let (server, mut ws, _dir) = synced(3, 1);
    let port = free_port();
    with_endpoint(&mut ws, port);
    let mut daemon = ws.spawn(&["daemon"]);
    let ready = wait_until(Duration::from_secs(60), || {
        matches!(get(port, "/readyz"), Some((200, _)))
    });
    assert!(
        ready && daemon.is_running(),
        "{}",
        daemon.wait(Duration::from_secs(10)).dump()
    );

    let (status, live) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{live}");
    assert!(live.starts_with("ok: the next cycle is due at "), "{live}");
    let (_, ready) = get(port, "/readyz").unwrap();
    assert!(
        ready.starts_with("ready: the last cycle ended with exit 0 at "),
        "{ready}"
    );

    // The last cycle's text is the metrics file's, byte for byte; the
    // daemon's own series follow it.
    let file = std::fs::read_to_string(ws.path().join("metrics.prom")).unwrap();
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let daemon_series = metrics
        .strip_prefix(&file)
        .unwrap_or_else(|| panic!("served:\n{metrics}\nfile:\n{file}"));
    assert!(file.contains("\nidsync_last_exit_code 0\n"), "{file}");
    for line in [
        "idsync_daemon_cycle_running 0\n",
        "idsync_daemon_live 1\n",
        "idsync_daemon_ready 1\n",
    ] {
        assert!(daemon_series.contains(line), "{line} in\n{daemon_series}");
    }
    assert!(
        daemon_series
            .lines()
            .all(|l| l.starts_with("idsync_daemon_") || l.starts_with("# ")),
        "{daemon_series}"
    );
    for body in [&live, &ready, &metrics] {
        assert!(!body.contains(server.token()), "the token was served");
    }

    // Anything else: 404; SIGTERM stops the daemon and the endpoint with it.
    assert_eq!(get(port, "/").unwrap().0, 404);
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(30));
    out.assert_code(0);
    assert!(
        out.stderr
            .contains("serving /metrics, /healthz and /readyz"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains(server.token()));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after the daemon stopped"
    );
}

#[test]
fn an_unreachable_target_makes_the_daemon_not_ready_but_never_not_live() {
    // A failing target must not fail liveness: a restart loop cures nothing.
    let mut ws = Workspace::with_target(&closed_port_url(), &fresh_token("endpoint"));
    ws.timeout = "2s".into();
    let port = free_port();
    with_endpoint(&mut ws, port);
    let mut daemon = ws.spawn(&["daemon"]);
    let failed = wait_until(Duration::from_secs(60), || {
        get(port, "/readyz").is_some_and(|(s, body)| s == 503 && body.contains("exit 5"))
    });
    assert!(
        failed && daemon.is_running(),
        "{}",
        daemon.wait(Duration::from_secs(10)).dump()
    );
    let (status, ready) = get(port, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(
        ready.starts_with("not ready: the last cycle ended with exit 5 at "),
        "{ready}"
    );
    let (status, live) = get(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{live}");
    let (_, metrics) = get(port, "/metrics").unwrap();
    assert!(metrics.contains("\nidsync_last_exit_code 5\n"), "{metrics}");
    assert!(metrics.contains("\nidsync_daemon_live 1\n"), "{metrics}");
    assert!(metrics.contains("\nidsync_daemon_ready 0\n"), "{metrics}");
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(30)).assert_code(0);
}

#[test]
fn bad_oversized_and_idle_requests_are_refused_and_connections_are_capped() {
    let (_server, mut ws, _dir) = synced(1, 0);
    let port = free_port();
    with_endpoint(&mut ws, port);
    let mut daemon = ws.spawn(&["daemon"]);
    let up = wait_until(Duration::from_secs(60), || get(port, "/healthz").is_some());
    assert!(
        up && daemon.is_running(),
        "{}",
        daemon.wait(Duration::from_secs(10)).dump()
    );

    let status = |request: &[u8]| exchange(port, request).map(|(s, _)| s);
    assert_eq!(status(b"BLAH\r\n\r\n"), Some(400));
    assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), Some(405));
    assert_eq!(status(b"GET /metrics HTTP/2.0\r\n\r\n"), Some(505));
    // A head past 8 KiB, never ending: refused once the limit is passed.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(9000, b'a');
    assert_eq!(status(&huge), Some(431));

    // Idle clients take the 16 slots; the 17th is closed unanswered; each
    // idle one is cut off unanswered after the read time-out.
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let opened = Instant::now();
    assert_eq!(
        get(port, "/healthz"),
        None,
        "the 17th connection was served"
    );
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut bytes = Vec::new();
        let _ = (&mut stream).take(MAX_RESPONSE).read_to_end(&mut bytes);
        assert!(bytes.is_empty(), "an idle client got an answer");
        let _ = stream.shutdown(Shutdown::Both);
    }
    let cut_off = opened.elapsed();
    assert!(
        cut_off < Duration::from_secs(10),
        "idle clients held for {cut_off:?}"
    );
    assert_eq!(get(port, "/healthz").map(|(s, _)| s), Some(200));

    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(30)).assert_code(0);
}

#[test]
fn without_metrics_listen_the_daemon_serves_nothing() {
    let (_server, mut ws, _dir) = synced(1, 0);
    let port = free_port();
    ws.raw_config = Some(format!(
        "{}schedule: {{ interval: 1h }}\nmetrics_file: metrics.prom\n",
        ws.config_text()
    ));
    let mut daemon = ws.spawn(&["daemon"]);
    let metrics = ws.path().join("metrics.prom");
    let cycled = wait_until(Duration::from_secs(60), || metrics.exists());
    assert!(
        cycled && daemon.is_running(),
        "{}",
        daemon.wait(Duration::from_secs(10)).dump()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on the port idsync was not given"
    );
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(30));
    out.assert_code(0);
    assert!(!out.stderr.contains("serving /metrics"), "{}", out.dump());
}

#[test]
fn a_metrics_listen_address_that_is_not_an_ip_and_port_or_is_taken_is_refused() {
    let (_server, mut ws, _dir) = synced(1, 0);
    ws.raw_config = Some(format!(
        "{}metrics_listen: localhost:9184\n",
        ws.config_text()
    ));
    let out = ws.run(&["validate"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("metrics_listen: \"localhost:9184\" is not an IP address and port"),
        "{}",
        out.dump()
    );
    // A port another process holds: the daemon stops at start, naming it.
    ws.raw_config = None;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = ws.run(&["daemon", "--metrics-listen", &addr.to_string()]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains(&format!("metrics_listen: cannot listen on {addr}: ")),
        "{}",
        out.dump()
    );
    let out = ws.run(&["daemon", "--metrics-listen", "9184"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("\"9184\" is not an IP address and port"),
        "{}",
        out.dump()
    );
}

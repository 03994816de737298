//! The SCIM target behind a broken link: the mechanism itself (the relay
//! delays, a reset cuts an answer in the middle), resets in the middle of
//! answers during a sync, and a target that goes silent mid-run.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    DEFAULT_RATE, DEFAULT_TIMEOUT_LINE, Idsync, ScimServer, USER_SCHEMA, summary_count,
};
use crate::rig::{
    Bounds, Link, SCIM_PORT, ScimRig, assert_exact, assert_honest, assert_no_duplicates,
};
use crate::support::netns::{Netns, available};
use crate::support::relay::Delay;

/// One raw HTTP/1.0 GET with the server's token to `addr`: the bytes read
/// before the connection ended, and how it ended (`None`: a clean close).
fn raw_get(server: &ScimServer, addr: SocketAddr, path: &str) -> (Vec<u8>, Option<ErrorKind>) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "GET /v2{path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: the read timeout ends a stalled read, and answers are small.
    for _ in 0..100_000 {
        match stream.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
    panic!("the answer to GET {path} did not end");
}

/// The `Content-Length` of a raw answer and where its body starts.
fn framing(answer: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(answer);
    let head_end = text.find("\r\n\r\n").expect("a complete header") + 4;
    let length = text[..head_end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .expect("a Content-Length");
    (length, head_end)
}

fn hand_made_users(server: &ScimServer, n: usize) {
    for i in 0..n {
        server.create_user(json!({
            "schemas": [USER_SCHEMA],
            "userName": format!("hand{i:03}@example.com"),
            "displayName": format!("A user made by hand to fill the listing, number {i}"),
        }));
    }
}

#[test]
fn the_mechanism_delays_each_way_and_a_reset_cuts_an_answer_in_the_middle() {
    if !available() {
        return;
    }
    let rig = ScimRig::start("nf-mechanism", 0, 0, None);
    // A listing larger than one 64 KiB segment (the link offloads
    // segmentation): with 40 users (18 KB) it could arrive whole in one
    // flight before the first refused ACK, as one run under load showed.
    hand_made_users(&rig.server, 200);
    let direct = SocketAddr::from((rig.ns.ns_addr, SCIM_PORT));
    let (whole, end) = raw_get(&rig.server, direct, "/Users?count=200");
    assert_eq!(end, None, "a healthy answer ends with a close");
    let (length, body_at) = framing(&whole);
    assert_eq!(whole.len(), body_at + length, "the healthy answer is whole");
    assert!(length > 8_000, "the listing is large ({length} bytes)");

    // The delay: a new connection and one request-answer cost two round
    // trips (handshake, then the request), each 150 ms ± 30 ms.
    let link = Link::delayed(&rig.ns, direct, Delay::rtt_150ms(), false);
    let started = Instant::now();
    let (delayed, end) = raw_get(
        &rig.server,
        (rig.ns.ns_addr, link.port).into(),
        "/ServiceProviderConfig",
    );
    let took = started.elapsed();
    assert_eq!(end, None);
    assert!(delayed.starts_with(b"HTTP/1."), "{delayed:?}");
    assert!(
        took >= Duration::from_millis(240) && took < Duration::from_secs(3),
        "a request over the {} took {took:?} (expected 2 × 150 ms ± 30 ms)",
        link.how
    );

    // The reset: every segment the client sends once 3,000 bytes of the
    // answer went out is refused with a reset.
    rig.ns.reset_mid_response(SCIM_PORT, 3_000, 10_000_000, 1.0);
    let (cut, end) = raw_get(&rig.server, direct, "/Users?count=200");
    assert_eq!(
        end,
        Some(ErrorKind::ConnectionReset),
        "got {} bytes",
        cut.len()
    );
    let (length, body_at) = framing(&cut);
    assert!(
        cut.len() > body_at && cut.len() < body_at + length,
        "the reset must fall inside the body: {} bytes of {}",
        cut.len(),
        body_at + length
    );
    assert!(rig.ns.matched("REJECT") >= 1);
    eprintln!(
        "a request over the {}: {took:?}; a reset after {} of {} bytes",
        link.how,
        cut.len(),
        body_at + length
    );
    rig.ns.heal();
    let (again, _) = raw_get(&rig.server, direct, "/Users?count=200");
    assert_eq!(again.len(), whole.len(), "healed");
}

#[test]
fn the_namespace_guard_cleans_up_even_when_a_test_panics() {
    if !available() {
        return;
    }
    let (name, host_if, pid) = std::panic::catch_unwind(|| {
        let ns = Netns::new();
        // A process left running in the namespace (not a child of ours).
        let out = ns.exec(&["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]);
        let pid: u32 = out.trim().parse().expect("a pid");
        ns.silence(SCIM_PORT);
        std::panic::panic_any((ns.name.clone(), ns.host_if.clone(), pid));
    })
    .expect_err("the closure panics")
    .downcast::<(String, String, u32)>()
    .map(|b| *b)
    .expect("the panic carries the names");
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        !listed.split_whitespace().any(|n| n == name),
        "{name} is still there: {listed}"
    );
    let link = Command::new("ip")
        .args(["link", "show", &host_if])
        .output()
        .expect("ip link");
    assert!(!link.status.success(), "{host_if} is still there");
    let gone = crate::harness::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
        })
    });
    assert!(gone, "process {pid} of the namespace still runs");
}

/// Runs `idsync ARGS` with connections to the server reset in the middle of
/// answers: once 150–2,500 bytes of an answer went back (its header, the
/// start of its body), each segment the client sends is refused with a reset
/// with probability 5 % — about one answer in five is cut, in its header or
/// its body; a listing's page in its body. The rule is lifted after the run
/// (the test's own reads go to the same port); `resets` counts what it sent.
fn under_resets(rig: &ScimRig, args: &[&str], resets: &mut u64) -> crate::harness::Output {
    rig.ns.reset_mid_response(SCIM_PORT, 150, 2_500, 0.05);
    let out = rig.ws.run(args);
    *resets += rig.ns.matched("REJECT");
    rig.ns.heal();
    out
}

#[test]
fn resets_in_the_middle_of_answers_neither_duplicate_nor_lose_anything() {
    if !available() {
        return;
    }
    let mut rig = ScimRig::start("nf-resets", 150, 5, None);
    rig.ws.edit_config(&[(
        DEFAULT_TIMEOUT_LINE,
        "  retry: { max_attempts: 6, max_elapsed: 60s }\n  timeout: ",
    )]);
    let (mut codes, mut logs, mut resets) = (Vec::new(), String::new(), 0);
    for _ in 0..4 {
        let out = under_resets(&rig, &["sync", "--format", "json"], &mut resets);
        codes.push(out.code);
        logs.push_str(&out.stderr);
        // 1: some operations failed (named); 5: the set-up requests failed,
        // nothing was changed.
        assert_honest(&out, &[0, 1, 5], "sync under resets");
        assert_no_duplicates(&rig.server.contents());
        if out.code == 0 {
            break;
        }
    }
    assert_eq!(
        codes.last(),
        Some(&0),
        "no run finished under resets: {codes:?}"
    );
    assert_exact(&rig.server, &rig.ws, &rig.dir, &[]);
    assert!(resets >= 10, "only {resets} resets were sent");
    // Some answers were cut inside their body, creates among them (which the
    // server had made: their retries are adopted, never duplicated).
    let in_body = logs.matches("error reading a body from connection").count();
    let creates = logs.matches("method=POST path=\"/v2/Users\"").count();
    eprintln!("retried: {in_body} answers cut in the body, {creates} user creates");
    assert!(in_body > 0 && creates > 0, "{logs}");
    // A full re-read of the target through the same resets: its pages are
    // the large answers. Nothing to change.
    let out = under_resets(&rig, &["sync", "--full", "--format", "json"], &mut resets);
    assert_honest(&out, &[0, 5], "sync --full under resets");
    if out.code == 0 {
        assert_eq!(out.json()["applied"], 0, "{}", out.dump());
    }
    eprintln!(
        "resets: {resets} sent; sync exits {codes:?}, then --full {}",
        out.code
    );
    assert_exact(&rig.server, &rig.ws, &rig.dir, &[]);
}

#[test]
fn a_target_that_goes_silent_mid_run_costs_the_timeouts_and_the_next_run_finishes() {
    if !available() {
        return;
    }
    let bounds = Bounds {
        timeout: Duration::from_secs(1),
        max_attempts: 2,
        max_elapsed: Duration::from_secs(2),
        concurrency: 4,
    };
    let mut rig = ScimRig::start("nf-silent", 120, 4, None);
    // Paced (15 creates a second) so that the run is still creating when the
    // target goes silent.
    rig.ws.timeout = "1s".into();
    rig.ws.edit_config(&[
        (DEFAULT_RATE, "rate_limit: { per_second: 15, burst: 1 }"),
        (
            DEFAULT_TIMEOUT_LINE,
            "  retry: { max_attempts: 2, max_elapsed: 2s }\n  timeout: ",
        ),
    ]);
    let run = rig.ws.spawn(&["sync", "--format", "json"]);
    let started = Instant::now();
    let created = crate::harness::wait_until(Duration::from_secs(60), || rig.user_count() >= 8);
    assert!(created, "the sync created no users");
    rig.ns.silence(SCIM_PORT);
    let silent_at = Instant::now();
    let out = run.wait(Duration::from_secs(600));
    let after = silent_at.elapsed();
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    let applied = summary["applied"].as_u64().unwrap_or(0);
    let bound = bounds.after_silence(applied) + Duration::from_secs(10);
    eprintln!(
        "silent target: exit {} {after:?} after the silence ({:?} in all), {applied} applied; \
         bound {bound:?} (a request at most {:?})",
        out.code,
        started.elapsed(),
        bounds.request()
    );
    assert_honest(&out, &[1, 5], "sync against a silent target");
    assert!(
        after <= bound,
        "{after:?} after the silence, more than {bound:?}\n{}",
        out.dump()
    );
    assert!(rig.ns.matched("DROP") > 0, "nothing was dropped");
    assert!(
        out.stderr.contains("plain http:// to another host"),
        "idsync warns about a cleartext target off this machine\n{}",
        out.dump()
    );
    // The link heals: nothing was duplicated, and the next run (the default
    // timeouts) finishes.
    rig.ns.heal();
    assert_no_duplicates(&rig.server.contents());
    rig.ws.raw_config = None;
    rig.ws.timeout = "10s".into();
    let second = rig.ws.sync_ok();
    assert!(summary_count(&second, "create_users") > 0, "{second:#}");
    assert_exact(&rig.server, &rig.ws, &rig.dir, &[]);
}

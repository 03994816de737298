//! The transport (`transport.rs`): retries after 429 and 5xx, pacing, the
//! shared hold-off, time-outs and refused connections, and what an error from
//! the target carries.

use super::*;

#[tokio::test]
async fn retries_429_after_retry_after_seconds() {
    let server = MockServer::start().await;
    on("GET", "/Users/u1")
        .respond_with(scim_error(429, None, "slow down").insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    on("GET", "/Users/u1")
        .respond_with(scim(200).set_body_json(user_json("u1", "a@example.com")))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let started = Instant::now();
    let user = client
        .get_user(&ScimId::new("u1"))
        .await
        .expect("ok")
        .expect("found");
    assert_eq!(user.attrs.get(UserAttr::UserName).unwrap(), "a@example.com");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 2,
            retries: 1,
            throttled: 1
        }
    );
}

#[tokio::test]
async fn retries_429_at_x_ratelimit_reset() {
    let server = MockServer::start().await;
    let reset = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    on("GET", "/Users/u1")
        .respond_with(
            scim_error(429, None, "rate limited")
                .insert_header("X-RateLimit-Limit", "10")
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Reset", reset.to_rfc3339().as_str()),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    on("GET", "/Users/u1")
        .respond_with(scim(200).set_body_json(user_json("u1", "a@example.com")))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let user = client.get_user(&ScimId::new("u1")).await.expect("ok");
    assert!(user.is_some());
    assert!(chrono::Utc::now() >= reset, "retried before the reset time");
    assert_eq!(client.stats().throttled, 1);
}

#[tokio::test]
async fn retries_503_then_creates() {
    let server = MockServer::start().await;
    on("POST", "/Users")
        .respond_with(scim_error(503, None, "maintenance"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    on("POST", "/Users")
        .and(header("content-type", SCIM_JSON))
        .respond_with(scim(201).set_body_json(user_json("new-id", "a@example.com")))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let attrs: UserAttrs = [
        (UserAttr::UserName, "a@example.com".to_owned()),
        (UserAttr::Email, "a@example.com".to_owned()),
    ]
    .into();
    let user = client.create_user(&attrs, true).await.expect("created");
    assert_eq!(user.id.as_str(), "new-id");
    assert_eq!(user.attrs, attrs);
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 3,
            retries: 2,
            throttled: 0
        }
    );
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_max_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(scim_error(502, None, "bad gateway"))
        .expect(4)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let err = client
        .delete_user(&ScimId::new("x"))
        .await
        .expect_err("fails");
    assert_eq!(err.status(), Some(502));
    assert!(err.to_string().contains("bad gateway"), "{err}");
}

#[tokio::test]
async fn unauthorized_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(scim_error(401, None, "Authorization failure"))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let err = client.list_users().await.expect_err("refused");
    assert!(err.is_auth());
    assert!(
        matches!(&err, ScimError::Unauthorized { status: 401, detail } if detail == "Authorization failure"),
        "{err:?}"
    );
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 1,
            retries: 0,
            throttled: 0
        }
    );
}

#[tokio::test]
async fn scim_error_body_is_surfaced() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(scim_error(400, Some("invalidValue"), "title is too long"))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let err = client
        .patch_user(
            &ScimId::new("u1"),
            &[(UserAttr::Title, Some("x".repeat(300)))],
            None,
        )
        .await
        .expect_err("rejected");
    match &err {
        ScimError::Http {
            status,
            scim_type,
            detail,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(scim_type.as_deref(), Some("invalidValue"));
            assert_eq!(detail, "title is too long");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "HTTP 400 (invalidValue): title is too long"
    );
}

#[tokio::test]
async fn timeouts_are_retried_then_reported_as_transport() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(scim(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let client = ScimClient::new(ClientOptions {
        timeout: Duration::from_millis(200),
        retry: RetryPolicy {
            max_attempts: 2,
            ..fast_retry()
        },
        ..options(&server.uri())
    })
    .expect("client");
    let err = client
        .get_user(&ScimId::new("u1"))
        .await
        .expect_err("times out");
    assert!(matches!(err, ScimError::Transport(_)), "{err:?}");
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 2,
            retries: 1,
            throttled: 0
        }
    );
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    // Bind then drop a listener to find a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let client = ScimClient::new(options(&format!("http://127.0.0.1:{port}/v2"))).expect("client");
    let err = client.list_users().await.expect_err("refused");
    assert!(matches!(err, ScimError::Transport(_)), "{err:?}");
    assert_eq!(
        client.stats().requests,
        u64::from(fast_retry().max_attempts)
    );
}

#[tokio::test]
async fn rate_limit_paces_every_attempt() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let client = ScimClient::new(ClientOptions {
        rate_limit: Some(RateLimit {
            per_second: 20,
            burst: 1,
        }),
        ..options(&server.uri())
    })
    .expect("client");
    let started = Instant::now();
    for i in 0..6 {
        client
            .delete_user(&ScimId::new(format!("u{i}")))
            .await
            .expect("deleted");
    }
    // 1 immediately, then 5 more at 50 ms intervals.
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_429_holds_off_other_requests_too() {
    let server = MockServer::start().await;
    on("GET", "/Users/u1")
        .respond_with(scim_error(429, None, "slow down").insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(scim(200).set_body_json(user_json("u", "a@example.com")))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let started = Instant::now();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get_user(&ScimId::new("u1")).await }
    });
    // Let the first request get its 429.
    while client.stats().throttled == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.get_user(&ScimId::new("u2")).await.expect("second");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    first.await.expect("joined").expect("first");
}

#[tokio::test]
async fn errors_from_the_target_carry_no_token_and_are_cut() {
    let server = MockServer::start().await;
    let echo = format!("bad request; you sent: Authorization: Bearer {TOKEN}\r\nX-Copy: {TOKEN}");
    on("GET", "/Users/u1")
        .respond_with(scim_error(400, Some(&format!("x{TOKEN}")), &echo))
        .mount(&server)
        .await;
    let huge = "y".repeat(1_000_000);
    on("GET", "/Users/u2")
        .respond_with(scim_error(400, None, &huge))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let err = client.get_user(&ScimId::new("u1")).await.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("Authorization: Bearer [redacted]"), "{text}");
    assert!(text.contains("X-Copy: [redacted]"), "{text}");
    let err = client.get_user(&ScimId::new("u2")).await.unwrap_err();
    let text = err.to_string();
    assert!(text.len() < redact::MAX_TARGET_TEXT + 100, "{}", text.len());
    assert!(
        text.ends_with("(cut, 1000000 bytes in all)"),
        "{}",
        &text[text.len() - 60..]
    );
}

/// A server with a listen queue of one that closes every connection after
/// its answer, and that can stop accepting for a while: what a small
/// threaded server under load is. A connection made while its queue is full
/// loses its SYN, which the kernel sends again only after a second.
struct ShortQueueServer {
    port: u16,
    accepting: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ShortQueueServer {
    fn start(user: Value) -> ShortQueueServer {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind on 127.0.0.1");
        let listener = socket.listen(1).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let body = user.to_string();
        let (accepting, mut open) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                // One request (no body: a GET), or nothing from a
                // connection that only held a place in the queue.
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if request.is_empty() {
                    continue;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {SCIM_JSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        ShortQueueServer {
            port,
            accepting,
            task,
        }
    }

    /// Stops accepting and fills the listen queue with idle connections, up
    /// to the first whose SYN is dropped; they are returned to be closed.
    async fn fill_queue(&self) -> Vec<tokio::net::TcpStream> {
        self.accepting.send_replace(false);
        let mut held = Vec::new();
        for _ in 0..6 {
            let connecting = tokio::net::TcpStream::connect(("127.0.0.1", self.port));
            match tokio::time::timeout(Duration::from_millis(200), connecting).await {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => panic!("connect to the short-queue server: {e}"),
                // Not made: the queue is full.
                Err(_) => return held,
            }
        }
        panic!("the listen queue of one never filled");
    }
}

impl Drop for ShortQueueServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_connection_lost_to_a_full_listen_queue_is_made_again_without_waiting_a_second() {
    let server = ShortQueueServer::start(user_json("u1", "a@example.com"));
    let client =
        ScimClient::new(options(&format!("http://127.0.0.1:{}/v2", server.port))).expect("client");
    // Connections made quickly: this target connects in well under the floor.
    for _ in 0..connect::SAMPLES_BEFORE_DEADLINE {
        client.get_user(&ScimId::new("u1")).await.expect("answered");
    }
    let held = server.fill_queue().await;
    let asking = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let user = client.get_user(&ScimId::new("u1")).await;
            (user, started.elapsed())
        })
    };
    // The request's SYN is lost while the queue is full; the queue drains.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    server.accepting.send_replace(true);
    let (user, took) = asking.await.expect("the request task");
    assert!(user.expect("answered").is_some());
    // The kernel's own retry of the SYN comes after a second; made again at
    // the deadline (50 ms here, more on a loaded machine), it takes far less.
    assert!(
        took < Duration::from_millis(900),
        "the lost connection was waited for: {took:?}"
    );
    // Made again inside the attempt: not a retry, nothing sent twice.
    assert_eq!(client.stats().retries, 0);
}

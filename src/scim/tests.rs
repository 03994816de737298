//! The client against in-process fakes (wiremock) for what a real server will not
//! do on demand (429, 5xx, odd paging), and an `#[ignore]`d walk through every
//! operation against a real SCIM server named by `IDSYNC_TEST_SCIM_URL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::*;
use crate::apply::TargetError;

const TOKEN: &str = "s3cret-token-value";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(20),
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(3),
    }
}

fn options(base: &str) -> ClientOptions {
    ClientOptions {
        retry: fast_retry(),
        timeout: Duration::from_secs(5),
        ..ClientOptions::new(base, SecretString::from(TOKEN), Flavour::Generic)
    }
}

/// A mock of `verb` on `at`, a path under the client's base (`/Users/u1`).
fn on(verb: &str, at: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb)).and(path(format!("/scim/v2{at}")))
}

async fn client_for(server: &MockServer) -> ScimClient {
    ScimClient::new(options(&format!("{}/scim/v2/", server.uri()))).expect("client")
}

fn user_json(id: &str, user_name: &str) -> Value {
    json!({
        "schemas": [resource::USER_SCHEMA],
        "id": id,
        "userName": user_name,
        "emails": [{"value": user_name, "primary": true}],
        "active": true
    })
}

/// A member by id alone.
fn by_id(id: &ScimId) -> MemberRef {
    MemberRef {
        id: id.clone(),
        user_name: None,
    }
}

fn list_json(total: usize, resources: Vec<Value>) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "itemsPerPage": resources.len(),
        "startIndex": 1,
        "Resources": resources
    })
}

fn scim(status: u16) -> ResponseTemplate {
    ResponseTemplate::new(status).insert_header("content-type", SCIM_JSON)
}

fn scim_error(status: u16, scim_type: Option<&str>, detail: &str) -> ResponseTemplate {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(),
        "detail": detail
    });
    if let Some(t) = scim_type {
        body["scimType"] = Value::from(t);
    }
    scim(status).set_body_json(body)
}

fn query_number(request: &Request, name: &str) -> Option<usize> {
    request
        .url
        .query_pairs()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

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

/// Repeats the first page for any `startIndex`, claiming more exist.
struct RepeatingFirstPage;

impl Respond for RepeatingFirstPage {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        scim(200).set_body_json(list_json(
            50,
            vec![
                user_json("u1", "a@example.com"),
                user_json("u2", "b@example.com"),
            ],
        ))
    }
}

#[tokio::test]
async fn server_repeating_first_page_forever_terminates() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .respond_with(RepeatingFirstPage)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let users = client.list_users().await.expect("ok");
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["u1", "u2"]);
    assert_eq!(client.stats().requests, 2);
}

/// A directory of `users` users served at most `cap` per page, with `itemsPerPage`
/// echoing the requested `count`; past the end it serves the first page again
/// (when `repeat_past_end`).
struct QuirkyPager {
    users: usize,
    cap: usize,
    repeat_past_end: bool,
    requests: Arc<AtomicUsize>,
}

impl Respond for QuirkyPager {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let requested = query_number(request, "count").unwrap_or(20);
        let mut start = query_number(request, "startIndex").unwrap_or(1).max(1);
        if start > self.users && self.repeat_past_end {
            start = 1;
        }
        let resources: Vec<Value> = (start..start + requested.min(self.cap))
            .filter(|i| *i <= self.users)
            .map(|i| user_json(&format!("u{i}"), &format!("user{i}@example.com")))
            .collect();
        let mut body = list_json(self.users, resources);
        body["itemsPerPage"] = Value::from(requested);
        body["startIndex"] = Value::from(start);
        scim(200).set_body_json(body)
    }
}

#[tokio::test]
async fn server_echoing_count_and_capping_pages_is_read_completely() {
    let server = MockServer::start().await;
    let requests = Arc::new(AtomicUsize::new(0));
    on("GET", "/Users")
        .respond_with(QuirkyPager {
            users: 5,
            cap: 2,
            repeat_past_end: true,
            requests: requests.clone(),
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let users = client.list_users().await.expect("ok");
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["u1", "u2", "u3", "u4", "u5"]);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn page_size_honours_max_results_and_the_request_count() {
    let server = MockServer::start().await;
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({
            "patch": {"supported": true},
            "filter": {"supported": true, "maxResults": 3}
        })))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .and(query_param("count", "3"))
        .respond_with(QuirkyPager {
            users: 7,
            cap: 100,
            repeat_past_end: false,
            requests: Arc::new(AtomicUsize::new(0)),
        })
        .expect(3)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let config = client.service_provider_config().await.expect("spc");
    assert_eq!(config.filter_max_results, Some(3));
    assert_eq!(client.list_users().await.expect("ok").len(), 7);
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
async fn conflict_and_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(scim_error(409, Some("uniqueness"), "userName taken"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(scim_error(404, None, "no such user"))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(scim_error(404, None, "no such user"))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let attrs: UserAttrs = [(UserAttr::UserName, "a@example.com".to_owned())].into();
    let err = client
        .create_user(&attrs, true)
        .await
        .expect_err("conflict");
    assert!(
        matches!(&err, ScimError::Conflict { detail } if detail == "userName taken"),
        "{err:?}"
    );
    assert_eq!(
        client.get_user(&ScimId::new("gone")).await.expect("ok"),
        None
    );
    let err = client
        .delete_user(&ScimId::new("gone"))
        .await
        .expect_err("404");
    assert!(matches!(err, ScimError::NotFound));
}

#[tokio::test]
async fn patch_answered_204_and_body_is_minimal() {
    let server = MockServer::start().await;
    on("PATCH", "/Users/u%201")
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", SCIM_JSON))
        .and(body_json(json!({
            "schemas": [resource::PATCH_OP_SCHEMA],
            "Operations": [
                {"op": "replace", "path": "title", "value": "Lead"},
                {"op": "remove", "path": format!("{}:department", crate::model::ENTERPRISE_USER)},
                {"op": "replace", "path": "active", "value": false}
            ]
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client
        .patch_user(
            &ScimId::new("u 1"),
            &[
                (UserAttr::Title, Some("Lead".into())),
                (UserAttr::Department, None),
            ],
            Some(false),
        )
        .await
        .expect("patched");
    // Nothing to change: nothing sent.
    client
        .patch_user(&ScimId::new("u 1"), &[], None)
        .await
        .expect("no-op");
    // The PATCH, and the read back of what a 204 did not say (404 here: none).
    assert_eq!(client.stats().requests, 2);
}

#[tokio::test]
async fn created_without_body_is_read_from_location() {
    let server = MockServer::start().await;
    on("POST", "/Groups")
        .respond_with(ResponseTemplate::new(201).insert_header(
            "Location",
            format!("{}/scim/v2/Groups/g9", server.uri()).as_str(),
        ))
        .mount(&server)
        .await;
    on("GET", "/Groups/g9")
        .respond_with(scim(200).set_body_json(json!({"id": "g9", "displayName": "Eng"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let group = client.create_group("Eng", None).await.expect("created");
    assert_eq!(group.id.as_str(), "g9");
}

#[tokio::test]
async fn filter_ignoring_server_falls_back_to_listing() {
    let server = MockServer::start().await;
    // Every GET /Users answers with all users, filter or not.
    on("GET", "/Users")
        .respond_with(scim(200).set_body_json(list_json(
            2,
            vec![
                user_json("u1", "a@example.com"),
                user_json("u2", "B@Example.com"),
            ],
        )))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let found = client
        .find_user_by_user_name("b@example.COM")
        .await
        .expect("ok");
    assert_eq!(
        found.map(|u| u.id.as_str().to_owned()).as_deref(),
        Some("u2")
    );
    assert_eq!(
        client
            .find_user_by_user_name("c@example.com")
            .await
            .expect("ok"),
        None
    );
}

#[tokio::test]
async fn filter_value_is_escaped_in_the_query() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .and(query_param(
            "filter",
            r#"userName eq "o\"brien\\x@example.com""#,
        ))
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let found = client
        .find_user_by_user_name(r#"o"brien\x@example.com"#)
        .await
        .expect("ok");
    assert_eq!(found, None);
}

#[tokio::test]
async fn external_id_is_compared_exactly() {
    let server = MockServer::start().await;
    let mut user = user_json("u1", "a@example.com");
    user["externalId"] = Value::from("ABC");
    on("GET", "/Users")
        .respond_with(scim(200).set_body_json(list_json(1, vec![user])))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    assert_eq!(
        client.find_user_by_external_id("abc").await.expect("ok"),
        None
    );
    assert!(
        client
            .find_user_by_external_id("ABC")
            .await
            .expect("ok")
            .is_some()
    );
    // A case-insensitive server match is not taken for an ignored filter.
    assert_eq!(client.stats().requests, 2);
}

#[tokio::test]
async fn without_filter_support_lookups_list() {
    let server = MockServer::start().await;
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({"filter": {"supported": false}})))
        .mount(&server)
        .await;
    on("GET", "/Groups")
        .and(query_param("startIndex", "1"))
        .respond_with(scim(200).set_body_json(list_json(
            2,
            vec![
                json!({"id": "g1", "displayName": "eng", "members": [{"value": "u1"}]}),
                json!({"id": "g2", "displayName": "Eng"}),
            ],
        )))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.service_provider_config().await.expect("spc");
    let group = client
        .find_group_by_display_name("Eng")
        .await
        .expect("ok")
        .expect("found");
    assert_eq!(group.id.as_str(), "g2");
}

#[tokio::test]
async fn members_are_patched_in_chunks() {
    let server = MockServer::start().await;
    let ids: Vec<ScimId> = (1..=3).map(|i| ScimId::new(format!("u{i}"))).collect();
    on("PATCH", "/Groups/g1")
        .and(body_json(resource::patch_body(vec![json!(
            {"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}
        )])))
        .respond_with(
            scim(200)
                .set_body_json(json!({"id": "g1", "members": [{"value": "u1"}, {"value": "u2"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    on("PATCH", "/Groups/g1")
        .and(body_json(resource::patch_body(vec![json!(
            {"op": "add", "path": "members", "value": [{"value": "u3"}]}
        )])))
        .respond_with(scim(200).set_body_json(json!(
            {"id": "g1", "members": [{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]}
        )))
        .expect(1)
        .mount(&server)
        .await;
    on("PATCH", "/Groups/g1")
        .and(body_json(resource::patch_body(vec![
            json!({"op": "remove", "path": "members[value eq \"u1\"]"}),
            json!({"op": "remove", "path": "members[value eq \"u2\"]"}),
        ])))
        .respond_with(
            scim(200).set_body_json(
                json!({"id": "g1", "displayName": "Eng", "members": [{"value": "u3"}]}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    on("PATCH", "/Groups/g1")
        .and(body_json(resource::patch_body(vec![json!(
            {"op": "remove", "path": "members[value eq \"u3\"]"}
        )])))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    // No body: the group is read back (an empty group leaves `members` out).
    on("GET", "/Groups/g1")
        .respond_with(scim(200).set_body_json(json!({"id": "g1", "displayName": "Eng"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = ScimClient::new(ClientOptions {
        member_chunk: 2,
        ..options(&format!("{}/scim/v2", server.uri()))
    })
    .expect("client");
    let group = ScimId::new("g1");
    let with_repeats: Vec<MemberRef> = ids.iter().chain(&ids).map(by_id).collect();
    client
        .add_members(&group, &with_repeats)
        .await
        .expect("added");
    let refs: Vec<MemberRef> = ids.iter().map(by_id).collect();
    client.remove_members(&group, &refs).await.expect("removed");
    client.add_members(&group, &[]).await.expect("nothing");
    assert_eq!(client.stats().requests, 5);
}

#[tokio::test]
async fn without_patch_support_users_are_put() {
    let server = MockServer::start().await;
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({"patch": {"supported": false}})))
        .mount(&server)
        .await;
    let mut current = user_json("u1", "a@example.com");
    current["title"] = Value::from("Eng");
    current["meta"] = json!({"version": "W/\"1\""});
    on("GET", "/Users/u1")
        .respond_with(scim(200).set_body_json(current))
        .mount(&server)
        .await;
    let mut expected = user_json("u1", "a@example.com");
    expected["title"] = Value::from("Lead");
    on("PUT", "/Users/u1")
        .and(body_json(expected))
        .respond_with(scim(200).set_body_json(json!({"id": "u1"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.service_provider_config().await.expect("spc");
    client
        .patch_user(
            &ScimId::new("u1"),
            &[(UserAttr::Title, Some("Lead".into()))],
            None,
        )
        .await
        .expect("put");
}

#[tokio::test]
async fn atlassian_refuses_rename_and_caps_page_size() {
    let server = MockServer::start().await;
    on("GET", "/Groups")
        .and(query_param("count", "100"))
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .expect(1)
        .mount(&server)
        .await;
    let client = ScimClient::new(ClientOptions {
        flavour: Flavour::Atlassian,
        page_size: Some(500),
        ..options(&format!("{}/scim/v2", server.uri()))
    })
    .expect("client");
    assert!(client.list_groups().await.expect("ok").is_empty());
    let err = client
        .rename_group(&ScimId::new("g"), "New")
        .await
        .expect_err("refused");
    assert!(matches!(err, ScimError::Unsupported(_)));
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

#[test]
fn token_never_shows_in_debug_output() {
    let opts = options("https://scim.example.com/v2");
    assert!(!format!("{opts:?}").contains(TOKEN));
    let client = ScimClient::new(opts).expect("client");
    let shown = format!("{client:?} {:?}", client.inner.http);
    assert!(!shown.contains(TOKEN), "{shown}");
}

#[test]
fn bad_options_are_config_errors() {
    let bad = [
        ClientOptions::new("not a url", SecretString::from("t"), Flavour::Generic),
        ClientOptions::new("ftp://x/v2", SecretString::from("t"), Flavour::Generic),
        ClientOptions::new(
            "https://x/v2",
            SecretString::from("bad\ntoken"),
            Flavour::Generic,
        ),
        ClientOptions {
            rate_limit: Some(RateLimit {
                per_second: 0,
                burst: 1,
            }),
            ..ClientOptions::new("https://x/v2", SecretString::from("t"), Flavour::Generic)
        },
        ClientOptions {
            timeout: Duration::ZERO,
            ..ClientOptions::new("https://x/v2", SecretString::from("t"), Flavour::Generic)
        },
    ];
    for opts in bad {
        let shown = format!("{opts:?}");
        assert!(
            matches!(ScimClient::new(opts), Err(ScimError::Config(_))),
            "{shown}"
        );
    }
}

/// Every operation against a real server:
/// `IDSYNC_TEST_SCIM_URL=http://127.0.0.1:PORT/v2 IDSYNC_TEST_SCIM_TOKEN=T
///  cargo test --lib scim::tests::real_server -- --ignored`
#[tokio::test]
#[ignore = "needs a SCIM server: set IDSYNC_TEST_SCIM_URL (and IDSYNC_TEST_SCIM_TOKEN)"]
async fn real_server_walkthrough() {
    let url = std::env::var("IDSYNC_TEST_SCIM_URL").expect("IDSYNC_TEST_SCIM_URL");
    let token = std::env::var("IDSYNC_TEST_SCIM_TOKEN").unwrap_or_default();
    let client = ScimClient::new(ClientOptions {
        page_size: Some(7),
        ..ClientOptions::new(url, SecretString::from(token), Flavour::Generic)
    })
    .expect("client");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();

    let config = client.service_provider_config().await.expect("spc");
    assert!(config.patch && config.filter);

    // A user with every managed attribute round-trips.
    let mut attrs: UserAttrs = UserAttr::all()
        .map(|a| (a, format!("{}-{run}", a.name())))
        .collect();
    let user_name = format!("Walk.{run}@Example.com");
    attrs.insert(UserAttr::UserName, user_name.clone());
    attrs.insert(UserAttr::Email, format!("walk.{run}@example.com"));
    attrs.insert(UserAttr::Timezone, "Europe/Paris");
    attrs.insert(UserAttr::Locale, "fr-FR");
    attrs.insert(UserAttr::PreferredLanguage, "fr");
    let created = client.create_user(&attrs, true).await.expect("create");
    assert_eq!(created.attrs, attrs);
    let fetched = client
        .get_user(&created.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(fetched, created);

    // Duplicate userName (differing in case) → Conflict.
    let err = client
        .create_user(
            &[(UserAttr::UserName, user_name.to_lowercase())].into(),
            true,
        )
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ScimError::Conflict { .. }), "{err:?}");

    // Lookups.
    let found = client
        .find_user_by_user_name(&user_name.to_uppercase())
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.id, created.id);
    let external_id = &attrs.get(UserAttr::ExternalId).unwrap();
    assert_eq!(
        client
            .find_user_by_external_id(external_id)
            .await
            .expect("find")
            .map(|u| u.id),
        Some(created.id.clone())
    );
    assert_eq!(
        client
            .find_user_by_external_id(&external_id.to_uppercase())
            .await
            .expect("find"),
        None
    );
    assert_eq!(
        client
            .find_user_by_user_name(r#"no"such\user"#)
            .await
            .expect("find"),
        None
    );

    // PATCH: replace, remove (present and absent), deactivate.
    let changes = vec![
        (UserAttr::Title, Some("Lead".to_owned())),
        (UserAttr::Email, Some(format!("new.{run}@example.com"))),
        (UserAttr::Department, Some("Ops".to_owned())),
        (UserAttr::GivenName, Some("Zoë".to_owned())),
        (UserAttr::NickName, None),
        (UserAttr::CostCenter, None),
        (UserAttr::MiddleName, None),
    ];
    client
        .patch_user(&created.id, &changes, Some(false))
        .await
        .expect("patch");
    client
        .patch_user(&created.id, &[(UserAttr::NickName, None)], None)
        .await
        .expect("removing an absent attribute");
    let mut expected = attrs.clone();
    for (attr, value) in &changes {
        match value {
            Some(v) => expected.insert(*attr, v.clone()),
            None => expected.remove(attr),
        };
    }
    let patched = client
        .get_user(&created.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(patched.attrs, expected);
    assert!(!patched.active);

    // Paging over more users than one page holds.
    let mut ids = vec![created.id.clone()];
    for i in 0..16 {
        let attrs: UserAttrs = [(UserAttr::UserName, format!("page{i}.{run}@example.com"))].into();
        ids.push(client.create_user(&attrs, true).await.expect("create").id);
    }
    let listed = client.list_users().await.expect("list");
    for id in &ids {
        assert_eq!(
            listed.iter().filter(|u| &u.id == id).count(),
            1,
            "{id} listed once"
        );
    }

    // Groups and members.
    let group_name = format!("walk-{run}");
    let group = client
        .create_group(&group_name, Some(&format!("g-{run}")))
        .await
        .expect("create group");
    assert_eq!(group.external_id, Some(format!("g-{run}")));
    let refs: Vec<MemberRef> = ids.iter().map(by_id).collect();
    client
        .add_members(&group.id, &refs[..5])
        .await
        .expect("add");
    // Repeats, within a request and across requests, must not duplicate members.
    client
        .add_members(&group.id, &[refs[0].clone(), refs[0].clone()])
        .await
        .expect("add again");
    client
        .remove_members(&group.id, &refs[1..3])
        .await
        .expect("remove");
    client
        .remove_members(&group.id, &[by_id(&ScimId::new("not-a-member"))])
        .await
        .expect("remove absent member");
    let found = client
        .find_group_by_display_name(&group_name.to_uppercase())
        .await
        .expect("find group")
        .expect("found");
    assert_eq!(found.id, group.id);
    let mut members: Vec<ScimId> = found
        .members
        .iter()
        .map(|m| ScimId::new(m.value.as_str()))
        .collect();
    members.sort();
    let mut want = vec![ids[0].clone(), ids[3].clone(), ids[4].clone()];
    want.sort();
    assert_eq!(members, want);
    client
        .rename_group(&group.id, &format!("{group_name}-renamed"))
        .await
        .expect("rename");
    let groups = client.list_groups().await.expect("list groups");
    let listed = groups.iter().find(|g| g.id == group.id).expect("listed");
    assert_eq!(
        listed.display_name.as_str(),
        format!("{group_name}-renamed")
    );
    assert_eq!(listed.members.len(), 3);

    // Deletes.
    client.delete_group(&group.id).await.expect("delete group");
    for id in &ids {
        client.delete_user(id).await.expect("delete user");
    }
    assert_eq!(client.get_user(&created.id).await.expect("get"), None);
    assert!(matches!(
        client.delete_user(&created.id).await,
        Err(ScimError::NotFound)
    ));
    assert!(matches!(
        client.delete_group(&group.id).await,
        Err(ScimError::NotFound)
    ));
    eprintln!("stats: {:?}", client.stats());
}

/// Answers 400 to any request carrying `count`, else serves pages of 2.
struct RefusesCount;

impl Respond for RefusesCount {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if query_number(request, "count").is_some() {
            return scim_error(400, Some("invalidValue"), "count not supported");
        }
        let start = query_number(request, "startIndex").unwrap_or(1);
        let resources = (start..start + 2)
            .filter(|i| *i <= 3)
            .map(|i| json!({"id": format!("g{i}"), "displayName": format!("G{i}")}))
            .collect();
        scim(200).set_body_json(list_json(3, resources))
    }
}

#[tokio::test]
async fn server_refusing_count_is_paged_with_its_default() {
    let server = MockServer::start().await;
    on("GET", "/Groups")
        .respond_with(RefusesCount)
        .expect(3)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let groups = client.list_groups().await.expect("ok");
    let names: Vec<&str> = groups.iter().map(|g| g.display_name.as_str()).collect();
    assert_eq!(names, ["G1", "G2", "G3"]);
}

#[tokio::test]
async fn invalid_filter_falls_back_to_listing() {
    let server = MockServer::start().await;
    let mut user = user_json("u1", "a@example.com");
    user["externalId"] = Value::from("k1");
    on("GET", "/Users")
        .and(query_param("filter", r#"externalId eq "k1""#))
        .respond_with(scim_error(
            400,
            Some("invalidFilter"),
            "externalId cannot be filtered",
        ))
        .expect(1)
        .mount(&server)
        .await;
    on("GET", "/Users")
        .and(query_param("startIndex", "1"))
        .respond_with(scim(200).set_body_json(list_json(1, vec![user])))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let found = client.find_user_by_external_id("k1").await.expect("ok");
    assert_eq!(found.map(|u| u.id), Some(ScimId::new("u1")));
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

/// A group POST whose answer was lost (here a 502 from a gateway after the
/// backend acted) is not sent again when the group now exists: many servers
/// (scim2-server among them) accept duplicate group names, so a blind retry
/// would create a second group.
#[tokio::test]
async fn group_create_retry_looks_up_before_posting_again() {
    let server = MockServer::start().await;
    on("POST", "/Groups")
        .respond_with(scim_error(502, None, "bad gateway"))
        .expect(1)
        .mount(&server)
        .await;
    on("GET", "/Groups")
        .respond_with(scim(200).set_body_json(list_json(
            1,
            vec![json!({"id": "g7", "displayName": "Eng"})],
        )))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let group = client.create_group("Eng", None).await.expect("found");
    assert_eq!(group.id.as_str(), "g7");
}

/// When the lookup finds nothing, the retry is sent.
#[tokio::test]
async fn group_create_retry_posts_again_when_the_group_is_absent() {
    let server = MockServer::start().await;
    on("POST", "/Groups")
        .respond_with(scim_error(503, None, "unavailable"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    on("POST", "/Groups")
        .respond_with(scim(201).set_body_json(json!({"id": "g8", "displayName": "Eng"})))
        .expect(1)
        .mount(&server)
        .await;
    on("GET", "/Groups")
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let group = client.create_group("Eng", None).await.expect("created");
    assert_eq!(group.id.as_str(), "g8");
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

/// Answers 500 to any request carrying `count`, else serves pages of 2 of 5 users.
struct FailsCount {
    with_count: Arc<AtomicUsize>,
    without: Arc<AtomicUsize>,
}

impl Respond for FailsCount {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if query_number(request, "count").is_some() {
            self.with_count.fetch_add(1, Ordering::SeqCst);
            return scim_error(500, None, "internal error");
        }
        self.without.fetch_add(1, Ordering::SeqCst);
        let start = query_number(request, "startIndex").unwrap_or(1);
        let resources = (start..start + 2)
            .filter(|i| *i <= 5)
            .map(|i| user_json(&format!("u{i}"), &format!("user{i}@example.com")))
            .collect();
        scim(200).set_body_json(list_json(5, resources))
    }
}

async fn fails_count_server() -> (MockServer, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let with_count = Arc::new(AtomicUsize::new(0));
    let without = Arc::new(AtomicUsize::new(0));
    on("GET", "/Users")
        .respond_with(FailsCount {
            with_count: with_count.clone(),
            without: without.clone(),
        })
        .mount(&server)
        .await;
    (server, with_count, without)
}

#[tokio::test]
async fn server_failing_count_with_500_is_paged_with_its_default_without_retrying_count() {
    let (server, with_count, without) = fails_count_server().await;
    let client = client_for(&server).await;
    let started = Instant::now();
    let users = client.list_users().await.expect("ok");
    assert_eq!(users.len(), 5);
    // One try with `count`, no retry of it, then three default-size pages.
    assert_eq!(with_count.load(Ordering::SeqCst), 1);
    assert_eq!(without.load(Ordering::SeqCst), 3);
    assert_eq!(client.stats().retries, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(client.page_size_in_force(), None);
    // The probe of the same cycle sends no `count` either.
    assert!(client.holds_any("Users").await.expect("ok"));
    assert_eq!(with_count.load(Ordering::SeqCst), 1);
    // A new cycle tries `count` again.
    client.begin_cycle();
    assert!(client.holds_any("Users").await.expect("ok"));
    assert_eq!(with_count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connectivity_check_probes_one_user_and_never_lists() {
    let (server, with_count, without) = fails_count_server().await;
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({"filter": {"supported": false}})))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    crate::apply::Target::check(&client).await.expect("ok");
    // The probe with count=1 failed, one default page followed: no listing.
    assert_eq!(with_count.load(Ordering::SeqCst), 1);
    assert_eq!(without.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn page_size_is_the_advertised_max_results_within_the_flavour_limit() {
    let server = MockServer::start().await;
    let advertised = Arc::new(std::sync::Mutex::new(250u32));
    let seen = advertised.clone();
    on("GET", "/ServiceProviderConfig")
        .respond_with(move |_: &Request| {
            let max = *seen.lock().expect("lock");
            scim(200).set_body_json(json!({"filter": {"supported": true, "maxResults": max}}))
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    assert_eq!(
        client.page_size_in_force(),
        Some(100),
        "nothing advertised yet"
    );
    client.service_provider_config().await.expect("spc");
    assert_eq!(client.page_size_in_force(), Some(250));
    *advertised.lock().expect("lock") = 5000;
    client.service_provider_config().await.expect("spc");
    assert_eq!(client.page_size_in_force(), Some(1000), "generic cap");

    let atlassian = ScimClient::new(ClientOptions {
        flavour: Flavour::Atlassian,
        ..options(&format!("{}/scim/v2/", server.uri()))
    })
    .expect("client");
    atlassian.service_provider_config().await.expect("spc");
    assert_eq!(atlassian.page_size_in_force(), Some(100), "Atlassian cap");

    let configured = ScimClient::new(ClientOptions {
        page_size: Some(40),
        ..options(&format!("{}/scim/v2/", server.uri()))
    })
    .expect("client");
    configured.service_provider_config().await.expect("spc");
    assert_eq!(configured.page_size_in_force(), Some(40));
}

#[tokio::test]
async fn user_listing_is_read_once_per_cycle_and_kept_up_to_date() {
    let server = MockServer::start().await;
    let requests = Arc::new(AtomicUsize::new(0));
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({"filter": {"supported": false}})))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .respond_with(QuirkyPager {
            users: 3,
            cap: 100,
            repeat_past_end: false,
            requests: requests.clone(),
        })
        .mount(&server)
        .await;
    on("POST", "/Users")
        .respond_with(scim(201).set_body_json(user_json("u9", "new@example.com")))
        .mount(&server)
        .await;
    on("DELETE", "/Users/u1")
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.service_provider_config().await.expect("spc");
    assert_eq!(client.list_users().await.expect("ok").len(), 3);
    let listings = requests.load(Ordering::SeqCst);
    // Lookups without filter support answer from the listing.
    for name in ["user2@example.com", "nobody@example.com"] {
        client.find_user_by_user_name(name).await.expect("ok");
    }
    let mut attrs = UserAttrs::new();
    attrs.insert(UserAttr::UserName, "new@example.com");
    client.create_user(&attrs, true).await.expect("created");
    client
        .delete_user(&ScimId::new("u1"))
        .await
        .expect("deleted");
    assert!(
        client
            .find_user_by_user_name("NEW@example.com")
            .await
            .expect("ok")
            .is_some(),
        "a create is in the listing"
    );
    assert!(
        client
            .find_user_by_user_name("user1@example.com")
            .await
            .expect("ok")
            .is_none(),
        "a delete is out of it"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        listings,
        "no second listing"
    );
    client.begin_cycle();
    client.list_users().await.expect("ok");
    assert_eq!(requests.load(Ordering::SeqCst), listings * 2);
}

#[tokio::test]
async fn concurrent_lookups_share_one_listing() {
    let server = MockServer::start().await;
    let requests = Arc::new(AtomicUsize::new(0));
    on("GET", "/ServiceProviderConfig")
        .respond_with(scim(200).set_body_json(json!({"filter": {"supported": false}})))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .respond_with(QuirkyPager {
            users: 5,
            cap: 100,
            repeat_past_end: false,
            requests: requests.clone(),
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.service_provider_config().await.expect("spc");
    let names = [
        "user1@example.com",
        "user3@example.com",
        "user5@example.com",
    ];
    let found =
        futures_util::future::join_all(names.iter().map(|n| client.find_user_by_user_name(n)))
            .await;
    assert!(found.into_iter().all(|f| f.expect("ok").is_some()));
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one listing");
}

/// A group endpoint of a server that stores members by userName: adds and
/// removals naming an id answer 204 and change nothing; naming a userName
/// works. `ignore_all`: nothing works at all.
struct UserNameMembers {
    names: Vec<(&'static str, &'static str)>,
    stored: std::sync::Mutex<Vec<String>>,
    ignore_all: bool,
}

impl Respond for UserNameMembers {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut stored = self.stored.lock().expect("lock");
        if request.method.as_str() == "PATCH" && !self.ignore_all {
            let body: Value = serde_json::from_slice(&request.body).expect("json");
            let is_name = |v: &str| self.names.iter().any(|(_, n)| *n == v);
            for op in body["Operations"].as_array().expect("ops") {
                match op["op"].as_str() {
                    Some("add") => {
                        for m in op["value"].as_array().expect("values") {
                            let v = m["value"].as_str().expect("value");
                            if is_name(v) && !stored.iter().any(|s| s == v) {
                                stored.push(v.to_owned());
                            }
                        }
                    }
                    Some("remove") => {
                        let path = op["path"].as_str().expect("path");
                        let v = path
                            .trim_start_matches("members[value eq \"")
                            .trim_end_matches("\"]");
                        stored.retain(|s| s != v);
                    }
                    _ => {}
                }
            }
            return ResponseTemplate::new(204);
        }
        if request.method.as_str() == "PATCH" {
            return ResponseTemplate::new(204);
        }
        let members: Vec<Value> = stored.iter().map(|v| json!({ "value": v })).collect();
        scim(200).set_body_json(json!({"id": "g1", "displayName": "Eng", "members": members}))
    }
}

fn named(id: &str, name: &str) -> MemberRef {
    MemberRef {
        id: ScimId::new(id),
        user_name: Some(UserName::new(name)),
    }
}

#[tokio::test]
async fn members_stored_by_user_name_are_changed_by_user_name_and_checked() {
    let server = MockServer::start().await;
    let names = vec![("u1", "ann@x.com"), ("u2", "bob@x.com")];
    Mock::given(path("/scim/v2/Groups/g1"))
        .respond_with(UserNameMembers {
            names: names.clone(),
            stored: std::sync::Mutex::new(Vec::new()),
            ignore_all: false,
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let group = ScimId::new("g1");
    let ann = named("u1", "ann@x.com");
    let bob = named("u2", "bob@x.com");
    client
        .add_members(&group, std::slice::from_ref(&ann))
        .await
        .expect("added by userName after the id was ignored");
    assert!(client.members_by_user_name(), "learned");
    let requests = client.stats().requests;
    client
        .add_members(&group, std::slice::from_ref(&bob))
        .await
        .expect("added");
    assert_eq!(
        client.stats().requests - requests,
        2,
        "one PATCH by userName and one read back, no id attempt any more"
    );
    client
        .remove_members(&group, std::slice::from_ref(&ann))
        .await
        .expect("removed by userName");
    let held = client.get_group(&group).await.expect("get").expect("group");
    let values: Vec<&str> = held.members.iter().map(|m| m.value.as_str()).collect();
    assert_eq!(values, ["bob@x.com"]);
}

#[tokio::test]
async fn a_member_removal_by_id_is_retried_by_the_stored_value() {
    let server = MockServer::start().await;
    Mock::given(path("/scim/v2/Groups/g1"))
        .respond_with(UserNameMembers {
            names: vec![("u1", "Ann@X.com")],
            stored: std::sync::Mutex::new(vec!["Ann@X.com".into()]),
            ignore_all: false,
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    assert!(!client.members_by_user_name());
    client
        .remove_members(&ScimId::new("g1"), &[named("u1", "ann@x.com")])
        .await
        .expect("the second removal names the value the group shows");
    assert!(client.members_by_user_name(), "learned from the removal");
}

#[tokio::test]
async fn a_membership_change_that_does_not_take_fails() {
    let server = MockServer::start().await;
    Mock::given(path("/scim/v2/Groups/g1"))
        .respond_with(UserNameMembers {
            names: vec![("u1", "ann@x.com")],
            stored: std::sync::Mutex::new(vec!["u2".into()]),
            ignore_all: true,
        })
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let err = client
        .add_members(&ScimId::new("g1"), &[named("u1", "ann@x.com")])
        .await
        .expect_err("the group never holds ann");
    assert!(matches!(err, ScimError::NotApplied(_)), "{err:?}");
    assert!(err.to_string().contains("ann@x.com"), "{err}");
    assert!(err.to_string().contains("does not hold"), "{err}");
    let err = client
        .remove_members(&ScimId::new("g1"), &[by_id(&ScimId::new("u2"))])
        .await
        .expect_err("u2 stays");
    assert!(err.to_string().contains("still holds"), "{err}");
    assert!(!TargetError::from(err).is_transient());
}

#[tokio::test]
async fn case_sensitive_eq_after_a_conflict_falls_back_to_one_listing() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .and(query_param("filter", "userName eq \"ann@x.com\""))
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .and(query_param("filter", "userName eq \"zed@x.com\""))
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .and(query_param("startIndex", "1"))
        .respond_with(scim(200).set_body_json(list_json(1, vec![user_json("u1", "Ann@X.com")])))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    assert_eq!(
        client
            .find_user_by_user_name("ann@x.com")
            .await
            .expect("ok"),
        None,
        "a plain lookup believes the filter"
    );
    let found = client
        .find_user_after_conflict("ann@x.com")
        .await
        .expect("ok")
        .expect("found in the listing");
    assert_eq!(found.id.as_str(), "u1");
    assert_eq!(
        client
            .find_user_after_conflict("zed@x.com")
            .await
            .expect("ok"),
        None,
        "not in the (kept) listing either"
    );
}

#[tokio::test]
async fn creates_look_up_first_where_user_names_are_not_unique() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .and(query_param("filter", "userName eq \"ann@x.com\""))
        .respond_with(scim(200).set_body_json(list_json(1, vec![user_json("u1", "ann@x.com")])))
        .mount(&server)
        .await;
    on("POST", "/Users")
        .respond_with(scim(201).set_body_json(user_json("dup", "ann@x.com")))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let attrs: UserAttrs = [(UserAttr::UserName, "ann@x.com".to_owned())].into();
    // Unknown: the target's own answer is trusted (today's behaviour).
    assert_eq!(client.user_names_unique(), None);
    let made = client.create_user(&attrs, true).await.expect("created");
    assert_eq!(made.id.as_str(), "dup");
    client.set_user_names_unique(Some(false));
    let err = client
        .create_user(&attrs, true)
        .await
        .expect_err("the existing user is found first");
    assert!(matches!(err, ScimError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("u1"), "{err}");
    let posts = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 1, "no second POST");
}

#[tokio::test]
async fn a_listing_with_one_user_name_twice_shows_duplicates_are_accepted() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .respond_with(scim(200).set_body_json(list_json(
            2,
            vec![user_json("u1", "Ann@x.com"), user_json("u2", "ann@X.com")],
        )))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.list_users().await.expect("list");
    assert_eq!(client.user_names_unique(), Some(false));
}

#[tokio::test]
async fn a_patch_answer_listing_only_some_members_is_checked_by_reading_the_group() {
    let server = MockServer::start().await;
    on("PATCH", "/Groups/g1")
        .respond_with(scim(200).set_body_json(json!({"id": "g1", "members": []})))
        .expect(1)
        .mount(&server)
        .await;
    on("GET", "/Groups/g1")
        .respond_with(scim(200).set_body_json(json!({"id": "g1", "members": [{"value": "u1"}]})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client
        .add_members(&ScimId::new("g1"), &[named("u1", "ann@x.com")])
        .await
        .expect("the group read back holds u1");
    assert!(!client.members_by_user_name());
}

fn schemas_doc(user_attrs: Value, group_attrs: Value) -> Value {
    list_json(
        2,
        vec![
            json!({"id": resource::USER_SCHEMA, "attributes": user_attrs}),
            json!({"id": resource::GROUP_SCHEMA, "attributes": group_attrs}),
        ],
    )
}

#[tokio::test]
async fn a_target_without_schemas_gets_rfc_defaults_but_a_refused_token_fails() {
    let server = MockServer::start().await;
    let client = client_for(&server).await;
    // Nothing mounted: /Schemas answers 404.
    let schema = client.read_schema().await.expect("defaults");
    assert!(!schema.is_served());
    let schema::SchemaOrigin::Defaults { why } = &schema.origin else {
        panic!("{schema:?}")
    };
    assert!(why.contains("/Schemas") && why.contains("404"), "{why}");
    assert_eq!(client.user_names_unique(), None);

    on("GET", "/Schemas")
        .respond_with(scim_error(401, None, "bad token"))
        .mount(&server)
        .await;
    let err = client.read_schema().await.expect_err("refused");
    assert!(err.is_auth(), "{err}");
}

#[tokio::test]
async fn an_immutable_user_name_change_is_refused_without_being_sent() {
    let server = MockServer::start().await;
    on("GET", "/Schemas")
        .respond_with(scim(200).set_body_json(schemas_doc(
            json!([{"name": "userName", "mutability": "immutable", "uniqueness": "none"},
                   {"name": "externalId", "mutability": "readOnly"},
                   {"name": "title"}]),
            json!([]),
        )))
        .mount(&server)
        .await;
    on("PATCH", "/Users/u1")
        .and(body_json(json!({
            "schemas": [resource::PATCH_OP_SCHEMA],
            "Operations": [{"op": "replace", "path": "title", "value": "Boss"}]
        })))
        .respond_with(scim(204))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.read_schema().await.expect("schema");
    assert_eq!(client.user_names_unique(), Some(false));
    let id = ScimId::new("u1");
    let err = client
        .patch_user(
            &id,
            &[
                (UserAttr::UserName, Some("new@example.com".into())),
                (UserAttr::Title, Some("Boss".into())),
            ],
            None,
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ScimError::Refused(m) if m.contains("does not allow changing userName")),
        "{err}"
    );
    // A read-only attribute is left out; the rest is sent (the mock checks the body).
    client
        .patch_user(
            &id,
            &[
                (UserAttr::ExternalId, Some("k".into())),
                (UserAttr::Title, Some("Boss".into())),
            ],
            None,
        )
        .await
        .expect("sent without externalId");
}

#[tokio::test]
async fn required_group_members_go_into_the_post_and_are_not_added_again() {
    let server = MockServer::start().await;
    on("GET", "/Schemas")
        .respond_with(scim(200).set_body_json(schemas_doc(
            json!([{"name": "userName"}]),
            json!([{"name": "displayName"}, {"name": "members", "required": true}]),
        )))
        .mount(&server)
        .await;
    on("GET", "/Groups")
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .mount(&server)
        .await;
    on("POST", "/Groups")
        .and(body_json(json!({
            "schemas": [resource::GROUP_SCHEMA], "displayName": "Eng", "externalId": "g1",
            "members": [{"value": "u1"}, {"value": "u2"}]
        })))
        .respond_with(scim(201).set_body_json(json!({
            "id": "g", "displayName": "Eng", "members": [{"value": "u1"}, {"value": "u2"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(scim(204))
        .expect(0)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.read_schema().await.expect("schema");
    let members = [ScimId::new("u1"), ScimId::new("u2")];
    let refs: Vec<MemberRef> = members.iter().map(by_id).collect();
    let group = client
        .create_group_for("Eng", Some("g1"), &refs)
        .await
        .expect("created");
    client
        .add_members(&group.id, &refs)
        .await
        .expect("nothing left to add");
    let err = client
        .create_group_for("Empty", Some("g2"), &[])
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ScimError::Refused(m) if m.contains("requires members")),
        "{err}"
    );
}

#[tokio::test]
async fn atlassian_keeps_the_primary_email_it_requires_whatever_its_schema_lists() {
    let server = MockServer::start().await;
    on("GET", "/Schemas")
        .respond_with(scim(200).set_body_json(schemas_doc(
            json!([{"name": "emails", "subAttributes": [{"name": "value"}]}]),
            json!([]),
        )))
        .mount(&server)
        .await;
    let generic = client_for(&server).await;
    generic.read_schema().await.expect("schema");
    let shape = generic.payload_shape();
    assert!(!shape.email_type && !shape.email_primary);
    let atlassian = ScimClient::new(ClientOptions {
        flavour: Flavour::Atlassian,
        ..options(&format!("{}/scim/v2/", server.uri()))
    })
    .expect("client");
    atlassian.read_schema().await.expect("schema");
    let shape = atlassian.payload_shape();
    assert!(!shape.email_type && shape.email_primary);
}

#[tokio::test]
async fn a_target_that_cannot_be_reached_is_not_a_target_without_schemas() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let client = ScimClient::new(options(&format!("http://127.0.0.1:{port}/v2"))).expect("client");
    let err = client.read_schema().await.expect_err("unreachable");
    assert!(matches!(err, ScimError::Transport(_)), "{err:?}");
    assert!(client.schema().is_none());
}

/// A server whose schema says userName is unique and not case-exact, but
/// whose `eq` (and uniqueness) compare case-sensitively: a create finds the
/// account made by hand in another case in one listing, and posts nothing.
#[tokio::test]
async fn a_create_finds_a_case_variant_on_a_target_with_case_sensitive_eq() {
    let server = MockServer::start().await;
    on("GET", "/Schemas")
        .respond_with(scim(200).set_body_json(schemas_doc(
            json!([{"name": "userName", "caseExact": false, "uniqueness": "server"}]),
            json!([]),
        )))
        .mount(&server)
        .await;
    on("GET", "/Users")
        .and(query_param_is_missing("filter"))
        .respond_with(scim(200).set_body_json(list_json(
            1,
            vec![user_json("hand", "Pre.Existing@Example.com")],
        )))
        .mount(&server)
        .await;
    // `eq` compares case-sensitively: the probe in another case finds nothing.
    on("GET", "/Users")
        .and(query_param(
            "filter",
            "userName eq \"pRE.eXISTING@eXAMPLE.COM\"",
        ))
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .expect(1)
        .mount(&server)
        .await;
    on("POST", "/Users")
        .respond_with(scim(201).set_body_json(user_json("dup", "pre.existing@example.com")))
        .expect(0)
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.read_schema().await.expect("schema");
    assert_eq!(client.user_names_unique(), Some(true));
    let attrs: UserAttrs = [(UserAttr::UserName, "pre.existing@example.com".to_owned())].into();
    let err = client
        .create_user(&attrs, true)
        .await
        .expect_err("the account made by hand is found first");
    assert!(
        matches!(&err, ScimError::Conflict { detail } if detail.contains("hand")),
        "{err:?}"
    );
}

//! The client's own operations (`mod.rs`): creates, PATCHes, group creates
//! retried, the Atlassian flavour's refusals, and its options.

use super::*;

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

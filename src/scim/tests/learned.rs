//! What the client learns about the target (`learned.rs`): its
//! `/ServiceProviderConfig` and schema, and what follows from them.

use super::*;

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
    mount_schemas(
        &server,
        json!([{"name": "userName", "mutability": "immutable", "uniqueness": "none"},
               {"name": "externalId", "mutability": "readOnly"},
               {"name": "title"}]),
        json!([]),
    )
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
    mount_schemas(
        &server,
        json!([{"name": "userName"}]),
        json!([{"name": "displayName"}, {"name": "members", "required": true}]),
    )
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
    mount_schemas(
        &server,
        json!([{"name": "emails", "subAttributes": [{"name": "value"}]}]),
        json!([]),
    )
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

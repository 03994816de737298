//! Membership changes (`members.rs`): chunks, the member form the target
//! stores, and checking that a change took.

use super::*;

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

//! The client against in-process fakes (wiremock) for what a real server will not
//! do on demand (429, 5xx, odd paging), one file per part of the client (the
//! part's own file named at the top of each), and an `#[ignore]`d walk through
//! every operation against a real SCIM server named by `IDSYNC_TEST_SCIM_URL`
//! (`real_server.rs`). The mocks and fixtures they share are here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::*;
use crate::apply::TargetError;

mod client;
mod learned;
mod listing;
mod lookup;
mod members;
mod real_server;
mod transport;

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

/// `GET /Schemas` answers with these user and group attributes.
async fn mount_schemas(server: &MockServer, user_attrs: Value, group_attrs: Value) {
    let schemas = list_json(
        2,
        vec![
            json!({"id": resource::USER_SCHEMA, "attributes": user_attrs}),
            json!({"id": resource::GROUP_SCHEMA, "attributes": group_attrs}),
        ],
    );
    on("GET", "/Schemas")
        .respond_with(scim(200).set_body_json(schemas))
        .mount(server)
        .await;
}

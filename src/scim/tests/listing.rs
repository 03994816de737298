//! Listing (`listing.rs`, with `paging.rs`): pages as odd servers serve them,
//! the page size, the connectivity probe, and the cycle's user listing.

use super::*;

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

/// GET /Users requests the server has had.
async fn users_read(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.url.path().ends_with("/Users"))
        .count()
}

/// The first sync into an empty target asked it three times for one user
/// (the connectivity probe, the empty-state guard, the create lookup's
/// sizing) and then listed it: one request says it all.
#[tokio::test]
async fn an_empty_target_is_asked_for_its_users_once_before_the_first_create() {
    let server = MockServer::start().await;
    mount_schemas(
        &server,
        json!([{"name": "userName", "caseExact": false, "uniqueness": "server"}]),
        json!([]),
    )
    .await;
    on("GET", "/Users")
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .mount(&server)
        .await;
    on("POST", "/Users")
        .respond_with(scim(201).set_body_json(user_json("u1", "ann@x.com")))
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    client.read_schema().await.expect("schema");
    assert!(!client.holds_any("Users").await.expect("probe"));
    assert!(!client.holds_any("Users").await.expect("guard"));
    let attrs: UserAttrs = [(UserAttr::UserName, "ann@x.com".to_owned())].into();
    client.create_user(&attrs, true).await.expect("created");
    let bob: UserAttrs = [(UserAttr::UserName, "bob@x.com".to_owned())].into();
    client.create_user(&bob, true).await.expect("created");
    assert_eq!(users_read(&server).await, 1, "one read of the users");

    // A change sent since: the page is read again; so it is in a new cycle.
    assert!(!client.holds_any("Users").await.expect("after a create"));
    assert_eq!(users_read(&server).await, 2);
    client.begin_cycle();
    assert!(!client.holds_any("Users").await.expect("next cycle"));
    assert_eq!(users_read(&server).await, 3);
}

/// A page read while a change was out may not show it: it is not kept.
#[tokio::test]
async fn a_first_page_read_while_a_change_is_out_is_read_again() {
    let server = MockServer::start().await;
    on("GET", "/Users")
        .respond_with(scim(200).set_body_json(list_json(0, vec![])))
        .mount(&server)
        .await;
    on("POST", "/Users")
        .respond_with(
            scim(201)
                .set_body_json(user_json("u1", "ann@x.com"))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&server)
        .await;
    let client = client_for(&server).await;
    let attrs: UserAttrs = [(UserAttr::UserName, "ann@x.com".to_owned())].into();
    let creating = {
        let client = client.clone();
        tokio::spawn(async move { client.create_user(&attrs, true).await })
    };
    // Bounded: the POST is answered after 300 ms.
    for _ in 0..100 {
        if !server
            .received_requests()
            .await
            .expect("recorded")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !client
            .holds_any("Users")
            .await
            .expect("read while the create is out")
    );
    creating.await.expect("joined").expect("created");
    assert!(!client.holds_any("Users").await.expect("read again"));
    assert_eq!(users_read(&server).await, 2);
}

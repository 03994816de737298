//! An `#[ignore]`d walk through every operation against a real SCIM server
//! named by `IDSYNC_TEST_SCIM_URL`.

use super::*;

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

    let (created, attrs) = a_user_round_trips(&client, run).await;
    lookups_find_the_user(&client, &created, &attrs).await;
    patches_replace_remove_and_deactivate(&client, &created, &attrs, run).await;
    let ids = paging_lists_every_user_once(&client, &created, run).await;
    let group = groups_and_members(&client, &ids, run).await;
    deletes(&client, &created, &group, &ids).await;
    eprintln!("stats: {:?}", client.stats());
}

/// A user with every managed attribute round-trips; a duplicate userName
/// (differing in case) is a Conflict. Returns the user and its attributes.
async fn a_user_round_trips(client: &ScimClient, run: u128) -> (RemoteUser, UserAttrs) {
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

    let err = client
        .create_user(
            &[(UserAttr::UserName, user_name.to_lowercase())].into(),
            true,
        )
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ScimError::Conflict { .. }), "{err:?}");
    (created, attrs)
}

/// Lookups: by userName in another case, by externalId exactly, and of no one.
async fn lookups_find_the_user(client: &ScimClient, created: &RemoteUser, attrs: &UserAttrs) {
    let user_name = attrs.get(UserAttr::UserName).expect("userName").to_owned();
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
}

/// PATCH: replace, remove (present and absent), deactivate.
async fn patches_replace_remove_and_deactivate(
    client: &ScimClient,
    created: &RemoteUser,
    attrs: &UserAttrs,
    run: u128,
) {
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
}

/// Paging over more users than one page holds. Returns the ids of every user
/// made.
async fn paging_lists_every_user_once(
    client: &ScimClient,
    created: &RemoteUser,
    run: u128,
) -> Vec<ScimId> {
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
    ids
}

/// Groups and members: adds (repeats not duplicated), removals (of an absent
/// member too), a lookup in another case, a rename. Returns the group.
async fn groups_and_members(client: &ScimClient, ids: &[ScimId], run: u128) -> RemoteGroup {
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
    group
}

/// Deletes, and deletes of what is gone.
async fn deletes(client: &ScimClient, created: &RemoteUser, group: &RemoteGroup, ids: &[ScimId]) {
    client.delete_group(&group.id).await.expect("delete group");
    for id in ids {
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
}

//! idsync against a real Active Directory: Samba's AD DC (scripts/samba-ad.sh)
//! on 127.0.0.1, with objectGUID keys and the repository's
//! `mappings/active-directory.yaml`, syncing into a real scim2-server. After
//! every change the target is compared with what the directory says it must
//! hold (`Expected`, computed from `ldapsearch` output, not from idsync's reader).
//!
//! The domain (see the script): 250 staff and 50 contractors with mail, one
//! of them disabled, a computer account, 1,350 contacts, nested and cyclic
//! groups, a group of 1,651 members. Each test runs on its own copy of it, one
//! at a time (Samba's ports are fixed).

mod harness;
#[path = "../support/mod.rs"]
mod support;

use serde_json::Value;

use harness::*;
use support::process::fresh_token;
use support::scim::{ScimServer, str_at, summary_count};

fn started() -> (Samba, ScimServer) {
    let samba = Samba::start();
    let server = ScimServer::start(&fresh_token("ad"));
    (samba, server)
}

fn user_dn(name: &str) -> String {
    format!("CN={name},{STAFF}")
}

fn mail(name: &str) -> String {
    format!("{name}@corp.example.test")
}

fn summary(run: &Value, key: &str) -> u64 {
    summary_count(run, key)
}

fn active(server: &ScimServer, user_name: &str) -> bool {
    server
        .contents()
        .user(user_name)
        .get("active")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// Adds a new hire in OU=Staff.
fn hire(samba: &Samba, cn: &str, mail: &str) {
    samba.modify(&format!(
        "dn: CN={cn},{STAFF}\nchangetype: add\nobjectClass: user\nsAMAccountName: {cn}\n\
         userPrincipalName: {cn}@corp.example.test\nmail: {mail}\ngivenName: New\nsn: {cn}\n\
         userAccountControl: 544\n"
    ));
}

#[test]
fn users_keep_their_scim_id_through_rename_move_disable_and_restore() {
    let (samba, server) = started();
    let op = Operator::new(&samba, &server);

    // Initial sync: every in-scope person, never the computer, the disabled
    // s250, the contacts or the built-in accounts without a UPN.
    let run = op.sync(0);
    assert_eq!(summary(&run, "create_users"), 300, "{run}");
    let target = server.contents();
    Expected::of(&samba, "cn").assert_matches(&target);
    assert!(target.users_named(&mail("s250")).is_empty());
    assert!(
        target.group("Domain Admins").is_none(),
        "a system group was synced"
    );
    assert!(
        target.group("Administrators").is_none(),
        "a Builtin group was synced"
    );
    let all_hands = target.group("All Hands").expect("All Hands");
    assert_eq!(
        all_hands["members"].as_array().map(Vec::len),
        Some(299),
        "every person but the disabled one; contacts are not users"
    );
    op.assert_plan_empty();

    // Rename and move to another OU, with a new given name: the same account.
    let s001 = target.user_id(&mail("s001"));
    samba.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=Sam One\ndeleteoldrdn: 1\nnewsuperior: OU=Moved,{BASE}\n\n\
         dn: CN=Sam One,OU=Moved,{BASE}\nchangetype: modify\nreplace: givenName\ngivenName: Sam\n-\n",
        user_dn("s001")
    ));
    let run = op.sync(0);
    assert_eq!(summary(&run, "update_users"), 1, "{run}");
    assert_eq!(summary(&run, "create_users"), 0, "{run}");
    let target = server.contents();
    assert_eq!(target.user_id(&mail("s001")), s001);
    Expected::of(&samba, "cn").assert_matches(&target);

    // Disabled (userAccountControl 0x2) and enabled again: the same account.
    let s002 = target.user_id(&mail("s002"));
    let uac = |value: u32| {
        format!(
            "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {value}\n-\n",
            user_dn("s002")
        )
    };
    samba.modify(&uac(546));
    let run = op.sync(0);
    assert_eq!(summary(&run, "disable_users"), 1, "{run}");
    assert!(!active(&server, &mail("s002")));
    Expected::of(&samba, "cn").assert_matches(&server.contents());
    samba.modify(&uac(544));
    op.sync(0);
    assert!(active(&server, &mail("s002")));
    assert_eq!(server.contents().user_id(&mail("s002")), s002);
    Expected::of(&samba, "cn").assert_matches(&server.contents());

    // Deleted, then restored from Deleted Objects: the same objectGUID, so the
    // same account is disabled and enabled again.
    let s003 = server.contents().user_id(&mail("s003"));
    let guid = samba.entry(&user_dn("s003"), &["objectGUID"]).guid();
    samba.delete(&user_dn("s003"));
    let run = op.sync(0);
    assert_eq!(summary(&run, "disable_users"), 1, "{run}");
    assert!(!active(&server, &mail("s003")));
    Expected::of(&samba, "cn").assert_matches(&server.contents());
    samba.restore(
        &guid,
        &user_dn("s003"),
        &[
            ("mail", &mail("s003")),
            ("userPrincipalName", &mail("s003")),
            ("givenName", "Staff"),
            ("sn", "s003"),
            ("userAccountControl", "544"),
        ],
    );
    assert_eq!(samba.entry(&user_dn("s003"), &["objectGUID"]).guid(), guid);
    let run = op.sync(0);
    assert_eq!(summary(&run, "create_users"), 0, "{run}");
    let target = server.contents();
    assert_eq!(target.user_id(&mail("s003")), s003);
    assert!(active(&server, &mail("s003")));
    Expected::of(&samba, "cn").assert_matches(&target);
    op.assert_plan_empty();
}

#[test]
fn groups_follow_renames_nesting_primary_groups_and_removal() {
    let (samba, server) = started();
    let op = Operator::new(&samba, &server);
    op.sync(0);
    let expected = Expected::of(&samba, "cn");
    expected.assert_matches(&server.contents());
    // Nested and cyclic groups are flattened.
    assert_eq!(expected.groups["Engineering"].len(), 60);
    assert_eq!(expected.groups["Cycle A"], expected.groups["Cycle B"]);

    // A group renamed in AD is renamed in the target (same id).
    let sales = server.contents().group_id("Sales");
    samba.modify(&format!(
        "dn: CN=Sales,{GROUPS}\nchangetype: modrdn\nnewrdn: CN=Sales EMEA\ndeleteoldrdn: 1\n"
    ));
    // Nesting changes: Sales EMEA joins Engineering, Platform leaves it.
    samba.modify(&format!(
        "dn: CN=Engineering,{GROUPS}\nchangetype: modify\nadd: member\nmember: CN=Sales EMEA,{GROUPS}\n-\n\
         delete: member\nmember: CN=Platform,{GROUPS}\n-\n"
    ));
    let run = op.sync(0);
    assert_eq!(summary(&run, "update_groups"), 1, "{run}");
    let target = server.contents();
    assert_eq!(target.group_id("Sales EMEA"), sales);
    Expected::of(&samba, "cn").assert_matches(&target);

    // A primary group: AD moves the membership out of `member` into the
    // user's primaryGroupID, and the user stays a member in the target.
    samba.modify(&format!(
        "dn: CN=VPN Users,{GROUPS}\nchangetype: add\nobjectClass: group\nsAMAccountName: vpn-users\n\
         member: {}\nmember: {}\n",
        user_dn("s010"),
        user_dn("s011")
    ));
    op.sync(0);
    let rid = samba.rid(&format!("CN=VPN Users,{GROUPS}"));
    samba.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: primaryGroupID\nprimaryGroupID: {rid}\n-\n",
        user_dn("s010")
    ));
    let vpn = samba.entry(&format!("CN=VPN Users,{GROUPS}"), &["member"]);
    assert_eq!(
        vpn.texts("member").len(),
        1,
        "AD keeps the primary member out of `member`"
    );
    op.assert_plan_empty();
    Expected::of(&samba, "cn").assert_matches(&server.contents());

    // A group deleted in AD is deleted in the target; its nesting goes with it.
    samba.delete(&format!("CN=Cycle B,{GROUPS}"));
    let run = op.sync(0);
    assert_eq!(summary(&run, "delete_groups"), 1, "{run}");
    let target = server.contents();
    assert!(target.group("Cycle B").is_none());
    Expected::of(&samba, "cn").assert_matches(&target);
    op.assert_plan_empty();
}

#[test]
fn a_shared_group_cn_holds_only_those_groups_until_sam_account_name_is_used() {
    let (samba, server) = started();
    let mut op = Operator::new(&samba, &server);
    op.sync(0);
    let support = server.contents().group_id("Support");

    // A second "Support" elsewhere in the domain, a leaver, and a member
    // leaving the first Support, all in one cycle.
    samba.modify(&format!(
        "dn: CN=Support,OU=Contractors,{BASE}\nchangetype: add\nobjectClass: group\n\
         sAMAccountName: support-contractors\nmember: CN=c001,OU=Contractors,{BASE}\n"
    ));
    samba.delete(&user_dn("s200"));
    samba.modify(&format!(
        "dn: CN=Support,{GROUPS}\nchangetype: modify\ndelete: member\nmember: {}\n-\n",
        user_dn("s104")
    ));
    let out = op.run(&["sync", "--format", "json"]);
    out.assert_code(1);
    let run = out.json();
    assert_eq!(run["held_groups"], 2, "{run}");
    // Both groups are named; the leaver still goes; Support is left as it was.
    let warnings = run["warnings"].to_string();
    assert!(
        warnings.contains(&format!("CN=Support,{GROUPS}")),
        "{warnings}"
    );
    assert!(warnings.contains("CN=Support,OU=Contractors"), "{warnings}");
    assert!(warnings.contains("sAMAccountName"), "{warnings}");
    assert_eq!(summary(&run, "disable_users"), 1, "{run}");
    assert_eq!(summary(&run, "delete_groups"), 0, "{run}");
    // The leaver leaves All Hands; s104 stays in the held Support.
    assert_eq!(summary(&run, "remove_members"), 1, "{run}");
    let target = server.contents();
    assert!(!active(&server, &mail("s200")));
    let group = target.group("Support").expect("Support kept");
    assert_eq!(str_at(group, "id"), support);
    let members = group["members"].as_array().map(Vec::len);
    assert_eq!(
        members,
        Some(3),
        "the held group's memberships were changed"
    );
    Expected::of(&samba, "cn").assert_matches(&target);

    // Named by sAMAccountName (unique in a domain), every group syncs again.
    op.extra_source = "  group_name_attribute: sAMAccountName\n".into();
    op.sync(0);
    let target = server.contents();
    Expected::of(&samba, "sAMAccountName").assert_matches(&target);
    assert_eq!(
        target.group_id("support-staff"),
        support,
        "renamed in place"
    );
    op.assert_plan_empty();
}

#[test]
fn binds_as_dn_upn_and_down_level_name_over_tls_and_refuses_plain_ldap() {
    let (samba, server) = started();
    let mut op = Operator::new(&samba, &server);
    for bind in [SVC_DN, SVC_UPN, SVC_DOWN_LEVEL] {
        op.bind_dn = bind.into();
        let out = op.run(&["check"]);
        out.assert_code(0);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("LDAPS, certificate verified against ca_file"),
            "{text}"
        );
        assert!(
            text.contains("critical system groups") && text.contains("CN=Builtin"),
            "check does not say system groups are left out:\n{text}"
        );
    }

    // StartTLS on 389 works too.
    op.bind_dn = SVC_UPN.into();
    op.url = LDAP_URL.into();
    op.extra_source = "  starttls: true\n".into();
    op.run(&["check"]).assert_code(0);

    // Plain LDAP: Samba refuses simple binds without TLS, and idsync says why.
    op.extra_source = String::new();
    op.ca_file = None;
    let out = op.run(&["plan"]);
    out.assert_code(5);
    assert!(
        out.stderr
            .contains("the server requires an encrypted connection"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("hint:"), "{}", out.dump());
}

#[test]
fn samba_s_own_certificate_without_names_is_refused_with_how_to_fix_it() {
    let samba = Samba::start_with_samba_certificate();
    let server = ScimServer::start(&fresh_token("ad-cert"));
    let mut op = Operator::new(&samba, &server);
    op.ca_file = Some(samba.samba_ca_file());
    let out = op.run(&["check"]);
    out.assert_code(5);
    assert!(
        out.stderr.contains("certificate names no host")
            && out.stderr.contains("subjectAltName")
            && out.stderr.contains("IP:127.0.0.1"),
        "{}",
        out.dump()
    );
}

#[test]
fn a_leavers_mail_given_to_a_new_hire_in_the_same_cycle_and_in_the_next() {
    let (samba, server) = started();
    let mut op = Operator::new(&samba, &server);
    op.sync(0);

    // Same cycle: s020 leaves, n020 starts with s020's address. Under the
    // default policy (remove_action: disable, reuse_accounts: never) the
    // leaver's disabled account keeps the address: the new hire is refused,
    // naming both keys, and the rest of the cycle goes through.
    let leaver = samba.entry(&user_dn("s020"), &["objectGUID"]).guid();
    let leaver_id = server.contents().user_id(&mail("s020"));
    samba.delete(&user_dn("s020"));
    hire(&samba, "n020", &mail("s020"));
    let hire_guid = samba.entry(&user_dn("n020"), &["objectGUID"]).guid();
    let refused = op.run(&["sync"]);
    refused.assert_code(1);
    let said = refused.dump();
    assert!(
        said.contains(&leaver) && said.contains(&hire_guid) && said.contains("reuse_accounts"),
        "{said}"
    );
    let target = server.contents();
    let kept = target.user(&mail("s020"));
    assert_eq!(str_at(kept, "externalId"), leaver);
    assert_eq!(kept["active"], Value::Bool(false), "{kept}");

    // With reuse_accounts: after_removal the new hire takes over the
    // leaver's (disabled) account, as the plan says.
    op.extra_policy = "  reuse_accounts: after_removal\n".into();
    op.sync(0);
    let target = server.contents();
    let now = target.user(&mail("s020"));
    assert_eq!(str_at(now, "externalId"), hire_guid);
    assert_eq!(target.user_id(&mail("s020")), leaver_id);
    assert!(
        !target
            .users
            .iter()
            .any(|u| str_at(u, "externalId") == leaver && u["active"] != Value::Bool(false)),
        "the leaver's account is still active"
    );
    Expected::of(&samba, "cn").assert_matches(&target);

    // Next cycle: s021 leaves first, n021 gets the address a cycle later.
    samba.delete(&user_dn("s021"));
    op.sync(0);
    hire(&samba, "n021", &mail("s021"));
    op.sync(0);
    let target = server.contents();
    let hire_guid = samba.entry(&user_dn("n021"), &["objectGUID"]).guid();
    assert_eq!(str_at(target.user(&mail("s021")), "externalId"), hire_guid);
    Expected::of(&samba, "cn").assert_matches(&target);
    op.assert_plan_empty();
}

#[test]
fn two_users_swapping_mail_keep_their_accounts() {
    let (samba, server) = started();
    let op = Operator::new(&samba, &server);
    op.sync(0);
    let target = server.contents();
    let (a, b) = (target.user_id(&mail("s030")), target.user_id(&mail("s031")));
    for (cn, address) in [("s030", mail("s031")), ("s031", mail("s030"))] {
        samba.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: mail\nmail: {address}\n-\n",
            user_dn(cn)
        ));
    }
    op.sync(0);
    let target = server.contents();
    // The accounts follow the people (objectGUID), so the userNames swap.
    assert_eq!(target.user_id(&mail("s031")), a);
    assert_eq!(target.user_id(&mail("s030")), b);
    Expected::of(&samba, "cn").assert_matches(&target);
    op.assert_plan_empty();
}

//! Mapping tests: compiling mapping files (and their diagnostics), mapping
//! records, scope rules including `member_of`, and duplicate detection.

use super::*;

fn user(key: &str, line: usize, attrs: &[(&str, &str)]) -> SourceUser {
    let mut a = SourceAttrs::with_capacity(attrs.len());
    for (n, v) in attrs {
        a.push(n, [v]);
    }
    SourceUser {
        key: SourceKey::new(key),
        origin: Origin::new(format!("users.csv line {line}")),
        attrs: a,
    }
}

fn group(key: &str, members: &[&str]) -> SourceGroup {
    SourceGroup::new(
        GroupKey::new(key),
        key.to_owned(),
        Origin::new(format!("groups.csv group {key}")),
        members.iter().map(|m| SourceKey::new(*m)).collect(),
    )
}

fn compile(text: &str) -> Mapping {
    Mapping::parse(text, "m.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    Mapping::parse(text, "m.yaml")
        .expect_err("mapping should not compile")
        .to_string()
}

const BRIEF: &str = r#"
users:
  attributes:
    userName: { expr: "trim(email)" }
    emails: email
    name.givenName: { from: given_name }
    name.familyName: { from: family_name }
    displayName: { template: "{{ given_name }} {{ family_name }}", on: create }
    organization: { value: "Acme" }
    externalId: { expr: "key" }
  active: { expr: "default(active, 'true')" }
  required: [userName, emails]
  scope:
    include:
      - { attribute: department, equals: Sales }
      - all:
          - { attribute: title, regex: "^Eng" }
          - { attribute: country, equals: de, ignore_case: true }
    exclude:
      - { attribute: email, absent: true }
      - { attribute: employeeType, not_equals: Employee }
groups:
  displayName: { expr: "name" }
  scope:
    include: [ { attribute: name, regex: "^team-" } ]
"#;

fn employee(key: &str, line: usize, extra: &[(&str, &str)]) -> SourceUser {
    let mut attrs = vec![
        ("email", " a@example.com "),
        ("given_name", "Ann"),
        ("family_name", "Lee"),
        ("employeeType", "Employee"),
    ];
    attrs.retain(|(n, _)| !extra.iter().any(|(e, _)| e == n));
    attrs.extend_from_slice(extra);
    user(key, line, &attrs)
}

#[test]
fn maps_the_documented_example() {
    let m = compile(BRIEF);
    let u = m
        .map_user(
            &employee("u1", 2, &[("department", "Sales")]),
            &SourceDirectory::default(),
        )
        .unwrap()
        .expect("in scope");
    let names: Vec<_> = u.attrs.iter().map(|(a, v)| (a.name(), v)).collect();
    assert_eq!(
        names,
        [
            ("userName", "a@example.com"),
            ("externalId", "u1"),
            ("emails", " a@example.com "),
            ("name.givenName", "Ann"),
            ("name.familyName", "Lee"),
            ("displayName", "Ann Lee"),
            ("organization", "Acme"),
        ]
    );
    assert!(u.active);
    assert_eq!(u.origin, Origin::new("users.csv line 2"));
    assert_eq!(
        m.create_only().into_iter().collect::<Vec<_>>(),
        [UserAttr::DisplayName]
    );
    assert_eq!(
        m.source_attributes().into_iter().collect::<Vec<_>>(),
        [
            "active",
            "country",
            "department",
            "email",
            "employeeType",
            "family_name",
            "given_name",
            "title"
        ]
    );
}

/// The example from the design brief, verbatim (trailing comma included).
#[test]
fn the_brief_example_compiles() {
    let m = compile(
        r#"
# mappings/csv.yaml
users:
  attributes:
    userName: { expr: "trim(email)" }
    emails: email
    name.givenName: { from: given_name }
    name.familyName: { from: family_name }
    displayName: { template: "{{ given_name }} {{ family_name }}", on: create }
    organization: { value: "Acme" }
    externalId: { expr: "key" }
  active: { expr: "default(active, 'true')" }
  required: [userName, emails]
  scope:
    include:
      - { attribute: department, equals: Sales }
      - { attribute: title, regex: "^Eng" , }
    exclude:
      - { attribute: email, absent: true }
      - { attribute: employeeType, not_equals: Employee }
groups:
  displayName: { expr: "name" }
  scope:
    include: [ { attribute: name, regex: "^team-" } ]
"#,
    );
    let u = employee("u", 1, &[("title", "Engineer")]);
    assert!(
        m.map_user(&u, &SourceDirectory::default())
            .unwrap()
            .is_some()
    );
    assert_eq!(m.map_group(&group("ops", &[])).unwrap(), None);
}

#[test]
fn scope_include_is_or_clauses_are_and_exclude_wins() {
    let m = compile(BRIEF);
    let in_scope = |extra: &[(&str, &str)]| {
        m.map_user(&employee("u", 1, extra), &SourceDirectory::default())
            .unwrap()
            .is_some()
    };
    // First include rule.
    assert!(in_scope(&[("department", "Sales")]));
    assert!(
        !in_scope(&[("department", "sales")]),
        "equals is case-sensitive"
    );
    // Second rule: both clauses must hold.
    assert!(in_scope(&[("title", "Engineer"), ("country", "DE")]));
    assert!(!in_scope(&[("title", "Engineer")]));
    assert!(!in_scope(&[("title", "Lead Engineer"), ("country", "de")]));
    // Matches no include rule.
    assert!(!in_scope(&[("department", "Ops")]));
    // Exclude wins over include.
    assert!(!in_scope(&[
        ("department", "Sales"),
        ("employeeType", "Contractor")
    ]));
    let no_email = user(
        "x",
        1,
        &[("department", "Sales"), ("employeeType", "Employee")],
    );
    assert_eq!(
        m.map_user(&no_email, &SourceDirectory::default()).unwrap(),
        None
    );
    // not_equals holds when the attribute is absent, so the exclude applies.
    let no_type = user("y", 1, &[("department", "Sales"), ("email", "y@x")]);
    assert_eq!(
        m.map_user(&no_type, &SourceDirectory::default()).unwrap(),
        None
    );
}

#[test]
fn no_include_rules_means_everyone() {
    let m = compile(
        "users:\n  attributes:\n    userName: email\n  scope:\n    exclude:\n      - { attribute: key, regex: '^svc-' }\n",
    );
    assert!(
        m.map_user(
            &user("u1", 1, &[("email", "a@x")]),
            &SourceDirectory::default()
        )
        .unwrap()
        .is_some()
    );
    assert!(
        m.map_user(
            &user("svc-1", 1, &[("email", "b@x")]),
            &SourceDirectory::default()
        )
        .unwrap()
        .is_none()
    );
}

#[test]
fn multi_valued_attributes_in_scope() {
    let m = compile(
        "users:\n  attributes:\n    userName: mail\n  scope:\n    include:\n      - { attribute: memberOf, equals: 'CN=Staff', ignore_case: true }\n",
    );
    let mut u = user("u1", 1, &[("mail", "a@x")]);
    u.attrs.push("memberOf", ["cn=Other", "cn=staff"]);
    assert!(
        m.map_user(&u, &SourceDirectory::default())
            .unwrap()
            .is_some()
    );
}

#[test]
fn active_values() {
    let m = compile(BRIEF);
    let active = |v: &str| {
        m.map_user(
            &employee("u", 7, &[("department", "Sales"), ("active", v)]),
            &SourceDirectory::default(),
        )
        .map(|u| u.unwrap().active)
    };
    for v in ["true", "TRUE", "yes", "Yes", "1", "", " true "] {
        assert_eq!(active(v), Ok(true), "{v:?}");
    }
    for v in ["false", "False", "no", "NO", "0"] {
        assert_eq!(active(v), Ok(false), "{v:?}");
    }
    let e = active("maybe").unwrap_err();
    assert_eq!(
        e.to_string(),
        "users.csv line 7: user \"u\": the `active` rule gave \"maybe\", not true or false\n  hint: the `active` rule must give true/false, yes/no or 1/0: fix the source value, or wrap the rule in default(…, 'true')"
    );
}

#[test]
fn missing_required_attribute_is_a_record_error() {
    let m = compile(
        "users:\n  attributes:\n    userName: { expr: 'lower(email)' }\n    emails: email\n    title: title\n  required: [emails, title]\n",
    );
    let e = m
        .map_user(
            &user("u-12", 12, &[("email", "  ")]),
            &SourceDirectory::default(),
        )
        .unwrap_err();
    assert_eq!(
        e.problem,
        RecordProblem::MissingRequired {
            attributes: vec![UserAttr::UserName, UserAttr::Email, UserAttr::Title],
            sources: vec!["email".into(), "title".into()],
        }
    );
    assert_eq!(
        e.to_string(),
        "users.csv line 12: user \"u-12\": required attributes `userName`, `emails`, `title` mapped to empty\n  hint: fill in `email`, `title` for this record in the source, or leave such users out with a scope rule such as `exclude: [{ attribute: email, absent: true }]`"
    );
}

#[test]
fn build_sorts_filters_and_counts() {
    let m = compile(BRIEF);
    let dir = SourceDirectory {
        users: vec![
            employee("u3", 4, &[("department", "Sales")]),
            user(
                "u1",
                2,
                &[
                    ("email", "b@x"),
                    ("department", "Sales"),
                    ("employeeType", "Employee"),
                    ("active", "false"),
                ],
            ),
            employee("u2", 3, &[("department", "Ops")]),
        ],
        groups: vec![
            group("team-b", &["u3", "u2", "u1", "u3", "ghost"]),
            group("team-a", &[]),
            group("other", &["u1"]),
        ],
        unresolved_members: 5,
        assignments: None,
    };
    let d = m.build(dir).unwrap();
    let keys: Vec<_> = d.users.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, ["u1", "u3"]);
    assert!(!d.users[0].active);
    assert_eq!(
        d.out_of_scope
            .iter()
            .map(SourceKey::as_str)
            .collect::<Vec<_>>(),
        ["u2"]
    );
    let groups: Vec<_> = d
        .groups
        .iter()
        .map(|g| {
            (
                g.display_name.as_str(),
                g.members.iter().map(SourceKey::as_str).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(groups, [("team-a", vec![]), ("team-b", vec!["u1", "u3"])]);
    // u2 (out of scope) and ghost, plus the adapter's 5.
    assert_eq!(d.ignored_members, 7);
    assert_eq!(d.create_only, m.create_only());
}

#[test]
fn build_collects_every_record_error() {
    let m = compile(
        "users:\n  attributes:\n    userName: { expr: 'trim(email)' }\n    emails: email\n  required: [emails]\n",
    );
    let dir = SourceDirectory {
        users: vec![
            user("u1", 2, &[("email", "Jo@Example.com")]),
            user("u2", 3, &[("email", "")]),
            user("u3", 4, &[("email", " jo@example.COM")]),
            user("u4", 5, &[]),
            user("u5", 6, &[("email", "müller@example.com")]),
            user("u6", 7, &[("email", "MÜLLER@example.com")]),
            user("u1", 8, &[("email", "other@example.com")]),
        ],
        // Groups sharing a name are held (not an error): see
        // groups_sharing_a_display_name_are_held_and_users_still_map.
        groups: vec![group("Team", &[]), group("team", &[])],
        unresolved_members: 0,
        assignments: None,
    };
    let errors = m.build(dir).unwrap_err();
    let text: Vec<String> = errors
        .iter()
        .map(|e| e.to_string().lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        text,
        [
            "users.csv line 3: user \"u2\": required attributes `userName`, `emails` mapped to empty",
            "users.csv line 5: user \"u4\": required attributes `userName`, `emails` mapped to empty",
            "users.csv line 4: user \"u3\": userName \"jo@example.COM\" is also the userName of user \"u1\" (users.csv line 2)",
            "users.csv line 7: user \"u6\": userName \"MÜLLER@example.com\" is also the userName of user \"u5\" (users.csv line 6)",
            "users.csv line 8: user \"u1\": the same key is also used at users.csv line 2",
        ]
    );
    assert!(errors.iter().all(|e| e.to_string().contains("\n  hint: ")));
}

#[test]
fn group_display_name_rules() {
    let m = compile(
        "users:\n  attributes:\n    userName: email\ngroups:\n  displayName: { expr: \"join(' ', 'Team', upper(name))\" }\n  scope:\n    exclude: [ { attribute: key, equals: skip } ]\n",
    );
    assert_eq!(
        m.map_group(&group("ops", &[])).unwrap().as_deref(),
        Some("Team OPS")
    );
    assert_eq!(m.map_group(&group("skip", &[])).unwrap(), None);
    let m = compile("users:\n  attributes:\n    userName: email\n");
    let mut g = group("g1", &[]);
    assert_eq!(m.map_group(&g).unwrap().as_deref(), Some("g1"));
    g.name.clear();
    let e = m.map_group(&g).unwrap_err();
    assert_eq!(e.problem, RecordProblem::EmptyGroupName);
}

#[test]
fn non_ascii_and_quoted_values_pass_through() {
    let m = compile(
        r#"users:
  attributes:
    userName: { expr: "lower(email)" }
    name.familyName: { expr: "upper(sn)" }
    displayName: { template: '{{ given }} "{{ sn }}" \ {{ nick }}' }
"#,
    );
    for (sn, upper) in [
        ("Müller", "MÜLLER"),
        ("Nuñez", "NUÑEZ"),
        ("Østergaard", "ØSTERGAARD"),
    ] {
        let u = m
            .map_user(
                &user(
                    "k",
                    1,
                    &[
                        ("email", "Ünal.Øst@Example.com"),
                        ("sn", sn),
                        ("given", "O'Neil"),
                        ("nick", "C:\\x"),
                    ],
                ),
                &SourceDirectory::default(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            u.attrs.get(UserAttr::UserName).unwrap(),
            "ünal.øst@example.com"
        );
        assert_eq!(u.attrs.get(UserAttr::FamilyName).unwrap(), upper);
        assert_eq!(
            u.attrs.get(UserAttr::DisplayName).unwrap(),
            format!("O'Neil \"{sn}\" \\ C:\\x")
        );
    }
}

#[test]
fn compile_errors_name_file_line_and_column() {
    // Inside a double-quoted flow scalar: the column of `lowr`.
    assert_eq!(
        error("users:\n  attributes:\n    userName: { expr: \"trim(lowr(email))\" }\n"),
        "m.yaml:3:29: in `trim(lowr(email))`: unknown function `lowr`\n  hint: did you mean `lower`? functions are: lower, upper, trim, join, split, replace, coalesce, default, first, attr, if, eq, ne, present, matches, not, and, or, flag"
    );
    // A plain block scalar.
    assert!(
        error("users:\n  attributes:\n    userName:\n      expr: join(' ', a b)\n")
            .starts_with("m.yaml:4:25: in `join(' ', a b)`: expected `,` or `)`, found `b`\n"),
    );
    // Wrong arity, inside a template.
    assert_eq!(
        error(
            "users:\n  attributes:\n    userName: email\n    displayName: { template: 'Hi {{ upper(a, b) }}' }\n"
        ),
        "m.yaml:4:37: in `Hi {{ upper(a, b) }}`: `upper` takes 1 argument, found 2\n  hint: usage: upper(value)"
    );
    // Bad regex in an expression.
    let e =
        error("users:\n  attributes:\n    userName: { expr: \"if(matches(a, '[z-a]'), a, b)\" }\n");
    assert!(e.starts_with("m.yaml:3:38: in `if(matches(a, '[z-a]'), a, b)`: invalid regular expression '[z-a]'\n  hint: fix the pattern"), "{e}");
    // Unknown SCIM attribute, with a suggestion.
    let e = error("users:\n  attributes:\n    username: email\n");
    assert!(e.starts_with("m.yaml:3:5: unknown SCIM attribute `username`\n  hint: did you mean `userName`? valid attributes are: userName, externalId, emails,"), "{e}");
    // Bad regex in a scope rule: the column of the pattern.
    assert_eq!(
        error(
            "users:\n  attributes:\n    userName: email\n  scope:\n    include:\n      - { attribute: title, regex: \"^(Eng\" }\n"
        ),
        "m.yaml:6:36: invalid regular expression \"^(Eng\"\n  hint: fix the pattern (Rust regex syntax): error: unclosed group"
    );
    // Unknown keys point at the key.
    assert_eq!(
        error("users:\n  attributes:\n    userName: email\n  colour: red\n"),
        "m.yaml:4:3: unknown field `colour`, expected one of attributes, active, required, scope\n  hint: remove or rename this key; the valid keys are listed above"
    );
    assert_eq!(
        error("users:\n  attributes:\n    userName: { exp: email }\n"),
        "m.yaml:3:17: unknown field `exp`, expected one of expr, from, template, value, on\n  hint: remove or rename this key; the valid keys are listed above"
    );
    assert!(
        error("users:\n  attributes:\n    title: email\n")
            .starts_with("m.yaml:3:5: `userName` is not mapped\n")
    );
    assert!(
        error("users:\n  attributes:\n    userName: { from: a, on: sometimes }\n")
            .starts_with("m.yaml:3:30: unknown `on: sometimes`\n")
    );
    assert!(
        error("users:\n  attributes:\n    userName: { from: a, value: b }\n")
            .starts_with("m.yaml:3:15: a rule needs exactly one of")
    );
    assert!(
        error("users:\n  attributes:\n    userName: a\n  required: [userName, titel, title]\n")
            .starts_with("m.yaml:4:24: unknown SCIM attribute `titel` in `required`\n")
    );
    assert!(
        error("users:\n  attributes:\n    userName: a\n    email: b\n    emails: c\n")
            .starts_with("m.yaml:5:5: `emails` is mapped twice (first at line 4)\n")
    );
    assert!(error("users:\n  attributes:\n    userName: a\ngroups:\n  displayName: { expr: 'lower(cn)' }\n").starts_with("m.yaml:5:31: in `lower(cn)`: unknown group attribute `cn`\n"));
    assert!(error("users:\n  attributes:\n    userName: a\n  scope:\n    include:\n      - all:\n          - { attribute: t, equals: x }\n          - { attribute: t }\n").starts_with("m.yaml:8:13: a scope clause needs exactly one test on `t`\n"));
    assert!(error("").contains("hint: the file is empty"));
}

#[test]
fn every_compile_error_is_reported() {
    let e = error(
        "users:\n  attributes:\n    userName: { expr: 'lowr(a)' }\n    titel: b\n    title: { expr: 'split(a)' }\n",
    );
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("m.yaml")).collect();
    assert_eq!(lines.len(), 3, "{e}");
}

/// One of the mapping files shipped in `mappings/`.
fn default_mapping(name: &str) -> Mapping {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    Mapping::load(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn default_csv_mapping_compiles_and_maps() {
    let csv = default_mapping("csv.yaml");
    let u = csv
        .map_user(
            &user(
                "1001",
                2,
                &[
                    ("email", " ann.lee@example.com "),
                    ("given_name", "Ann"),
                    ("family_name", "Lee"),
                    ("display_name", ""),
                    ("title", "Engineer"),
                    ("department", "R&D"),
                    ("active", ""),
                ],
            ),
            &SourceDirectory::default(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(u.user_name().as_str(), "ann.lee@example.com");
    assert_eq!(u.attrs.get(UserAttr::Email).unwrap(), "ann.lee@example.com");
    assert_eq!(u.attrs.get(UserAttr::ExternalId).unwrap(), "1001");
    // For Atlassian: the name parts, never displayName.
    assert_eq!(u.attrs.get(UserAttr::GivenName).unwrap(), "Ann");
    assert!(!u.attrs.contains_key(UserAttr::DisplayName));
    assert!(u.active);
    assert_eq!(
        csv.source_attributes().into_iter().collect::<Vec<_>>(),
        [
            "active",
            "department",
            "email",
            "family_name",
            "given_name",
            "title"
        ]
    );
    let off = user("1002", 3, &[("email", "b@x"), ("active", "false")]);
    assert!(
        !csv.map_user(&off, &SourceDirectory::default())
            .unwrap()
            .unwrap()
            .active
    );
}

#[test]
fn default_ldap_mapping_compiles_and_maps() {
    let ldap = default_mapping("ldap-inetorgperson.yaml");
    let u = ldap
        .map_user(
            &user(
                "uuid-1",
                2,
                &[
                    ("mail", "ann@example.com"),
                    ("givenName", "Ann"),
                    ("sn", "Lee"),
                    ("cn", "Ann Lee"),
                    ("ou", "Research"),
                    ("employeeNumber", "42"),
                ],
            ),
            &SourceDirectory::default(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(u.attrs.get(UserAttr::Department).unwrap(), "Research");
    assert!(!u.attrs.contains_key(UserAttr::DisplayName));
    assert_eq!(u.attrs.get(UserAttr::FamilyName).unwrap(), "Lee");
    assert_eq!(u.attrs.get(UserAttr::EmployeeNumber).unwrap(), "42");
    assert!(
        ldap.map_user(
            &user("uuid-2", 3, &[("cn", "No Mail")]),
            &SourceDirectory::default()
        )
        .unwrap()
        .is_none()
    );
}

#[test]
fn default_active_directory_mapping_compiles_and_maps() {
    let ad = default_mapping("active-directory.yaml");
    let ad_user = |uac: &str, mail: &str| {
        user(
            "guid-1",
            2,
            &[
                ("mail", mail),
                ("userPrincipalName", "ann@corp.example.com"),
                ("sAMAccountName", "ann"),
                ("givenName", "Ann"),
                ("sn", "Lee"),
                ("company", "Acme"),
                ("employeeID", "E1"),
                ("userAccountControl", uac),
            ],
        )
    };
    let u = ad
        .map_user(&ad_user("512", ""), &SourceDirectory::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        u.user_name().as_str(),
        "ann@corp.example.com",
        "UPN fallback"
    );
    assert_eq!(u.attrs.get(UserAttr::Organization).unwrap(), "Acme");
    assert!(u.active);
    let u = ad
        .map_user(
            &ad_user("514", "ann@example.com"),
            &SourceDirectory::default(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(u.user_name().as_str(), "ann@example.com");
    assert!(!u.active, "ACCOUNTDISABLE set");
    let mut computer = ad_user("4096", "");
    computer.attrs = SourceAttrs::new();
    computer.attrs.push("sAMAccountName", ["PC01$"]);
    computer.attrs.push("userPrincipalName", ["pc01@corp"]);
    assert!(
        ad.map_user(&computer, &SourceDirectory::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn default_entra_mapping_compiles_and_maps() {
    let entra = default_mapping("entra.yaml");
    let u = entra
        .map_user(
            &user(
                "0f1e",
                2,
                &[
                    ("userPrincipalName", "ann@contoso.com"),
                    ("mail", "Ann.Lee@contoso.com"),
                    ("givenName", "Ann"),
                    ("surname", "Lee"),
                    ("displayName", "Ann Lee"),
                    ("jobTitle", "CTO"),
                    ("employeeId", "7"),
                    ("accountEnabled", "false"),
                ],
            ),
            &SourceDirectory::default(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(u.user_name().as_str(), "ann@contoso.com");
    assert_eq!(u.attrs.get(UserAttr::Title).unwrap(), "CTO");
    assert!(!u.active);
    assert!(entra.source_attributes().contains("accountEnabled"));
    assert!(entra.source_attributes().contains("userType"));
    let guest = entra
        .map_user(
            &user(
                "0f1f",
                3,
                &[
                    (
                        "userPrincipalName",
                        "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com",
                    ),
                    ("userType", "Guest"),
                ],
            ),
            &SourceDirectory::default(),
        )
        .unwrap();
    assert!(guest.is_none(), "guests are out of scope by default");
}

#[test]
fn load_reports_a_missing_file() {
    let e = Mapping::load(Path::new("/nonexistent/m.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read mapping file /nonexistent/m.yaml: ")
    );
    assert!(e.to_string().contains("\n  hint: "));
}

/// Not timed: 100k users through the default CSV mapping.
#[test]
fn maps_100k_users() {
    let m =
        Mapping::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/csv.yaml")).unwrap();
    let dir = generated_directory(100_000);
    let d = m.build(dir).unwrap();
    assert_eq!(d.users.len(), 100_000);
    assert!(d.users.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(d.groups.len(), 100);
    assert_eq!(d.groups[0].members.len(), 1_000);
}

/// A directory of `n` users (a tenth of them inactive) in 100 groups.
pub(crate) fn generated_directory(n: usize) -> SourceDirectory {
    let names = [
        "id",
        "email",
        "given_name",
        "family_name",
        "display_name",
        "title",
        "department",
        "active",
    ];
    let origin = Origin::new("users.csv");
    let users = (0..n)
        .map(|i| {
            let mut attrs = SourceAttrs::with_capacity(names.len());
            let values = [
                format!("{i:08}"),
                format!("User.{i}@Example.com"),
                format!("Given{i}"),
                format!("Family{i}"),
                String::new(),
                "Engineer".to_owned(),
                format!("Dept {}", i % 50),
                if i % 10 == 0 { "false" } else { "true" }.to_owned(),
            ];
            for (name, value) in names.iter().zip(values) {
                attrs.push(name, [value]);
            }
            SourceUser {
                key: SourceKey::new(format!("{i:08}")),
                origin: origin.clone(),
                attrs,
            }
        })
        .collect();
    let groups = (0..100)
        .map(|g| SourceGroup {
            key: GroupKey::new(format!("g{g:03}")),
            name: format!("team-{g}"),
            origin: Origin::new("groups.csv"),
            direct_members: None,
            dn: None,
            members: (0..n)
                .filter(|i| i % 100 == g)
                .map(|i| SourceKey::new(format!("{i:08}")))
                .collect(),
        })
        .collect();
    SourceDirectory {
        users,
        groups,
        unresolved_members: 0,
        assignments: None,
    }
}

#[test]
fn huge_values_are_rejected_per_record() {
    let m = Mapping::parse(
        "users:\n  attributes:\n    userName: email\n    title: title\n",
        "m.yaml",
    )
    .unwrap();
    let mut attrs = SourceAttrs::new();
    attrs.push("email", ["a@x.com"]);
    attrs.push("title", ["x".repeat(MAX_VALUE_BYTES + 1)]);
    let user = SourceUser {
        key: SourceKey::new("k1"),
        origin: Origin::new("users.csv line 2"),
        attrs,
    };
    let err = m.map_user(&user, &SourceDirectory::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("users.csv line 2: user \"k1\": `title` would be 4097 bytes long"),
        "{err}"
    );
}

const ASSIGNED: &str = r#"
users:
  attributes:
    userName: email
  scope:
    include:
      - member_of: [Atlassian Users, g-contractors]
    exclude:
      - all:
          - member_of: [suspended]
          - { attribute: email, regex: "@example\\.com$" }
"#;

fn directory(users: &[(&str, &str)], groups: Vec<SourceGroup>) -> SourceDirectory {
    SourceDirectory {
        users: users
            .iter()
            .enumerate()
            .map(|(i, (key, email))| user(key, i + 2, &[("email", email)]))
            .collect(),
        groups,
        unresolved_members: 0,
        assignments: None,
    }
}

fn named(key: &str, name: &str, members: &[&str]) -> SourceGroup {
    SourceGroup {
        name: name.to_owned(),
        ..group(key, members)
    }
}

#[test]
fn only_member_of_clauses_and_assign_make_users_need_their_groups() {
    // The groups of a read whose users need none are read beside its users.
    assert!(!default_mapping("csv.yaml").users_need_groups());
    assert!(compile(ASSIGNED).users_need_groups());
    let excluded = "users:\n  attributes:\n    userName: email\n  scope:\n    exclude: [ { member_of: [suspended] } ]\n";
    assert!(compile(excluded).users_need_groups());
}

#[test]
fn member_of_scopes_users_to_assigned_groups_by_name_or_key() {
    let m = compile(ASSIGNED);
    let dir = directory(
        &[
            ("u1", "a@example.com"),
            ("u2", "b@example.com"),
            ("u3", "c@partner.org"),
            ("u4", "d@example.com"),
        ],
        vec![
            // By display name, compared case-insensitively.
            named("g1", "ATLASSIAN users", &["u1", "u2"]),
            // By key.
            named("g-contractors", "Contractors", &["u3"]),
            named("g9", "suspended", &["u2", "u3"]),
        ],
    );
    let desired = m.build(dir).unwrap();
    let keys: Vec<&str> = desired.users.iter().map(|u| u.key.as_str()).collect();
    // u2 is suspended and matches the exclusion; u3 is suspended but not at
    // example.com; u4 is in no assigned group.
    assert_eq!(keys, ["u1", "u3"]);
    let out: Vec<&str> = desired.out_of_scope.iter().map(SourceKey::as_str).collect();
    assert_eq!(out, ["u2", "u4"]);
}

#[test]
fn member_of_a_group_the_source_does_not_have_fails_the_read() {
    let m = compile(ASSIGNED);
    // "Atlassian Users" was renamed in the directory: every member would leave
    // scope, so nothing is planned.
    let dir = directory(
        &[("u1", "a@example.com")],
        vec![
            named("g1", "Atlassian Cloud Users", &["u1"]),
            named("g-contractors", "Contractors", &[]),
            named("g9", "suspended", &[]),
        ],
    );
    let errors = m.build(dir).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].problem, RecordProblem::UnknownScopeGroup);
    assert_eq!(
        errors[0].record,
        RecordId::Group(GroupKey::new("Atlassian Users"))
    );
    assert!(errors[0].to_string().contains("member_of"), "{}", errors[0]);
}

#[test]
fn member_of_is_a_user_clause_of_its_own() {
    let e = error(
        r#"
users:
  attributes: { userName: email }
  scope:
    include: [ { member_of: [a], attribute: email, present: true } ]
"#,
    );
    assert!(e.contains("`member_of` is a clause of its own"), "{e}");
    let e = error(
        r#"
users:
  attributes: { userName: email }
groups:
  scope:
    include: [ { member_of: [a] } ]
"#,
    );
    assert!(e.contains("`member_of` is a user scope clause"), "{e}");
    let e = error(
        r#"
users:
  attributes: { userName: email }
  scope:
    include: [ { member_of: [] } ]
"#,
    );
    assert!(e.contains("`member_of` lists no group"), "{e}");
}

#[test]
fn record_errors_quote_and_escape_directory_values() {
    let m = compile("users:\n  attributes:\n    userName: { from: email }\n    emails: email\n");
    let dir = SourceDirectory {
        users: vec![
            user(
                "k\n1",
                2,
                &[("email", "a\u{202e}b@example.com\nINFO forged")],
            ),
            user("k2", 3, &[("email", "a\u{202e}b@example.com\nINFO forged")]),
        ],
        groups: vec![],
        unresolved_members: 0,
        assignments: None,
    };
    let errors = m.build(dir).unwrap_err();
    let text = errors[0].to_string();
    assert_eq!(
        text.lines().next().unwrap(),
        "users.csv line 3: user \"k2\": userName \"a\\u{202e}b@example.com\\nINFO forged\" is also the userName of user \"k\\n1\" (users.csv line 2)"
    );
    assert!(!text.contains('\u{202e}'), "{text}");
}

#[test]
fn user_names_differing_only_in_unicode_normalisation_are_duplicates() {
    let m = compile("users:\n  attributes:\n    userName: { from: email }\n    emails: email\n");
    let dir = SourceDirectory {
        users: vec![
            // "josé" precomposed (NFC) and decomposed (NFD): the same name.
            user("u1", 2, &[("email", "jos\u{e9}@example.com")]),
            user("u2", 3, &[("email", "jose\u{301}@example.com")]),
        ],
        groups: vec![],
        unresolved_members: 0,
        assignments: None,
    };
    let errors = m.build(dir).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0].problem, RecordProblem::DuplicateUserName { other, .. } if other.as_str() == "u1"),
        "{:?}",
        errors[0]
    );
}

#[test]
fn the_scope_verdict_names_the_rule_that_decided() {
    let m = compile(BRIEF);
    let sales = employee("s", 2, &[("department", "Sales")]);
    assert_eq!(
        m.scope_verdict(&sales, &SourceDirectory::default()),
        "in scope: include rule 1 matches"
    );
    let engineer = employee("e", 3, &[("title", "Engineer"), ("country", "DE")]);
    assert_eq!(
        m.scope_verdict(&engineer, &SourceDirectory::default()),
        "in scope: include rule 2 matches"
    );
    let other = employee("o", 4, &[("department", "Finance")]);
    assert_eq!(
        m.scope_verdict(&other, &SourceDirectory::default()),
        "out of scope: none of the 2 include rule(s) matches"
    );
    let contractor = employee(
        "c",
        5,
        &[("department", "Sales"), ("employeeType", "Contractor")],
    );
    assert_eq!(
        m.scope_verdict(&contractor, &SourceDirectory::default()),
        "out of scope: exclude rule 2 matches"
    );
    let open = compile("users:\n  attributes:\n    userName: email\n");
    assert_eq!(
        open.scope_verdict(&sales, &SourceDirectory::default()),
        "in scope: the mapping has no scope rules"
    );
}

#[test]
fn groups_sharing_a_display_name_are_held_and_users_still_map() {
    let m = compile(ASSIGNED);
    let dir = directory(
        &[("u1", "a@example.com"), ("u2", "b@example.com")],
        vec![
            named("g1", "Atlassian Users", &["u1", "u2"]),
            named("g-contractors", "Contractors", &["u1"]),
            named("g-contractors-2", "CONTRACTORS", &["u2"]),
            named("g-contractors-3", "contractors", &[]),
            named("g9", "suspended", &[]),
        ],
    );
    let desired = m.build(dir).unwrap();
    let keys: Vec<&str> = desired.users.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, ["u1", "u2"]);
    let groups: Vec<&str> = desired.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(groups, ["g1", "g9"]);
    let held: Vec<&str> = desired.held_groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(
        held,
        ["g-contractors", "g-contractors-2", "g-contractors-3"]
    );
    let reason = &desired.held_groups[0].reason;
    assert!(
        reason.contains("3 groups share the displayName"),
        "{reason}"
    );
    assert!(
        reason.contains("groups.csv group g-contractors-3"),
        "{reason}"
    );
    assert!(reason.contains("sAMAccountName"), "{reason}");
}

proptest::proptest! {
    /// The sort-based check reports exactly what a map of names seen so far
    /// would: each later user against the first with the same folded name.
    #[test]
    fn duplicate_user_names_are_each_later_user_against_the_first(
        names in proptest::collection::vec("[aAbB]{1,2}(@[xX])?", 0..40)
    ) {
        let users: Vec<DesiredUser> = names
            .iter()
            .enumerate()
            .map(|(i, n)| DesiredUser {
                key: SourceKey::new(format!("k{i}")),
                origin: Origin::new(format!("row {i}")),
                attrs: UserAttrs::from([(UserAttr::UserName, n.as_str())]),
                active: true,
            })
            .collect();
        let mut expected = Vec::new();
        let mut first_seen: Vec<(String, usize)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match first_seen.iter().find(|(f, _)| *f == n.to_lowercase()) {
                Some((_, first)) => expected.push((format!("k{i}"), format!("k{first}"))),
                None => first_seen.push((n.to_lowercase(), i)),
            }
        }
        let got: Vec<(String, String)> = super::duplicate_user_names(&users)
            .into_iter()
            .map(|e| match (e.record, e.problem) {
                (RecordId::User(k), RecordProblem::DuplicateUserName { other, .. }) => {
                    (k.to_string(), other.to_string())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        proptest::prop_assert_eq!(got, expected);
    }
}

#[test]
fn members_kept_on_several_threads_are_those_kept_on_one() {
    let key = |i: usize| format!("user-key-{i:04}-past-inline-length");
    let users: Vec<DesiredUser> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| DesiredUser {
            key: SourceKey::new(key(i)),
            origin: Origin::new("users.csv"),
            attrs: UserAttrs::default(),
            active: true,
        })
        .collect();
    let index = UserIndex::of(&users);
    let group = |name: &str, members: Vec<String>| {
        (
            DesiredGroup {
                key: GroupKey::new(name),
                display_name: GroupName::new(name),
                members: members.into_iter().map(SourceKey::new).collect(),
            },
            Origin::new("groups.csv"),
        )
    };
    // One large group among small ones; members named twice, and names
    // that are no user (every third key, and a stranger).
    let mut groups = vec![group("everyone", (0..300).rev().map(key).collect())];
    for g in 0..20 {
        let mut members: Vec<String> = (g..300).step_by(7).map(key).collect();
        members.push(key(g));
        members.push("stranger".into());
        groups.push(group(&format!("team-{g}"), members));
    }
    groups.push(group("empty", Vec::new()));
    let (mut one, mut several) = (groups.clone(), groups);
    let dropped = keep_user_members(&mut one, &users, &index, usize::MAX);
    assert_eq!(keep_user_members(&mut several, &users, &index, 1), dropped);
    assert_eq!(one, several);

    let everyone: Vec<&str> = one[0].0.members.iter().map(SourceKey::as_str).collect();
    let expected: Vec<String> = (0..300).filter(|i| i % 3 != 0).map(key).collect();
    assert_eq!(everyone, expected);
    // Each kept member is the user's own key, not a copy.
    assert!(std::ptr::eq(
        one[0].0.members[0].as_str(),
        users[0].key.as_str()
    ));
    // Dropped: 100 in `everyone`; per team, its keys of no user and the
    // stranger (a member named twice is kept once, not counted as dropped).
    let teams: usize = (0..20usize)
        .map(|g| (g..300).step_by(7).filter(|i| i % 3 == 0).count() + 1)
        .sum();
    assert_eq!(dropped, 100 + teams);
}

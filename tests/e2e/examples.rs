//! The shipped example configs: every `examples/*.yaml` passes `idsync
//! validate` (with the variables it names set), every Atlassian example sets
//! verified domains, protects the admin account and pushes assigned groups
//! only, and the HR export example plans its sample data as its comments say.
//! The Debian package's config is refused until its CHANGE-ME values are
//! filled in, and valid with only those given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Output, manifest_dir};
use crate::support::process::run_bounded;
use crate::support::workdir::idsync_command;

/// What the examples' `${VAR}`s stand for here.
const ENV: &[(&str, &str)] = &[
    (
        "ATLASSIAN_DIRECTORY_ID",
        "00000000-0000-0000-0000-000000000000",
    ),
    ("ENTRA_TENANT_ID", "contoso.onmicrosoft.com"),
    ("ENTRA_CLIENT_ID", "0a1b2c3d-1111-2222-3333-444455556666"),
    (
        "ENTRA_APP_OBJECT_ID",
        "5f6e0000-aaaa-bbbb-cccc-000000000001",
    ),
    ("JUMPCLOUD_ORG_ID", "5f0c1c2d3e4f5a6b7c8d9e0f"),
];

fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("examples"))
        .expect("read examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    found
}

fn idsync(args: &[&str], config: &Path) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = idsync_command(None);
    cmd.args(args)
        .arg("-c")
        .arg(config)
        .current_dir(dir.path())
        .envs(ENV.iter().copied());
    run_bounded(cmd, Duration::from_secs(60), None)
}

/// The config as YAML data, its `${VAR}`s expanded as idsync would.
fn parsed(path: &Path) -> Value {
    let mut text = std::fs::read_to_string(path).expect("read example");
    for (var, value) in ENV {
        text = text.replace(&format!("${{{var}}}"), value);
    }
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_example_config_validates_and_atlassian_ones_are_safe_by_default() {
    let all = examples();
    for name in [
        "hr-export.yaml",
        "jumpcloud.yaml",
        "pingdirectory.yaml",
        "entra.yaml",
    ] {
        assert!(
            all.iter().any(|p| p.ends_with(name)),
            "examples/{name} is missing: {all:?}"
        );
    }
    for path in &all {
        let out = idsync(&["validate"], path);
        out.assert_code(0);
        assert!(
            out.stdout.contains("configuration is valid"),
            "{}",
            out.dump()
        );
        let config = parsed(path);
        if config["target"]["kind"] != "atlassian" {
            continue;
        }
        let who = path.display();
        let list_len = |v: &Value| v.as_array().map_or(0, Vec::len);
        assert!(
            list_len(&config["target"]["verified_domains"]) > 0,
            "{who}: target.verified_domains"
        );
        assert!(
            list_len(&config["policy"]["protect"]["users"]) > 0,
            "{who}: policy.protect.users (the admin account)"
        );
        let assign = &config["assign"];
        assert!(
            list_len(&assign["groups"]) > 0 || assign["app"].is_string(),
            "{who}: assign (assigned groups only)"
        );
        let mapping = path
            .parent()
            .expect("examples/")
            .join(config["mapping"].as_str().expect("mapping"));
        assert!(
            parsed(&mapping)["groups"]["scope"]["include"].is_null(),
            "{who}: no group scope rule adds unassigned groups"
        );
        assert!(out.stdout.contains("  assign:  "), "{}", out.dump());
    }
}

#[test]
fn the_hr_export_example_plans_its_sample_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = manifest_dir().join("examples");
    let text = std::fs::read_to_string(examples.join("hr-export.yaml")).expect("read");
    let data = examples.join("data/hr-export");
    let config = text
        .replace("/var/lib/hr-export/", &format!("{}/", data.display()))
        .replace(
            "mapping: mappings/",
            &format!("mapping: {}/mappings/", examples.display()),
        )
        .replace(
            "state: /var/lib/idsync/hr-export.db",
            &format!("state: {}/state.db", dir.path().display()),
        );
    assert_ne!(config, text, "the example changed shape");
    let path = dir.path().join("hr-export.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = idsync(&["plan", "--format", "json"], &path);
    out.assert_code(0);
    let plan = out.json();
    let created: Vec<(&str, &str)> = plan["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter(|op| op["op"] == "create_user")
        .map(|op| {
            (
                op["key"].as_str().unwrap_or(""),
                op["userName"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Assigned: 100231, 100232 (atlassian-users and engineering), 100234
    // (terminated: never created), 100236 (the protected admin).
    assert_eq!(
        created,
        [
            ("100231", "ada.lovelace@example.com"),
            ("100232", "grace.hopper@example.com")
        ],
        "{plan}"
    );
    let groups: Vec<&str> = plan["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter(|op| op["op"] == "create_group")
        .filter_map(|op| op["displayName"].as_str())
        .collect();
    assert_eq!(groups, ["atlassian-users", "engineering"]);
}

/// The Debian package's `/etc/idsync/config.yaml`: refused (exit 2) by
/// `validate` and `check` while it holds a CHANGE-ME, naming each such line;
/// valid once only those values are given (the mapping where the package
/// puts it, here the checkout's `mappings/`).
#[test]
fn packaged_config_is_refused_until_its_change_me_values_are_filled_in() {
    let packaged = manifest_dir().join("packaging/deb/config.yaml");
    for command in ["validate", "check"] {
        let out = idsync(&[command], &packaged);
        out.assert_code(2);
        for line in [
            "users: /CHANGE-ME/users.csv",
            "base_url: https://",
            "verified_domains:",
        ] {
            assert!(
                out.stderr.contains(line),
                "{command} should name {line}\n{}",
                out.dump()
            );
        }
        assert!(
            out.stderr.contains("hint: replace each CHANGE-ME"),
            "{}",
            out.dump()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let data = manifest_dir().join("examples/data");
    let text = std::fs::read_to_string(&packaged)
        .unwrap()
        .replace("/CHANGE-ME/", &format!("{}/", data.display()))
        .replace("directory/CHANGE-ME", "directory/0123-abcd")
        .replace("CHANGE-ME.example.com", "example.com")
        .replace(
            "/usr/share/idsync/mappings/",
            &format!("{}/", manifest_dir().join("mappings").display()),
        )
        .replace("/var/lib/idsync/", &format!("{}/", dir.path().display()));
    let unfilled: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("CHANGE-ME"))
        .collect();
    assert!(unfilled.is_empty(), "{unfilled:?}");
    let filled = dir.path().join("config.yaml");
    std::fs::write(&filled, text).unwrap();
    let mut cmd = idsync_command(None);
    cmd.args(["validate", "-c"])
        .arg(&filled)
        .env("CREDENTIALS_DIRECTORY", dir.path());
    let out = run_bounded(cmd, Duration::from_secs(60), None);
    out.assert_code(0);
}

//! idsync reading its token as Kubernetes hands it over: a Secret volume
//! under a pod's `fsGroup` is a read-only tmpfs whose root has mode 1777, the
//! file a symlink through `..data` into a timestamped folder, root's, group
//! fsGroup, mode 0440 whatever `defaultMode` says. Built here as the kubelet
//! builds it, in a mount namespace of the test's own (`unshare -m`), and
//! idsync run as user and group 10001 (`setpriv`), as the manifests run it,
//! against a real scim2-server. Needs root; skipped otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Directory, ScimServer, Workspace, fresh_token};
use crate::support::process::{Output, run_bounded};

/// The pod's user and group (and fsGroup), as in deploy/kubernetes.
const POD_ID: u32 = 10001;

/// Builds the Secret volume at `dir/secrets` (its file's group `group`) in
/// a private mount namespace, then runs idsync there as 10001:10001.
fn sync_with_a_secret_volume(dir: &Path, token: &str, group: u32) -> Output {
    let script = r#"
set -eu
root="$1"; token="$2"; group="$3"; id="$4"; idsync="$5"
s="$root/secrets"
mount -t tmpfs -o mode=1777,size=1m tmpfs "$s"
ts="..2026_12_06_04_00_00.000000001"
mkdir -m 0755 "$s/$ts"
printf '%s\n' "$token" > "$s/$ts/scim-token"
chgrp "$group" "$s/$ts" "$s/$ts/scim-token"
chmod 2755 "$s/$ts"
chmod 0440 "$s/$ts/scim-token"
ln -s "$ts" "$s/..data"
ln -s ..data/scim-token "$s/scim-token"
mount -o remount,ro "$s"
exec setpriv --reuid "$id" --regid "$id" --clear-groups -- \
    "$idsync" sync -c "$root/config.yaml" --format json
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(dir)
    .arg(token)
    .arg(group.to_string())
    .arg(POD_ID.to_string())
    .arg(env!("CARGO_BIN_EXE_idsync"))
    .env("NO_COLOR", "1")
    .env_remove("RUST_LOG");
    run_bounded(cmd, Duration::from_secs(120), None)
}

/// A folder 10001 can read, with the CSV directory, the mapping, a config
/// whose token_file is in `secrets/`, and a state folder 10001 owns.
fn pod_folder(server: &ScimServer) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let directory = Directory::generate(3, 1);
    std::fs::write(root.join("users.csv"), directory.users_csv()).unwrap();
    std::fs::write(root.join("groups.csv"), directory.groups_csv()).unwrap();
    std::fs::copy(Workspace::mapping_path(), root.join("mapping.yaml")).unwrap();
    std::fs::create_dir(root.join("secrets")).unwrap();
    std::fs::create_dir(root.join("state")).unwrap();
    std::os::unix::fs::chown(root.join("state"), Some(POD_ID), Some(POD_ID)).unwrap();
    let config = format!(
        "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
         mapping: mapping.yaml\n\
         target:\n\
         \x20 kind: scim\n\
         \x20 base_url: {}\n\
         \x20 token_file: {}/secrets/scim-token\n\
         state: state/idsync.db\n",
        server.base_url(),
        root.display()
    );
    std::fs::write(root.join("config.yaml"), config).unwrap();
    for name in ["users.csv", "groups.csv", "mapping.yaml", "config.yaml"] {
        std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "setpriv"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!("skipped: building a Secret volume needs root, unshare and setpriv");
    }
    root && tools
}

#[test]
fn a_token_in_a_kubernetes_secret_volume_is_read_by_idsync_running_as_the_pods_user() {
    if !can_run() {
        return;
    }
    let server = ScimServer::start(&fresh_token("kube"));
    let dir = pod_folder(&server);
    let out = sync_with_a_secret_volume(dir.path(), server.token(), POD_ID);
    assert_eq!(out.code, 0, "{}", out.dump());
    assert!(!out.stdout.contains(server.token()) && !out.stderr.contains(server.token()));
    assert_eq!(server.users().len(), 3, "{}", out.dump());
    // The state DB is the pod user's.
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(dir.path().join("state/idsync.db")).unwrap();
    assert_eq!(db.uid(), POD_ID);
}

#[test]
fn a_secret_volume_file_of_another_group_is_refused_naming_the_file() {
    if !can_run() {
        return;
    }
    let server = ScimServer::start(&fresh_token("kube"));
    let dir = pod_folder(&server);
    let out = sync_with_a_secret_volume(dir.path(), server.token(), POD_ID + 1);
    assert_ne!(out.code, 0, "{}", out.dump());
    assert!(
        out.stderr
            .contains("secrets/scim-token can be read by other users (mode 440)"),
        "{}",
        out.dump()
    );
    assert!(server.users().is_empty());
}

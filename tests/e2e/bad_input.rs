//! Bad input: malformed CSV, duplicate keys and emails, a user without an email,
//! invalid UTF-8. Every case must stop with exit 2 and an error naming the line(s),
//! and leave the target and the state as they were — a skipped row must never turn
//! into a deprovisioned user.

use crate::harness::{
    Directory, GROUPS_HEADER, Idsync, ScimServer, Workspace, assert_target_matches, mentions_line,
    synced,
};

/// `users.csv` of `dir` as lines (header first), to be edited by a test.
fn lines_of(dir: &Directory) -> Vec<Vec<u8>> {
    dir.users_csv()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// Syncs a directory, then writes `broken` as `users.csv` (built from the same
/// directory minus a few users, so a silently skipped row or a partial read would
/// show up as removals), and checks that `sync` and `plan` exit 2 naming every line
/// in `lines`, that nothing changed, and that the good CSV still plans to nothing.
fn assert_refused(
    server: &ScimServer,
    ws: &Workspace,
    good: &Directory,
    broken_users: &[u8],
    lines: &[usize],
) {
    let before = server.contents().normalized();
    ws.write_file("users.csv", broken_users);
    for args in [
        &["sync", "--format", "json"][..],
        &["plan", "--format", "json"][..],
    ] {
        let out = ws.run(args);
        out.assert_code(2);
        for &line in lines {
            assert!(
                mentions_line(&out.stderr, line),
                "stderr of `idsync {}` should name line {line}\n{}",
                args.join(" "),
                out.dump()
            );
        }
    }
    assert_eq!(server.contents().normalized(), before, "the target changed");
    ws.write_directory(good);
    ws.assert_plan_empty();
    assert_target_matches(good, &[], &server.contents());
}

/// The synced directory with its last three users left out (they would be
/// removals if the broken file were read at all).
fn shrunk(dir: &Directory) -> Directory {
    let mut d = dir.clone();
    for _ in 0..3 {
        let id = d.users.last().expect("users").id.clone();
        d.remove_user(&id);
    }
    d
}

#[test]
fn unterminated_quote_names_the_line() {
    let (server, ws, dir) = synced(20, 3);
    let mut lines = lines_of(&shrunk(&dir));
    // Line 16 opens a quote that never closes (later rows have no quotes).
    lines.insert(
        15,
        b"u0099,\"broken@example.com,Bro,Ken,Bro Ken,Eng,Sales,true".to_vec(),
    );
    assert_refused(&server, &ws, &dir, &join(&lines), &[16]);
}

#[test]
fn wrong_field_count_names_the_line() {
    let (server, ws, dir) = synced(20, 3);
    let mut lines = lines_of(&shrunk(&dir));
    lines.insert(
        12,
        b"u0099,extra@example.com,Ex,Tra,Ex Tra,Eng,Sales,true,surplus".to_vec(),
    );
    assert_refused(&server, &ws, &dir, &join(&lines), &[13]);
    let mut lines = lines_of(&shrunk(&dir));
    lines.insert(14, b"u0098,short@example.com,Sho,Rt".to_vec());
    assert_refused(&server, &ws, &dir, &join(&lines), &[15]);
}

#[test]
fn duplicate_key_names_both_lines() {
    let (server, ws, dir) = synced(20, 3);
    let mut broken = shrunk(&dir);
    let first = broken.line_of("u0005");
    let second = broken.line_of("u0012");
    broken.user_mut("u0012").id = "u0005".into();
    assert_refused(
        &server,
        &ws,
        &dir,
        broken.users_csv().as_bytes(),
        &[first, second],
    );
}

#[test]
fn duplicate_email_names_both_lines() {
    let (server, ws, dir) = synced(20, 3);
    let mut broken = shrunk(&dir);
    let first = broken.line_of("u0010");
    let second = broken.line_of("u0015");
    broken.user_mut("u0015").email = broken.user("u0010").email.clone();
    assert_refused(
        &server,
        &ws,
        &dir,
        broken.users_csv().as_bytes(),
        &[first, second],
    );
}

#[test]
fn user_without_email_names_the_line() {
    let (server, ws, dir) = synced(20, 3);
    let mut broken = shrunk(&dir);
    let line = broken.line_of("u0011");
    broken.user_mut("u0011").email = String::new();
    assert_refused(&server, &ws, &dir, broken.users_csv().as_bytes(), &[line]);
}

#[test]
fn invalid_utf8_names_the_line() {
    let (server, ws, dir) = synced(20, 3);
    let mut lines = lines_of(&shrunk(&dir));
    lines.insert(
        9,
        b"u0099,latin1@example.com,Fran\xe7ois,M\xfcller,,Eng,Sales,true".to_vec(),
    );
    assert_refused(&server, &ws, &dir, &join(&lines), &[10]);
}

#[test]
fn malformed_groups_row_names_the_line() {
    let (server, ws, dir) = synced(20, 3);
    let before = server.contents().normalized();
    let mut groups = dir.groups_csv();
    let n = groups.lines().count();
    groups.push_str("group-01,u0001,surplus\n");
    ws.write_file("groups.csv", groups.as_bytes());
    let out = ws.run(&["sync", "--format", "json"]);
    out.assert_code(2);
    assert!(mentions_line(&out.stderr, n + 1), "{}", out.dump());
    assert_eq!(server.contents().normalized(), before);
    ws.write_directory(&dir);
    ws.assert_plan_empty();
}

#[test]
fn bom_and_crlf_are_accepted() {
    let server = ScimServer::start(&crate::harness::fresh_token("bom"));
    let ws = Workspace::new(&server);
    let dir = Directory::generate(12, 2);
    let mut users = b"\xef\xbb\xbf".to_vec();
    users.extend_from_slice(dir.users_csv().replace('\n', "\r\n").as_bytes());
    ws.write_file("users.csv", &users);
    ws.write_file(
        "groups.csv",
        dir.groups_csv().replace('\n', "\r\n").as_bytes(),
    );
    ws.sync_ok();
    assert_target_matches(&dir, &[], &server.contents());
    assert!(dir.groups_csv().starts_with(GROUPS_HEADER));
}

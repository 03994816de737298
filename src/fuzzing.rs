//! The seam the fuzz targets in `fuzz/` call through: one function per target,
//! each feeding bytes from outside to the parser (or renderer) that reads
//! them in production. Compiled only with `--cfg fuzzing` (`cargo fuzz` sets
//! it), so the crate-private modules stay private to everything else.
//!
//! Each function must not panic, hang or grow without bound on any input;
//! the renderers' functions return their output so the target can assert
//! properties of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::model::{
    GroupKey, GroupName, Mirror, MirrorGroup, MirrorProps, OpKind, Origin, Ownership, ScimId,
    SourceAttrs, SourceDirectory, SourceGroup, SourceKey, SourceUser, State, StateGroup, StateUser,
    Status, UserAttr, UserAttrs, UserName,
};
use crate::plan::Plan;
use crate::plan::audit::{Audit, ForeignMember, Orphan, Stale, UnmanagedGroup};
use crate::report::{self, PlanReview, PlanView, Style};
use crate::source::csv::CsvSettings;
use crate::state::{LogRecord, OpOutcome};
use crate::sync::audit::AuditReport;

/// A folder of this process's own for the files the targets write.
fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("idsync-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("examples")).expect("fuzz sandbox");
        std::fs::create_dir_all(dir.join("mappings")).expect("fuzz sandbox");
        for (name, text) in [
            ("csv.yaml", include_str!("../mappings/csv.yaml")),
            ("entra.yaml", include_str!("../mappings/entra.yaml")),
            (
                "ldap-inetorgperson.yaml",
                include_str!("../mappings/ldap-inetorgperson.yaml"),
            ),
            (
                "active-directory.yaml",
                include_str!("../mappings/active-directory.yaml"),
            ),
        ] {
            std::fs::write(dir.join("mappings").join(name), text).expect("fuzz sandbox");
        }
        std::fs::canonicalize(&dir).expect("fuzz sandbox")
    })
}

/// `fuzz/fuzz_targets/config.rs`: the config file, `${VAR}` expansion included.
pub fn config(text: &str) {
    let sandbox = sandbox();
    let path = sandbox.join("examples").join("idsync.yaml");
    crate::config::fuzz_text(sandbox, &path, text);
}

/// `mapping`: a mapping file, then (after a NUL) one user record, a line a
/// value: `name=value`, or `@group` for a group the user is a member of. The
/// mapping is compiled and every expression evaluated against the record.
pub fn mapping(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (file, record) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(mapping) = crate::mapping::Mapping::parse(file, "fuzz.yaml") else {
        return;
    };
    let mut attrs = SourceAttrs::new();
    let mut groups = Vec::new();
    for line in record.lines() {
        if let Some(name) = line.strip_prefix('@') {
            groups.push(SourceGroup {
                key: GroupKey::new(name),
                name: name.to_string(),
                origin: Origin::new("fuzz"),
                members: vec![SourceKey::new("u1")],
                direct_members: None,
                dn: None,
            });
        } else if let Some((name, value)) = line.split_once('=') {
            attrs.push(name, [value]);
        }
    }
    let user = SourceUser {
        key: SourceKey::new("u1"),
        origin: Origin::new("fuzz"),
        attrs,
    };
    let dir = SourceDirectory {
        groups,
        ..SourceDirectory::default()
    };
    let _ = mapping.map_user(&user, &dir);
    let _ = mapping.scope_verdict(&user, &dir);
    for group in &dir.groups {
        let _ = mapping.map_group(group);
    }
}

fn csv_settings(users: PathBuf, groups: Option<PathBuf>, delimiter: u8) -> CsvSettings {
    CsvSettings {
        users,
        groups,
        key: "id".into(),
        delimiter,
    }
}

/// The delimiter the first byte picks, and the rest.
fn delimiter(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => ([b',', b';', b'\t', b'|'][usize::from(b % 4)], rest),
        None => (b',', data),
    }
}

/// `csv_users`: a users file (the first byte picks the delimiter).
pub fn csv_users(data: &[u8]) {
    let (delimiter, data) = delimiter(data);
    let users = sandbox().join("users.csv");
    std::fs::write(&users, data).expect("fuzz sandbox");
    let _ = crate::source::csv::read(&csv_settings(users, None, delimiter));
}

/// `csv_groups`: a groups file, next to a users file of three users.
pub fn csv_groups(data: &[u8]) {
    let (delimiter, data) = delimiter(data);
    let users = sandbox().join("groups-users.csv");
    let d = char::from(delimiter);
    let header = format!("id{d}email\nu1{d}a@example.com\nu2{d}b@example.com\nu3{d}c@x.org\n");
    std::fs::write(&users, header).expect("fuzz sandbox");
    let groups = sandbox().join("groups.csv");
    std::fs::write(&groups, data).expect("fuzz sandbox");
    let _ = crate::source::csv::read(&csv_settings(users, Some(groups), delimiter));
}

/// `ldap`: a DN and an entry's attributes, text and binary.
pub fn ldap(dn: &str, attrs: Vec<(String, Vec<String>)>, bin_attrs: Vec<(String, Vec<Vec<u8>>)>) {
    crate::source::ldap::fuzz_entry(dn, attrs, bin_attrs);
}

/// `scim`: a body from a SCIM target; the first byte picks what asked for it.
pub fn scim(data: &[u8]) {
    use crate::scim::resource;
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 5 == 2 {
        let _ = resource::parse_error_body(body);
        return;
    }
    let mut docs = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let Some(Ok(doc)) = docs.next() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(page) = resource::parse_list(doc) {
                for item in &page.resources {
                    let _ = resource::listed_user(item);
                    let _ = resource::listed_group(item);
                }
            }
        }
        1 => {
            let _ = resource::resource_id(&doc);
            let _ = resource::created_of(&doc);
            let _ = resource::user_from_json(&doc);
            let _ = resource::group_from_json(&doc);
        }
        3 => {
            let _ = resource::parse_service_provider_config(&doc);
        }
        _ => schemas(&doc, docs.next()),
    }
}

/// `/Schemas`, then `/ResourceTypes` (or why it could not be read), and what
/// the model built from them says.
fn schemas(schemas: &Value, resource_types: Option<Result<Value, serde_json::Error>>) {
    use crate::scim::schema::{self, TargetSchema};
    let resource_types = match &resource_types {
        Some(Ok(doc)) => Ok(doc),
        _ => Err("unreadable".to_string()),
    };
    let model = TargetSchema::from_documents(schemas, resource_types);
    let mapped: BTreeSet<UserAttr> = UserAttr::all().collect();
    let shape = model.payload_shape();
    let _ = model.notes(&mapped, &shape);
    let _ = model.requirements(&mapped);
    let _ = model.folded();
    let _ = model.unheld();
    let _ = model.user_names_unique();
    let _ = model.group_members_required();
    for attr in UserAttr::all() {
        let _ = model.user_attr(attr);
        let _ = model.case_exact(attr);
        let _ = model.mutability(attr);
    }
    let _ = schema::missing_paths(schemas, &model.required_user_paths());
    let _ = schema::missing_paths(schemas, &model.required_group_paths());
}

/// `graph`: a Microsoft Graph answer; the first byte picks which: a
/// `/users/delta` page, a `/groups/delta` page, or the token endpoint's answer.
pub fn graph(data: &[u8]) {
    use crate::source::entra;
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    match which % 3 {
        0 | 1 => {
            let page = doc["value"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let _ = doc["@odata.deltaLink"].as_str();
            let _ = doc["@odata.nextLink"].as_str();
            let mut mirror = Mirror::default();
            // A page seen twice and both kinds: users may be groups' members.
            for _ in 0..2 {
                entra::apply_users(&mut mirror.users, page);
                entra::apply_groups(&mut mirror.groups, page);
            }
            let _ = entra::directory(&mirror);
        }
        _ => {
            if let Some((_, lifetime)) = entra::token_answer(&doc) {
                let _ = entra::renew_at(std::time::Instant::now(), lifetime);
            }
        }
    }
}

/// `mirror_row`: a state DB row of a mirrored user (`mirror_users.props`,
/// framed text), which a writing run reads back from the file. Read as the
/// load reads it; what reads is used as a cycle uses it, and must be the text
/// idsync would write for the same properties. The same text is read as a
/// group's members row (`mirror_groups.members`) too.
pub fn mirror_row(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut members) = MirrorGroup::members_from_framed(text) {
        // Kept as read; the ids it gives, written again as a set, are the
        // same text (strictly ascending, lengths as idsync writes them).
        let set: std::collections::BTreeSet<String> = members.iter().map(str::to_string).collect();
        assert_eq!(set.len(), members.len(), "each member once");
        let group = MirrorGroup {
            display_name: None,
            members: set.into(),
        };
        assert_eq!(
            group.framed_members(),
            text,
            "members read as idsync writes them"
        );
        // A delta round may change what was read.
        if members.insert("x") {
            members.remove("x");
        }
        assert_eq!(members, group.members);
    }
    let Ok(mut props) = MirrorProps::from_framed(text) else {
        return;
    };
    let json = serde_json::to_string(&props).expect("strings serialize");
    let again = MirrorProps::from_json(&json).expect("JSON written is read");
    assert_eq!(again.as_framed(), text, "a row reads as idsync writes it");
    let _ = props.attrs("u-1");
    let _ = props.len();
    let names: Vec<String> = props.iter().map(|(name, _)| name.to_string()).collect();
    if let Some(name) = names.first() {
        props.update(&mut [(name.as_str(), None)]);
    }
}

/// `rate_limit`: a `Retry-After` and an `X-RateLimit-Reset` value (split at
/// the first line break), read at a few times, and what a 429 and a 503 with
/// them decide.
pub fn rate_limit(text: &str) {
    use crate::retry::{self, Outcome};
    let (retry_after, reset) = text.split_once('\n').unwrap_or((text, text));
    for now in [
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        SystemTime::now(),
    ] {
        let _ = retry::parse_retry_after(retry_after, now);
        let _ = retry::parse_rate_limit_reset(reset, now);
        for status in [429, 503] {
            let outcome = Outcome::Status {
                status,
                retry_after: Some(retry_after),
                rate_limit_reset: Some(reset),
            };
            let _ = crate::scim::retry::classify(outcome, now);
        }
    }
}

/// The state a saved plan is checked against: two users (one of them
/// disabled) and a group, with a membership.
fn state() -> State {
    let mut state = State::default();
    for (key, name, status) in [
        ("u1", "ada@example.com", Status::Active),
        ("u2", "grace@example.com", Status::Disabled),
    ] {
        let mut attrs = UserAttrs::new();
        attrs.insert(UserAttr::UserName, name);
        let user = StateUser::pushed(
            ScimId::new(format!("id-{key}")),
            UserName::new(name),
            attrs,
            status,
            Ownership::Created,
            &BTreeSet::new(),
        );
        state.users.insert(SourceKey::new(key), user);
    }
    state.groups.insert(
        GroupKey::new("g1"),
        StateGroup {
            scim_id: ScimId::new("id-g1"),
            display_name: GroupName::new("Engineering"),
            status: Status::Active,
            ownership: Ownership::Created,
        },
    );
    state
        .memberships
        .insert(GroupKey::new("g1"), BTreeSet::from([SourceKey::new("u1")]));
    state.generation = 3;
    state
}

/// `saved_plan`: a saved plan's JSON, checked against a state as `sync --plan`
/// does, then rendered as text, JSON and Markdown (returned, in that order).
pub fn saved_plan(data: &[u8]) -> Option<[String; 3]> {
    let plan: Plan = serde_json::from_slice(data).ok()?;
    let _ = crate::plan::verify_saved(&plan, &state());
    let text = report::plan_text(&plan, PlanView::new(Style { color: false }));
    let mut json = Vec::new();
    report::write_plan_json(&plan, &mut json).expect("writing to a vector");
    let review = PlanReview {
        title: "idsync plan".into(),
        would_stop: Vec::new(),
        saved_only: true,
    };
    let markdown = report::plan_markdown(&plan, &review);
    Some([text, String::from_utf8(json).ok()?, markdown])
}

/// What the renderers made of values from outside.
pub struct Rendered {
    /// The values the renderers were given.
    pub inputs: Vec<String>,
    /// Text for a terminal: the audit and the log.
    pub text: Vec<String>,
    /// CSV: the audit and the log.
    pub csv: Vec<String>,
    /// The audit's HTML page.
    pub html: String,
    /// JSON: the audit and the log.
    pub json: Vec<String>,
}

/// `render`: values from outside (user and group names, ids, error messages
/// as a target sent them) in an audit and a log, rendered in every format.
pub fn render(values: Vec<String>) -> Rendered {
    let value = |i: usize| values.get(i).cloned().unwrap_or_default();
    let some = |i: usize| values.get(i).cloned();
    let audit = Audit {
        orphans: vec![Orphan {
            scim_id: ScimId::new(value(0)),
            user_name: some(1),
            external_id: some(2),
            created: some(3),
            groups: values.iter().skip(4).take(3).cloned().collect(),
            note: some(7),
        }],
        stale: vec![Stale {
            key: SourceKey::new(value(8)),
            user_name: value(1),
            scim_id: ScimId::new(value(0)),
            source: "not in the source",
            reason: value(9),
        }],
        foreign_members: vec![ForeignMember {
            group: value(4),
            group_key: GroupKey::new(value(5)),
            user_name: some(1),
            key: some(8).map(SourceKey::new),
            scim_id: ScimId::new(value(0)),
            reason: value(9),
        }],
        unmanaged_groups: vec![UnmanagedGroup {
            scim_id: ScimId::new(value(2)),
            display_name: value(4),
            members: values.len(),
            created: some(3),
        }],
        ..Audit::default()
    };
    // When it was made and when a log line was written are idsync's own
    // clock's (RFC 3339), not outside input.
    let audit = AuditReport {
        generated_at: "2026-01-02T03:04:05Z".into(),
        target: value(6),
        clean: false,
        findings: audit.findings(),
        audit,
    };
    let detail: BTreeMap<String, Value> = BTreeMap::from([(
        "changes".to_string(),
        serde_json::json!({ value(10): { "old": value(11), "new": value(12) } }),
    )]);
    let log = vec![LogRecord {
        run_id: 1,
        seq: 0,
        at: "2026-01-02T03:04:05.000Z".into(),
        command: "sync".into(),
        op: OpKind::CreateUser,
        subject: value(8),
        name: some(1),
        outcome: OpOutcome::Failed,
        http_status: Some(400),
        error: some(9),
        detail: Some(serde_json::to_value(detail).unwrap_or_default()),
    }];
    Rendered {
        text: vec![report::audit_text(&audit), report::log_text(&log)],
        csv: vec![report::audit_csv(&audit), report::log_csv(&log)],
        html: report::audit_html(&audit),
        json: vec![report::audit_json(&audit), report::log_json(&log)],
        inputs: values,
    }
}

/// Whether `c` may stand in text for a terminal as it is: a line break, or a
/// character the text renderers need not escape.
pub fn shown_raw(c: char) -> bool {
    c == '\n' || !report::needs_escape(c)
}

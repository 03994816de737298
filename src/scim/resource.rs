//! Conversion between idsync's model types and SCIM 2.0 JSON: user and group
//! resources, PATCH operations, filters, list responses, error bodies and the
//! service provider configuration. Pure functions, no I/O.

use serde_json::{Map, Value, json};

use crate::model::{
    AttrSchema, AttrShape, ENTERPRISE_USER, GroupName, RemoteGroup, RemoteMember, RemoteUser,
    ScimId, UserAttr, UserAttrs,
};

use super::schema::PayloadShape;
use crate::model::MemberRef;

pub use crate::model::{GROUP_SCHEMA, USER_SCHEMA};
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// What `/ServiceProviderConfig` says the target can do. A capability the
/// document leaves out counts as supported: the operation itself then fails
/// loudly, whereas assuming "unsupported" would silently switch to slower paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceProviderConfig {
    pub patch: bool,
    pub filter: bool,
    pub filter_max_results: Option<u32>,
    pub bulk: bool,
    pub sort: bool,
    pub etag: bool,
}

impl Default for ServiceProviderConfig {
    /// What the client assumes until the target's document has been read.
    fn default() -> Self {
        Self {
            patch: true,
            filter: true,
            filter_max_results: None,
            bulk: false,
            sort: false,
            etag: false,
        }
    }
}

/// Where a managed attribute lives in a SCIM user resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Top(&'static str),
    Name(&'static str),
    Enterprise(&'static str),
    Email,
    Phone,
}

/// Read off the attribute table.
fn slot(attr: UserAttr) -> Slot {
    let spec = attr.spec();
    match (spec.schema, spec.shape) {
        (AttrSchema::Enterprise, _) => Slot::Enterprise(spec.key),
        (AttrSchema::Core, AttrShape::Name) => Slot::Name(spec.key),
        (AttrSchema::Core, AttrShape::MultiValued) if attr == UserAttr::Email => Slot::Email,
        (AttrSchema::Core, AttrShape::MultiValued) => Slot::Phone,
        (AttrSchema::Core, AttrShape::Single) => Slot::Top(spec.key),
    }
}

/// The SCIM PATCH path of an attribute.
pub fn patch_path(attr: UserAttr) -> String {
    match slot(attr) {
        Slot::Top(key) => key.to_owned(),
        Slot::Name(key) => format!("name.{key}"),
        Slot::Enterprise(key) => format!("{ENTERPRISE_USER}:{key}"),
        Slot::Email => "emails".to_owned(),
        Slot::Phone => "phoneNumbers".to_owned(),
    }
}

/// Exactly one email, primary, so targets that demand a primary (Atlassian)
/// accept it — with `type` and `primary` only where the target publishes them
/// (some refuse a request that carries them).
fn emails_value(value: &str, shape: &PayloadShape) -> Value {
    let mut entry = Map::new();
    entry.insert("value".into(), Value::from(value));
    if shape.email_type {
        entry.insert("type".into(), Value::from("work"));
    }
    if shape.email_primary {
        entry.insert("primary".into(), Value::Bool(true));
    }
    Value::Array(vec![Value::Object(entry)])
}

fn phones_value(value: &str, shape: &PayloadShape) -> Value {
    if shape.phone_type {
        json!([{ "value": value, "type": "work" }])
    } else {
        json!([{ "value": value }])
    }
}

fn attr_value(attr: UserAttr, value: &str, shape: &PayloadShape) -> Value {
    match slot(attr) {
        Slot::Email => emails_value(value, shape),
        Slot::Phone => phones_value(value, shape),
        _ => Value::String(value.to_owned()),
    }
}

/// The full user resource for a POST, shaped for the target: read-only
/// attributes left out, multi-valued entries with the sub-attributes it publishes.
pub fn user_to_json(attrs: &UserAttrs, active: bool, shape: &PayloadShape) -> Value {
    let mut obj = Map::new();
    let mut name = Map::new();
    let mut enterprise = Map::new();
    // Empty values are the same as absent: some targets reject "" outright.
    for (attr, value) in attrs
        .iter()
        .filter(|(a, v)| !v.is_empty() && !shape.not_sent.contains(a))
    {
        match slot(attr) {
            Slot::Top(key) => {
                obj.insert(key.into(), Value::String(value.to_owned()));
            }
            Slot::Name(key) => {
                name.insert(key.into(), Value::String(value.to_owned()));
            }
            Slot::Enterprise(key) => {
                enterprise.insert(key.into(), Value::String(value.to_owned()));
            }
            Slot::Email => {
                obj.insert("emails".into(), emails_value(value, shape));
            }
            Slot::Phone => {
                obj.insert("phoneNumbers".into(), phones_value(value, shape));
            }
        }
    }
    if shape.formatted_name
        && !name.contains_key("formatted")
        && let Some(formatted) = formatted_name(&name, attrs)
    {
        name.insert("formatted".into(), Value::String(formatted));
    }
    let mut schemas = vec![Value::from(USER_SCHEMA)];
    if !name.is_empty() {
        obj.insert("name".into(), Value::Object(name));
    }
    if !enterprise.is_empty() {
        schemas.push(Value::from(ENTERPRISE_USER));
        obj.insert(ENTERPRISE_USER.into(), Value::Object(enterprise));
    }
    obj.insert("schemas".into(), Value::Array(schemas));
    obj.insert("active".into(), Value::Bool(active));
    Value::Object(obj)
}

/// `name.formatted` as RFC 7643 §4.1.1 describes it: the name parts in
/// display order, else the `displayName`.
fn formatted_name(name: &Map<String, Value>, attrs: &UserAttrs) -> Option<String> {
    let parts: Vec<&str> = [
        "honorificPrefix",
        "givenName",
        "middleName",
        "familyName",
        "honorificSuffix",
    ]
    .iter()
    .filter_map(|k| name.get(*k).and_then(Value::as_str))
    .map(str::trim)
    .filter(|p| !p.is_empty())
    .collect();
    if parts.is_empty() {
        attrs
            .get(UserAttr::DisplayName)
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
    } else {
        Some(parts.join(" "))
    }
}

/// PATCH operations for the given changes, shaped for the target (read-only
/// attributes left out): `replace` for a value, `remove` for `None` (or an
/// empty value), and `active` last.
pub fn user_patch_operations(
    changes: &[(UserAttr, Option<String>)],
    active: Option<bool>,
    shape: &PayloadShape,
) -> Vec<Value> {
    let mut ops: Vec<Value> = changes
        .iter()
        .filter(|(attr, _)| !shape.not_sent.contains(attr))
        .map(|(attr, value)| match value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => json!({ "op": "replace", "path": patch_path(*attr), "value": attr_value(*attr, v, shape) }),
            None => json!({ "op": "remove", "path": patch_path(*attr) }),
        })
        .collect();
    if let Some(active) = active {
        ops.push(json!({ "op": "replace", "path": "active", "value": active }));
    }
    ops
}

/// Applies the same changes as [`user_patch_operations`] to a full resource,
/// for targets without PATCH (GET, modify, PUT). Attributes idsync does not
/// manage are left as the server returned them.
pub fn apply_user_changes(
    resource: &mut Value,
    changes: &[(UserAttr, Option<String>)],
    active: Option<bool>,
    shape: &PayloadShape,
) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    for (attr, value) in changes.iter().filter(|(a, _)| !shape.not_sent.contains(a)) {
        let value = value.as_deref().filter(|v| !v.is_empty());
        match slot(*attr) {
            Slot::Top(key) => set_or_remove(obj, key, value.map(Value::from)),
            Slot::Email => set_or_remove(obj, "emails", value.map(|v| emails_value(v, shape))),
            Slot::Phone => {
                set_or_remove(obj, "phoneNumbers", value.map(|v| phones_value(v, shape)))
            }
            Slot::Name(key) => {
                edit_sub_object(obj, "name", |name| {
                    set_or_remove(name, key, value.map(Value::from))
                });
            }
            Slot::Enterprise(key) => {
                edit_sub_object(obj, ENTERPRISE_USER, |ext| {
                    set_or_remove(ext, key, value.map(Value::from))
                });
                let schemas = obj.entry("schemas").or_insert_with(|| json!([USER_SCHEMA]));
                if let Some(list) = schemas.as_array_mut()
                    && !list.iter().any(|s| s == ENTERPRISE_USER)
                {
                    list.push(Value::from(ENTERPRISE_USER));
                }
            }
        }
    }
    if let Some(active) = active {
        obj.insert("active".into(), Value::Bool(active));
    }
    // Read-only metadata; some servers reject it in a PUT body.
    obj.remove("meta");
}

fn set_or_remove(obj: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(v) => {
            obj.insert(key.into(), v);
        }
        None => {
            obj.remove(key);
        }
    }
}

/// Runs `edit` on the object under `key`, creating it (or replacing a non-object).
fn edit_sub_object(
    obj: &mut Map<String, Value>,
    key: &str,
    edit: impl FnOnce(&mut Map<String, Value>),
) {
    let mut sub = match obj.remove(key) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    edit(&mut sub);
    obj.insert(key.into(), Value::Object(sub));
}

fn non_empty_str(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn id_of(resource: &Value) -> Result<ScimId, String> {
    match resource.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(ScimId::new(s.as_str())),
        // A few servers use numeric ids.
        Some(Value::Number(n)) => Ok(ScimId::new(n.to_string())),
        _ => Err("resource has no \"id\"".to_owned()),
    }
}

/// The id of a resource in a list, for paging de-duplication.
pub fn resource_id(resource: &Value) -> Result<ScimId, String> {
    id_of(resource)
}

fn truthy(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        // Some servers send booleans as strings.
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The multi-valued entry to read back: the first one `prefer` accepts, else the first.
fn pick(list: Option<&Value>, prefer: impl Fn(&Value) -> bool) -> Option<&Value> {
    let items = list?.as_array()?;
    items.iter().find(|v| prefer(v)).or_else(|| items.first())
}

/// Reads a user resource back into managed attributes: the inverse of
/// [`user_to_json`] (primary or first email; work or first phone number).
pub fn user_from_json(resource: &Value) -> Result<RemoteUser, String> {
    let id = id_of(resource)?;
    let mut attrs = UserAttrs::new();
    let name = resource.get("name");
    let enterprise = resource.get(ENTERPRISE_USER);
    for attr in UserAttr::all() {
        let value = match slot(attr) {
            Slot::Top(key) => non_empty_str(resource.get(key)),
            Slot::Name(key) => non_empty_str(name.and_then(|n| n.get(key))),
            Slot::Enterprise(key) => non_empty_str(enterprise.and_then(|e| e.get(key))),
            Slot::Email => pick(resource.get("emails"), |e| {
                e.get("primary").and_then(truthy) == Some(true)
            })
            .and_then(|e| non_empty_str(e.get("value"))),
            Slot::Phone => pick(resource.get("phoneNumbers"), |p| {
                p.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("work"))
            })
            .and_then(|p| non_empty_str(p.get("value"))),
        };
        if let Some(value) = value {
            attrs.insert(attr, value);
        }
    }
    // RFC 7643 leaves the default to the server; Atlassian and most others default to active.
    let active = resource.get("active").and_then(truthy).unwrap_or(true);
    Ok(RemoteUser { id, attrs, active })
}

/// `meta.created` as the target wrote it, when it did.
pub fn created_of(resource: &Value) -> Option<String> {
    non_empty_str(resource.get("meta").and_then(|m| m.get("created")))
}

/// A user of a listing, with its `meta.created`.
pub fn listed_user(resource: &Value) -> Result<(RemoteUser, Option<String>), String> {
    Ok((user_from_json(resource)?, created_of(resource)))
}

/// A group of a listing, with its `meta.created`.
pub fn listed_group(resource: &Value) -> Result<(RemoteGroup, Option<String>), String> {
    Ok((group_from_json(resource)?, created_of(resource)))
}

pub fn group_to_json(display_name: &str, external_id: Option<&str>) -> Value {
    let mut obj = json!({ "schemas": [GROUP_SCHEMA], "displayName": display_name });
    if let Some(external_id) = external_id {
        obj["externalId"] = Value::from(external_id);
    }
    obj
}

/// A group POST body with its first members (targets that require members),
/// each as [`member_object`] makes it.
pub fn group_with_members_to_json(
    display_name: &str,
    external_id: Option<&str>,
    members: Vec<Value>,
) -> Value {
    let mut obj = group_to_json(display_name, external_id);
    obj["members"] = Value::Array(members);
    obj
}

/// One group member as sent: its `value` (an id, or a userName on targets
/// that store those), and where the target requires them `$ref` (the
/// member's URL, `user_url`), `display` (its userName) and `type`.
pub fn member_object(
    value: &str,
    member: &MemberRef,
    user_url: impl FnOnce(&ScimId) -> String,
    shape: &PayloadShape,
) -> Value {
    let mut obj = Map::new();
    obj.insert("value".into(), Value::from(value));
    if shape.member_ref {
        obj.insert("$ref".into(), Value::from(user_url(&member.id)));
    }
    if shape.member_display
        && let Some(name) = &member.user_name
    {
        obj.insert("display".into(), Value::from(name.as_str()));
    }
    if shape.member_type {
        obj.insert("type".into(), Value::from("User"));
    }
    Value::Object(obj)
}

/// Reads a group resource. A missing `displayName` reads as empty rather than
/// failing the whole list: one odd group should not stop every cycle.
pub fn group_from_json(resource: &Value) -> Result<RemoteGroup, String> {
    let id = id_of(resource)?;
    let display_name = GroupName::new(
        resource
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    let members = resource
        .get("members")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(member_from_json).collect())
        .unwrap_or_default();
    Ok(RemoteGroup {
        id,
        display_name,
        external_id: non_empty_str(resource.get("externalId")),
        members,
    })
}

/// One entry of a group's `members`: `value` as stored (a string or, on a few
/// servers, a number) and the last path segment of `$ref`, if any.
fn member_from_json(member: &Value) -> Option<RemoteMember> {
    let value = match member.get("value")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let ref_id = member
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(ScimId::new);
    Some(RemoteMember { value, ref_id })
}

pub fn patch_body(operations: Vec<Value>) -> Value {
    json!({ "schemas": [PATCH_OP_SCHEMA], "Operations": operations })
}

/// Adds these members (see [`member_object`]).
pub fn members_add_operation(members: Vec<Value>) -> Value {
    json!({ "op": "add", "path": "members", "value": members })
}

/// One remove per member, by value filter on what the server stores: the
/// value-list form of remove is not accepted everywhere (scim2-server rejects
/// it, RFC 7644 §3.5.2.2 does not define it).
pub fn member_remove_operation(value: &str) -> Value {
    json!({ "op": "remove", "path": format!("members[{}]", eq_filter("value", value)) })
}

pub fn group_rename_operation(display_name: &str) -> Value {
    json!({ "op": "replace", "path": "displayName", "value": display_name })
}

/// Quotes a filter comparison value. RFC 7644 §3.4.2.2 makes compValue a JSON
/// string, so JSON escaping handles quotes, backslashes and control characters.
pub fn quote_filter_value(value: &str) -> String {
    Value::String(value.to_owned()).to_string()
}

/// `attr eq "value"`, value escaped.
pub fn eq_filter(attr: &str, value: &str) -> String {
    format!("{attr} eq {}", quote_filter_value(value))
}

/// One page of a ListResponse.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub total: Option<u64>,
    pub resources: Vec<Value>,
}

fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn parse_list(body: Value) -> Result<ListPage, String> {
    let Value::Object(mut obj) = body else {
        return Err("list response is not a JSON object".to_owned());
    };
    let total = number(obj.get("totalResults"));
    // Some servers leave out an empty `Resources`, a few spell it in lower case.
    let resources = match obj.remove("Resources").or_else(|| obj.remove("resources")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("\"Resources\" is not an array".to_owned()),
    };
    Ok(ListPage { total, resources })
}

/// The useful parts of a SCIM error body (RFC 7644 §3.12).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub status: Option<u16>,
    pub scim_type: Option<String>,
    pub detail: Option<String>,
}

/// Longest piece of a non-SCIM error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 300;

/// Parses an error response body; a body that is not a SCIM error is quoted
/// (shortened) as the detail so the operator still sees what the server said.
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
        let detail = non_empty_str(obj.get("detail"))
            .or_else(|| non_empty_str(obj.get("message")))
            .or_else(|| non_empty_str(obj.get("error")));
        return ErrorBody {
            // `status` is a string in RFC 7644, a number on some servers.
            status: number(obj.get("status")).and_then(|s| u16::try_from(s).ok()),
            scim_type: non_empty_str(obj.get("scimType")),
            detail,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = (!text.is_empty()).then(|| {
        let mut quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        quoted
    });
    ErrorBody {
        detail,
        ..ErrorBody::default()
    }
}

fn supported(doc: &Value, section: &str) -> bool {
    doc.get(section)
        .and_then(|s| s.get("supported"))
        .and_then(truthy)
        .unwrap_or(true)
}

pub fn parse_service_provider_config(doc: &Value) -> Result<ServiceProviderConfig, String> {
    if !doc.is_object() {
        return Err("ServiceProviderConfig is not a JSON object".to_owned());
    }
    Ok(ServiceProviderConfig {
        patch: supported(doc, "patch"),
        filter: supported(doc, "filter"),
        filter_max_results: number(doc.get("filter").and_then(|f| f.get("maxResults")))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0),
        bulk: doc
            .get("bulk")
            .and_then(|b| b.get("supported"))
            .and_then(truthy)
            .unwrap_or(false),
        sort: supported(doc, "sort"),
        etag: supported(doc, "etag"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_attrs() -> UserAttrs {
        UserAttr::all()
            .map(|a| (a, format!("v-{}", a.name())))
            .collect()
    }

    #[test]
    fn every_attribute_round_trips() {
        let attrs = full_attrs();
        let mut json = user_to_json(&attrs, false, &PayloadShape::default());
        json["id"] = Value::from("42");
        let back = user_from_json(&json).expect("parses");
        assert_eq!(back.id.as_str(), "42");
        assert_eq!(back.attrs, attrs);
        assert!(!back.active);
    }

    #[test]
    fn user_json_shape() {
        let attrs: UserAttrs = [
            (UserAttr::UserName, "a@example.com".to_owned()),
            (UserAttr::Email, "a@example.com".to_owned()),
            (UserAttr::GivenName, "Ann".to_owned()),
            (UserAttr::Department, "R&D".to_owned()),
        ]
        .into();
        let json = user_to_json(&attrs, true, &PayloadShape::default());
        assert_eq!(
            json,
            json!({
                "schemas": [USER_SCHEMA, ENTERPRISE_USER],
                "userName": "a@example.com",
                "emails": [{"value": "a@example.com", "type": "work", "primary": true}],
                "name": {"givenName": "Ann"},
                ENTERPRISE_USER: {"department": "R&D"},
                "active": true,
            })
        );
    }

    #[test]
    fn no_enterprise_schema_without_enterprise_attributes() {
        let attrs: UserAttrs = [(UserAttr::UserName, "a".to_owned())].into();
        let json = user_to_json(&attrs, true, &PayloadShape::default());
        assert_eq!(json["schemas"], json!([USER_SCHEMA]));
        assert!(json.get(ENTERPRISE_USER).is_none());
        assert!(json.get("name").is_none());
    }

    #[test]
    fn reads_primary_email_and_work_phone() {
        let json = json!({
            "id": "1",
            "emails": [
                {"value": "home@example.com", "type": "home"},
                {"value": "work@example.com", "type": "work", "primary": "true"}
            ],
            "phoneNumbers": [
                {"value": "111", "type": "mobile"},
                {"value": "222", "type": "Work"}
            ],
            "active": "false"
        });
        let user = user_from_json(&json).expect("parses");
        assert_eq!(user.attrs.get(UserAttr::Email).unwrap(), "work@example.com");
        assert_eq!(user.attrs.get(UserAttr::PhoneNumber).unwrap(), "222");
        assert!(!user.active);
    }

    #[test]
    fn falls_back_to_first_email_and_phone_and_default_active() {
        let json = json!({
            "id": 7,
            "emails": [{"value": "one@example.com"}, {"value": "two@example.com"}],
            "phoneNumbers": [{"value": "111"}],
            "title": ""
        });
        let user = user_from_json(&json).expect("parses");
        assert_eq!(user.id.as_str(), "7");
        assert_eq!(user.attrs.get(UserAttr::Email).unwrap(), "one@example.com");
        assert_eq!(user.attrs.get(UserAttr::PhoneNumber).unwrap(), "111");
        assert!(!user.attrs.contains_key(UserAttr::Title));
        assert!(user.active);
    }

    #[test]
    fn user_without_id_is_rejected() {
        assert!(user_from_json(&json!({"userName": "x"})).is_err());
    }

    #[test]
    fn patch_operations_shape() {
        let ops = user_patch_operations(
            &[
                (UserAttr::GivenName, Some("Ann".into())),
                (UserAttr::Email, Some("a@b.c".into())),
                (UserAttr::Department, Some("Ops".into())),
                (UserAttr::Title, None),
                (UserAttr::NickName, Some(String::new())),
            ],
            Some(false),
            &PayloadShape::default(),
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "replace", "path": "name.givenName", "value": "Ann"}),
                json!({"op": "replace", "path": "emails",
                       "value": [{"value": "a@b.c", "type": "work", "primary": true}]}),
                json!({"op": "replace", "path": format!("{ENTERPRISE_USER}:department"), "value": "Ops"}),
                json!({"op": "remove", "path": "title"}),
                json!({"op": "remove", "path": "nickName"}),
                json!({"op": "replace", "path": "active", "value": false}),
            ]
        );
    }

    #[test]
    fn applying_changes_to_a_resource_matches_the_patch() {
        let mut attrs = full_attrs();
        let mut resource = user_to_json(&attrs, true, &PayloadShape::default());
        resource["id"] = Value::from("1");
        resource["meta"] = json!({"version": "W/\"1\""});
        let changes = vec![
            (UserAttr::FamilyName, Some("New".to_owned())),
            (UserAttr::Email, Some("new@example.com".to_owned())),
            (UserAttr::CostCenter, None),
            (UserAttr::Title, None),
        ];
        apply_user_changes(
            &mut resource,
            &changes,
            Some(false),
            &PayloadShape::default(),
        );
        for (attr, value) in &changes {
            match value {
                Some(v) => attrs.insert(*attr, v.clone()),
                None => attrs.remove(attr),
            };
        }
        let back = user_from_json(&resource).expect("parses");
        assert_eq!(back.attrs, attrs);
        assert!(!back.active);
        assert!(resource.get("meta").is_none());
    }

    #[test]
    fn a_shape_leaves_out_unpublished_sub_attributes_and_read_only_attributes() {
        let shape = PayloadShape {
            email_type: false,
            email_primary: false,
            phone_type: false,
            not_sent: [UserAttr::ExternalId].into(),
            ..PayloadShape::default()
        };
        let attrs: UserAttrs = [
            (UserAttr::UserName, "a@example.com".to_owned()),
            (UserAttr::ExternalId, "k1".to_owned()),
            (UserAttr::Email, "a@example.com".to_owned()),
            (UserAttr::PhoneNumber, "123".to_owned()),
        ]
        .into();
        assert_eq!(
            user_to_json(&attrs, true, &shape),
            json!({
                "schemas": [USER_SCHEMA],
                "userName": "a@example.com",
                "emails": [{"value": "a@example.com"}],
                "phoneNumbers": [{"value": "123"}],
                "active": true,
            })
        );
        let changes = [
            (UserAttr::ExternalId, Some("k2".to_owned())),
            (UserAttr::Email, Some("b@example.com".to_owned())),
        ];
        assert_eq!(
            user_patch_operations(&changes, None, &shape),
            vec![json!({"op": "replace", "path": "emails", "value": [{"value": "b@example.com"}]})]
        );
        let mut resource = user_to_json(&attrs, true, &shape);
        apply_user_changes(&mut resource, &changes, None, &shape);
        assert!(resource.get("externalId").is_none());
        assert_eq!(resource["emails"], json!([{"value": "b@example.com"}]));
    }

    #[test]
    fn filter_values_are_escaped() {
        let cases = [
            ("plain@example.com", r#"userName eq "plain@example.com""#),
            (r#"a"b"#, r#"userName eq "a\"b""#),
            (r"a\b", r#"userName eq "a\\b""#),
            (r#"\""#, r#"userName eq "\\\"""#),
            ("tab\there", r#"userName eq "tab\there""#),
            ("Müller", r#"userName eq "Müller""#),
            (") or (userName pr", r#"userName eq ") or (userName pr""#),
        ];
        for (value, expected) in cases {
            assert_eq!(eq_filter("userName", value), expected, "value {value:?}");
        }
    }

    #[test]
    fn member_remove_path_is_a_value_filter() {
        assert_eq!(
            member_remove_operation("ab\"c"),
            json!({"op": "remove", "path": r#"members[value eq "ab\"c"]"#})
        );
    }

    #[test]
    fn group_round_trip() {
        let mut json = group_to_json("Eng", Some("g1"));
        json["id"] = Value::from("g");
        json["members"] = json!([
            {"value": "u1", "display": "x"},
            {"value": "bob@x.com", "$ref": "https://h/scim/v2/Users/u2"},
            {"value": 7},
            {"display": "no value"}
        ]);
        let group = group_from_json(&json).expect("parses");
        assert_eq!(
            group,
            RemoteGroup {
                id: ScimId::new("g"),
                display_name: "Eng".into(),
                external_id: Some("g1".into()),
                members: vec![
                    RemoteMember::id("u1"),
                    RemoteMember {
                        value: "bob@x.com".into(),
                        ref_id: Some(ScimId::new("u2")),
                    },
                    RemoteMember::id("7"),
                ],
            }
        );
        assert!(group_to_json("Eng", None).get("externalId").is_none());
    }

    #[test]
    fn a_listed_resource_keeps_when_the_target_made_it() {
        let user = json!({
            "id": "u1", "userName": "ann@x.com",
            "meta": { "resourceType": "User", "created": "2024-05-01T10:00:00Z" }
        });
        let (remote, created) = listed_user(&user).unwrap();
        assert_eq!(remote.id, ScimId::new("u1"));
        assert_eq!(created.as_deref(), Some("2024-05-01T10:00:00Z"));
        let group = json!({ "id": "g1", "displayName": "G", "meta": { "created": "" } });
        assert_eq!(listed_group(&group).unwrap().1, None);
        assert_eq!(created_of(&json!({ "id": "x" })), None);
    }

    #[test]
    fn list_response_variants() {
        let page =
            parse_list(json!({"totalResults": "3", "Resources": [{"id": "a"}]})).expect("ok");
        assert_eq!(page.total, Some(3));
        assert_eq!(page.resources.len(), 1);
        let page = parse_list(json!({"totalResults": 0})).expect("ok");
        assert_eq!(page.total, Some(0));
        assert!(page.resources.is_empty());
        assert!(parse_list(json!({"Resources": {}})).is_err());
        assert!(parse_list(json!([])).is_err());
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"taken"}"#;
        assert_eq!(
            parse_error_body(body),
            ErrorBody {
                status: Some(409),
                scim_type: Some("uniqueness".into()),
                detail: Some("taken".into())
            }
        );
        assert_eq!(
            parse_error_body(br#"{"status":400,"detail":"bad"}"#).status,
            Some(400)
        );
        assert_eq!(
            parse_error_body(b"  <html>gateway</html>\n")
                .detail
                .as_deref(),
            Some("<html>gateway</html>")
        );
        assert_eq!(parse_error_body(b"").detail, None);
        let long = "x".repeat(1000);
        let detail = parse_error_body(long.as_bytes()).detail.expect("quoted");
        assert_eq!(detail.chars().count(), MAX_QUOTED_BODY + 1);
    }

    #[test]
    fn service_provider_config() {
        let doc = json!({
            "patch": {"supported": true},
            "filter": {"supported": false, "maxResults": 200},
            "bulk": {"supported": true},
        });
        let spc = parse_service_provider_config(&doc).expect("ok");
        assert!(spc.patch);
        assert!(!spc.filter);
        assert_eq!(spc.filter_max_results, Some(200));
        assert!(spc.bulk);
        let spc = parse_service_provider_config(&json!({})).expect("ok");
        assert_eq!(
            spc,
            ServiceProviderConfig {
                sort: true,
                etag: true,
                ..ServiceProviderConfig::default()
            }
        );
    }

    #[test]
    fn a_required_name_formatted_is_made_from_the_name_parts_else_the_display_name() {
        let shape = PayloadShape {
            formatted_name: true,
            ..PayloadShape::default()
        };
        let parts: UserAttrs = [
            (UserAttr::UserName, "a@x.com".to_owned()),
            (UserAttr::GivenName, "Ann".to_owned()),
            (UserAttr::FamilyName, "Lee".to_owned()),
            (UserAttr::HonorificSuffix, "PhD".to_owned()),
            (UserAttr::DisplayName, "Lee, Ann".to_owned()),
        ]
        .into_iter()
        .collect();
        let body = user_to_json(&parts, true, &shape);
        assert_eq!(body["name"]["formatted"], "Ann Lee PhD");
        let display_only: UserAttrs = [
            (UserAttr::UserName, "a@x.com".to_owned()),
            (UserAttr::DisplayName, "Ann Lee".to_owned()),
        ]
        .into_iter()
        .collect();
        let body = user_to_json(&display_only, true, &shape);
        assert_eq!(body["name"], json!({"formatted": "Ann Lee"}));
        // A mapped value wins; without the requirement nothing is added.
        let mut mapped = parts.clone();
        mapped.insert(UserAttr::FormattedName, "Dr Ann Lee");
        assert_eq!(
            user_to_json(&mapped, true, &shape)["name"]["formatted"],
            "Dr Ann Lee"
        );
        assert!(
            user_to_json(&parts, true, &PayloadShape::default())["name"]
                .get("formatted")
                .is_none()
        );
    }

    #[test]
    fn a_member_carries_ref_display_and_type_where_required() {
        let member = MemberRef {
            id: ScimId::new("u1"),
            user_name: Some(crate::model::UserName::new("ann@x.com")),
        };
        let url = |id: &ScimId| format!("https://t/scim/Users/{id}");
        assert_eq!(
            member_object("u1", &member, url, &PayloadShape::default()),
            json!({"value": "u1"})
        );
        let shape = PayloadShape {
            member_ref: true,
            member_display: true,
            member_type: true,
            ..PayloadShape::default()
        };
        assert_eq!(
            member_object("u1", &member, url, &shape),
            json!({"value": "u1", "$ref": "https://t/scim/Users/u1", "display": "ann@x.com", "type": "User"})
        );
    }
}

//! The SCIM user attributes idsync manages, described once: name, schema,
//! placement in a resource and comparison rule.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A SCIM user attribute idsync can manage. `active` is not one of them: it is
/// decided by the source's `active` flag and the removal policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UserAttr {
    #[serde(rename = "userName")]
    UserName,
    #[serde(rename = "externalId")]
    ExternalId,
    #[serde(rename = "emails")]
    Email,
    #[serde(rename = "name.givenName")]
    GivenName,
    #[serde(rename = "name.familyName")]
    FamilyName,
    #[serde(rename = "name.middleName")]
    MiddleName,
    #[serde(rename = "name.formatted")]
    FormattedName,
    #[serde(rename = "name.honorificPrefix")]
    HonorificPrefix,
    #[serde(rename = "name.honorificSuffix")]
    HonorificSuffix,
    #[serde(rename = "displayName")]
    DisplayName,
    #[serde(rename = "nickName")]
    NickName,
    #[serde(rename = "title")]
    Title,
    #[serde(rename = "userType")]
    UserType,
    #[serde(rename = "preferredLanguage")]
    PreferredLanguage,
    #[serde(rename = "locale")]
    Locale,
    #[serde(rename = "timezone")]
    Timezone,
    #[serde(rename = "phoneNumbers")]
    PhoneNumber,
    #[serde(rename = "department")]
    Department,
    #[serde(rename = "organization")]
    Organization,
    #[serde(rename = "division")]
    Division,
    #[serde(rename = "costCenter")]
    CostCenter,
    #[serde(rename = "employeeNumber")]
    EmployeeNumber,
}

/// The SCIM enterprise user extension's schema URN.
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// The SCIM core User schema's URN (RFC 7643 §4.1).
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The SCIM core Group schema's URN (RFC 7643 §4.2).
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// The schema an attribute belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrSchema {
    /// `urn:ietf:params:scim:schemas:core:2.0:User`.
    Core,
    /// The enterprise user extension ([`ENTERPRISE_USER`]).
    Enterprise,
}

/// Where the value sits in a user resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrShape {
    /// A top-level string (or one inside the enterprise extension).
    Single,
    /// A sub-attribute of the complex `name` attribute.
    Name,
    /// The `value` of a multi-valued attribute (`emails`, `phoneNumbers`); idsync
    /// writes exactly one entry, of type `work`.
    MultiValued,
}

/// What idsync knows about one SCIM user attribute: the one table every layer
/// reads (mapping names, plan and state keys, PATCH paths, JSON placement,
/// comparison rules).
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    pub attr: UserAttr,
    /// The name in mapping files, plans and state, and the SCIM PATCH path within
    /// its schema: `userName`, `name.givenName`, `emails`, `department`.
    pub name: &'static str,
    pub schema: AttrSchema,
    pub shape: AttrShape,
    /// The key inside the resource (or inside `name` / the extension).
    pub key: &'static str,
    /// RFC 7643 `caseExact`: whether the target compares values exactly. Matters
    /// when idsync looks a user up by this attribute.
    pub case_exact: bool,
}

const fn spec(
    attr: UserAttr,
    name: &'static str,
    schema: AttrSchema,
    shape: AttrShape,
    key: &'static str,
    case_exact: bool,
) -> AttrSpec {
    AttrSpec {
        attr,
        name,
        schema,
        shape,
        key,
        case_exact,
    }
}

use AttrSchema::{Core, Enterprise};
use AttrShape::{MultiValued, Name, Single};

/// How many attributes idsync manages.
pub(super) const ATTRIBUTE_COUNT: usize = 22;

/// Every managed attribute, in `UserAttr` order (checked by a test).
const ATTRIBUTES: [AttrSpec; ATTRIBUTE_COUNT] = [
    spec(
        UserAttr::UserName,
        "userName",
        Core,
        Single,
        "userName",
        false,
    ),
    spec(
        UserAttr::ExternalId,
        "externalId",
        Core,
        Single,
        "externalId",
        true,
    ),
    spec(
        UserAttr::Email,
        "emails",
        Core,
        MultiValued,
        "emails",
        false,
    ),
    spec(
        UserAttr::GivenName,
        "name.givenName",
        Core,
        Name,
        "givenName",
        false,
    ),
    spec(
        UserAttr::FamilyName,
        "name.familyName",
        Core,
        Name,
        "familyName",
        false,
    ),
    spec(
        UserAttr::MiddleName,
        "name.middleName",
        Core,
        Name,
        "middleName",
        false,
    ),
    spec(
        UserAttr::FormattedName,
        "name.formatted",
        Core,
        Name,
        "formatted",
        false,
    ),
    spec(
        UserAttr::HonorificPrefix,
        "name.honorificPrefix",
        Core,
        Name,
        "honorificPrefix",
        false,
    ),
    spec(
        UserAttr::HonorificSuffix,
        "name.honorificSuffix",
        Core,
        Name,
        "honorificSuffix",
        false,
    ),
    spec(
        UserAttr::DisplayName,
        "displayName",
        Core,
        Single,
        "displayName",
        false,
    ),
    spec(
        UserAttr::NickName,
        "nickName",
        Core,
        Single,
        "nickName",
        false,
    ),
    spec(UserAttr::Title, "title", Core, Single, "title", false),
    spec(
        UserAttr::UserType,
        "userType",
        Core,
        Single,
        "userType",
        false,
    ),
    spec(
        UserAttr::PreferredLanguage,
        "preferredLanguage",
        Core,
        Single,
        "preferredLanguage",
        false,
    ),
    spec(UserAttr::Locale, "locale", Core, Single, "locale", false),
    spec(
        UserAttr::Timezone,
        "timezone",
        Core,
        Single,
        "timezone",
        false,
    ),
    spec(
        UserAttr::PhoneNumber,
        "phoneNumbers",
        Core,
        MultiValued,
        "phoneNumbers",
        false,
    ),
    spec(
        UserAttr::Department,
        "department",
        Enterprise,
        Single,
        "department",
        false,
    ),
    spec(
        UserAttr::Organization,
        "organization",
        Enterprise,
        Single,
        "organization",
        false,
    ),
    spec(
        UserAttr::Division,
        "division",
        Enterprise,
        Single,
        "division",
        false,
    ),
    spec(
        UserAttr::CostCenter,
        "costCenter",
        Enterprise,
        Single,
        "costCenter",
        false,
    ),
    spec(
        UserAttr::EmployeeNumber,
        "employeeNumber",
        Enterprise,
        Single,
        "employeeNumber",
        false,
    ),
];

impl UserAttr {
    /// Every managed attribute.
    pub fn all() -> impl Iterator<Item = UserAttr> {
        ATTRIBUTES.iter().map(|s| s.attr)
    }

    /// The attribute at `index` in `UserAttr` order (`attr as usize`).
    pub(super) fn at(index: usize) -> UserAttr {
        ATTRIBUTES[index].attr
    }

    /// This attribute's row of the table.
    pub fn spec(self) -> &'static AttrSpec {
        &ATTRIBUTES[self as usize]
    }

    /// The name used in mapping files, plans and state: the SCIM attribute path.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Parses a mapping-file attribute name. `email` is accepted for `emails`.
    pub fn parse(name: &str) -> Option<UserAttr> {
        match name {
            "email" => Some(UserAttr::Email),
            "phoneNumber" => Some(UserAttr::PhoneNumber),
            _ => ATTRIBUTES.iter().find(|s| s.name == name).map(|s| s.attr),
        }
    }
}

impl fmt::Display for UserAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order_and_names_round_trip() {
        for (i, spec) in ATTRIBUTES.iter().enumerate() {
            assert_eq!(spec.attr as usize, i, "{} is out of order", spec.name);
            assert_eq!(UserAttr::parse(spec.name), Some(spec.attr));
            // The serde name (plans, state) is the table's name.
            assert_eq!(
                serde_json::to_value(spec.attr).unwrap(),
                serde_json::Value::from(spec.name)
            );
        }
    }
}

//! The kinds of operation a plan holds, by the names plan JSON, the journal,
//! the run log and `idsync log --action` use.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The kinds of operation, as named in plan JSON, the journal and the run log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    AdoptUser,
    AdoptGroup,
    CreateUser,
    UpdateUser,
    EnableUser,
    DisableUser,
    DeleteUser,
    CreateGroup,
    UpdateGroup,
    DeleteGroup,
    AddMembers,
    RemoveMembers,
}

impl OpKind {
    const ALL: [OpKind; 12] = [
        OpKind::AdoptUser,
        OpKind::AdoptGroup,
        OpKind::CreateUser,
        OpKind::UpdateUser,
        OpKind::EnableUser,
        OpKind::DisableUser,
        OpKind::DeleteUser,
        OpKind::CreateGroup,
        OpKind::UpdateGroup,
        OpKind::DeleteGroup,
        OpKind::AddMembers,
        OpKind::RemoveMembers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::AdoptUser => "adopt_user",
            OpKind::AdoptGroup => "adopt_group",
            OpKind::CreateUser => "create_user",
            OpKind::UpdateUser => "update_user",
            OpKind::EnableUser => "enable_user",
            OpKind::DisableUser => "disable_user",
            OpKind::DeleteUser => "delete_user",
            OpKind::CreateGroup => "create_group",
            OpKind::UpdateGroup => "update_group",
            OpKind::DeleteGroup => "delete_group",
            OpKind::AddMembers => "add_members",
            OpKind::RemoveMembers => "remove_members",
        }
    }

    pub fn parse(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl Serialize for OpKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for OpKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        OpKind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown operation {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::OpKind;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in OpKind::ALL {
            assert_eq!(OpKind::parse(kind.name()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<OpKind>(&json).unwrap(), kind);
        }
        assert_eq!(OpKind::parse("create_users"), None);
    }
}

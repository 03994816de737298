//! DNs as the LDAP source needs them: the normal form for matching group
//! members to entries (the model's [`normalize_dn`](crate::model::normalize_dn),
//! shared with assignments that name groups by DN), AD's Builtin container,
//! `uniqueMember` suffixes.

pub(super) use crate::model::normalize_dn as normalize;

/// Whether `dn` lies in an Active Directory domain's `CN=Builtin` container
/// (the built-in local groups: Administrators, Users, Guests, …).
pub(super) fn is_in_builtin(dn: &str) -> bool {
    normalize(dn).contains(",cn=builtin,dc=")
}

/// A `uniqueMember` value is a DN optionally followed by `#'<bits>'B` (RFC 4517
/// Name and Optional UID); the DN is what names the member.
pub(super) fn strip_unique_member_uid(value: &str) -> &str {
    let Some(body) = value.strip_suffix("'B") else {
        return value;
    };
    let Some(hash) = body.rfind("#'") else {
        return value;
    };
    let bits = &body[hash + 2..];
    let escaped = body[..hash]
        .bytes()
        .rev()
        .take_while(|&b| b == b'\\')
        .count()
        % 2
        == 1;
    if escaped || !bits.bytes().all(|b| b == b'0' || b == b'1') {
        return value;
    }
    &value[..hash]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_container_is_recognised_in_any_spelling() {
        assert!(is_in_builtin(
            "CN=Administrators,CN=Builtin,DC=corp,DC=example"
        ));
        assert!(is_in_builtin("cn=Users, cn=BUILTIN ,dc=corp"));
        assert!(!is_in_builtin("CN=Users,CN=Users,DC=corp"));
        assert!(!is_in_builtin("CN=Builtin Fans,OU=Groups,DC=corp"));
        assert!(!is_in_builtin("CN=Builtin,OU=Groups,DC=corp"));
    }

    #[test]
    fn unique_member_uid_suffix_is_stripped() {
        assert_eq!(
            strip_unique_member_uid("uid=jdoe,ou=people,dc=example,dc=com#'0101'B"),
            "uid=jdoe,ou=people,dc=example,dc=com"
        );
        assert_eq!(strip_unique_member_uid("cn=x,dc=y#''B"), "cn=x,dc=y");
        // Plain DNs and look-alikes are left alone.
        assert_eq!(strip_unique_member_uid("cn=x,dc=y"), "cn=x,dc=y");
        assert_eq!(strip_unique_member_uid("cn=x#'12'B"), "cn=x#'12'B");
        assert_eq!(strip_unique_member_uid(r"cn=x\#'1'B"), r"cn=x\#'1'B");
    }
}

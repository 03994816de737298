//! Comparing distinguished names the way a directory does, well enough to match
//! group members to entries and to find a group named by its DN:
//! case-insensitive, spaces around `=`, `,` and `+` ignored, hex escapes of
//! ordinary characters decoded. Not a full RFC 4514 parser: attribute type
//! OIDs and multi-valued RDN order are left as written.

/// Characters that keep their backslash in the normal form, because unescaped
/// they would mean something else (RFC 4514 section 2.4), plus space.
fn must_stay_escaped(c: char) -> bool {
    matches!(
        c,
        ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#' | ' '
    )
}

/// The normal form of `dn`, used as the key of DN indexes: two spellings of
/// one DN have the same normal form.
pub fn normalize_dn(dn: &str) -> String {
    // Most DNs are ASCII without spaces or escapes (`uid=jdoe,ou=people,…`):
    // their normal form is their lowercase.
    if dn.bytes().all(|b| b.is_ascii() && b != b'\\' && b != b' ') {
        return dn.to_ascii_lowercase();
    }
    normalize_any(dn)
}

/// [`normalize_dn`] for any DN, character by character.
fn normalize_any(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut pending_spaces = 0usize;
    // At the start and right after a separator, spaces are insignificant.
    let mut at_boundary = true;
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = if bytes[i].is_ascii() {
            char::from(bytes[i])
        } else {
            dn[i..].chars().next().unwrap_or_default()
        };
        match c {
            '\\' => {
                // A backslash that escapes nothing (the DN's last character)
                // is dropped, and the spaces before it are trailing ones: kept,
                // they made a normal form that normalised differently.
                if i + 1 == bytes.len() {
                    break;
                }
                if !at_boundary {
                    out.extend(std::iter::repeat_n(' ', pending_spaces));
                }
                pending_spaces = 0;
                at_boundary = false;
                i += 1;
                // A run of \XX hex escapes is UTF-8 bytes.
                let mut decoded = Vec::new();
                let mut j = i;
                let hex_at = |k: usize| {
                    k + 2 <= bytes.len()
                        && bytes[k].is_ascii_hexdigit()
                        && bytes[k + 1].is_ascii_hexdigit()
                };
                while hex_at(j) {
                    decoded.push(hex_pair(bytes[j], bytes[j + 1]));
                    j += 2;
                    if bytes.get(j) == Some(&b'\\') && hex_at(j + 1) {
                        j += 1;
                    } else {
                        break;
                    }
                }
                if !decoded.is_empty() {
                    for d in String::from_utf8_lossy(&decoded).chars() {
                        push_value_char(&mut out, d);
                    }
                    i = j;
                } else if let Some(next) = dn[i..].chars().next() {
                    push_value_char(&mut out, next);
                    i += next.len_utf8();
                }
                continue;
            }
            ' ' => {
                if !at_boundary {
                    pending_spaces += 1;
                }
            }
            ',' | '=' | '+' => {
                pending_spaces = 0;
                out.push(c);
                at_boundary = true;
            }
            _ => {
                out.extend(std::iter::repeat_n(' ', pending_spaces));
                pending_spaces = 0;
                at_boundary = false;
                push_lowercase(&mut out, c);
            }
        }
        i += c.len_utf8();
    }
    out
}

fn push_value_char(out: &mut String, c: char) {
    if must_stay_escaped(c) {
        out.push('\\');
        out.push(c);
    } else {
        push_lowercase(out, c);
    }
}

fn push_lowercase(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

fn hex_pair(high: u8, low: u8) -> u8 {
    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    digit(high) << 4 | digit(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dangling_backslash_is_dropped_with_the_spaces_before_it() {
        // Found by the `ldap` fuzz target (fuzz/regressions/ldap-dangling-backslash):
        // the normal form of "\u{1}  \\" was "\u{1}  ", whose own was "\u{1}".
        for dn in ["\u{1}  \\", "cn=a  \\", "cn=\\", "\\"] {
            let normal = normalize_dn(dn);
            assert_eq!(normalize_dn(&normal), normal, "{dn:?}");
        }
        assert_eq!(normalize_dn("cn=Ada  \\"), "cn=ada");
        assert_eq!(normalize_dn("cn=Ada\\ "), "cn=ada\\ ");
    }

    #[test]
    fn the_shortcut_for_plain_dns_agrees_with_the_general_rule() {
        for dn in [
            "uid=JDoe,ou=People,dc=Example,dc=com",
            "CN=u1,OU=Staff+OU=x,DC=corp",
            "",
            "=,+",
        ] {
            assert_eq!(normalize_dn(dn), normalize_any(dn), "{dn}");
        }
    }

    #[test]
    fn case_and_spaces_around_separators_do_not_matter() {
        let a = normalize_dn("uid=JDoe, ou=People ,dc=Example, dc=com");
        let b = normalize_dn("UID = jdoe,OU=people,DC=example,DC=COM");
        assert_eq!(a, "uid=jdoe,ou=people,dc=example,dc=com");
        assert_eq!(a, b);
    }

    #[test]
    fn spaces_inside_values_are_kept() {
        assert_eq!(
            normalize_dn("cn=Jane  Doe ,ou=x"),
            "cn=jane  doe,ou=x",
            "inner spaces are part of the value"
        );
        assert_ne!(
            normalize_dn("cn=Jane Doe,ou=x"),
            normalize_dn("cn=JaneDoe,ou=x")
        );
    }

    #[test]
    fn non_ascii_values_fold_case() {
        assert_eq!(
            normalize_dn("cn=Jörg MÜLLER,ou=People,dc=example,dc=com"),
            "cn=jörg müller,ou=people,dc=example,dc=com"
        );
    }

    #[test]
    fn escaped_separators_stay_escaped_and_hex_escapes_decode() {
        assert_eq!(normalize_dn(r"cn=Doe\, John,ou=x"), r"cn=doe\, john,ou=x");
        assert_eq!(normalize_dn(r"cn=Doe\2C John,ou=x"), r"cn=doe\, john,ou=x");
        // ü as UTF-8 hex escapes, and an escaped ordinary letter.
        assert_eq!(
            normalize_dn(r"cn=M\C3\BCller,ou=x"),
            normalize_dn("cn=Müller,ou=x")
        );
        assert_eq!(normalize_dn(r"cn=\4Aane,ou=x"), "cn=jane,ou=x");
        // An escaped trailing space is significant.
        assert_ne!(normalize_dn(r"cn=a\ ,ou=x"), normalize_dn("cn=a,ou=x"));
    }
}

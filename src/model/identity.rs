//! Identifiers. Keys and SCIM ids compare exactly; the names people type
//! (`UserName`, `Email`, `GroupName`, `Domain`) compare case-insensitively by
//! themselves, after Unicode normalisation (NFC), so no caller has to remember
//! to fold before comparing, hashing or sorting.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use ecow::EcoString;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Keys and SCIM ids are held in 16 bytes: up to 15 bytes inline (most
/// employee numbers, short ids), longer ones on the heap with a reference
/// count, so a clone (a group member, a state membership) shares the one copy
/// instead of allocating its own. They compare, hash and sort as `str`.
macro_rules! exact_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(EcoString);

        impl $name {
            /// The longest value held inline, without an allocation.
            pub const INLINE: usize = EcoString::INLINE_LIMIT;

            pub fn new(value: impl AsRef<str>) -> Self {
                Self(EcoString::from(value.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

exact_id!(
    /// The stable key of a user in the source (CSV key column, entryUUID, objectGUID,
    /// Entra object id). It never changes when the user is renamed.
    SourceKey
);
exact_id!(
    /// The stable key of a group in the source (its name, a `group_id` column, a DN's
    /// entryUUID, an Entra object id).
    GroupKey
);
exact_id!(
    /// The `id` the SCIM target assigned to a resource.
    ScimId
);

/// The comparison form of a name: NFC-normalised and lower-cased. ASCII (nearly
/// every directory value) takes a fast path without normalisation tables.
pub fn fold(value: &str) -> String {
    if value.is_ascii() {
        value.to_ascii_lowercase()
    } else {
        value.nfc().collect::<String>().to_lowercase()
    }
}

/// Compares two names by their folded forms, without allocating when both are
/// ASCII.
fn cmp_folded(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        let a = a.bytes().map(|c| c.to_ascii_lowercase());
        let b = b.bytes().map(|c| c.to_ascii_lowercase());
        a.cmp(b)
    } else {
        fold(a).cmp(&fold(b))
    }
}

fn hash_folded<H: Hasher>(value: &str, state: &mut H) {
    // Both paths feed the same bytes in the same chunks, so a value and its
    // non-ASCII look-alike ("K" and the Kelvin sign) that compare equal also
    // hash equal.
    if value.is_ascii() {
        feed(value.bytes().map(|c| c.to_ascii_lowercase()), state);
    } else {
        feed(fold(value).bytes(), state);
    }
    // As `str` does, so "ab" + "c" and "a" + "bc" hash apart in tuples.
    state.write_u8(0xff);
}

fn feed<H: Hasher>(bytes: impl Iterator<Item = u8>, state: &mut H) {
    let mut buf = [0u8; 64];
    let mut len = 0;
    for b in bytes {
        buf[len] = b;
        len += 1;
        if len == buf.len() {
            state.write(&buf);
            len = 0;
        }
    }
    if len > 0 {
        state.write(&buf[..len]);
    }
}

macro_rules! folded_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Holds the value as written (for display and for sending); `Eq`, `Ord`
        /// and `Hash` use the folded form.
        #[derive(Clone, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Box<str>);

        impl $name {
            pub fn new(value: impl Into<Box<str>>) -> Self {
                Self(value.into())
            }
            /// The value as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The comparison form.
            pub fn folded(&self) -> String {
                fold(&self.0)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0 == other.0 || cmp_folded(&self.0, &other.0) == Ordering::Equal
            }
        }
        impl Eq for $name {}

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                cmp_folded(&self.0, &other.0)
            }
        }

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                hash_folded(&self.0, state)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }
        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }
    };
}

/// A name borrowed from a record, compared and hashed exactly as the identity
/// types compare theirs: for indexes over many names the caller already holds,
/// without a copy of each.
#[derive(Clone, Copy, Debug)]
pub struct FoldedRef<'a>(pub &'a str);

impl PartialEq for FoldedRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || cmp_folded(self.0, other.0) == Ordering::Equal
    }
}
impl Eq for FoldedRef<'_> {}

impl Hash for FoldedRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_folded(self.0, state)
    }
}

folded_id!(
    /// A SCIM `userName`. Targets compare user names case-insensitively, so do we.
    UserName
);
folded_id!(
    /// An email address. Compared whole and case-insensitively (the local part
    /// too: no directory idsync serves tells two mailboxes apart by case).
    Email
);
folded_id!(
    /// A group's `displayName`, as the target shows it.
    GroupName
);
folded_id!(
    /// An email domain (`example.com`), for the target's verified domains.
    Domain
);

impl Email {
    /// The part after the last `@`; empty when there is none.
    pub fn domain(&self) -> Domain {
        Domain::new(self.0.rsplit_once('@').map_or("", |(_, d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn names_compare_case_insensitively_in_eq_hash_and_ord() {
        let a = UserName::new("Ada@Example.COM");
        let b = UserName::new("ada@example.com");
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(HashSet::from([a.clone()]).len(), 1);
        assert!(HashSet::from([a.clone()]).contains(&b));
        assert!(BTreeSet::from([a]).contains(&b));
        assert_ne!(UserName::new("ada"), UserName::new("adb"));
    }

    #[test]
    fn names_compare_after_unicode_normalisation() {
        // "é" precomposed (U+00E9) and as "e" + combining acute (U+0301).
        let composed = GroupName::new("Caf\u{e9} Team");
        let decomposed = GroupName::new("CAFE\u{301} team");
        assert_eq!(composed, decomposed);
        assert!(HashSet::from([composed]).contains(&decomposed));
        assert_eq!(UserName::new("ÄNNE@x.de"), UserName::new("änne@X.DE"));
        // The Kelvin sign folds to an ASCII "k": equal, so it must hash equal.
        let kelvin = UserName::new("\u{212a}im");
        assert_eq!(kelvin, UserName::new("KIM"));
        assert!(HashSet::from([kelvin]).contains(&UserName::new("kim")));
    }

    #[test]
    fn a_borrowed_name_hashes_like_an_owned_one() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        for (a, b) in [("Ada@X.com", "ada@x.COM"), ("Caf\u{e9}", "CAFE\u{301}")] {
            assert_eq!(FoldedRef(a), FoldedRef(b));
            assert_eq!(
                hasher.hash_one(FoldedRef(a)),
                hasher.hash_one(UserName::new(b))
            );
        }
    }

    #[test]
    fn names_keep_their_written_form() {
        let name = GroupName::new("Sales EMEA");
        assert_eq!(name.as_str(), "Sales EMEA");
        assert_eq!(name.to_string(), "Sales EMEA");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"Sales EMEA\"");
    }

    #[test]
    fn an_email_knows_its_domain() {
        assert_eq!(
            Email::new("a.b@Sub.Example.com").domain(),
            Domain::new("sub.example.COM")
        );
        assert_eq!(Email::new("no-at-sign").domain(), Domain::new(""));
    }

    #[test]
    fn order_is_the_folded_order() {
        let mut names = [UserName::new("b"), UserName::new("A"), UserName::new("a2")];
        names.sort();
        let sorted: Vec<&str> = names.iter().map(UserName::as_str).collect();
        assert_eq!(sorted, ["A", "a2", "b"]);
    }
}

//! [`UserAttrs`]: one user's managed attributes in a single allocation.
//!
//! A directory of a million users holds a million of these in the desired
//! snapshot, and again in a plan's creates. As a `BTreeMap` of owned strings
//! each took about 500 bytes (a tree node sized for eleven entries, and a heap
//! string per value); packed, a typical user's eight values take the length of
//! their text plus two bytes each.
//!
//! The layout is one `str`: for each present attribute, in [`UserAttr`] order,
//! its index as one ASCII byte, its value's length in ASCII-safe 6-bit digits
//! (bit 6 set on every digit but the last), then the value. A value equal to
//! the userName (`emails` is, in most directories) is its index with bit 6
//! set and nothing else: the userName is always first. Every byte of the
//! framing is ASCII, so the buffer is valid UTF-8 and each value is a plain
//! `&str` slice of it.

use std::borrow::Borrow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::UserAttr;
use super::attr::ATTRIBUTE_COUNT;

/// The width of a decoded table: one slot per managed attribute.
const WIDTH: usize = ATTRIBUTE_COUNT;

/// On an index byte: the value is the userName's (no length, no text follow).
const SAME_AS_USER_NAME: u8 = 0x40;
const _: () = assert!(WIDTH < SAME_AS_USER_NAME as usize);

/// The managed attributes of one user, each a single non-empty string, in
/// [`UserAttr`] order. Reads like a sorted map; a change rebuilds the
/// (small) buffer, which only the mapping and the executor's bookkeeping do.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct UserAttrs(Box<str>);

impl UserAttrs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `attr`.
    pub fn get(&self, attr: impl Borrow<UserAttr>) -> Option<&str> {
        let attr = *attr.borrow();
        self.iter().find(|(a, _)| *a == attr).map(|(_, v)| v)
    }

    pub fn contains_key(&self, attr: impl Borrow<UserAttr>) -> bool {
        self.get(attr).is_some()
    }

    /// Present attributes and their values, in attribute order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            rest: &self.0,
            user_name: "",
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = UserAttr> + '_ {
        self.iter().map(|(a, _)| a)
    }

    pub fn values(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `attr` to `value`; returns the value it had.
    pub fn insert(&mut self, attr: UserAttr, value: impl AsRef<str>) -> Option<String> {
        let mut table = self.table();
        let old = table[attr as usize].map(str::to_owned);
        table[attr as usize] = Some(value.as_ref());
        *self = Self::from_table(&table);
        old
    }

    /// Removes `attr`; returns the value it had.
    pub fn remove(&mut self, attr: impl Borrow<UserAttr>) -> Option<String> {
        let mut table = self.table();
        let old = table[*attr.borrow() as usize].take().map(str::to_owned);
        if old.is_some() {
            *self = Self::from_table(&table);
        }
        old
    }

    /// Keeps only the attributes `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(UserAttr, &str) -> bool) {
        let mut table = self.table();
        let mut changed = false;
        for (i, slot) in table.iter_mut().enumerate() {
            if let Some(v) = *slot
                && !keep(UserAttr::at(i), v)
            {
                *slot = None;
                changed = true;
            }
        }
        if changed {
            *self = Self::from_table(&table);
        }
    }

    /// The values by attribute index.
    fn table(&self) -> [Option<&str>; WIDTH] {
        let mut table = [None; WIDTH];
        for (attr, value) in self.iter() {
            table[attr as usize] = Some(value);
        }
        table
    }

    fn from_table(table: &[Option<&str>; WIDTH]) -> Self {
        let user_name = table[UserAttr::UserName as usize].filter(|v| !v.is_empty());
        let repeats = |i: usize, value: &str| i > 0 && user_name == Some(value);
        let len = table
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .map(|(i, v)| {
                if repeats(i, v) {
                    1
                } else {
                    1 + digits(v.len()) + v.len()
                }
            })
            .sum();
        let mut buf = String::with_capacity(len);
        for (i, value) in table.iter().enumerate() {
            if let Some(value) = value {
                if repeats(i, value) {
                    buf.push(char::from(i as u8 | SAME_AS_USER_NAME));
                    continue;
                }
                buf.push(char::from(i as u8));
                push_len(&mut buf, value.len());
                buf.push_str(value);
            }
        }
        Self(buf.into_boxed_str())
    }
}

/// How many 6-bit digits a length takes.
fn digits(mut len: usize) -> usize {
    let mut n = 1;
    while len >= 64 {
        len >>= 6;
        n += 1;
    }
    n
}

/// Most significant digit first; every digit but the last carries bit 6.
#[inline]
pub(super) fn push_len(buf: &mut String, len: usize) {
    if len < 64 {
        // One digit: most names and values.
        buf.push(char::from(len as u8));
        return;
    }
    let n = digits(len);
    for i in (0..n).rev() {
        let digit = ((len >> (6 * i)) & 0x3f) as u8;
        let more = if i > 0 { 0x40 } else { 0 };
        buf.push(char::from(digit | more));
    }
}

/// A length written by [`push_len`] at the start of `bytes`, and where the
/// text after it starts.
#[inline]
pub(super) fn read_len(bytes: &[u8]) -> (usize, usize) {
    if bytes[0] & 0x40 == 0 {
        // One digit: most names and values.
        return (usize::from(bytes[0]), 1);
    }
    let mut len = 0usize;
    let mut at = 0;
    loop {
        let digit = bytes[at];
        at += 1;
        len = (len << 6) | usize::from(digit & 0x3f);
        if digit & 0x40 == 0 {
            return (len, at);
        }
    }
}

/// The attributes of a [`UserAttrs`], in order.
pub struct Iter<'a> {
    rest: &'a str,
    /// The userName, once read (it comes first).
    user_name: &'a str,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (UserAttr, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.rest.as_bytes();
        let index = *bytes.first()?;
        if index & SAME_AS_USER_NAME != 0 {
            self.rest = &self.rest[1..];
            let attr = UserAttr::at(usize::from(index & !SAME_AS_USER_NAME));
            return Some((attr, self.user_name));
        }
        let (len, at) = read_len(&bytes[1..]);
        let at = at + 1;
        let value = &self.rest[at..at + len];
        self.rest = &self.rest[at + len..];
        let attr = UserAttr::at(usize::from(index));
        if attr == UserAttr::UserName {
            self.user_name = value;
        }
        Some((attr, value))
    }
}

impl<'a> IntoIterator for &'a UserAttrs {
    type Item = (UserAttr, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<V: AsRef<str>> FromIterator<(UserAttr, V)> for UserAttrs {
    /// The last value of an attribute given twice wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (UserAttr, V)>>(iter: I) -> Self {
        let pairs: Vec<(UserAttr, V)> = iter.into_iter().collect();
        let mut table = [None; WIDTH];
        for (attr, value) in &pairs {
            table[*attr as usize] = Some(value.as_ref());
        }
        Self::from_table(&table)
    }
}

impl<V: AsRef<str>> Extend<(UserAttr, V)> for UserAttrs {
    fn extend<I: IntoIterator<Item = (UserAttr, V)>>(&mut self, iter: I) {
        let more: Vec<(UserAttr, V)> = iter.into_iter().collect();
        let mut table = self.table();
        for (attr, value) in &more {
            table[*attr as usize] = Some(value.as_ref());
        }
        *self = Self::from_table(&table);
    }
}

impl<const N: usize, V: AsRef<str>> From<[(UserAttr, V); N]> for UserAttrs {
    fn from(pairs: [(UserAttr, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for UserAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a JSON object of attribute names to values, like the map it replaces:
/// plans and the state DB read and write this form.
impl Serialize for UserAttrs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (attr, value) in self {
            map.serialize_entry(&attr, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for UserAttrs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AttrsVisitor;
        impl<'de> Visitor<'de> for AttrsVisitor {
            type Value = UserAttrs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of SCIM attribute names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserAttrs, A::Error> {
                let mut pairs: Vec<(UserAttr, String)> = Vec::new();
                while let Some((attr, value)) = map.next_entry::<UserAttr, String>()? {
                    pairs.push((attr, value));
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(AttrsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_index_table_is_in_enum_order() {
        for attr in UserAttr::all() {
            assert_eq!(UserAttr::at(attr as usize), attr);
        }
        assert_eq!(UserAttr::all().count(), WIDTH);
    }

    #[test]
    fn lengths_of_every_size_round_trip() {
        for len in [0, 1, 63, 64, 65, 4095, 4096, 4097, 262_144, 300_000] {
            let value = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let attrs =
                UserAttrs::from([(UserAttr::Title, value.as_str()), (UserAttr::UserName, "a")]);
            assert_eq!(attrs.get(UserAttr::Title), Some(value.as_str()), "{len}");
            assert_eq!(attrs.get(UserAttr::UserName), Some("a"));
            assert_eq!(attrs.len(), 2);
        }
    }

    #[test]
    fn a_value_equal_to_the_user_name_takes_one_byte() {
        let name = "ada.lovelace@example.com";
        let attrs = UserAttrs::from([
            (UserAttr::UserName, name),
            (UserAttr::Email, name),
            (UserAttr::Title, "Engineer"),
        ]);
        assert_eq!(attrs.get(UserAttr::Email), Some(name));
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs.0.len(), (2 + name.len()) + 1 + (2 + "Engineer".len()));
        // Without a userName, or with another value, the value is written out.
        let mut other = attrs.clone();
        other.insert(UserAttr::Email, "ada@example.com");
        assert_eq!(other.get(UserAttr::Email), Some("ada@example.com"));
        other.remove(UserAttr::UserName);
        other.insert(UserAttr::Email, name);
        assert_eq!(other.get(UserAttr::Email), Some(name));
        assert_eq!(other.get(UserAttr::UserName), None);
    }

    fn attr() -> impl Strategy<Value = UserAttr> {
        (0..WIDTH).prop_map(UserAttr::at)
    }

    proptest! {
        /// Inserts, removals and a JSON round trip behave exactly as the
        /// `BTreeMap` these attributes used to be.
        #[test]
        fn behaves_as_a_sorted_map(
            // Values from two letters too: many equal the userName (or are empty).
            steps in prop::collection::vec(
                (attr(), prop::option::of(prop_oneof![".{0,80}", "[ab]{0,2}"])),
                0..40,
            )
        ) {
            let mut packed = UserAttrs::new();
            let mut model: BTreeMap<UserAttr, String> = BTreeMap::new();
            for (attr, value) in steps {
                match value {
                    Some(v) => prop_assert_eq!(packed.insert(attr, &v), model.insert(attr, v)),
                    None => prop_assert_eq!(packed.remove(attr), model.remove(&attr)),
                }
                let pairs: Vec<(UserAttr, &str)> = packed.iter().collect();
                let expected: Vec<(UserAttr, &str)> =
                    model.iter().map(|(a, v)| (*a, v.as_str())).collect();
                prop_assert_eq!(&pairs, &expected);
                prop_assert_eq!(packed.len(), model.len());
            }
            let json = serde_json::to_string(&packed).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&model).unwrap());
            prop_assert_eq!(serde_json::from_str::<UserAttrs>(&json).unwrap(), packed.clone());
            let rebuilt: UserAttrs = model.into_iter().collect();
            prop_assert_eq!(rebuilt, packed);
        }
    }
}

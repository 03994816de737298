//! A local mirror of a source that reports changes rather than a directory
//! (Microsoft Entra ID through Graph delta queries): the objects the mapping
//! needs, and the cursors to ask for what changed since. The adapter applies
//! changes to the loaded mirror; the engine commits what changed (found through
//! a digest taken at load) after the cycle applied.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SourceAttrs;
use super::attrs::push_len;
use super::record::{framed_pairs, take_framed};

/// A user's selected properties by name; a property never set (set to null,
/// or to an empty list) is absent. Multi-valued properties keep every value,
/// in order.
///
/// Held in one string, framed as [`SourceAttrs`] are (the name's length, the
/// name, the value's length, the value, for every value), properties in name
/// order: at 100,000 users this is one allocation a user instead of a map
/// node, a vector and two strings a property, and the directory copies it
/// whole into the record the mapping reads. In the state DB (and JSON) it is
/// an object of property names to lists of values, as the map it replaced.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct MirrorProps(Box<str>);

/// One property's new values, as a delta object gives them: `None` clears it.
pub type PropChange<'a> = (&'a str, Option<Vec<Cow<'a, str>>>);

fn push_pair(buf: &mut String, name: &str, value: &str) {
    push_len(buf, name.len());
    buf.push_str(name);
    push_len(buf, value.len());
    buf.push_str(value);
}

impl MirrorProps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every value with its property's name, properties in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        framed_pairs(&self.0)
    }

    /// Each property once, with its values' framed text (name and value
    /// pairs), in name order.
    fn properties(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &str = &self.0;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let start = rest;
            let (name, _) = take_framed(rest);
            let mut end = 0;
            while !rest.is_empty() {
                let (n, after_name) = take_framed(rest);
                if n != name {
                    break;
                }
                let (_, after_value) = take_framed(after_name);
                end += rest.len() - after_value.len();
                rest = after_value;
            }
            Some((name, &start[..end]))
        })
    }

    /// The values of the property `name` (exact spelling); none when absent.
    pub fn get<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.iter().any(|(n, _)| n == name)
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.properties().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies one delta object's properties: each named property is replaced
    /// by its values (or cleared by `None`); properties not named keep theirs.
    /// When a name comes twice, the later wins. One rebuild of the string.
    pub fn update(&mut self, changes: &mut [PropChange<'_>]) {
        if changes.is_empty() {
            return;
        }
        // Stable, so the later of two equal names stays later.
        changes.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::with_capacity(self.0.len() + 16 * changes.len());
        let mut old = self.properties().peekable();
        let mut i = 0;
        while i < changes.len() {
            let name = changes[i].0;
            while i + 1 < changes.len() && changes[i + 1].0 == name {
                i += 1;
            }
            while let Some((_, framed)) = old.next_if(|(n, _)| *n < name) {
                out.push_str(framed);
            }
            old.next_if(|(n, _)| *n == name);
            for value in changes[i].1.iter().flatten() {
                push_pair(&mut out, name, value);
            }
            i += 1;
        }
        for (_, framed) in old {
            out.push_str(framed);
        }
        self.0 = out.into_boxed_str();
    }

    /// The record the mapping reads for the user `id`: `id` first, then every
    /// property but one named `id` (in any case), as the source spells them.
    pub fn attrs(&self, id: &str) -> SourceAttrs {
        let mut text = String::with_capacity(self.0.len() + id.len() + 4);
        push_pair(&mut text, "id", id);
        if self.iter().any(|(n, _)| n.eq_ignore_ascii_case("id")) {
            for (name, value) in self.iter() {
                if !name.eq_ignore_ascii_case("id") {
                    push_pair(&mut text, name, value);
                }
            }
        } else {
            text.push_str(&self.0);
        }
        SourceAttrs::from_framed(text)
    }
}

impl MirrorProps {
    /// Reads a state DB row: the JSON object [`Serialize`] writes. Rows as
    /// idsync writes them (names in order, values without escapes) are read
    /// by a scan for quotes; anything else goes through the JSON parser.
    pub fn from_json(json: &str) -> Result<MirrorProps, serde_json::Error> {
        match scan_json(json) {
            Some(props) => Ok(props),
            None => serde_json::from_str(json),
        }
    }
}

impl MirrorProps {
    /// The framed text itself, as the state DB stores it (schema version 9
    /// on).
    pub fn as_framed(&self) -> &str {
        &self.0
    }

    /// Reads a state DB row written by [`MirrorProps::as_framed`]. The row
    /// comes from a file, so it is checked before it is used: every length
    /// within the text, on a character boundary and written as idsync writes
    /// it (the fewest digits), and property names in order, each property's
    /// values together. Anything else is an error saying where.
    pub fn from_framed(text: &str) -> Result<MirrorProps, String> {
        let mut at = 0;
        let mut last: Option<&str> = None;
        while at < text.len() {
            let name = checked_framed(text, &mut at)?;
            if last.is_some_and(|l| l > name) {
                return Err(format!(
                    "property {name:?} comes after {:?}: properties are out of order",
                    last.unwrap_or_default()
                ));
            }
            last = Some(name);
            checked_framed(text, &mut at)?;
        }
        Ok(MirrorProps(Box::from(text)))
    }
}

/// The most digits a length in a row may take (64^5: a gigabyte).
const MAX_LEN_DIGITS: usize = 5;

/// The framed string at `*at` in `text`, checked; `*at` moves past it.
fn checked_framed<'a>(text: &'a str, at: &mut usize) -> Result<&'a str, String> {
    let bytes = text.as_bytes();
    let start = *at;
    // Most lengths are under 64: one byte, the length itself. `get` checks
    // the end is within the text and on a character boundary.
    if let Some(&len) = bytes.get(start).filter(|&&b| b < 0x40)
        && let Some(framed) = text.get(start + 1..start + 1 + usize::from(len))
    {
        *at = start + 1 + usize::from(len);
        return Ok(framed);
    }
    let bad = |what: &str| format!("the length at byte {start} {what}");
    let mut len = 0usize;
    let mut digits = 0;
    loop {
        let Some(&digit) = bytes.get(*at) else {
            return Err(bad("is cut short"));
        };
        if digit >= 0x80 || digits == MAX_LEN_DIGITS {
            return Err(bad("is not one idsync writes"));
        }
        // A leading zero digit is not how idsync writes a length.
        if digits == 0 && digit == 0x40 {
            return Err(bad("is not one idsync writes"));
        }
        *at += 1;
        digits += 1;
        len = (len << 6) | usize::from(digit & 0x3f);
        if digit & 0x40 == 0 {
            break;
        }
    }
    if digits > 1 && len < 64 {
        return Err(bad("is not one idsync writes"));
    }
    let end = at
        .checked_add(len)
        .filter(|&end| end <= text.len())
        .ok_or_else(|| bad(&format!("({len}) runs past the end of the row")))?;
    if !text.is_char_boundary(end) {
        return Err(bad(&format!("({len}) ends inside a character")));
    }
    let framed = &text[*at..end];
    *at = end;
    Ok(framed)
}

/// The properties of `{"name":["value",…],…}` written without whitespace,
/// names in strictly ascending order, and no string with an escape or a
/// control character; `None` for anything else.
fn scan_json(json: &str) -> Option<MirrorProps> {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    // A string starting after the quote at `at`: its text and the index after
    // its closing quote.
    let string = |at: usize| -> Option<(&str, usize)> {
        let len = bytes[at..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        (bytes[at + len] == b'"').then(|| (&json[at..at + len], at + len + 1))
    };
    let expect = |at: usize, byte: u8| (bytes.get(at) == Some(&byte)).then_some(at + 1);
    let mut at = expect(0, b'{')?;
    let mut last: Option<&str> = None;
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            let (name, next) = string(expect(at, b'"')?)?;
            if last.is_some_and(|l| l >= name) {
                return None;
            }
            last = Some(name);
            at = expect(expect(next, b':')?, b'[')?;
            if bytes.get(at) == Some(&b']') {
                at += 1;
            } else {
                loop {
                    let (value, next) = string(expect(at, b'"')?)?;
                    push_pair(&mut out, name, value);
                    match bytes.get(next) {
                        Some(b',') => at = next + 1,
                        Some(b']') => {
                            at = next + 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    // Copied out at its size (shrinking the buffer would copy it as well).
    (at == bytes.len()).then(|| MirrorProps(Box::from(out.as_str())))
}

impl fmt::Debug for MirrorProps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// `{"name": ["value", …], …}`, names in order.
impl Serialize for MirrorProps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Values<'a>(&'a str);
        impl Serialize for Values<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(framed_pairs(self.0).map(|(_, v)| v))
            }
        }
        let mut map = serializer.serialize_map(None)?;
        for (name, framed) in self.properties() {
            map.serialize_entry(name, &Values(framed))?;
        }
        map.end()
    }
}

/// A string borrowed from the input when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Appends a property's list of values to the framed text, each under `name`.
struct ValuesSeed<'a> {
    name: &'a str,
    out: &'a mut String,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Text(value)) = seq.next_element()? {
            push_pair(self.out, self.name, &value);
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for MirrorProps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor;
        impl<'de> Visitor<'de> for PropsVisitor {
            type Value = MirrorProps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of property names to lists of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MirrorProps, A::Error> {
                let mut out = String::with_capacity(256);
                let mut last: Option<Text<'de>> = None;
                let mut in_order = true;
                while let Some(name) = map.next_key::<Text<'de>>()? {
                    in_order &= last.as_ref().is_none_or(|l| l.0 < name.0);
                    map.next_value_seed(ValuesSeed {
                        name: &name.0,
                        out: &mut out,
                    })?;
                    last = Some(name);
                }
                let props = MirrorProps(out.into_boxed_str());
                if in_order {
                    return Ok(props);
                }
                // Written by another hand: sort the properties (a repeated
                // name keeps its last values, as a map would).
                let mut sorted = MirrorProps::new();
                let mut changes: Vec<PropChange<'_>> = Vec::new();
                for (name, framed) in props.properties() {
                    let values = framed_pairs(framed).map(|(_, v)| Cow::Borrowed(v));
                    changes.push((name, Some(values.collect())));
                }
                sorted.update(&mut changes);
                Ok(sorted)
            }
        }
        deserializer.deserialize_map(PropsVisitor)
    }
}

impl<N: AsRef<str>, V: AsRef<str>, const K: usize> From<[(N, Vec<V>); K]> for MirrorProps {
    fn from(properties: [(N, Vec<V>); K]) -> Self {
        let mut props = MirrorProps::new();
        let mut changes: Vec<PropChange<'_>> = properties
            .iter()
            .map(|(n, vs)| {
                let values = vs.iter().map(|v| Cow::Borrowed(v.as_ref())).collect();
                (n.as_ref(), Some(values))
            })
            .collect();
        props.update(&mut changes);
        props
    }
}

/// A group: its name and its direct members' ids (users, groups or other
/// objects; resolved against the mirror when the directory is built).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MirrorGroup {
    pub display_name: Option<String>,
    pub members: MemberIds,
}

impl MirrorGroup {
    /// The members as the state DB stores them (schema version 10 on): each
    /// id framed as a property's value is (its length, then the id), in
    /// order.
    pub fn framed_members(&self) -> String {
        match &self.members {
            MemberIds::Framed(text) => text.to_string(),
            MemberIds::Set(set) => {
                let mut text = String::with_capacity(set.iter().map(|m| m.len() + 2).sum());
                for member in set {
                    push_len(&mut text, member.len());
                    text.push_str(member);
                }
                text
            }
        }
    }

    /// Reads members written by [`MirrorGroup::framed_members`]. The row
    /// comes from a file, so it is checked as a user's row is: every length
    /// within the text, on a character boundary and written as idsync writes
    /// it, and the ids in strictly ascending order (a set, as written).
    /// Anything else is an error saying where. The text is kept as it is.
    pub fn members_from_framed(text: &str) -> Result<MemberIds, String> {
        let mut at = 0;
        let mut last: Option<&str> = None;
        while at < text.len() {
            let member = checked_framed(text, &mut at)?;
            if let Some(last) = last.filter(|&l| l >= member) {
                return Err(format!(
                    "member {member:?} comes after {last:?}: members are out of order or repeated"
                ));
            }
            last = Some(member);
        }
        Ok(MemberIds::Framed(Box::from(text)))
    }
}

/// A group's direct members' ids, in ascending order, each once. A group
/// loaded from the state DB keeps the framed text the DB holds (one string
/// a group, where a set is a string a member: 200,000 of them for 1,000
/// groups of 200); the first change a delta round makes to it turns it into
/// a set. Both compare and hash as their ids in order.
#[derive(Clone, Debug)]
pub enum MemberIds {
    /// As [`MirrorGroup::framed_members`] writes them, checked.
    Framed(Box<str>),
    Set(BTreeSet<String>),
}

impl Default for MemberIds {
    fn default() -> Self {
        MemberIds::Set(BTreeSet::new())
    }
}

impl MemberIds {
    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (framed, set) = match self {
            MemberIds::Framed(text) => (framed_ids(text), None),
            MemberIds::Set(set) => (framed_ids(""), Some(set)),
        };
        framed.chain(set.into_iter().flatten().map(String::as_str))
    }

    pub fn len(&self) -> usize {
        match self {
            MemberIds::Framed(_) => self.iter().count(),
            MemberIds::Set(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            MemberIds::Framed(text) => text.is_empty(),
            MemberIds::Set(set) => set.is_empty(),
        }
    }

    /// The ids as a set, to change.
    fn set(&mut self) -> &mut BTreeSet<String> {
        if let MemberIds::Framed(text) = self {
            let set = framed_ids(text).map(str::to_string).collect();
            *self = MemberIds::Set(set);
        }
        match self {
            MemberIds::Set(set) => set,
            MemberIds::Framed(_) => unreachable!("made a set above"),
        }
    }

    /// Adds `id`; whether it was new.
    pub fn insert(&mut self, id: &str) -> bool {
        let set = self.set();
        !set.contains(id) && set.insert(id.to_string())
    }

    /// Removes `id`; whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        self.set().remove(id)
    }
}

/// The ids of framed member text.
fn framed_ids(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (id, after) = take_framed(rest);
        rest = after;
        Some(id)
    })
}

impl PartialEq for MemberIds {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for MemberIds {}

impl std::hash::Hash for MemberIds {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut count = 0usize;
        for id in self.iter() {
            id.hash(state);
            count += 1;
        }
        state.write_usize(count);
    }
}

impl From<BTreeSet<String>> for MemberIds {
    fn from(set: BTreeSet<String>) -> Self {
        MemberIds::Set(set)
    }
}

impl<const N: usize> From<[String; N]> for MemberIds {
    fn from(ids: [String; N]) -> Self {
        MemberIds::Set(ids.into())
    }
}

/// Everything kept between cycles for an incremental source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// Users by source id.
    pub users: BTreeMap<String, MirrorProps>,
    /// Groups by source id.
    pub groups: BTreeMap<String, MirrorGroup>,
    /// The committed cursor for users (a whole URL; opaque), `None` before the
    /// first committed round.
    pub users_link: Option<String>,
    /// The committed cursor for groups.
    pub groups_link: Option<String>,
    /// Identifies the property selection the links were made with: another
    /// selection needs a new full round.
    pub select_hash: String,
    /// When the last full round started (Unix seconds).
    pub full_at: Option<i64>,
}

/// What a mirror held when it was loaded, as one 64-bit digest per object:
/// enough to save only what a cycle changed, without keeping a second copy of
/// the whole mirror in memory. (A changed object whose digest collided with its
/// old one — odds of 2^-64 — would not be saved until it changes again.)
#[derive(Clone, Debug, Default)]
pub struct MirrorDigest {
    users: Digests,
    groups: Digests,
}

/// Objects' ids (in order, as the mirror's maps hold them) and digests: the
/// ids in one string, so that taking and dropping the digest of 100,000 users
/// is not 100,000 allocations, and comparing it with the mirror is one walk
/// of two sorted lists rather than a search per object.
#[derive(Clone, Debug, Default)]
struct Digests {
    ids: String,
    /// Where each id ends in `ids`, and its object's digest.
    entries: Vec<(usize, u64)>,
}

impl Digests {
    fn of<V: std::hash::Hash>(objects: &BTreeMap<String, V>) -> Digests {
        let mut ids = String::with_capacity(objects.keys().map(String::len).sum());
        let mut entries = Vec::with_capacity(objects.len());
        for (id, value) in objects {
            ids.push_str(id);
            entries.push((ids.len(), digest(value)));
        }
        Digests { ids, entries }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        let mut start = 0;
        self.entries.iter().map(move |&(end, digest)| {
            let id = &self.ids[start..end];
            start = end;
            (id, digest)
        })
    }

    /// How `now` differs from the objects digested: one walk of both, each
    /// in id order.
    fn diff<'a, V: std::hash::Hash>(&'a self, now: &'a BTreeMap<String, V>) -> MirrorDiff<'a, V> {
        use std::cmp::Ordering;
        let mut diff = MirrorDiff {
            removed: Vec::new(),
            changed: Vec::new(),
        };
        let mut old = self.iter().peekable();
        for (id, value) in now {
            while let Some((gone, _)) = old.next_if(|(o, _)| *o < id.as_str()) {
                diff.removed.push(gone);
            }
            let same = match old.peek() {
                Some(&(o, d)) if o.cmp(id) == Ordering::Equal => {
                    old.next();
                    d == digest(value)
                }
                _ => false,
            };
            if !same {
                diff.changed.push((id, value));
            }
        }
        diff.removed.extend(old.map(|(gone, _)| gone));
        diff
    }
}

/// What changed in one of a mirror's maps since its digest was taken, in id
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorDiff<'a, V> {
    /// Objects that were there and are gone.
    pub removed: Vec<&'a str>,
    /// Objects that are new, or changed.
    pub changed: Vec<(&'a str, &'a V)>,
}

/// One fixed seed, so digests taken at load and at save time agree.
const DIGEST_SEED: u64 = 0x1d5c_0ffe_e5ee_d5ed;

fn digest<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(DIGEST_SEED).hash_one(value)
}

impl MirrorDigest {
    /// The digest of `mirror`'s objects.
    pub fn of(mirror: &Mirror) -> MirrorDigest {
        MirrorDigest {
            users: Digests::of(&mirror.users),
            groups: Digests::of(&mirror.groups),
        }
    }

    /// The users removed from, added to or changed in `now` since the digest.
    pub fn users<'a>(&'a self, now: &'a Mirror) -> MirrorDiff<'a, MirrorProps> {
        self.users.diff(&now.users)
    }

    /// The groups removed from, added to or changed in `now` since the digest.
    pub fn groups<'a>(&'a self, now: &'a Mirror) -> MirrorDiff<'a, MirrorGroup> {
        self.groups.diff(&now.groups)
    }
}

impl Mirror {
    /// True when there is nothing to continue from.
    pub fn has_links(&self) -> bool {
        self.users_link.is_some() && self.groups_link.is_some()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The map these properties used to be.
    type OldProps = BTreeMap<String, Vec<String>>;

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "mail",
            "id",
            "ID",
            "jobTitle",
            "mailNickname",
            "é",
            "a",
        ])
        .prop_map(String::from)
    }

    fn change() -> impl Strategy<Value = (String, Option<Vec<String>>)> {
        (
            name(),
            prop::option::of(prop::collection::vec(".{0,70}", 0..3)),
        )
    }

    /// The old form without the lists a framed string cannot hold (an empty
    /// list is as absent to every reader).
    fn present(old: &OldProps) -> OldProps {
        old.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    proptest! {
        /// The walk of the digest and the mirror finds exactly the users and
        /// groups that a lookup of each one finds: gone, new or changed.
        #[test]
        fn the_digest_finds_what_changed_as_a_lookup_of_each_object_does(
            before in prop::collection::btree_map("[a-c]{0,3}", 0u8..3, 0..12),
            after in prop::collection::btree_map("[a-c]{0,3}", 0u8..3, 0..12),
        ) {
            let mirror = |objects: &BTreeMap<String, u8>| {
                let mut m = Mirror::default();
                for (id, v) in objects {
                    let value = v.to_string();
                    m.users.insert(id.clone(), [("mail", vec![value.as_str()])].into());
                    m.groups.insert(id.clone(), MirrorGroup {
                        display_name: Some(value.clone()),
                        members: MemberIds::default(),
                    });
                }
                m
            };
            let (old, now) = (mirror(&before), mirror(&after));
            let digest = MirrorDigest::of(&old);
            let removed: Vec<&str> = before
                .keys()
                .filter(|id| !after.contains_key(*id))
                .map(String::as_str)
                .collect();
            let changed: Vec<&str> = after
                .iter()
                .filter(|(id, v)| before.get(*id) != Some(v))
                .map(|(id, _)| id.as_str())
                .collect();
            let users = digest.users(&now);
            prop_assert_eq!(&users.removed, &removed);
            let ids: Vec<&str> = users.changed.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(&ids, &changed);
            prop_assert!(users.changed.iter().all(|(id, p)| now.users.get(*id) == Some(*p)));
            let groups = digest.groups(&now);
            prop_assert_eq!(&groups.removed, &removed);
            let ids: Vec<&str> = groups.changed.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(&ids, &changed);
            let unchanged = digest.users(&old);
            prop_assert!(unchanged.removed.is_empty() && unchanged.changed.is_empty());
        }
    }

    proptest! {
        /// Updates, the JSON form and the record the mapping reads are
        /// exactly as with the map of strings the mirror used to hold.
        #[test]
        fn behaves_as_the_map_it_replaced(
            objects in prop::collection::vec(prop::collection::vec(change(), 0..6), 0..8)
        ) {
            let mut packed = MirrorProps::new();
            let mut old = OldProps::new();
            for object in &objects {
                let mut changes: Vec<PropChange<'_>> = object
                    .iter()
                    .map(|(n, v)| {
                        let values = v.as_ref().map(|v| v.iter().map(|s| Cow::Borrowed(s.as_str())).collect());
                        (n.as_str(), values)
                    })
                    .collect();
                packed.update(&mut changes);
                for (n, v) in object {
                    match v {
                        Some(v) => { old.insert(n.clone(), v.clone()); }
                        None => { old.remove(n); }
                    }
                }
                let expected = present(&old);
                let pairs: Vec<(&str, &str)> = packed.iter().collect();
                let old_pairs: Vec<(&str, &str)> = expected
                    .iter()
                    .flat_map(|(n, vs)| vs.iter().map(move |v| (n.as_str(), v.as_str())))
                    .collect();
                prop_assert_eq!(&pairs, &old_pairs);
                prop_assert_eq!(packed.len(), expected.len());
                prop_assert_eq!(packed.is_empty(), expected.is_empty());
            }
            let expected = present(&old);
            let json = serde_json::to_string(&packed).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&expected).unwrap());
            prop_assert_eq!(&serde_json::from_str::<MirrorProps>(&json).unwrap(), &packed);
            prop_assert_eq!(&MirrorProps::from_json(&json).unwrap(), &packed);
            prop_assert_eq!(&MirrorProps::from_framed(packed.as_framed()).unwrap(), &packed);
            let spaced = serde_json::to_string_pretty(&packed).unwrap();
            prop_assert_eq!(&MirrorProps::from_json(&spaced).unwrap(), &packed);
            // Rows written with the old map (empty lists and all) load the same.
            let old_json = serde_json::to_string(&old).unwrap();
            prop_assert_eq!(&serde_json::from_str::<MirrorProps>(&old_json).unwrap(), &packed);
            prop_assert_eq!(&MirrorProps::from_json(&old_json).unwrap(), &packed);

            // The record: `id` first, then every property but `id` (any case).
            let mut record = SourceAttrs::new();
            record.push("id", ["u-1"]);
            for (n, vs) in &old {
                if !n.eq_ignore_ascii_case("id") {
                    record.push(n, vs);
                }
            }
            prop_assert_eq!(packed.attrs("u-1"), record);
        }
    }

    proptest! {
        #[test]
        fn any_row_text_reads_as_props_or_as_an_error_never_a_panic(text in "(.|[\\x00-\\x7f]){0,40}") {
            if let Ok(props) = MirrorProps::from_framed(&text) {
                // What reads is as idsync writes it: the same text again.
                let json = serde_json::to_string(&props).unwrap();
                let again = MirrorProps::from_json(&json).unwrap();
                prop_assert_eq!(again.as_framed(), text.as_str());
                let _ = props.attrs("u-1");
                prop_assert_eq!(props.len(), props.properties().count());
            }
        }

        #[test]
        fn any_members_text_reads_as_a_set_or_as_an_error_never_a_panic(text in "(.|[\\x00-\\x7f]){0,40}") {
            if let Ok(members) = MirrorGroup::members_from_framed(&text) {
                // What reads is as idsync writes it: the same text again.
                let group = MirrorGroup { display_name: None, members };
                prop_assert_eq!(group.framed_members(), text);
            }
        }

        #[test]
        fn members_read_back_as_written(members in prop::collection::btree_set(".{0,70}", 0..8)) {
            let group = MirrorGroup { display_name: None, members: members.clone().into() };
            let read = MirrorGroup::members_from_framed(&group.framed_members()).unwrap();
            prop_assert!(matches!(read, MemberIds::Framed(_)), "kept as read");
            prop_assert_eq!(read.iter().collect::<Vec<_>>(), members.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(&read, &group.members);
            prop_assert_eq!(read.len(), members.len());
            prop_assert_eq!(digest(&read), digest(&group.members), "framed or a set, one digest");
        }

        /// Members read from the DB and then changed by a delta round are
        /// the set changed the same way.
        #[test]
        fn framed_members_change_as_their_set_does(
            members in prop::collection::btree_set("[a-d]{1,2}", 0..8),
            changes in prop::collection::vec(("[a-d]{1,2}", any::<bool>()), 0..8),
        ) {
            let group = MirrorGroup { display_name: None, members: members.clone().into() };
            let mut framed = MirrorGroup::members_from_framed(&group.framed_members()).unwrap();
            let mut set = members;
            for (id, add) in &changes {
                if *add {
                    prop_assert_eq!(framed.insert(id), set.insert(id.clone()));
                } else {
                    prop_assert_eq!(framed.remove(id), set.remove(id));
                }
            }
            prop_assert_eq!(framed, MemberIds::from(set));
        }
    }

    #[test]
    fn a_damaged_framed_row_is_an_error_saying_where() {
        let props = MirrorProps::from([
            ("department", vec!["Dept 0"]),
            ("mail", vec!["a@x", "b@x"]),
            ("note", vec!["é".repeat(70).as_str()]),
        ]);
        let text = props.as_framed();
        assert_eq!(MirrorProps::from_framed(text).unwrap(), props);
        // Cut anywhere: an error, or (at the end of a property) fewer
        // properties; never a panic.
        for cut in (0..text.len()).filter(|&cut| text.is_char_boundary(cut)) {
            if let Ok(short) = MirrorProps::from_framed(&text[..cut]) {
                assert!(short.len() < props.len(), "cut at {cut}");
            }
        }
        let err = MirrorProps::from_framed(&text[..text.len() - 2]).unwrap_err();
        assert!(err.contains("runs past the end of the row"), "{err}");
        // Out of order.
        let swapped = MirrorProps::from([("b", vec!["1"])])
            .as_framed()
            .to_string()
            + MirrorProps::from([("a", vec!["2"])]).as_framed();
        let err = MirrorProps::from_framed(&swapped).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        // A length ending inside a character, and one no writer makes.
        let err = MirrorProps::from_framed("\u{1}a\u{1}é").unwrap_err();
        assert!(err.contains("inside a character"), "{err}");
        let err = MirrorProps::from_framed("\u{40}\u{1}a\u{0}").unwrap_err();
        assert!(err.contains("not one idsync writes"), "{err}");
        let err = MirrorProps::from_framed("é").unwrap_err();
        assert!(err.contains("not one idsync writes"), "{err}");
    }

    #[test]
    fn properties_written_out_of_order_or_twice_load_sorted_and_the_last_one_wins() {
        let json = r#"{"mail": ["a@x"], "cn": ["A", "B"], "mail": ["b@x"], "sn": []}"#;
        let props: MirrorProps = serde_json::from_str(json).unwrap();
        assert_eq!(
            props.iter().collect::<Vec<_>>(),
            [("cn", "A"), ("cn", "B"), ("mail", "b@x")]
        );
        assert_eq!(
            serde_json::to_string(&props).unwrap(),
            r#"{"cn":["A","B"],"mail":["b@x"]}"#
        );
        assert_eq!(MirrorProps::from_json(json).unwrap(), props);
        let escaped = MirrorProps::from_json(r#"{"t\u00e9":["\"q\""]}"#).unwrap();
        assert_eq!(escaped.get("té").collect::<Vec<_>>(), ["\"q\""]);
        for (json, pairs) in [
            ("{}", vec![]),
            (r#"{"a":[]}"#, vec![]),
            (
                r#"{"a":["x","é"],"b":[""]}"#,
                vec![("a", "x"), ("a", "é"), ("b", "")],
            ),
        ] {
            let props = MirrorProps::from_json(json).unwrap();
            assert_eq!(props.iter().collect::<Vec<_>>(), pairs, "{json}");
        }
    }

    #[test]
    fn a_row_that_is_not_a_map_of_lists_of_strings_is_refused() {
        for bad in [
            r#"{"mail": "a@x"}"#,
            r#"{"mail": [1]}"#,
            "[]",
            r#"{"mail": [null]}"#,
            r#"{"mail":"a@x"}"#,
            r#"{"mail":[1]}"#,
            r#"{"mail":["a"]"#,
            r#"{"mail":["a"]}x"#,
            r#"{"mail":["a]}"#,
            "{\"mail\":[\"a\u{1}\"]}",
            "",
        ] {
            assert!(serde_json::from_str::<MirrorProps>(bad).is_err(), "{bad}");
            assert!(MirrorProps::from_json(bad).is_err(), "{bad}");
        }
    }
}

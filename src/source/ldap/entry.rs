//! From search entries to users: the stable key (entryUUID text, or AD's binary
//! objectGUID in its canonical text form), attributes as the server names them
//! plus the entry's DN as `dn`, and the DN index groups are resolved against.

use ldap3::ResultEntry;
use ldap3::asn1::{PL, StructureTag};

use super::digest::{DigestSet, digest};
use super::error::{BadEntries, EntryProblem, KeyProblem, LdapError};
use super::{Flavour, LdapSettings};
use crate::model::{Origin, SourceAttrs, SourceKey, SourceUser};
use crate::source::problems::Problems;

/// A search result entry: its DN and its attributes in the order the server
/// sent them, each attribute's values as text when all of them are UTF-8 and
/// as bytes otherwise (AD's objectGUID and objectSid). What `ldap3`'s
/// `SearchEntry` holds, decoded from the BER tree without copying a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) dn: String,
    pub(super) attrs: Vec<(String, Vec<String>)>,
    pub(super) bin_attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl Entry {
    /// Decodes a SearchResultEntry (RFC 4511 section 4.5.2); `None` when it is
    /// not one or is malformed (a DN or attribute name that is not UTF-8).
    pub(super) fn decode(raw: ResultEntry) -> Option<Entry> {
        let mut parts = constructed(raw.0.match_id(4)?)?.into_iter();
        let dn = String::from_utf8(primitive(parts.next()?)?).ok()?;
        let list = constructed(parts.next()?)?;
        let mut entry = Entry {
            dn,
            attrs: Vec::with_capacity(list.len()),
            bin_attrs: Vec::new(),
        };
        for attribute in list {
            let mut attribute = constructed(attribute)?.into_iter();
            let name = String::from_utf8(primitive(attribute.next()?)?).ok()?;
            let raw_values = constructed(attribute.next()?)?;
            let mut text: Vec<String> = Vec::with_capacity(raw_values.len());
            let mut binary: Option<Vec<Vec<u8>>> = None;
            for value in raw_values {
                let bytes = primitive(value)?;
                match (&mut binary, String::from_utf8(bytes)) {
                    (None, Ok(value)) => text.push(value),
                    (None, Err(e)) => {
                        // One value is not text: the attribute is binary.
                        let mut all: Vec<Vec<u8>> =
                            text.drain(..).map(String::into_bytes).collect();
                        all.push(e.into_bytes());
                        binary = Some(all);
                    }
                    (Some(all), Ok(value)) => all.push(value.into_bytes()),
                    (Some(all), Err(e)) => all.push(e.into_bytes()),
                }
            }
            // A server sends each attribute once; were one sent twice, the
            // text values of the last one count (as with `ldap3`'s map), the
            // binary values of all of them.
            match binary {
                None => match entry.attrs.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, values)) => *values = text,
                    None => entry.attrs.push((name, text)),
                },
                Some(values) => match entry.bin_attrs.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, all)) => all.extend(values),
                    None => entry.bin_attrs.push((name, values)),
                },
            }
        }
        Some(entry)
    }
}

/// The elements of a constructed BER value.
fn constructed(tag: StructureTag) -> Option<Vec<StructureTag>> {
    match tag.payload {
        PL::C(elements) => Some(elements),
        PL::P(_) => None,
    }
}

/// The bytes of a primitive BER value.
fn primitive(tag: StructureTag) -> Option<Vec<u8>> {
    match tag.payload {
        PL::P(bytes) => Some(bytes),
        PL::C(_) => None,
    }
}

/// Formats an Active Directory objectGUID (16 bytes; the first three fields
/// little-endian, the last two as stored) as the canonical lowercase text that
/// AD tools show, e.g. `3d5fb375-9a8c-454d-a455-53c1b20e885d`.
pub(super) fn guid_text(bytes: &[u8]) -> Option<String> {
    let b: &[u8; 16] = bytes.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    ))
}

/// Accepts a GUID some servers or proxies return as text (`{…}` or bare).
fn guid_from_text(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let groups: Vec<&str> = t.split('-').collect();
    let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    shape_ok.then(|| t.to_ascii_lowercase())
}

/// Values of `name` in the entry, case-insensitively, text and binary.
fn values<'e>(entry: &'e Entry, name: &str) -> (&'e [String], &'e [Vec<u8>]) {
    let text = entry
        .attrs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default();
    let binary = entry
        .bin_attrs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default();
    (text, binary)
}

/// Active Directory: the RID of the user's primary group (usually 513, Domain
/// Users), a membership `member` does not show.
pub(super) const PRIMARY_GROUP_ID: &str = "primaryGroupID";
/// Active Directory: the object's security identifier (binary).
pub(super) const OBJECT_SID: &str = "objectSid";

/// An object's SID split into its domain part and its RID (the last
/// sub-authority). A primary group is the group of the user's own domain
/// whose RID is the user's `primaryGroupID`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Sid {
    /// Revision, authority and every sub-authority but the last, with the
    /// sub-authority count left out (it is one more than the domain's).
    pub(super) domain: Vec<u8>,
    pub(super) rid: u32,
}

impl Sid {
    /// Parses the binary form: revision (1 byte), sub-authority count (1),
    /// identifier authority (6, big-endian), sub-authorities (4 each,
    /// little-endian).
    pub(super) fn parse(bytes: &[u8]) -> Option<Sid> {
        let count = usize::from(*bytes.get(1)?);
        if count == 0 || bytes.len() != 8 + 4 * count {
            return None;
        }
        let last = bytes.len() - 4;
        let rid = u32::from_le_bytes(bytes[last..].try_into().ok()?);
        let mut domain = Vec::with_capacity(last - 1);
        domain.push(bytes[0]);
        domain.extend_from_slice(&bytes[2..last]);
        Some(Sid { domain, rid })
    }

    /// The SID of the entry's `objectSid` (binary, or text when its bytes
    /// happen to be valid UTF-8).
    pub(super) fn of(entry: &Entry) -> Option<Sid> {
        let (text, binary) = values(entry, OBJECT_SID);
        binary
            .iter()
            .map(Vec::as_slice)
            .chain(text.iter().map(|t| t.as_bytes()))
            .find_map(Sid::parse)
    }
}

fn is_guid_attribute(name: &str) -> bool {
    name.eq_ignore_ascii_case("objectGUID")
}

/// The entry's stable key from `attribute`, or why it has none.
pub(super) fn key_of(entry: &Entry, attribute: &str) -> Result<String, KeyProblem> {
    let (text, binary) = values(entry, attribute);
    let mut keys: Vec<String> = Vec::with_capacity(1);
    if is_guid_attribute(attribute) {
        for raw in binary {
            keys.push(guid_text(raw).ok_or(KeyProblem::GuidLength { len: raw.len() })?);
        }
        for value in text {
            // 16 random bytes are occasionally valid UTF-8 and then arrive as text.
            let key = guid_from_text(value)
                .or_else(|| guid_text(value.as_bytes()))
                .ok_or_else(|| KeyProblem::NotAGuid {
                    value: value.clone(),
                })?;
            keys.push(key);
        }
    } else {
        if !binary.is_empty() {
            return Err(KeyProblem::Binary);
        }
        keys.extend(text.iter().map(|v| v.trim().to_string()));
    }
    keys.retain(|k| !k.is_empty());
    match keys.len() {
        1 => Ok(keys.pop().unwrap_or_default()),
        0 => Err(KeyProblem::Missing),
        count => Err(KeyProblem::SeveralValues { count }),
    }
}

/// A user converted from its entry: the record, and (Active Directory) the
/// primary group its `primaryGroupID` names, which `member` does not list.
pub(super) struct ReadUser {
    pub(super) user: SourceUser,
    pub(super) primary_group: Option<Sid>,
}

/// Turns user entries into `SourceUser`s as the search streams them in,
/// keeping none: keys are checked for duplicates among 16-byte digests.
pub(super) struct UserReader {
    key_attribute: String,
    /// Read users' primary groups (Active Directory).
    primary_groups: bool,
    /// The digests of the keys read so far, at the position of their entry.
    keys: DigestSet,
    /// Entries read (with or without a problem).
    entries: usize,
    problems: Problems<EntryProblem>,
    url: String,
    base: String,
    filter: String,
}

impl UserReader {
    pub(super) fn new(settings: &LdapSettings, flavour: Flavour) -> Self {
        UserReader {
            key_attribute: settings.key_attribute.clone(),
            primary_groups: flavour == Flavour::ActiveDirectory,
            keys: DigestSet::default(),
            entries: 0,
            problems: Problems::default(),
            url: settings.url.clone(),
            base: settings.user_base_dn.clone(),
            filter: settings.user_filter.clone(),
        }
    }

    /// The user of `entry`; `None`, with the problem noted for
    /// [`UserReader::finish`], when it has no usable key or another entry's.
    pub(super) fn convert(&mut self, entry: Entry) -> Option<ReadUser> {
        self.entries += 1;
        let key = match key_of(&entry, &self.key_attribute) {
            Ok(key) => SourceKey::new(key),
            Err(problem) => {
                self.problems.push(EntryProblem::Key {
                    dn: entry.dn,
                    attribute: self.key_attribute.clone(),
                    problem,
                });
                return None;
            }
        };
        let (first, new) = self.keys.insert(digest(key.as_str()), self.entries);
        if !new {
            self.problems.push(EntryProblem::DuplicateKey {
                dn: entry.dn,
                attribute: self.key_attribute.clone(),
                key: key.as_str().to_string(),
                other: format!("entry {first} of the same search"),
            });
            return None;
        }
        let primary_group = if self.primary_groups {
            primary_group(&entry)
        } else {
            None
        };

        let Entry {
            dn,
            attrs: mut named,
            ..
        } = entry;
        let guid_key = is_guid_attribute(&self.key_attribute);
        // The binary objectGUID is replaced below by its text form; the SID
        // only served to find the primary group.
        named.retain(|(name, _)| {
            let replaced = guid_key && is_guid_attribute(name);
            let sid = name.eq_ignore_ascii_case(OBJECT_SID);
            !replaced && !sid
        });
        named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut source_attrs = SourceAttrs::with_capacity(named.len() + 2);
        source_attrs.push("dn", [&dn]);
        if guid_key {
            source_attrs.push(&self.key_attribute, [key.as_str()]);
        }
        for (name, values) in &named {
            source_attrs.push(name, values);
        }
        Some(ReadUser {
            user: SourceUser {
                key,
                origin: Origin::new(dn),
                attrs: source_attrs,
            },
            primary_group,
        })
    }

    /// Entries read so far.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    /// Fails with every problem noted, once the whole search was read.
    pub(super) fn finish(self) -> Result<(), LdapError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        let (problems, more) = self.problems.into_parts();
        Err(LdapError::BadUsers(Box::new(BadEntries {
            url: self.url,
            base: self.base,
            filter: self.filter,
            key_attribute: self.key_attribute,
            name_attribute: None,
            problems,
            more,
        })))
    }
}

/// The primary group of a user entry: its own SID's domain with the RID in
/// `primaryGroupID`.
fn primary_group(entry: &Entry) -> Option<Sid> {
    let (text, _) = values(entry, PRIMARY_GROUP_ID);
    let rid = text.iter().find_map(|v| v.trim().parse::<u32>().ok())?;
    let own = Sid::of(entry)?;
    Some(Sid {
        domain: own.domain,
        rid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::SearchEntry;

    /// S-1-5-21-1004336348-1177238915-682003330-RID, as AD stores it.
    fn sid_bytes(rid: u32) -> Vec<u8> {
        let mut b = vec![1, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1004336348, 1177238915, 682003330, rid] {
            b.extend_from_slice(&sub.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_users_primary_group_is_its_domain_with_the_primary_group_rid() {
        let user = entry(
            &[("primaryGroupID", &["513"])],
            &[("objectSid", &[&sid_bytes(1105)])],
        );
        let group = entry(&[], &[("objectSid", &[&sid_bytes(513)])]);
        let primary = primary_group(&user).unwrap();
        assert_eq!(primary.rid, 513);
        assert_eq!(Some(primary), Sid::of(&group));
        // Another domain's group with the same RID is not it.
        let mut other = sid_bytes(513);
        other[12] ^= 1;
        assert_ne!(primary_group(&user), Sid::parse(&other));
        // Malformed SIDs and missing values give nothing.
        assert_eq!(Sid::parse(&sid_bytes(5)[..27]), None);
        assert_eq!(Sid::parse(&[1, 0, 0, 0, 0, 0, 0, 5]), None);
        assert_eq!(
            primary_group(&entry(&[("primaryGroupID", &["513"])], &[])),
            None
        );
    }

    fn entry(text: &[(&str, &[&str])], binary: &[(&str, &[&[u8]])]) -> Entry {
        Entry {
            dn: "uid=x,ou=people,dc=example,dc=com".into(),
            attrs: text
                .iter()
                .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            bin_attrs: binary
                .iter()
                .map(|(n, v)| (n.to_string(), v.iter().map(|b| b.to_vec()).collect()))
                .collect(),
        }
    }

    /// A SearchResultEntry as the connection parses it off the wire.
    fn raw_entry(dn: &str, attrs: &[(&str, &[&[u8]])]) -> ResultEntry {
        use ldap3::asn1::TagClass;
        let octets = |bytes: &[u8]| StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(bytes.to_vec()),
        };
        let sequence = |id: u64, elements: Vec<StructureTag>| StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::C(elements),
        };
        let list = attrs
            .iter()
            .map(|(name, values)| {
                let values = sequence(17, values.iter().map(|v| octets(v)).collect());
                sequence(16, vec![octets(name.as_bytes()), values])
            })
            .collect();
        let entry = StructureTag {
            class: TagClass::Application,
            id: 4,
            payload: PL::C(vec![octets(dn.as_bytes()), sequence(16, list)]),
        };
        ResultEntry::new(entry)
    }

    #[test]
    fn entries_decode_as_ldap3_decodes_them() {
        let sid = sid_bytes(1105);
        let attrs: &[(&str, &[&[u8]])] = &[
            ("cn", &[b"J\xc3\xb6rg M\xc3\xbcller"]),
            ("mail", &[b"a@example.com", b"b@example.com"]),
            ("objectGUID", &[&GUID_BYTES]),
            ("objectSid", &[&sid]),
            ("empty", &[]),
        ];
        let dn = "CN=J\u{f6}rg,OU=Staff,DC=corp";
        let ours = Entry::decode(raw_entry(dn, attrs)).unwrap();
        let theirs = SearchEntry::construct(raw_entry(dn, attrs));
        assert_eq!(ours.dn, theirs.dn);
        let mut text = ours.attrs.clone();
        text.sort();
        let mut expected: Vec<_> = theirs.attrs.into_iter().collect();
        expected.sort();
        assert_eq!(text, expected);
        let mut binary = ours.bin_attrs.clone();
        binary.sort();
        let mut expected: Vec<_> = theirs.bin_attrs.into_iter().collect();
        expected.sort();
        assert_eq!(binary, expected);
        // In the server's order.
        let names: Vec<&str> = ours.attrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cn", "mail", "empty"]);
        assert_eq!(
            key_of(&ours, "objectGUID").unwrap(),
            guid_text(&GUID_BYTES).unwrap()
        );
        assert_eq!(Sid::of(&ours), Sid::parse(&sid));

        // Not an entry, or a DN that is not UTF-8: nothing.
        let mut not_entry = raw_entry(dn, attrs);
        not_entry.0.id = 5;
        assert_eq!(Entry::decode(not_entry), None);
        let mut bad_dn = raw_entry(dn, attrs);
        if let PL::C(parts) = &mut bad_dn.0.payload {
            parts[0].payload = PL::P(vec![0xff, 0xfe]);
        }
        assert_eq!(Entry::decode(bad_dn), None);
    }

    #[test]
    fn a_key_taken_by_an_earlier_entry_fails_the_read_naming_both() {
        let mut reader = UserReader {
            key_attribute: "entryUUID".into(),
            primary_groups: false,
            keys: DigestSet::default(),
            entries: 0,
            problems: Problems::default(),
            url: "ldap://127.0.0.1:389".into(),
            base: "dc=example".into(),
            filter: "(objectClass=inetOrgPerson)".into(),
        };
        let with_key = |dn: &str, key: &str| Entry {
            dn: dn.into(),
            attrs: vec![("entryUUID".into(), vec![key.into()])],
            bin_attrs: Vec::new(),
        };
        let first = reader.convert(with_key("uid=a,dc=example", "k1")).unwrap();
        assert_eq!(first.user.key.as_str(), "k1");
        assert!(reader.convert(with_key("uid=b,dc=example", "k2")).is_some());
        // The third entry has the first one's key: not handed over, and the
        // read fails once every entry was seen.
        assert!(reader.convert(with_key("uid=c,dc=example", "k1")).is_none());
        assert_eq!(reader.entries(), 3);
        let error = reader.finish().unwrap_err();
        let (text, hint) = (error.to_string(), error.hint());
        assert!(
            text.contains(
                "uid=c,dc=example: entryUUID k1 is also the key of entry 1 of the same search"
            ),
            "{text}"
        );
        // The earlier entry is named by its place, so the hint says how to
        // find both.
        assert!(
            hint.ends_with(
                "; both entries of a shared key are found with `ldapsearch -b \"dc=example\" \"(entryUUID=k1)\" dn`"
            ),
            "{hint}"
        );
    }

    const GUID_BYTES: [u8; 16] = [
        0x75, 0xb3, 0x5f, 0x3d, 0x8c, 0x9a, 0x4d, 0x45, 0xa4, 0x55, 0x53, 0xc1, 0xb2, 0x0e, 0x88,
        0x5d,
    ];

    #[test]
    fn object_guid_bytes_become_canonical_text() {
        // Data1 = 0x3d5fb375 (bytes 75 b3 5f 3d, little-endian), Data2 = 0x9a8c
        // (8c 9a), Data3 = 0x454d (4d 45), then bytes 8..16 as stored.
        assert_eq!(
            guid_text(&GUID_BYTES).as_deref(),
            Some("3d5fb375-9a8c-454d-a455-53c1b20e885d")
        );
        assert_eq!(guid_text(&GUID_BYTES[..15]), None);
    }

    #[test]
    fn object_guid_is_the_key_as_binary_or_text() {
        let e = entry(&[], &[("objectGUID", &[&GUID_BYTES])]);
        assert_eq!(
            key_of(&e, "objectGUID").unwrap(),
            "3d5fb375-9a8c-454d-a455-53c1b20e885d"
        );
        let e = entry(
            &[("objectguid", &["{3D5FB375-9A8C-454D-A455-53C1B20E885D}"])],
            &[],
        );
        assert_eq!(
            key_of(&e, "objectGUID").unwrap(),
            "3d5fb375-9a8c-454d-a455-53c1b20e885d"
        );
        // Sixteen bytes that happen to be valid UTF-8 arrive as text.
        let ascii: [u8; 16] = *b"ABCDEFGHIJKLMNOP";
        let e = entry(
            &[("objectGUID", &[std::str::from_utf8(&ascii).unwrap()])],
            &[],
        );
        assert_eq!(
            key_of(&e, "objectGUID").unwrap(),
            "44434241-4645-4847-494a-4b4c4d4e4f50"
        );
    }

    #[test]
    fn a_missing_or_ambiguous_key_is_explained() {
        let e = entry(&[("cn", &["x"])], &[]);
        assert_eq!(key_of(&e, "entryUUID").unwrap_err(), KeyProblem::Missing);
        let e = entry(&[("uid", &["a", "b"])], &[]);
        assert_eq!(
            key_of(&e, "uid").unwrap_err(),
            KeyProblem::SeveralValues { count: 2 }
        );
        let e = entry(&[], &[("objectGUID", &[&[1, 2, 3]])]);
        assert_eq!(
            key_of(&e, "objectGUID").unwrap_err(),
            KeyProblem::GuidLength { len: 3 }
        );
        let e = entry(&[("objectGUID", &["not-a-guid"])], &[]);
        assert!(matches!(
            key_of(&e, "objectGUID").unwrap_err(),
            KeyProblem::NotAGuid { .. }
        ));
        let e = entry(&[], &[("uid", &[b"a"])]);
        assert_eq!(key_of(&e, "uid").unwrap_err(), KeyProblem::Binary);
        // What the operator sees for one entry.
        let problem = EntryProblem::Key {
            dn: "uid=x,dc=example".into(),
            attribute: "uid".into(),
            problem: KeyProblem::SeveralValues { count: 2 },
        };
        assert_eq!(
            problem.to_string(),
            "uid=x,dc=example: it has 2 values of uid; the key must be single-valued"
        );
    }
}

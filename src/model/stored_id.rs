//! A SCIM id as the state holds it in memory, one per managed user: in 16
//! bytes and without an allocation when it is a UUID as targets write them.
//!
//! SCIM servers answer a create with long ids, most often random UUIDs (the
//! SCIM RFC's own examples; `scim2-server` writes 32 hex digits): past
//! [`ScimId`]'s 15 inline bytes, so a million users would cost a million heap
//! copies (56 bytes each) next to their 16-byte handles. A lowercase RFC 4122
//! UUID, with or without its hyphens, is held here as its 128 bits instead;
//! any other id is boxed (16 bytes more than a `ScimId` costs), and reads back
//! unchanged.

use std::fmt;
use std::num::NonZeroU8;
use std::ops::Deref;

use super::ScimId;

/// A SCIM id held compactly; reads back as the exact text it was made from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoredId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Uuid(Packed),
    /// Any other id (a pointer, so the enum stays 16 bytes).
    Other(Box<ScimId>),
}

/// A UUID's 16 bytes less byte 8, whose top two bits an RFC 4122 UUID fixes
/// at `10`: its other six bits and whether the text had hyphens go in `last`,
/// plus one, so `last` is never zero and `Repr` needs no tag of its own.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Packed {
    bytes: [u8; 15],
    last: NonZeroU8,
}

const _: () = assert!(std::mem::size_of::<StoredId>() == 16);

const HYPHENS: [usize; 4] = [8, 13, 18, 23];
const HYPHENATED: u8 = 0x40;

impl StoredId {
    pub fn new(id: &str) -> StoredId {
        match Packed::of(id) {
            Some(packed) => StoredId(Repr::Uuid(packed)),
            None => StoredId(Repr::Other(Box::new(ScimId::new(id)))),
        }
    }

    /// The id as operations carry it.
    pub fn to_scim_id(&self) -> ScimId {
        match &self.0 {
            Repr::Uuid(_) => ScimId::new(&*self.text()),
            Repr::Other(id) => (**id).clone(),
        }
    }

    /// The id's text, written out on the stack when it is packed.
    pub fn text(&self) -> IdText<'_> {
        match &self.0 {
            Repr::Uuid(packed) => packed.text(),
            Repr::Other(id) => IdText::Borrowed(id.as_str()),
        }
    }
}

impl Packed {
    fn of(id: &str) -> Option<Packed> {
        let text = id.as_bytes();
        let hyphenated = match text.len() {
            36 if HYPHENS.iter().all(|&i| text[i] == b'-') => true,
            32 => false,
            _ => return None,
        };
        let mut uuid = [0u8; 16];
        let mut at = 0;
        for (i, byte) in uuid.iter_mut().enumerate() {
            if hyphenated && matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            let (hi, lo) = (HEX[usize::from(text[at])], HEX[usize::from(text[at + 1])]);
            if hi | lo > 0xf {
                return None;
            }
            *byte = hi << 4 | lo;
            at += 2;
        }
        if uuid[8] & 0xc0 != 0x80 {
            return None;
        }
        let mut bytes = [0u8; 15];
        bytes[..8].copy_from_slice(&uuid[..8]);
        bytes[8..].copy_from_slice(&uuid[9..]);
        let last = (uuid[8] & 0x3f) | if hyphenated { HYPHENATED } else { 0 };
        Some(Packed {
            bytes,
            last: NonZeroU8::new(last + 1).expect("at most 0x7f + 1"),
        })
    }

    fn text(&self) -> IdText<'static> {
        let last = self.last.get() - 1;
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&self.bytes[..8]);
        uuid[8] = 0x80 | (last & 0x3f);
        uuid[9..].copy_from_slice(&self.bytes[8..]);
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 36];
        let mut at = 0;
        for (i, byte) in uuid.iter().enumerate() {
            if last & HYPHENATED != 0 && matches!(i, 4 | 6 | 8 | 10) {
                buf[at] = b'-';
                at += 1;
            }
            buf[at] = DIGITS[usize::from(byte >> 4)];
            buf[at + 1] = DIGITS[usize::from(byte & 0xf)];
            at += 2;
        }
        IdText::Written { buf, len: at as u8 }
    }
}

/// Each byte's value as a lowercase hex digit, 0xff where it is none (an
/// uppercase UUID is kept as written, boxed).
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut c = 0;
    while c < 10 {
        table[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        table[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    table
};

/// The text of a [`StoredId`].
pub enum IdText<'a> {
    Borrowed(&'a str),
    Written { buf: [u8; 36], len: u8 },
}

impl Deref for IdText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            IdText::Borrowed(s) => s,
            IdText::Written { buf, len } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).expect("hex digits and hyphens")
            }
        }
    }
}

impl From<ScimId> for StoredId {
    fn from(id: ScimId) -> StoredId {
        match Packed::of(id.as_str()) {
            Some(packed) => StoredId(Repr::Uuid(packed)),
            None => StoredId(Repr::Other(Box::new(id))),
        }
    }
}

impl From<&ScimId> for StoredId {
    fn from(id: &ScimId) -> StoredId {
        StoredId::new(id.as_str())
    }
}

impl StoredId {
    /// Whether this is the id `text`: the text is packed to compare (an id
    /// that packs is never held boxed), so nothing is written out.
    fn is(&self, text: &str) -> bool {
        match (&self.0, Packed::of(text)) {
            (Repr::Uuid(packed), Some(other)) => *packed == other,
            (Repr::Other(id), None) => id.as_str() == text,
            _ => false,
        }
    }
}

impl PartialEq<ScimId> for StoredId {
    fn eq(&self, other: &ScimId) -> bool {
        self.is(other.as_str())
    }
}

impl PartialEq<StoredId> for ScimId {
    fn eq(&self, other: &StoredId) -> bool {
        other == self
    }
}

impl PartialEq<str> for StoredId {
    fn eq(&self, other: &str) -> bool {
        self.is(other)
    }
}

impl PartialOrd for StoredId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoredId {
    /// The order of the texts, as [`ScimId`] sorts.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text().cmp(&other.text())
    }
}

impl fmt::Display for StoredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for StoredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.text())
    }
}

impl fmt::Display for IdText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_packed(id: &StoredId) -> bool {
        matches!(id.0, Repr::Uuid(_))
    }

    #[test]
    fn uuids_as_targets_write_them_are_packed_and_read_back_exactly() {
        for text in [
            "6f1d8a3c-5b2e-4c7d-9e0f-1a2b3c4d5e6f",
            "00000000-0000-4000-8000-000000000000",
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
            "0c2be2fa010ee4738a28cc8ea441270e",
        ] {
            let id = StoredId::new(text);
            assert!(is_packed(&id), "{text}");
            assert_eq!(&*id.text(), text);
            assert_eq!(id.to_scim_id(), ScimId::new(text));
            assert_eq!(id, ScimId::new(text));
            assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn other_ids_are_kept_as_written() {
        for text in [
            "",
            "id-1",
            "6F1D8A3C-5B2E-4C7D-9E0F-1A2B3C4D5E6F",
            // Byte 8 without the RFC 4122 variant bits.
            "6f1d8a3c-5b2e-4c7d-1e0f-1a2b3c4d5e6f",
            "6f1d8a3c-5b2e-4c7d-9e0f-1a2b3c4d5e6",
            "6f1d8a3c_5b2e-4c7d-9e0f-1a2b3c4d5e6f",
            "6f1d8a3c-5b2e-4c7d-9e0f-1a2b3c4d5e6g",
            "0c2be2fa-10ee-4738-a28c-c8ea441270e",
            "9067729b3d-ee533c18-538a-4cd3-a572-63fb863ed734",
        ] {
            let id = StoredId::new(text);
            assert!(!is_packed(&id), "{text}");
            assert_eq!(&*id.text(), text);
            assert_eq!(id.to_scim_id(), ScimId::new(text));
        }
    }

    #[test]
    fn the_hyphenated_and_plain_forms_of_one_uuid_stay_different_ids() {
        let hyphenated = StoredId::new("6f1d8a3c-5b2e-4c7d-9e0f-1a2b3c4d5e6f");
        let plain = StoredId::new("6f1d8a3c5b2e4c7d9e0f1a2b3c4d5e6f");
        assert_ne!(hyphenated, plain);
        assert_ne!(hyphenated, ScimId::new("6f1d8a3c5b2e4c7d9e0f1a2b3c4d5e6f"));
    }

    proptest! {
        #[test]
        fn any_id_reads_back_as_written_and_compares_as_its_text(
            a in "[0-9a-fA-F-]{0,40}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}",
            b in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}|.{0,20}",
        ) {
            let (x, y) = (StoredId::new(&a), StoredId::new(&b));
            prop_assert_eq!(&*x.text(), a.as_str());
            prop_assert_eq!(x.to_scim_id(), ScimId::new(&a));
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == ScimId::new(&b), a == b);
        }
    }
}

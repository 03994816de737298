//! 16-byte digests of text (keys, lower-cased DNs, folded uids) and a set of
//! them with a position each: what the read keeps of a million users instead
//! of their text. The digest is BLAKE3's first 16 bytes, so two different
//! values a directory holds (even chosen by someone who can write entries)
//! do not share one.

use hashbrown::HashTable;

/// BLAKE3's first 16 bytes of `text`.
pub(super) fn digest(text: &str) -> u128 {
    let hash = blake3::hash(text.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Distinct digests, each with the position it was given when first
/// inserted: 16 bytes a digest, 4 more a position, and a table of 4-byte
/// indexes.
#[derive(Debug, Default)]
pub(super) struct DigestSet {
    digests: Vec<u128>,
    positions: Vec<u32>,
    table: HashTable<u32>,
}

/// The table's hash of a digest: its low bits are already uniform.
fn hash(digest: u128) -> u64 {
    digest as u64
}

impl DigestSet {
    /// The position `digest` was inserted with, when it was.
    pub(super) fn get(&self, digest: u128) -> Option<usize> {
        self.table
            .find(hash(digest), |&i| self.digests[i as usize] == digest)
            .map(|&i| self.positions[i as usize] as usize)
    }

    /// Inserts `digest` at `position` unless it is in already: the position
    /// it has, and whether it is new.
    pub(super) fn insert(&mut self, digest: u128, position: usize) -> (usize, bool) {
        if let Some(first) = self.get(digest) {
            return (first, false);
        }
        let index = self.digests.len() as u32;
        self.digests.push(digest);
        self.positions.push(position as u32);
        let digests = &self.digests;
        self.table
            .insert_unique(hash(digest), index, |&i| hash(digests[i as usize]));
        (position, true)
    }

    /// How many digests it holds.
    pub(super) fn len(&self) -> usize {
        self.digests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_keeps_the_position_it_was_first_inserted_at() {
        let mut set = DigestSet::default();
        assert_eq!(set.insert(digest("uid=a,dc=x"), 1), (1, true));
        assert_eq!(set.insert(digest("uid=b,dc=x"), 2), (2, true));
        assert_eq!(set.insert(digest("uid=a,dc=x"), 3), (1, false));
        assert_eq!(set.get(digest("uid=b,dc=x")), Some(2));
        assert_eq!(set.get(digest("uid=c,dc=x")), None);
        assert_eq!(set.len(), 2);
        // Many entries: the table grows and still finds each.
        for i in 0..10_000 {
            set.insert(digest(&format!("uid=u{i},dc=x")), 10 + i);
        }
        for i in (0..10_000).step_by(997) {
            assert_eq!(set.get(digest(&format!("uid=u{i},dc=x"))), Some(10 + i));
        }
    }
}

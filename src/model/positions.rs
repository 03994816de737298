//! Hash tables of records' positions, built in one go.
//!
//! A record set of a million users is indexed by a table of 4-byte positions
//! (the keys stay in the records). Filled in the records' order, each insert
//! lands on a slot anywhere in ten megabytes of table and misses the cache
//! twice, once for the control byte and once for the slot. Filled in the
//! order of the slots, each insert meets memory the one before it touched:
//! a state load of a million users took about a quarter less time.

use hashbrown::HashTable;

/// A table of `hashed`'s positions (each a record's hash and its position),
/// found again by a record's hash.
///
/// Before filling, the records that share a hash are checked with
/// `same(i, j)` (whether the records at `i` and `j` have one key): the first
/// pair found that does is returned instead, as `(earlier, later)` positions.
/// The table has room for `hashed.len()` positions; `rehash` gives a
/// position's hash should it grow later.
pub fn table_in_slot_order(
    mut hashed: Vec<(u64, u32)>,
    mut same: impl FnMut(u32, u32) -> bool,
    rehash: impl Fn(&u32) -> u64,
) -> Result<HashTable<u32>, (u32, u32)> {
    let mut table = HashTable::with_capacity(hashed.len());
    // A table's slots number a power of two, seven eighths of them usable,
    // and a hash's low bits pick the slot where its probe starts. The order
    // only matters for speed: any order fills the same table.
    let slots = (table.capacity() / 7 * 8).max(1).next_power_of_two() as u64;
    hashed.sort_unstable_by_key(|&(hash, _)| (hash & (slots - 1), hash));
    // Records of one key hash alike, so they sit side by side (among the
    // rare others that share their hash).
    for run in hashed
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
    {
        for (n, &(_, i)) in run.iter().enumerate() {
            if let Some(&(_, j)) = run[n + 1..].iter().find(|&&(_, j)| same(i, j)) {
                return Err((i.min(j), i.max(j)));
            }
        }
    }
    for (hash, position) in hashed {
        table.insert_unique(hash, position, &rehash);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use crate::model::FastHash;

    fn hashed(keys: &[String], hasher: &FastHash) -> Vec<(u64, u32)> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| (hasher.hash_one(k), i as u32))
            .collect()
    }

    #[test]
    fn every_position_is_found_by_its_key_and_no_other() {
        let hasher = FastHash::default();
        for n in [0, 1, 3, 7, 8, 100, 5000] {
            let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
            let table = table_in_slot_order(
                hashed(&keys, &hasher),
                |i, j| keys[i as usize] == keys[j as usize],
                |&i| hasher.hash_one(&keys[i as usize]),
            )
            .unwrap();
            assert_eq!(table.len(), n);
            for (i, key) in keys.iter().enumerate() {
                let found = table.find(hasher.hash_one(key), |&j| keys[j as usize] == *key);
                assert_eq!(found, Some(&(i as u32)), "{key}");
            }
            assert!(
                table
                    .find(hasher.hash_one("nobody"), |&j| keys[j as usize] == "nobody")
                    .is_none()
            );
        }
    }

    #[test]
    fn a_key_given_twice_is_returned_as_its_two_positions() {
        let hasher = FastHash::default();
        let keys: Vec<String> = ["a", "b", "c", "b", "d"].map(String::from).to_vec();
        let found = table_in_slot_order(
            hashed(&keys, &hasher),
            |i, j| keys[i as usize] == keys[j as usize],
            |&i| hasher.hash_one(&keys[i as usize]),
        );
        assert_eq!(found.unwrap_err(), (1, 3));
    }

    #[test]
    fn records_sharing_a_hash_are_told_apart_by_their_keys() {
        // Every record hashed alike: the check compares each pair of the run.
        let keys: Vec<String> = ["a", "b", "c", "a"].map(String::from).to_vec();
        let all_alike: Vec<(u64, u32)> = (0..keys.len() as u32).map(|i| (42, i)).collect();
        let found = table_in_slot_order(
            all_alike.clone(),
            |i, j| keys[i as usize] == keys[j as usize],
            |_| 42,
        );
        assert_eq!(found.unwrap_err(), (0, 3));
        let distinct = &keys[..3];
        let table = table_in_slot_order(
            all_alike[..3].to_vec(),
            |i, j| distinct[i as usize] == distinct[j as usize],
            |_| 42,
        )
        .unwrap();
        for (i, key) in distinct.iter().enumerate() {
            assert_eq!(
                table.find(42, |&j| distinct[j as usize] == *key),
                Some(&(i as u32))
            );
        }
    }
}

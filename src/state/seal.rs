//! The seal a writing run leaves beside the state DB when it closes it
//! cleanly (`idsync.db.sealed`): the file's size and a BLAKE3 hash of every
//! byte SQLite left in it, and when SQLite's `quick_check` last read it
//! whole. The next run that writes reads the file and hashes it: when the
//! bytes are exactly those sealed (and no write-ahead log holds more), the
//! file is the one SQLite wrote after a check passed, and the check is not run
//! again until a day has passed since it last was. Anything that changed a
//! byte — a bad disk, another program, a restored backup, a run that did not
//! end cleanly — fails the comparison, and the full check runs.
//!
//! Reading and hashing the file costs about a third of `quick_check`'s walk
//! of every page; a run pays it twice (at open, and to seal at close), and
//! the full check once a day and after anything but a clean close.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::beside;

/// The first line of a seal.
const HEADING: &str = "idsync state DB seal v1";
/// How long a passed `quick_check` stands for a file sealed since.
pub(super) const CHECK_STANDS_SECS: u64 = 24 * 60 * 60;

/// The seal file of the DB at `db`.
pub(super) fn path(db: &Path) -> PathBuf {
    beside(db, ".sealed")
}

/// What a seal records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seal {
    pub size: u64,
    pub hash: [u8; 32],
    /// When `quick_check` last read the whole file (seconds since 1970).
    pub checked_at: u64,
}

/// Seconds since 1970, now.
pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Seal {
    fn to_text(&self) -> String {
        format!(
            "{HEADING}\nsize {}\nblake3 {}\nchecked_at {}\n",
            self.size,
            blake3::Hash::from_bytes(self.hash).to_hex(),
            self.checked_at
        )
    }

    /// A seal's text; `None` for anything else (such a file only means the
    /// full check runs).
    fn parse(text: &str) -> Option<Seal> {
        let mut lines = text.lines();
        if lines.next()? != HEADING {
            return None;
        }
        let mut field = |name: &str| {
            lines
                .next()?
                .strip_prefix(name)?
                .strip_prefix(' ')
                .map(str::to_string)
        };
        let size = field("size")?.parse().ok()?;
        let hash = blake3::Hash::from_hex(field("blake3")?).ok()?;
        let checked_at = field("checked_at")?.parse().ok()?;
        Some(Seal {
            size,
            hash: *hash.as_bytes(),
            checked_at,
        })
    }
}

/// The size and BLAKE3 hash of the file at `db`, read in pieces.
fn hash_file(db: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = std::fs::File::open(db)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

/// A write-ahead log beside `db` that holds anything: the DB file alone is
/// then not all of the DB.
fn log_holds_writes(db: &Path) -> bool {
    match std::fs::symlink_metadata(beside(db, "-wal")) {
        Ok(meta) => meta.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// When `quick_check` last passed on the DB at `db`, if the file is byte for
/// byte what the seal beside it records, no log holds more, and that check
/// still stands (within [`CHECK_STANDS_SECS`] of `now`). `None` means: run
/// the check. Nothing here is an error; whatever cannot be read is unsealed.
pub(super) fn still_sealed(db: &Path, now: u64) -> Option<u64> {
    let text = std::fs::read_to_string(path(db)).ok()?;
    let seal = Seal::parse(&text)?;
    if now.saturating_sub(seal.checked_at) >= CHECK_STANDS_SECS || seal.checked_at > now {
        return None;
    }
    if log_holds_writes(db) || std::fs::metadata(db).ok()?.len() != seal.size {
        return None;
    }
    let (size, hash) = hash_file(db).ok()?;
    (size == seal.size && hash == seal.hash).then_some(seal.checked_at)
}

/// Seals the DB at `db`, which its last connection has just closed (the
/// caller holds the lock), recording `checked_at`. Nothing is sealed while a
/// log beside it holds writes (a reader kept it open). Written under a
/// temporary name and renamed: a seal is whole or absent. A seal that cannot
/// be written only means the next run checks the file in full.
pub(super) fn seal(db: &Path, checked_at: u64) -> std::io::Result<bool> {
    // A seal left from before no longer matches; removed first so that one
    // that cannot be replaced is not left standing.
    match std::fs::remove_file(path(db)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if log_holds_writes(db) {
        return Ok(false);
    }
    let (size, hash) = hash_file(db)?;
    let seal = Seal {
        size,
        hash,
        checked_at,
    };
    let partial = beside(db, ".sealed.partial");
    let mut file = super::create_private(&partial, true)?;
    file.write_all(seal.to_text().as_bytes())?;
    drop(file);
    std::fs::rename(&partial, path(db))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_reads_back_and_anything_else_is_no_seal() {
        let seal = Seal {
            size: 4096,
            hash: [7; 32],
            checked_at: 1_700_000_000,
        };
        assert_eq!(Seal::parse(&seal.to_text()), Some(seal.clone()));
        let text = seal.to_text();
        for broken in [
            String::new(),
            text.replace("v1", "v2"),
            text.replace("size 4096", "size -1"),
            text.replace("blake3 07", "blake3 zz"),
            text.replace("checked_at", "checked"),
            text.lines().take(3).collect::<Vec<_>>().join("\n"),
        ] {
            assert_eq!(Seal::parse(&broken), None, "{broken:?}");
        }
    }

    #[test]
    fn a_sealed_file_stands_only_while_every_byte_is_the_same_and_the_check_is_recent() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("idsync.db");
        std::fs::write(&db, vec![1u8; 3 * 4096]).unwrap();
        let now = now_secs();
        assert_eq!(still_sealed(&db, now), None, "no seal yet");
        assert!(seal(&db, now - 60).unwrap());
        assert_eq!(still_sealed(&db, now), Some(now - 60));
        // A day after the check, the check runs again.
        assert_eq!(still_sealed(&db, now - 60 + CHECK_STANDS_SECS), None);
        // One bit of one byte, the size unchanged.
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[5000] ^= 0x10;
        std::fs::write(&db, &bytes).unwrap();
        assert_eq!(still_sealed(&db, now), None, "a flipped bit");
        bytes[5000] ^= 0x10;
        std::fs::write(&db, &bytes).unwrap();
        assert_eq!(
            still_sealed(&db, now),
            Some(now - 60),
            "the same bytes again"
        );
        // A log that holds writes: the file alone is not the DB.
        std::fs::write(beside(&db, "-wal"), b"frames").unwrap();
        assert_eq!(still_sealed(&db, now), None);
        assert!(!seal(&db, now).unwrap(), "not sealed beside a log");
        assert!(!path(&db).exists(), "the old seal is gone");
        std::fs::write(beside(&db, "-wal"), b"").unwrap();
        assert!(seal(&db, now).unwrap(), "an empty log holds nothing");
        assert_eq!(still_sealed(&db, now), Some(now));
        // Cut short.
        std::fs::write(&db, &bytes[..4096]).unwrap();
        assert_eq!(still_sealed(&db, now), None);
    }
}

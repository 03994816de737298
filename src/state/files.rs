//! The files beside a state DB, looked at before SQLite opens it: a
//! write-ahead log (`-wal`) that went missing after a run left one. SQLite
//! would open the DB file alone without a word — and reset the shared-memory
//! index (`-shm`) that shows the log is missing — and so read an older state
//! than the last run recorded (after a first run, often an empty one).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::StateError;

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`, `.lock`).
pub(super) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `iVersion` of a WAL index header (SQLite's walformat: 3007000).
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// One copy of the WAL index header, in bytes; two copies come first.
const WAL_INDEX_HEADER: usize = 48;
/// Where `nBackfill` (frames already copied into the DB file) sits.
const BACKFILL_AT: usize = 2 * WAL_INDEX_HEADER;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    // The index is written in the machine's own byte order.
    u32::from_ne_bytes(word)
}

/// The frames a WAL index (the start of a `-shm` file) says the log holds
/// beyond what was copied into the DB file: `None` when the bytes are not a
/// valid, initialised index (its two header copies must agree).
pub(super) fn uncopied_frames(shm: &[u8]) -> Option<u32> {
    if shm.len() < BACKFILL_AT + 4 {
        return None;
    }
    let (first, second) = (
        &shm[..WAL_INDEX_HEADER],
        &shm[WAL_INDEX_HEADER..BACKFILL_AT],
    );
    let initialised = first[12] == 1;
    if first != second || u32_at(first, 0) != WAL_INDEX_VERSION || !initialised {
        return None;
    }
    let max_frame = u32_at(first, 16);
    let backfilled = u32_at(shm, BACKFILL_AT);
    Some(max_frame.saturating_sub(backfilled))
}

/// Fails when the DB's `-wal` file is missing although its `-shm` index
/// says the log held writes not yet copied into the DB file. Without a
/// `-shm` (a clean close removes both; so does a restore) nothing is known,
/// and a `-wal` that is there, even cut short by a power cut, is SQLite's to
/// recover.
pub(super) fn check_wal(path: &Path) -> Result<(), StateError> {
    let wal = beside(path, "-wal");
    if std::fs::symlink_metadata(&wal).is_ok() {
        return Ok(());
    }
    let shm = beside(path, "-shm");
    let mut head = Vec::with_capacity(BACKFILL_AT + 4);
    match std::fs::File::open(&shm) {
        Ok(file) => {
            file.take((BACKFILL_AT + 4) as u64)
                .read_to_end(&mut head)
                .map_err(|e| super::io(&shm, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::io(&shm, e)),
    }
    match uncopied_frames(&head) {
        Some(frames) if frames > 0 => Err(StateError::WalMissing {
            path: path.to_path_buf(),
            frames,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(max_frame: u32, backfilled: u32) -> Vec<u8> {
        let mut header = vec![0u8; WAL_INDEX_HEADER];
        header[..4].copy_from_slice(&WAL_INDEX_VERSION.to_ne_bytes());
        header[12] = 1;
        header[14..16].copy_from_slice(&4096u16.to_ne_bytes());
        header[16..20].copy_from_slice(&max_frame.to_ne_bytes());
        let mut shm = header.clone();
        shm.extend(&header);
        shm.extend(backfilled.to_ne_bytes());
        shm.resize(32 * 1024, 0);
        shm
    }

    #[test]
    fn an_index_tells_the_frames_not_yet_copied_and_nothing_else_counts() {
        assert_eq!(uncopied_frames(&index(55, 0)), Some(55));
        assert_eq!(uncopied_frames(&index(55, 55)), Some(0));
        assert_eq!(uncopied_frames(&index(0, 0)), Some(0));
        // Not an index: short, the copies disagree, another version, not
        // initialised.
        assert_eq!(uncopied_frames(&index(55, 0)[..90]), None);
        let mut torn = index(55, 0);
        torn[WAL_INDEX_HEADER + 16] ^= 1;
        assert_eq!(uncopied_frames(&torn), None);
        let mut other = index(55, 0);
        other[0] ^= 1;
        other[WAL_INDEX_HEADER] ^= 1;
        assert_eq!(uncopied_frames(&other), None);
        let mut uninitialised = index(55, 0);
        uninitialised[12] = 0;
        uninitialised[WAL_INDEX_HEADER + 12] = 0;
        assert_eq!(uncopied_frames(&uninitialised), None);
        assert_eq!(uncopied_frames(&[]), None);
    }

    #[test]
    fn a_missing_log_is_an_error_only_when_its_index_shows_uncopied_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("idsync.db");
        // Nothing beside the DB: a clean close, or a restore.
        check_wal(&db).unwrap();
        std::fs::write(beside(&db, "-shm"), index(12, 0)).unwrap();
        let err = check_wal(&db).unwrap_err();
        assert!(
            matches!(err, StateError::WalMissing { frames: 12, .. }),
            "{err:?}"
        );
        // A log that is there (even empty) is SQLite's to read.
        std::fs::write(beside(&db, "-wal"), b"").unwrap();
        check_wal(&db).unwrap();
        std::fs::remove_file(beside(&db, "-wal")).unwrap();
        // Everything in it was copied: nothing is lost without it.
        std::fs::write(beside(&db, "-shm"), index(12, 12)).unwrap();
        check_wal(&db).unwrap();
        // An index that is not one proves nothing.
        std::fs::write(beside(&db, "-shm"), b"not an index").unwrap();
        check_wal(&db).unwrap();
    }
}

//! The seal a writing run leaves beside the state DB when it closes it
//! cleanly (`idsync.db.sealed`): the file's size, a BLAKE3 hash of every byte
//! SQLite left in it, and when SQLite's `quick_check` last read it whole. The
//! next run that writes reads the file and hashes it: when the bytes are
//! exactly those sealed (and no write-ahead log holds more), the file is the
//! one SQLite wrote after a check passed, and the check is not run again
//! until a day has passed since it last was. Anything that changed a byte — a
//! bad disk, another program, a restored backup, a run that did not end
//! cleanly — fails the comparison, and the full check runs.
//!
//! The file is hashed in chunks of [`CHUNK`] bytes, and the seal's hash is
//! the hash of the chunks' hashes. A run reads and hashes the whole file once
//! (a fraction of `quick_check`'s walk of every page): at open when a seal
//! could stand, and then at close it hashes again only the chunks holding the
//! pages its write-ahead log wrote back, and those the file grew or shrank
//! by; without such a seal, at close. Whatever the bookkeeping of
//! written pages misses — a page written outside the log, another program
//! writing during the run — leaves a hash in the seal that the file's bytes do
//! not match, so the next run checks in full: a slip can cost a check, never
//! skip one.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::files::beside;

/// The first line of a seal (v1 sealed a hash of the whole file at once; such
/// a seal reads as none, and the next run checks in full).
const HEADING: &str = "idsync state DB seal v2";
/// How long a passed `quick_check` stands for a file sealed since.
pub(super) const CHECK_STANDS_SECS: u64 = 24 * 60 * 60;
/// The piece of the file hashed on its own: 16 pages of SQLite's default
/// 4 KiB, and never less than its largest page (64 KiB).
pub(super) const CHUNK: usize = 64 * 1024;

/// The seal file of the DB at `db`.
pub(super) fn path(db: &Path) -> PathBuf {
    beside(db, ".sealed")
}

/// What a seal records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seal {
    pub size: u64,
    /// The hash of the file's chunk hashes ([`FileHashes::root`]).
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
            "{HEADING}\nsize {}\nchunk {CHUNK}\nblake3 {}\nchecked_at {}\n",
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
        if field("chunk")?.parse::<usize>().ok()? != CHUNK {
            return None;
        }
        let hash = blake3::Hash::from_hex(field("blake3")?).ok()?;
        let checked_at = field("checked_at")?.parse().ok()?;
        Some(Seal {
            size,
            hash: *hash.as_bytes(),
            checked_at,
        })
    }
}

/// A file's size and the BLAKE3 hash of each [`CHUNK`] of it (the last one
/// shorter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileHashes {
    size: u64,
    chunks: Vec<[u8; 32]>,
}

/// Reads into `buf` from `file` until it is full or the file ends; how many
/// bytes were read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn hash_chunk(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

impl FileHashes {
    /// Reads the whole file at `db` and hashes each chunk.
    pub(super) fn read(db: &Path) -> std::io::Result<FileHashes> {
        let mut file = std::fs::File::open(db)?;
        // Sixteen chunks a read: few system calls, and a buffer that stays
        // small beside the DB.
        let mut buf = vec![0u8; 16 * CHUNK];
        let mut hashes = FileHashes {
            size: 0,
            chunks: Vec::new(),
        };
        loop {
            let n = read_full(&mut file, &mut buf)?;
            hashes.chunks.extend(buf[..n].chunks(CHUNK).map(hash_chunk));
            hashes.size += n as u64;
            if n < buf.len() {
                return Ok(hashes);
            }
        }
    }

    /// The hash the seal records: BLAKE3 of the chunks' hashes, in order.
    pub(super) fn root(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        for chunk in &self.chunks {
            hasher.update(chunk);
        }
        *hasher.finalize().as_bytes()
    }

    /// Brings the hashes up to date with the file at `db` after SQLite wrote
    /// the chunks `written` (indexes, any order): those are read and hashed
    /// again, and so are the chunks at the old and the new end of the file
    /// and any it grew by. The rest are kept as they were hashed.
    pub(super) fn update(&mut self, db: &Path, written: &[usize]) -> std::io::Result<()> {
        let mut file = std::fs::File::open(db)?;
        let size = file.metadata()?.len();
        let count = usize::try_from(size.div_ceil(CHUNK as u64)).unwrap_or(usize::MAX);
        let old_count = self.chunks.len();
        self.chunks.resize(count, [0; 32]);
        let mut stale: Vec<usize> = written.iter().copied().filter(|&i| i < count).collect();
        // The old last chunk may have grown; the new last one may be cut.
        stale.extend(old_count.saturating_sub(1)..count);
        stale.push(count.saturating_sub(1));
        stale.sort_unstable();
        stale.dedup();
        let mut buf = vec![0u8; CHUNK];
        for index in stale.into_iter().filter(|&i| i < count) {
            file.seek(SeekFrom::Start((index * CHUNK) as u64))?;
            let n = read_full(&mut file, &mut buf)?;
            self.chunks[index] = hash_chunk(&buf[..n]);
        }
        self.size = size;
        // A file changed under us while it was read is left for the next run
        // to find: its seal will not match.
        Ok(())
    }
}

/// The first 32 bytes of a write-ahead log: magic, format version, page
/// size, checkpoint sequence, and two salts.
const WAL_HEADER: usize = 32;
/// Each frame's header: page number, size after commit, two salts, two
/// checksums; the page follows.
const FRAME_HEADER: usize = 24;

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The chunks of the DB at `db` holding the pages its write-ahead log holds,
/// read while the connection that wrote them is still open (closing copies
/// them into the DB file and removes the log). Only a log this connection
/// began and never started over holds every page the run wrote: SQLite
/// counts each restart of a log in its header (the checkpoint sequence), so a
/// log that restarted, or any that does not read as one, is `None` and the
/// whole file is hashed again.
pub(super) fn written_chunks(db: &Path) -> Option<Vec<usize>> {
    let mut wal = std::fs::File::open(beside(db, "-wal")).ok()?;
    let mut header = [0u8; WAL_HEADER];
    if read_full(&mut wal, &mut header).ok()? < WAL_HEADER {
        return None;
    }
    let magic = be32(&header, 0);
    let page_size = be32(&header, 8) as usize;
    let restarts = be32(&header, 12);
    if magic & !1 != 0x377f_0682 || !page_size.is_power_of_two() || page_size < 512 {
        return None;
    }
    if page_size > 65536 || restarts != 0 {
        return None;
    }
    let salts = &header[16..24];
    let len = wal.metadata().ok()?.len();
    let frame = (FRAME_HEADER + page_size) as u64;
    let mut chunks = Vec::new();
    let mut frame_header = [0u8; FRAME_HEADER];
    let mut at = WAL_HEADER as u64;
    while at + frame <= len {
        wal.seek(SeekFrom::Start(at)).ok()?;
        if read_full(&mut wal, &mut frame_header).ok()? < FRAME_HEADER {
            break;
        }
        // Frames of an earlier log (other salts) are past its end.
        if &frame_header[8..16] != salts {
            break;
        }
        let page = be32(&frame_header, 0) as usize;
        let start = page.checked_sub(1)?.checked_mul(page_size)?;
        chunks.extend(start / CHUNK..=(start + page_size - 1) / CHUNK);
        at += frame;
    }
    chunks.sort_unstable();
    chunks.dedup();
    Some(chunks)
}

/// A write-ahead log beside `db` that holds anything: the DB file alone is
/// then not all of the DB.
pub(super) fn log_holds_writes(db: &Path) -> bool {
    match std::fs::symlink_metadata(beside(db, "-wal")) {
        Ok(meta) => meta.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// What a writing run learns of the DB file before SQLite opens it.
#[derive(Debug)]
pub(super) struct AtOpen {
    /// When `quick_check` last passed on the file, if it is byte for byte
    /// what the seal beside it records, no log holds more, and that check
    /// still stands (within [`CHECK_STANDS_SECS`] of now). `None` means: run
    /// the check.
    pub checked_at: Option<u64>,
    /// The file's chunk hashes, for the seal at close; `None` when there was
    /// no seal that could stand (the file is then not read at open), a log
    /// holds writes (the file alone is not the DB), or it could not be read.
    pub hashes: Option<FileHashes>,
}

/// Reads and hashes the DB at `db` (when no log holds writes) and compares
/// it with its seal. Nothing here is an error; whatever cannot be read is
/// unsealed.
pub(super) fn at_open(db: &Path, now: u64) -> AtOpen {
    let unsealed = AtOpen {
        checked_at: None,
        hashes: None,
    };
    // Without a seal that could stand, the file is not read here: the check
    // runs, and a run that seals hashes the whole file at close instead (a
    // run that writes without sealing pays nothing).
    let Some(seal) = std::fs::read_to_string(path(db))
        .ok()
        .and_then(|text| Seal::parse(&text))
        .filter(|seal| {
            now.saturating_sub(seal.checked_at) < CHECK_STANDS_SECS && seal.checked_at <= now
        })
    else {
        return unsealed;
    };
    if log_holds_writes(db) {
        return unsealed;
    }
    let Ok(hashes) = FileHashes::read(db) else {
        return unsealed;
    };
    let matches = hashes.size == seal.size && hashes.root() == seal.hash;
    AtOpen {
        checked_at: matches.then_some(seal.checked_at),
        hashes: Some(hashes),
    }
}

/// When `quick_check` last passed on the DB at `db`, if it is still sealed
/// (see [`at_open`]).
#[cfg(test)]
pub(super) fn still_sealed(db: &Path, now: u64) -> Option<u64> {
    at_open(db, now).checked_at
}

/// Seals the DB at `db`, which its last connection has just closed (the
/// caller holds the lock), recording `checked_at`. `known` is the hashes
/// taken at open and the chunks SQLite wrote since (see [`written_chunks`]):
/// only those are hashed again; without it, the whole file is. Nothing is
/// sealed while a log beside it holds writes (a reader kept it open).
/// Written under a temporary name and renamed: a seal is whole or absent. A
/// seal that cannot be written only means the next run checks the file in
/// full.
pub(super) fn seal(
    db: &Path,
    checked_at: u64,
    known: Option<(FileHashes, Vec<usize>)>,
) -> std::io::Result<bool> {
    // A seal left from before no longer matches; removed first so that one
    // that cannot be replaced is not left standing.
    match std::fs::remove_file(path(db)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if log_holds_writes(db) {
        return Ok(false);
    }
    let hashes = match known {
        Some((mut hashes, written)) => {
            hashes.update(db, &written)?;
            hashes
        }
        None => FileHashes::read(db)?,
    };
    let seal = Seal {
        size: hashes.size,
        hash: hashes.root(),
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
            text.replace("v2", "v1"),
            text.replace("chunk 65536", "chunk 4096"),
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
        assert!(seal(&db, now - 60, None).unwrap());
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
        assert!(!seal(&db, now, None).unwrap(), "not sealed beside a log");
        assert!(!path(&db).exists(), "the old seal is gone");
        std::fs::write(beside(&db, "-wal"), b"").unwrap();
        assert!(seal(&db, now, None).unwrap(), "an empty log holds nothing");
        assert_eq!(still_sealed(&db, now), Some(now));
        // Cut short.
        std::fs::write(&db, &bytes[..4096]).unwrap();
        assert_eq!(still_sealed(&db, now), None);
    }

    #[test]
    fn hashes_brought_up_to_date_from_the_chunks_written_are_those_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("idsync.db");
        let mut bytes: Vec<u8> = (0..5 * CHUNK + 1000).map(|i| (i % 251) as u8).collect();
        std::fs::write(&db, &bytes).unwrap();
        let at_open = FileHashes::read(&db).unwrap();
        assert_eq!(at_open.chunks.len(), 6);
        assert_eq!(at_open.size, bytes.len() as u64);
        // A page written in the second chunk, the file grown by two chunks
        // and a half: only the written chunk is named.
        bytes[CHUNK + 5] ^= 1;
        bytes.extend(std::iter::repeat_n(7u8, 2 * CHUNK + CHUNK / 2));
        std::fs::write(&db, &bytes).unwrap();
        let mut hashes = at_open.clone();
        hashes.update(&db, &[1]).unwrap();
        assert_eq!(hashes, FileHashes::read(&db).unwrap());
        // Cut back inside the fourth chunk, nothing named.
        bytes.truncate(3 * CHUNK + 10);
        std::fs::write(&db, &bytes).unwrap();
        hashes.update(&db, &[]).unwrap();
        assert_eq!(hashes, FileHashes::read(&db).unwrap());
        // A chunk changed but not named keeps its old hash: the seal would
        // not match the file, and the next run checks it in full.
        bytes[10] ^= 1;
        std::fs::write(&db, &bytes).unwrap();
        let mut missed = hashes.clone();
        missed.update(&db, &[]).unwrap();
        assert_ne!(missed.root(), FileHashes::read(&db).unwrap().root());
        // Emptied.
        std::fs::write(&db, b"").unwrap();
        hashes.update(&db, &[0, 3]).unwrap();
        assert_eq!(hashes, FileHashes::read(&db).unwrap());
    }
}

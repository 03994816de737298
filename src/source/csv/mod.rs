//! The CSV source: a users file (one row per user, a header row, a stable key
//! column) and an optional groups file (`group,member` rows, one membership per
//! row). UTF-8 with or without BOM, RFC 4180 quoting. Every bad row is reported
//! with its line number; one bad row fails the read, because a skipped user would
//! be deprovisioned.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_saphyr::Spanned;

mod error;

pub use error::{CsvError, CsvFault, RowProblem};

use super::problems::Problems;
use super::{Source, SourceConfigError, SourceError, StreamedSource};
use crate::model::{
    ArcStr, FastHash, FastMap, FastSet, GroupKey, Origin, SourceAttrs, SourceDirectory,
    SourceGroup, SourceKey, SourceUser,
};
use error::file_name;

/// The `source:` section for `kind: csv`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    users: String,
    #[serde(default)]
    groups: Option<String>,
    #[serde(default)]
    key: Option<String>,
    /// One ASCII character; `,` by default.
    #[serde(default)]
    delimiter: Option<Spanned<char>>,
}

impl CsvConfig {
    /// Resolves paths against the config file's folder and checks the options.
    /// A mistake is reported at the offending field.
    pub fn compile(&self, config_dir: &Path) -> Result<CsvSettings, SourceConfigError> {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                config_dir.join(p)
            }
        };
        let delimiter = match &self.delimiter {
            None => b',',
            Some(c) if c.value.is_ascii() => c.value as u8,
            Some(c) => {
                return Err(SourceConfigError {
                    location: c.referenced,
                    message: format!("the CSV delimiter {:?} is not an ASCII character", c.value),
                    hint: "use a single ASCII character such as ',' or ';'".into(),
                });
            }
        };
        Ok(CsvSettings {
            users: resolve(&self.users),
            groups: self.groups.as_deref().map(resolve),
            key: self.key.clone().unwrap_or_else(|| "id".to_string()),
            delimiter,
        })
    }
}

/// The CSV source, compiled: a users file with a key column and an optional
/// groups file.
#[derive(Clone, Debug)]
pub struct CsvSettings {
    pub users: PathBuf,
    pub groups: Option<PathBuf>,
    pub key: String,
    pub delimiter: u8,
}

impl Source for CsvSettings {
    fn read<'a>(
        &'a self,
        _attributes: &'a BTreeSet<String>,
    ) -> BoxFuture<'a, Result<SourceDirectory, SourceError>> {
        let settings = self.clone();
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || read(&settings))
                .await
                .map_err(|e| CsvError::ReaderStopped {
                    reason: e.to_string(),
                })?;
            Ok(read?)
        })
    }

    fn streamed(&self) -> Option<&dyn StreamedSource> {
        Some(self)
    }

    /// A CSV source is read whole and counted.
    fn check(&self) -> BoxFuture<'_, Result<String, SourceError>> {
        Box::pin(async move {
            let dir = self.read(&BTreeSet::new()).await?;
            Ok(format!(
                "CSV source readable: {} users, {} groups",
                dir.users.len(),
                dir.groups.len()
            ))
        })
    }

    fn describe(&self) -> String {
        format!("csv {}", self.users.display())
    }
}

impl StreamedSource for CsvSettings {
    fn read_groups(&self) -> Result<Vec<SourceGroup>, SourceError> {
        match &self.groups {
            Some(path) => Ok(read_groups(path, self.delimiter, None)?.0),
            None => Ok(Vec::new()),
        }
    }

    fn read_users(&self, each: &mut dyn FnMut(SourceUser)) -> Result<(), SourceError> {
        Ok(each_user(self, each)?)
    }
}

/// Reads the users file and, when configured, the groups file.
pub fn read(settings: &CsvSettings) -> Result<SourceDirectory, CsvError> {
    let mut users = Vec::new();
    each_user(settings, &mut |user| users.push(user))?;
    let (groups, unresolved_members) = match &settings.groups {
        Some(path) => {
            let known: FastSet<&str> = users.iter().map(|u| u.key.as_str()).collect();
            read_groups(path, settings.delimiter, Some(&known))?
        }
        None => (Vec::new(), 0),
    };
    Ok(SourceDirectory {
        users,
        groups,
        unresolved_members,
        assignments: None,
    })
}

/// A CSV reader over a file, with the lines of its records.
type Reader = csv::Reader<LineTracker<std::fs::File>>;

fn open(path: &Path, delimiter: u8) -> Result<Reader, CsvError> {
    let unreadable = |source| CsvError::FileUnreadable {
        file: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // A folder opens fine on Unix and fails at the first read, which the CSV
    // parser would report as a malformed "line 0".
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if kind.is_dir() {
        return Err(CsvError::IsAFolder {
            file: path.to_path_buf(),
        });
    }
    // Fields are trimmed where they are read (`field`), as the parser's own
    // trimming would, without its copy of every record.
    Ok(csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(1 << 16)
        .from_reader(LineTracker::new(file)))
}

/// A field without the ASCII whitespace around it.
fn trimmed(field: &[u8]) -> &[u8] {
    field.trim_ascii()
}

/// Whether every field of a record is empty once trimmed (a blank line).
fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| trimmed(f).is_empty())
}

/// Passes a file through to the CSV parser and notes where each non-blank line
/// starts, so a record's line is the line its first field is on.
///
/// The csv crate's `Position::line()` of a record counts only the line breaks
/// read before the parser started on it: the `\n` of a CRLF (the parser ends a
/// record at the `\r`) and blank lines before the record are not counted yet, so
/// every line of a CRLF file was one too low (its first record "on" the header's
/// line) and a record after a blank line was too.
struct LineTracker<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// The 1-based line of the next byte.
    line: u64,
    /// The next byte starts a line (only `\r` seen since the last `\n`).
    at_line_start: bool,
    /// (byte offset, line) of non-blank lines read but not yet asked about.
    starts: VecDeque<(u64, u64)>,
}

impl<R> LineTracker<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            line: 1,
            at_line_start: true,
            starts: VecDeque::new(),
        }
    }

    /// The line of the record (or error) at `position`: the first non-blank line
    /// starting at or after it. Positions must be asked in file order.
    fn line_of(&mut self, position: &csv::Position) -> u64 {
        while self
            .starts
            .front()
            .is_some_and(|&(offset, _)| offset < position.byte())
        {
            self.starts.pop_front();
        }
        self.starts
            .front()
            .map_or(position.line(), |&(_, line)| line)
    }
}

impl<R: std::io::Read> std::io::Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        let mut i = 0;
        while i < n {
            if self.at_line_start {
                match chunk[i] {
                    b'\n' => self.line += 1,
                    b'\r' => {}
                    _ => {
                        self.starts.push_back((self.offset + i as u64, self.line));
                        self.at_line_start = false;
                    }
                }
                i += 1;
                continue;
            }
            // Within a line only its end matters: found a word at a time.
            match memchr::memchr(b'\n', &chunk[i..]) {
                Some(at) => {
                    i += at + 1;
                    self.line += 1;
                    self.at_line_start = true;
                }
                None => i = n,
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The line of the record just read (0 when unknown).
fn record_line(reader: &mut Reader, record: &csv::ByteRecord) -> u64 {
    match record.position() {
        Some(position) => reader.get_mut().line_of(position),
        None => 0,
    }
}

/// The header as UTF-8 names, BOM removed.
fn header(reader: &mut Reader, path: &Path) -> Result<Vec<Arc<str>>, CsvError> {
    let record = match reader.byte_headers() {
        Ok(record) => record.clone(),
        Err(e) => return Err(csv_error(reader, path, &e)),
    };
    let mut names: Vec<Arc<str>> = Vec::with_capacity(record.len());
    for (i, field) in record.iter().map(trimmed).enumerate() {
        let field = if i == 0 {
            field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
        } else {
            field
        };
        let name = std::str::from_utf8(field).map_err(|_| CsvError::HeaderNotUtf8 {
            file: path.to_path_buf(),
            column: i + 1,
        })?;
        names.push(Arc::from(name.trim()));
    }
    if names.is_empty() || names.iter().all(|n| n.is_empty()) {
        return Err(CsvError::NoHeader {
            file: path.to_path_buf(),
        });
    }
    Ok(names)
}

/// Where a structural CSV error is, and what it is.
fn csv_fault(reader: &mut Reader, e: &csv::Error) -> (u64, CsvFault) {
    let line = e
        .position()
        .map_or(0, |position| reader.get_mut().line_of(position));
    let fault = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => CsvFault::FieldCount {
            found: *len,
            expected: *expected_len,
        },
        csv::ErrorKind::Io(io) => CsvFault::Unreadable {
            reason: io.to_string(),
        },
        _ => CsvFault::Other {
            reason: e.to_string(),
        },
    };
    (line, fault)
}

fn csv_error(reader: &mut Reader, path: &Path, e: &csv::Error) -> CsvError {
    let (line, fault) = csv_fault(reader, e);
    CsvError::MalformedRow {
        file: path.to_path_buf(),
        line,
        fault,
    }
}

/// The header's names, for messages.
fn column_names(columns: &[Arc<str>]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

/// Hands each user of the users file to `each`, in file order; any bad row
/// fails the read once the whole file was read.
fn each_user(settings: &CsvSettings, each: &mut dyn FnMut(SourceUser)) -> Result<(), CsvError> {
    let path = &settings.users;
    // To tell, if the file must be read again, that it did not change.
    let stamp = stamp(path);
    let name = file_name(path);
    let mut reader = open(path, settings.delimiter)?;
    let columns = header(&mut reader, path)?;
    let Some(key_index) = columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(&settings.key))
    else {
        return Err(CsvError::MissingKeyColumn {
            file: path.clone(),
            key: settings.key.clone(),
            columns: column_names(&columns),
        });
    };

    if let Some(dup) = columns
        .iter()
        .enumerate()
        .find(|(i, c)| !c.is_empty() && columns[..*i].iter().any(|o| o.eq_ignore_ascii_case(c)))
    {
        return Err(CsvError::DuplicateColumn {
            file: path.clone(),
            column: dup.1.to_string(),
            columns: column_names(&columns),
        });
    }
    let file = ArcStr::from(name.as_str());
    let mut problems = Problems::default();
    // A digest of each user's key: duplicate keys are found among equal
    // digests (8 bytes a user, where the keys themselves took four times
    // that at a million users).
    let hasher = FastHash::default();
    let mut keys: Vec<u64> = Vec::new();
    let mut record = csv::ByteRecord::new();
    // Each record is built here, then copied out at its exact size.
    let mut scratch = SourceAttrs::with_capacity(columns.len());
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // A structural error (field count, I/O) leaves the reader's position
                // uncertain: report it and stop reading.
                let (line, fault) = csv_fault(&mut reader, &e);
                problems.push(RowProblem::Malformed { line, fault });
                break;
            }
        }
        let line = record_line(&mut reader, &record);
        if is_blank(&record) {
            continue; // a blank line, not a user
        }
        scratch.clear();
        let mut bad = false;
        for (i, field) in record.iter().map(trimmed).enumerate() {
            match std::str::from_utf8(field) {
                Ok(value) => {
                    if !value.is_empty() {
                        scratch.push(&columns[i], [value]);
                    }
                }
                Err(_) => {
                    problems.push(RowProblem::NotUtf8 {
                        line,
                        column: columns[i].to_string(),
                    });
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let key = match std::str::from_utf8(trimmed(&record[key_index])) {
            Ok(k) if !k.is_empty() => k,
            _ => {
                problems.push(RowProblem::EmptyKey {
                    line,
                    key_column: settings.key.clone(),
                });
                continue;
            }
        };
        keys.push(hasher.hash_one(key));
        each(SourceUser {
            key: SourceKey::new(key),
            origin: Origin::line(file.clone(), line),
            attrs: scratch.compacted(),
        });
    }
    let digest = |key: &str| hasher.hash_one(key);
    for problem in duplicate_keys(settings, key_index, (keys, &digest), &stamp)? {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(bad_rows(path, problems));
    }
    Ok(())
}

/// How a key was digested (the read's hasher; a constant in tests).
type KeyDigest<'a> = dyn Fn(&str) -> u64 + 'a;

/// A key seen again, at each later line, in line order, against the first
/// line that had it; from the digests of every user's key (made by `digests.1`,
/// which the file's keys are digested by again).
/// Keys whose digests are equal (duplicates, or very rarely two keys that
/// hash alike) are read again from the file, with their lines, to tell which.
fn duplicate_keys(
    settings: &CsvSettings,
    key_index: usize,
    digests: (Vec<u64>, &KeyDigest),
    read: &Option<(u64, std::time::SystemTime)>,
) -> Result<Vec<RowProblem>, CsvError> {
    let (mut digests, digest_of) = digests;
    digests.sort_unstable();
    let mut repeated: FastMap<u64, usize> = FastMap::default();
    for run in digests.chunk_by(|a, b| a == b).filter(|run| run.len() > 1) {
        repeated.insert(run[0], run.len());
    }
    drop(digests);
    if repeated.is_empty() {
        return Ok(Vec::new());
    }
    // An export rewriting the file meanwhile would make the lines say
    // something else: the read fails rather than judge from two versions.
    let changed = || CsvError::FileChanged {
        file: settings.users.clone(),
    };
    if read.is_none() || stamp(&settings.users) != *read {
        return Err(changed());
    }
    // (digest, line, key) of the rows whose key has a repeated digest, taken
    // from the rows the first read took a key from.
    let mut found: Vec<(u64, u64, String)> = Vec::new();
    let mut reader = open(&settings.users, settings.delimiter)?;
    header(&mut reader, &settings.users)?;
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| csv_error(&mut reader, &settings.users, &e))?
    {
        let line = record_line(&mut reader, &record);
        if is_blank(&record) || record.iter().any(|f| std::str::from_utf8(f).is_err()) {
            continue;
        }
        let Some(key) = record
            .get(key_index)
            .map(trimmed)
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
        else {
            continue;
        };
        let digest = digest_of(key);
        if repeated.contains_key(&digest) {
            found.push((digest, line, key.to_string()));
        }
    }
    if found.len() != repeated.values().sum::<usize>() || stamp(&settings.users) != *read {
        return Err(changed());
    }
    found.sort_unstable_by_key(|f| (f.0, f.1));
    let mut duplicates = Vec::new();
    for run in found.chunk_by(|a, b| a.0 == b.0) {
        // Sorted by line within a run: the first equal key is the first line.
        for (j, (_, line, key)) in run.iter().enumerate().skip(1) {
            if let Some((_, first_line, _)) = run[..j].iter().find(|f| f.2 == *key) {
                duplicates.push(RowProblem::DuplicateKey {
                    line: *line,
                    key: key.clone(),
                    first_line: *first_line,
                });
            }
        }
    }
    duplicates.sort_by_key(|p| match p {
        RowProblem::DuplicateKey { line, .. } => *line,
        _ => 0,
    });
    Ok(duplicates)
}

/// A file's size and modification time, to tell whether it changed.
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn bad_rows(path: &Path, problems: Problems<RowProblem>) -> CsvError {
    let (problems, more) = problems.into_parts();
    CsvError::BadRows {
        file: path.to_path_buf(),
        problems,
        more,
    }
}

struct GroupAcc {
    name: String,
    line: u64,
    members: Vec<SourceKey>,
}

/// The groups file. With `known_users`, members that are not among them are
/// counted, not kept; without, every member is kept.
fn read_groups(
    path: &Path,
    delimiter: u8,
    known_users: Option<&FastSet<&str>>,
) -> Result<(Vec<SourceGroup>, usize), CsvError> {
    let name = file_name(path);
    let mut reader = open(path, delimiter)?;
    let columns = header(&mut reader, path)?;
    let find = |wanted: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(wanted));
    let (Some(group_index), Some(member_index)) = (find("group"), find("member")) else {
        return Err(CsvError::MissingGroupColumns {
            file: path.to_path_buf(),
            columns: column_names(&columns),
        });
    };
    let id_index = find("group_id");

    let mut problems = Problems::default();
    // Groups in file order, found by key through a hash index (a row's group
    // is one probe, where an ordered map of a thousand groups compared ten
    // keys); sorted by key once at the end.
    let mut groups: Vec<(GroupKey, GroupAcc)> = Vec::new();
    let mut index: FastMap<GroupKey, usize> = FastMap::default();
    let mut unresolved = 0usize;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(&mut reader, path, &e)),
        }
        let line = record_line(&mut reader, &record);
        if is_blank(&record) {
            continue;
        }
        let field = |i: usize| std::str::from_utf8(trimmed(&record[i]));
        let not_utf8 = |i: usize| RowProblem::NotUtf8 {
            line,
            column: columns[i].to_string(),
        };
        let (group, member) = match (field(group_index), field(member_index)) {
            (Ok(group), Ok(member)) => (group, member),
            (Err(_), _) => {
                problems.push(not_utf8(group_index));
                continue;
            }
            (_, Err(_)) => {
                problems.push(not_utf8(member_index));
                continue;
            }
        };
        let id = match id_index.map(|i| (i, field(i))) {
            Some((_, Ok(id))) if !id.is_empty() => id,
            Some((i, Err(_))) => {
                problems.push(not_utf8(i));
                continue;
            }
            _ => group,
        };
        if group.is_empty() {
            problems.push(RowProblem::EmptyGroupName { line });
            continue;
        }
        let acc = match index.get(id) {
            None => {
                let key = GroupKey::new(id);
                index.insert(key.clone(), groups.len());
                groups.push((
                    key,
                    GroupAcc {
                        name: group.to_string(),
                        line,
                        members: Vec::new(),
                    },
                ));
                &mut groups.last_mut().expect("just pushed").1
            }
            Some(&i) => {
                let acc = &mut groups[i].1;
                if acc.name != group {
                    problems.push(RowProblem::GroupNameConflict {
                        line,
                        id: id.to_string(),
                        name: group.to_string(),
                        first_name: acc.name.clone(),
                        first_line: acc.line,
                    });
                    continue;
                }
                acc
            }
        };
        if member.is_empty() {
            continue;
        }
        if known_users.is_none_or(|known| known.contains(member)) {
            acc.members.push(SourceKey::new(member));
        } else {
            unresolved += 1;
        }
    }
    if !problems.is_empty() {
        return Err(bad_rows(path, problems));
    }
    drop(index);
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let groups = groups
        .into_iter()
        .map(|(key, acc)| {
            let mut members = acc.members;
            members.sort_unstable();
            members.dedup();
            SourceGroup::new(
                key,
                acc.name,
                Origin::line(ArcStr::from(name.as_str()), acc.line),
                members,
            )
        })
        .collect();
    Ok((groups, unresolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(dir: &tempfile::TempDir, users: &[u8], groups: Option<&[u8]>) -> CsvSettings {
        let u = dir.path().join("users.csv");
        std::fs::File::create(&u).unwrap().write_all(users).unwrap();
        let g = groups.map(|g| {
            let p = dir.path().join("groups.csv");
            std::fs::File::create(&p).unwrap().write_all(g).unwrap();
            p
        });
        CsvSettings {
            users: u,
            groups: g,
            key: "id".into(),
            delimiter: b',',
        }
    }

    /// The row problems of a `BadRows` error.
    fn row_problems(err: CsvError) -> Vec<RowProblem> {
        match err {
            CsvError::BadRows { problems, more, .. } => {
                assert_eq!(more, 0);
                problems
            }
            other => panic!("expected BadRows, got {other:?}"),
        }
    }

    #[test]
    fn reads_bom_quotes_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(
            &dir,
            b"\xEF\xBB\xBFid,email,title\n1,a@x.com,\"Lead, \"\"Core\"\"\"\n2,b@x.com,\n",
            Some(b"group,member\neng,1\neng,2\neng,1\nempty,\nsales,99\n"),
        );
        let dir = read(&s).unwrap();
        assert_eq!(dir.users.len(), 2);
        assert_eq!(dir.users[0].attrs.first("title"), Some("Lead, \"Core\""));
        assert_eq!(dir.users[1].attrs.first("title"), None);
        assert_eq!(dir.users[0].origin.to_string(), "users.csv line 2");
        let names: Vec<_> = dir.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["empty", "eng", "sales"]);
        assert_eq!(dir.groups[1].members.len(), 2);
        assert_eq!(dir.unresolved_members, 1);
    }

    #[test]
    fn keys_whose_digests_collide_are_told_apart_by_reading_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(
            &dir,
            b"id,email\n1,a@x.com\n2,b@x.com\n1,c@x.com\n\n1,d@x.com\n",
            None,
        );
        // Every key given the same digest, as if every key hashed alike.
        let digests = vec![7, 7, 7, 7];
        let found = duplicate_keys(&s, 0, (digests, &|_| 7), &stamp(&s.users)).unwrap();
        let lines: Vec<(u64, u64)> = found
            .iter()
            .map(|p| match p {
                RowProblem::DuplicateKey {
                    line, first_line, ..
                } => (*line, *first_line),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [(4, 2), (6, 2)]);
    }

    #[test]
    fn a_users_file_rewritten_before_its_duplicates_are_read_again_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n1,a@x.com\n1,b@x.com\n", None);
        let read = stamp(&s.users);
        std::fs::write(&s.users, b"id,email\n1,a@x.com\n2,b@x.com\n3,c@x.com\n").unwrap();
        let err = duplicate_keys(&s, 0, (vec![7, 7], &|_| 7), &read).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.to_string().contains("changed while it was read"),
            "{err}"
        );
        assert!(
            err.hint().contains("rename it into place"),
            "{}",
            err.hint()
        );
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n1,a@x.com\n2,b@x.com\n1,c@x.com\n", None);
        let err = read(&s).unwrap_err();
        assert!(!err.is_unavailable());
        // What the operator sees: the file, the count, and both lines.
        let text = err.to_string();
        assert!(
            text.contains("users.csv: 1 problem found; nothing was planned or changed\n"),
            "{text}"
        );
        assert!(
            text.contains("users.csv line 4: key \"1\" is already used on users.csv line 2"),
            "{text}"
        );
        assert!(err.hint().contains("fix the rows"), "{}", err.hint());
        assert_eq!(
            row_problems(err),
            [RowProblem::DuplicateKey {
                line: 4,
                key: "1".into(),
                first_line: 2
            }]
        );
    }

    #[test]
    fn malformed_row_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n1,a@x.com\n2,b@x.com,extra\n", None);
        let problems = row_problems(read(&s).unwrap_err());
        assert_eq!(
            problems,
            [RowProblem::Malformed {
                line: 3,
                fault: CsvFault::FieldCount {
                    found: 3,
                    expected: 2
                }
            }]
        );
        assert_eq!(
            problems[0].render("users.csv"),
            "users.csv line 3: has 3 fields where the header has 2"
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email,family_name\n1,a@x.com,M\xFCller\n", None);
        assert_eq!(
            row_problems(read(&s).unwrap_err()),
            [RowProblem::NotUtf8 {
                line: 2,
                column: "family_name".into()
            }]
        );
    }

    #[test]
    fn missing_key_column_lists_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"uid,email\n1,a@x.com\n", None);
        let err = read(&s).unwrap_err();
        let CsvError::MissingKeyColumn { key, columns, .. } = &err else {
            panic!("expected MissingKeyColumn, got {err:?}");
        };
        assert_eq!(key, "id");
        assert_eq!(columns, &["uid", "email"]);
        assert!(
            err.to_string()
                .ends_with("users.csv line 1: the columns are uid, email"),
            "{err}"
        );
        assert!(err.hint().contains("source.key"));
    }

    #[test]
    fn empty_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n,a@x.com\n", None);
        assert_eq!(
            row_problems(read(&s).unwrap_err()),
            [RowProblem::EmptyKey {
                line: 2,
                key_column: "id".into()
            }]
        );
    }

    #[test]
    fn header_problems_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&settings(&dir, b"", None)).unwrap_err();
        assert!(matches!(err, CsvError::NoHeader { .. }), "{err:?}");
        let err = read(&settings(&dir, b"id,Email,email\n1,a,b\n", None)).unwrap_err();
        assert!(
            matches!(&err, CsvError::DuplicateColumn { column, .. } if column == "email"),
            "{err:?}"
        );
        let err = read(&settings(&dir, b"id,e\xFCmail\n1,a\n", None)).unwrap_err();
        assert!(
            matches!(err, CsvError::HeaderNotUtf8 { column: 2, .. }),
            "{err:?}"
        );
        let err = read(&settings(&dir, b"id\n1\n", Some(b"team,user\nx,1\n"))).unwrap_err();
        assert!(
            matches!(&err, CsvError::MissingGroupColumns { columns, .. } if columns == &["team", "user"]),
            "{err:?}"
        );
        assert!(!err.is_unavailable());
    }

    #[test]
    fn groups_file_problems_name_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(
            &dir,
            b"id\n1\n",
            Some(b"group_id,group,member\ng1,eng,1\ng1,Eng,1\n,,1\ng2,s\xFCd,1\n"),
        );
        assert_eq!(
            row_problems(read(&s).unwrap_err()),
            [
                RowProblem::GroupNameConflict {
                    line: 3,
                    id: "g1".into(),
                    name: "Eng".into(),
                    first_name: "eng".into(),
                    first_line: 2
                },
                RowProblem::EmptyGroupName { line: 4 },
                RowProblem::NotUtf8 {
                    line: 5,
                    column: "group".into()
                },
            ]
        );
        // A row that breaks the structure stops the read of the groups file.
        let s = settings(&dir, b"id\n1\n", Some(b"group,member\neng,1\neng,1,x\n"));
        let err = read(&s).unwrap_err();
        assert!(
            matches!(
                err,
                CsvError::MalformedRow {
                    line: 3,
                    fault: CsvFault::FieldCount { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_file_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(&dir, b"id\n1\n", None);
        s.users = dir.path().join("nope.csv");
        let err = read(&s).unwrap_err();
        assert!(
            matches!(&err, CsvError::FileUnreadable { file, .. } if file.ends_with("nope.csv")),
            "{err:?}"
        );
        assert!(err.is_unavailable());
    }

    #[test]
    fn a_folder_as_users_file_is_a_data_error_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(&dir, b"id\n1\n", None);
        s.users = dir.path().to_path_buf();
        let err = read(&s).unwrap_err();
        assert!(
            err.to_string().ends_with("is a folder, not a CSV file"),
            "{err}"
        );
        assert!(!err.is_unavailable());
    }

    #[test]
    fn a_non_ascii_delimiter_is_refused_at_its_field() {
        let config: CsvConfig =
            serde_saphyr::from_str("users: users.csv\ndelimiter: \"§\"\n").unwrap();
        let err = config.compile(Path::new("/etc/idsync")).unwrap_err();
        assert_eq!((err.location.line(), err.location.column()), (2, 12));
        assert!(err.message.contains("not an ASCII character"), "{err}");
        let config: CsvConfig = serde_saphyr::from_str("users: u.csv\ndelimiter: ;\n").unwrap();
        assert_eq!(config.compile(Path::new("/")).unwrap().delimiter, b';');
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;
    use std::io::Write;

    /// The line of each user read from `users` (as `users.csv`).
    fn user_lines(users: &[u8]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        read(&users_file(&dir, users))
            .unwrap()
            .users
            .iter()
            .map(|u| format!("{} {}", u.key.as_str(), u.origin))
            .collect()
    }

    /// Settings reading `users` as `users.csv` in `dir`, keyed by `id`.
    fn users_file(dir: &tempfile::TempDir, users: &[u8]) -> CsvSettings {
        let path = dir.path().join("users.csv");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(users)
            .unwrap();
        CsvSettings {
            users: path,
            groups: None,
            key: "id".into(),
            delimiter: b',',
        }
    }

    const USERS: &str = "id,email\n1,a@x.com\n\n2,\"b\nb@x.com\"\n3,c@x.com\n";

    #[test]
    fn lines_are_counted_the_same_in_lf_and_crlf_files() {
        let expected = [
            "1 users.csv line 2",
            "2 users.csv line 4",
            "3 users.csv line 6",
        ];
        assert_eq!(user_lines(USERS.as_bytes()), expected, "LF");
        assert_eq!(
            user_lines(USERS.replace('\n', "\r\n").as_bytes()),
            expected,
            "CRLF"
        );
    }

    #[test]
    fn fields_are_read_without_the_whitespace_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let settings = users_file(
            &dir,
            b" id ,\temail\n 1 , a@x.com\t\n   ,  \n\t2,\" b@x.com \"\n",
        );
        let dir = read(&settings).unwrap();
        let users: Vec<(&str, Option<&str>)> = dir
            .users
            .iter()
            .map(|u| (u.key.as_str(), u.attrs.first("email")))
            .collect();
        // The line of spaces is blank, not a user without a key.
        assert_eq!(users, [("1", Some("a@x.com")), ("2", Some("b@x.com"))]);
    }

    /// Hands its bytes over `step` at a time.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn line_starts_are_the_same_however_the_file_arrives() {
        let text = "id\r\n\r\n\n1\r\n2\n\n\r\r\n3\nx";
        let starts = |step: usize| {
            let mut tracker = LineTracker::new(Trickle {
                bytes: text.as_bytes(),
                step,
            });
            std::io::Read::read_to_end(&mut tracker, &mut Vec::new()).unwrap();
            (tracker.starts, tracker.line, tracker.offset)
        };
        let whole = starts(usize::MAX);
        assert_eq!(
            whole.0,
            [(0, 1), (7, 4), (10, 5), (16, 8), (18, 9)],
            "(offset, line) of each non-blank line"
        );
        for step in 1..5 {
            assert_eq!(starts(step), whole, "{step} bytes at a time");
        }
    }

    #[test]
    fn a_malformed_row_in_a_crlf_file_names_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        std::fs::write(&path, "id,email\r\n1,a@x.com\r\n\r\n2,b@x.com,surplus\r\n").unwrap();
        let settings = CsvSettings {
            users: path,
            groups: None,
            key: "id".into(),
            delimiter: b',',
        };
        let err = read(&settings).unwrap_err().to_string();
        assert!(err.contains("users.csv line 4: has 3 fields"), "{err}");
    }
}

//! The CSV source: a users file (one row per user, a header row, a stable key
//! column) and an optional groups file (`group,member` rows, one membership per
//! row). UTF-8 with or without BOM, RFC 4180 quoting. Every bad row is reported
//! with its line number; one bad row fails the read, because a skipped user would
//! be deprovisioned.

use std::collections::BTreeSet;
use std::collections::btree_map::{BTreeMap, Entry};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{Source, SourceError};
use crate::model::{
    FastMap, FastSet, GroupKey, Origin, SourceAttrs, SourceDirectory, SourceGroup, SourceKey,
    SourceUser,
};

/// Reports at most this many problems; the rest are counted.
const MAX_PROBLEMS: usize = 50;

/// Collects problems so the operator sees all of them at once, not one per run.
#[derive(Default)]
struct Problems {
    lines: Vec<String>,
    more: usize,
}

impl Problems {
    fn push(&mut self, problem: String) {
        if self.lines.len() < MAX_PROBLEMS {
            self.lines.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn into_error(mut self, file: &Path, hint: &str) -> SourceError {
        let total = self.lines.len() + self.more;
        if self.more > 0 {
            self.lines.push(format!("… and {} more", self.more));
        }
        SourceError::Invalid {
            summary: format!(
                "{}: {total} problem{} found; nothing was planned or changed",
                file.display(),
                if total == 1 { "" } else { "s" }
            ),
            problems: self.lines,
            hint: hint.to_string(),
        }
    }
}

/// The `source:` section for `kind: csv`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    users: String,
    #[serde(default)]
    groups: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    delimiter: Option<char>,
}

impl CsvConfig {
    /// Resolves paths against the config file's folder and checks the options.
    pub fn compile(&self, config_dir: &Path) -> Result<CsvSettings, String> {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                config_dir.join(p)
            }
        };
        let delimiter = match self.delimiter {
            None => b',',
            Some(c) if c.is_ascii() => c as u8,
            Some(c) => return Err(format!("the CSV delimiter {c:?} is not an ASCII character")),
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
            tokio::task::spawn_blocking(move || read(&settings))
                .await
                .map_err(|e| SourceError::Unavailable {
                    message: format!("the CSV reader stopped unexpectedly: {e}"),
                    hint: "this is a bug; please report it".into(),
                })?
        })
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

/// Reads the users file and, when configured, the groups file.
pub fn read(settings: &CsvSettings) -> Result<SourceDirectory, SourceError> {
    let users = read_users(settings)?;
    let (groups, unresolved_members) = match &settings.groups {
        Some(path) => {
            let known: FastSet<&str> = users.iter().map(|u| u.key.as_str()).collect();
            read_groups(path, settings.delimiter, &known)?
        }
        None => (Vec::new(), 0),
    };
    Ok(SourceDirectory {
        users,
        groups,
        unresolved_members,
    })
}

fn open(path: &Path, delimiter: u8) -> Result<csv::Reader<std::fs::File>, SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::Unavailable {
        message: format!("cannot read {}: {e}", path.display()),
        hint: "check the source paths in the config (relative to the config file's folder)".into(),
    })?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(file))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The header as UTF-8 names, BOM removed.
fn header(
    reader: &mut csv::Reader<std::fs::File>,
    path: &Path,
) -> Result<Vec<Arc<str>>, SourceError> {
    let record = reader
        .byte_headers()
        .map_err(|e| csv_error(path, &e))?
        .clone();
    let mut names: Vec<Arc<str>> = Vec::with_capacity(record.len());
    for (i, field) in record.iter().enumerate() {
        let field = if i == 0 {
            field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
        } else {
            field
        };
        let name = std::str::from_utf8(field).map_err(|_| SourceError::Invalid {
            summary: format!("{}: the header row is not valid UTF-8", path.display()),
            problems: vec![format!(
                "{} line 1: column {} is not UTF-8",
                file_name(path),
                i + 1
            )],
            hint: "save the file as UTF-8".into(),
        })?;
        names.push(Arc::from(name.trim()));
    }
    if names.is_empty() || names.iter().all(|n| n.is_empty()) {
        return Err(SourceError::Invalid {
            summary: format!("{}: the file is empty or has no header row", path.display()),
            problems: vec![],
            hint: "the first row must name the columns (id,email,given_name,…)".into(),
        });
    }
    Ok(names)
}

fn csv_error(path: &Path, e: &csv::Error) -> SourceError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("has {len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Io(io) => format!("cannot be read: {io}"),
        _ => e.to_string(),
    };
    SourceError::Invalid {
        summary: format!("{}: line {line} is malformed; nothing was planned or changed", path.display()),
        problems: vec![format!("{} line {line}: {what}", file_name(path))],
        hint: "fix the row (fields with commas, quotes or line breaks must be quoted, \"\" inside quotes), then run again".into(),
    }
}

fn read_users(settings: &CsvSettings) -> Result<Vec<SourceUser>, SourceError> {
    let path = &settings.users;
    let name = file_name(path);
    let mut reader = open(path, settings.delimiter)?;
    let columns = header(&mut reader, path)?;
    let Some(key_index) = columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(&settings.key))
    else {
        return Err(SourceError::Invalid {
            summary: format!(
                "{}: there is no key column {:?}",
                path.display(),
                settings.key
            ),
            problems: vec![format!(
                "{name} line 1: the columns are {}",
                columns.join(", ")
            )],
            hint: "name the stable key column `id`, or set `source.key` to its name".into(),
        });
    };

    if let Some(dup) = columns
        .iter()
        .enumerate()
        .find(|(i, c)| !c.is_empty() && columns[..*i].iter().any(|o| o.eq_ignore_ascii_case(c)))
    {
        return Err(SourceError::Invalid {
            summary: format!(
                "{}: the column {:?} appears twice in the header",
                path.display(),
                dup.1
            ),
            problems: vec![format!(
                "{name} line 1: the columns are {}",
                columns.join(", ")
            )],
            hint: "give every column a distinct name".into(),
        });
    }
    let file: Arc<str> = Arc::from(name.as_str());
    let mut problems = Problems::default();
    let mut users = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // A structural error (field count, I/O) leaves the reader's position
                // uncertain: report it and stop reading.
                let SourceError::Invalid { problems: p, .. } = csv_error(path, &e) else {
                    return Err(csv_error(path, &e));
                };
                p.into_iter().for_each(|x| problems.push(x));
                break;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|f| f.is_empty()) {
            continue; // a blank line, not a user
        }
        let mut attrs = SourceAttrs::with_capacity(columns.len());
        let mut bad = false;
        for (i, field) in record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(value) => {
                    if !value.is_empty() {
                        attrs.push_unique(columns[i].clone(), value.to_string());
                    }
                }
                Err(_) => {
                    problems.push(format!(
                        "{name} line {line}: column {:?} is not valid UTF-8",
                        &*columns[i]
                    ));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let key = match std::str::from_utf8(&record[key_index]) {
            Ok(k) if !k.is_empty() => k,
            _ => {
                problems.push(format!(
                    "{name} line {line}: the key column {:?} is empty",
                    settings.key
                ));
                continue;
            }
        };
        users.push(SourceUser {
            key: SourceKey::new(key),
            origin: Origin::line(file.clone(), line),
            attrs,
        });
    }
    let mut seen: FastMap<&str, &Origin> =
        FastMap::with_capacity_and_hasher(users.len(), Default::default());
    for user in &users {
        if let Some(first) = seen.insert(user.key.as_str(), &user.origin) {
            problems.push(format!(
                "{}: key {:?} is already used on {first}; keys must be unique",
                user.origin,
                user.key.as_str()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems.into_error(
            path,
            "fix the rows listed above, then run again; nothing was changed",
        ));
    }
    Ok(users)
}

struct GroupAcc {
    name: String,
    line: u64,
    members: Vec<SourceKey>,
}

fn read_groups(
    path: &Path,
    delimiter: u8,
    known_users: &FastSet<&str>,
) -> Result<(Vec<SourceGroup>, usize), SourceError> {
    let name = file_name(path);
    let mut reader = open(path, delimiter)?;
    let columns = header(&mut reader, path)?;
    let find = |wanted: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(wanted));
    let (Some(group_index), Some(member_index)) = (find("group"), find("member")) else {
        return Err(SourceError::Invalid {
            summary: format!(
                "{}: a groups file needs the columns `group,member`",
                path.display()
            ),
            problems: vec![format!(
                "{name} line 1: the columns are {}",
                columns.join(", ")
            )],
            hint: "one membership per row: group,member (member = a user's key)".into(),
        });
    };
    let id_index = find("group_id");

    let mut problems = Problems::default();
    let mut groups: BTreeMap<GroupKey, GroupAcc> = BTreeMap::new();
    let mut unresolved = 0usize;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, &e)),
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        let field = |i: usize| std::str::from_utf8(&record[i]);
        let (Ok(group), Ok(member)) = (field(group_index), field(member_index)) else {
            problems.push(format!("{name} line {line}: a value is not valid UTF-8"));
            continue;
        };
        let id = match id_index.map(field) {
            Some(Ok(id)) if !id.is_empty() => id,
            Some(Err(_)) => {
                problems.push(format!("{name} line {line}: group_id is not valid UTF-8"));
                continue;
            }
            _ => group,
        };
        if group.is_empty() {
            problems.push(format!("{name} line {line}: the group name is empty"));
            continue;
        }
        let acc = match groups.entry(GroupKey::new(id)) {
            Entry::Vacant(v) => v.insert(GroupAcc {
                name: group.to_string(),
                line,
                members: Vec::new(),
            }),
            Entry::Occupied(o) => {
                let acc = o.into_mut();
                if acc.name != group {
                    problems.push(format!(
                        "{name} line {line}: group {id:?} is named {group:?} here but {:?} on line {}",
                        acc.name, acc.line
                    ));
                    continue;
                }
                acc
            }
        };
        if member.is_empty() {
            continue;
        }
        if known_users.contains(member) {
            acc.members.push(SourceKey::new(member));
        } else {
            unresolved += 1;
        }
    }
    if !problems.is_empty() {
        return Err(problems.into_error(
            path,
            "fix the rows listed above, then run again; nothing was changed",
        ));
    }
    let groups = groups
        .into_iter()
        .map(|(key, acc)| {
            let mut members = acc.members;
            members.sort_unstable();
            members.dedup();
            SourceGroup {
                key,
                name: acc.name,
                origin: Origin::line(Arc::from(name.as_str()), acc.line),
                members,
            }
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

    fn problems(err: SourceError) -> String {
        err.to_string()
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
    fn duplicate_keys_name_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n1,a@x.com\n2,b@x.com\n1,c@x.com\n", None);
        let text = problems(read(&s).unwrap_err());
        assert!(
            text.contains("users.csv line 4: key \"1\" is already used on users.csv line 2"),
            "{text}"
        );
    }

    #[test]
    fn malformed_row_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n1,a@x.com\n2,b@x.com,extra\n", None);
        let text = problems(read(&s).unwrap_err());
        assert!(
            text.contains("users.csv line 3: has 3 fields where the header has 2"),
            "{text}"
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email,family_name\n1,a@x.com,M\xFCller\n", None);
        let text = problems(read(&s).unwrap_err());
        assert!(
            text.contains("users.csv line 2: column \"family_name\" is not valid UTF-8"),
            "{text}"
        );
    }

    #[test]
    fn missing_key_column_lists_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"uid,email\n1,a@x.com\n", None);
        let err = read(&s).unwrap_err();
        assert!(
            err.to_string().contains("the columns are uid, email"),
            "{err}"
        );
        assert!(err.hint().contains("source.key"));
    }

    #[test]
    fn empty_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&dir, b"id,email\n,a@x.com\n", None);
        assert!(problems(read(&s).unwrap_err()).contains("line 2: the key column \"id\" is empty"));
    }
}

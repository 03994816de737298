//! What can go wrong reading a CSV source: [`CsvError`] says what is wrong with
//! the file and where (the file and line), or that it could not be read.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::report::{quote, show};
use crate::source::problems::render_list;

/// Why reading a CSV source failed. [`CsvError::is_unavailable`] tells "the
/// file is wrong" from "the file could not be read".
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    // -- the file is wrong ---------------------------------------------------
    /// The configured path is a folder, not a file.
    #[error("{} is a folder, not a CSV file", .file.display())]
    IsAFolder { file: PathBuf },
    /// The file has no header row (or is empty).
    #[error("{}: the file is empty or has no header row", .file.display())]
    NoHeader { file: PathBuf },
    /// A header field is not UTF-8; `column` is 1-based.
    #[error(
        "{}: the header row is not valid UTF-8\n{} line 1: column {column} is not UTF-8",
        .file.display(),
        file_name(.file)
    )]
    HeaderNotUtf8 { file: PathBuf, column: usize },
    /// A row the CSV reader cannot make sense of, where reading has to stop.
    #[error(
        "{}: line {line} is malformed; nothing was planned or changed\n{} line {line}: {fault}",
        .file.display(),
        file_name(.file)
    )]
    MalformedRow {
        file: PathBuf,
        line: u64,
        fault: CsvFault,
    },
    /// The users file has no column named like the configured key.
    #[error(
        "{}: there is no key column {}\n{} line 1: the columns are {}",
        .file.display(),
        quote(.key),
        file_name(.file),
        column_list(.columns)
    )]
    MissingKeyColumn {
        file: PathBuf,
        key: String,
        columns: Vec<String>,
    },
    /// Two header fields name the same column (case-insensitively).
    #[error(
        "{}: the column {} appears twice in the header\n{} line 1: the columns are {}",
        .file.display(),
        quote(.column),
        file_name(.file),
        column_list(.columns)
    )]
    DuplicateColumn {
        file: PathBuf,
        column: String,
        columns: Vec<String>,
    },
    /// The groups file lacks `group` or `member`.
    #[error(
        "{}: a groups file needs the columns `group,member`\n{} line 1: the columns are {}",
        .file.display(),
        file_name(.file),
        column_list(.columns)
    )]
    MissingGroupColumns { file: PathBuf, columns: Vec<String> },
    /// Rows that cannot become records, all of them at once: the first
    /// `problems` in file order, and how many `more` were not listed.
    #[error("{}", bad_rows(.file, .problems, *.more))]
    BadRows {
        file: PathBuf,
        problems: Vec<RowProblem>,
        more: usize,
    },

    // -- the file cannot be read ---------------------------------------------
    #[error("cannot read {}: {source}", .file.display())]
    FileUnreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file was rewritten while idsync read it (seen when a part had to be
    /// read again): nothing is judged from two versions.
    #[error("{} changed while it was read; nothing was planned, and the next cycle reads it again", .file.display())]
    FileChanged { file: PathBuf },
    /// The blocking reader task ended without an answer (a bug).
    #[error("the CSV reader stopped unexpectedly: {reason}")]
    ReaderStopped { reason: String },
}

impl CsvError {
    /// True when the file could not be read (exit 5); false when it was read
    /// and the data is wrong (exit 2).
    pub fn is_unavailable(&self) -> bool {
        use CsvError::*;
        match self {
            IsAFolder { .. }
            | NoHeader { .. }
            | HeaderNotUtf8 { .. }
            | MalformedRow { .. }
            | MissingKeyColumn { .. }
            | DuplicateColumn { .. }
            | MissingGroupColumns { .. }
            | BadRows { .. } => false,
            FileUnreadable { .. } | FileChanged { .. } | ReaderStopped { .. } => true,
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Cow<'static, str> {
        use CsvError::*;
        const FIX_ROWS: &str = "fix the rows listed above, then run again; nothing was changed";
        let text: &'static str = match self {
            IsAFolder { .. } => "point source.users (or source.groups) at the CSV file itself",
            NoHeader { .. } => "the first row must name the columns (id,email,given_name,…)",
            HeaderNotUtf8 { .. } => "save the file as UTF-8",
            MalformedRow { .. } => {
                "fix the row (fields with commas, quotes or line breaks must be quoted, \"\" \
                 inside quotes), then run again"
            }
            MissingKeyColumn { .. } => {
                "name the stable key column `id`, or set `source.key` to its name"
            }
            DuplicateColumn { .. } => "give every column a distinct name",
            MissingGroupColumns { .. } => {
                "one membership per row: group,member (member = a user's key)"
            }
            BadRows { .. } => FIX_ROWS,
            FileUnreadable { .. } => {
                "check the source paths in the config (relative to the config file's folder)"
            }
            FileChanged { .. } => {
                "have the export write a temporary file and rename it into place, so a read never meets a file half-written"
            }
            ReaderStopped { .. } => "this is a bug; please report it",
        };
        Cow::Borrowed(text)
    }
}

/// Why a CSV row could not be read at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsvFault {
    /// The row has another number of fields than the header.
    FieldCount { found: u64, expected: u64 },
    /// Reading the file failed part-way.
    Unreadable { reason: String },
    /// Anything else the CSV reader refused.
    Other { reason: String },
}

impl fmt::Display for CsvFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvFault::FieldCount { found, expected } => {
                write!(f, "has {found} fields where the header has {expected}")
            }
            CsvFault::Unreadable { reason } => write!(f, "cannot be read: {reason}"),
            CsvFault::Other { reason } => f.write_str(reason),
        }
    }
}

/// Why one CSV row cannot become a record. `line` is the row's 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowProblem {
    /// The row broke the file's structure; rows after it were not read.
    Malformed { line: u64, fault: CsvFault },
    /// A value that is not UTF-8, in the column named `column`.
    NotUtf8 { line: u64, column: String },
    /// The key column is empty.
    EmptyKey { line: u64, key_column: String },
    /// The key was already used on `first_line`.
    DuplicateKey {
        line: u64,
        key: String,
        first_line: u64,
    },
    /// A groups-file row with no group name.
    EmptyGroupName { line: u64 },
    /// A group id named differently on two rows.
    GroupNameConflict {
        line: u64,
        id: String,
        name: String,
        first_name: String,
        first_line: u64,
    },
}

impl RowProblem {
    pub fn line(&self) -> u64 {
        match self {
            RowProblem::Malformed { line, .. }
            | RowProblem::NotUtf8 { line, .. }
            | RowProblem::EmptyKey { line, .. }
            | RowProblem::DuplicateKey { line, .. }
            | RowProblem::EmptyGroupName { line }
            | RowProblem::GroupNameConflict { line, .. } => *line,
        }
    }

    /// The problem as one line of a report on `file` (a file name).
    pub fn render(&self, file: &str) -> String {
        let line = self.line();
        let what = match self {
            RowProblem::Malformed { fault, .. } => fault.to_string(),
            RowProblem::NotUtf8 { column, .. } => {
                format!("column {} is not valid UTF-8", quote(column))
            }
            RowProblem::EmptyKey { key_column, .. } => {
                format!("the key column {} is empty", quote(key_column))
            }
            RowProblem::DuplicateKey {
                key, first_line, ..
            } => format!(
                "key {} is already used on {file} line {first_line}; keys must be unique",
                quote(key)
            ),
            RowProblem::EmptyGroupName { .. } => "the group name is empty".to_string(),
            RowProblem::GroupNameConflict {
                id,
                name,
                first_name,
                first_line,
                ..
            } => format!(
                "group {} is named {} here but {} on line {first_line}",
                quote(id),
                quote(name),
                quote(first_name)
            ),
        };
        format!("{file} line {line}: {what}")
    }
}

/// The name of a file, for the lines of a report.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn bad_rows(file: &Path, problems: &[RowProblem], more: usize) -> String {
    let name = file_name(file);
    let listed = problems.iter().map(|p| p.render(&name));
    render_list(&file.display().to_string(), listed, more)
}

/// A header's column names, each shown escaped (a quoted header field may
/// hold a line break).
fn column_list(list: &[String]) -> String {
    list.iter().map(|c| show(c)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::problems::{MAX_PROBLEMS, Problems};

    #[test]
    fn a_bad_file_is_wrong_data_and_a_missing_one_unavailable() {
        let data = CsvError::BadRows {
            file: "users.csv".into(),
            problems: vec![],
            more: 0,
        };
        assert!(!data.is_unavailable());
        let gone = CsvError::FileChanged {
            file: "users.csv".into(),
        };
        assert!(gone.is_unavailable());
    }

    #[test]
    fn a_long_list_of_problems_is_cut_and_counted() {
        let mut problems = Problems::default();
        for line in 2..(MAX_PROBLEMS as u64 + 5) {
            problems.push(RowProblem::EmptyGroupName { line });
        }
        let (problems, more) = problems.into_parts();
        assert_eq!((problems.len(), more), (MAX_PROBLEMS, 3));
        let text = CsvError::BadRows {
            file: "/data/groups.csv".into(),
            problems,
            more,
        }
        .to_string();
        assert!(
            text.starts_with("/data/groups.csv: 53 problems found; nothing was planned"),
            "{text}"
        );
        assert!(
            text.contains("\ngroups.csv line 2: the group name is empty\n"),
            "{text}"
        );
        assert!(text.ends_with("\n… and 3 more"), "{text}");
    }
}

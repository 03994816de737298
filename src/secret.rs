//! Files idsync reads credentials from — the SCIM token, the LDAP bind
//! password, the Entra client secret and private key — and the one rule they
//! are held to, checked before the file is opened: a regular file (a FIFO with
//! no writer would block forever), owned by idsync's user or root, readable by
//! nobody else, in a folder nobody else can write to. Owns the rule and its
//! wording; each caller turns a refusal into its own layer's error and says
//! what the content must be (trimmed, not empty). Imports nothing of idsync.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

/// Permission bits of group and others: a secret file with any of them is refused.
#[cfg(unix)]
const GROUP_OTHER_BITS: u32 = 0o077;

/// Write bits of group and others on the secret file's folder: whoever can
/// write there can replace the file with their own secret (or a FIFO).
#[cfg(unix)]
const FOLDER_WRITE_BITS: u32 = 0o022;

/// root's user id: a secret file root owns is trusted too.
#[cfg(unix)]
pub const ROOT_UID: u32 = 0;

/// A file that may not be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message("file"))]
pub struct SecretFileError {
    pub path: PathBuf,
    pub problem: Problem,
}

/// Why a file may not be used. Displayed as what follows the file's name.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    /// `"a folder"`, `"a FIFO"`, `"a socket"` or `"a device"`.
    #[error("is {0}, not a regular file")]
    NotAFile(&'static str),
    #[error("belongs to user id {owner}, not to idsync's user ({uid}) or root")]
    Owner { owner: u32, uid: u32 },
    #[error("can be read by other users (mode {mode:o})")]
    Exposed { mode: u32 },
    #[error(
        "is in {}, which other users can write to (mode {mode:o}): they could replace it",
        .folder.display()
    )]
    FolderWritable { folder: PathBuf, mode: u32 },
}

impl SecretFileError {
    /// The refusal as a sentence naming the file as `what` (e.g. "token file").
    pub fn message(&self, what: &str) -> String {
        let path = self.path.display();
        match &self.problem {
            Problem::Unreadable(e) => format!("cannot read {what} {path}: {e}"),
            problem => format!("{what} {path} {problem}"),
        }
    }

    /// What to do about it; `setting` is the config key naming the file.
    pub fn hint(&self, setting: &str) -> String {
        let path = self.path.display();
        match &self.problem {
            Problem::Unreadable(_) => format!("check {setting}"),
            Problem::NotAFile(_) => format!("point {setting} at a plain file holding the secret"),
            Problem::Owner { .. } => {
                format!("chown the file to the user idsync runs as: chown $(id -u) {path}")
            }
            Problem::Exposed { .. } => format!("chmod 600 {path}"),
            Problem::FolderWritable { folder, .. } => format!(
                "chmod go-w {}, or keep the secret in a folder only idsync's user can write (e.g. /etc/idsync)",
                folder.display()
            ),
        }
    }
}

/// Reads a secret file, all of it, once [`check_secret_file`] passes.
pub fn read(path: &Path) -> Result<SecretString, SecretFileError> {
    // Before opening: opening a FIFO with no writer would block forever.
    #[cfg(unix)]
    check_secret_file(path, current_uid())?;
    let text = std::fs::read_to_string(path).map_err(|e| refused(path, Problem::Unreadable(e)))?;
    Ok(SecretString::from(text))
}

/// Reads a file that is not secret (a certificate), once it is known to be a
/// regular file: a FIFO or a device is refused without opening it.
pub fn read_public(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    #[cfg(unix)]
    regular_file(path)?;
    std::fs::read(path).map_err(|e| refused(path, Problem::Unreadable(e)))
}

/// The effective user id of this process.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, problem: Problem) -> SecretFileError {
    SecretFileError {
        path: path.to_path_buf(),
        problem,
    }
}

/// The metadata of `path` if it is a regular file (following symlinks).
#[cfg(unix)]
fn regular_file(path: &Path) -> Result<std::fs::Metadata, SecretFileError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| refused(path, Problem::Unreadable(e)))?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(meta);
    }
    let what = if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Err(refused(path, Problem::NotAFile(what)))
}

/// A secret file must be a regular file (not a FIFO, device or folder), owned
/// by `uid` (idsync's user) or root, readable by nobody else, in a folder
/// nobody else can write to.
#[cfg(unix)]
pub fn check_secret_file(path: &Path, uid: u32) -> Result<(), SecretFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = regular_file(path)?;
    if meta.uid() != uid && meta.uid() != ROOT_UID {
        let owner = meta.uid();
        return Err(refused(path, Problem::Owner { owner, uid }));
    }
    let mode = meta.mode() & 0o777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(refused(path, Problem::Exposed { mode }));
    }
    // The folder the name is in, and the one the file really is in (a symlink).
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for folder in [path.parent(), real.parent()].into_iter().flatten() {
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let Ok(folder_meta) = std::fs::metadata(folder) else {
            continue;
        };
        let mode = folder_meta.mode() & 0o7777;
        if mode & FOLDER_WRITE_BITS != 0 {
            let folder = folder.to_path_buf();
            return Err(refused(path, Problem::FolderWritable { folder, mode }));
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_may_be_public_but_not_a_fifo() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("app.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_public(&pem).is_ok());
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // No writer: opening it would block this test forever.
        let e = read_public(&fifo).unwrap_err();
        assert!(matches!(e.problem, Problem::NotAFile("a FIFO")), "{e}");
        assert_eq!(
            e.message("certificate file"),
            format!(
                "certificate file {} is a FIFO, not a regular file",
                fifo.display()
            )
        );
    }
}

//! Files idsync reads credentials from — the SCIM token, the LDAP bind
//! password, the Entra client secret and private key — and the one rule they
//! are held to, checked before the file is opened: a regular file (a FIFO with
//! no writer would block forever), owned by idsync's user or root, readable by
//! nobody else, in a folder nobody else can write to. "Nobody else" allows
//! one thing: read access for idsync's own group (its effective group, not
//! root's), which is how Kubernetes hands a pod its Secret files when the
//! pod has an `fsGroup` (owned by root, group fsGroup, mode 0440, whatever
//! `defaultMode` says). And a folder on a read-only mount is one nobody can
//! write to, whatever its mode (a Secret volume's root is a read-only tmpfs
//! of mode 1777). Owns the rule and its
//! wording; each caller turns a refusal into its own layer's error and says
//! what the content must be (trimmed, not empty). Imports nothing of idsync.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

/// Permission bits of group and others: a secret file with any of them is
/// refused, except [`GROUP_READ`] for idsync's own group.
#[cfg(unix)]
const GROUP_OTHER_BITS: u32 = 0o077;

/// The group's read bit: allowed when the file's group is idsync's effective
/// group (and that is not root's), as Kubernetes' `fsGroup` leaves Secret
/// files.
#[cfg(unix)]
const GROUP_READ: u32 = 0o040;

/// root's group id: never counted as idsync's own group.
#[cfg(unix)]
const ROOT_GID: u32 = 0;

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

/// The effective group id of this process.
#[cfg(unix)]
pub fn current_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
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
    check_secret_file_as(path, uid, current_gid())
}

/// [`check_secret_file`] for idsync running as `uid` with effective group
/// `gid`: read access for that group (unless it is root's) is allowed.
#[cfg(unix)]
pub fn check_secret_file_as(path: &Path, uid: u32, gid: u32) -> Result<(), SecretFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = regular_file(path)?;
    if meta.uid() != uid && meta.uid() != ROOT_UID {
        let owner = meta.uid();
        return Err(refused(path, Problem::Owner { owner, uid }));
    }
    let mode = meta.mode() & 0o777;
    let own_group = meta.gid() == gid && gid != ROOT_GID;
    let allowed = if own_group { GROUP_READ } else { 0 };
    if mode & GROUP_OTHER_BITS & !allowed != 0 {
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
        if mode & FOLDER_WRITE_BITS != 0 && !read_only_mount(folder) {
            let folder = folder.to_path_buf();
            return Err(refused(path, Problem::FolderWritable { folder, mode }));
        }
    }
    Ok(())
}

/// Whether `folder` is on a file system mounted read-only, where nobody can
/// write whatever its mode says: Kubernetes mounts a Secret volume so, on a
/// tmpfs whose root has mode 1777.
#[cfg(unix)]
fn read_only_mount(folder: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(folder.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is a NUL-terminated path and `stat` is written by a
    // successful call before it is read.
    let ok = unsafe { libc::statvfs(name.as_ptr(), stat.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call above.
    ok && unsafe { stat.assume_init() }.f_flag & libc::ST_RDONLY != 0
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Kubernetes' Secret volume under a pod's `fsGroup`: the file is
    /// root's, group fsGroup, mode 0440. Accepted when fsGroup is idsync's
    /// effective group; refused for any other group, for root's group, and
    /// when the group may also write.
    #[test]
    fn a_secret_readable_by_idsyncs_own_group_is_accepted_as_kubernetes_mounts_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("scim-token");
        std::fs::write(&file, "tok\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        let owner = std::fs::metadata(&file).unwrap().uid();
        // As root (the kubelet), hand the file to group 10001 (the fsGroup).
        if owner == ROOT_UID {
            std::os::unix::fs::chown(&file, None, Some(10001)).expect("chgrp as root");
        }
        let group = std::fs::metadata(&file).unwrap().gid();
        assert_ne!(group, ROOT_GID, "run as a user whose group is not root's");
        assert!(check_secret_file_as(&file, owner, group).is_ok());
        let e = check_secret_file_as(&file, owner, group + 1).unwrap_err();
        assert!(matches!(e.problem, Problem::Exposed { mode: 0o440 }), "{e}");
        for mode in [0o460, 0o444, 0o450] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_secret_file_as(&file, owner, group).unwrap_err();
            assert!(
                matches!(e.problem, Problem::Exposed { .. }),
                "{mode:o}: {e}"
            );
        }
        // Root's group is shared by system accounts: never idsync's own.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        if owner == ROOT_UID {
            std::os::unix::fs::chown(&file, None, Some(ROOT_GID)).unwrap();
            let e = check_secret_file_as(&file, owner, ROOT_GID).unwrap_err();
            assert!(matches!(e.problem, Problem::Exposed { .. }), "{e}");
        }
    }

    #[test]
    fn a_writable_folder_is_not_a_read_only_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!read_only_mount(dir.path()));
        assert!(!read_only_mount(Path::new("/no/such/folder")));
    }

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

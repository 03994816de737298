//! Which commit `idsync --version` names. The build script includes this file
//! and runs it with the real git; the tests run it with a git of their own.

/// `IDSYNC_BUILD_COMMIT` when set (a build without `.git`, e.g. from a source
/// tarball in CI), else HEAD's short hash with `-dirty` when tracked files
/// differ from it, else "unknown": the build never fails for want of git.
/// `git` runs git with the given arguments and answers its trimmed output, or
/// None when git is missing or fails.
pub(crate) fn resolve(
    override_commit: Option<&str>,
    git: &mut dyn FnMut(&[&str]) -> Option<String>,
) -> String {
    if let Some(commit) = override_commit.map(str::trim)
        && !commit.is_empty()
    {
        return commit.to_string();
    }
    let Some(head) = git(&["rev-parse", "--short=10", "HEAD"]).filter(|h| !h.is_empty()) else {
        return "unknown".to_string();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A git that knows HEAD `head` and answers `status` with `status`.
    fn git_with(
        head: Option<&'static str>,
        status: &'static str,
    ) -> impl FnMut(&[&str]) -> Option<String> {
        move |args: &[&str]| match args.first() {
            Some(&"rev-parse") => head.map(str::to_string),
            Some(&"status") => Some(status.to_string()),
            _ => None,
        }
    }

    #[test]
    fn the_override_wins_over_git() {
        let mut git = git_with(Some("0123456789"), " M src/main.rs");
        assert_eq!(resolve(Some(" v1-ci \n"), &mut git), "v1-ci");
        // An empty override is no override.
        assert_eq!(resolve(Some(""), &mut git), "0123456789-dirty");
    }

    #[test]
    fn head_is_dirty_only_when_tracked_files_changed() {
        assert_eq!(
            resolve(None, &mut git_with(Some("0123456789"), "")),
            "0123456789"
        );
        assert_eq!(
            resolve(None, &mut git_with(Some("0123456789"), " M build.rs")),
            "0123456789-dirty"
        );
    }

    #[test]
    fn without_git_or_a_repository_the_commit_is_unknown() {
        assert_eq!(resolve(None, &mut |_: &[&str]| None), "unknown");
        assert_eq!(resolve(None, &mut git_with(Some(""), "")), "unknown");
    }
}

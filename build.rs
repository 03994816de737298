//! Build script: records what the binary is built from (the git commit, the
//! target, the compiler) for `idsync --version`, and writes the manual pages
//! and shell completions from the command line's own definitions
//! (`src/cli/args.rs`, included here as it is), so they never drift from
//! what the binary parses.
//!
//! The pages (plain, and gzipped for the package) and completions go to `<target dir>/<profile>/man/` and
//! `<target dir>/<profile>/completions/`, where `cargo deb` packages them
//! from (`target/release/...` in Cargo.toml). Nothing here fails the build
//! for want of git: the commit is then "unknown".

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};

#[allow(dead_code)]
#[path = "src/cli/args.rs"]
mod args;
#[path = "src/cli/commit.rs"]
mod commit;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed=IDSYNC_BUILD_COMMIT");
    println!("cargo:rustc-env=IDSYNC_GIT_COMMIT={}", commit());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=IDSYNC_TARGET={target}");
    println!("cargo:rustc-env=IDSYNC_RUSTC={}", rustc_version());

    let out = profile_dir();
    if let Err(e) = write_man_pages(&out.join("man")) {
        panic!("cannot write the manual pages to {}: {e}", out.display());
    }
    if let Err(e) = write_completions(&out.join("completions")) {
        panic!(
            "cannot write the shell completions to {}: {e}",
            out.display()
        );
    }
}

/// The commit (`src/cli/commit.rs` says how); reruns this script when HEAD
/// moves or the index changes (commit, add, checkout).
fn commit() -> String {
    let override_commit = std::env::var("IDSYNC_BUILD_COMMIT").ok();
    let commit = commit::resolve(override_commit.as_deref(), &mut |args: &[&str]| git(args));
    if override_commit.is_none() {
        for name in ["HEAD", "index", "packed-refs"] {
            watch_git_path(name);
        }
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch_git_path(&reference);
        }
    }
    commit
}

/// Reruns this script when the git file `name` changes (only if it exists:
/// a missing path would rerun it on every build).
fn watch_git_path(name: &str) {
    if let Some(path) = git(&["rev-parse", "--git-path", name])
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// `git ARGS` in the crate's folder: its trimmed output, or None if git is
/// missing, this is no repository, or it failed.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Process::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    // `--git-path` answers relative to the crate's folder.
    if args.contains(&"--git-path") && Path::new(&text).is_relative() {
        return Some(Path::new(&dir).join(text).display().to_string());
    }
    Some(text)
}

/// `rustc --version` of the compiler cargo uses.
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Process::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `<target dir>/<profile>` (cargo-deb's `target/release`): three levels up
/// from `OUT_DIR` (`<profile>/build/idsync-HASH/out`).
fn profile_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    out.ancestors().nth(3).map(Path::to_path_buf).unwrap_or(out)
}

/// `idsync(1)` and one page per command, nested ones included
/// (`idsync-state-check(1)`).
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = args::Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_page(&cmd, dir, None)
}

fn write_page(cmd: &clap::Command, dir: &Path, parent: Option<&str>) -> std::io::Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let children: Vec<String> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| {
            sub.get_display_name()
                .unwrap_or_else(|| sub.get_name())
                .to_string()
        })
        .collect();
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_page(sub, dir, Some(&name))?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("idsync {}", env!("CARGO_PKG_VERSION")))
        .manual("idsync manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if !children.is_empty() {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = Roff::new();
    examples_section(&mut roff, cmd);
    list_section(&mut roff, "EXIT STATUS", &exit_codes());
    if parent.is_none() {
        list_section(&mut roff, "ENVIRONMENT", &pairs(args::ENVIRONMENT));
        list_section(&mut roff, "FILES", &pairs(args::FILES));
    }
    see_also_section(&mut roff, parent, &children);
    roff.to_writer(&mut page)?;
    let page = once_preamble(&String::from_utf8_lossy(&page));
    let path = dir.join(man.get_filename());
    std::fs::write(&path, &page)?;
    // The packaged copy, gzipped (mtime 0 in the header: reproducible).
    let gz = std::fs::File::create(path.with_extension("1.gz"))?;
    let mut encoder = flate2::write::GzEncoder::new(gz, flate2::Compression::best());
    encoder.write_all(page.as_bytes())?;
    encoder.finish()?.sync_all()
}

/// The page with roff's apostrophe preamble (which each separately rendered
/// section starts with) only at its top.
fn once_preamble(page: &str) -> String {
    const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    match page.strip_prefix(PREAMBLE) {
        Some(rest) => format!("{PREAMBLE}{}", rest.replace(PREAMBLE, "")),
        None => page.to_string(),
    }
}

/// The command's `Examples:` (its `after_long_help`), as typed.
fn examples_section(roff: &mut Roff, cmd: &clap::Command) {
    let Some(help) = cmd.get_after_long_help() else {
        return;
    };
    let text = help.to_string();
    let body = text.strip_prefix("Examples:\n").unwrap_or(&text);
    roff.control("SH", ["EXAMPLES"]);
    roff.control("nf", [] as [&str; 0]);
    for line in body.lines() {
        roff.text([roman(line.trim_start())]);
    }
    roff.control("fi", [] as [&str; 0]);
}

fn exit_codes() -> Vec<(String, String)> {
    args::EXIT_CODES
        .iter()
        .map(|(code, text)| (code.to_string(), text.to_string()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(term, text)| (term.to_string(), text.to_string()))
        .collect()
}

/// A section of tagged paragraphs: the term in bold, its text indented.
fn list_section(roff: &mut Roff, title: &str, items: &[(String, String)]) {
    roff.control("SH", [title]);
    for (term, text) in items {
        roff.control("TP", [] as [&str; 0]);
        roff.text([bold(term.as_str())]);
        roff.text([roman(text.as_str())]);
    }
}

/// idsync(1), the parent page, the pages of the subcommands, and for the
/// top page the systemd pages the units need.
fn see_also_section(roff: &mut Roff, parent: Option<&str>, children: &[String]) {
    let mut pages: Vec<String> = parent.into_iter().map(str::to_string).collect();
    if parent.is_some_and(|p| p != "idsync") {
        pages.insert(0, "idsync".to_string());
    }
    pages.extend(children.iter().cloned());
    if parent.is_none() {
        pages.extend(["systemd.service".to_string(), "systemd.timer".to_string()]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let last = pages.len().saturating_sub(1);
    let mut inlines = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let section = if page.starts_with("systemd.") {
            "5"
        } else {
            "1"
        };
        inlines.push(bold(page.as_str()));
        let sep = if i == last { "" } else { ", " };
        inlines.push(roman(format!("({section}){sep}")));
    }
    roff.text(inlines);
}

/// bash, zsh and fish completions, under the names each shell looks for.
fn write_completions(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (shell, file) in [
        (Shell::Bash, "idsync"),
        (Shell::Zsh, "_idsync"),
        (Shell::Fish, "idsync.fish"),
    ] {
        let mut cmd = args::Cli::command();
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, "idsync", &mut text);
        std::fs::write(dir.join(file), text)?;
    }
    Ok(())
}

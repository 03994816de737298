//! The `idsync` binary: everything lives in the library; see `idsync::cli`.

fn main() -> std::process::ExitCode {
    idsync::cli::main()
}

//! The `idsync` binary: everything lives in the library; see `idsync::cli`.

// A cycle allocates and frees millions of small strings (one per attribute of
// every user); mimalloc does that markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    idsync::cli::main()
}

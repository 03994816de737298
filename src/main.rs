//! The `idsync` binary: everything lives in the library; see `idsync::cli`.

// A cycle allocates and frees millions of small strings (one per attribute of
// every user); mimalloc does that markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`; the bindings name no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Memory freed is handed back to the system after 10 ms instead of
    // mimalloc's default second: a cycle's short-lived buffers (a million
    // keys' digests, sorted once) then no longer add to its peak, which
    // they did by about 20 MiB at a million users.
    // SAFETY: sets one of mimalloc's options, which its API allows at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    idsync::cli::main()
}

use clap::Parser;

fn main() -> std::process::ExitCode {
    keep_large_buffers_out_of_the_heap();
    let cli = mailvault::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    runtime.block_on(mailvault::cli::execute(cli))
}

/// A message passes through several threads: read on one, decompressed or hashed on
/// another, written from a third. glibc raises its mmap threshold whenever such a buffer is
/// freed, so after the first large messages they are carved out of per-thread arenas (up to
/// eight per core), and each arena keeps the space once freed: a long export or run grows by
/// megabytes per arena although it holds no more messages at once, until a pod's memory
/// limit ends it. A fixed threshold keeps every buffer of 256 KiB or more in a mapping of its
/// own, returned to the system when freed. A fixed threshold also stops glibc from raising
/// the trim threshold with it; 4 MiB of free space kept at the top of a heap (a bound, not
/// a growth) spares the deletion pass giving pages back and faulting them in again per
/// message (7% of its CPU in the benchmark). `MALLOC_MMAP_THRESHOLD_` and
/// `MALLOC_TRIM_THRESHOLD_` still override either.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_buffers_out_of_the_heap() {
    for (variable, parameter, value) in [
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 256 << 10),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 4 << 20),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets a tunable of the allocator, and no other thread
            // exists yet.
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}

/// Other allocators do not move their threshold (musl) or are not glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_buffers_out_of_the_heap() {}

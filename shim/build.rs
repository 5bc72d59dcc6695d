//! Links the shim as a position-dependent executable (`-no-pie`), as Debian links runc and
//! containerd-shim-runc-v2. A PIE binary of this size carries ~72k relative relocations:
//! every process (`shim start`, the daemon) applies them at exec, and the 1.1 MiB of
//! relocated read-only data becomes private memory in the shim, its zygote and every
//! container init (3.4 MiB of RSS per container). Position-dependent, that data stays
//! clean file pages: shared through the page cache and droppable when idle
//! (src/trim.rs). Measured in docs/benchmarks.md.
fn main() {
    // rustc passes `-pie` to the linker first; the later `-no-pie` wins
    println!("cargo:rustc-link-arg-bins=-no-pie");
}

//! What `ldd` says of a binary: the shim's tests and xtask's image builder both need to
//! know a static binary (the release shim) from a dynamic one.

use std::process::Output;

/// Whether `ldd`'s run says the binary is static: it fails with the line "not a dynamic
/// executable", on stdout or stderr depending on the ldd (Debian's, run from xtask,
/// writes stderr).
pub fn says_static(out: &Output) -> bool {
    !out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .any(|l| l.trim() == "not a dynamic executable")
}

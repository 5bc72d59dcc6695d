//! Sample workload images for the single-node cluster, written by our code: an ordinary
//! busybox image (the host's static busybox) and a classic Wasm image whose entrypoint is a
//! WASI preview 1 `hello.wasm` compiled from C with Debian's clang + wasi-libc.

use std::path::Path;
use std::process::Command;

use crate::Error;
use crate::oci::{RootfsImage, VARIANT_ANNOTATION};

/// An ordinary image: `/bin/busybox` and `/bin/sh` (the same static binary).
pub const BUSYBOX_IMAGE: &str = "localhost/wasmruntime/busybox:1";
/// A classic `FROM scratch` Wasm image: `/hello.wasm` as entrypoint.
pub const HELLO_WASM_IMAGE: &str = "localhost/wasmruntime/hello-wasm:1";
/// The first line the hello module prints.
pub const HELLO_GREETING: &str = "Hello from WebAssembly on Kubernetes!";

const BUSYBOX: &str = "/bin/busybox";

const HELLO_C: &str = r#"/* A WASI preview 1 command: a greeting, then its arguments and one environment variable. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("Hello from WebAssembly on Kubernetes!\n");
    for (int i = 1; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);
    const char *node = getenv("NODE_NAME");
    printf("running on node %s\n", node ? node : "(unknown)");
    return 0;
}
"#;

fn other(path: &Path, msg: String) -> Error {
    Error::io(path, std::io::Error::other(msg))
}

/// Writes the busybox image tarball; returns its manifest digest.
pub fn busybox_image(out: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(BUSYBOX).map_err(|e| {
        other(
            Path::new(BUSYBOX),
            format!("{e} (apt-get install busybox-static; `cargo xtask testbed` does)"),
        )
    })?;
    RootfsImage::new(BUSYBOX_IMAGE)
        .file("/bin/busybox", bytes.clone(), 0o755)
        .file("/bin/sh", bytes, 0o755)
        .cmd(&["/bin/sh"])
        .write_tar(out)
}

/// Compiles `hello.wasm` in `work` and writes the Wasm image tarball (with the
/// `module.wasm.image/variant=compat-smart` annotation of crun/WasmEdge-style images).
pub fn hello_wasm_image(work: &Path, out: &Path) -> Result<String, Error> {
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let src = work.join("hello.c");
    std::fs::write(&src, HELLO_C).map_err(|e| Error::io(&src, e))?;
    let wasm = work.join("hello.wasm");
    let out_cc = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2", "-o"])
        .arg(&wasm)
        .arg(&src)
        .output()
        .map_err(|e| Error::io(Path::new("clang"), e))?;
    if !out_cc.status.success() {
        return Err(other(
            &src,
            format!(
                "clang --target=wasm32-wasi failed (needs wasi-libc): {}",
                String::from_utf8_lossy(&out_cc.stderr)
            ),
        ));
    }
    let bytes = std::fs::read(&wasm).map_err(|e| Error::io(&wasm, e))?;
    RootfsImage::new(HELLO_WASM_IMAGE)
        .file("/hello.wasm", bytes, 0o755)
        .entrypoint(&["/hello.wasm"])
        .annotation(VARIANT_ANNOTATION, "compat-smart")
        .write_tar(out)
}

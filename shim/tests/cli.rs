//! The binary's command line: clap answers humans, containerd's flags reach the library.

use std::process::Command;

fn shim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_containerd-shim-wasmtime-v1"))
        .args(args)
        .env("WASMRUNTIME_CACHE_DIR", "off")
        .output()
        .expect("run the shim binary")
}

#[test]
fn help_explains_the_binary() {
    let out = shim(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("io.containerd.wasmtime.v1"), "{text}");
    assert!(text.contains("WASMRUNTIME_NETWORK"), "{text}");
}

#[test]
fn no_arguments_prints_help() {
    let out = shim(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("containerd"));
}

#[test]
fn double_dash_version_is_clap() {
    let out = shim(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("containerd-shim-wasmtime-v1 "), "{text}");
    assert!(text.contains("wasmtime 48.0.8"), "{text}");
}

/// containerd's `-v` goes to containerd-shim-wasm, which prints the runtime name.
#[test]
fn go_style_v_is_delegated() {
    let out = shim(&["-v"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Runtime: wasmtime"), "{text}");
}

/// Nodes must need nothing beyond glibc. Run against the release binary:
/// `SHIM_BINARY=$CARGO_TARGET_DIR/release/containerd-shim-wasmtime-v1 cargo test -p
/// containerd-shim-wasmtime --test cli -- --ignored`
#[test]
#[ignore = "needs SHIM_BINARY pointing at a release build"]
fn links_only_glibc() {
    let binary = std::env::var("SHIM_BINARY").expect("SHIM_BINARY");
    let out = Command::new("ldd").arg(&binary).output().expect("ldd");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let glibc = [
        "linux-vdso.so",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    let extra: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !glibc.iter().any(|g| l.contains(g)))
        .collect();
    assert!(extra.is_empty(), "unexpected shared libraries: {extra:#?}");
}

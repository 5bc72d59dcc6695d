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

/// containerd's `-v` goes to the shim's own entry point, which prints the runtime name as
/// containerd's shims do.
#[test]
fn go_style_v_is_delegated() {
    let out = shim(&["-v"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Runtime: io.containerd.wasmtime.v1"),
        "{text}"
    );
}

/// containerd 2.x asks `-info` for the runtime's introspection record (protobuf
/// `RuntimeInfo`): field 1 the runtime name.
#[test]
fn go_style_info_is_a_runtime_info_record() {
    let out = shim(&["-info"]);
    assert!(out.status.success(), "{out:?}");
    let name = b"io.containerd.wasmtime.v1";
    // tag 1, length-delimited, then the name
    assert_eq!(out.stdout.first(), Some(&0x0a), "{:?}", out.stdout);
    assert_eq!(out.stdout.get(1), Some(&(name.len() as u8)));
    assert_eq!(out.stdout.get(2..2 + name.len()), Some(&name[..]));
}

/// The binary under test: `$SHIM_BINARY` (e.g. the release build), else this build's.
/// Both link libseccomp statically (`.cargo/config.toml`).
fn binary() -> String {
    std::env::var("SHIM_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_containerd-shim-wasmtime-v1").to_string())
}

/// Nodes must need nothing beyond glibc: the release build needs no library at all; a
/// plain build only glibc's (and `libgcc_s`, which Debian's libc6 itself depends on;
/// Rust's unwinder uses it).
#[test]
fn links_only_glibc() {
    let out = Command::new("ldd").arg(binary()).output().expect("ldd");
    if testbed::ldd::says_static(&out) {
        return;
    }
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
    let libs: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(libs.iter().any(|l| l.starts_with("libc.so.6")), "{text}");
    let extra: Vec<&&str> = libs
        .iter()
        .filter(|l| !glibc.iter().any(|g| l.contains(g)))
        .collect();
    assert!(extra.is_empty(), "unexpected shared libraries: {extra:#?}");
}

/// Position-dependent (shim/build.rs): no relative relocations to apply at exec, and
/// read-only data that stays clean file pages. ELF `e_type` (offset 16) is ET_EXEC (2),
/// not ET_DYN (3, a PIE).
#[test]
fn links_position_dependent() {
    let bytes = std::fs::read(binary()).expect("the shim binary");
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 2, "e_type");
}

/// The glibc the shim needs (documented in README.md): the highest `GLIBC_2.N` symbol
/// version the binary references.
const MIN_GLIBC: (u32, u32) = (2, 34);

#[test]
fn readme_states_the_glibc_the_binary_needs() {
    let readme = std::fs::read_to_string(
        testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("README.md"),
    )
    .expect("README.md");
    let ldd = Command::new("ldd").arg(binary()).output().expect("ldd");
    if testbed::ldd::says_static(&ldd) {
        let documented = "release binary is linked statically";
        assert!(
            readme.contains(documented),
            "README.md must say {documented:?}"
        );
        return;
    }
    let out = Command::new("objdump")
        .args(["-T", &binary()])
        .output()
        .expect("objdump (binutils)");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let highest = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let (major, minor) = v.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        })
        .max()
        .expect("the binary references versioned glibc symbols");
    assert_eq!(
        highest, MIN_GLIBC,
        "the shim now needs glibc {}.{}: update MIN_GLIBC and the README",
        highest.0, highest.1
    );
    let documented = format!("glibc >= {}.{}", MIN_GLIBC.0, MIN_GLIBC.1);
    assert!(
        readme.contains(&documented),
        "README.md must say {documented:?}"
    );
}

//! Preopens: what a guest can and cannot reach. `fs.wasm` opens paths relative to fd 3,
//! the first preopen, and exits with the WASI errno of a failed call.

use std::path::Path;

use containerd_shim_wasmtime::engine::{Outcome, WasmEngine};
use containerd_shim_wasmtime::mounts::Preopen;

use crate::fixtures::{compile, config, run, wasm};

struct World {
    _tmp: tempfile::TempDir,
    volume: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// `volume/` is what the guest gets; `secret.txt` next to it must stay unreachable.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("hello.txt"), "contents of a mounted file\n").unwrap();
    let outside = tmp.path().join("secret.txt");
    std::fs::write(&outside, "host secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, volume.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", volume.join("rel-link")).unwrap();
    World {
        volume,
        outside,
        _tmp: tmp,
    }
}

async fn fs(preopen: Preopen, args: &[&str]) -> (Outcome, String) {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "fs", &wasm("fs"));
    let mut argv = vec!["fs.wasm"];
    argv.extend_from_slice(args);
    let (mut cfg, out) = config(&argv);
    cfg.preopens = vec![preopen];
    let outcome = run(&engine, &guest, cfg).await;
    (outcome, out.stdout())
}

fn ro(dir: &Path) -> Preopen {
    Preopen::read_only(dir, "/data")
}

fn rw(dir: &Path) -> Preopen {
    Preopen::read_write(dir, "/data")
}

#[tokio::test]
async fn reads_a_file_from_a_read_only_preopen() {
    let w = world();
    let (outcome, stdout) = fs(ro(&w.volume), &["read", "hello.txt"]).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stdout, "contents of a mounted file\n");
}

#[tokio::test]
async fn writing_to_a_read_only_preopen_is_denied() {
    let w = world();
    let (outcome, _) = fs(ro(&w.volume), &["write", "new.txt"]).await;
    assert!(
        matches!(outcome, Outcome::Exited(errno) if errno != 0),
        "write must fail with an errno, got {outcome:?}"
    );
    assert!(!w.volume.join("new.txt").exists());

    // overwriting an existing file is denied as well
    let (outcome, _) = fs(ro(&w.volume), &["write", "hello.txt"]).await;
    assert_ne!(outcome, Outcome::Exited(0));
    assert_eq!(
        std::fs::read_to_string(w.volume.join("hello.txt")).unwrap(),
        "contents of a mounted file\n"
    );
}

#[tokio::test]
async fn writing_to_a_read_write_preopen_works() {
    let w = world();
    let (outcome, _) = fs(rw(&w.volume), &["write", "new.txt"]).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(
        std::fs::read_to_string(w.volume.join("new.txt")).unwrap(),
        "written\n"
    );
}

#[tokio::test]
async fn dot_dot_cannot_leave_the_preopen() {
    let w = world();
    for preopen in [ro(&w.volume), rw(&w.volume)] {
        let (outcome, stdout) = fs(preopen, &["read", "../secret.txt"]).await;
        assert!(
            matches!(outcome, Outcome::Exited(e) if e != 0),
            "{outcome:?}"
        );
        assert_eq!(stdout, "");
    }
    let (outcome, _) = fs(rw(&w.volume), &["write", "../escaped.txt"]).await;
    assert_ne!(outcome, Outcome::Exited(0));
    assert!(!w.outside.with_file_name("escaped.txt").exists());
}

#[tokio::test]
async fn symlinks_cannot_leave_the_preopen() {
    let w = world();
    for link in ["abs-link", "rel-link"] {
        let (outcome, stdout) = fs(ro(&w.volume), &["read", link]).await;
        assert!(
            matches!(outcome, Outcome::Exited(e) if e != 0),
            "{link}: {outcome:?}"
        );
        assert_eq!(stdout, "", "{link}");
    }
    let (outcome, _) = fs(rw(&w.volume), &["write", "abs-link"]).await;
    assert_ne!(outcome, Outcome::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&w.outside).unwrap(),
        "host secret\n"
    );
}

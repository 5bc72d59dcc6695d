//! Precompiled-module cache: the second start of a module does not compile it.
//!
//! One file cache for every image kind (runwasi caches only OCI artifacts, in containerd's
//! content store): `<sha256 of module>-<compatibility key>.cwasm` in [`DEFAULT_CACHE_DIR`]
//! or `$WASMRUNTIME_CACHE_DIR` (`off` disables it). Modules from a rootfs and the Wasm
//! layer of an OCI artifact go through the same [`load_or_compile`].
//!
//! The file cache has a catch: `run_wasi` runs inside the container, after `pivot_root`,
//! where the host's cache directory does not exist. So `main` opens the directory on the
//! host before containerd-shim-wasm forks its zygote ([`open_for_containers`]); the fd is
//! inherited by every container init the zygote forks (youki marks inherited fds
//! close-on-exec, which does not matter because the Wasm executor never execs, and which
//! keeps the fd out of native containers that do). `run_wasi` takes the fd, reads or writes
//! one entry with `openat`/`renameat` relative to it, and closes it before the guest
//! starts, so no guest code ever runs while the process holds a host fd; the guest could
//! not use it anyway (WASI only reaches preopens).
//!
//! Entries are written to a temp name, fsynced and renamed, so a reader never sees a torn
//! artifact. The directory is created 0700: whoever can write it can make the shim load
//! native code. Eviction is not implemented (see README).

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::engine::WasmEngine;
use crate::error::Error;

pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wasmruntime/cache";
pub const CACHE_DIR_ENV: &str = "WASMRUNTIME_CACHE_DIR";

/// A cache directory, held open as a directory fd.
#[derive(Debug)]
pub struct ModuleCache {
    dir: OwnedFd,
    path: PathBuf,
}

impl ModuleCache {
    /// Creates (0700) and opens the directory.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let err = |op, source| Error::Cache {
            op,
            name: path.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| err("creating", e))?;
        let dir = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("opening", e.into()))?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cache entry name: module digest + engine compatibility key.
    pub fn key(engine: &WasmEngine, wasm: &[u8]) -> String {
        let digest = Sha256::digest(wasm);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}-{}.cwasm", engine.compatibility_key())
    }

    /// The entry's bytes; `None` when absent (or unreadable, which is logged).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let fd = match rustix::fs::openat(
            &self.dir,
            key,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return None,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot open cache entry");
                return None;
            }
        };
        let mut bytes = Vec::new();
        match std::fs::File::from(fd).read_to_end(&mut bytes) {
            Ok(_) => Some(bytes),
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read cache entry");
                None
            }
        }
    }

    /// Writes the entry atomically: temp file, fsync, rename over the final name.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tmp = format!(".{key}.{}.{nanos}.tmp", std::process::id());
        let err = |op, source| Error::Cache {
            op,
            name: key.to_string(),
            source,
        };
        let fd = rustix::fs::openat(
            &self.dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err("creating a temp file for", e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| err("writing", e))
            .and_then(|()| {
                rustix::fs::renameat(&self.dir, &tmp, &self.dir, key)
                    .map_err(|e| err("renaming into place", e.into()))
            });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, rustix::fs::AtFlags::empty());
        }
        written
    }
}

/// The cache opened on the host by `main`, waiting to be taken by one container init.
static INHERITED: Mutex<Option<ModuleCache>> = Mutex::new(None);

/// The configured cache directory, or `None` if caching is off.
pub fn configured_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_DIR_ENV) {
        None => Some(PathBuf::from(DEFAULT_CACHE_DIR)),
        Some(v) if v.is_empty() || v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
    }
}

/// Opens the cache directory on the host so container inits inherit it (module docs).
/// Must run before the zygote is forked (top of the shim daemon's `main`).
/// Failure (not root, read-only /var) only disables the file cache.
pub fn open_for_containers() {
    let Some(dir) = configured_dir() else {
        return;
    };
    match ModuleCache::open(&dir) {
        Ok(cache) => *INHERITED.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache),
        Err(e) => tracing::warn!(error = %e, "precompiled-module file cache disabled"),
    }
}

/// Takes the inherited cache; the caller drops it (closing the host fd) when done.
pub fn take_inherited() -> Option<ModuleCache> {
    INHERITED.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Loads a module from `cache` or compiles it and stores the result. Cache trouble never
/// fails the run: it is logged and the module compiled.
pub fn load_or_compile(
    engine: &WasmEngine,
    cache: Option<&ModuleCache>,
    origin: &str,
    wasm: &[u8],
) -> Result<crate::engine::Guest, Error> {
    let Some(cache) = cache else {
        return engine.compile(origin, wasm);
    };
    // validate first so a non-Wasm file gets the clear error, not a cache miss
    crate::engine::check_wasm(origin, wasm)?;
    let key = ModuleCache::key(engine, wasm);
    if let Some(bytes) = cache.get(&key) {
        match engine.deserialize(origin, &bytes) {
            Ok(guest) => {
                tracing::info!(key, "precompiled module cache hit");
                return Ok(guest);
            }
            Err(e) => tracing::warn!(key, error = %e, "unusable cache entry; recompiling"),
        }
    }
    let guest = engine.compile(origin, wasm)?;
    match engine
        .serialize(&guest)
        .and_then(|bytes| cache.put(&key, &bytes))
    {
        Ok(()) => tracing::info!(key, "stored precompiled module"),
        Err(e) => tracing::warn!(key, error = %e, "could not store precompiled module"),
    }
    Ok(guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_atomic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(&dir.path().join("c")).unwrap();
        assert_eq!(cache.get("k.cwasm"), None);
        cache.put("k.cwasm", b"one").unwrap();
        cache.put("k.cwasm", b"two").unwrap();
        assert_eq!(cache.get("k.cwasm").as_deref(), Some(&b"two"[..]));
        let names: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["k.cwasm"]);
        let mode = std::fs::metadata(cache.path()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
    }

    #[test]
    fn key_names_module_digest_and_engine() {
        let engine = WasmEngine::new().unwrap();
        let a = ModuleCache::key(&engine, b"\0asm\x01\0\0\0");
        let b = ModuleCache::key(&engine, b"\0asm\x01\0\0\0 ");
        assert_ne!(a, b);
        assert!(a.starts_with("93a44bbb96c75121")); // sha256 of the 8-byte empty module
        assert!(a.ends_with(&format!("-{}.cwasm", engine.compatibility_key())));
        assert_eq!(
            a,
            ModuleCache::key(&WasmEngine::new().unwrap(), b"\0asm\x01\0\0\0")
        );
    }
}

//! `containerd-shim-wasmtime-v1`: runs WebAssembly containers with Wasmtime on top of
//! runwasi's `containerd-shim-wasm` library.
//!
//! The library does the container work (youki: namespaces, cgroups, rootfs, mounts,
//! seccomp); this crate is only the engine that runs inside the container's init process:
//!
//! - [`engine`]: compile and run one guest (core module or component) with WASI, memory
//!   limits and epoch-based stopping. Everything `run_wasi` does goes through it, so its
//!   tests exercise the production path.
//! - [`http`]: serves components exporting `wasi:http/incoming-handler`.
//! - [`mounts`], [`limits`]: what the guest may see (preopens) and how much memory it may
//!   use, derived from the container's own `/proc/self/{mountinfo,cgroup}`.
//! - [`logging`]: our `tracing` events into the shim log, without a record per WASI call.
//! - [`options`]: the node's guest defaults (`options.json` beside the shim, written by
//!   the installer from the WasmRuntime).
//! - [`cache`]: precompiled-module cache (file cache for rootfs modules, [`Compiler`] for OCI
//!   Wasm artifacts).
//! - [`shim`]: the `Shim`/`Sandbox` glue to containerd-shim-wasm.
//!
//! [`Compiler`]: containerd_shim_wasm::shim::Compiler

pub mod cache;
pub mod engine;
pub mod http;
pub mod limits;
pub mod logging;
pub mod mounts;
pub mod options;
pub mod shim;

mod error;

pub use error::Error;
pub use shim::WasmtimeShim;

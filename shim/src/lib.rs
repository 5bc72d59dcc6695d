//! `containerd-shim-wasmtime-v1`: runs WebAssembly containers with Wasmtime.
//!
//! The process model is ours, on containerd-shim (ttrpc task service, reaper, events),
//! youki's libcontainer (namespaces, cgroups, rootfs, mounts, seccomp) and runwasi's
//! zygote; containerd-shim-wasm supplies the runtime-context types the engine reads:
//!
//! - [`daemon`]: containerd's entry points (`start`, `delete`, the daemon).
//! - [`task`]: the task service (create, start, kill, wait, pids, …, OOM events).
//! - [`container`]: youki containers in the zygote; the executor that runs Wasm.
//! - [`artifact`]: Wasm layers of OCI artifacts, read from containerd's content store.
//! - [`events`]: task events to containerd, retried across a containerd restart.
//!
//! - [`engine`]: compile and run one guest (core module or component) with WASI, memory
//!   limits and epoch-based stopping. Everything `run_wasi` does goes through it, so its
//!   tests exercise the production path.
//! - [`http`]: serves components exporting `wasi:http/incoming-handler`.
//! - [`mounts`], [`limits`]: what the guest may see (preopens) and how much memory it may
//!   use, derived from the container's own `/proc/self/{mountinfo,cgroup}`.
//! - [`logging`]: our `tracing` events into the shim log, without a record per WASI call.
//! - [`knobs`]: per-container settings from the container env or the pod's annotations.
//! - [`options`]: the node's guest defaults (`options.json` beside the shim, written by
//!   the installer from the WasmRuntime).
//! - [`cache`]: precompiled-module cache, one file cache for every image kind.
//! - [`shim`]: what the container's init runs: entrypoint, guest configuration, exit.
//! - [`placement`]: a container into its cgroup v1 hierarchies without a grace period.
//! - [`prewarm`]: the kernel's wait for a cgroup migration, started before youki's.
//! - [`trim`]: idle processes unmap the clean code pages they no longer run.

pub mod artifact;
pub mod cache;
pub mod container;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod http;
pub mod knobs;
pub mod limits;
pub mod logging;
pub mod mounts;
pub mod options;
pub mod placement;
pub mod prewarm;
pub mod rootfs;
pub mod shim;
pub mod task;
pub mod trim;

mod error;

pub use error::Error;
pub use shim::WasmtimeSandbox;

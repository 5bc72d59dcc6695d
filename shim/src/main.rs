//! `containerd-shim-wasmtime-v1`. containerd starts it with Go-style flags
//! (`-namespace n -address a -id i start`, `-v`, `-info`, `delete`); those go untouched
//! to [`daemon::main`]. clap only answers a human: no arguments, `--help`, `--version`.

use std::ffi::OsString;

use clap::Parser;
use containerd_shim_wasmtime::daemon;

const LONG_ABOUT: &str = "\
containerd shim v2 that runs WebAssembly containers with Wasmtime.

containerd starts this binary itself; it is not meant to be run by hand. Register it as a
runtime with runtime_type \"io.containerd.wasmtime.v1\" (and runtime_path pointing here),
then run a container whose entrypoint is a .wasm file, or an OCI Wasm artifact, e.g.
  ctr run --rm --runtime io.containerd.wasmtime.v1 <image> <id>

Runs WASI preview 1 command modules (_start), WASI preview 2 components (wasi:cli/run)
and wasi:http/incoming-handler components (served over HTTP). The guest sees the container rootfs read-only and its volumes with their
own ro/rw modes; its linear memory is capped at the container memory limit (exit 137 when
exceeded); SIGTERM stops it (exit 143).

Environment of the container (or the pod annotation in brackets; the env wins):
  WASMRUNTIME_NETWORK=allow|deny   the guest's network access (wasi:sockets, outgoing
    [wasmruntime.dev/network]      wasi:http); without either, the node default applies
  WASMRUNTIME_HTTP_PORT=PORT       port of a wasi:http component [default: 8080]
    [wasmruntime.dev/http-port]
options.json beside this binary (written by wasm-installer; node defaults, read at start):
  {\"network\": \"deny\"|\"allow\", \"precompile\": true|false,
   \"defaultMemoryLimitBytes\": N|null}     [default: deny, true, null]
Environment of the shim (containerd's):
  WASMRUNTIME_CACHE_DIR=DIR   precompiled-module cache [default: /var/lib/wasmruntime/cache]
                              ('off' disables it)

containerd's own flags (-v, -info, -namespace, -address, -id, start, delete) are accepted
as containerd passes them.";

#[derive(Parser)]
#[command(
    name = "containerd-shim-wasmtime-v1",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (wasmtime 48.0.8, containerd-shim 0.8, containerd-shim-wasm 1.0.1)"
    ),
    about = "containerd shim that runs WebAssembly containers with Wasmtime",
    long_about = LONG_ABOUT,
    arg_required_else_help = true
)]
struct HumanCli {}

/// Only these exact invocations are clap's; anything else is containerd's.
fn is_for_humans(args: &[OsString]) -> bool {
    match args {
        [] => true,
        [one] => ["--help", "-h", "--version", "-V"].iter().any(|f| one == f),
        _ => false,
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if is_for_humans(&args) {
        HumanCli::parse();
        return;
    }
    daemon::main(&args);
}

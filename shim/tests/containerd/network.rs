//! Guest network access through real containerd: denied by default, allowed when the
//! container (`WASMRUNTIME_NETWORK`, from the pod spec's env), the pod (annotation
//! `wasmruntime.dev/network`, which CRI copies into the spec) or the node default
//! (`options.json` beside the shim, from the WasmRuntime's `spec.wasm.network`) allows it.
//!
//! The guest (`net_probe.c`, a component using `wasi:sockets` TCP) connects to a listener
//! this test opens on 127.0.0.1; `--net-host` puts the container in the host's network
//! namespace so that address is the same on both sides. Each case is checked from both
//! ends: what the guest reports, and whether the listener saw a connection.

use std::io::Read as _;
use std::net::TcpListener;
use std::time::Duration;

use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, Run, image_name, wasm_image};

crate::on_every_containerd!(
    network_is_denied_by_default_and_allowed_by_the_container_env_or_pod_annotation,
    node_default_from_options_json_allows_and_the_container_or_pod_still_denies,
);

/// What the listener saw of one probe run.
enum Seen {
    Nothing,
    Message(String),
}

/// Runs the probe against a fresh listener; the guest has exited when this looks, so a
/// connection it made is already queued (or absent).
fn probe(bed: &Bed, knobs: &[&str]) -> (Run, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port().to_string();
    let mut flags = vec!["--net-host"];
    flags.extend(knobs);
    let run = bed.run_wasm(
        &flags,
        &image_name("net"),
        &["/app.wasm", "127.0.0.1", &port],
    );
    listener.set_nonblocking(true).expect("nonblocking");
    let seen = match listener.accept() {
        Ok((mut conn, _)) => {
            conn.set_nonblocking(false).expect("blocking");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut text = String::new();
            conn.read_to_string(&mut text).expect("read from the guest");
            Seen::Message(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Seen::Nothing,
        Err(e) => panic!("accept: {e}"),
    };
    (run, seen)
}

fn assert_denied(bed: &Bed, knobs: &[&str]) {
    let (run, seen) = probe(bed, knobs);
    assert_eq!(run.code(), 1, "{knobs:?}: {}", run.describe());
    assert!(
        run.stdout().contains("denied: access-denied"),
        "{knobs:?}: {}",
        run.describe()
    );
    assert!(
        matches!(seen, Seen::Nothing),
        "{knobs:?}: the listener got a connection although the guest was denied"
    );
}

fn assert_allowed(bed: &Bed, knobs: &[&str]) {
    let (run, seen) = probe(bed, knobs);
    assert_eq!(run.code(), 0, "{knobs:?}: {}", run.describe());
    assert!(
        run.stdout().starts_with("connected to 127.0.0.1:"),
        "{knobs:?}: {}",
        run.describe()
    );
    match seen {
        Seen::Message(m) => assert_eq!(m, "hello from the guest\n", "{knobs:?}"),
        Seen::Nothing => panic!("{knobs:?}: the guest says connected, the listener saw nothing"),
    }
}

fn network_is_denied_by_default_and_allowed_by_the_container_env_or_pod_annotation(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("net", &fixtures::net_probe_component()));
    assert_denied(&bed, &[]);
    assert_denied(&bed, &["--env", "WASMRUNTIME_NETWORK=deny"]);
    // an unknown value does not open anything
    assert_denied(&bed, &["--env", "WASMRUNTIME_NETWORK=yes"]);
    assert_allowed(&bed, &["--env", "WASMRUNTIME_NETWORK=allow"]);
    // the pod's annotation (what CRI copies into the spec), overruled by the container env
    assert_allowed(&bed, &["--annotation", "wasmruntime.dev/network=allow"]);
    assert_denied(
        &bed,
        &[
            "--annotation",
            "wasmruntime.dev/network=allow",
            "--env",
            "WASMRUNTIME_NETWORK=deny",
        ],
    );
    testbed::reliability::record(
        "shim",
        &format!(
            "guest opens a TCP connection to a listener on the host's loopback with networking denied (default, `deny`, an unknown value) ({})",
            v.dir
        ),
        "socket refused with access-denied, the listener sees no connection; allowed only by WASMRUNTIME_NETWORK=allow or the annotation wasmruntime.dev/network=allow without a deny in the env",
        "4 denied runs: exit 1 \"denied: access-denied\", listener saw nothing; 2 allowed runs (env, annotation): connected, message received",
    );
}

fn node_default_from_options_json_allows_and_the_container_or_pod_still_denies(v: DebPackage) {
    // what the installer writes for `--guest-network allow`
    let bed = Bed::start_with_options(
        v,
        "{\n  \"network\": \"allow\",\n  \"precompile\": true,\n  \"defaultMemoryLimitBytes\": null\n}\n",
    );
    bed.import(&wasm_image("net", &fixtures::net_probe_component()));
    assert_allowed(&bed, &[]);
    assert_denied(&bed, &["--env", "WASMRUNTIME_NETWORK=deny"]);
    assert_denied(&bed, &["--annotation", "wasmruntime.dev/network=deny"]);
}

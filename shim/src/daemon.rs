//! The shim process as containerd runs it: `start` (spawn or reuse the pod's shim),
//! `delete` (clean up after a shim that died), and the daemon serving the task service.
//! containerd-shim's `run` does the protocol; this is what is ours in it.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim::protos::protobuf::{Message as _, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Flags, StartOpts};
use containerd_shimkit::zygote::Zygote;
use oci_spec::runtime::Spec;

use crate::events::{self, Events};
use crate::task::{ExitSignal, Service};
use crate::{cache, container, limits, logging, options};

/// The runtime's name in containerd's introspection (`ctr plugins`, `-info`).
pub const RUNTIME: &str = "io.containerd.wasmtime.v1";
/// The name youki's state directory is kept under (`/run/containerd/wasmtime/<ns>`),
/// unchanged from containerd-shim-wasm so an upgraded shim finds older containers.
const STATE_NAME: &str = "wasmtime";
/// How long an exiting shim waits for its last events to reach containerd.
const FLUSH: Duration = Duration::from_secs(2);

pub struct Daemon {
    namespace: String,
    /// containerd's gRPC socket
    address: String,
    id: String,
    exit: ExitSignal,
    events: Mutex<Option<Events>>,
}

/// youki's state directory for a bundle (`root` from the bundle's `options.json`, as
/// containerd writes it, else the default).
pub fn state_root(bundle: &Path, namespace: &str) -> Result<std::path::PathBuf, String> {
    containerd_shimkit::sandbox::InstanceConfig {
        bundle: bundle.to_path_buf(),
        namespace: namespace.to_string(),
        ..Default::default()
    }
    .determine_rootdir(STATE_NAME)
    .map_err(|e| e.to_string())
}

impl containerd_shim::Shim for Daemon {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            exit: ExitSignal::default(),
            events: Mutex::new(None),
        }
    }

    /// One shim per pod: containers of a pod share the shim of its sandbox, as with runc.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let spec = Spec::load("config.json").map_err(|e| {
            containerd_shim::Error::InvalidArgument(format!("loading the runtime spec: {e}"))
        })?;
        let grouping = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.kubernetes.cri.sandbox-id"))
            .cloned()
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, vec![])?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd runs `shim delete` in the bundle when the shim is gone: whatever youki
    /// left (state, cgroup, processes) goes too.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        match state_root(&bundle, &self.namespace)
            .and_then(|root| container::delete_leftover(&root, &self.id))
        {
            Ok(found) => tracing::info!(id = self.id, found, "cleaned up after the shim"),
            Err(e) => tracing::warn!(id = self.id, error = e, "cleaning up after the shim"),
        }
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(containerd_shim::util::timestamp().unwrap_or_default()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        if let Some(events) = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && !events.flush(FLUSH)
        {
            tracing::warn!("exiting with events containerd did not take");
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let ttrpc = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::start(events::Containerd::new(&ttrpc, &self.namespace, publisher));
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events.clone());
        Service::new(&self.namespace, &self.address, events, self.exit.clone())
    }
}

fn version_text(argv0: &str) -> String {
    format!(
        "{argv0}:\n  Runtime: {RUNTIME}\n  Version: {}\n  Revision: wasmtime 48.0.8\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// What containerd runs. Single-threaded until the zygote is forked.
pub fn main(args: &[OsString]) {
    let flags = match containerd_shim::parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-wasmtime-v1: {e}");
            std::process::exit(1);
        }
    };
    if flags.version {
        print!("{}", version_text("containerd-shim-wasmtime-v1"));
        return;
    }
    if flags.info {
        let info = RuntimeInfo {
            name: RUNTIME.to_string(),
            version: MessageField::some(RuntimeVersion {
                version: env!("CARGO_PKG_VERSION").to_string(),
                revision: "wasmtime 48.0.8".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = info.write_to_bytes().unwrap_or_default();
        let _ = std::io::stdout().write_all(&bytes);
        return;
    }
    if flags.action == "start" {
        // first, while single-threaded: containerd sends the create right after. Only
        // for youki's own cgroup write: a container the shim places needs no lock (and
        // its mkdir would wait behind this write's grace period).
        let youki_writes = Spec::load("config.json")
            .map(|spec| crate::placement::target(&spec, false).is_none())
            .unwrap_or(true);
        if youki_writes {
            crate::prewarm::cgroup_lock_in_child();
        }
    }
    logging::install();
    // `start` and `delete` are short-lived and need none of this.
    if flags.action.is_empty() {
        crate::trim::one_malloc_arena();
        logging::to_containerd(flags.debug);
        if options::load_beside_binary().precompile {
            cache::open_for_containers();
        }
        limits::open_host_cgroups();
        // Last, and before any thread: the zygote and every container inherit the above.
        Zygote::init();
    }
    containerd_shim::run::<Daemon>(
        RUNTIME,
        Some(Config {
            no_setup_logger: true,
            default_log_level: "info".to_string(),
            no_reaper: false,
            no_sub_reaper: false,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_follows_the_bundle_options() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(
            state_root(bundle.path(), "k8s.io").unwrap(),
            Path::new("/run/containerd/wasmtime/k8s.io")
        );
        std::fs::write(
            bundle.path().join("options.json"),
            r#"{"root":"/var/run/x"}"#,
        )
        .unwrap();
        assert_eq!(
            state_root(bundle.path(), "default").unwrap(),
            Path::new("/var/run/x/default")
        );
    }

    #[test]
    fn version_names_the_runtime() {
        let v = version_text("containerd-shim-wasmtime-v1");
        assert!(
            v.contains(RUNTIME) && v.contains(env!("CARGO_PKG_VERSION")),
            "{v}"
        );
    }
}

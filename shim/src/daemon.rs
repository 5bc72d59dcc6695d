//! The shim process as containerd runs it: `start` (fork the daemon, or reuse the pod's),
//! the daemon serving the task service, and `delete` (clean up after a shim that died).
//! `start` and the daemon's bootstrap are ours (a fork instead of containerd-shim's
//! exec, see [`start`]); `delete` runs on containerd-shim's `run`.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, IntoRawFd as _, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
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

    /// Not reached: `start` is [`start`] (a fork, not containerd-shim's exec).
    fn start_shim(&mut self, _opts: StartOpts) -> containerd_shim::Result<String> {
        Err(containerd_shim::Error::Unimplemented(
            "start runs in daemon::start".to_string(),
        ))
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
    logging::install();
    match flags.action.as_str() {
        "start" => start(flags),
        // a daemon exec'd by an older shim's `start` (a shim upgraded under a pod)
        "" => serve(flags, SOCKET_FD),
        _ => containerd_shim::run::<Daemon>(RUNTIME, Some(config())),
    }
}

/// containerd-shim's settings for `delete`: our own logging, its reaper.
fn config() -> Config {
    Config {
        no_setup_logger: true,
        default_log_level: "info".to_string(),
        no_reaper: false,
        no_sub_reaper: false,
    }
}

/// Where an exec'd daemon finds its listening socket (containerd-shim's convention).
const SOCKET_FD: RawFd = 3;

/// `shim start`: prints the address of the shim that serves this container, forking it
/// first unless its pod's shim runs already (one shim per pod, as with runc). The
/// daemon is a fork of this process, not a new exec of the binary as containerd-shim's
/// `spawn` makes it: containerd waits for the daemon to serve, and an exec costs it the
/// dynamic loader, glibc's and Rust's start-up and faulting the binary in again (the
/// start process alone takes 1-2 ms of CPU for those here).
fn start(flags: Flags) {
    let spec = match Spec::load("config.json") {
        Ok(spec) => spec,
        Err(e) => fail(&format!("loading the runtime spec: {e}")),
    };
    // first, while single-threaded: containerd sends the create right after. Only for
    // youki's own cgroup write: a container the shim places needs no lock (and its mkdir
    // would wait behind this write's grace period).
    if crate::placement::target(&spec, false).is_none() {
        crate::prewarm::cgroup_lock_in_child();
    }
    let grouping = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("io.kubernetes.cri.sandbox-id"))
        .cloned()
        .unwrap_or_else(|| flags.id.clone());
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let socket = Path::new(address.strip_prefix("unix://").unwrap_or(&address));
    let listener = match listen(socket) {
        Ok(listener) => Some(listener),
        // the pod's shim, if it answers; else a dead one's socket, replaced
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if answers(socket) {
                None
            } else {
                let _ = std::fs::remove_file(socket);
                Some(listen(socket).unwrap_or_else(|e| fail(&format!("{address}: {e}"))))
            }
        }
        Err(e) => fail(&format!("{address}: {e}")),
    };
    if let Some(listener) = listener {
        #[allow(unsafe_code)]
        // SAFETY: single-threaded here (the prewarm child is a process of its own)
        match unsafe { libc::fork() } {
            -1 => fail(&format!(
                "forking the shim: {}",
                std::io::Error::last_os_error()
            )),
            0 => {
                // containerd reads this process's stdout and stderr to their end
                detach_stdio();
                show_daemon_args(&flags);
                serve(flags, listener.into_raw_fd())
            }
            _ => drop(listener),
        }
    }
    if let Err(e) = containerd_shim::util::write_address(&address) {
        fail(&format!("writing the address file: {e}"));
    }
    print!("{address}");
    let _ = std::io::stdout().flush();
}

/// A listening socket at `path` (its directory made first).
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

/// Whether a shim serves at `path` (tried for a second, as containerd-shim does).
fn answers(path: &Path) -> bool {
    (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        UnixStream::connect(path).is_ok()
    })
}

fn fail(message: &str) -> ! {
    eprintln!("containerd-shim-wasmtime-v1: {message}");
    std::process::exit(1)
}

/// The command line a daemon of containerd-shim's `spawn` has (`-namespace n -id i
/// -address a`), in place of the `start` one this fork inherited, for `ps` and whoever
/// looks for shims by their arguments: written over the inherited one, which is longer
/// (as setproctitle does; nothing reads the old arguments after this).
fn show_daemon_args(flags: &Flags) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "containerd-shim-wasmtime-v1".into());
    let mut args = vec![exe.into_os_string().into_encoded_bytes()];
    for (flag, value) in [
        ("-namespace", &flags.namespace),
        ("-id", &flags.id),
        ("-address", &flags.address),
    ] {
        args.push(flag.as_bytes().to_vec());
        args.push(value.as_bytes().to_vec());
    }
    if flags.debug {
        args.push(b"-debug".to_vec());
    }
    let line: Vec<u8> = args.join(&0u8);
    // arg_start and arg_end, fields 48 and 49 of /proc/self/stat (45 and 46 after comm)
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<usize> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some((*fields.get(45)?, *fields.get(46)?))
        })
    else {
        return;
    };
    if start == 0 || end <= start || line.len() >= end - start {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: [start, end) is this process's argument strings, writable memory at the top
    // of its stack that lives as long as the process; std only reads it through raw
    // pointers, and it stays NUL-terminated.
    unsafe {
        std::ptr::copy_nonoverlapping(line.as_ptr(), start as *mut u8, line.len());
        std::ptr::write_bytes((start + line.len()) as *mut u8, 0, end - start - line.len());
    }
}

/// stdin, stdout and stderr onto /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            #[allow(unsafe_code)]
            // SAFETY: dup2 onto the standard descriptors, which stay open (as /dev/null)
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// The daemon: serves the task service on `listener` until containerd shuts it down,
/// then exits. What containerd-shim's `run` does for a daemon, with the process set up
/// as ours needs first (single-threaded until the zygote is forked).
fn serve(flags: Flags, listener: RawFd) -> ! {
    crate::trim::one_malloc_arena();
    logging::to_containerd(flags.debug);
    if options::load_beside_binary().precompile {
        cache::open_for_containers();
    }
    limits::open_host_cgroups();
    // Last, and before any thread: the zygote and every container inherit the above.
    Zygote::init();
    match run_daemon(&flags, listener) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(error = %e, "the shim failed");
            std::process::exit(1)
        }
    }
}

fn run_daemon(flags: &Flags, listener: RawFd) -> Result<(), String> {
    use containerd_shim::Shim as _;
    use signal_hook::consts::{SIGCHLD, SIGINT, SIGPIPE, SIGTERM};
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGPIPE, SIGCHLD])
        .map_err(|e| format!("signal handlers: {e}"))?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("becoming a subreaper: {e}"))?;
    let ttrpc = std::env::var("TTRPC_ADDRESS").map_err(|_| "no TTRPC_ADDRESS".to_string())?;
    let mut shim = Daemon::new(RUNTIME, flags, &mut config());
    let publisher = RemotePublisher::new(&ttrpc).map_err(|e| format!("publisher: {e}"))?;
    let task = shim.create_task_service(publisher);
    // two request threads per connection (ttrpc's default is three, its minimum one):
    // containerd holds one connection to a shim, with a `Wait` parked on one thread and
    // one call at a time besides; ttrpc adds threads when they run out
    let mut server = containerd_shim::protos::ttrpc::Server::new()
        .set_thread_count_default(2)
        .add_listener(listener)
        .map_err(|e| format!("listener: {e}"))?
        .register_service(containerd_shim::protos::shim::shim_ttrpc::create_task(
            std::sync::Arc::new(Box::new(task) as Box<dyn containerd_shim::Task + Send + Sync>),
        ));
    server.start().map_err(|e| format!("serving: {e}"))?;
    tracing::info!("shim serving");
    std::thread::Builder::new()
        .name("reaper".to_string())
        .spawn(move || reap(signals))
        .map_err(|e| format!("reaper thread: {e}"))?;
    shim.wait();
    tracing::info!("shim shutting down");
    server.shutdown();
    if let Ok(address) = containerd_shim::util::read_address() {
        let _ = std::fs::remove_file(address.strip_prefix("unix://").unwrap_or(&address));
    }
    Ok(())
}

/// Collects every exited child (the shim is their subreaper) and hands the status to
/// containerd-shim's monitor, where the task service waits for its inits: 128 + n for a
/// signal, as a shell reports it.
fn reap(mut signals: signal_hook::iterator::Signals) {
    use rustix::process::WaitOptions;
    for signal in signals.forever() {
        if signal != signal_hook::consts::SIGCHLD {
            continue;
        }
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            let code = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => code,
                (None, Some(signal)) => 128 + signal,
                _ => continue,
            };
            let pid = pid.as_raw_nonzero().get();
            if let Err(e) = containerd_shim::monitor::monitor_notify_by_pid(pid, code) {
                tracing::warn!(error = %e, "reporting an exit");
            }
        }
    }
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

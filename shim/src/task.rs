//! The containerd task service (shim API v2) of `containerd-shim-wasmtime-v1`.
//!
//! Our own, on containerd-shim's lower layers, rather than containerd-shim-wasm's (whose
//! task service is private and cannot be extended). What that buys:
//! - `Pids`: containerd calls it on every shim it reloads after a restart and deletes the
//!   task of any shim that answers with no process (containerd#6860, "cleaning leaked shim
//!   process"). containerd-shim-wasm does not implement it, so a containerd restart
//!   deleted every running Wasm task while its guest kept running: kubelet then started a
//!   second copy beside the orphan.
//! - `/tasks/oom` when a guest outgrows its memory limit, so kubelet says `OOMKilled`.
//! - events that survive a containerd restart ([`crate::events`]).
//! - one zygote per shim instead of one per container ([`crate::container`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest, Empty,
    KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, WaitRequest, WaitResponse,
};
use containerd_shim::monitor::{Subscription, Topic, monitor_subscribe, wait_pid};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::{DeleteResponse, Task, TtrpcContext, TtrpcResult};
use containerd_shimkit::AmbientRuntime as _;
use oci_spec::runtime::Spec;
use prost::Message as _;

use crate::artifact;
use crate::container::{self, CreateArgs};
use crate::events::Events;

/// Set once the shim may exit (shutdown with no task left).
#[derive(Clone, Default)]
pub struct ExitSignal(Arc<(Mutex<bool>, Condvar)>);

impl ExitSignal {
    pub fn set(&self) {
        *self.0.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.1.notify_all();
    }

    pub fn wait(&self) {
        let guard = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        let _done = self.0.1.wait_while(guard, |set| !*set);
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

/// The task's lifecycle as the shim API reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    Created,
    Running,
    Stopped,
}

/// The status containerd sees, from what the shim knows. Pure.
pub fn status(started: bool, exited: bool) -> (Phase, Status) {
    match (started, exited) {
        (_, true) => (Phase::Stopped, Status::STOPPED),
        (true, false) => (Phase::Running, Status::RUNNING),
        (false, false) => (Phase::Created, Status::CREATED),
    }
}

struct TaskData {
    id: String,
    bundle: String,
    stdin: String,
    stdout: String,
    stderr: String,
    pid: u32,
    started: Mutex<bool>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
}

impl TaskData {
    fn exit(&self) -> Option<Exit> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<Exit> {
        let guard = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        let guard = match timeout {
            None => self
                .exited
                .wait_while(guard, |e| e.is_none())
                .unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.exited
                    .wait_timeout_while(guard, t, |e| e.is_none())
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        guard.clone()
    }

    fn started(&self) -> bool {
        *self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> (Phase, Status) {
        status(self.started(), self.exit().is_some())
    }
}

/// The task service: one per shim process, any number of containers (a pod's).
pub struct Service {
    namespace: String,
    /// containerd's gRPC socket (for the image content of OCI artifacts)
    containerd: String,
    tasks: RwLock<HashMap<String, Arc<TaskData>>>,
    events: Events,
    exit: ExitSignal,
}

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// containerd's `runtimeoptions.v1.Options`, whose `config_body` is the TOML of the
/// runtime's `[options]` table (containerd 1.7 and later; 1.6 sends nothing).
#[derive(prost::Message)]
struct RuntimeOptions {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    config_path: String,
    #[prost(string, tag = "3")]
    config_body: String,
}

/// `SystemdCgroup` from the runtime options containerd passes on create. Pure.
pub fn systemd_cgroup(options: Option<(&str, &[u8])>) -> Result<bool, String> {
    let Some((type_url, value)) = options.filter(|(t, _)| !t.is_empty()) else {
        return Ok(false);
    };
    // runc's own options type: ours are never that, but it is well formed
    if type_url.ends_with("runtimeoptions.v1.Options") {
        let opts = RuntimeOptions::decode(value).map_err(|e| format!("runtime options: {e}"))?;
        let doc: toml_edit::DocumentMut = opts
            .config_body
            .parse()
            .map_err(|e| format!("runtime options TOML: {e}"))?;
        return Ok(doc
            .get("SystemdCgroup")
            .or_else(|| doc.get("systemd_cgroup"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false));
    }
    Err(format!("unsupported runtime options type {type_url}"))
}

impl Service {
    pub fn new(namespace: &str, containerd: &str, events: Events, exit: ExitSignal) -> Self {
        Self {
            namespace: namespace.to_string(),
            containerd: containerd.to_string(),
            tasks: RwLock::default(),
            events,
            exit,
        }
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<TaskData>> {
        self.tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| err(Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn no_exec(exec_id: &str) -> TtrpcResult<()> {
        if exec_id.is_empty() {
            Ok(())
        } else {
            Err(err(
                Code::NOT_FOUND,
                format!("exec {exec_id} not found: this shim runs no exec processes"),
            ))
        }
    }

    fn create_task(&self, req: &CreateTaskRequest) -> TtrpcResult<u32> {
        let options = req
            .options
            .as_ref()
            .map(|o| (o.type_url.as_str(), o.value.as_slice()));
        let systemd = systemd_cgroup(options).map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        if req.terminal {
            return Err(err(Code::INVALID_ARGUMENT, "a terminal is not supported"));
        }
        if self
            .tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&req.id)
        {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("loading the runtime spec: {e}"),
            )
        })?;
        // youki's cgroup write comes after the rootfs mount and its forks (a container
        // the shim places itself makes no such write)
        let placement = crate::placement::target(&spec, systemd);
        if placement.is_none() {
            crate::prewarm::cgroup_lock();
        }
        let rootfs = bundle.join(
            spec.root()
                .as_ref()
                .map_or(Path::new("rootfs"), |r| r.path().as_path()),
        );
        let _ = std::fs::create_dir_all(&rootfs);
        for m in &req.rootfs {
            let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            crate::rootfs::mount(
                non_empty(&m.type_).as_deref(),
                non_empty(&m.source).as_deref(),
                &m.options,
                &rootfs,
            )
            .map_err(|e| err(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
        }

        let layers = if artifact::needs_lookup(&spec, &bundle) {
            artifact::load_layers(&self.containerd, &self.namespace, &req.id)
                .block_on()
                .unwrap_or_else(|e| {
                    // the executor then says what is missing, in the container's log
                    tracing::warn!(error = %e, "no Wasm layers; the entrypoint must be in the rootfs");
                    Vec::new()
                })
        } else {
            Vec::new()
        };

        let root = crate::daemon::state_root(&bundle, &self.namespace)
            .map_err(|e| err(Code::INTERNAL, format!("youki state directory: {e}")))?;
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));

        // Subscribed before the init exists, so its exit cannot be missed.
        let exits = monitor_subscribe(Topic::Pid)
            .map_err(|e| err(Code::INTERNAL, format!("subscribing to exits: {e}")))?;
        let created = container::create(CreateArgs {
            id: req.id.clone(),
            bundle,
            root,
            stdin: path(&req.stdin),
            stdout: path(&req.stdout),
            stderr: path(&req.stderr),
            systemd_cgroup: systemd,
            layers,
            placement,
        });
        let created =
            created.map_err(|e| err(Code::INTERNAL, format!("creating the container: {e}")))?;
        let task = Arc::new(TaskData {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            pid: created.pid,
            started: Mutex::new(false),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        });
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req.id.clone(), task.clone());
        watch_exit(task, exits, created.oom, self.events.clone());
        Ok(created.pid)
    }
}

/// Waits (on its own thread) for the init's exit from the reaper, then reports it: OOM
/// first when the guest outgrew its limit, then the exit.
fn watch_exit(task: Arc<TaskData>, exits: Subscription, oom: OwnedFd, events: Events) {
    let spawned = std::thread::Builder::new()
        .name(format!("exit-{}", task.pid))
        .spawn(move || {
            // the reaper reports 128+n for a signal, as a shell does
            let code = wait_pid(task.pid as i32, exits) as u32;
            if container::oom_reported(&oom) {
                events.send(TaskOOM {
                    container_id: task.id.clone(),
                    ..Default::default()
                });
            }
            let at = now();
            *task.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Exit {
                code,
                at: at.clone(),
            });
            task.exited.notify_all();
            tracing::info!(id = task.id, pid = task.pid, code, "task exited");
            events.send(TaskExit {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: task.pid,
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot watch the task's exit");
    }
}

impl Task for Service {
    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let span = tracing::info_span!("create", id = req.id);
        let _enter = span.enter();
        let pid = self.create_task(&req).inspect_err(|e| {
            tracing::error!(id = req.id, error = %e, "create failed");
        })?;
        self.events.send(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                ..Default::default()
            }),
            pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Self::no_exec(&req.exec_id)?;
        let task = self.task(&req.id)?;
        tracing::info!("starting task {}", req.id);
        {
            let mut started = task.started.lock().unwrap_or_else(|p| p.into_inner());
            if *started || task.exit().is_some() {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("task {} was started already", req.id),
                ));
            }
            container::start(&req.id)
                .map_err(|e| err(Code::INTERNAL, format!("starting task {}: {e}", req.id)))?;
            *started = true;
        }
        self.events.send(TaskStart {
            container_id: req.id.clone(),
            pid: task.pid,
            ..Default::default()
        });
        crate::trim::when_quiet("shim", container::trim_zygote);
        Ok(StartResponse {
            pid: task.pid,
            ..Default::default()
        })
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        Self::no_exec(&req.exec_id)?;
        let task = self.task(&req.id)?;
        if task.exit().is_some() {
            return Err(err(
                Code::NOT_FOUND,
                format!("task {}: process already finished", req.id),
            ));
        }
        container::kill(&req.id, req.signal)
            .map_err(|e| err(Code::INTERNAL, format!("signalling task {}: {e}", req.id)))?;
        Ok(Empty::new())
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Self::no_exec(&req.exec_id)?;
        let task = self.task(&req.id)?;
        if task.phase().0 == Phase::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("task {} is running; kill it first", req.id),
            ));
        }
        container::delete(&req.id)
            .map_err(|e| err(Code::INTERNAL, format!("deleting task {}: {e}", req.id)))?;
        // A created task's init is killed by the delete: give the reaper a moment.
        let exit = task.wait(Some(Duration::from_secs(2))).unwrap_or(Exit {
            code: 137,
            at: now(),
        });
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.id);
        self.events.send(TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: task.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid: task.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let task = self.task(&req.id)?;
        let processes = if task.exit().is_some() {
            Vec::new()
        } else {
            vec![ProcessInfo {
                pid: task.pid,
                ..Default::default()
            }]
        };
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Self::no_exec(&req.exec_id)?;
        let task = self.task(&req.id)?;
        let (_, status) = task.phase();
        let exit = task.exit();
        Ok(StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid: task.pid,
            status: status.into(),
            stdin: task.stdin.clone(),
            stdout: task.stdout.clone(),
            stderr: task.stderr.clone(),
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map(|e| e.at).into(),
            ..Default::default()
        })
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Self::no_exec(&req.exec_id)?;
        let task = self.task(&req.id)?;
        let exit = task.wait(None).unwrap_or(Exit {
            code: 137,
            at: now(),
        });
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let task = self.task(&req.id)?;
        if task.exit().is_some() {
            return Err(err(Code::NOT_FOUND, format!("task {} has exited", req.id)));
        }
        let metrics = containerd_shim::cgroup::collect_metrics(task.pid)
            .map_err(|e| err(Code::INTERNAL, format!("cgroup metrics: {e}")))?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| err(Code::INTERNAL, format!("encoding metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.task(&req.id).map(|t| t.pid).unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        if self
            .tasks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            self.exit.set();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_start_and_exit() {
        let cases = [
            (false, false, Phase::Created, Status::CREATED),
            (true, false, Phase::Running, Status::RUNNING),
            (true, true, Phase::Stopped, Status::STOPPED),
            // killed before it was started
            (false, true, Phase::Stopped, Status::STOPPED),
        ];
        for (started, exited, phase, st) in cases {
            assert_eq!(status(started, exited), (phase, st), "{started} {exited}");
        }
    }

    fn options(body: &str) -> Vec<u8> {
        RuntimeOptions {
            type_url: String::new(),
            config_path: String::new(),
            config_body: body.to_string(),
        }
        .encode_to_vec()
    }

    #[test]
    fn systemd_cgroup_from_runtime_options() {
        let t = "runtimeoptions.v1.Options";
        type Case<'a> = (Option<(&'a str, Vec<u8>)>, Result<bool, &'a str>);
        let cases: Vec<Case> = vec![
            (None, Ok(false)),
            (Some(("", vec![])), Ok(false)),
            (Some((t, options(""))), Ok(false)),
            (Some((t, options("SystemdCgroup = true"))), Ok(true)),
            (
                Some((t, options("SystemdCgroup = false\nBinaryName = \"x\""))),
                Ok(false),
            ),
            (
                Some((t, options("SystemdCgroup = ["))),
                Err("runtime options TOML"),
            ),
            (
                Some(("containerd.runc.v1.Options", vec![])),
                Err("unsupported runtime options type"),
            ),
        ];
        for (input, want) in cases {
            let got = systemd_cgroup(input.as_ref().map(|(t, v)| (*t, v.as_slice())));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{input:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{g}"),
                (g, w) => panic!("{input:?}: got {g:?}, want {w:?}"),
            }
        }
    }
}

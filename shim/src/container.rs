//! The Linux side of a container: youki's `libcontainer` builds it (namespaces, cgroups,
//! rootfs, mounts, `pivot_root`, seccomp) and our [`Executor`] runs its process.
//!
//! libcontainer forks, and forking the shim's multi-threaded process (tokio, ttrpc) is
//! unsafe. So every libcontainer call runs in the zygote: a single-threaded copy of the
//! shim forked at the top of `main`, before any thread exists. The zygote keeps every
//! container of this shim in one table: one extra process per shim, not per container as
//! in containerd-shim-wasm. Container inits are created as siblings of the zygote, i.e.
//! children of the shim, whose reaper collects their exit status.
//!
//! A Wasm guest that outgrows its memory limit exits 137 like an OOM-killed process, but
//! the kernel counted nothing, so the shim cannot learn it from the cgroup. The executor
//! says so on a pipe whose read end the shim keeps ([`Created::oom`]); the shim then
//! publishes `/tasks/oom` before the exit, which is what makes kubelet report `OOMKilled`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_wasm::sandbox::Sandbox as _;
use containerd_shim_wasm::sandbox::context::{Entrypoint, RuntimeContext, Source, WasmLayer};
use containerd_shimkit::zygote::{WireError, WireFd, Zygote};
use libcontainer::container::Container as Youki;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::shim::WasmtimeSandbox;

/// What the shim hands the zygote to create one container.
#[derive(Serialize, Deserialize, Debug)]
pub struct CreateArgs {
    pub id: String,
    pub bundle: PathBuf,
    /// youki's state directory (`<root>/<namespace>`)
    pub root: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub systemd_cgroup: bool,
    /// Wasm layers of an OCI artifact; empty for an image with a rootfs.
    pub layers: Vec<WasmLayer>,
    /// where the shim places the container itself ([`crate::placement::target`]); `None`
    /// when youki does
    pub placement: Option<crate::placement::Target>,
}

/// A created (not yet started) container.
pub struct Created {
    pub pid: u32,
    /// Read end of the OOM pipe: `b"oom"` once the guest outgrew its memory limit.
    pub oom: OwnedFd,
}

thread_local! {
    /// The zygote's containers, by id. Only ever touched inside the zygote.
    static CONTAINERS: RefCell<HashMap<String, Youki>> = RefCell::default();
}

/// What the shim asks of a created container.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Op {
    Start,
    /// signal number; all processes of the container, as `runc kill --all`
    Kill(u32),
    /// kills what is left, removes the cgroup and youki's state
    Delete,
}

fn zygote_err(e: impl std::fmt::Display) -> WireError {
    WireError::from(std::io::Error::other(e.to_string()))
}

fn op(id: &str, op: Op) -> Result<(), WireError> {
    Zygote::global()
        .try_run(op_in_zygote, (id.to_string(), op))
        .map_err(zygote_err)?
}

fn op_in_zygote((id, op): (String, Op)) -> Result<(), WireError> {
    crate::trim::cancel_in_zygote();
    let result: Result<(), String> = CONTAINERS.with_borrow_mut(|all| {
        let Some(c) = all.get_mut(&id) else {
            // deleting twice is fine; anything else on an unknown id is a bug upstream
            return match op {
                Op::Delete => Ok(()),
                _ => Err(format!("container {id} is not known to the zygote")),
            };
        };
        match op {
            Op::Start => c.start().map_err(|e| e.to_string()),
            Op::Kill(signal) => Signal::try_from(signal as i32)
                .map_err(|e| e.to_string())
                .and_then(|s| c.kill(s, true).map_err(|e| e.to_string())),
            Op::Delete => {
                let deleted = c.delete(true).map_err(|e| e.to_string());
                if let Some(root) = c.root.parent() {
                    let _ = std::fs::remove_dir_all(youki_bundle(root, &id));
                }
                deleted
            }
        }
    });
    if matches!(op, Op::Delete) {
        CONTAINERS.with_borrow_mut(|all| all.remove(&id));
    }
    result.map_err(zygote_err)
}

/// Asks the zygote to drop the clean code pages it no longer runs ([`crate::trim`]).
pub fn trim_zygote() {
    match Zygote::global().try_run(trim_in_zygote, ()) {
        Ok(Ok(bytes)) => {
            tracing::debug!("zygote: dropping {} KiB of clean code pages", bytes / 1024)
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "zygote: cannot drop clean code pages"),
        Err(e) => tracing::warn!(error = %e, "zygote: cannot drop clean code pages"),
    }
}

fn trim_in_zygote((): ()) -> Result<u64, WireError> {
    crate::trim::in_zygote_soon().map_err(WireError::from)
}

/// Creates the container (its init waits for [`start`]) and returns its pid.
pub fn create(args: CreateArgs) -> Result<Created, WireError> {
    let (pid, oom) = Zygote::global()
        .try_run(create_in_zygote, args)
        .map_err(zygote_err)??;
    Ok(Created {
        pid,
        oom: oom.into_inner(),
    })
}

fn create_in_zygote(mut args: CreateArgs) -> Result<(u32, WireFd<OwnedFd>), WireError> {
    crate::trim::cancel_in_zygote();
    let layers = Arc::new(std::mem::take(&mut args.layers));
    let (oom_read, oom_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
    let stdio = Stdio::open(&args).map_err(std::io::Error::other)?;
    let mut attempt = 1;
    let container = loop {
        match build(&args, &layers, &oom_write, &stdio) {
            Ok(c) => break c,
            Err(e) if is_ready_race(&e) && attempt < CREATE_ATTEMPTS => {
                tracing::warn!(
                    id = args.id,
                    attempt,
                    "libcontainer lost the ready race; cleaning up and retrying: {e}"
                );
                clean_after_race(&args);
                attempt += 1;
            }
            Err(e) => return Err(std::io::Error::other(e).into()),
        }
    };
    // Every builder (and with it every copy of the write end but ours) is gone; dropping
    // ours leaves the init the only holder.
    drop(oom_write);
    let pid = container
        .pid()
        .ok_or_else(|| std::io::Error::other("libcontainer created no init process"))?;
    CONTAINERS.with_borrow_mut(|all| all.insert(args.id, container));
    Ok((pid.as_raw() as u32, WireFd::new(oom_read)))
}

/// libcontainer 0.6 has the intermediate and the init process report to the zygote on
/// one channel; under CPU contention the init's `InitReady` can overtake the
/// intermediate's `IntermediateReady` and `build` fails (youki PR #3504, not released).
/// One in a few hundred creates hit it with 200 containers starting at once on 2 CPUs.
const CREATE_ATTEMPTS: usize = 3;

fn is_ready_race(error: &str) -> bool {
    error.contains("unexpected message: InitReady")
}

/// After a lost ready race the init libcontainer created still waits in the container's
/// cgroup for a start that cannot come (youki removed its state): kill what the cgroup
/// holds (the shim's reaper collects it), then remove the cgroup and any state left.
fn clean_after_race(args: &CreateArgs) {
    use libcgroups::common::{CgroupConfig, CgroupManager as _, create_cgroup_manager};
    let spec = match Spec::load(args.bundle.join("config.json")) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot read the spec to clean up"),
    };
    let path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let config = CgroupConfig {
        cgroup_path: path.unwrap_or_else(|| format!(":youki:{}", args.id).into()),
        systemd_cgroup: args.systemd_cgroup,
        container_name: args.id.clone(),
    };
    match create_cgroup_manager(config) {
        Ok(manager) => {
            for pid in manager.get_all_pids().unwrap_or_default() {
                if let Some(pid) = rustix::process::Pid::from_raw(pid.as_raw()) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            // removal retries while the killed processes leave the cgroup
            if let Err(e) = manager.remove() {
                tracing::warn!(error = %e, "cannot remove the cgroup of a failed create");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot open the cgroup of a failed create"),
    }
    let _ = std::fs::remove_dir_all(args.root.join(&args.id));
}

/// The container's stdio fifos, opened once for every attempt at a create: while the
/// zygote holds them, a failed attempt's init dying does not close the last writer, which
/// would end `ctr`'s (or CRI's) copy of the output before the next attempt's init writes.
struct Stdio {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Stdio {
    fn open(args: &CreateArgs) -> Result<Self, String> {
        // Read and write, as containerd's own shims open the stdio fifos: a fifo opened
        // for one direction alone blocks until the other end is open.
        let open = |p: &Option<PathBuf>| -> Result<Option<File>, String> {
            p.as_ref()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| std::fs::OpenOptions::new().read(true).write(true).open(p))
                .transpose()
                .map_err(|e| format!("{}: {e}", p.as_deref().unwrap_or(Path::new("")).display()))
        };
        Ok(Self {
            stdin: open(&args.stdin)?,
            stdout: open(&args.stdout)?,
            stderr: open(&args.stderr)?,
        })
    }
}

/// One libcontainer build of the container described by `args`.
fn build(
    args: &CreateArgs,
    layers: &Arc<Vec<WasmLayer>>,
    oom_write: &OwnedFd,
    stdio: &Stdio,
) -> Result<Youki, String> {
    let executor = Executor {
        id: Arc::new(args.id.clone()),
        layers: layers.clone(),
        oom: Arc::new(oom_write.try_clone().map_err(|e| e.to_string())?),
    };
    let copy = |f: &Option<File>| f.as_ref().map(File::try_clone).transpose();
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::Linux)
        .with_executor(executor)
        .with_root_path(&args.root)
        .map_err(|e| e.to_string())?;
    if let Some(f) = copy(&stdio.stdin).map_err(|e| e.to_string())? {
        builder = builder.with_stdin(f);
    }
    if let Some(f) = copy(&stdio.stdout).map_err(|e| e.to_string())? {
        builder = builder.with_stdout(f);
    }
    if let Some(f) = copy(&stdio.stderr).map_err(|e| e.to_string())? {
        builder = builder.with_stderr(f);
    }
    let Some(placed) = Placed::prepare(args)? else {
        return builder
            .as_init(&args.bundle)
            .as_sibling(true)
            .with_systemd(args.systemd_cgroup)
            .build()
            .map_err(|e| e.to_string());
    };
    let built = placed
        .make()
        .and_then(|()| placed.apply())
        .and_then(|()| placed.build(builder))
        .and_then(|()| Youki::load(args.root.join(&args.id)).map_err(|e| e.to_string()));
    if built.is_err() {
        placed.undo(args);
    }
    built
}

/// A container the shim places into its cgroups itself ([`crate::placement`]).
struct Placed {
    /// its directory in every v1 hierarchy
    dirs: Vec<PathBuf>,
    /// the host's mount table when the directories were made
    mounts: Vec<crate::mounts::MountEntry>,
    /// the spec's `linux.resources`, applied by the zygote
    resources: Option<oci_spec::runtime::LinuxResources>,
    /// `cgroupsPath`, for libcgroups' manager
    cgroups_path: PathBuf,
    /// the bundle youki is given, with `spec` in it
    bundle: PathBuf,
    /// the container's spec without `linux.resources`, its rootfs made absolute
    spec: Spec,
}

/// Where the spec copy youki reads lives: beside youki's state directory of the
/// container, hidden (a container id cannot start with a dot, so this never names one).
fn youki_bundle(root: &Path, id: &str) -> PathBuf {
    root.join(format!(".{id}"))
}

impl Placed {
    /// In the zygote: the spec copy for the placement the task service decided
    /// (`args.placement`); `None` when youki places the container.
    fn prepare(args: &CreateArgs) -> Result<Option<Self>, String> {
        let Some(crate::placement::Target {
            cgroups_path,
            mounts,
            dirs,
        }) = args.placement.clone()
        else {
            return Ok(None);
        };
        let mut spec = Spec::load(args.bundle.join("config.json")).map_err(|e| e.to_string())?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        let resources = linux.resources().clone();
        linux.set_resources(None);
        spec.set_linux(Some(linux));
        let rootfs = args.bundle.join(
            spec.root()
                .as_ref()
                .map_or(Path::new("rootfs"), |r| r.path().as_path()),
        );
        if let Some(mut root) = spec.root().clone() {
            root.set_path(rootfs);
            spec.set_root(Some(root));
        }
        Ok(Some(Self {
            dirs,
            mounts,
            resources,
            cgroups_path,
            bundle: youki_bundle(&args.root, &args.id),
            spec,
        }))
    }

    /// The directories and the spec copy (undone by [`Self::undo`] if anything fails).
    fn make(&self) -> Result<(), String> {
        crate::placement::make_dirs(&self.dirs, &self.mounts)?;
        std::fs::create_dir_all(&self.bundle)
            .map_err(|e| format!("{}: {e}", self.bundle.display()))?;
        self.spec
            .save(self.bundle.join("config.json"))
            .map_err(|e| e.to_string())
    }

    /// Runs youki's build in a builder process (the shim's child, like the inits) that
    /// joins the cgroups and hides the cgroupfs from youki; waits for its answer.
    fn build(&self, builder: ContainerBuilder) -> Result<(), String> {
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| e.to_string())?;
        let child = clone_sibling(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::placement::join(&self.dirs)?;
                crate::placement::hide_cgroupfs(&self.mounts)?;
                builder
                    .as_init(&self.bundle)
                    .as_sibling(true)
                    .build()
                    .map(drop)
                    .map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("the container builder panicked".to_string()));
            i32::from(send_result(&write, &result).is_err())
        })
        .map_err(|e| format!("forking the container builder: {e}"))?;
        receive_result(&read, child)
    }

    /// `linux.resources` into the container's cgroups, as youki's intermediate process
    /// would (libcgroups' v1 manager, which finds the hierarchies the zygote sees). Before
    /// the builder forks: youki sets the container up under them (the device rules are
    /// rewritten deny-all first, and its `mknod`s must not fall in between).
    fn apply(&self) -> Result<(), String> {
        use libcgroups::common::{CgroupManager as _, ControllerOpt};
        let Some(resources) = &self.resources else {
            return Ok(());
        };
        libcgroups::v1::Manager::new(&self.cgroups_path)
            .map_err(|e| e.to_string())?
            .apply(&ControllerOpt {
                resources,
                freezer_state: None,
                oom_score_adj: None,
                disable_oom_killer: false,
            })
            .map_err(|e| format!("applying linux.resources: {e}"))
    }

    /// After a failed build: the cgroup, youki's state and the spec copy go.
    fn undo(&self, args: &CreateArgs) {
        use libcgroups::common::CgroupManager as _;
        match libcgroups::v1::Manager::new(&self.cgroups_path) {
            Ok(m) => {
                if let Err(e) = m.remove() {
                    tracing::warn!(error = %e, "cannot remove the cgroup of a failed create");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the cgroup of a failed create"),
        }
        let _ = std::fs::remove_dir_all(args.root.join(&args.id));
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// Forks the calling (single-threaded) process as a sibling, i.e. a child of its parent,
/// as youki forks the container's processes (`CLONE_PARENT`: the shim's reaper collects
/// them); the child runs `child` and exits with what it returns.
fn clone_sibling(child: impl FnOnce() -> i32) -> std::io::Result<i32> {
    #[allow(unsafe_code)]
    // SAFETY: the zygote is single-threaded (no lock can be held by another thread); the
    // child gets a copy-on-write copy of this stack, like fork, and never returns here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            let code = child();
            #[allow(unsafe_code)]
            // SAFETY: leaves without the parent's exit handlers and buffers.
            unsafe {
                libc::_exit(code)
            }
        }
        pid => Ok(pid as i32),
    }
}

/// The builder's answer: `0` and nothing else, or `1` and the error's text.
fn send_result(write: &OwnedFd, result: &Result<(), String>) -> std::io::Result<()> {
    let mut message = match result {
        Ok(()) => vec![0u8],
        Err(e) => [&[1u8][..], e.as_bytes()].concat(),
    };
    message.truncate(libc::PIPE_BUF);
    rustix::io::write(write, &message)?;
    Ok(())
}

/// Waits for the builder's answer. The inits it made hold copies of the pipe's write
/// end, so the end of the pipe never comes: the message is one write of at most
/// `PIPE_BUF` bytes (atomic), and a builder that died without one is noticed by its pidfd.
fn receive_result(read: &OwnedFd, builder: i32) -> Result<(), String> {
    use rustix::event::{PollFd, PollFlags, poll};
    let pidfd = rustix::process::Pid::from_raw(builder).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    loop {
        let mut fds = vec![PollFd::new(read, PollFlags::IN)];
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waiting for the container builder: {e}")),
            Ok(_) => {}
        }
        let ready = !fds[0].revents().is_empty();
        let gone = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        if ready || gone {
            break;
        }
    }
    rustix::fs::fcntl_setfl(read, rustix::fs::OFlags::NONBLOCK).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; libc::PIPE_BUF];
    let n = rustix::io::read(read, &mut buf).unwrap_or(0);
    match buf[..n].split_first() {
        Some((0, _)) => Ok(()),
        Some((_, text)) => Err(String::from_utf8_lossy(text).into_owned()),
        None => Err("the container builder exited without an answer".to_string()),
    }
}

pub fn start(id: &str) -> Result<(), WireError> {
    op(id, Op::Start)
}

pub fn kill(id: &str, signal: u32) -> Result<(), WireError> {
    op(id, Op::Kill(signal))
}

pub fn delete(id: &str) -> Result<(), WireError> {
    op(id, Op::Delete)
}

/// Deletes a container this process never created (`shim delete` after a crash): loads
/// youki's state from disk. Runs in the calling process: `delete` is single-threaded.
pub fn delete_leftover(root: &Path, id: &str) -> Result<bool, String> {
    let dir = root.join(id);
    let _ = std::fs::remove_dir_all(youki_bundle(root, id));
    if !dir.exists() {
        return Ok(false);
    }
    let mut c = Youki::load(dir).map_err(|e| e.to_string())?;
    c.delete(true).map_err(|e| e.to_string())?;
    Ok(true)
}

/// True when the OOM pipe says the guest outgrew its memory limit. Called after the init
/// exited, so the pipe holds all it will ever hold.
pub fn oom_reported(read_end: &OwnedFd) -> bool {
    let mut buf = [0u8; 3];
    let mut f = File::from(read_end.try_clone().expect("dup of the OOM pipe"));
    rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::NONBLOCK).ok();
    matches!(f.read(&mut buf), Ok(3)) && &buf == b"oom"
}

/// How the init runs its process: ELF and `#!` entrypoints as Linux processes (the pod's
/// pause container, sidecars), everything else as Wasm.
#[derive(Clone)]
struct Executor {
    /// the container id, for the log
    id: Arc<String>,
    layers: Arc<Vec<WasmLayer>>,
    oom: Arc<OwnedFd>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    Native,
    Wasm,
}

/// The container as the engine sees it (containerd-shim-wasm's `RuntimeContext`): the
/// spec's args and env; the entrypoint `path[#func]` from `args[0]`, or the image's Wasm
/// layers when it has some.
pub struct Context<'a> {
    pub spec: &'a Spec,
    pub layers: &'a [WasmLayer],
}

impl RuntimeContext for Context<'_> {
    fn args(&self) -> &[String] {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_deref())
            .unwrap_or_default()
    }

    fn envs(&self) -> &[String] {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.env().as_deref())
            .unwrap_or_default()
    }

    fn entrypoint(&self) -> Entrypoint<'_> {
        let arg0 = self.args().first().map(String::as_str);
        let (path, func) = arg0
            .unwrap_or_default()
            .split_once('#')
            .unwrap_or((arg0.unwrap_or_default(), "_start"));
        Entrypoint {
            func: func.to_string(),
            name: Path::new(path)
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned()),
            arg0: arg0.map(Path::new),
            source: if self.layers.is_empty() {
                Source::File(PathBuf::from(path))
            } else {
                Source::Oci(self.layers)
            },
        }
    }
}

impl Executor {
    fn ctx<'a>(&'a self, spec: &'a Spec) -> Context<'a> {
        Context {
            spec,
            layers: &self.layers,
        }
    }

    fn kind(&self, spec: &Spec) -> Kind {
        let ctx = self.ctx(spec);
        match ctx.entrypoint().source {
            Source::Oci(_) => Kind::Wasm,
            Source::File(path) => {
                let env = crate::shim::env_pairs(ctx.envs());
                let native = crate::shim::resolve_entrypoint(&path, &env)
                    .ok()
                    .and_then(|p| is_native(&p).then_some(()));
                if native.is_some() {
                    Kind::Native
                } else {
                    Kind::Wasm
                }
            }
        }
    }
}

/// The container init's tokio runtime, with `workers` worker threads (`None`: one per CPU).
fn guest_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// `(env_start, env_end)` of a process from its `/proc/<pid>/stat` text (fields 50 and 51;
/// counted after the `)` that ends the command name, which may hold spaces).
fn env_range(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(47);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    (end >= start).then_some((start, end))
}

/// A Wasm container's init never execs, so its `/proc/self/environ` (which the guest can
/// read through the rootfs preopen, `/proc` being mounted there) would still be the shim's
/// own environment as containerd started it: addresses, proxy settings, whatever the node
/// put in containerd's environment. Zeroing that block (our own memory, written through
/// `/proc/self/mem`) leaves the guest nothing to read; the guest's environment is its own,
/// from the spec, and never lives there.
fn scrub_inherited_environ() -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (start, end) = env_range(&stat)
        .ok_or_else(|| std::io::Error::other("no env_start/env_end in /proc/self/stat"))?;
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?;
    mem.write_all_at(&vec![0u8; (end - start) as usize], start)
}

/// ELF magic or a `#!` line, on an executable file.
fn is_native(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = path
        .metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut head = [0u8; 4];
    executable
        && File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
        && (head == *b"\x7fELF" || head.starts_with(b"#!"))
}

impl libcontainer::workload::Executor for Executor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        match self.kind(spec) {
            Kind::Native => DefaultExecutor {}.validate(spec),
            // A runtime without threads: the check only reads a file header.
            Kind::Wasm => tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(WasmtimeSandbox.can_handle(&self.ctx(spec))))
                .map_err(|_| ExecutorValidationError::CantHandle("wasmtime")),
        }
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        crate::trim::forget_zygote_handler();
        match self.kind(spec) {
            Kind::Native => DefaultExecutor {}.exec(spec),
            Kind::Wasm => {
                if let Err(e) = scrub_inherited_environ() {
                    tracing::warn!(error = %e, "cannot clear the inherited environment block");
                }
                tracing::info!("running the guest of {}", self.id);
                crate::trim::when_quiet("container init", || {});
                let annotations = spec.annotations().clone().unwrap_or_default();
                let (code, oom) = match WasmtimeSandbox::prepare(&self.ctx(spec), &annotations) {
                    Err(code) => (code, false),
                    Ok(prepared) => match guest_runtime(prepared.runtime_workers()) {
                        Ok(rt) => rt.block_on(WasmtimeSandbox::run_prepared(prepared)),
                        Err(e) => {
                            eprintln!("containerd-shim-wasmtime: starting the async runtime: {e}");
                            (126, false)
                        }
                    },
                };
                tracing::info!("the guest of {} exited with {code}", self.id);
                if oom {
                    let _ = File::from(self.oom.try_clone().expect("dup")).write_all(b"oom");
                }
                std::process::exit(code)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn entrypoint_from_args_or_layers() {
        use oci_spec::runtime::{ProcessBuilder, SpecBuilder};
        let spec = |args: &[&str]| {
            SpecBuilder::default()
                .process(
                    ProcessBuilder::default()
                        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let cases: [(&[&str], &str, Option<&str>, &str); 4] = [
            (
                &["/app/hello.wasm", "x"],
                "_start",
                Some("hello"),
                "/app/hello.wasm",
            ),
            (
                &["/app/hello.wasm#run"],
                "run",
                Some("hello"),
                "/app/hello.wasm",
            ),
            (&["#init"], "init", None, ""),
            (&[], "_start", None, ""),
        ];
        for (args, func, name, path) in cases {
            let s = spec(args);
            let ctx = Context {
                spec: &s,
                layers: &[],
            };
            let e = ctx.entrypoint();
            assert_eq!(e.func, func, "{args:?}");
            assert_eq!(e.name.as_deref(), name, "{args:?}");
            assert!(
                matches!(e.source, Source::File(p) if p == Path::new(path)),
                "{args:?}"
            );
        }
    }

    #[test]
    fn env_range_is_read_after_the_command_name() {
        let fields_after = |env: &str| {
            // fields 3..=49 as zeros, then env_start env_end exit_code
            let mut f = vec!["0"; 47];
            f.push(env);
            f.join(" ")
        };
        let cases = [
            (
                format!("42 (shim) {} 0", fields_after("4096 8192")),
                Some((4096, 8192)),
            ),
            // a command name with spaces and a ')' inside
            (
                format!("42 (a b) c) {} 0", fields_after("100 100")),
                Some((100, 100)),
            ),
            (format!("42 (shim) {} 0", fields_after("9 1")), None),
            ("42 (shim) R 1".to_string(), None),
        ];
        for (stat, want) in cases {
            assert_eq!(env_range(&stat), want, "{stat}");
        }
    }

    /// On this very process: the block is where `/proc/self/stat` says, and what
    /// `/proc/self/environ` shows is exactly that block.
    #[test]
    fn env_range_matches_proc_self_environ() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (start, end) = env_range(&stat).unwrap();
        let environ = std::fs::read("/proc/self/environ").unwrap();
        assert_eq!((end - start) as usize, environ.len());
    }

    #[test]
    fn native_means_executable_elf_or_script() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], u32, bool); 5] = [
            ("elf", b"\x7fELF\x02\x01", 0o755, true),
            ("script", b"#!/bin/sh\n", 0o755, true),
            ("wasm", b"\0asm\x01\0\0\0", 0o755, false),
            ("elf-not-executable", b"\x7fELF\x02\x01", 0o644, false),
            ("short", b"#", 0o755, false),
        ];
        for (name, bytes, mode, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(is_native(&p), want, "{name}");
        }
        assert!(!is_native(&dir.path().join("missing")));
    }

    #[test]
    fn oom_pipe_reads_the_marker_only() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        assert!(!oom_reported(&r), "empty pipe, writer open");
        File::from(w).write_all(b"oom").unwrap();
        assert!(oom_reported(&r));
        let (r, w) = rustix::pipe::pipe().unwrap();
        drop(w);
        assert!(!oom_reported(&r), "closed without a word");
    }
}

//! A small process supervisor for the long-running single-node cluster (`cargo xtask up`).
//!
//! One detached process (its own session) runs every daemon of the node as its child, in
//! order, each waited on with a readiness probe, and then keeps them running: a daemon that
//! exits is started again (at once after a long run, with a growing delay when it keeps
//! failing). That is what lets the installer restart containerd with its `signal` strategy:
//! it SIGTERMs the containerd whose `--config` is the node's config file and waits for a new
//! process, which this supervisor starts.
//!
//! Children get `PR_SET_PDEATHSIG`, so a supervisor killed outright takes its daemons with it.
//! SIGTERM (or SIGINT) stops the daemons in reverse start order, each with SIGTERM and a grace
//! period before SIGKILL. The supervisor reports through a JSON [`Status`] file that it
//! replaces atomically on every change.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// What the supervisor runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub services: Vec<Service>,
    /// Where [`Status`] is written.
    pub status_file: PathBuf,
    /// One `<name>.log` per service (appended to across restarts).
    pub log_dir: PathBuf,
    /// Extra environment of every service.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// One daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    pub ready: Ready,
    pub ready_timeout_secs: u64,
    /// Grace period between SIGTERM and SIGKILL when stopping.
    pub stop_timeout_secs: u64,
    /// A command run (to completion, at most a minute) before the service is stopped, e.g.
    /// containerd's: stop every container through it.
    #[serde(default)]
    pub pre_stop: Vec<String>,
}

/// How the supervisor knows a service is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    /// Running is enough.
    Started,
    /// Accepts TCP connections on this address.
    Tcp(SocketAddr),
    /// This command exits 0.
    Command(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Running,
    Failed,
    Stopping,
    Stopped,
}

/// What the supervisor reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub supervisor_pid: u32,
    /// Progress or the failure.
    pub message: String,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u32,
}

impl Status {
    pub fn read(path: &Path) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn pid_of(&self, service: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.pid)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

struct Running {
    service: Service,
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    /// Consecutive short runs, for the restart delay.
    quick_failures: u32,
    next_start: Option<Instant>,
}

/// Restart delay after a run that lasted `uptime`: at once after a long run (a deliberate
/// restart such as the installer's), doubling from 100 ms to 5 s while it keeps failing.
pub fn restart_delay(uptime: Duration, quick_failures: u32) -> Duration {
    if uptime >= Duration::from_secs(10) {
        return Duration::from_millis(100);
    }
    let ms = 100u64.saturating_mul(1 << quick_failures.min(6));
    Duration::from_millis(ms.min(5000))
}

struct Supervisor {
    plan: Plan,
    services: Vec<Running>,
    epoch: Instant,
}

/// Runs `plan` until SIGTERM. `Err` when a service did not come up (the status file says
/// which and why).
pub fn run(plan_file: &Path) -> Result<(), Error> {
    install_signal_handlers();
    // Named like daemontools' `supervise`, which it is: wasm-installer's `auto` restart
    // recognises a supervised containerd by its parent's name (installer/src/daemon.rs).
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"supervise".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let text = std::fs::read(plan_file).map_err(|e| Error::io(plan_file, e))?;
    let plan: Plan = serde_json::from_slice(&text)
        .map_err(|e| Error::io(plan_file, std::io::Error::other(e)))?;
    let mut sup = Supervisor {
        plan,
        services: Vec::new(),
        epoch: Instant::now(),
    };
    let result = sup.start_all();
    if let Err(message) = result {
        sup.log(&format!("startup failed: {message}"));
        sup.write_status(State::Failed, &message);
        sup.stop_all();
        sup.write_status(State::Failed, &message);
        return Err(Error::NotReady {
            component: "supervisor".into(),
            seconds: 0,
            log: message,
        });
    }
    sup.write_status(State::Running, "all services running");
    sup.log("all services running");
    while !STOP.load(Ordering::SeqCst) {
        sup.tick();
        std::thread::sleep(Duration::from_millis(50));
    }
    sup.write_status(State::Stopping, "stopping on request");
    sup.stop_all();
    sup.write_status(State::Stopped, "stopped");
    Ok(())
}

impl Supervisor {
    fn log(&self, line: &str) {
        println!("[{:>9.3}s] {line}", self.epoch.elapsed().as_secs_f64());
    }

    fn write_status(&self, state: State, message: &str) {
        let status = Status {
            state,
            supervisor_pid: std::process::id(),
            message: message.to_string(),
            services: self
                .services
                .iter()
                .map(|r| ServiceStatus {
                    name: r.service.name.clone(),
                    pid: r.child.as_ref().map(Child::id),
                    restarts: r.restarts,
                })
                .collect(),
        };
        let path = &self.plan.status_file;
        let tmp = path.with_extension("tmp");
        if let Ok(bytes) = serde_json::to_vec_pretty(&status)
            && std::fs::write(&tmp, bytes).is_ok()
        {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    fn spawn(&self, service: &Service) -> std::io::Result<Child> {
        let log = self.plan.log_dir.join(format!("{}.log", service.name));
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        let (program, args) = service
            .argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty argv"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.plan.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        cmd.spawn()
    }

    fn probe(service: &Service) -> bool {
        match &service.ready {
            Ready::Started => true,
            Ready::Tcp(addr) => {
                TcpStream::connect_timeout(addr, Duration::from_millis(300)).is_ok()
            }
            Ready::Command(argv) => argv.split_first().is_some_and(|(p, a)| {
                Command::new(p)
                    .args(a)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }),
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let path = self.plan.log_dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('E') || l.starts_with('F') || l.contains("level=fatal"))
            .take(10)
            .collect();
        format!(
            "{}\n...\n{}\n(full log: {})",
            errors.join("\n"),
            lines[lines.len().saturating_sub(30)..].join("\n"),
            path.display()
        )
    }

    fn start_all(&mut self) -> Result<(), String> {
        for service in self.plan.services.clone() {
            if STOP.load(Ordering::SeqCst) {
                return Err("stopped during startup".into());
            }
            self.write_status(State::Starting, &format!("starting {}", service.name));
            self.log(&format!("starting {}: {:?}", service.name, service.argv));
            let child = self
                .spawn(&service)
                .map_err(|e| format!("starting {}: {e}", service.name))?;
            self.services.push(Running {
                service: service.clone(),
                child: Some(child),
                started: Instant::now(),
                restarts: 0,
                quick_failures: 0,
                next_start: None,
            });
            let deadline = Instant::now() + Duration::from_secs(service.ready_timeout_secs);
            loop {
                let running = self.services.last_mut().expect("just pushed");
                if let Some(child) = running.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!(
                        "{} exited before it was ready ({status}); last log lines:\n{}",
                        service.name,
                        self.log_tail(&service.name)
                    ));
                }
                if Self::probe(&service) {
                    self.log(&format!("{} is ready", service.name));
                    break;
                }
                if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
                    return Err(format!(
                        "{} was not ready within {} s; last log lines:\n{}",
                        service.name,
                        service.ready_timeout_secs,
                        self.log_tail(&service.name)
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Reap exited services and start them again when their delay has passed.
    fn tick(&mut self) {
        let mut changed = false;
        let now = Instant::now();
        let mut lines = Vec::new();
        for i in 0..self.services.len() {
            let r = &mut self.services[i];
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let uptime = r.started.elapsed();
                if uptime >= Duration::from_secs(10) {
                    r.quick_failures = 0;
                } else {
                    r.quick_failures += 1;
                }
                let delay = restart_delay(uptime, r.quick_failures);
                lines.push(format!(
                    "{} (pid {}) exited after {:.1?}: {status}; starting it again in {delay:?}",
                    r.service.name,
                    child.id(),
                    uptime
                ));
                r.child = None;
                r.next_start = Some(now + delay);
                changed = true;
            }
        }
        for i in 0..self.services.len() {
            let due = self.services[i].next_start.is_some_and(|t| t <= now);
            if !due {
                continue;
            }
            let service = self.services[i].service.clone();
            match self.spawn(&service) {
                Ok(child) => {
                    lines.push(format!(
                        "{} started again (pid {})",
                        service.name,
                        child.id()
                    ));
                    let r = &mut self.services[i];
                    r.child = Some(child);
                    r.started = Instant::now();
                    r.restarts += 1;
                    r.next_start = None;
                }
                Err(e) => {
                    lines.push(format!("starting {} again failed: {e}", service.name));
                    let r = &mut self.services[i];
                    r.quick_failures += 1;
                    r.next_start = Some(now + restart_delay(Duration::ZERO, r.quick_failures));
                }
            }
            changed = true;
        }
        for line in lines {
            self.log(&line);
        }
        if changed {
            self.write_status(State::Running, "all services running");
        }
    }

    /// Stops every service, last started first.
    fn stop_all(&mut self) {
        while let Some(mut r) = self.services.pop() {
            let Some(mut child) = r.child.take() else {
                continue;
            };
            if let Some((program, args)) = r.service.pre_stop.split_first() {
                self.log(&format!(
                    "{}: running {:?}",
                    r.service.name, r.service.pre_stop
                ));
                match Command::new(program)
                    .args(args)
                    .envs(self.plan.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .spawn()
                {
                    Ok(mut hook) => terminate_after(&mut hook, Duration::from_secs(60)),
                    Err(e) => self.log(&format!("pre-stop of {} failed: {e}", r.service.name)),
                }
            }
            self.log(&format!("stopping {} (pid {})", r.service.name, child.id()));
            terminate(&mut child, Duration::from_secs(r.service.stop_timeout_secs));
        }
    }
}

/// Waits up to `limit` for a process to exit, then kills it.
fn terminate_after(child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// kill(2); errors (the process is gone) are ignored.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2) on a PID the caller owns.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A process's command line, split at NULs.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `program args` as a detached supervisor: a new session, no controlling terminal,
/// output to `log`. Returns its PID. It outlives the caller.
pub fn spawn_detached(program: &Path, args: &[String], log: &Path) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    let out = File::create(log).map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        binary: program.display().to_string(),
        source,
    })?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_at_once_after_a_long_run_and_back_off_when_failing() {
        assert_eq!(
            restart_delay(Duration::from_secs(60), 0),
            Duration::from_millis(100)
        );
        assert_eq!(
            restart_delay(Duration::from_secs(1), 1),
            Duration::from_millis(200)
        );
        assert_eq!(
            restart_delay(Duration::from_secs(1), 20),
            Duration::from_secs(5)
        );
    }
}

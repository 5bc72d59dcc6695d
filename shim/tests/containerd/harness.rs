//! One private containerd with our shim (`$SHIM_BINARY`, else this build's binary), a
//! private module cache, and helpers around `ctr`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use testbed::containerd::{Containerd, ContainerdOptions, WASMTIME_RUNTIME};
use testbed::oci::{RootfsImage, WASM_PLATFORM, WasmArtifact};
use testbed::versions::DebPackage;

pub struct Bed {
    pub ctrd: Containerd,
    /// Holds the module cache and image tarballs; removed after the containerd.
    pub work: tempfile::TempDir,
}

pub fn shim_binary() -> PathBuf {
    std::env::var_os("SHIM_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-wasmtime-v1")))
}

impl Bed {
    pub fn start(package: DebPackage) -> Bed {
        Self::start_with_shim(package, None)
    }

    /// With node defaults: the shim installed as the installer does it, into a directory
    /// of its own with `options_json` beside it (a hard link of the binary, so
    /// `/proc/self/exe` of the shim names that directory; a copy across filesystems).
    pub fn start_with_options(package: DebPackage, options_json: &str) -> Bed {
        Self::start_with_shim(package, Some(options_json))
    }

    fn start_with_shim(package: DebPackage, options_json: Option<&str>) -> Bed {
        let work = tempfile::tempdir().expect("temp dir");
        let shim = match options_json {
            None => shim_binary(),
            Some(json) => {
                let dir = work.path().join("node");
                std::fs::create_dir(&dir).expect("shim dir");
                let shim = dir.join("containerd-shim-wasmtime-v1");
                if std::fs::hard_link(shim_binary(), &shim).is_err() {
                    std::fs::copy(shim_binary(), &shim).expect("copy the shim");
                }
                std::fs::write(dir.join("options.json"), json).expect("write options.json");
                shim
            }
        };
        let opts = ContainerdOptions {
            shim,
            env: vec![(
                "WASMRUNTIME_CACHE_DIR".into(),
                work.path().join("cache").display().to_string(),
            )],
        };
        let ctrd = Containerd::start(package, &opts).unwrap_or_else(|e| panic!("{e}"));
        Bed { ctrd, work }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.work.path().join("cache")
    }

    /// Entries of the module file cache (no temp files expected).
    pub fn cache_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache_dir())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Writes and imports a classic image.
    pub fn import(&self, image: &RootfsImage) {
        let tar = self.work.path().join(format!("{}.tar", unique("img")));
        image.write_tar(&tar).expect("write image");
        self.ctrd
            .import(&tar, None)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Writes and imports a Wasm artifact.
    pub fn import_artifact(&self, artifact: &WasmArtifact) {
        self.try_import_artifact(artifact)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn try_import_artifact(&self, artifact: &WasmArtifact) -> Result<(), testbed::Error> {
        let tar = self.work.path().join(format!("{}.tar", unique("art")));
        artifact.write_tar(&tar)?;
        self.ctrd.import(&tar, Some(WASM_PLATFORM))
    }

    /// `ctr run --rm --runtime io.containerd.wasmtime.v1 <flags> <image> <id> <args>`.
    pub fn run_wasm(&self, flags: &[&str], image: &str, args: &[&str]) -> Run {
        self.run(WASMTIME_RUNTIME, flags, image, args)
    }

    pub fn run(&self, runtime: &str, flags: &[&str], image: &str, args: &[&str]) -> Run {
        let id = unique("c");
        let out = self
            .run_cmd(runtime, flags, image, &id, args)
            .output()
            .expect("ctr run");
        Run { id, out }
    }

    pub fn run_cmd(
        &self,
        runtime: &str,
        flags: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.ctrd.ctr();
        cmd.args(["run", "--rm", "--runtime", runtime])
            .args(flags)
            .arg(image)
            .arg(id)
            .args(args);
        cmd
    }

    /// `ctr run -d` of a Wasm container (returns once its task runs), which must succeed.
    pub fn run_detached(&self, flags: &[&str], image: &str, id: &str) {
        let out = self
            .ctrd
            .ctr()
            .args(["run", "-d", "--runtime", WASMTIME_RUNTIME])
            .args(flags)
            .args([image, id])
            .output()
            .expect("ctr run -d");
        assert!(out.status.success(), "ctr run -d {id}: {out:?}");
    }

    /// `ctr events` running in the background, into a file.
    pub fn watch_events(&self) -> EventLog {
        let path = self.work.path().join(format!("{}.events", unique("ev")));
        let file = std::fs::File::create(&path).expect("events file");
        let child = self
            .ctrd
            .ctr()
            .arg("events")
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ctr events");
        // `ctr events` subscribes asynchronously; give it a moment before anything happens
        std::thread::sleep(std::time::Duration::from_millis(300));
        EventLog { child, path }
    }

    /// `ctr tasks kill -s SIGTERM <id>`, which must succeed.
    pub fn sigterm(&self, id: &str) {
        let kill = self
            .ctrd
            .ctr()
            .args(["tasks", "kill", "-s", "SIGTERM", id])
            .output()
            .expect("ctr tasks kill");
        assert!(kill.status.success(), "{kill:?}");
    }

    /// Task status from `ctr tasks ls` ("RUNNING", "STOPPED"), if the task exists.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.task_column(id, 2)
    }

    /// The PID of the task's init process (the guest's, for a Wasm container).
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.task_column(id, 1)?.parse().ok()
    }

    /// A column of `ctr tasks ls` (`TASK PID STATUS`) for task `id`.
    fn task_column(&self, id: &str, column: usize) -> Option<String> {
        let out = self.ctrd.ctr().args(["tasks", "ls"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(column).map(str::to_string))
    }
}

/// Lines of `ctr events`: `<time> <namespace> <topic> <event as JSON>`.
pub struct EventLog {
    child: std::process::Child,
    path: PathBuf,
}

impl EventLog {
    /// Waits until a line has `topic` and mentions `id`; the line.
    pub fn wait_for(&self, topic: &str, id: &str, limit: std::time::Duration) -> Option<String> {
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let line = text
                .lines()
                .find(|l| l.split_whitespace().any(|w| w == topic) && l.contains(id));
            if let Some(line) = line {
                return Some(line.to_string());
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub id: String,
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// For assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.out.status.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

/// A process-unique name with `prefix`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A classic image `docker.io/test/<name>:1` with `/app.wasm` as its entrypoint.
pub fn wasm_image(name: &str, wasm: &[u8]) -> RootfsImage {
    RootfsImage::new(&image_name(name))
        .file("/app.wasm", wasm.to_vec(), 0o755)
        .entrypoint(&["/app.wasm"])
}

pub fn image_name(name: &str) -> String {
    format!("docker.io/test/{name}:1")
}

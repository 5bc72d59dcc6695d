//! What the guest can reach (mounts with their own modes, nothing else), the memory limit
//! and SIGTERM, through real containerd.

use std::process::Stdio;
use std::time::{Duration, Instant};

use testbed::containerd::WASMTIME_RUNTIME;
use testbed::reliability::record;
use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, unique, wasm_image};

crate::on_every_containerd!(
    bind_mounts_keep_their_mode_and_nothing_else_is_reachable,
    guest_reads_no_host_secret_through_proc_or_symlinks,
    memory_limit_exceeded_exits_137,
    sigterm_exits_143_within_a_second,
    cgroups_and_resources_are_those_runc_sets,
);

/// errno values of wasi-libc (the guest's exit status on failure).
const ENOENT: i32 = 44;
const EROFS: i32 = 69;
const ENOTCAPABLE: i32 = 76;
const EACCES: i32 = 2;
const EPERM: i32 = 63;

fn bind_mounts_keep_their_mode_and_nothing_else_is_reachable(v: DebPackage) {
    let bed = Bed::start(v);
    let mut outside = Vec::new();
    let host = bed.work.path().join("host");
    let (ro, rw) = (host.join("ro"), host.join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("data.txt"), "from the host\n").unwrap();
    std::fs::write(host.join("secret.txt"), "not for the guest\n").unwrap();
    bed.import(&wasm_image("fs", &fixtures::fs_module()));
    let mounts = [
        "--mount".to_string(),
        format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display()),
        "--mount".to_string(),
        format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display()),
    ];
    let flags: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let fs = |args: &[&str]| {
        let mut argv = vec!["/app.wasm"];
        argv.extend(args);
        bed.run_wasm(&flags, &image_name("fs"), &argv)
    };

    let read = fs(&["read", "/ro/data.txt"]);
    assert_eq!(read.code(), 0, "{}", read.describe());
    assert_eq!(read.stdout(), "from the host\n");

    let denied = fs(&["write", "/ro/new.txt"]);
    assert!(
        [EROFS, ENOTCAPABLE, EACCES, EPERM].contains(&denied.code()),
        "write to a read-only mount: {}",
        denied.describe()
    );
    assert!(!ro.join("new.txt").exists());

    let written = fs(&["write", "/rw/new.txt"]);
    assert_eq!(written.code(), 0, "{}", written.describe());
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written\n"
    );

    // the rootfs is read-only too
    let root = fs(&["write", "/new.txt"]);
    assert_ne!(root.code(), 0, "{}", root.describe());

    // The host's side of the mounts: neither by its host path nor by climbing out.
    for path in [
        host.join("secret.txt").display().to_string(),
        "/ro/../secret.txt".to_string(),
        "/rw/../../secret.txt".to_string(),
    ] {
        let r = fs(&["read", &path]);
        assert!(
            [ENOENT, ENOTCAPABLE, EPERM].contains(&r.code()) && !r.stdout().contains("not for"),
            "{path} must be unreachable: {}",
            r.describe()
        );
        let shown = path.replace(&bed.work.path().display().to_string(), "<host>");
        outside.push(format!("{shown}: errno {}", r.code()));
    }
    record(
        "shim",
        &format!(
            "guest writes to a read-only mount and the read-only rootfs, reads the host by its path and by `..` out of a mount ({})",
            v.dir
        ),
        "read-only mount and rootfs refuse writes, the rw mount takes them; nothing outside the mounts is reachable",
        &format!(
            "write /ro: errno {}, write /: exit {}, write /rw: ok; {}",
            denied.code(),
            root.code(),
            outside.join(", ")
        ),
    );
}

/// The guest escape cases of reading: the shim's environment through `/proc/self/environ`
/// (the init never execs, so that block was the shim's), the host's files through symlinks
/// planted in a mount (absolute, and climbing out), and `/etc/shadow`.
fn guest_reads_no_host_secret_through_proc_or_symlinks(v: DebPackage) {
    let bed = Bed::start(v);
    let mut seen = Vec::new();
    let rw = bed.work.path().join("planted");
    std::fs::create_dir_all(&rw).unwrap();
    std::os::unix::fs::symlink("/etc", rw.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", rw.join("up")).unwrap();
    bed.import(&wasm_image("fs", &fixtures::fs_module()));
    let mount = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
    let read = |path: &str| {
        bed.run_wasm(
            &["--mount", &mount],
            &image_name("fs"),
            &["/app.wasm", "read", path],
        )
    };
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for path in ["/proc/self/environ", "/proc/1/environ"] {
        let r = read(path);
        // containerd's environment, which the shim inherited (the bed sets this one)
        assert!(
            !r.stdout().contains("WASMRUNTIME_CACHE_DIR") && !r.stdout().contains("PATH="),
            "{path} shows the shim's environment: {}",
            r.describe()
        );
        let text = r.stdout();
        let readable = text.chars().filter(|c| *c != '\0').count();
        seen.push(format!(
            "{path}: exit {}, {} bytes, {readable} of them not NUL (the block is zeroed)",
            r.code(),
            text.len()
        ));
    }
    for path in ["/rw/abs/hostname", "/rw/up/hostname", "/etc/shadow"] {
        let r = read(path);
        assert!(
            [ENOENT, ENOTCAPABLE, EPERM, EACCES].contains(&r.code()),
            "{path} must be unreachable: {}",
            r.describe()
        );
        assert!(
            host_hostname.trim().is_empty() || !r.stdout().contains(host_hostname.trim()),
            "{path}: {}",
            r.describe()
        );
        seen.push(format!("{path}: errno {}", r.code()));
    }
    record(
        "shim",
        &format!(
            "guest reads /proc/self/environ, /proc/1/environ, /etc/shadow, and host files through absolute and climbing symlinks planted in its mount ({})",
            v.dir
        ),
        "no byte of the shim's (containerd's) environment, no host file",
        &seen.join("; "),
    );
}

fn memory_limit_exceeded_exits_137(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("grow", &fixtures::wat("grow")));
    // grow.wasm grows to 64 MiB; the limit is 32 MiB.
    let events = bed.watch_events();
    let run = bed.run_wasm(&["--memory-limit", "33554432"], &image_name("grow"), &[]);
    assert_eq!(run.code(), 137, "{}", run.describe());
    assert!(
        run.stderr().contains("above the container limit"),
        "the shim's limiter, not the kernel, must stop it: {}",
        run.describe()
    );
    // what makes kubelet say OOMKilled: containerd's CRI sets the reason on /tasks/oom
    let limit = Duration::from_secs(10);
    let oom = events.wait_for("/tasks/oom", &run.id, limit);
    let exit = events.wait_for("/tasks/exit", &run.id, limit);
    assert!(
        oom.is_some() && exit.is_some(),
        "events:\n{}",
        events.text()
    );
    let text = events.text();
    assert!(
        text.find("/tasks/oom") < text.find("/tasks/exit"),
        "OOM must come before the exit:\n{text}"
    );
    // without a limit it completes, and no OOM is reported
    let run = bed.run_wasm(&[], &image_name("grow"), &[]);
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        events.wait_for("/tasks/exit", &run.id, limit).is_some(),
        "{}",
        events.text()
    );
    assert!(
        events
            .wait_for("/tasks/oom", &run.id, Duration::ZERO)
            .is_none(),
        "{}",
        events.text()
    );
    record(
        "shim",
        &format!(
            "guest grows its memory to 64 MiB under a 32 MiB limit ({})",
            v.dir
        ),
        "trapped by the shim's limiter; exit 137; /tasks/oom before /tasks/exit (kubelet: OOMKilled); without a limit it completes",
        "exit 137 \"above the container limit\", /tasks/oom then /tasks/exit; unlimited run exit 0, no OOM event",
    );
}

/// A guest spinning without host calls (only epoch interruption can stop it) and one
/// blocked in a host call: both end 143 within a second of `ctr task kill`.
fn sigterm_exits_143_within_a_second(v: DebPackage) {
    let bed = Bed::start(v);
    let mut took_ms = Vec::new();
    for fixture in ["spin", "sleep"] {
        bed.import(&wasm_image(fixture, &fixtures::wat(fixture)));
        let id = unique(fixture);
        let child = bed
            .run_cmd(WASMTIME_RUNTIME, &[], &image_name(fixture), &id, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while bed.task_status(&id).as_deref() != Some("RUNNING") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{fixture} never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // let the guest get into its loop / host call
        std::thread::sleep(Duration::from_millis(300));
        // A core module's runtime has one worker beside the guest's thread, whatever the
        // CPU count (containerd-shim-wasm's would have one per CPU), and still stops below.
        let pid = bed.task_pid(&id).expect("task pid");
        let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "tokio-rt-worker")
            .count();
        assert_eq!(workers, 1, "{fixture}: tokio workers in the container init");
        let killed = Instant::now();
        bed.sigterm(&id);
        let out = child.wait_with_output().unwrap();
        let took = killed.elapsed();
        assert_eq!(out.status.code(), Some(143), "{fixture}: {out:?}");
        assert!(
            took < Duration::from_secs(1),
            "{fixture}: SIGTERM -> exit took {took:?}"
        );
        took_ms.push(format!("{fixture}: 143 after {} ms", took.as_millis()));
    }
    record(
        "shim",
        &format!(
            "guest spins forever without host calls, and one blocks in a host call; SIGTERM ({})",
            v.dir
        ),
        "both stopped (epoch interruption), exit 143 within 1 s",
        &took_ms.join(", "),
    );
}

/// The same resource flags on a Wasm container and a runc one: each init sits in its own
/// `/<namespace>/<id>` cgroup of every hierarchy runc uses, and the limit files read the
/// same. (On a cgroup v1 host the shim places the container itself, `src/placement.rs`.)
fn cgroups_and_resources_are_those_runc_sets(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("sleep", &fixtures::wat("sleep")));
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let native = testbed::oci::RootfsImage::new("docker.io/test/busybox:1")
        .file("/bin/busybox", busybox, 0o755)
        .entrypoint(&["/bin/busybox"]);
    bed.import(&native);
    let flags = [
        "--memory-limit",
        "67108864",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
    ];
    let start = |runtime: &str, image: &str, args: &[&str]| {
        let id = unique("cg");
        let child = bed
            .run_cmd(runtime, &flags, image, &id, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let since = Instant::now();
        let pid = loop {
            if bed.task_status(&id).as_deref() == Some("RUNNING")
                && let Some(pid) = bed.task_pid(&id)
            {
                break pid;
            }
            assert!(since.elapsed() < Duration::from_secs(30), "{id} never ran");
            std::thread::sleep(Duration::from_millis(20));
        };
        (id, pid, child)
    };
    let ours = start(WASMTIME_RUNTIME, &image_name("sleep"), &[]);
    let runc = start(
        "io.containerd.runc.v2",
        "docker.io/test/busybox:1",
        &["/bin/busybox", "sleep", "600"],
    );
    // controller -> cgroup path, from /proc/<pid>/cgroup (v1 lines)
    let cgroups = |pid: u32| -> Vec<(String, String)> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                // named hierarchies and a hybrid host's empty v2 one (`0::`, which
                // runc joins and youki never did) hold no controller
                (!ctrl.is_empty() && !ctrl.starts_with("name="))
                    .then(|| (ctrl.to_string(), path.to_string()))
            })
            .collect()
    };
    let ns = bed.ctrd.namespace();
    let expected = |id: &str, of: &[(String, String)]| -> Vec<(String, String)> {
        of.iter()
            .map(|(ctrl, path)| {
                let want = if path.ends_with(&format!("/{id}")) {
                    format!("/{ns}/{id}")
                } else {
                    path.clone()
                };
                (ctrl.clone(), want)
            })
            .collect()
    };
    let runc_cgroups = cgroups(runc.1);
    let our_cgroups = cgroups(ours.1);
    // runc's own placement is the reference: the same hierarchies, our id in place of its
    let runc_as_ours: Vec<(String, String)> = runc_cgroups
        .iter()
        .map(|(c, p)| (c.clone(), p.replace(&runc.0, &ours.0)))
        .collect();
    assert_eq!(our_cgroups, runc_as_ours, "our init's cgroups vs runc's");
    assert_eq!(
        our_cgroups,
        expected(&ours.0, &our_cgroups),
        "every hierarchy runc moves its init into names the container"
    );
    let mut compared = Vec::new();
    for (ctrl, file) in [
        ("memory", "memory.limit_in_bytes"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpu", "cpu.cfs_period_us"),
        ("cpu", "cpu.shares"),
        ("devices", "devices.list"),
        ("pids", "pids.max"),
        ("cpuset", "cpuset.cpus"),
        ("cpuset", "cpuset.mems"),
        ("cpuset", "cgroup.clone_children"),
    ] {
        let dir = |id: &str| std::path::PathBuf::from(format!("/sys/fs/cgroup/{ctrl}/{ns}/{id}"));
        if !dir(&runc.0).exists() {
            continue;
        }
        // as a set: youki's libcgroups and runc write the device rules in other orders
        let read = |id: &str| {
            let text = std::fs::read_to_string(dir(id).join(file)).unwrap();
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            lines.join("\n")
        };
        assert_eq!(read(&ours.0), read(&runc.0), "{ctrl}/{file}");
        compared.push(format!(
            "{file}={}",
            read(&ours.0).lines().next().unwrap_or("").trim()
        ));
    }
    // the shim makes cpusets with the parent's cgroup.clone_children set for the mkdir
    // (src/placement.rs): put back, the namespace's directory reads as a new one would
    let flag = |dir: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpuset{dir}/cgroup.clone_children"))
            .map(|f| f.trim().to_string())
    };
    if let Ok(root) = flag("") {
        assert_eq!(
            flag(&format!("/{ns}")).unwrap(),
            root,
            "cpuset/{ns} clone_children"
        );
    }
    assert!(
        compared
            .iter()
            .any(|c| c.starts_with("memory.limit_in_bytes=67108864")),
        "the memory limit was compared and set: {compared:?}"
    );
    for (id, _, child) in [ours, runc] {
        let _ = bed
            .ctrd
            .ctr()
            .args(["tasks", "kill", "-s", "SIGKILL", &id])
            .output();
        let mut child = child;
        let _ = child.wait();
    }
    record(
        "shim",
        &format!(
            "Wasm and runc containers with the same resource flags ({})",
            v.dir
        ),
        "same cgroups (per hierarchy), same limit files",
        &compared.join(", "),
    );
}

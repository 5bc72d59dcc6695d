//! `cargo xtask bench shim`: our Wasm shim against runc and `wasmtime serve`, on one
//! private containerd 2.x from the test bed, release shim. Writes the `shim` section of
//! docs/benchmarks.md.
//!
//! - cold start: `ctr run --rm` end to end, Wasm hello through our shim (module cache hit
//!   and miss) vs a static busybox `echo` through runc;
//! - idle memory: RSS/PSS/USS of the shim and every process below it, per process, for
//!   one container per shim (what `ctr run` does) and for several containers sharing one
//!   shim (what a pod does: containerd groups a pod's containers by their
//!   `io.kubernetes.cri.sandbox-id` annotation);
//! - wasi:http hello: `wrk` against our shim and against `wasmtime serve` (wasmtime-cli of
//!   the same Wasmtime version), same component. `--only http` runs just this part and
//!   replaces just its subsection.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::containerd::{Containerd, ContainerdOptions, WASMTIME_RUNTIME};
use testbed::oci::RootfsImage;

use crate::cmd;

const RUNS: usize = 20;
const WASMTIME_CLI: &str = "48.0.8";
const RUNC: &str = "io.containerd.runc.v2";
/// Containers in the "pod" memory measurement.
const POD_SIZE: usize = 5;
/// `wrk` settings, the same for both servers (a later `-d` wins for the warm-up).
const WRK_ARGS: [&str; 3] = ["-t2", "-c16", "-d4s"];
/// Alternating `wrk` rounds per server.
const HTTP_ROUNDS: usize = 5;

/// A part of the shim benchmark that can run on its own (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShimPart {
    /// wasi:http hello against `wasmtime serve`
    Http,
    /// cold start and idle memory (everything before the wasi:http subsection)
    Startup,
}

/// Heading of the HTTP subsection; `--only http` replaces the shim section from here on.
const HTTP_HEADING: &str = "### wasi:http hello";

pub fn shim(only: Option<ShimPart>) -> Result<()> {
    crate::testbed::install_all()?;
    let shim = cmd::release_shim()?;
    let work = tempfile::tempdir()?;
    let fixtures = work.path().join("fixtures");
    cmd::wasm_fixtures(&fixtures)?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: apt-get install busybox-static (the native baseline)");
    }
    let wrk = which("wrk").context("wrk missing: apt-get install wrk")?;
    let wasmtime = match only {
        Some(ShimPart::Startup) => PathBuf::new(),
        _ => wasmtime_cli()?,
    };

    let cache = work.path().join("cache");
    let ctrd = Containerd::start(
        testbed::versions::CONTAINERD_2,
        &ContainerdOptions {
            shim,
            env: vec![("WASMRUNTIME_CACHE_DIR".into(), cache.display().to_string())],
        },
    )?;
    // "hello-miss": the same module under another name, so that cache misses can be told
    // apart in containerd's log
    let images: &[(&str, &str)] = match only {
        Some(ShimPart::Http) => &[("http", "http.wasm")],
        Some(ShimPart::Startup) => &[
            ("hello", "hello.wasm"),
            ("hello-miss", "hello.wasm"),
            ("sleep", "sleep.wasm"),
        ],
        None => &[
            ("hello", "hello.wasm"),
            ("hello-miss", "hello.wasm"),
            ("sleep", "sleep.wasm"),
            ("http", "http.wasm"),
        ],
    };
    for (name, file) in images {
        let wasm = std::fs::read(fixtures.join(file))?;
        import(&ctrd, work.path(), &wasm_image(name, wasm))?;
    }
    if only == Some(ShimPart::Http) {
        let http = http_figures(&ctrd, &wrk, &wasmtime, &fixtures.join("http.wasm"))?;
        let text = http_report(&http);
        println!("{text}");
        return replace_http_subsection("docs/benchmarks.md", &text);
    }
    let native = RootfsImage::new(&image("busybox"))
        .file("/bin/busybox", std::fs::read(busybox)?, 0o755)
        .entrypoint(&["/bin/busybox"]);
    import(&ctrd, work.path(), &native)?;
    let load_before = load_average();

    // Cold starts, interleaved (runc, cache hit, cache miss, runc, ...) so that load from
    // elsewhere on the machine hits all three alike; round 0 is the warm-up.
    let mut starts = Starts::default();
    for round in 0..=RUNS {
        let runc = run_once(
            &ctrd,
            RUNC,
            "busybox",
            round,
            &["/bin/busybox", "echo", "hi"],
            "hi",
        )?;
        let hit = run_once(
            &ctrd,
            WASMTIME_RUNTIME,
            "hello",
            round,
            &[],
            "hello from wasm",
        )?;
        // a miss: the file cache is emptied first, so the run compiles
        let _ = std::fs::remove_dir_all(&cache);
        let miss = run_once(
            &ctrd,
            WASMTIME_RUNTIME,
            "hello-miss",
            round,
            &[],
            "hello from wasm",
        )?;
        if round > 0 {
            starts.runc.push(runc);
            starts.hit.push(hit);
            starts.miss.push(miss);
        }
    }
    let log = ctrd.log();
    let phases: Vec<Phases> = (1..=RUNS)
        .filter_map(|round| Phases::of(&log, &run_id("hello", round)))
        .collect();
    let runc_windows: Vec<f64> = (1..=RUNS)
        .filter_map(|round| shim_window(&log, &run_id("busybox", round)))
        .collect();

    let sleep_args: [&str; 3] = ["/bin/busybox", "sleep", "600"];
    let idle = |runtime: &str, name: &str, args: &[&str]| -> Result<[Idle; 3]> {
        Ok([
            idle_memory(&ctrd, runtime, name, args, 1, false)?,
            idle_memory(&ctrd, runtime, name, args, POD_SIZE, false)?,
            idle_memory(&ctrd, runtime, name, args, POD_SIZE, true)?,
        ])
    };
    let memory = Memory {
        ours: idle(WASMTIME_RUNTIME, "sleep", &[])?,
        runc: idle(RUNC, "busybox", &sleep_args)?,
    };

    let http = match only {
        Some(ShimPart::Startup) => None,
        _ => Some(http_figures(
            &ctrd,
            &wrk,
            &wasmtime,
            &fixtures.join("http.wasm"),
        )?),
    };

    let section = report(&Figures {
        containerd: ctrd.version(),
        load: (load_before, load_average()),
        starts,
        phases,
        runc_windows,
        memory,
        http,
    });
    println!("{section}");
    if only == Some(ShimPart::Startup) {
        return replace_before_http("docs/benchmarks.md", &section);
    }
    cmd::update_doc_section("docs/benchmarks.md", "shim", &section)
}

fn image(name: &str) -> String {
    format!("docker.io/bench/{name}:1")
}

fn wasm_image(name: &str, wasm: Vec<u8>) -> RootfsImage {
    RootfsImage::new(&image(name))
        .file("/app.wasm", wasm, 0o755)
        .entrypoint(&["/app.wasm"])
}

fn import(ctrd: &Containerd, dir: &Path, img: &RootfsImage) -> Result<()> {
    let tar = dir.join("image.tar");
    img.write_tar(&tar)?;
    ctrd.import(&tar, None)?;
    Ok(())
}

fn run_id(name: &str, round: usize) -> String {
    format!("bench-{name}-{round}")
}

/// Wall time of one `ctr run --rm` (create, start, wait, delete: what a user waits for);
/// the output must contain `expect`.
fn run_once(
    ctrd: &Containerd,
    runtime: &str,
    name: &str,
    round: usize,
    args: &[&str],
    expect: &str,
) -> Result<Duration> {
    let id = run_id(name, round);
    let start = Instant::now();
    let out = ctrd
        .ctr()
        .args(["run", "--rm", "--runtime", runtime, &image(name), &id])
        .args(args)
        .output()?;
    let took = start.elapsed();
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(expect) {
        bail!("{name} via {runtime}: {out:?}");
    }
    Ok(took)
}

#[derive(Default)]
struct Starts {
    runc: Vec<Duration>,
    hit: Vec<Duration>,
    miss: Vec<Duration>,
}

/// `time="2026-12-02T09:55:59.072131892Z"` of a containerd log line, as seconds since
/// midnight (a run never spans midnight by more than its own length; see `span`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    let clock = t.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Milliseconds from `a` to `b`, across midnight if need be.
fn span(a: f64, b: f64) -> f64 {
    (b - a).rem_euclid(86_400.0) * 1000.0
}

fn first_time(log: &str, pred: impl Fn(&str) -> bool) -> Option<f64> {
    log.lines().find(|l| pred(l)).and_then(log_time)
}

/// containerd's view of one run of a runtime: from connecting to the started shim to
/// the shim's disconnect (create, start, the program, delete, shim exit), in ms.
fn shim_window(log: &str, id: &str) -> Option<f64> {
    let connect = first_time(log, |l| {
        l.contains(&format!("msg=\"connecting to shim {id}\""))
    })?;
    let gone = first_time(log, |l| {
        l.contains("msg=\"shim disconnected\"") && l.contains(&format!(" id={id} "))
    })?;
    Some(span(connect, gone))
}

/// Where the time of one Wasm run goes, from containerd's log (the shim logs through it),
/// in ms.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// connect -> start request: create (rootfs mount, the Wasm-layer lookup when the
    /// entrypoint is not in the rootfs, youki builds the container in the zygote)
    create: f64,
    /// start request -> the executor runs the guest in the container
    start: f64,
    /// executor -> guest exited (engine, cache load, the guest)
    run: f64,
    /// guest exited -> shim disconnected (exit reported, delete, shim exit)
    teardown: f64,
}

impl Phases {
    fn of(log: &str, id: &str) -> Option<Self> {
        let line = |msg: String| first_time(log, move |l| l.contains(&msg));
        let connect = line(format!("msg=\"connecting to shim {id}\""))?;
        let start = line(format!("msg=\"starting task {id}\""))?;
        let called = line(format!("msg=\"running the guest of {id}\""))?;
        let exited = line(format!("msg=\"the guest of {id} exited"))?;
        let window = shim_window(log, id)?;
        Some(Self {
            create: span(connect, start),
            start: span(start, called),
            run: span(called, exited),
            teardown: window - span(connect, exited),
        })
    }
}

/// One process of a shim's tree, memory in KiB from `/proc/<pid>/smaps_rollup`.
#[derive(Debug, Clone)]
struct Proc {
    /// Position in the tree and what it runs, e.g. "shim > zygote".
    role: String,
    rss: u64,
    pss: u64,
    /// Anonymous memory, proportionally (`Pss_Anon`): heap, stacks, copy-on-write pages
    /// not yet shared out; unlike the binary's code pages, not shared with other shims
    /// and not reclaimable.
    anon: u64,
}

#[derive(Debug, Clone)]
struct Idle {
    containers: usize,
    pod: bool,
    procs: Vec<Proc>,
}

/// One container; `POD_SIZE` containers with a shim each; `POD_SIZE` in one shim.
struct Memory {
    ours: [Idle; 3],
    runc: [Idle; 3],
}

/// Starts `n` idle containers, each with its own shim (`ctr run -d`) or all in one shim
/// (`pod`: the CRI sandbox-id annotation), lets them settle, reads the memory of every
/// shim process and everything below it, then removes the containers.
fn idle_memory(
    ctrd: &Containerd,
    runtime: &str,
    name: &str,
    args: &[&str],
    n: usize,
    pod: bool,
) -> Result<Idle> {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("idle-{name}-{n}-{pod}-{i}"))
        .collect();
    let sandbox = format!("io.kubernetes.cri.sandbox-id=bench-pod-{name}");
    for id in &ids {
        let mut c = ctrd.ctr();
        c.args(["run", "-d", "--runtime", runtime]);
        if pod {
            c.args(["--annotation", &sandbox]);
        }
        let out = c.args([&image(name), id]).args(args).output()?;
        if !out.status.success() {
            bail!("{name}: {out:?}");
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let procs = shim_tree(ctrd);
    for id in &ids {
        let _ = ctrd
            .ctr()
            .args(["tasks", "kill", "-s", "SIGKILL", id])
            .output();
    }
    std::thread::sleep(Duration::from_millis(500));
    for id in &ids {
        let _ = ctrd.ctr().args(["tasks", "delete", "-f", id]).output();
        let _ = ctrd.ctr().args(["containers", "delete", id]).output();
    }
    let shims = procs.iter().filter(|p| p.role == "shim").count();
    if shims != if pod { 1 } else { n } {
        bail!("{name} x{n} (pod {pod}): {shims} shims, processes {procs:#?}");
    }
    Ok(Idle {
        containers: n,
        pod,
        procs,
    })
}

/// Every shim process of `ctrd` and its descendants, parents before children.
fn shim_tree(ctrd: &Containerd) -> Vec<Proc> {
    let mut procs: Vec<Proc> = Vec::new();
    let all = ctrd.shim_pids();
    let mut queue: Vec<(u32, String)> = all
        .iter()
        .copied()
        // forked processes (zygotes, container inits) carry the shim's command line too;
        // start from the roots only
        .filter(|&p| stat_ppid(p).is_none_or(|pp| !all.contains(&pp)))
        .map(|p| (p, "shim".to_string()))
        .collect();
    while let Some((pid, role)) = queue.pop() {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib = |f: &str| field_kib(&text, f);
        procs.push(Proc {
            role: role.clone(),
            rss: kib("Rss:"),
            pss: kib("Pss:"),
            anon: kib("Pss_Anon:"),
        });
        for child in children(pid) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            queue.push((child, format!("{role} > {}", comm.trim())));
        }
    }
    procs
}

fn stat_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after the parenthesised comm: state, ppid
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    p99_ms: f64,
    errors: u64,
    /// requests/s of each round, for the record
    rounds: Vec<f64>,
}

impl Load {
    /// Median requests/s and median p99 of the rounds (each on its own), errors summed.
    fn median(mut rounds: Vec<Load>) -> Load {
        let errors = rounds.iter().map(|l| l.errors).sum();
        let all = rounds.iter().map(|l| l.rps).collect();
        rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let rps = rounds[rounds.len() / 2].rps;
        rounds.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
        Load {
            rps,
            p99_ms: rounds[rounds.len() / 2].p99_ms,
            errors,
            rounds: all,
        }
    }
}

/// Both servers up at once on their own ports; `wrk` against each in turn, HTTP_ROUNDS
/// rounds after a warm-up of each, so load from elsewhere hits both alike. Medians of the
/// rounds.
fn http_load(
    ctrd: &Containerd,
    wrk: &Path,
    wasmtime: &Path,
    component: &Path,
) -> Result<(Load, Load)> {
    let ours_port = free_port()?;
    let mut ours = ctrd.ctr();
    ours.args([
        "run",
        "--rm",
        "--net-host",
        "--runtime",
        WASMTIME_RUNTIME,
        "--env",
    ])
    .arg(format!("WASMRUNTIME_HTTP_PORT={ours_port}"))
    .args([&image("http"), "bench-http"]);
    let ours = Server::start(ours, ours_port)?;
    let theirs_port = free_port()?;
    let mut theirs = Command::new(wasmtime);
    theirs
        .args(["serve", "--addr"])
        .arg(format!("127.0.0.1:{theirs_port}"))
        .arg(component);
    let theirs = Server::start(theirs, theirs_port);
    let result = theirs.and_then(|theirs| {
        let mut rounds: (Vec<Load>, Vec<Load>) = (Vec::new(), Vec::new());
        for round in 0..=HTTP_ROUNDS {
            let a = run_wrk(wrk, ours_port, round == 0)?;
            let b = run_wrk(wrk, theirs_port, round == 0)?;
            if round > 0 {
                rounds.0.push(a);
                rounds.1.push(b);
            }
        }
        drop(theirs);
        Ok((Load::median(rounds.0), Load::median(rounds.1)))
    });
    let _ = ctrd
        .ctr()
        .args(["tasks", "kill", "-s", "SIGTERM", "bench-http"])
        .output();
    drop(ours);
    result
}

/// A server process, killed on drop.
struct Server(std::process::Child);

impl Server {
    fn start(mut cmd: Command, port: u16) -> Result<Self> {
        let mut child = Server(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(60) || child.0.try_wait()?.is_some() {
                bail!("{cmd:?} never listened on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_wrk(wrk: &Path, port: u16, warm_up: bool) -> Result<Load> {
    let url = format!("http://127.0.0.1:{port}/");
    let mut cmd = Command::new(wrk);
    cmd.args(WRK_ARGS);
    if warm_up {
        cmd.arg("-d2s");
    }
    let out = cmd::output(cmd.args(["--latency", &url]))?;
    parse_wrk(&out).with_context(|| format!("wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Option<Load> {
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let p99 = out.lines().find(|l| l.trim_start().starts_with("99%"))?;
    let p99 = p99.split_whitespace().nth(1)?;
    let p99_ms = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>().ok()? / 1000.0
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        p99.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect a, read b, write c, timeout d"
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().ok()?;
        }
        if let Some(list) = line.strip_prefix("Socket errors:") {
            errors += list
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(Load {
        rps,
        p99_ms,
        errors,
        rounds: Vec::new(),
    })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `wasmtime` from wasmtime-cli =48.0.8 in the cache, installed on first use (long build,
/// in its own target dir so it neither waits for nor invalidates the workspace build).
fn wasmtime_cli() -> Result<PathBuf> {
    let tools = testbed::paths::cache_root().join("tools");
    let root = tools.join(format!("wasmtime-{WASMTIME_CLI}"));
    let bin = root.join("bin/wasmtime");
    if !bin.exists() {
        eprintln!("xtask: cargo install wasmtime-cli {WASMTIME_CLI} (takes a while, once)");
        cmd::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "wasmtime-cli",
                    "--locked",
                    "--version",
                    WASMTIME_CLI,
                ])
                .arg("--root")
                .arg(&root)
                .env("CARGO_TARGET_DIR", tools.join("wasmtime-build")),
        )?;
    }
    Ok(bin)
}

/// Median and 90th percentile of durations, in ms.
fn stats_ms(times: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    (median(&ms), ms[(ms.len() * 9 / 10).min(ms.len() - 1)])
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Figures {
    containerd: String,
    load: (String, String),
    starts: Starts,
    phases: Vec<Phases>,
    runc_windows: Vec<f64>,
    memory: Memory,
    /// `None` with `--only startup`
    http: Option<HttpFigures>,
}

/// The HTTP part, with its own run conditions (it can run alone, `--only http`).
struct HttpFigures {
    containerd: String,
    load: (String, String),
    ours: Load,
    theirs: Load,
}

fn http_figures(
    ctrd: &Containerd,
    wrk: &Path,
    wasmtime: &Path,
    component: &Path,
) -> Result<HttpFigures> {
    let before = load_average();
    let (ours, theirs) = http_load(ctrd, wrk, wasmtime, component)?;
    Ok(HttpFigures {
        containerd: ctrd.version(),
        load: (before, load_average()),
        ours,
        theirs,
    })
}

/// Replaces the HTTP subsection (from [`HTTP_HEADING`] to the end of the shim section)
/// of `file` with `text`, leaving the rest of the shim section as it is.
fn replace_http_subsection(file: &str, text: &str) -> Result<()> {
    let path = cmd::workspace_root().join(file);
    let old = std::fs::read_to_string(&path)?;
    let new = splice_http_subsection(&old, text)
        .with_context(|| format!("{file} has no {HTTP_HEADING:?} in its shim section"))?;
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: updated the wasi:http subsection of the shim section of {file}");
    Ok(())
}

/// Replaces the shim section up to its HTTP subsection, which stays (`--only startup`).
fn replace_before_http(file: &str, text: &str) -> Result<()> {
    let path = cmd::workspace_root().join(file);
    let old = std::fs::read_to_string(&path)?;
    let new = splice_before_http(&old, text)
        .with_context(|| format!("{file} has no {HTTP_HEADING:?} in its shim section"))?;
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: updated the shim section of {file} up to its wasi:http subsection");
    Ok(())
}

fn splice_before_http(old: &str, text: &str) -> Option<String> {
    let marker = "<!-- shim:start -->";
    let start = old.find(marker)? + marker.len();
    let end = start + old[start..].find("<!-- shim:end -->")?;
    let from = start + old[start..end].find(HTTP_HEADING)?;
    Some(format!(
        "{}\n{}\n\n{}",
        &old[..start],
        text.trim_end(),
        &old[from..]
    ))
}

fn splice_http_subsection(old: &str, text: &str) -> Option<String> {
    let start = old.find("<!-- shim:start -->")?;
    let end = start + old[start..].find("<!-- shim:end -->")?;
    let from = start + old[start..end].find(HTTP_HEADING)?;
    Some(format!(
        "{}{}\n\n{}",
        &old[..from],
        text.trim_end(),
        &old[end..]
    ))
}

fn rounds(l: &Load) -> String {
    let r: Vec<String> = l.rounds.iter().map(|r| format!("{r:.0}")).collect();
    r.join(", ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(f: &Figures) -> String {
    let (r, r90) = stats_ms(&f.starts.runc);
    let (h, h90) = stats_ms(&f.starts.hit);
    let (m, m90) = stats_ms(&f.starts.miss);
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Shim (`cargo xtask bench shim`, {date})\n\n\
         containerd {}, release shim (static: `xtask/src/cmd.rs` STATIC_SHIM), {cpus} CPUs, load average {} before \
         and {} after (other work on the machine shows up here; the runs are interleaved so \
         it hits both sides of each comparison alike).\n",
        f.containerd,
        f.load.0,
        f.load.1,
        date = date.trim(),
    );
    let _ = writeln!(
        s,
        "### `ctr run --rm` cold start\n\n\
         Create, start, wait for exit, delete, as `ctr` reports it done; {RUNS} rounds of \
         (runc, Wasm cache hit, Wasm cache miss) after one warm-up round.\n\n\
         | image, runtime | median | p90 | median vs runc | goal |\n|---|---|---|---|---|\n\
         | static busybox `echo hi`, runc | {r:.1} ms | {r90:.1} ms | 1.00x | |\n\
         | Wasm hello (p1 module), our shim, module cache hit | {h:.1} ms | {h90:.1} ms | {:.2}x | <= 0.5x |\n\
         | Wasm hello, our shim, cache emptied before each run (compiles) | {m:.1} ms | {m90:.1} ms | {:.2}x | |\n",
        h / r,
        m / r,
    );
    let ph = |g: fn(&Phases) -> f64| median(&f.phases.iter().map(g).collect::<Vec<_>>());
    let ours_window = ph(|p| p.create + p.start + p.run + p.teardown);
    let runc_window = median(&f.runc_windows);
    let _ = writeln!(
        s,
        "Where the time goes (medians, from containerd's log, which the shims log into; \
         cache-hit runs). \"In the shim\" runs from containerd connecting to the started shim \
         to the shim's disconnect; the rest is `ctr` and containerd (image, snapshot, \
         mounts, starting the shim binary: for ours `shim start`, which forks the daemon, and \
         the `shim delete` containerd runs after every shim, both of a static binary):\n\n\
         | | runc | our shim |\n|---|---|---|\n\
         | total (`ctr run --rm`) | {r:.1} ms | {h:.1} ms |\n\
         | outside the shim | {:.1} ms | {:.1} ms |\n\
         | in the shim | {runc_window:.1} ms | {ours_window:.1} ms |\n\
         | - create (our task service: rootfs mount in its own thread; the zygote makes the cgroups (a new cpuset inherits its parent's CPUs at the mkdir, no scheduler-domain rebuild) and applies the resources, a builder process moves itself in without the kernel's global lock and youki builds the container with no cgroup write of its own, `shim/src/placement.rs` (runc's `cgroup.procs` write waits out an RCU grace period, 6-13 ms here); no Wasm-layer lookup when the entrypoint is in the rootfs) | | {:.1} ms |\n\
         | - start request -> the executor runs the guest in the container | | {:.1} ms |\n\
         | - guest run: engine, cache load, guest, exit | | {:.1} ms |\n\
         | - guest exit -> shim gone (exit event, delete, shim exit) | | {:.1} ms |\n",
        r - runc_window,
        h - ours_window,
        ph(|p| p.create),
        ph(|p| p.start),
        ph(|p| p.run),
        ph(|p| p.teardown),
    );
    // what the goal leaves the shim, given what ctr and containerd take around it
    let outside = h - ours_window;
    let _ = writeln!(
        s,
        "With no time in the shim at all, ours would be {:.2}x of runc's; 0.5x leaves the \
         shim {:.1} ms (it takes {ours_window:.1}).\n",
        outside / r,
        0.5 * r - outside,
    );
    let per =
        |i: &Idle, g: fn(&Proc) -> u64| mib(i.procs.iter().map(g).sum()) / i.containers as f64;
    let _ = writeln!(
        s,
        "### Idle memory per running container\n\n\
         The shim and every process below it, summed, divided by the containers. RSS counts \
         a page once per process that maps it (the shim binary's code pages, shared by \
         every shim through the page cache, and pages shared by forked processes); PSS \
         divides each page among its sharers; anonymous (`Pss_Anon`) is the heap and stack \
         memory, which no other shim shares and the kernel cannot reclaim. Read 3 s after the \
         start: one second after a container starts, the shim, its zygote and the \
         container's init drop the clean code pages they no longer run, as the last thing \
         before they wait (`shim/src/trim.rs`), so RSS is what each process still uses; the binary is position-dependent \
         (`shim/build.rs`), so its read-only data is clean file pages too, not relocated \
         private copies. Goal: <= 8 MB per running container.\n\n\
         | runtime, containers | RSS | PSS | anonymous |\n|---|---|---|---|"
    );
    for (who, idles) in [
        ("our shim (Wasm guest in a sleep)", &f.memory.ours),
        ("runc (busybox `sleep`)", &f.memory.runc),
    ] {
        for i in idles.iter() {
            let how = match (i.containers, i.pod) {
                (1, _) => "1 container".to_string(),
                (n, false) => format!("{n} containers, a shim each (`ctr run -d`)"),
                (n, true) => format!("{n} containers in one shim (a pod: same sandbox id)"),
            };
            let _ = writeln!(
                s,
                "| {who}, {how} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                per(i, |p| p.rss),
                per(i, |p| p.pss),
                per(i, |p| p.anon),
            );
        }
    }
    s.push('\n');
    for (what, idle) in [
        ("our shim, 1 container".to_string(), &f.memory.ours[0]),
        (
            format!("our shim, {POD_SIZE} containers in one shim"),
            &f.memory.ours[2],
        ),
        ("runc, 1 container".to_string(), &f.memory.runc[0]),
    ] {
        let _ = writeln!(
            s,
            "Processes, {what}:\n\n| process (parent > child, `comm`) | RSS | PSS | anonymous |\n|---|---|---|---|"
        );
        for p in &idle.procs {
            let _ = writeln!(
                s,
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                p.role,
                mib(p.rss),
                mib(p.pss),
                mib(p.anon)
            );
        }
        s.push('\n');
    }
    if let Some(http) = &f.http {
        s.push_str(&http_report(http));
    }
    s
}

fn http_report(h: &HttpFigures) -> String {
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (o, t) = (&h.ours, &h.theirs);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{HTTP_HEADING}\n\n\
         The C component of the tests (`http_hello.c`, one instance per request), \
         `wrk {} --latency`, {HTTP_ROUNDS} rounds against each server in turn after a \
         warm-up, medians; both servers on 127.0.0.1, `wrk` shares the CPUs with them. \
         Goal: >= 1.0x requests/s. Measured {} with containerd {}, release shim, {cpus} \
         CPUs, load average {} before and {} after.\n\n\
         | server | requests/s | p99 | errors | requests/s of each round |\n|---|---|---|---|---|\n\
         | our shim via containerd (`ctr run --net-host`) | {:.0} | {:.2} ms | {} | {} |\n\
         | `wasmtime serve` (wasmtime-cli {WASMTIME_CLI}) | {:.0} | {:.2} ms | {} | {} |\n\
         | ours / wasmtime serve | {:.2}x | {:.2}x | | |",
        WRK_ARGS.join(" "),
        date.trim(),
        h.containerd,
        h.load.0,
        h.load.1,
        o.rps,
        o.p99_ms,
        o.errors,
        rounds(o),
        t.rps,
        t.p99_ms,
        t.errors,
        rounds(t),
        o.rps / t.rps,
        o.p99_ms / t.p99_ms,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 10s test\n  Latency Distribution\n     50%  1.00ms\n     99%  850.00us\n\
                   Requests/sec:  12345.67\nTransfer/sec: 1MB\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.rps, 12345.67);
        assert!((l.p99_ms - 0.85).abs() < 1e-9);
        assert_eq!(l.errors, 0);
        let bad = format!(
            "{out}  Socket errors: connect 0, read 3, write 0, timeout 2\n  Non-2xx or 3xx responses: 4\n"
        );
        assert_eq!(parse_wrk(&bad).unwrap().errors, 9);
    }

    #[test]
    fn only_the_http_subsection_is_replaced() {
        let doc = "# B\n<!-- shim:start -->\n## Shim\n\ncold\n\n### wasi:http hello\n\nold\n\n\
                   <!-- shim:end -->\n<!-- installer:start -->\n### wasi:http hello\n<!-- installer:end -->\n";
        let new = splice_http_subsection(doc, "### wasi:http hello\n\nnew\n").unwrap();
        assert_eq!(
            new,
            "# B\n<!-- shim:start -->\n## Shim\n\ncold\n\n### wasi:http hello\n\nnew\n\n\
             <!-- shim:end -->\n<!-- installer:start -->\n### wasi:http hello\n<!-- installer:end -->\n"
        );
        assert!(splice_http_subsection("<!-- shim:start -->\n<!-- shim:end -->", "x").is_none());
        let doc =
            "a\n<!-- shim:start -->\nold start\n### wasi:http hello\n\nkept\n<!-- shim:end -->\nb";
        assert_eq!(
            splice_before_http(doc, "new start\n").unwrap(),
            "a\n<!-- shim:start -->\nnew start\n\n### wasi:http hello\n\nkept\n<!-- shim:end -->\nb"
        );
    }

    #[test]
    fn phases_come_from_the_containerd_log() {
        let log = r#"time="2026-12-02T23:59:59.900000000Z" level=info msg="connecting to shim c1" address="unix:///x" namespace=n protocol=ttrpc version=3
time="2026-12-02T23:59:59.950000000Z" level=info msg="starting task c1" runtime=io.containerd.wasmtime.v1
time="2026-12-02T23:59:59.960000000Z" level=info msg="running the guest of c1" runtime=io.containerd.wasmtime.v1
time="2026-12-03T00:00:00.000000000Z" level=info msg="the guest of c1 exited with 0" runtime=io.containerd.wasmtime.v1
time="2026-12-03T00:00:00.020000000Z" level=info msg="shim disconnected" id=c1 namespace=n
"#;
        let p = Phases::of(log, "c1").unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(p.create, 50.0) && close(p.start, 10.0), "{p:?}");
        assert!(close(p.run, 40.0) && close(p.teardown, 20.0), "{p:?}");
        assert!(close(shim_window(log, "c1").unwrap(), 120.0));
        assert!(Phases::of(log, "c2").is_none());
    }

    #[test]
    fn ppid_is_read_past_a_comm_with_spaces() {
        // /proc/self/stat of this test: our parent is whoever started the test binary
        let mine = stat_ppid(std::process::id()).unwrap();
        assert_eq!(mine, std::os::unix::process::parent_id());
    }
}

//! `cargo xtask bench shim`: our Wasm shim against runc and `wasmtime serve`, on one
//! private containerd 2.x from the test bed, release builds only. Writes the `shim`
//! section of docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::containerd::{Containerd, ContainerdOptions, WASMTIME_RUNTIME};
use testbed::oci::RootfsImage;

use crate::cmd;

const RUNS: usize = 20;
const WASMTIME_CLI: &str = "48.0.8";

pub fn shim() -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(testbed::paths::cargo_target);
    cmd::cargo(&["build", "--release", "-p", "containerd-shim-wasmtime"])?;
    let shim = target.join("release/containerd-shim-wasmtime-v1");
    let work = tempfile::tempdir()?;
    let fixtures = work.path().join("fixtures");
    cmd::cargo(&[
        "run",
        "--release",
        "-p",
        "containerd-shim-wasmtime",
        "--example",
        "fixtures",
        "--",
        fixtures.to_str().context("utf-8 path")?,
    ])?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: apt-get install busybox-static (the native baseline)");
    }
    let wrk = which("wrk").context("wrk missing: apt-get install wrk")?;
    let wasmtime = wasmtime_cli()?;

    let cache = work.path().join("cache");
    let ctrd = Containerd::start(
        testbed::versions::CONTAINERD_2,
        &ContainerdOptions {
            shim,
            env: vec![("WASMRUNTIME_CACHE_DIR".into(), cache.display().to_string())],
        },
    )?;
    let read = |n: &str| std::fs::read(fixtures.join(n));
    import(
        &ctrd,
        work.path(),
        &wasm_image("hello", read("hello.wasm")?),
    )?;
    import(
        &ctrd,
        work.path(),
        &wasm_image("sleep", read("sleep.wasm")?),
    )?;
    import(&ctrd, work.path(), &wasm_image("http", read("http.wasm")?))?;
    let native = RootfsImage::new("docker.io/bench/busybox:1")
        .file("/bin/busybox", std::fs::read(busybox)?, 0o755)
        .entrypoint(&["/bin/busybox"]);
    import(&ctrd, work.path(), &native)?;

    // Cold starts: `ctr run --rm` end to end, one warm-up run each, medians of RUNS.
    let runc = time_runs(
        &ctrd,
        "io.containerd.runc.v2",
        "busybox",
        &["/bin/busybox", "echo", "hi"],
        || Ok(()),
    )?;
    let cached = time_runs(&ctrd, WASMTIME_RUNTIME, "hello", &[], || Ok(()))?;
    let uncached = time_runs(&ctrd, WASMTIME_RUNTIME, "hello", &[], || {
        // every run compiles: the file cache is emptied first
        let _ = std::fs::remove_dir_all(&cache);
        Ok(())
    })?;

    let (wasm_mem, runc_mem) = (
        idle_memory(&ctrd, WASMTIME_RUNTIME, "sleep", &[])?,
        idle_memory(
            &ctrd,
            "io.containerd.runc.v2",
            "busybox",
            &["/bin/busybox", "sleep", "600"],
        )?,
    );

    let port = free_port()?;
    let ours = serve_and_load(&wrk, port, || {
        let mut c = ctrd.ctr();
        c.args([
            "run",
            "--rm",
            "--net-host",
            "--runtime",
            WASMTIME_RUNTIME,
            "--env",
        ])
        .arg(format!("WASMRUNTIME_HTTP_PORT={port}"))
        .args([&image("http"), "bench-http"]);
        c
    })?;
    let _ = ctrd
        .ctr()
        .args(["tasks", "kill", "-s", "SIGKILL", "bench-http"])
        .output();
    let port = free_port()?;
    let theirs = serve_and_load(&wrk, port, || {
        let mut c = Command::new(&wasmtime);
        c.args(["serve", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(fixtures.join("http.wasm"));
        c
    })?;

    let section = report(
        &ctrd.version(),
        &runc,
        &cached,
        &uncached,
        wasm_mem,
        runc_mem,
        &ours,
        &theirs,
    );
    println!("{section}");
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

fn time_runs(
    ctrd: &Containerd,
    runtime: &str,
    name: &str,
    args: &[&str],
    before_each: impl Fn() -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..=RUNS {
        before_each()?;
        let id = format!("bench-{name}-{i}");
        let start = Instant::now();
        let out = ctrd
            .ctr()
            .args(["run", "--rm", "--runtime", runtime, &image(name), &id])
            .args(args)
            .output()?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!("{name} via {runtime}: {out:?}");
        }
        if i > 0 {
            times.push(took);
        }
    }
    times.sort();
    Ok(times)
}

/// (RSS, PSS) in KiB summed over the shim and every process below it, for one idle
/// container.
fn idle_memory(ctrd: &Containerd, runtime: &str, name: &str, args: &[&str]) -> Result<(u64, u64)> {
    let id = format!("idle-{name}");
    let out = ctrd
        .ctr()
        .args(["run", "-d", "--runtime", runtime, &image(name), &id])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("{name}: {out:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut pids = ctrd.shim_pids();
    let mut i = 0;
    while i < pids.len() {
        let new: Vec<u32> = children(pids[i])
            .into_iter()
            .filter(|c| !pids.contains(c))
            .collect();
        pids.extend(new);
        i += 1;
    }
    let (mut rss, mut pss) = (0, 0);
    for pid in &pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        rss += field_kib(&text, "Rss:");
        pss += field_kib(&text, "Pss:");
    }
    let _ = ctrd
        .ctr()
        .args(["tasks", "kill", "-s", "SIGKILL", &id])
        .output();
    std::thread::sleep(Duration::from_millis(500));
    let _ = ctrd.ctr().args(["tasks", "delete", "-f", &id]).output();
    let _ = ctrd.ctr().args(["containers", "delete", &id]).output();
    Ok((rss, pss))
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

#[derive(Debug, Default)]
struct Load {
    rps: f64,
    p99_ms: f64,
}

/// Starts a server, waits for its port, runs `wrk` (2 threads, 16 connections, 10 s,
/// after a 2 s warm-up), stops the server.
fn serve_and_load(wrk: &Path, port: u16, server: impl Fn() -> Command) -> Result<Load> {
    let mut child = server()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(60) || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("server on port {port} never listened");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new(wrk)
        .args(["-t2", "-c16", "-d2s", &url])
        .output()?;
    let out = cmd::output(Command::new(wrk).args(["-t2", "-c16", "-d10s", "--latency", &url]))?;
    let _ = child.kill();
    let _ = child.wait();
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
    Some(Load { rps, p99_ms })
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

/// `wasmtime` from wasmtime-cli =48.0.8 in the cache, installed on first use (long build).
fn wasmtime_cli() -> Result<PathBuf> {
    let root = testbed::paths::cache_root().join(format!("tools/wasmtime-{WASMTIME_CLI}"));
    let bin = root.join("bin/wasmtime");
    if !bin.exists() {
        eprintln!("xtask: cargo install wasmtime-cli {WASMTIME_CLI} (takes a while, once)");
        cmd::cargo(&[
            "install",
            "wasmtime-cli",
            "--locked",
            "--version",
            WASMTIME_CLI,
            "--root",
            root.to_str().context("utf-8 path")?,
        ])?;
    }
    Ok(bin)
}

fn median_ms(times: &[Duration]) -> f64 {
    times[times.len() / 2].as_secs_f64() * 1000.0
}

#[allow(clippy::too_many_arguments)]
fn report(
    containerd: &str,
    runc: &[Duration],
    cached: &[Duration],
    uncached: &[Duration],
    wasm_mem: (u64, u64),
    runc_mem: (u64, u64),
    ours: &Load,
    theirs: &Load,
) -> String {
    let (r, c, u) = (median_ms(runc), median_ms(cached), median_ms(uncached));
    let mib = |k: u64| k as f64 / 1024.0;
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    format!(
        "## Shim (`cargo xtask bench shim`, {date})\n\n\
         containerd {containerd}, release shim, {RUNS} runs each after one warm-up, medians.\n\n\
         | `ctr run --rm` cold start | median | vs runc |\n|---|---|---|\n\
         | static busybox `echo hi`, runc | {r:.1} ms | 1.00x |\n\
         | Wasm hello, our shim, cache hit | {c:.1} ms | {:.2}x |\n\
         | Wasm hello, our shim, no cache (compiles) | {u:.1} ms | {:.2}x |\n\n\
         | idle container, shim + all its processes | RSS | PSS |\n|---|---|---|\n\
         | our shim, Wasm guest blocked in a sleep | {:.1} MiB | {:.1} MiB |\n\
         | runc shim + busybox `sleep` | {:.1} MiB | {:.1} MiB |\n\n\
         | wasi:http hello (C component), `wrk -t2 -c16 -d10s` | requests/s | p99 |\n|---|---|---|\n\
         | our shim via containerd (`--net-host`) | {:.0} | {:.2} ms |\n\
         | `wasmtime serve` (wasmtime-cli {WASMTIME_CLI}) | {:.0} | {:.2} ms |\n\
         | ratio ours / wasmtime serve | {:.2}x | {:.2}x |\n",
        c / r,
        u / r,
        mib(wasm_mem.0),
        mib(wasm_mem.1),
        mib(runc_mem.0),
        mib(runc_mem.1),
        ours.rps,
        ours.p99_ms,
        theirs.rps,
        theirs.p99_ms,
        ours.rps / theirs.rps,
        ours.p99_ms / theirs.p99_ms,
        date = date.trim(),
    )
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
    }
}

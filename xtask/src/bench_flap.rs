//! `cargo xtask bench flap`: the operator on the test bed's control plane with many kwok
//! nodes whose selector label flips every few seconds. Samples the operator's RSS and
//! reconcile counter, counts its writes (audit log) and measures how long the WasmRuntime
//! takes to converge once the flapping stops. Reports figures; asserts nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testbed::TestCluster;

use crate::bench_operator::{self as op, kubectl};

/// The bench's inputs, recorded next to its figures.
pub struct Params {
    pub nodes: usize,
    pub minutes: u64,
    pub every_secs: u64,
}

/// The label `spec.nodeSelector` selects on (`flap-pool=wasm`; flapped to `off` and back).
const LABEL: &str = "flap-pool";
const RUNTIME: &str = "flap";
const MAX_UNAVAILABLE: &str = "10%";
/// Share of the nodes flipped per round, in percent.
const FLIP_PERCENT: usize = 5;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Quiet time after convergence, to see whether reconciles stop.
const IDLE: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(600);
/// Watch events one label flip brings the runtime (see [`report`]).
const EVENTS_PER_FLIP: f64 = 5.0;

/// One sample, `at` since the flapping started.
struct Sample {
    at: Duration,
    rss_kib: u64,
    reconciles: u64,
}

/// What one run measured.
pub struct Figures {
    ready_after: Duration,
    seed: u64,
    samples: Vec<Sample>,
    /// Phase boundaries (since the flapping started): flapping end, converged (or gave up),
    /// idle end.
    ends: [Duration; 3],
    /// Reconcile counter at the flapping start and at each phase end.
    reconciles: [u64; 4],
    rounds: usize,
    label_changes: usize,
    /// Longest `kubectl label` round.
    slowest_round: Duration,
    selected_at_end: usize,
    converged: bool,
    /// The last observation while not converged.
    last_seen: String,
    writes: [BTreeMap<String, usize>; 3],
}

pub fn run(params: &Params) -> Result<Figures> {
    let operator = op::release_operator()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(params, &operator))
}

async fn measure(params: &Params, operator: &std::path::Path) -> Result<Figures> {
    // Even nodes start selected, odd ones not; flips keep about half selected.
    let mut selected: Vec<bool> = (0..params.nodes).map(|i| i % 2 == 0).collect();
    let value = |on: bool| if on { "wasm" } else { "off" };
    let nodes = op::nodes_yaml(params.nodes, |i| {
        Some((LABEL.into(), value(selected[i]).into()))
    });
    let cluster = op::start_cluster(&nodes, params.nodes).await?;
    let (mut child, metrics) = op::spawn_operator(&cluster, operator)?;
    let result = flap(params, &cluster, child.id(), &metrics, &mut selected, value).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn flap(
    params: &Params,
    cluster: &TestCluster,
    pid: u32,
    metrics: &str,
    selected: &mut [bool],
    value: impl Fn(bool) -> &'static str,
) -> Result<Figures> {
    let runtime = format!(
        "apiVersion: wasmruntime.dev/v1alpha1\nkind: WasmRuntime\nmetadata:\n  name: {RUNTIME}\n\
         spec:\n  nodeSelector:\n    matchLabels:\n      {LABEL}: wasm\n  rollout:\n    maxUnavailable: \"{MAX_UNAVAILABLE}\"\n"
    );
    let started = Instant::now();
    op::apply(cluster, "runtime.yaml", &runtime)?;
    op::wait_ready(&|args| kubectl(cluster, args), RUNTIME, started).await?;
    let ready_after = started.elapsed();
    eprintln!("bench: Ready after {ready_after:.1?}; flapping");

    let audit = cluster.audit_log();
    let audit_len = || std::fs::metadata(&audit).map_or(0, |m| m.len() as usize);
    let reconciles_now = || op::scrape(metrics, "wasm_operator_reconciles_total").unwrap_or(0);
    let start = Instant::now();
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<Sample>| {
        samples.push(Sample {
            at: start.elapsed(),
            rss_kib: op::proc_status_kib(pid, "VmRSS").unwrap_or(0),
            reconciles: reconciles_now(),
        });
    };
    let mut offsets = vec![audit_len()];
    let mut reconciles = vec![reconciles_now()];
    sample(&mut samples);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut rng = seed;
    let flips = (params.nodes * FLIP_PERCENT).div_ceil(100).max(1);
    let every = Duration::from_secs(params.every_secs.max(1));
    let flap_for = Duration::from_secs(params.minutes * 60);
    let (mut rounds, mut label_changes, mut slowest_round) = (0, 0, Duration::ZERO);
    let mut next_round = Duration::ZERO;
    while start.elapsed() < flap_for {
        if start.elapsed() >= next_round {
            let round = Instant::now();
            let picked = pick(&mut rng, selected.len(), flips);
            for on in [true, false] {
                let names: Vec<String> = picked
                    .iter()
                    .filter(|&&i| selected[i] != on)
                    .map(|i| format!("bench-{i:04}"))
                    .collect();
                if names.is_empty() {
                    continue;
                }
                let label = format!("{LABEL}={}", value(on));
                let mut args = vec!["label", "--overwrite", "nodes"];
                args.extend(names.iter().map(String::as_str));
                args.push(&label);
                kubectl(cluster, &args)?;
            }
            for &i in &picked {
                selected[i] = !selected[i];
            }
            rounds += 1;
            label_changes += picked.len();
            slowest_round = slowest_round.max(round.elapsed());
            next_round += every;
        }
        if samples
            .last()
            .is_none_or(|s| start.elapsed() >= s.at + SAMPLE_EVERY)
        {
            sample(&mut samples);
            let s = samples.last().expect("just sampled");
            eprintln!(
                "bench: {:>4.0}s rss {:.1} MiB, {} reconciles, {label_changes} label changes",
                s.at.as_secs_f64(),
                s.rss_kib as f64 / 1024.0,
                s.reconciles
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ends = vec![start.elapsed()];
    offsets.push(audit_len());
    reconciles.push(reconciles_now());
    sample(&mut samples);
    let expected = selected.iter().filter(|&&s| s).count();
    eprintln!("bench: flapping stopped ({expected} nodes selected); waiting for convergence");

    let stopped = Instant::now();
    let mut last_seen = String::new();
    let converged = loop {
        match converged(cluster, selected) {
            Ok(None) => break true,
            Ok(Some(seen)) => {
                if seen != last_seen {
                    eprintln!("bench: {:>5.1}s {seen}", stopped.elapsed().as_secs_f64());
                    last_seen = seen;
                }
            }
            Err(e) => eprintln!("bench: {e:#}"),
        }
        if stopped.elapsed() > CONVERGE_TIMEOUT {
            break false;
        }
        if start.elapsed() >= samples.last().map_or(Duration::ZERO, |s| s.at) + SAMPLE_EVERY {
            sample(&mut samples);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ends.push(start.elapsed());
    offsets.push(audit_len());
    reconciles.push(reconciles_now());
    sample(&mut samples);
    eprintln!(
        "bench: converged: {converged} after {:.1?}; idle for {IDLE:?}",
        stopped.elapsed()
    );
    let idle_end = start.elapsed() + IDLE;
    while start.elapsed() < idle_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if start.elapsed() >= samples.last().map_or(Duration::ZERO, |s| s.at) + SAMPLE_EVERY {
            sample(&mut samples);
        }
    }
    ends.push(start.elapsed());
    offsets.push(audit_len());
    reconciles.push(reconciles_now());
    sample(&mut samples);

    let writes = [0, 1, 2].map(|p| op::count_writes(&audit, offsets[p]..offsets[p + 1]));
    let [a, b, c] = writes;
    Ok(Figures {
        ready_after,
        seed,
        samples,
        ends: ends.try_into().expect("three phase ends"),
        reconciles: reconciles.try_into().expect("four counter readings"),
        rounds,
        label_changes,
        slowest_round,
        selected_at_end: expected,
        converged,
        last_seen,
        writes: [a?, b?, c?],
    })
}

/// `k` distinct indices below `n` (xorshift64, partial Fisher-Yates).
fn pick(rng: &mut u64, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let j = i + (*rng % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all
}

/// `None` once the status is Ready for its generation with every selected node provisioned,
/// every selected node carries `provisioned` and no other node carries our label; else what
/// was seen.
fn converged(cluster: &TestCluster, selected: &[bool]) -> Result<Option<String>> {
    let expected = selected.iter().filter(|&&s| s).count();
    let wrt: serde_json::Value =
        serde_json::from_str(&kubectl(cluster, &["get", "wrt", RUNTIME, "-o", "json"])?)?;
    let status = &wrt["status"];
    let count = |k: &str| status["nodes"][k].as_u64().unwrap_or(0) as usize;
    let seen = format!(
        "state {} gen {}/{} selected {} provisioned {} pending {} failed {} (expected {expected})",
        status["state"].as_str().unwrap_or("-"),
        status["observedGeneration"],
        wrt["metadata"]["generation"],
        count("selected"),
        count("provisioned"),
        count("pending"),
        count("failed"),
    );
    if status["state"] != "Ready"
        || status["observedGeneration"] != wrt["metadata"]["generation"]
        || count("selected") != expected
        || count("provisioned") != expected
        || count("pending") + count("failed") > 0
    {
        return Ok(Some(seen));
    }
    let nodes: serde_json::Value =
        serde_json::from_str(&kubectl(cluster, &["get", "nodes", "-o", "json"])?)?;
    let key = format!("wasmruntime.dev/{RUNTIME}");
    let mut wrong = BTreeMap::<String, usize>::new();
    for node in nodes["items"].as_array().context("node list")? {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let labels = &node["metadata"]["labels"];
        let Some(i) = name
            .strip_prefix("bench-")
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        let want = if selected[i] { "provisioned" } else { "-" };
        let have = labels[key.as_str()].as_str().unwrap_or("-");
        let pool = labels[LABEL].as_str().unwrap_or("-");
        if have != want || (pool == "wasm") != selected[i] {
            *wrong
                .entry(format!("{pool} node with {key}={have}"))
                .or_default() += 1;
        }
    }
    if wrong.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("{seen}; node labels off: {wrong:?}")))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The Markdown section for docs/reliability.md.
pub fn report(params: &Params, f: &Figures) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let flap_secs = secs(f.ends[0]);
    let phase_secs = [
        flap_secs,
        secs(f.ends[1] - f.ends[0]),
        secs(f.ends[2] - f.ends[1]),
    ];
    let rate = |p: usize| (f.reconciles[p + 1] - f.reconciles[p]) as f64 / phase_secs[p].max(1e-9);
    // Reconciles per second between consecutive samples of the flapping phase.
    let window_max = f
        .samples
        .windows(2)
        .filter(|w| w[1].at <= f.ends[0] && w[1].at > w[0].at)
        .map(|w| (w[1].reconciles - w[0].reconciles) as f64 / secs(w[1].at - w[0].at))
        .fold(0.0, f64::max);
    let changes_per_sec = f.label_changes as f64 / flap_secs;
    let node_writes = |p: usize| {
        f.writes[p]
            .iter()
            .filter(|(k, _)| k.ends_with(" nodes"))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    // What a reconcile reacts to while flapping: our label changes and the operator's own
    // node label writes (pod events come on top).
    let events_per_sec = (f.label_changes + node_writes(0)) as f64 / flap_secs;

    let rss: Vec<u64> = f.samples.iter().map(|s| s.rss_kib).collect();
    let first_minute = median(
        f.samples
            .iter()
            .filter(|s| s.at <= Duration::from_secs(60))
            .map(|s| s.rss_kib)
            .collect(),
    );
    let last = rss.last().copied().unwrap_or(0);
    let max = rss.iter().copied().max().unwrap_or(0);
    let drift = (last as f64 / first_minute.max(1) as f64 - 1.0) * 100.0;
    let flat = drift.abs() <= 20.0;
    let idle_rate = rate(2);
    // A flip brings the runtime at most these watch events: the flip itself, the
    // operator's two label writes (pending, then provisioned or unlabelled), the installer
    // pod's creation and its readiness (or its deletion). More reconciles than that per
    // flip, or any steady rate once idle, would be a loop feeding itself.
    let per_change = (f.reconciles[1] - f.reconciles[0]) as f64 / f.label_changes.max(1) as f64;
    let bounded = per_change <= EVENTS_PER_FLIP && idle_rate <= 0.1;
    let converge_secs = secs(f.ends[1] - f.ends[0]);

    let mut out = format!(
        "### Operator under flapping node labels\n\n\
         Command: `cargo xtask bench flap --nodes {n} --minutes {m} --every-secs {e}` (real \
         kube-apiserver, controller-manager, scheduler {k8s} and kwok from the test bed, \
         installer pods made Ready by kwok stages as in `bench operator`; release build of \
         wasm-operator). A WasmRuntime selects `{LABEL}=wasm` (half of the {n} nodes at the \
         start, `maxUnavailable: {MAX_UNAVAILABLE}`); once it is Ready, every {e} s (or right after the previous \
         round, when one takes longer) for {m} min the label of {FLIP_PERCENT}% of the nodes, picked at random (seed {seed}), flips \
         between `wasm` and `off` ({rounds} rounds, {changes} label changes, slowest round \
         {slowest:.1} s). Samples every {sample} s; \"converged\": status Ready for its \
         generation, every selected node `provisioned` and counted, no other node labelled.\n\n\
         | figure | value |\n|---|---|\n\
         | apply -> Ready before flapping | {ready:.1} s |\n\
         | operator RSS (VmRSS): first / median of first minute / median / last / max | {} / {} / {} / {} / {} |\n\
         | label changes per second (flapping) | {changes_per_sec:.2} |\n\
         | node label events per second (ours + the operator's node writes) | {events_per_sec:.2} |\n\
         | reconciles per second, flapping: mean / max over {sample} s | {:.2} / {window_max:.2} |\n\
         | reconciles per second, converging / idle after convergence | {:.2} / {idle_rate:.2} |\n\
         | flapping stopped -> converged | {} |\n\
         | selected nodes at the end | {} |\n\n",
        mib(rss.first().copied().unwrap_or(0)),
        mib(first_minute),
        mib(median(rss.clone())),
        mib(last),
        mib(max),
        rate(0),
        rate(1),
        if f.converged {
            format!("{converge_secs:.1} s")
        } else {
            format!(
                "not within {} s: {}",
                CONVERGE_TIMEOUT.as_secs(),
                f.last_seen
            )
        },
        f.selected_at_end,
        n = params.nodes,
        m = params.minutes,
        e = params.every_secs,
        k8s = testbed::versions::KUBERNETES,
        seed = f.seed,
        rounds = f.rounds,
        changes = f.label_changes,
        slowest = secs(f.slowest_round),
        sample = SAMPLE_EVERY.as_secs(),
        ready = secs(f.ready_after),
    );
    let _ = writeln!(
        out,
        "- Memory: {} (last sample {drift:+.1}% against the median of the first minute; flat \
         means within +-20%).",
        if flat { "flat" } else { "NOT flat" }
    );
    let _ = writeln!(
        out,
        "- Hot loop: {} ({per_change:.2} reconciles per label change while flapping, max \
         {window_max:.2}/s over {} s; {idle_rate:.2}/s once converged and idle. Bounded means \
         at most {EVENTS_PER_FLIP} per change, the watch events one flip brings: the flip, the \
         operator's two label writes, the installer pod's creation and readiness or deletion; \
         and at most 0.1/s when idle).",
        if bounded { "none" } else { "SUSPECTED" },
        SAMPLE_EVERY.as_secs()
    );
    let _ = writeln!(
        out,
        "- Status: {}.",
        if f.converged {
            format!("converged {converge_secs:.1} s after the flapping stopped")
        } else {
            "did NOT converge".to_string()
        }
    );
    out.push_str(
        "\nOperator write requests (audit log), by phase:\n\n| request | flapping | \
         converging | idle |\n|---|---|---|---|\n",
    );
    let requests: std::collections::BTreeSet<&String> =
        f.writes.iter().flat_map(BTreeMap::keys).collect();
    for request in requests {
        let n = |p: usize| f.writes[p].get(request).copied().unwrap_or(0);
        let _ = writeln!(out, "| {request} | {} | {} | {} |", n(0), n(1), n(2));
    }
    let total = |p: usize| f.writes[p].values().sum::<usize>();
    let _ = writeln!(
        out,
        "| all, per second | {:.2} | {:.2} | {:.2} |",
        total(0) as f64 / phase_secs[0],
        total(1) as f64 / phase_secs[1].max(1e-9),
        total(2) as f64 / phase_secs[2].max(1e-9),
    );
    out
}

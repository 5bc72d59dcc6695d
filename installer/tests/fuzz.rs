//! Hostile input for the config editor: real configs (containerd's defaults and every input
//! fixture) mutated at random, through `add_runtime` and `remove_runtime`. Whatever the
//! bytes, the editor
//! - never panics;
//! - on success emits TOML that parses, keeps every key outside our runtime table with its
//!   value, and is a fixed point (installing again changes nothing);
//! - removes exactly our table again (every other key as before);
//! - otherwise says why (a non-empty error), writing nothing.
//!
//! `FUZZ_CASES` sets how many inputs (default 3,000: the CI seed run);
//! `cargo xtask bench fuzz` runs 1,000,000 in a release build. A failure prints the seed
//! and the input. The mutator is a few lines over a xorshift generator: deterministic from
//! the seed, no corpus files to keep.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use toml_edit::DocumentMut;
use wasm_installer::{Edit, Removal, SystemdCgroupMode, add_runtime, remove_runtime};

const VERSIONS: [&str; 3] = ["1.6.20", "1.7.24", "2.1.9"];

/// Fragments a hostile or careless hand might add: our own table with wrong types, other
/// schema versions, arrays of tables, odd quoting, CRLF, unicode, half-written lines.
const SNIPPETS: &[&str] = &[
    "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n",
    "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime]\n",
    "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\n",
    "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]\n",
    "runtime_type = 1\n",
    "runtime_type = \"io.containerd.wasmtime.v1\"\n",
    "runtime_path = \"/opt/other/shim\"\n",
    "SystemdCgroup = \"yes\"\n",
    "SystemdCgroup = true\n",
    "version = 3\n",
    "version = 2\n",
    "version = \"two\"\n",
    "runtimes = \"not a table\"\n",
    "containerd = 5\n",
    "[[plugins.x_array]]\nk = 1\n",
    "a = [1, { b = 2 }, \"c\"]\n",
    "x.y.z = { w = [] }\n",
    "\"quoted key\" = '''multi\nline'''\n",
    "# wasmruntime.dev: managed by wasm-installer\n",
    "é = \"ünïcode\"\n",
    "[plugins]\n",
    "[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"pause\"\n",
    "\r\n",
    "=\n",
    "[",
    "key = \"unterminated\n",
    "[table]\n[table]\n",
    "wasmtime = { runtime_type = \"x\" }\n",
];

/// xorshift64*: small, fast, deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `text`, at line or byte level.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(lines.len() + 1);
        match rng.below(7) {
            0 | 1 => lines.insert(at, SNIPPETS[rng.below(SNIPPETS.len())].to_owned()),
            2 if !lines.is_empty() => {
                lines.remove(at.min(lines.len() - 1));
            }
            3 if !lines.is_empty() => {
                let l = lines[at.min(lines.len() - 1)].clone();
                lines.insert(at, l);
            }
            4 if lines.len() > 1 => {
                let (a, b) = (at.min(lines.len() - 1), rng.below(lines.len()));
                lines.swap(a, b);
            }
            5 if !lines.is_empty() => {
                // a byte in a line replaced by a structural character
                let i = at.min(lines.len() - 1);
                let mut bytes = lines[i].clone().into_bytes();
                if !bytes.is_empty() {
                    let pos = rng.below(bytes.len());
                    const STRUCTURAL: &[u8] = b"[]=\"'#.{},\n \\x";
                    bytes[pos] = STRUCTURAL[rng.below(STRUCTURAL.len())];
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {
                // truncation mid-file, as a disk-full write would leave it
                let keep = rng.below(lines.len() + 1);
                lines.truncate(keep);
            }
        }
    }
    lines.concat()
}

/// Every leaf key path and its value, except under our runtime table.
fn leaves(doc: &DocumentMut) -> Vec<(String, String)> {
    leaves_outside(doc, "wasmtime")
}

#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    installed: u64,
    unchanged: u64,
    refused: u64,
    removed: u64,
}

/// Checks one input; `Err` names the broken invariant.
fn check(
    input: &str,
    version: &str,
    mode: SystemdCgroupMode,
    tally: &mut Tally,
) -> Result<(), String> {
    let v = v(version);
    let rt = spec("wasmtime", mode);
    let added = catch_unwind(AssertUnwindSafe(|| add_runtime(input, &rt, &v)))
        .map_err(|_| "add_runtime panicked".to_string())?;
    // An empty file means "no config": the editor starts from containerd's defaults, so
    // there is nothing of the input's to keep.
    let parsed_input = input
        .parse::<DocumentMut>()
        .ok()
        .filter(|_| !input.trim().is_empty());
    match added {
        Ok(Edit::Changed(out)) => {
            tally.installed += 1;
            let after: DocumentMut = out
                .parse()
                .map_err(|e| format!("emitted invalid TOML: {e}\n--- output\n{out}"))?;
            if let Some(before) = &parsed_input {
                let (b, a) = (leaves(before), leaves(&after));
                if let Some(lost) = b.iter().find(|kv| !a.contains(kv)) {
                    return Err(format!("dropped or changed {lost:?}\n--- output\n{out}"));
                }
            }
            match add_runtime(&out, &rt, &v) {
                Ok(Edit::Unchanged) => {}
                other => return Err(format!("second install not a no-op: {other:?}")),
            }
            let removed = catch_unwind(AssertUnwindSafe(|| remove_runtime(&out, None, &rt, &v)))
                .map_err(|_| "remove_runtime panicked".to_string())?;
            match removed {
                Ok(Removal::Changed(back)) => {
                    tally.removed += 1;
                    let back_doc: DocumentMut = back
                        .parse()
                        .map_err(|e| format!("removal emitted invalid TOML: {e}"))?;
                    if let Some(before) = &parsed_input
                        && leaves(before) != leaves(&back_doc)
                    {
                        return Err(format!(
                            "removal changed other keys\n--- after removal\n{back}"
                        ));
                    }
                }
                other => return Err(format!("removing our fresh entry: {other:?}")),
            }
        }
        Ok(Edit::Unchanged) => {
            tally.unchanged += 1;
            if parsed_input.is_none() {
                return Err("invalid TOML accepted as already installed".into());
            }
        }
        Err(e) => {
            tally.refused += 1;
            if e.to_string().trim().is_empty() {
                return Err("refused without a reason".into());
            }
        }
    }
    // uninstalling from hostile input: no panic, valid output
    let removed = catch_unwind(AssertUnwindSafe(|| remove_runtime(input, None, &rt, &v)))
        .map_err(|_| "remove_runtime panicked on the input".to_string())?;
    if let Ok(Removal::Changed(back)) = removed {
        back.parse::<DocumentMut>()
            .map_err(|e| format!("removal from the input emitted invalid TOML: {e}"))?;
    }
    tally.cases += 1;
    Ok(())
}

fn seeds() -> Vec<String> {
    let mut seeds: Vec<String> = VERSIONS
        .iter()
        .map(|v| fixture(&format!("defaults/containerd-{v}.toml")))
        .collect();
    let mut inputs: Vec<_> = std::fs::read_dir(fixtures_dir().join("input"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    inputs.sort();
    seeds.extend(inputs.iter().map(|p| std::fs::read_to_string(p).unwrap()));
    // configs our install already went through: re-install, repair and uninstall paths
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let installed: Vec<String> = seeds
        .iter()
        .flat_map(|text| VERSIONS.iter().map(move |ver| (text, ver)))
        .filter_map(|(text, ver)| match add_runtime(text, &rt, &v(ver)) {
            Ok(Edit::Changed(out)) => Some(out),
            _ => None,
        })
        .collect();
    seeds.extend(installed);
    seeds
}

#[test]
fn mutated_configs_never_break_the_editor() {
    let cases: u64 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let corpus = seeds();
    let modes = [
        SystemdCgroupMode::Auto,
        SystemdCgroupMode::Enabled,
        SystemdCgroupMode::Disabled,
    ];
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let started = std::time::Instant::now();
    // quiet the default hook: the panics we look for are caught and reported below
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..cases {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(base, &mut rng);
        let version = VERSIONS[rng.below(VERSIONS.len())];
        let mode = modes[rng.below(modes.len())];
        if let Err(broken) = check(&input, version, mode, &mut tally) {
            let _ = std::panic::take_hook();
            panic!(
                "case {i} (FUZZ_SEED={seed}), containerd {version}, {mode:?}: {broken}\n--- input\n{input}"
            );
        }
    }
    let _ = std::panic::take_hook();
    let took = started.elapsed();
    // the line `cargo xtask bench fuzz` reads
    println!(
        "fuzz: {} inputs, {} installed, {} already installed, {} refused with a reason, {} removed again, 0 broken, {:.1} s, seed {seed}",
        tally.cases,
        tally.installed,
        tally.unchanged,
        tally.refused,
        tally.removed,
        took.as_secs_f64()
    );
    assert_eq!(tally.cases, cases);
    assert!(
        tally.installed > 0 && tally.refused > 0,
        "{tally:?}: the mutator must reach both outcomes"
    );
    testbed::reliability::record(
        "input",
        &format!(
            "{cases} mutated containerd configs through install and uninstall (the CI-sized run of `cargo xtask bench fuzz`)"
        ),
        "no panic; output parses; every key outside our table kept; a second install changes nothing; uninstall restores every other key; refusals name a reason",
        &format!(
            "{} installed, {} already installed, {} refused with a reason, {} removed again, 0 broken, seed {seed}",
            tally.installed, tally.unchanged, tally.refused, tally.removed
        ),
    );
}

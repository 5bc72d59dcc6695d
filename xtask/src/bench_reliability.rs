//! Reliability benches: tests of the reliability suite run at full size, their figures
//! written into docs/reliability.md (each its own section).
//! - `cargo xtask bench fuzz`: the config editor's fuzz test (installer/tests/fuzz.rs) with
//!   a million generated inputs, release build;
//! - `cargo xtask bench load`: the shim's load test (shim/tests/containerd/load.rs) with 200
//!   containers at once and 1,000 start/stop cycles, release shim.

use anyhow::{Context, Result, ensure};

use crate::cmd;

/// The line a test printed that starts with `prefix`, without the prefix.
fn summary_line(out: &str, prefix: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_owned)
        .with_context(|| format!("the test printed no {prefix:?} line"))
}

pub fn fuzz(cases: u64) -> Result<()> {
    let mut c = cmd::cargo_command(&[
        "test",
        "--release",
        "--locked",
        "-p",
        "wasm-installer",
        "--test",
        "fuzz",
        "--",
        "--nocapture",
    ]);
    c.env("FUZZ_CASES", cases.to_string());
    let line = summary_line(&cmd::output(&mut c)?, "fuzz: ")?;
    ensure!(line.contains(" 0 broken"), "{line}");
    let section = fuzz_report(cases, &line);
    println!("{section}");
    cmd::update_doc_section("docs/reliability.md", "fuzz", &section)
}

pub fn load(running: usize, cycles: usize) -> Result<()> {
    crate::testbed::install_all()?;
    let shim = cmd::release_shim()?;
    let mut c = cmd::cargo_command(&[
        "test",
        "--locked",
        "-p",
        "containerd-shim-wasmtime",
        "--test",
        "containerd",
        "--",
        "--nocapture",
        "load_containerd_2",
    ]);
    c.env("SHIM_BINARY", &shim)
        .env("LOAD_RUNNING", running.to_string())
        .env("LOAD_CYCLES", cycles.to_string());
    let line = summary_line(&cmd::output(&mut c)?, "load: ")?;
    let section = format!(
        "### Load through the shim\n\n\
         Command: `cargo xtask bench load --running {running} --cycles {cycles}` (the test \
         `containerd-shim-wasmtime::containerd load_containerd_2::many_running_and_many_cycles_leak_nothing` \
         with the release shim on containerd 2.x from the test bed; CI runs it with 200 and \
         200).\n\n\
         | load | expected | observed | test |\n|---|---|---|---|\n\
         | {running} Wasm containers at once (`ctr run -d`, one shim each), killed and removed; \
         then {cycles} `ctr run --rm` cycles | all run; afterwards no shim process, mount, \
         cgroup or youki state left, one cache file per module | {line} | \
         `load_containerd_2::many_running_and_many_cycles_leak_nothing` |"
    );
    println!("{section}");
    cmd::update_doc_section("docs/reliability.md", "load", &section)
}

fn fuzz_report(cases: u64, summary: &str) -> String {
    format!(
        "### Config editor under generated input\n\n\
         Command: `cargo xtask bench fuzz --cases {cases}` (the test \
         `wasm-installer::fuzz mutated_configs_never_break_the_editor`, release build; CI \
         runs the same test with 3,000 inputs). Inputs: containerd's default configs \
         (1.6.20, 1.7.24, 2.1.9), every input fixture and each of them after our install, \
         mutated 1 to 4 times (inserted fragments such as our table with wrong types, other \
         schema versions, arrays of tables, CRLF, unicode, half-written lines; deleted, \
         duplicated and swapped lines; structural bytes; truncation), for a random \
         containerd version and cgroup mode.\n\n\
         | input | expected | observed | test |\n|---|---|---|---|\n\
         | {cases} mutated configs through install and uninstall | no panic; output parses; \
         every key outside our table kept; a second install changes nothing; uninstall \
         restores every other key; refusals name a reason | {summary} | \
         `wasm-installer::fuzz mutated_configs_never_break_the_editor` |"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_is_the_prefixed_line() {
        let out = "running 1 test\nload: 3 running\ntest ok\n";
        assert_eq!(super::summary_line(out, "load: ").unwrap(), "3 running");
        assert!(super::summary_line(out, "fuzz: ").is_err());
    }

    #[test]
    fn report_is_a_table_row_with_the_figures() {
        let r = super::fuzz_report(7, "7 inputs, 3 installed, 0 broken, 0.1 s");
        assert!(r.contains("| 7 mutated configs"), "{r}");
        assert!(
            r.contains("| 7 inputs, 3 installed, 0 broken, 0.1 s |"),
            "{r}"
        );
    }
}

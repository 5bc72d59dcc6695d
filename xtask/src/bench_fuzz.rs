//! `cargo xtask bench fuzz`: the config editor's fuzz test (installer/tests/fuzz.rs) with a
//! million generated inputs in a release build; its figures go into docs/reliability.md.

use anyhow::{Context, Result, ensure};

use crate::cmd;

pub fn run(cases: u64) -> Result<()> {
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
    let out = cmd::output(&mut c)?;
    let line = out
        .lines()
        .find(|l| l.starts_with("fuzz: "))
        .context("the fuzz test printed no summary")?;
    ensure!(line.contains(" 0 broken"), "{line}");
    let section = report(cases, line.trim_start_matches("fuzz: "));
    println!("{section}");
    cmd::update_doc_section("docs/reliability.md", "fuzz", &section)
}

fn report(cases: u64, summary: &str) -> String {
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
    fn report_is_a_table_row_with_the_figures() {
        let r = super::report(7, "7 inputs, 3 installed, 0 broken, 0.1 s");
        assert!(r.contains("| 7 mutated configs"), "{r}");
        assert!(
            r.contains("| 7 inputs, 3 installed, 0 broken, 0.1 s |"),
            "{r}"
        );
    }
}

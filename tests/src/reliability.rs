//! Rows of `docs/reliability.md`, recorded by the tests that prove them.
//!
//! A fault, hostile-input or least-privilege test calls [`record`] once its assertions have
//! passed, with what it did, what it expected and what it saw. `cargo xtask test` points
//! [`DIR_ENV`] at an empty directory, and after a passing run writes every row into the
//! `faults` section of docs/reliability.md. Outside that (plain `cargo nextest run`),
//! nothing is written.

use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Directory the rows go to, one JSON line per row.
pub const DIR_ENV: &str = "WASMRUNTIME_RELIABILITY_DIR";

/// One table row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Table the row belongs to: "installer", "operator", "shim", "input", "privilege".
    pub area: String,
    pub fault: String,
    pub expected: String,
    pub observed: String,
    /// `<binary id> <test name>` as nextest names it.
    pub test: String,
}

/// The running test's name: nextest's binary id and test name when run by nextest, else
/// the test thread's name (what `cargo test` calls it).
pub fn test_name() -> String {
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    match (
        std::env::var("NEXTEST_BINARY_ID"),
        std::env::var("NEXTEST_TEST_NAME"),
    ) {
        (Ok(binary), Ok(test)) => format!("{binary} {test}"),
        (Ok(binary), Err(_)) => format!("{binary} {thread}"),
        _ => thread,
    }
}

/// Records a row when [`DIR_ENV`] is set; a no-op otherwise. Call it after the test's
/// assertions, so only what passed is reported.
pub fn record(area: &str, fault: &str, expected: &str, observed: &str) {
    if let Some(dir) = std::env::var_os(DIR_ENV).map(PathBuf::from) {
        record_in(&dir, area, fault, expected, observed);
    }
}

/// [`record`] into a given directory.
pub fn record_in(dir: &std::path::Path, area: &str, fault: &str, expected: &str, observed: &str) {
    let row = Row {
        area: area.into(),
        fault: fault.into(),
        expected: expected.into(),
        observed: observed.into(),
        test: test_name(),
    };
    record_row(dir, &row);
}

/// Appends `row` (with its own test name: the end-to-end suite is no test process).
pub fn record_row(dir: &std::path::Path, row: &Row) {
    let line = serde_json::to_string(row).expect("plain strings serialize");
    // One file per test process: no two writers share a file.
    let file = dir.join(format!("{}.jsonl", std::process::id()));
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
        writeln!(f, "{line}")
    });
    if let Err(e) = written {
        panic!("recording a reliability row in {}: {e}", file.display());
    }
}

/// Every row under `dir`, sorted by area, test and fault (files are per process, so their
/// order means nothing).
pub fn collect(dir: &std::path::Path) -> std::io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| (&a.area, &a.test, &a.fault).cmp(&(&b.area, &b.test, &b.fault)));
    Ok(rows)
}

/// The `faults` section body: one table per area, in a fixed order.
pub fn render(rows: &[Row]) -> String {
    const AREAS: [(&str, &str); 5] = [
        ("installer", "Installer and containerd faults"),
        ("operator", "Operator and API server faults"),
        ("shim", "Shim and guest"),
        ("input", "Hostile input"),
        ("privilege", "Least privilege"),
    ];
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::new();
    for (area, title) in AREAS {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.area == area).collect();
        if mine.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "### {title}\n\n| fault or input | expected | observed | test |\n|---|---|---|---|\n"
        ));
        for r in mine {
            out.push_str(&format!(
                "| {} | {} | {} | `{}` |\n",
                cell(&r.fault),
                cell(&r.expected),
                cell(&r.observed),
                cell(&r.test)
            ));
        }
        out.push('\n');
    }
    let unknown: Vec<&str> = rows
        .iter()
        .filter(|r| !AREAS.iter().any(|(a, _)| *a == r.area))
        .map(|r| r.area.as_str())
        .collect();
    assert!(
        unknown.is_empty(),
        "rows with unknown areas: {unknown:?} (add them to AREAS)"
    );
    out.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(area: &str, test: &str, fault: &str) -> Row {
        Row {
            area: area.into(),
            fault: fault.into(),
            expected: "e".into(),
            observed: "a | b".into(),
            test: test.into(),
        }
    }

    #[test]
    fn renders_one_table_per_area_in_fixed_order_and_escapes_pipes() {
        let text = render(&[row("operator", "t2", "f2"), row("installer", "t1", "f1")]);
        let installer = text.find("### Installer").unwrap();
        let operator = text.find("### Operator").unwrap();
        assert!(installer < operator, "{text}");
        assert!(text.contains("| f1 | e | a \\| b | `t1` |"), "{text}");
    }

    #[test]
    fn records_and_collects_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        record_in(dir.path(), "shim", "fault", "expected", "observed");
        let rows = collect(dir.path()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].observed, "observed");
        assert!(
            rows[0].test.contains("records_and_collects"),
            "{:?}",
            rows[0]
        );
    }
}

//! Property tests over generated configs: the real defaults of each containerd with
//! random extra tables, keys and comments.

mod common;

use common::*;
use proptest::prelude::*;
use toml_edit::DocumentMut;
use wasm_installer::{Backup, Edit, Removal, SystemdCgroupMode, add_runtime, remove_runtime};

const BASES: [(&str, &str); 3] = [
    ("defaults/containerd-1.6.20.toml", "1.6.20"),
    ("defaults/containerd-1.7.24.toml", "1.7.24"),
    ("defaults/containerd-2.1.9.toml", "2.1.9"),
];

/// One random addition: a comment line, or a table with a few keys (some under the
/// CRI runtimes, i.e. other handlers next to ours).
#[derive(Debug, Clone)]
enum Extra {
    Comment(String),
    Table {
        path: Vec<String>,
        keys: Vec<(String, i64)>,
    },
    Runtime {
        name: String,
        cgroup: bool,
    },
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}"
}

fn extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        "[ -~]{0,30}".prop_map(Extra::Comment),
        (
            prop::collection::vec(ident(), 1..3),
            prop::collection::vec((ident(), any::<i64>()), 0..3)
        )
            .prop_map(|(path, keys)| Extra::Table { path, keys }),
        ("[a-z][a-z0-9-]{0,8}", any::<bool>())
            .prop_map(|(name, cgroup)| Extra::Runtime { name, cgroup }),
    ]
}

fn build(base: &str, version: &str, extras: &[Extra]) -> String {
    let plugin = if version.starts_with('1') {
        "\"io.containerd.grpc.v1.cri\""
    } else {
        "'io.containerd.cri.v1.runtime'"
    };
    let mut text = base.to_owned();
    for (i, e) in extras.iter().enumerate() {
        match e {
            Extra::Comment(c) => text.push_str(&format!("# {c}\n")),
            Extra::Table { path, keys } => {
                text.push_str(&format!("\n[x_extra{i}.{}]\n", path.join(".")));
                for (j, (k, val)) in keys.iter().enumerate() {
                    text.push_str(&format!("  {k}_{j} = {val} # note\n"));
                }
            }
            Extra::Runtime { name, cgroup } if name != "wasmtime" && name != "runc" => {
                text.push_str(&format!(
                    "\n[plugins.{plugin}.containerd.runtimes.extra{i}-{name}]\n  runtime_type = 'io.containerd.runc.v2'\n  [plugins.{plugin}.containerd.runtimes.extra{i}-{name}.options]\n    SystemdCgroup = {cgroup}\n"
                ));
            }
            Extra::Runtime { .. } => {}
        }
    }
    text
}

/// Every leaf key path and its value, except under our runtime table.
fn leaves(doc: &DocumentMut) -> Vec<(String, String)> {
    leaves_outside(doc, "wasmtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn install_is_safe_idempotent_and_reversible(
        base in 0usize..3,
        extras in prop::collection::vec(extra(), 0..6),
        mode in prop_oneof![Just(SystemdCgroupMode::Auto), Just(SystemdCgroupMode::Enabled), Just(SystemdCgroupMode::Disabled)],
    ) {
        let (file, version) = BASES[base];
        let original = build(&fixture(file), version, &extras);
        let v = v(version);
        let rt = spec("wasmtime", mode);
        // 1.6 cannot pass SystemdCgroup = true to the shim: refused, whatever the file.
        if version.starts_with("1.6") && mode == SystemdCgroupMode::Enabled {
            let refused = matches!(
                add_runtime(&original, &rt, &v),
                Err(wasm_installer::Error::SystemdCgroupUnsupported { .. })
            );
            prop_assert!(refused, "1.6 with SystemdCgroup = true must be refused");
            return Ok(());
        }

        let Edit::Changed(once) = add_runtime(&original, &rt, &v).unwrap() else {
            panic!("first install must change the file");
        };
        // Output parses, and everything outside our table is preserved.
        let before: DocumentMut = original.parse().unwrap();
        let after: DocumentMut = once.parse().expect("output parses");
        prop_assert_eq!(leaves(&before), leaves(&after));
        // Install twice == install once.
        prop_assert_eq!(add_runtime(&once, &rt, &v).unwrap(), Edit::Unchanged);
        // Install then remove == original, with and without the backup.
        prop_assert_eq!(
            remove_runtime(&once, Some(Backup::Original(&original)), &rt, &v).unwrap(),
            Removal::RestoreOriginal(original.clone())
        );
        prop_assert_eq!(remove_runtime(&once, None, &rt, &v).unwrap(), Removal::Changed(original.clone()));
    }
}

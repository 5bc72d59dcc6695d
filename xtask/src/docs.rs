//! `cargo xtask docs`: generated documentation.
//!
//! - `charts/wasm-runtime-operator/README.md`: every chart value, from the `# --` comments in
//!   its values.yaml (a key without one is an error, unless every key below it has one);
//! - `docs/reference.md`: every WasmRuntime field, from the CRD's OpenAPI schema in crds/.
//!
//! The tests below fail when a committed file differs from what these functions generate.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd;

const VALUES: &str = "charts/wasm-runtime-operator/values.yaml";
const CHART_README: &str = "charts/wasm-runtime-operator/README.md";
const CRD: &str = "crds/wasmruntime.dev_wasmruntimes.yaml";
const REFERENCE: &str = "docs/reference.md";

/// Regenerate both files.
pub fn write() -> Result<()> {
    let root = cmd::workspace_root();
    let readme = chart_readme(&read(root, VALUES)?)?;
    write_file(root, CHART_README, &readme)?;
    let reference = reference(&read(root, CRD)?)?;
    write_file(root, REFERENCE, &reference)
}

fn read(root: &Path, file: &str) -> Result<String> {
    std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))
}

fn write_file(root: &Path, file: &str, text: &str) -> Result<()> {
    std::fs::write(root.join(file), text).with_context(|| format!("writing {file}"))?;
    eprintln!("xtask: wrote {file}");
    Ok(())
}

/// One key of values.yaml as the comment scanner sees it.
struct ValueDoc {
    path: Vec<String>,
    description: Option<String>,
}

/// Scan values.yaml for keys and their `# --` descriptions. A description covers the whole
/// subtree of its key; comment lines right after `# --` continue it; a blank line ends it.
fn scan_values(text: &str) -> Vec<ValueDoc> {
    let mut docs = Vec::new();
    // (indent, key, documented)
    let mut stack: Vec<(usize, String, bool)> = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            pending = None;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(start) = comment.strip_prefix("--") {
                pending = Some(start.trim().to_string());
            } else if let Some(text) = pending.as_mut() {
                text.push(' ');
                text.push_str(comment);
            }
            continue;
        }
        if trimmed.starts_with('-') {
            // A list item: part of its key's documented value.
            pending = None;
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
            stack.pop();
        }
        let inside_documented = stack.iter().any(|(_, _, documented)| *documented);
        let description = pending.take();
        let mut path: Vec<String> = stack.iter().map(|(_, k, _)| k.clone()).collect();
        path.push(key.trim().trim_matches('"').to_string());
        if !inside_documented {
            docs.push(ValueDoc {
                path,
                description: description.clone(),
            });
        }
        stack.push((indent, key.trim().to_string(), description.is_some()));
    }
    docs
}

fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, k| v.get(k))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The chart README: an introduction and one table row per documented value.
pub fn chart_readme(values_yaml: &str) -> Result<String> {
    let values: Value = serde_yaml::from_str(values_yaml).context("parsing values.yaml")?;
    let mut rows = String::new();
    for doc in scan_values(values_yaml) {
        let key = doc.path.join(".");
        let value = lookup(&values, &doc.path)
            .with_context(|| format!("values.yaml: {key} not found in the parsed values"))?;
        let Some(description) = doc.description else {
            if value.as_object().is_some_and(|m| !m.is_empty()) {
                continue; // its children carry the descriptions
            }
            bail!("values.yaml: {key} has no `# --` description");
        };
        writeln!(
            rows,
            "| `{key}` | {} | `{}` | {} |",
            type_name(value),
            cell(&serde_json::to_string(value)?),
            cell(&description)
        )?;
    }
    Ok(format!(
        "<!-- Generated by `cargo xtask docs` from values.yaml. Do not edit by hand. -->
# wasm-runtime-operator Helm chart

Installs `wasm-operator`, which turns each `WasmRuntime` (`wasmruntime.dev/v1alpha1`) into a
verified, node-by-node install of the bundled Wasmtime containerd shim and a RuntimeClass
that schedules only onto the nodes where the install was proven to work.

```sh
helm install wasm-runtime-operator charts/wasm-runtime-operator \\
  --namespace wasm-system --create-namespace
kubectl label namespace wasm-system pod-security.kubernetes.io/enforce=restricted
```

- The operator runs in the release namespace and meets the `restricted` Pod Security level.
- The installer DaemonSets run in `installer.namespace.name` (`wasm-installers`), the only
  namespace that must allow privileged pods; the chart creates it labelled
  `pod-security.kubernetes.io/enforce: privileged`.
- The CRD is in `crds/`: Helm installs it but never upgrades or deletes it
  (see docs/upgrade.md and docs/uninstall.md).
- `values.schema.json` rejects unknown keys and bad values at install time.
- `kubectl apply -k config/default` installs the same objects without Helm.

Getting started: docs/getting-started.md. Every WasmRuntime field: docs/reference.md.

## Values

| Key | Type | Default | Description |
|---|---|---|---|
{rows}"
    ))
}

/// One field of the CRD schema.
struct Field {
    path: String,
    kind: String,
    required: bool,
    default: Option<String>,
    rules: Vec<String>,
    description: String,
}

fn schema_type(schema: &Value) -> String {
    if schema["x-kubernetes-int-or-string"] == true {
        return "int or string".into();
    }
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", schema_type(&schema["items"])),
        Some(t) => t.to_string(),
        None => "any".into(),
    }
}

fn schema_rules(schema: &Value) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<_> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        rules.push(format!("one of {}", values.join(", ")));
    }
    for (key, text) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(n) = schema[key].as_f64() {
            rules.push(format!("{text} {n}"));
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        rules.push(format!("pattern `{pattern}`"));
    }
    if schema["x-kubernetes-list-type"] == "map" {
        let keys: Vec<_> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(plain)
            .collect();
        rules.push(format!("list map keyed by {}", keys.join(", ")));
    }
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        rules.push(format!("rule: {}", plain(&rule["message"])));
    }
    rules
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn walk(schema: &Value, path: &str, required: bool, out: &mut Vec<Field>) {
    out.push(Field {
        path: path.to_string(),
        kind: schema_type(schema),
        required,
        default: schema.get("default").map(|d| d.to_string()),
        rules: schema_rules(schema),
        description: schema["description"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    });
    let (object, suffix) = if schema["type"] == "array" {
        (&schema["items"], "[]")
    } else {
        (schema, "")
    };
    let needed: Vec<&str> = object["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(properties) = object["properties"].as_object() {
        for (name, child) in properties {
            walk(
                child,
                &format!("{path}{suffix}.{name}"),
                needed.contains(&name.as_str()),
                out,
            );
        }
    }
}

/// docs/reference.md: the CRD's identity, its object-level rules, and one row per field of
/// `spec` and `status`.
pub fn reference(crd_yaml: &str) -> Result<String> {
    let crd: Value = serde_yaml::from_str(crd_yaml).context("parsing the CRD")?;
    let spec = &crd["spec"];
    let mut out = String::from(
        "<!-- Generated by `cargo xtask docs` from crds/wasmruntime.dev_wasmruntimes.yaml. Do not edit by hand. -->\n# WasmRuntime reference\n\n",
    );
    let names = &spec["names"];
    let short: Vec<_> = names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .map(plain)
        .collect();
    writeln!(
        out,
        "`{}` `{}`, kind `{}`, plural `{}`, short name `{}`, scope {}.\n",
        plain(&spec["group"]),
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| plain(&v["name"]))
            .collect::<Vec<_>>()
            .join(", "),
        plain(&names["kind"]),
        plain(&names["plural"]),
        short.join(", "),
        plain(&spec["scope"])
    )?;
    for version in spec["versions"].as_array().context("spec.versions")? {
        let schema = &version["schema"]["openAPIV3Schema"];
        writeln!(
            out,
            "## {}\n\n{}\n",
            plain(&version["name"]),
            plain(&schema["description"])
        )?;
        out.push_str("`kubectl get wasmruntimes` columns: ");
        let columns: Vec<_> = version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} (`{}`)", plain(&c["name"]), plain(&c["jsonPath"])))
            .collect();
        writeln!(out, "{}.\n", columns.join(", "))?;
        out.push_str("Rules on the whole object (checked by the apiserver):\n\n");
        for rule in schema_rules(schema) {
            writeln!(out, "- {}", rule.trim_start_matches("rule: "))?;
        }
        for part in ["spec", "status"] {
            let mut fields = Vec::new();
            walk(&schema["properties"][part], part, false, &mut fields);
            writeln!(
                out,
                "\n### {part}\n\n| Field | Type | Default | Validation | Description |\n|---|---|---|---|---|"
            )?;
            for f in fields.iter().skip(1) {
                let required = if f.required { " (required)" } else { "" };
                writeln!(
                    out,
                    "| `{}`{required} | {} | {} | {} | {} |",
                    f.path,
                    cell(&f.kind),
                    f.default
                        .as_deref()
                        .map(|d| format!("`{}`", cell(d)))
                        .unwrap_or_default(),
                    cell(&f.rules.join("; ")),
                    cell(&f.description)
                )?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(file: &str) -> String {
        read(cmd::workspace_root(), file).unwrap()
    }

    #[test]
    fn chart_readme_is_up_to_date() {
        let generated = chart_readme(&committed(VALUES)).unwrap();
        assert!(
            generated == committed(CHART_README),
            "{CHART_README} is stale: run `cargo xtask docs`"
        );
    }

    #[test]
    fn reference_is_up_to_date() {
        let generated = reference(&committed(CRD)).unwrap();
        assert!(
            generated == committed(REFERENCE),
            "{REFERENCE} is stale: run `cargo xtask docs`"
        );
    }

    #[test]
    fn every_value_key_is_documented() {
        let values = committed(VALUES);
        let docs = scan_values(&values);
        let parsed: Value = serde_yaml::from_str(&values).unwrap();
        // Every top-level key is seen by the scanner.
        for key in parsed.as_object().unwrap().keys() {
            assert!(
                docs.iter().any(|d| d.path == [key.clone()]),
                "{key} not scanned"
            );
        }
        let readme = chart_readme(&values).unwrap();
        for leaf in [
            "image.repository",
            "installer.namespace.name",
            "wasmRuntimes",
            "resources",
        ] {
            assert!(readme.contains(&format!("| `{leaf}` |")), "{leaf} missing");
        }
    }

    #[test]
    fn undocumented_key_is_an_error() {
        let values = "# -- documented\na: 1\nb:\n  # -- child\n  c: true\nd: []\n";
        let error = chart_readme(values).unwrap_err().to_string();
        assert_eq!(error, "values.yaml: d has no `# --` description");
        let ok = chart_readme("# -- documented\na: 1\nb:\n  # -- child\n  c: true\n").unwrap();
        assert!(ok.contains("| `a` | int | `1` | documented |"), "{ok}");
        assert!(ok.contains("| `b.c` | bool | `true` | child |"), "{ok}");
    }

    #[test]
    fn reference_lists_fields_with_rules_and_defaults() {
        let text = reference(&committed(CRD)).unwrap();
        for expected in [
            "| `spec.handler` | string |",
            "| `spec.rollout.maxUnavailable` | int or string | `1` |",
            "rule: rollout.maxUnavailable must be an integer >= 1 or a percentage from 1% to 100%",
            "| `status.conditions[].type` (required) | string |",
            "spec.handler is immutable",
        ] {
            assert!(text.contains(expected), "reference lacks {expected:?}");
        }
    }
}

//! Installer pods (fixtures shaped as the apiserver returns them) read into reports, before
//! and after the pruning the pod cache applies.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use rstest::rstest;
use wasm_operator::observe::{pod_report, prune_pod};
use wasm_operator::planner::PodReport;

fn fixture(name: &str) -> Pod {
    let path = testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pods")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now() -> Timestamp {
    "2026-12-02T08:01:00Z".parse().unwrap()
}

#[rstest]
#[case::ready("ready.json", "Ready 5f6c2b")]
#[case::starting("starting.json", "Starting 5f6c2b 60s")]
#[case::crashloop(
    "crashloop.json",
    "Failed 5f6c2b containerd did not come back with handler wasmtime within 300s; restored /etc/containerd/config.toml from backup"
)]
#[case::invalid_image(
    "invalid-image.json",
    "Failed 5f6c2b InvalidImageName: couldn't parse image name \"UPPER:case\""
)]
#[case::terminating("terminating.json", "Absent")]
fn pruning_keeps_the_report(#[case] name: &str, #[case] want: &str) {
    let pod = fixture(name);
    let mut pruned = pod.clone();
    prune_pod(&mut pruned);
    let brief = |r: PodReport| match r {
        PodReport::Absent => "Absent".to_string(),
        PodReport::Ready { revision } => format!("Ready {revision}"),
        PodReport::Starting {
            revision,
            age_seconds,
        } => format!("Starting {revision} {age_seconds}s"),
        PodReport::Failed { revision, message } => format!("Failed {revision} {message}"),
    };
    assert_eq!(brief(pod_report(&pod, now())), want);
    assert_eq!(brief(pod_report(&pruned, now())), want);
    // What the controller reads besides the report survives too.
    assert_eq!(pruned.metadata.labels, pod.metadata.labels);
    assert_eq!(
        pruned.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n-0")
    );
    let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
    assert!(
        size(&pruned) * 2 < size(&pod),
        "{name}: pruned {} of {} bytes",
        size(&pruned),
        size(&pod)
    );
}

/// Selectors no node label can satisfy are spec errors naming the culprit; valid ones
/// (including empty values and prefixed keys) pass.
#[rstest]
#[case(r#"{"matchLabels": {"pool": "wasm"}}"#, None)]
#[case(r#"{"matchLabels": {"example.com/pool": ""}}"#, None)]
#[case(
    r#"{"matchExpressions": [{"key": "a.b/c_d", "operator": "In", "values": ["x-1", "Y.2"]}]}"#,
    None
)]
#[case(
    r#"{"matchLabels": {"a": "not a label value!"}}"#,
    Some("the value \"not a label value!\" of \"a\" is not a valid label value")
)]
#[case(
    r#"{"matchLabels": {"-a": "b"}}"#,
    Some("\"-a\" is not a valid label key")
)]
#[case(
    r#"{"matchLabels": {"Example.com/a": "b"}}"#,
    Some("\"Example.com/a\" is not a valid label key")
)]
#[case(
    r#"{"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "x/y"]}]}"#,
    Some("the value \"x/y\"")
)]
#[case(
    r#"{"matchExpressions": [{"key": "a", "operator": "Sometimes", "values": ["b"]}]}"#,
    Some("Invalid expression operator")
)]
fn node_selector_rejects_what_no_label_can_match(
    #[case] selector: &str,
    #[case] error: Option<&str>,
) {
    let selector: serde_json::Value = serde_json::from_str(selector).unwrap();
    let runtime: wasm_operator::api::WasmRuntime = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
        "metadata": {"name": "t"}, "spec": {"nodeSelector": selector}
    }))
    .unwrap();
    match (wasm_operator::observe::node_selector(&runtime), error) {
        (Ok(_), None) => {}
        (Err(e), Some(want)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("spec.nodeSelector") && msg.contains(want),
                "{msg}"
            );
        }
        (got, want) => panic!("{selector}: got {:?}, want error {want:?}", got.map(|_| ())),
    }
}

#[test]
fn a_megabyte_label_value_is_named_shortly() {
    let runtime: wasm_operator::api::WasmRuntime = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
        "metadata": {"name": "t"},
        "spec": {"nodeSelector": {"matchLabels": {"a": "b".repeat(1 << 20)}}}
    }))
    .unwrap();
    let msg = wasm_operator::observe::node_selector(&runtime)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.len() < 400 && msg.contains("(1048576 bytes)"), "{msg}");
}

mod child_changes {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use kube::runtime::watcher::Event;
    use rstest::rstest;
    use wasm_operator::observe::ChildChanges;

    /// A DaemonSet as the watch delivers it: `generation`, one label, and the status the
    /// controller-manager keeps rewriting (`ready` pods), with its resource version.
    fn ds(name: &str, generation: i64, label: &str, ready: i32, version: u32) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "wasm-system",
                "generation": generation,
                "resourceVersion": version.to_string(),
                "labels": {"app.kubernetes.io/managed-by": "wasm-operator", "x": label},
            },
            "status": {
                "currentNumberScheduled": ready, "desiredNumberScheduled": 3,
                "numberMisscheduled": 0, "numberReady": ready,
                "observedGeneration": generation,
            },
        }))
        .unwrap()
    }

    fn apply(d: DaemonSet) -> Event<DaemonSet> {
        Event::Apply(d)
    }

    #[rstest]
    #[case::first_sight(vec![apply(ds("a", 1, "v", 0, 1))], vec!["a"])]
    #[case::status_only(
        vec![apply(ds("a", 1, "v", 0, 1)), apply(ds("a", 1, "v", 1, 2)), apply(ds("a", 1, "v", 3, 3))],
        vec!["a"]
    )]
    #[case::spec_change(
        vec![apply(ds("a", 1, "v", 0, 1)), apply(ds("a", 2, "v", 0, 2))],
        vec!["a", "a"]
    )]
    #[case::label_edited(
        vec![apply(ds("a", 1, "v", 0, 1)), apply(ds("a", 1, "w", 0, 2))],
        vec!["a", "a"]
    )]
    #[case::deleted_and_recreated(
        vec![apply(ds("a", 1, "v", 0, 1)), Event::Delete(ds("a", 1, "v", 0, 2)), apply(ds("a", 1, "v", 0, 3))],
        vec!["a", "a", "a"]
    )]
    #[case::two_children(
        vec![apply(ds("a", 1, "v", 0, 1)), apply(ds("b", 1, "v", 0, 2)), apply(ds("b", 1, "v", 2, 3))],
        vec!["a", "b"]
    )]
    // a relist after a watch outage: unchanged children stay quiet, a changed one and one
    // deleted meanwhile are passed on
    #[case::relist(
        vec![
            apply(ds("a", 1, "v", 0, 1)), apply(ds("b", 1, "v", 0, 2)), apply(ds("c", 1, "v", 0, 3)),
            Event::Init,
            Event::InitApply(ds("a", 1, "v", 3, 9)),
            Event::InitApply(ds("b", 2, "v", 0, 10)),
            Event::InitDone,
        ],
        vec!["a", "b", "c", "b", "c"]
    )]
    fn only_content_changes_and_deletions_pass(
        #[case] events: Vec<Event<DaemonSet>>,
        #[case] want: Vec<&str>,
    ) {
        let mut filter = ChildChanges::default();
        let passed: Vec<String> = events
            .into_iter()
            .flat_map(|e| filter.on(e))
            .map(|d| d.metadata.name.unwrap())
            .collect();
        assert_eq!(passed, want);
    }
}

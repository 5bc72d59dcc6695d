//! The WasmRuntime API against a real etcd + kube-apiserver from the test bed: the generated CRD
//! installs, defaults are applied by the server, bad objects are rejected with our messages,
//! the status subresource works and `kubectl get` prints our columns.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use testbed::TestCluster;
use wasm_operator::api::{NetworkAccess, PullPolicy, RestartStrategy, SystemdCgroup, WasmRuntime};

const MANAGER: &str = "crd-api-test";

/// Install the CRD exactly as committed under crds/ and wait until it is served.
async fn install_crd(client: &Client) -> Result<()> {
    let path = testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/wasmruntime.dev_wasmruntimes.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let committed: CustomResourceDefinition = serde_yaml::from_str(&text)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = WasmRuntime::crd_name();
    crds.patch(
        name,
        &PatchParams::apply(MANAGER),
        &Patch::Apply(&committed),
    )
    .await
    .context("applying the committed CRD")?;
    let established = await_condition(crds, name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established).await??;
    Ok(())
}

async fn cluster_with_crd() -> Result<(TestCluster, Api<WasmRuntime>)> {
    let cluster = TestCluster::start().await?;
    install_crd(&cluster.client()).await?;
    let api = Api::all(cluster.client());
    Ok((cluster, api))
}

/// Server-side apply of a raw object, strict about unknown fields as `kubectl apply` is.
async fn apply(api: &Api<WasmRuntime>, object: Value) -> Result<WasmRuntime, kube::Error> {
    let name = object["metadata"]["name"]
        .as_str()
        .expect("test objects have names")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).validation_strict(),
        &Patch::Apply(object),
    )
    .await
}

fn object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn valid_object_gets_server_side_defaults() -> Result<()> {
    let (_cluster, api) = cluster_with_crd().await?;
    let created = apply(&api, object("wasmtime", json!({}))).await?;

    let spec = &created.spec;
    assert_eq!(
        created.handler(),
        "wasmtime",
        "handler defaults to the name"
    );
    assert_eq!(spec.handler, None);
    assert_eq!(
        spec.rollout.max_unavailable,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)
    );
    assert_eq!(spec.rollout.verify_timeout_seconds, 300);
    assert!(spec.rollout.auto_rollback);
    assert_eq!(spec.containerd.restart.strategy, RestartStrategy::Auto);
    assert_eq!(spec.containerd.systemd_cgroup, SystemdCgroup::Auto);
    assert_eq!(spec.shim.image_pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(spec.wasm.network, NetworkAccess::Deny);
    assert!(spec.wasm.precompile);

    // The defaults are stored, not only filled in by our deserializer.
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        api.clone().into_client(),
        &kube::api::ApiResource::erase::<WasmRuntime>(&()),
    );
    let stored = raw.get("wasmtime").await?;
    assert_eq!(stored.data["spec"]["rollout"]["maxUnavailable"], json!(1));
    assert_eq!(
        stored.data["spec"]["containerd"]["restart"]["strategy"],
        json!("auto")
    );
    assert_eq!(stored.data["spec"]["wasm"]["network"], json!("deny"));

    // A fully specified object round-trips unchanged.
    let sample: Value = serde_yaml::from_str(&std::fs::read_to_string(
        testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../config/samples/wasmruntime_v1alpha1_wasmruntime.yaml"),
    )?)?;
    let mut sample = sample;
    sample["metadata"]["name"] = json!("sample");
    let applied = apply(&api, sample.clone()).await?;
    assert_eq!(applied.spec.handler.as_deref(), Some("wasmtime"));
    assert_eq!(
        serde_json::to_value(&applied.spec)?["nodeSelector"],
        sample["spec"]["nodeSelector"]
    );
    Ok(())
}

/// Each case: an object the apiserver must reject, and a piece of the message it must give.
fn invalid_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "handler-uppercase",
            object("a", json!({"handler": "Bad_Name"})),
            "spec.handler in body should match",
        ),
        (
            "handler-too-long",
            object("b", json!({"handler": "h".repeat(64)})),
            "spec.handler: Too long",
        ),
        (
            "name-not-a-label",
            object("my.runtime", json!({})),
            "metadata.name must be a DNS-1123 label",
        ),
        (
            "name-too-long",
            object(&"n".repeat(64), json!({"handler": "ok"})),
            "metadata.name must be at most 63 characters",
        ),
        (
            "max-unavailable-zero",
            object("c", json!({"rollout": {"maxUnavailable": 0}})),
            "rollout.maxUnavailable must be an integer >= 1",
        ),
        (
            "max-unavailable-zero-percent",
            object("d", json!({"rollout": {"maxUnavailable": "0%"}})),
            "rollout.maxUnavailable must be an integer >= 1",
        ),
        (
            "max-unavailable-over-100-percent",
            object("e", json!({"rollout": {"maxUnavailable": "150%"}})),
            "or a percentage from 1% to 100%",
        ),
        (
            "command-strategy-without-command",
            object(
                "f",
                json!({"containerd": {"restart": {"strategy": "command"}}}),
            ),
            "containerd.restart.command is required when containerd.restart.strategy is command",
        ),
        (
            "command-strategy-empty-command",
            object(
                "g",
                json!({"containerd": {"restart": {"strategy": "command", "command": []}}}),
            ),
            "containerd.restart.command is required",
        ),
        (
            "command-without-command-strategy",
            object(
                "h",
                json!({"containerd": {"restart": {"strategy": "systemd", "command": ["/bin/true"]}}}),
            ),
            "containerd.restart.command is only allowed when containerd.restart.strategy is command",
        ),
        (
            "command-with-default-strategy",
            object(
                "i",
                json!({"containerd": {"restart": {"command": ["/bin/true"]}}}),
            ),
            "only allowed when containerd.restart.strategy is command",
        ),
        (
            "unknown-restart-strategy",
            object(
                "j",
                json!({"containerd": {"restart": {"strategy": "reboot"}}}),
            ),
            "spec.containerd.restart.strategy: Unsupported value: \"reboot\"",
        ),
        (
            "unknown-systemd-cgroup",
            object("k", json!({"containerd": {"systemdCgroup": "yes"}})),
            "spec.containerd.systemdCgroup: Unsupported value: \"yes\"",
        ),
        (
            "systemd-cgroup-unquoted-bool",
            object("l", json!({"containerd": {"systemdCgroup": true}})),
            ".spec.containerd.systemdCgroup: expected string",
        ),
        (
            "unknown-network",
            object("m", json!({"wasm": {"network": "open"}})),
            "spec.wasm.network: Unsupported value: \"open\"",
        ),
        (
            "unknown-pull-policy",
            object("n", json!({"shim": {"imagePullPolicy": "Sometimes"}})),
            "spec.shim.imagePullPolicy: Unsupported value: \"Sometimes\"",
        ),
        (
            "verify-timeout-too-short",
            object("o", json!({"rollout": {"verifyTimeoutSeconds": 5}})),
            "spec.rollout.verifyTimeoutSeconds: Invalid value: 5: spec.rollout.verifyTimeoutSeconds in body should be greater than or equal to 10",
        ),
        (
            "relative-config-path",
            object(
                "p",
                json!({"containerd": {"configPath": "etc/containerd/config.toml"}}),
            ),
            "containerd.configPath must be an absolute path",
        ),
        (
            "config-path-traversal",
            object(
                "q",
                json!({"containerd": {"configPath": "/etc/../root/x.toml"}}),
            ),
            "containerd.configPath must be an absolute path without '..'",
        ),
        (
            "unknown-field",
            object("r", json!({"handlr": "typo"})),
            ".spec.handlr: field not declared in schema",
        ),
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_clear_messages() -> Result<()> {
    let (_cluster, api) = cluster_with_crd().await?;
    let mut failures = Vec::new();
    for (case, object, expected) in invalid_cases() {
        match apply(&api, object).await {
            Ok(_) => failures.push(format!(
                "{case}: accepted, expected rejection containing {expected:?}"
            )),
            Err(kube::Error::Api(status)) if status.message.contains(expected) => {}
            Err(other) => failures.push(format!("{case}: expected {expected:?}, got: {other}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases wrong:\n{}",
            failures.len(),
            invalid_cases().len(),
            failures.join("\n")
        );
    }
    // Nothing of the rejected objects was stored.
    assert!(api.list(&Default::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn handler_is_immutable() -> Result<()> {
    let (_cluster, api) = cluster_with_crd().await?;
    apply(&api, object("wasmtime", json!({}))).await?;

    // Spelling out the defaulted handler is not a change.
    apply(&api, object("wasmtime", json!({"handler": "wasmtime"}))).await?;

    for spec in [json!({"handler": "other"}), json!({})] {
        let mut changed = object("wasmtime", spec.clone());
        if spec.get("handler").is_none() {
            // From an explicit handler back to a different default is a change too.
            apply(
                &api,
                object("explicit", json!({"handler": "explicit-handler"})),
            )
            .await?;
            changed = object("explicit", json!({}));
        }
        match apply(&api, changed).await {
            Err(kube::Error::Api(status)) => assert!(
                status.message.contains("spec.handler is immutable"),
                "unexpected message: {}",
                status.message
            ),
            other => bail!("handler change for {spec} was not rejected: {other:?}"),
        }
    }
    // Other fields stay mutable.
    let updated = apply(
        &api,
        object("wasmtime", json!({"rollout": {"maxUnavailable": "25%"}})),
    )
    .await?;
    assert_eq!(
        updated.spec.rollout.max_unavailable,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into())
    );
    Ok(())
}

#[tokio::test]
async fn status_subresource_and_printer_columns() -> Result<()> {
    let (cluster, api) = cluster_with_crd().await?;
    let created = apply(&api, object("wasmtime", json!({}))).await?;
    let generation = created.metadata.generation.context("generation is set")?;

    let status = json!({
        "apiVersion": "wasmruntime.dev/v1alpha1",
        "kind": "WasmRuntime",
        "status": {
            "observedGeneration": generation,
            "handler": "wasmtime",
            "state": "Progressing",
            "ready": "3/4",
            "nodes": {"selected": 4, "pending": 1, "provisioned": 3, "failed": 0},
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "RollingOut",
                "message": "3 of 4 nodes provisioned", "lastTransitionTime": "2026-11-24T10:00:00Z",
                "observedGeneration": generation
            }],
            "failures": [{"node": "node-4", "message": "containerd did not come back", "since": "2026-11-24T10:00:00Z"}],
            "shimVersion": "0.1.0"
        }
    });
    let patched = api
        .patch_status(
            "wasmtime",
            &PatchParams::apply("wasm-operator").force(),
            &Patch::Apply(&status),
        )
        .await?;
    let got = patched.status.context("status was stored")?;
    assert_eq!(got.nodes.provisioned, 3);
    assert_eq!(got.conditions[0].reason, "RollingOut");
    assert_eq!(got.failures[0].node, "node-4");
    assert_eq!(
        patched.metadata.generation,
        Some(generation),
        "a status write does not bump the generation"
    );

    // A spec write through the main endpoint cannot change the status.
    let mut with_status = object("wasmtime", json!({}));
    with_status["status"] = json!({"state": "Ready"});
    let after = apply(&api, with_status).await?;
    assert_eq!(
        after.status.and_then(|s| s.state).map(|s| format!("{s:?}")),
        Some("Progressing".into())
    );

    // More than 20 failures is refused by the schema.
    let mut too_many = status.clone();
    too_many["status"]["failures"] = (0..21)
        .map(|i| json!({"node": format!("node-{i}"), "message": "x"}))
        .collect::<Vec<_>>()
        .into();
    let err = api
        .patch_status(
            "wasmtime",
            &PatchParams::apply("wasm-operator").force(),
            &Patch::Apply(&too_many),
        )
        .await
        .expect_err("21 failures must be rejected");
    assert!(
        err.to_string().contains("must have at most 20 items"),
        "{err}"
    );

    // kubectl prints our columns.
    let out = cluster.kubectl().args(["get", "wasmruntimes"]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("header line")?
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "HANDLER", "READY", "STATUS", "AGE"],
        "{text}"
    );
    let row: Vec<&str> = lines.next().context("a row")?.split_whitespace().collect();
    assert_eq!(
        &row[..4],
        ["wasmtime", "wasmtime", "3/4", "Progressing"],
        "{text}"
    );

    // The short name and category work too.
    for args in [["get", "wrt"], ["get", "wasm"]] {
        let out = cluster.kubectl().args(args).output()?;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("wasmtime"),
            "kubectl {args:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() -> Result<()> {
    let (cluster, _api) = cluster_with_crd().await?;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = cluster
            .kubectl()
            .args(["explain", "wasmruntime.spec.containerd.restart.strategy"])
            .output()?;
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    anyhow::ensure!(
        out.status.success(),
        "kubectl explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("signal: send SIGTERM"), "{text}");
    assert!(
        text.contains("ENUM") || text.contains("enum"),
        "explain lists the allowed values: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_create_is_validated_too() -> Result<()> {
    // The same validation applies to a plain POST (kubectl create), not only to apply.
    let (_cluster, api) = cluster_with_crd().await?;
    let bad: WasmRuntime = serde_json::from_value(object(
        "x",
        json!({"containerd": {"restart": {"strategy": "command"}}}),
    ))?;
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("must be rejected");
    assert!(
        err.to_string()
            .contains("containerd.restart.command is required"),
        "{err}"
    );
    Ok(())
}

//! The `WasmRuntime` API (`wasmruntime.dev/v1alpha1`, cluster-scoped).
//!
//! Doc comments on fields become the CRD's OpenAPI descriptions, i.e. `kubectl explain` text.
//! Validation lives in the CRD itself (OpenAPI + CEL) so a bad object is rejected by the
//! apiserver at `kubectl apply` time, before the operator ever sees it.

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::node::v1::Overhead;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every object this project defines; also the prefix of its node labels.
pub const GROUP: &str = "wasmruntime.dev";
/// The containerd `runtime_type` our shim registers as.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";
/// How many per-node failures `status.failures` keeps (the CRD enforces it too).
pub const MAX_FAILURES: usize = 20;

/// DNS-1123 label, the rule Kubernetes applies to RuntimeClass handlers.
const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A WebAssembly runtime installed on a set of nodes and offered to pods as a RuntimeClass.
///
/// The operator installs the bundled Wasmtime containerd shim on every node matched by
/// `spec.nodeSelector`, node by node, verifies containerd after each restart, and publishes a
/// RuntimeClass named after the handler that schedules only onto nodes where the install was
/// verified. Pods then use it with `runtimeClassName: <handler>`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "wasmruntime.dev",
    version = "v1alpha1",
    kind = "WasmRuntime",
    plural = "wasmruntimes",
    shortname = "wrt",
    category = "wasm",
    status = "WasmRuntimeStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A WebAssembly runtime installed on a set of nodes and offered to pods as a RuntimeClass.",
    printcolumn(name = "Handler", type_ = "string", json_path = ".status.handler", description = "RuntimeClass name and containerd handler"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready", description = "Provisioned nodes / selected nodes"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state", description = "Ready, Progressing, Degraded or Deleting"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name must be at most 63 characters: it is the name part of the node label wasmruntime.dev/<name>"),
    validation = Rule::new("has(self.spec.handler) || (size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("metadata.name must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters) when spec.handler is not set, because the handler defaults to the name"),
    validation = Rule::new("(has(self.spec.handler) ? self.spec.handler : self.metadata.name) == (has(oldSelf.spec.handler) ? oldSelf.spec.handler : oldSelf.metadata.name)")
        .message("spec.handler is immutable: running pods refer to it; create a new WasmRuntime for a new handler"),
)]
#[serde(rename_all = "camelCase")]
pub struct WasmRuntimeSpec {
    /// Name of the RuntimeClass and of the containerd runtime handler that pods select with
    /// `runtimeClassName`. A DNS-1123 label. Defaults to the WasmRuntime's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub handler: Option<String>,

    /// Nodes to install the runtime on (matchLabels / matchExpressions). Empty or unset selects
    /// every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Tolerations of the installer pods, so tainted nodes can be provisioned too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub tolerations: Vec<Toleration>,

    /// The installer image that carries the shim.
    #[serde(default)]
    pub shim: ShimSpec,

    /// How containerd is configured and restarted on the nodes.
    #[serde(default)]
    pub containerd: ContainerdSpec,

    /// How a change is rolled out across nodes.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Settings of the published RuntimeClass.
    #[serde(default)]
    pub runtime_class: RuntimeClassSpec,

    /// Defaults for the Wasm guests that run under this runtime.
    #[serde(default)]
    pub wasm: WasmDefaults,
}

/// The installer image; it carries the shim binary that is copied onto each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShimSpec {
    /// Installer image reference. Defaults to the installer image matching the operator's own
    /// version, so upgrading the operator upgrades the shim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Pull policy of the installer image. Defaults to IfNotPresent.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
}

/// When the kubelet pulls the installer image.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the image is missing on the node.
    #[default]
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

/// containerd settings on the nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdSpec {
    /// Absolute path of containerd's config file (or config template) on the node. Unset means
    /// detect it from the distribution (plain containerd, k3s, RKE2, MicroK8s, k0s); on plain
    /// containerd, the `--config` of the one running containerd when that is not the default
    /// /etc/containerd/config.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')").message("containerd.configPath must be an absolute path without '..'"))]
    pub config_path: Option<String>,

    /// How containerd is restarted after its config changed.
    #[serde(default)]
    pub restart: RestartSpec,

    /// Whether the shim's runtime entry sets `SystemdCgroup`: "auto" copies the setting of the
    /// node's runc runtime; "true" or "false" force it (quote them in YAML).
    #[serde(default)]
    pub systemd_cgroup: SystemdCgroup,
}

/// How containerd is restarted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.strategy != 'command' || (has(self.command) && size(self.command) > 0)").message("containerd.restart.command is required when containerd.restart.strategy is command"))]
#[x_kube(validation = Rule::new("self.strategy == 'command' || !has(self.command)").message("containerd.restart.command is only allowed when containerd.restart.strategy is command"))]
#[serde(rename_all = "camelCase")]
pub struct RestartSpec {
    /// auto: systemd when the host runs it (the distribution's unit for k3s, RKE2 and
    /// MicroK8s), nothing for k0s, and without systemd SIGTERM when containerd's parent is a
    /// known supervisor (runsv, s6-supervise, supervise, supervise-daemon, supervisord,
    /// monit), else an error; systemd: restart the unit over systemd; signal: send SIGTERM
    /// to containerd and let its supervisor start it again; command: run `command` on the host;
    /// none: never restart (the new runtime is used after the next containerd restart).
    #[serde(default)]
    pub strategy: RestartStrategy,

    /// Host command (argv, no shell) that restarts containerd. Required exactly when strategy is
    /// command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// The restart strategies of the installer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RestartStrategy {
    /// Detect from the host.
    #[default]
    Auto,
    /// Restart the systemd unit.
    Systemd,
    /// SIGTERM containerd; its supervisor restarts it.
    Signal,
    /// Run `restart.command` on the host.
    Command,
    /// Never restart containerd.
    None,
}

/// SystemdCgroup option of the shim's runtime entry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SystemdCgroup {
    /// Same as the node's runc runtime.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Always use the systemd cgroup driver.
    #[serde(rename = "true")]
    True,
    /// Always use cgroupfs.
    #[serde(rename = "false")]
    False,
}

/// Rollout of a new generation across the selected nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// How many selected nodes may be installing (containerd restarting) at once: an integer
    /// >= 1 or a percentage from 1% to 100% of the selected nodes (rounded up). Default 1.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "int_or_string")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')").message("rollout.maxUnavailable must be an integer >= 1 or a percentage from 1% to 100%"))]
    pub max_unavailable: IntOrString,

    /// Seconds an installer may take from start to a verified containerd before the node counts
    /// as failed. Default 300.
    #[serde(default = "default_verify_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub verify_timeout_seconds: i32,

    /// Restore the previous containerd config and restart when verification fails. Default true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            verify_timeout_seconds: default_verify_timeout(),
            auto_rollback: true,
        }
    }
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}
/// `IntOrString` as Kubernetes declares it, without the `nullable: true` kube adds to optional ones.
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // Not nullable: a null is then pruned and defaulted by the apiserver instead of stored.
    schemars::json_schema!({ "x-kubernetes-int-or-string": true, "nullable": false })
}
fn default_verify_timeout() -> i32 {
    300
}
fn default_true() -> bool {
    true
}

/// Settings of the published RuntimeClass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeClassSpec {
    /// Resources added to every pod of this RuntimeClass (`overhead.podFixed`), counted by the
    /// scheduler and by resource quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Overhead>,

    /// Tolerations added to pods of this RuntimeClass, so they can land on tainted Wasm nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub tolerations: Vec<Toleration>,
}

/// Defaults for Wasm guests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmDefaults {
    /// Whether guests may open network sockets (an HTTP component may always listen on its
    /// own port). Default deny. A pod overrides it with the annotation
    /// wasmruntime.dev/network (allow or deny), a container with the env
    /// WASMRUNTIME_NETWORK.
    #[serde(default)]
    pub network: NetworkAccess,

    /// Cache compiled modules on the node so the second start of a module does not compile it
    /// again. Default true.
    #[serde(default = "default_true")]
    pub precompile: bool,

    /// Linear-memory limit of a guest whose container sets no memory limit, e.g. "128Mi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_limit: Option<Quantity>,
}

impl Default for WasmDefaults {
    fn default() -> Self {
        Self {
            network: NetworkAccess::Deny,
            precompile: true,
            default_memory_limit: None,
        }
    }
}

/// Guest network access.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkAccess {
    /// No sockets for the guest.
    #[default]
    Deny,
    /// The guest may use sockets.
    Allow,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmRuntimeStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The handler in effect (spec.handler or the object's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,

    /// Ready, Progressing and Degraded, following kstatus conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// One-word summary for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RuntimeState>,

    /// Provisioned nodes / selected nodes, e.g. "3/4".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// Node counts by install state.
    #[serde(default)]
    pub nodes: NodeCounts,

    /// The most recent per-node failures (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub failures: Vec<NodeFailure>,

    /// Version of the shim installed on the provisioned nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_version: Option<String>,
}

/// Summary state printed by `kubectl get wasmruntimes`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    /// Every selected node is provisioned with the current generation.
    Ready,
    /// Nodes are being installed or updated.
    Progressing,
    /// At least one node failed, or the spec cannot be applied.
    Degraded,
    /// The WasmRuntime is being deleted and its nodes uninstalled.
    Deleting,
}

/// Number of nodes in each install state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes matched by spec.nodeSelector.
    #[serde(default)]
    pub selected: i32,
    /// Nodes waiting for or running an install.
    #[serde(default)]
    pub pending: i32,
    /// Nodes with a verified install of the current generation.
    #[serde(default)]
    pub provisioned: i32,
    /// Nodes whose install failed.
    #[serde(default)]
    pub failed: i32,
}

/// Why the install failed on one node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// What the installer reported (its termination message), or why the operator gave up.
    pub message: String,
    /// When the failure was observed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The condition types of `status.conditions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// All selected nodes are provisioned with the current generation.
    Ready,
    /// A rollout is under way (kstatus "reconciling").
    Progressing,
    /// Something failed and needs attention (kstatus "stalled" when it cannot progress).
    Degraded,
}

impl ConditionType {
    /// The string used in `condition.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
        }
    }
}

impl WasmRuntime {
    /// The RuntimeClass / containerd handler: `spec.handler`, or the object's name.
    pub fn handler(&self) -> String {
        self.spec.handler.clone().unwrap_or_else(|| self.name_any())
    }

    /// The node label key that carries this runtime's per-node install state.
    pub fn node_label_key(&self) -> String {
        format!("{GROUP}/{}", self.name_any())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::{Value, json};

    use super::*;

    const SAMPLE: &str = include_str!("../../config/samples/wasmruntime_v1alpha1_wasmruntime.yaml");

    #[test]
    fn empty_spec_takes_documented_defaults() {
        let spec: WasmRuntimeSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(spec, WasmRuntimeSpec::default());
        assert_eq!(spec.rollout.max_unavailable, IntOrString::Int(1));
        assert_eq!(spec.rollout.verify_timeout_seconds, 300);
        assert!(spec.rollout.auto_rollback);
        assert_eq!(spec.containerd.restart.strategy, RestartStrategy::Auto);
        assert_eq!(spec.containerd.systemd_cgroup, SystemdCgroup::Auto);
        assert_eq!(spec.shim.image_pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(spec.wasm.network, NetworkAccess::Deny);
        assert!(spec.wasm.precompile);
    }

    #[test]
    fn sample_round_trips() {
        let runtime: WasmRuntime = serde_yaml::from_str(SAMPLE).unwrap();
        assert_eq!(runtime.handler(), "wasmtime");
        let json = serde_json::to_value(&runtime).unwrap();
        let back: WasmRuntime = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, runtime);
        // Nothing the sample says is lost on the way through our types.
        let original: Value = serde_yaml::from_str(SAMPLE).unwrap();
        assert_eq!(
            json["spec"]["nodeSelector"],
            original["spec"]["nodeSelector"]
        );
        assert_eq!(json["spec"]["rollout"], original["spec"]["rollout"]);
    }

    #[test]
    fn handler_defaults_to_name_and_label_key_uses_name() {
        let mut runtime = WasmRuntime::new("spin", WasmRuntimeSpec::default());
        assert_eq!(runtime.handler(), "spin");
        assert_eq!(runtime.node_label_key(), "wasmruntime.dev/spin");
        runtime.spec.handler = Some("wasmtime-fast".into());
        assert_eq!(runtime.handler(), "wasmtime-fast");
        assert_eq!(runtime.node_label_key(), "wasmruntime.dev/spin");
    }

    #[rstest]
    #[case(json!("auto"), SystemdCgroup::Auto)]
    #[case(json!("true"), SystemdCgroup::True)]
    #[case(json!("false"), SystemdCgroup::False)]
    fn systemd_cgroup_values(#[case] wire: Value, #[case] value: SystemdCgroup) {
        assert_eq!(
            serde_json::from_value::<SystemdCgroup>(wire.clone()).unwrap(),
            value
        );
        assert_eq!(serde_json::to_value(value).unwrap(), wire);
    }

    #[rstest]
    #[case("auto", RestartStrategy::Auto)]
    #[case("systemd", RestartStrategy::Systemd)]
    #[case("signal", RestartStrategy::Signal)]
    #[case("command", RestartStrategy::Command)]
    #[case("none", RestartStrategy::None)]
    fn restart_strategy_values(#[case] wire: &str, #[case] value: RestartStrategy) {
        assert_eq!(
            serde_json::from_value::<RestartStrategy>(json!(wire)).unwrap(),
            value
        );
        assert_eq!(serde_json::to_value(value).unwrap(), json!(wire));
    }

    #[rstest]
    #[case(json!(3), IntOrString::Int(3))]
    #[case(json!("10%"), IntOrString::String("10%".into()))]
    fn max_unavailable_int_or_percent(#[case] wire: Value, #[case] value: IntOrString) {
        let rollout: RolloutSpec = serde_json::from_value(json!({"maxUnavailable": wire})).unwrap();
        assert_eq!(rollout.max_unavailable, value);
    }

    #[test]
    fn status_round_trips_with_conditions() {
        let status = json!({
            "observedGeneration": 2,
            "handler": "wasmtime",
            "state": "Degraded",
            "ready": "1/2",
            "nodes": {"selected": 2, "pending": 0, "provisioned": 1, "failed": 1},
            "conditions": [{"type": "Degraded", "status": "True", "reason": "NodeFailed",
                            "message": "node-b: containerd did not come back",
                            "lastTransitionTime": "2026-11-24T10:00:00Z"}],
            "failures": [{"node": "node-b", "message": "containerd did not come back"}]
        });
        let parsed: WasmRuntimeStatus = serde_json::from_value(status.clone()).unwrap();
        assert_eq!(parsed.state, Some(RuntimeState::Degraded));
        assert_eq!(parsed.conditions[0].type_, ConditionType::Degraded.as_str());
        assert_eq!(serde_json::to_value(&parsed).unwrap(), status);
    }
}

//! The status the operator reports: a pure function of the plan and what blocks it, with
//! kstatus-style conditions (`Ready`, `Progressing`, `Degraded`) whose transition times only
//! move when their status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    ConditionType, MAX_FAILURES, NodeCounts, NodeFailure, RuntimeState, WasmRuntimeStatus,
};
use crate::planner::Plan;

/// What stops a runtime from progressing, besides node failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The handler is taken by another WasmRuntime or a RuntimeClass we do not own.
    HandlerConflict(String),
    /// The spec is valid for the CRD but cannot be applied (e.g. a bad selector).
    InvalidSpec(String),
    /// Deletion waits for pods that still use the RuntimeClass.
    InUse(String),
}

/// Inputs of [`status`] besides the plan.
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub handler: String,
    pub previous: Option<&'a WasmRuntimeStatus>,
    pub deleting: bool,
    pub blocker: Option<Blocker>,
    /// Shim version of the current revision (the installer image tag).
    pub shim_version: Option<String>,
    pub now: Timestamp,
}

/// Compute the status.
pub fn status(plan: &Plan, input: StatusInput<'_>) -> WasmRuntimeStatus {
    let c = &plan.counts;
    let (state, ready, progressing, degraded) = match &input.blocker {
        Some(Blocker::HandlerConflict(msg)) => (
            RuntimeState::Degraded,
            cond(false, "HandlerConflict", msg),
            cond(
                false,
                "HandlerConflict",
                "nothing is rolled out while the handler is taken",
            ),
            cond(true, "HandlerConflict", msg),
        ),
        Some(Blocker::InvalidSpec(msg)) => (
            RuntimeState::Degraded,
            cond(false, "InvalidSpec", msg),
            cond(false, "InvalidSpec", "waiting for a spec change"),
            cond(true, "InvalidSpec", msg),
        ),
        Some(Blocker::InUse(msg)) => (
            RuntimeState::Deleting,
            cond(false, "InUse", msg),
            cond(true, "InUse", msg),
            cond(
                false,
                "InUse",
                "deletion waits for pods that use the runtime",
            ),
        ),
        None if input.deleting => {
            let msg = format!(
                "uninstalling: {} node(s) still carry the runtime",
                c.pending + c.provisioned + c.failed + c.uninstalling
            );
            (
                RuntimeState::Deleting,
                cond(false, "Deleting", &msg),
                cond(true, "Deleting", &msg),
                cond(false, "Deleting", &msg),
            )
        }
        None => {
            let failed = plan
                .failures
                .iter()
                .next()
                .map(|(node, msg)| format!("{} node(s) failed; {node}: {msg}", c.failed));
            let progress = format!(
                "{}/{} nodes provisioned, {} installing, {} uninstalling",
                c.provisioned, c.selected, c.pending, c.uninstalling
            );
            let rolling =
                c.pending > 0 || c.uninstalling > 0 || (c.provisioned + c.failed) < c.selected;
            let state = match (&failed, rolling) {
                (Some(_), _) => RuntimeState::Degraded,
                (None, true) => RuntimeState::Progressing,
                (None, false) => RuntimeState::Ready,
            };
            let ready_reason = if plan.is_complete() {
                "AllNodesProvisioned"
            } else {
                "NotAllNodesProvisioned"
            };
            let ready_msg = if c.selected == 0 {
                "no node matches spec.nodeSelector".to_string()
            } else {
                progress.clone()
            };
            (
                state,
                cond(plan.is_complete(), ready_reason, &ready_msg),
                cond(
                    rolling,
                    if rolling {
                        "RollingOut"
                    } else {
                        "RolloutComplete"
                    },
                    &progress,
                ),
                match &failed {
                    Some(msg) => cond(true, "NodesFailed", msg),
                    None => cond(false, "NoFailures", "no node failed"),
                },
            )
        }
    };
    let conditions = [
        (ConditionType::Ready, ready),
        (ConditionType::Progressing, progressing),
        (ConditionType::Degraded, degraded),
    ]
    .into_iter()
    .map(|(kind, (status, reason, message))| condition(kind, status, reason, message, &input))
    .collect();
    let failures = plan
        .failures
        .iter()
        .take(MAX_FAILURES)
        .map(|(node, message)| NodeFailure {
            node: node.clone(),
            message: message.clone(),
            since: input
                .previous
                .and_then(|p| {
                    p.failures
                        .iter()
                        .find(|f| f.node == *node && f.message == *message)
                })
                .and_then(|f| f.since.clone())
                .or_else(|| Some(input.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())),
        })
        .collect();
    WasmRuntimeStatus {
        observed_generation: input.generation,
        handler: Some(input.handler.clone()),
        conditions,
        state: Some(state),
        ready: Some(format!("{}/{}", c.provisioned, c.selected)),
        nodes: NodeCounts {
            selected: count(c.selected),
            pending: count(c.pending),
            provisioned: count(c.provisioned),
            failed: count(c.failed),
        },
        failures,
        shim_version: input
            .shim_version
            .clone()
            .or_else(|| input.previous.and_then(|p| p.shim_version.clone())),
    }
}

fn cond(status: bool, reason: &str, message: &str) -> (bool, String, String) {
    (status, reason.to_string(), message.to_string())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A condition whose lastTransitionTime stays as it was unless its status flips.
fn condition(
    kind: ConditionType,
    status: bool,
    reason: String,
    message: String,
    input: &StatusInput<'_>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == kind.as_str()))
        .filter(|c| c.status == status);
    Condition {
        type_: kind.as_str().into(),
        status,
        reason,
        // The apiserver caps condition messages at 32 KiB; ours stay far below.
        message: message.chars().take(1024).collect(),
        observed_generation: input.generation,
        last_transition_time: previous
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(input.now)),
    }
}

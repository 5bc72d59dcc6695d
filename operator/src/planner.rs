//! The rollout planner: a pure function from what the operator observes (nodes, their labels,
//! the installer pods on them) to what it should do next (label changes, pods to delete).
//!
//! Node state lives in the label `wasmruntime.dev/<name>`:
//!
//! ```text
//!  (selected) ──budget──> pending ──installer Ready──> provisioned
//!                            │                              │ spec change (budget)
//!                            └──installer failed/timeout──> failed ──spec change (budget)──> pending
//!  not selected any more / deleting: pending | provisioned | failed ──budget──> uninstalling ──done──> (no label)
//! ```
//!
//! `pending` and `uninstalling` nodes are the ones whose containerd may restart: together with
//! `failed` nodes of the current revision they use up `maxUnavailable`, so a rollout stops
//! widening while failures fill the budget.

use std::collections::BTreeMap;

/// Values of the per-runtime node label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    Pending,
    Provisioned,
    Failed,
    Uninstalling,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioned => "provisioned",
            Self::Failed => "failed",
            Self::Uninstalling => "uninstalling",
        }
    }

    /// Parse a label value; anything else (an admin's typo) counts as no label.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "provisioned" => Some(Self::Provisioned),
            "failed" => Some(Self::Failed),
            "uninstalling" => Some(Self::Uninstalling),
            _ => None,
        }
    }
}

/// What the installer (or uninstaller) pod on a node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodReport {
    /// No pod of ours on the node.
    Absent,
    /// A pod exists but is not Ready yet; `age_seconds` since it was created.
    Starting { revision: String, age_seconds: i64 },
    /// Ready: the install of `revision` is verified (or the uninstall is done).
    Ready { revision: String },
    /// The pod failed: its termination message, or why it is considered failed.
    Failed { revision: String, message: String },
}

impl PodReport {
    fn revision(&self) -> Option<&str> {
        match self {
            Self::Absent => None,
            Self::Starting { revision, .. }
            | Self::Ready { revision }
            | Self::Failed { revision, .. } => Some(revision),
        }
    }
}

/// One node as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Matched by `spec.nodeSelector` (and the WasmRuntime is not being deleted).
    pub selected: bool,
    /// Current value of our label.
    pub state: Option<NodeState>,
    /// The installer pod (for pending/provisioned/failed nodes).
    pub installer: PodReport,
    /// The uninstaller pod (for uninstalling nodes).
    pub uninstaller: PodReport,
}

/// The planner's inputs besides the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// Revision of the installer pod template for the current spec.
    pub revision: String,
    /// Resolved `spec.rollout.maxUnavailable` (at least 1).
    pub max_unavailable: usize,
    /// `spec.rollout.verifyTimeoutSeconds`.
    pub verify_timeout_seconds: i64,
}

/// One label change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: Option<NodeState>,
    /// `None` removes the label.
    pub to: Option<NodeState>,
    /// Why, for Events and logs (the installer's message for failures).
    pub reason: String,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub transitions: Vec<Transition>,
    /// Nodes whose old-revision installer pod must be deleted so the DaemonSet (OnDelete)
    /// starts the new revision there.
    pub restart_installer_on: Vec<String>,
    /// Node counts after the transitions.
    pub counts: Counts,
    /// Failed nodes with their messages, after the transitions.
    pub failures: BTreeMap<String, String>,
}

/// Node counts by state, after the plan is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub selected: usize,
    pub pending: usize,
    pub provisioned: usize,
    pub failed: usize,
    pub uninstalling: usize,
}

impl Plan {
    /// Every selected node is provisioned with the current revision and nothing else is in
    /// flight.
    pub fn is_complete(&self) -> bool {
        self.counts.provisioned == self.counts.selected
            && self.counts.pending == 0
            && self.counts.failed == 0
            && self.counts.uninstalling == 0
    }
}

/// Decide the next step of the rollout. Deterministic: nodes are handled in name order, so
/// a restarted operator (or a new leader) makes the same choices.
pub fn plan(nodes: &[NodeView], rollout: &Rollout) -> Plan {
    let mut nodes: Vec<&NodeView> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut step = Step {
        out: Plan::default(),
        next: nodes.iter().map(|n| (n.name.clone(), n.state)).collect(),
    };

    // 1. Settle what is in flight from the installer and uninstaller reports.
    for node in &nodes {
        let current = |r: &str| r == rollout.revision;
        match (node.state, &node.installer) {
            (Some(NodeState::Pending | NodeState::Failed), PodReport::Ready { revision })
                if current(revision) =>
            {
                step.set(
                    node,
                    Some(NodeState::Provisioned),
                    "installer verified the runtime".into(),
                );
            }
            (
                Some(NodeState::Pending | NodeState::Provisioned),
                PodReport::Failed { revision, message },
            ) if current(revision) => {
                step.set(node, Some(NodeState::Failed), message.clone());
            }
            (
                Some(NodeState::Pending),
                PodReport::Starting {
                    revision,
                    age_seconds,
                },
            ) if current(revision) && *age_seconds > rollout.verify_timeout_seconds => {
                let message = format!(
                    "installer not Ready within {} s (spec.rollout.verifyTimeoutSeconds)",
                    rollout.verify_timeout_seconds
                );
                step.set(node, Some(NodeState::Failed), message);
            }
            (Some(NodeState::Uninstalling), _)
                if matches!(node.uninstaller, PodReport::Ready { .. }) =>
            {
                step.set(node, None, "uninstalled".into());
            }
            _ => {}
        }
    }

    // 2. Spend what is left of the budget, in name order: uninstalls first (a node that left
    //    the selection should not keep a runtime), then fresh nodes, then re-rolls of nodes
    //    whose installer runs an older revision. A failed node of the current revision holds
    //    its share of the budget, so failures stop the rollout from widening.
    let stale = |node: &NodeView| {
        node.installer
            .revision()
            .is_some_and(|r| r != rollout.revision)
    };
    let busy = nodes
        .iter()
        .filter(|n| match step.next[&n.name] {
            Some(NodeState::Pending | NodeState::Uninstalling) => true,
            // A failed node holds budget while it is still meant to run the runtime; one
            // that is leaving (deselected, or the runtime is being deleted) needs that
            // budget for its own uninstall.
            Some(NodeState::Failed) => n.selected && !stale(n),
            _ => false,
        })
        .count();
    let budget = rollout.max_unavailable.saturating_sub(busy);
    let leaving = nodes.iter().filter(|n| {
        !n.selected && step.next[&n.name].is_some_and(|s| s != NodeState::Uninstalling)
    });
    let fresh = nodes
        .iter()
        .filter(|n| n.selected && step.next[&n.name].is_none());
    let rerolls = nodes.iter().filter(|n| {
        n.selected
            && matches!(
                step.next[&n.name],
                Some(NodeState::Provisioned | NodeState::Failed)
            )
            && stale(n)
    });
    let work: Vec<&&NodeView> = leaving.chain(fresh).chain(rerolls).collect();
    for node in work.into_iter().take(budget) {
        match step.next[&node.name] {
            _ if !node.selected => step.set(
                node,
                Some(NodeState::Uninstalling),
                "node no longer selected".into(),
            ),
            None => step.set(
                node,
                Some(NodeState::Pending),
                "selected by spec.nodeSelector".into(),
            ),
            _ => {
                step.set(
                    node,
                    Some(NodeState::Pending),
                    format!("rolling out revision {}", rollout.revision),
                );
                step.out.restart_installer_on.push(node.name.clone());
            }
        }
    }
    // A pending node whose pod still runs an older revision (the spec changed mid-rollout)
    // needs that pod replaced; it already holds budget.
    for node in nodes
        .iter()
        .filter(|n| n.selected && step.next[&n.name] == Some(NodeState::Pending) && stale(n))
    {
        if !step.out.restart_installer_on.contains(&node.name) {
            step.out.restart_installer_on.push(node.name.clone());
        }
    }

    // 3. Counts and failure messages as they will be.
    let Step { mut out, next } = step;
    for node in &nodes {
        out.counts.selected += usize::from(node.selected);
        match next[&node.name] {
            Some(NodeState::Pending) => out.counts.pending += 1,
            Some(NodeState::Provisioned) => out.counts.provisioned += 1,
            Some(NodeState::Uninstalling) => out.counts.uninstalling += 1,
            Some(NodeState::Failed) => {
                out.counts.failed += 1;
                let message = match &node.installer {
                    PodReport::Failed { message, .. } => message.clone(),
                    _ => out
                        .transitions
                        .iter()
                        .find(|t| t.node == node.name && t.to == Some(NodeState::Failed))
                        .map(|t| t.reason.clone())
                        .unwrap_or_else(|| "install failed; the installer pod is gone".into()),
                };
                out.failures.insert(node.name.clone(), message);
            }
            None => {}
        }
    }
    out
}

/// The plan being built and every node's state as it will be.
struct Step {
    out: Plan,
    next: BTreeMap<String, Option<NodeState>>,
}

impl Step {
    fn set(&mut self, node: &NodeView, to: Option<NodeState>, reason: String) {
        self.next.insert(node.name.clone(), to);
        self.out.transitions.push(Transition {
            node: node.name.clone(),
            from: node.state,
            to,
            reason,
        });
    }
}

/// Resolve `maxUnavailable` (an integer, or a percentage of the selected nodes rounded up) to
/// a node count of at least 1.
pub fn resolve_max_unavailable(
    value: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    selected: usize,
) -> usize {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let n = match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(1),
        IntOrString::String(s) => {
            let percent: usize = s.trim_end_matches('%').parse().unwrap_or(1);
            (selected * percent).div_ceil(100)
        }
    };
    n.max(1)
}

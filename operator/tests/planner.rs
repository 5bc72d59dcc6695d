//! Table tests of the rollout planner: batches, failures, joins and leaves, spec changes
//! mid-rollout, deletion.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rstest::rstest;
use wasm_operator::planner::{
    NodeState, NodeView, PodReport, Rollout, plan, resolve_max_unavailable,
};

use NodeState::{Failed, Pending, Provisioned, Uninstalling};

const REV: &str = "r2";

fn node(name: &str, selected: bool, state: Option<NodeState>, installer: PodReport) -> NodeView {
    NodeView {
        name: name.into(),
        selected,
        state,
        installer,
        uninstaller: PodReport::Absent,
    }
}
fn fresh(name: &str) -> NodeView {
    node(name, true, None, PodReport::Absent)
}
fn ready(rev: &str) -> PodReport {
    PodReport::Ready {
        revision: rev.into(),
    }
}
fn starting(rev: &str, age: i64) -> PodReport {
    PodReport::Starting {
        revision: rev.into(),
        age_seconds: age,
    }
}
fn failed(rev: &str, msg: &str) -> PodReport {
    PodReport::Failed {
        revision: rev.into(),
        message: msg.into(),
    }
}
fn rollout(max: usize) -> Rollout {
    Rollout {
        revision: REV.into(),
        max_unavailable: max,
        verify_timeout_seconds: 300,
    }
}

/// The transitions of a plan as (node, to) pairs.
fn moves(nodes: &[NodeView], max: usize) -> Vec<(String, Option<NodeState>)> {
    plan(nodes, &rollout(max))
        .transitions
        .into_iter()
        .map(|t| (t.node, t.to))
        .collect()
}
fn mv(node: &str, to: Option<NodeState>) -> (String, Option<NodeState>) {
    (node.into(), to)
}

#[rstest]
#[case::first_batch_of_one(vec![fresh("c"), fresh("a"), fresh("b")], 1, vec![mv("a", Some(Pending))])]
#[case::first_batch_of_two(vec![fresh("c"), fresh("a"), fresh("b")], 2, vec![mv("a", Some(Pending)), mv("b", Some(Pending))])]
#[case::budget_larger_than_nodes(vec![fresh("a")], 10, vec![mv("a", Some(Pending))])]
#[case::in_flight_node_holds_budget(
    vec![node("a", true, Some(Pending), starting(REV, 5)), fresh("b")], 1, vec![])]
#[case::verified_node_frees_budget(
    vec![node("a", true, Some(Pending), ready(REV)), fresh("b")], 1,
    vec![mv("a", Some(Provisioned)), mv("b", Some(Pending))])]
#[case::failure_holds_budget_rollout_stops(
    vec![node("a", true, Some(Pending), failed(REV, "containerd did not come back")), fresh("b"), fresh("c")], 1,
    vec![mv("a", Some(Failed))])]
#[case::failure_within_larger_budget_continues(
    vec![node("a", true, Some(Pending), failed(REV, "boom")), fresh("b"), fresh("c")], 2,
    vec![mv("a", Some(Failed)), mv("b", Some(Pending))])]
#[case::verify_timeout_fails_node(
    vec![node("a", true, Some(Pending), starting(REV, 301))], 1, vec![mv("a", Some(Failed))])]
#[case::not_yet_timed_out(
    vec![node("a", true, Some(Pending), starting(REV, 299))], 1, vec![])]
#[case::failed_node_recovers_when_installer_verifies(
    vec![node("a", true, Some(Failed), ready(REV))], 1, vec![mv("a", Some(Provisioned))])]
#[case::provisioned_installer_fails_later(
    vec![node("a", true, Some(Provisioned), failed(REV, "drift: shim replaced"))], 1, vec![mv("a", Some(Failed))])]
#[case::spec_change_rerolls_in_batches(
    vec![node("a", true, Some(Provisioned), ready("r1")), node("b", true, Some(Provisioned), ready("r1")),
         node("c", true, Some(Provisioned), ready("r1"))], 2,
    vec![mv("a", Some(Pending)), mv("b", Some(Pending))])]
#[case::spec_change_retries_failed_node(
    vec![node("a", true, Some(Failed), failed("r1", "bad option"))], 1, vec![mv("a", Some(Pending))])]
#[case::stale_failure_does_not_hold_budget(
    vec![node("a", true, Some(Failed), failed("r1", "bad option")), node("b", true, Some(Provisioned), ready("r1"))], 1,
    vec![mv("a", Some(Pending))])]
#[case::node_leaves_selection(
    vec![node("a", false, Some(Provisioned), ready(REV))], 1, vec![mv("a", Some(Uninstalling))])]
#[case::failed_leaver_is_uninstalled_within_a_budget_of_one(
    vec![node("a", false, Some(Failed), failed(REV, "containerd did not verify"))], 1,
    vec![mv("a", Some(Uninstalling))])]
#[case::uninstall_done_removes_label(
    vec![NodeView { uninstaller: ready(REV), ..node("a", false, Some(Uninstalling), PodReport::Absent) }], 1,
    vec![mv("a", None)])]
#[case::uninstall_in_flight_holds_budget(
    vec![NodeView { uninstaller: starting(REV, 3), ..node("a", false, Some(Uninstalling), PodReport::Absent) }, fresh("b")], 1,
    vec![])]
#[case::leavers_go_before_joiners(
    vec![fresh("a"), node("z", false, Some(Provisioned), ready(REV))], 1, vec![mv("z", Some(Uninstalling))])]
#[case::unselected_unlabelled_node_is_ignored(vec![node("a", false, None, PodReport::Absent)], 1, vec![])]
#[case::joiner_after_complete_rollout(
    vec![node("a", true, Some(Provisioned), ready(REV)), fresh("b")], 1, vec![mv("b", Some(Pending))])]
#[case::steady_state_does_nothing(
    vec![node("a", true, Some(Provisioned), ready(REV)), node("b", true, Some(Provisioned), ready(REV))], 1, vec![])]
#[case::provisioned_pod_restarting_stays_provisioned(
    vec![node("a", true, Some(Provisioned), starting(REV, 1000)), node("b", true, Some(Provisioned), PodReport::Absent)], 1,
    vec![])]
fn planner_moves(
    #[case] nodes: Vec<NodeView>,
    #[case] max: usize,
    #[case] expected: Vec<(String, Option<NodeState>)>,
) {
    assert_eq!(moves(&nodes, max), expected);
}

#[test]
fn spec_change_mid_rollout_replaces_old_pod_of_pending_node() {
    // b was pending for r1 when the spec moved on to r2: its r1 pod must go.
    let nodes = vec![
        node("a", true, Some(Provisioned), ready(REV)),
        node("b", true, Some(Pending), starting("r1", 10)),
    ];
    let p = plan(&nodes, &rollout(1));
    assert!(p.transitions.is_empty());
    assert_eq!(p.restart_installer_on, vec!["b".to_string()]);
}

#[test]
fn reroll_deletes_the_old_installer_pod() {
    let nodes = vec![node("a", true, Some(Provisioned), ready("r1"))];
    let p = plan(&nodes, &rollout(1));
    assert_eq!(p.restart_installer_on, vec!["a".to_string()]);
}

#[test]
fn counts_and_failures_reflect_the_plan() {
    let nodes = vec![
        node("a", true, Some(Pending), ready(REV)),
        node(
            "b",
            true,
            Some(Pending),
            failed(REV, "containerd rejected the config; original restored"),
        ),
        node("c", true, Some(Failed), PodReport::Absent),
        fresh("d"),
        node("e", false, Some(Provisioned), ready(REV)),
    ];
    let p = plan(&nodes, &rollout(5));
    assert_eq!(p.counts.selected, 4);
    assert_eq!(p.counts.provisioned, 1);
    assert_eq!(p.counts.failed, 2);
    assert_eq!(p.counts.pending, 1, "d joins; budget 5 - 2 failed");
    assert_eq!(p.counts.uninstalling, 1);
    assert_eq!(
        p.failures["b"],
        "containerd rejected the config; original restored"
    );
    assert!(p.failures.contains_key("c"));
    assert!(!p.is_complete());
}

#[test]
fn complete_when_all_selected_provisioned() {
    let nodes = vec![
        node("a", true, Some(Provisioned), ready(REV)),
        node("b", true, Some(Pending), ready(REV)),
    ];
    let p = plan(&nodes, &rollout(1));
    assert!(p.is_complete());
    assert_eq!(p.counts.provisioned, 2);
}

#[test]
fn rollout_converges_over_many_steps_within_budget() {
    // Simulate: each step, the installer of every pending node reports Ready.
    let mut nodes: Vec<NodeView> = (0..25).map(|i| fresh(&format!("n{i:02}"))).collect();
    let mut steps = 0;
    loop {
        let p = plan(&nodes, &rollout(4));
        assert!(
            p.counts.pending <= 4,
            "never more than maxUnavailable in flight"
        );
        if p.is_complete() {
            break;
        }
        for t in &p.transitions {
            let n = nodes.iter_mut().find(|n| n.name == t.node).unwrap();
            n.state = t.to;
        }
        for n in nodes.iter_mut().filter(|n| n.state == Some(Pending)) {
            n.installer = ready(REV);
        }
        steps += 1;
        assert!(steps < 100, "no progress");
    }
    assert_eq!(
        steps, 7,
        "25 nodes in batches of 4 take 7 batches; the 8th plan only settles"
    );
}

#[test]
fn planner_is_deterministic_regardless_of_input_order() {
    let a = vec![fresh("b"), fresh("a"), fresh("c")];
    let b = vec![fresh("c"), fresh("b"), fresh("a")];
    assert_eq!(plan(&a, &rollout(2)), plan(&b, &rollout(2)));
}

#[rstest]
#[case(IntOrString::Int(3), 10, 3)]
#[case(IntOrString::String("10%".into()), 1000, 100)]
#[case(IntOrString::String("10%".into()), 5, 1)]
#[case(IntOrString::String("34%".into()), 10, 4)]
#[case(IntOrString::String("100%".into()), 7, 7)]
#[case(IntOrString::String("1%".into()), 0, 1)]
fn max_unavailable_resolution(
    #[case] value: IntOrString,
    #[case] selected: usize,
    #[case] expected: usize,
) {
    assert_eq!(resolve_max_unavailable(&value, selected), expected);
}

#[rstest::rstest]
#[case(1, 1)]
#[case(2, 2)]
#[case(3, 4)]
#[case(9, 256)]
#[case(10, 256)]
#[case(u32::MAX, 256)]
fn retries_back_off_exponentially_up_to_a_bound(#[case] attempt: u32, #[case] secs: u64) {
    assert_eq!(
        wasm_operator::controller::retry_delay(attempt),
        std::time::Duration::from_secs(secs)
    );
}

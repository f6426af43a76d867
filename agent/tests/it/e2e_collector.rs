//! End-to-end: the real agent inside a node namespace exports to a real `podflow collector`
//! (over a unix socket, which crosses network namespaces), and `podflow tail --server` against
//! the collector shows the node's flows with exact counts and the node name. Privileged (root).
use std::{process::Command, time::Duration};

use crate::support::{
    BIN,
    agent::{Agent, Tuple, tail, totals},
    export::ChildCollector,
    privileged,
};
use podflow_testbed::{Node, unique_prefix, wait_for};

#[test]
fn agent_exports_to_collector_and_tail_reads_it_there() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let csock = dir.path().join("collector.sock");
    let _collector = ChildCollector::on_socket(&csock);

    let p = unique_prefix("c");
    let mut node = Node::new(&p, 64).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    let agent = Agent::start_named(
        &node,
        "node-x",
        &[
            "--collector",
            &csock.to_string_lossy(),
            "--export-linger",
            "100ms",
        ],
    );
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));

    node.pod("a")
        .unwrap()
        .ns
        .exec(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "2", "-q", &b.to_string()],
        )
        .expect("ping");
    let t = Tuple::new(a, b, "ICMP", 8, 0);
    let got = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let flows = tail(&csock, &[]);
        let (p, by, recs) = totals(&flows, &t);
        ((p, by) == (3, 3 * 84)).then_some(recs)
    });
    let recs = got.unwrap_or_else(|| panic!("collector flows: {:#?}", tail(&csock, &[])));
    assert!(recs.iter().all(|r| r["node"] == "node-x"), "{recs:#?}");
    // Nothing counted twice on the way: the agent's own totals are the same.
    let (p, by, _) = totals(&agent.flows(&[]), &t);
    assert_eq!((p, by), (3, 3 * 84));

    // The collector's status lists the agent, connected, with what it received.
    let out = Command::new(BIN)
        .args(["status", "-o", "json", "--server"])
        .arg(&csock)
        .output()
        .expect("status");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let agents = st["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{st}");
    assert_eq!(agents[0]["node"], "node-x", "{st}");
    assert_eq!(agents[0]["connected"], true, "{st}");
    assert!(
        agents[0]["records_received"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );
    // And the agent reports its exporter as connected with nothing dropped.
    let ast = agent.status().expect("agent status");
    let counter = |name: &str| {
        ast["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .and_then(|c| c["value"].as_u64())
    };
    assert_eq!(counter("export_connected"), Some(1), "{ast}");
    assert_eq!(counter("export_buffer_full"), Some(0), "{ast}");
}

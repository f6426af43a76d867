//! End-to-end: two "node" namespaces joined by an underlay veth and a real WireGuard tunnel
//! (Debian's wireguard-go + wg, unique interface names), pods behind veths on each, podflow on
//! both nodes. Traffic between pods of the two nodes through the tunnel is counted once per node
//! with the inner pod addresses and marked encrypted; a second inter-node path that bypasses the
//! tunnel is flagged plaintext; same-node traffic on a node with WireGuard stays exact and
//! same-node. Privileged (root).
use std::{net::Ipv4Addr, path::Path, time::Duration};

use crate::support::{
    agent::{Agent, Tuple, expect_totals},
    privileged,
    wireguard::{TwoNodes, pod_json},
};
use podflow_testbed::{Node, wait_for};
use serde_json::json;

const PING: u64 = 84;

/// `podflow agent` in a node namespace, named `name`, with the shared metadata file.
fn start_agent(node: &Node, name: &str, metadata: &Path) -> Agent {
    Agent::start_named(
        node,
        name,
        &["--metadata-file", &metadata.to_string_lossy()],
    )
}

#[test]
fn wireguard_flows_are_exact_encrypted_and_plaintext_bypass_is_flagged() {
    if !privileged() {
        return;
    }
    let net = TwoNodes::build("w");
    let (na, nb) = (&net.a, &net.b);
    let (va1, va2, vb1, vb2) = (
        net.va1.as_str(),
        net.va2.as_str(),
        net.vb1.as_str(),
        net.vb2.as_str(),
    );
    let (wga, wgb) = (net.wga.as_str(), net.wgb.as_str());
    let (a1, a2, b1, b2) = (net.a1, net.a2, net.b1, net.b2);
    let (node_a, node_b) = (net.node_a.as_str(), net.node_b.as_str());
    let file = net.write_metadata(vec![
        pod_json("a1", a1, node_a),
        pod_json("a2", a2, node_a),
        pod_json("b1", b1, node_b),
        pod_json("b2", b2, node_b),
    ]);

    let agent_a = start_agent(na, node_a, &file);
    let agent_b = start_agent(nb, node_b, &file);
    agent_a.wait_attached(&[va1, va2, wga], Duration::from_secs(10));
    agent_b.wait_attached(&[vb1, vb2, wgb], Duration::from_secs(10));
    let st = agent_a.status().expect("status");
    let wg_iface = st["interfaces"]
        .as_array()
        .and_then(|is| is.iter().find(|i| i["name"] == wga))
        .cloned()
        .expect("wg interface in status");
    assert_eq!(wg_iface["kind"], "l3", "{wg_iface}");

    let ping = |n: &Node, pod: &str, to: Ipv4Addr, count: u32| {
        let c = count.to_string();
        n.pod(pod)
            .expect("pod")
            .ns
            .exec(
                "ping",
                &["-c", &c, "-i", "0.2", "-W", "2", "-q", &to.to_string()],
            )
            .expect("ping");
    };

    // Through the tunnel: exact inner counts, once per node, encrypted, inter-node.
    ping(na, "a1", b1, 4);
    let on_a = expect_totals(&agent_a, &Tuple::new(a1, b1, "ICMP", 8, 0), (4, 4 * PING));
    let on_b = expect_totals(&agent_b, &Tuple::new(a1, b1, "ICMP", 8, 0), (4, 4 * PING));
    for r in &on_a {
        assert_eq!(r["encrypted"], true, "{r}");
        assert_eq!(r["inter_node"], true, "{r}");
        assert_eq!(r["same_node"], false, "{r}");
        assert!(
            r.get("plaintext_inter_node").is_none_or(|v| v == false),
            "{r}"
        );
        assert_eq!(r["interfaces"], json!([va1, wga]), "{r}");
        assert_eq!(r["src"]["pod"], "a1", "{r}");
        assert_eq!(r["dst"]["pod"], "b1", "{r}");
        assert_eq!(r["dst"]["node"], node_b, "{r}");
    }
    for r in &on_b {
        assert_eq!(r["encrypted"], true, "{r}");
        assert_eq!(r["inter_node"], true, "{r}");
        assert_eq!(r["interfaces"], json!([wgb, vb1]), "{r}");
    }
    expect_totals(&agent_a, &Tuple::new(b1, a1, "ICMP", 0, 0), (4, 4 * PING));
    expect_totals(&agent_b, &Tuple::new(b1, a1, "ICMP", 0, 0), (4, 4 * PING));
    assert_eq!(agent_a.counter("plaintext_inter_node_flows"), 0);

    // Bypassing the tunnel: flagged plaintext, with counters, and found by --plaintext.
    ping(na, "a1", b2, 3);
    let recs = expect_totals(&agent_a, &Tuple::new(a1, b2, "ICMP", 8, 0), (3, 3 * PING));
    for r in &recs {
        assert_eq!(r["encrypted"], false, "{r}");
        assert_eq!(r["inter_node"], true, "{r}");
        assert_eq!(r["plaintext_inter_node"], true, "{r}");
        assert_eq!(r["interfaces"], json!([va1]), "{r}");
    }
    let recs_b = expect_totals(&agent_b, &Tuple::new(a1, b2, "ICMP", 8, 0), (3, 3 * PING));
    assert!(
        recs_b.iter().all(|r| r["plaintext_inter_node"] == true),
        "{recs_b:#?}"
    );
    let flagged = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        (agent_a.counter("plaintext_inter_node_flows") >= 2).then_some(())
    });
    assert!(flagged.is_some(), "plaintext counter did not grow");
    assert!(agent_a.counter("plaintext_inter_node_bytes") >= 6 * PING);
    let plain = agent_a.flows(&["--plaintext"]);
    assert!(!plain.is_empty() && plain.iter().all(|r| r["plaintext_inter_node"] == true));
    let enc = agent_a.flows(&["--encrypted"]);
    assert!(!enc.is_empty() && enc.iter().all(|r| r["encrypted"] == true));

    // Same-node traffic on a node with WireGuard: exact, same-node, not encrypted, not flagged.
    ping(na, "a1", a2, 2);
    let recs = expect_totals(&agent_a, &Tuple::new(a1, a2, "ICMP", 8, 0), (2, 2 * PING));
    for r in &recs {
        assert_eq!(r["same_node"], true, "{r}");
        assert_eq!(r["inter_node"], false, "{r}");
        assert_eq!(r["encrypted"], false, "{r}");
        assert!(
            r.get("plaintext_inter_node").is_none_or(|v| v == false),
            "{r}"
        );
    }
}

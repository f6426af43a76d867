//! End-to-end: two "node" namespaces joined by an underlay veth and a real WireGuard tunnel
//! (Debian's wireguard-go + wg, unique interface names), pods behind veths on each, podflow on
//! both nodes. Traffic between pods of the two nodes through the tunnel is counted once per node
//! with the inner pod addresses and marked encrypted; a second inter-node path that bypasses the
//! tunnel is flagged plaintext; same-node traffic on a node with WireGuard stays exact and
//! same-node. Privileged (root).
use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::{
    agent::{Agent, Tuple, expect_totals},
    privileged,
};
use podflow_testbed::{Netns, Node, unique_prefix, wait_for};
use serde_json::{Value, json};

const PING: u64 = 84;

/// A wireguard-go process in a namespace; killed on drop (its UAPI socket goes with it).
struct WireguardGo(Child);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keypair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = String::from_utf8(
        Command::new("wg")
            .arg("genkey")
            .output()
            .expect("wg genkey")
            .stdout,
    )
    .expect("utf8");
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, &key).expect("write key");
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), key.as_bytes()).expect("key");
    let out = child.wait_with_output().expect("pubkey");
    (
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Starts wireguard-go for `ifname` inside `ns` and waits until the device exists.
fn wireguard(ns: &Netns, ifname: &str) -> WireguardGo {
    let child = ns
        .command("wireguard-go")
        .args(["-f", ifname])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go");
    let wg = WireguardGo(child);
    let up = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        ns.ip(&["link", "show", ifname]).ok()
    });
    assert!(up.is_some(), "wireguard-go did not create {ifname}");
    wg
}

fn pod_json(name: &str, ip: Ipv4Addr, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "labels": {"app": name},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "startTime": "2026-01-01T00:00:00Z"}
    })
}

fn node_json(name: &str, ip: Ipv4Addr, cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}")},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}
    })
}

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
    let p = unique_prefix("w");
    let mut na = Node::new(&format!("{p}a"), 65).expect("node a");
    let mut nb = Node::new(&format!("{p}b"), 66).expect("node b");
    let (va1, va2, vb1, vb2) = (
        format!("veth{p}a1"),
        format!("veth{p}a2"),
        format!("veth{p}b1"),
        format!("veth{p}b2"),
    );
    na.add_pod("a1", &va1).expect("a1");
    na.add_pod("a2", &va2).expect("a2");
    nb.add_pod("b1", &vb1).expect("b1");
    nb.add_pod("b2", &vb2).expect("b2");
    let ip = |n: &Node, pod: &str| n.pod(pod).expect("pod").ipv4;
    let (a1, a2, b1, b2) = (ip(&na, "a1"), ip(&na, "a2"), ip(&nb, "b1"), ip(&nb, "b2"));

    // Underlay between the two node namespaces (names that match no pod pattern).
    let (ula, ulb) = (format!("ul{p}a"), format!("ul{p}b"));
    na.ns
        .ip(&[
            "link",
            "add",
            &ula,
            "type",
            "veth",
            "peer",
            "name",
            &ulb,
            "netns",
            nb.ns.name(),
        ])
        .expect("underlay");
    for (n, dev, addr) in [(&na, &ula, "10.250.0.1/24"), (&nb, &ulb, "10.250.0.2/24")] {
        n.ns.ip(&["addr", "add", addr, "dev", dev])
            .expect("underlay addr");
        n.ns.ip(&["link", "set", dev, "up"]).expect("underlay up");
        for k in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            n.ns.sysctl(k, "0").expect("rp_filter");
        }
    }

    // WireGuard between the nodes, for b1 <-> a1 and a2.
    let keys = tempfile::tempdir().expect("keys");
    let (wga, wgb) = (format!("wg{p}a"), format!("wg{p}b"));
    let _wg_a = wireguard(&na.ns, &wga);
    let _wg_b = wireguard(&nb.ns, &wgb);
    let (key_a, pub_a) = keypair(keys.path(), "a");
    let (key_b, pub_b) = keypair(keys.path(), "b");
    for (n, dev, key, peer, endpoint, allowed) in [
        (
            &na,
            &wga,
            &key_a,
            &pub_b,
            "10.250.0.2:51820",
            "10.66.0.0/24",
        ),
        (
            &nb,
            &wgb,
            &key_b,
            &pub_a,
            "10.250.0.1:51820",
            "10.65.0.0/24",
        ),
    ] {
        n.ns.exec(
            "wg",
            &[
                "set",
                dev,
                "private-key",
                &key.to_string_lossy(),
                "listen-port",
                "51820",
                "peer",
                peer,
                "endpoint",
                endpoint,
                "allowed-ips",
                allowed,
            ],
        )
        .expect("wg set");
        n.ns.ip(&["link", "set", dev, "up"]).expect("wg up");
    }
    // a1, a2 <-> b1 through the tunnel.
    na.ns
        .ip(&["route", "add", &format!("{b1}/32"), "dev", &wga])
        .expect("route");
    nb.ns
        .ip(&["route", "add", &format!("{a1}/32"), "dev", &wgb])
        .expect("route");
    nb.ns
        .ip(&["route", "add", &format!("{a2}/32"), "dev", &wgb])
        .expect("route");
    // a1 <-> b2 over the plain underlay, both ways (policy routing for b2's replies on node b).
    na.ns
        .ip(&[
            "route",
            "add",
            &format!("{b2}/32"),
            "via",
            "10.250.0.2",
            "dev",
            &ula,
        ])
        .expect("route");
    nb.ns
        .ip(&["rule", "add", "from", &b2.to_string(), "table", "100"])
        .expect("rule");
    nb.ns
        .ip(&[
            "route",
            "add",
            "10.65.0.0/24",
            "via",
            "10.250.0.1",
            "dev",
            &ulb,
            "table",
            "100",
        ])
        .expect("route");

    let meta = tempfile::tempdir().expect("meta");
    let file = meta.path().join("cluster.json");
    let (node_a, node_b) = (format!("{p}a-node"), format!("{p}b-node"));
    let items = vec![
        pod_json("a1", a1, &node_a),
        pod_json("a2", a2, &node_a),
        pod_json("b1", b1, &node_b),
        pod_json("b2", b2, &node_b),
        node_json(&node_a, na.ipv4, "10.65.0.0/24"),
        node_json(&node_b, nb.ipv4, "10.66.0.0/24"),
    ];
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .expect("metadata file");

    let agent_a = start_agent(&na, &node_a, &file);
    let agent_b = start_agent(&nb, &node_b, &file);
    agent_a.wait_attached(&[&va1, &va2, &wga], Duration::from_secs(10));
    agent_b.wait_attached(&[&vb1, &vb2, &wgb], Duration::from_secs(10));
    let st = agent_a.status().expect("status");
    let wg_iface = st["interfaces"]
        .as_array()
        .and_then(|is| is.iter().find(|i| i["name"] == wga.as_str()))
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
    ping(&na, "a1", b1, 4);
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
        assert_eq!(r["dst"]["node"], node_b.as_str(), "{r}");
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
    ping(&na, "a1", b2, 3);
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
    ping(&na, "a1", a2, 2);
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

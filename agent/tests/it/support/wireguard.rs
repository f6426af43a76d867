//! Two "node" namespaces joined by an underlay veth and a real WireGuard tunnel (Debian's
//! wireguard-go + wg, unique interface names), two pods on each ([`TwoNodes`]), and the
//! Kubernetes objects that name them ([`pod_json`], [`TwoNodes::write_metadata`]).
//!
//! Routes: a1, a2 <-> b1 go through the tunnel; a1 <-> b2 go over the plain underlay, both ways
//! (a path that bypasses WireGuard between two nodes that have it).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use podflow_testbed::{Netns, Node, unique_prefix, wait_for};
use serde_json::{Value, json};

/// A wireguard-go process in a namespace; killed on drop (its UAPI socket goes with it).
struct WireguardGo(Child);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
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

/// A running pod in namespace `demo`, named `name`, on `node`, labelled `app: name`.
pub fn pod_json(name: &str, ip: Ipv4Addr, node: &str) -> Value {
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

/// Node a (pods a1, a2; pod range 10.65.0.0/24) and node b (pods b1, b2; 10.66.0.0/24), the
/// underlay `ul<prefix>a`/`ul<prefix>b` (10.250.0.1/.2), WireGuard `wga`/`wgb`. Everything is removed on drop
/// (wireguard-go first, then the pods' and nodes' namespaces).
pub struct TwoNodes {
    // Field order is drop order: the tunnel processes go before their namespaces.
    _wg_a: WireguardGo,
    _wg_b: WireguardGo,
    /// The keys and the metadata file.
    dir: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    /// Host-side veths of a1, a2, b1, b2.
    pub va1: String,
    pub va2: String,
    pub vb1: String,
    pub vb2: String,
    /// The WireGuard devices of node a and b.
    pub wga: String,
    pub wgb: String,
    pub a1: Ipv4Addr,
    pub a2: Ipv4Addr,
    pub b1: Ipv4Addr,
    pub b2: Ipv4Addr,
    /// The Kubernetes names of the nodes (`<prefix>a-node`, `<prefix>b-node`).
    pub node_a: String,
    pub node_b: String,
}

impl TwoNodes {
    /// Builds the topology under a unique prefix made from `tag` (one or two letters).
    pub fn build(tag: &str) -> TwoNodes {
        let p = unique_prefix(tag);
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
        let dir = tempfile::tempdir().expect("keys");
        let (wga, wgb) = (format!("wg{p}a"), format!("wg{p}b"));
        let wg_a = wireguard(&na.ns, &wga);
        let wg_b = wireguard(&nb.ns, &wgb);
        let (key_a, pub_a) = keypair(dir.path(), "a");
        let (key_b, pub_b) = keypair(dir.path(), "b");
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

        TwoNodes {
            _wg_a: wg_a,
            _wg_b: wg_b,
            dir,
            a: na,
            b: nb,
            va1,
            va2,
            vb1,
            vb2,
            wga,
            wgb,
            a1,
            a2,
            b1,
            b2,
            node_a: format!("{p}a-node"),
            node_b: format!("{p}b-node"),
        }
    }

    /// Writes a metadata file (a `v1` `List`) of `pods` and the two nodes (with their pod
    /// ranges and addresses) into the topology's directory; returns its path.
    pub fn write_metadata(&self, pods: Vec<Value>) -> PathBuf {
        let mut items = pods;
        items.push(node_json(&self.node_a, self.a.ipv4, "10.65.0.0/24"));
        items.push(node_json(&self.node_b, self.b.ipv4, "10.66.0.0/24"));
        let file = self.dir.path().join("cluster.json");
        std::fs::write(
            &file,
            json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        )
        .expect("metadata file");
        file
    }
}

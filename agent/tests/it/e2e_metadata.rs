//! End-to-end: pods in network namespaces, named by a static metadata file in the format of
//! `kubectl get pods,services,nodes -A -o json`; flows read back through `podflow tail -o json`
//! carry the right `src`/`dst` objects, the metadata filters work, and a reused pod IP is
//! attributed to the pod that owned it when the packets were seen. Privileged (root).
use std::{net::Ipv4Addr, time::Duration};

use crate::support::{
    agent::{Agent, Tuple, expect_totals},
    privileged,
};
use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::{Value, json};

fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A Running pod as `kubectl get -o json` prints it (the fields the agent reads, and a few more).
fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    ip: Ipv4Addr,
    node: &str,
    rs: Option<&str>,
    started: &str,
) -> Value {
    let mut meta = json!({
        "name": name, "namespace": ns, "uid": uid,
        "labels": {"app": name.split('-').next().unwrap_or(name)},
        "creationTimestamp": started,
        "managedFields": [{"manager": "kubelet", "operation": "Update"}],
    });
    if let Some(rs) = rs {
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
            "uid": format!("rs-{rs}"), "controller": true, "blockOwnerDeletion": true
        }]);
        meta["labels"]["pod-template-hash"] = json!(rs.rsplit('-').next().unwrap_or(""));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "hostIP": "10.63.255.1", "startTime": started}
    })
}

fn node_obj(name: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("node-{name}"), "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.63.0.0/24", "podCIDRs": ["10.63.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()},
                                  {"type": "Hostname", "address": name}]}
    })
}

fn list(items: Vec<Value>) -> String {
    serde_json::to_string_pretty(&json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}))
        .expect("json")
}

/// Writes the file atomically (as a config-map update or `kubectl ... > tmp && mv` would).
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write metadata");
    std::fs::rename(&tmp, path).expect("rename metadata");
}

fn ping(node: &Node, from: &str, to: Ipv4Addr, count: u32) {
    let c = count.to_string();
    node.pod(from)
        .expect("pod")
        .ns
        .exec(
            "ping",
            &["-c", &c, "-i", "0.2", "-W", "2", "-q", &to.to_string()],
        )
        .expect("ping");
}

#[test]
fn flows_name_pods_from_the_static_metadata_file() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("m");
    let mut node = Node::new(&p, 63).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("pod a");
    node.add_pod("b", &vb).expect("pod b");
    let a = node.pod("a").unwrap().ipv4;
    let b = node.pod("b").unwrap().ipv4;
    let long_ago = rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.json");
    let frontend = pod(
        "shop",
        "frontend-7d9f-x2x7q",
        "uid-frontend",
        a,
        "e2e-node",
        Some("frontend-7d9f"),
        &long_ago,
    );
    let api_v1 = pod(
        "payments",
        "api-5c4b-k8s9z",
        "uid-api-1",
        b,
        "e2e-node",
        Some("api-5c4b"),
        &long_ago,
    );
    write_atomically(
        &file,
        &list(vec![
            frontend.clone(),
            api_v1,
            node_obj("e2e-node", node.ipv4),
        ]),
    );

    let agent = Agent::start(
        &node,
        &[
            "--metadata-file",
            &file.to_string_lossy(),
            "--cluster-cidr",
            "10.63.0.0/16",
        ],
    );
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));

    ping(&node, "a", b, 3);
    let recs = expect_totals(&agent, &Tuple::new(a, b, "ICMP", 8, 0), (3, 3 * 84));
    for r in &recs {
        assert_eq!(r["src"]["kind"], "pod", "{r}");
        assert_eq!(r["src"]["namespace"], "shop", "{r}");
        assert_eq!(r["src"]["pod"], "frontend-7d9f-x2x7q", "{r}");
        assert_eq!(r["src"]["uid"], "uid-frontend", "{r}");
        assert_eq!(r["src"]["workload_kind"], "Deployment", "{r}");
        assert_eq!(r["src"]["workload"], "frontend", "{r}");
        assert_eq!(r["src"]["labels"]["app"], "frontend", "{r}");
        assert_eq!(r["src"]["node"], "e2e-node", "{r}");
        assert_eq!(r["dst"]["namespace"], "payments", "{r}");
        assert_eq!(r["dst"]["pod"], "api-5c4b-k8s9z", "{r}");
        assert_eq!(r["dst"]["uid"], "uid-api-1", "{r}");
        assert_eq!(r["dst"]["workload"], "api", "{r}");
        assert_eq!(r["inter_node"], false, "{r}");
        assert!(r["metadata_age_seconds"].as_f64().is_some(), "{r}");
    }
    // The node's own address is kind "node".
    ping(&node, "a", node.ipv4, 1);
    let recs = expect_totals(&agent, &Tuple::new(a, node.ipv4, "ICMP", 8, 0), (1, 84));
    assert_eq!(recs[0]["dst"]["kind"], "node", "{}", recs[0]);
    assert_eq!(recs[0]["dst"]["node"], "e2e-node", "{}", recs[0]);

    // Metadata filters, in tail and hence in the API.
    let only = |args: &[&str]| -> usize {
        agent
            .flows(args)
            .iter()
            .filter(|f| f["protocol"] == "ICMP")
            .count()
    };
    assert!(only(&["-n", "payments"]) > 0);
    assert_eq!(only(&["-n", "kube-system"]), 0);
    assert!(only(&["--pod", "payments/api-5c4b-k8s9z"]) > 0);
    assert!(only(&["--label", "app=frontend"]) > 0);
    assert!(only(&["--workload", "Deployment/api"]) > 0);
    assert_eq!(only(&["--workload", "StatefulSet/api"]), 0);

    // The compact output names the pods instead of the addresses.
    let out = std::process::Command::new(crate::support::BIN)
        .args(["tail", "--server"])
        .arg(&agent.sock)
        .args([
            "--protocol",
            "icmp",
            "--src-ip",
            &a.to_string(),
            "--dst-ip",
            &b.to_string(),
        ])
        .output()
        .expect("tail compact");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shop/frontend-7d9f-x2x7q -> payments/api-5c4b-k8s9z"),
        "compact output: {text}"
    );

    // IP reuse: api v1 goes away and a new pod (other UID, other namespace) gets its address.
    // Records of packets sent before the change keep naming v1, later ones name v2.
    let now = rfc3339(std::time::SystemTime::now() + Duration::from_secs(1));
    let api_v2 = pod(
        "billing",
        "ledger-0",
        "uid-ledger-0",
        b,
        "e2e-node",
        None,
        &now,
    );
    std::thread::sleep(Duration::from_millis(1200));
    write_atomically(
        &file,
        &list(vec![frontend, api_v2, node_obj("e2e-node", node.ipv4)]),
    );
    // Let the agent re-read the file (it polls every second), then send after the new start.
    std::thread::sleep(Duration::from_millis(2500));
    let before: usize = agent.flows(&["--pod", "billing/ledger-0"]).len();
    assert_eq!(
        before, 0,
        "no record names the new pod before it sent anything"
    );
    ping(&node, "a", b, 2);
    let named = wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        let v2 = agent.flows(&["--pod", "billing/ledger-0", "--protocol", "icmp"]);
        let sent: u64 = v2
            .iter()
            .filter(|f| f["src_ip"] == a.to_string() && f["src_port"] == 8)
            .map(|f| f["packets"].as_u64().unwrap_or(0))
            .sum();
        (sent == 2).then_some(v2)
    })
    .unwrap_or_else(|| {
        panic!(
            "new owner not named: {:#?}",
            agent.flows(&["--protocol", "icmp"])
        )
    });
    for r in named.iter().filter(|f| f["src_ip"] == a.to_string()) {
        assert_eq!(r["dst"]["uid"], "uid-ledger-0", "{r}");
        assert_eq!(r["dst"]["workload_kind"], "Pod", "{r}");
    }
    // The old records still name the old owner: 3 echo requests to api v1.
    let v1: u64 = agent
        .flows(&["--pod", "payments/api-5c4b-k8s9z", "--protocol", "icmp"])
        .iter()
        .filter(|f| {
            f["src_ip"] == a.to_string() && f["dst_ip"] == b.to_string() && f["src_port"] == 8
        })
        .map(|f| f["packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        v1, 3,
        "records of packets seen before the IP moved keep the old owner"
    );
}

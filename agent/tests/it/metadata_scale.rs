//! Metadata memory at cluster scale (issue 17 item 5): the real agent names 150 000 pods, from a
//! kubectl file and from the Kubernetes API (the loopback list/watch server, paged as a real API
//! server pages), within 1 KiB of resident memory per pod once loaded and within twice that at
//! the peak of loading; and when the pods go, the memory comes back. Privileged (the agent loads
//! its programs), in a node namespace of its own. The figures are printed for the benchmark.
use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{agent::Agent, kube_mock::MockApi, privileged};
use podflow_testbed::{Node, unique_prefix, wait_for};

const PODS: u32 = 150_000;
/// The budget: resident memory per pod beyond the agent without metadata.
const PER_POD: u64 = 1024;

/// A pod as the API serves it (a Deployment's replica: owner, labels, a container).
fn pod(i: u32) -> Value {
    let app = format!("svc-{}", i % 3000);
    let hash = format!("{:x}5d4f", (i / 50) % 7);
    let rs = format!("{app}-{hash}");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{rs}-{i:06x}"), "namespace": format!("team-{}", i % 200),
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 7919),
            "labels": {"app": app, "pod-template-hash": hash, "tier": "backend", "version": "v1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                "uid": format!("rs-{}", i / 50), "controller": true}],
            "creationTimestamp": "2026-12-01T00:00:00Z"
        },
        "spec": {"nodeName": format!("node-{}", i % 1000),
            "containers": [{"name": "app", "image": "registry.example/app:1.0",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running",
            "podIP": format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255),
            "podIPs": [{"ip": format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)}],
            "startTime": "2026-12-01T00:00:01Z"}
    })
}

fn write_list(path: &Path, n: u32) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[")
        .unwrap();
    for i in 0..n {
        if i > 0 {
            f.write_all(b",").unwrap();
        }
        serde_json::to_writer(&mut f, &pod(i)).unwrap();
    }
    f.write_all(b"]}").unwrap();
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn rss(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

/// The agent's resident memory without metadata, once settled.
fn baseline(node: &Node) -> u64 {
    let agent = Agent::start(node, &["--kubernetes", "off"]);
    std::thread::sleep(Duration::from_secs(3));
    agent.assert_running();
    rss(agent.pid()).0
}

/// Waits for `needle` in the agent's log.
fn wait_log(agent: &Agent, needle: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_for(timeout, Duration::from_millis(200), || {
        agent.assert_running();
        agent.log_text().contains(needle).then_some(())
    })
    .unwrap_or_else(|| panic!("no {needle:?} within {timeout:?}:\n{}", agent.log_text()));
    start.elapsed()
}

/// Checks the budget once loaded and at the peak; prints the figures.
fn check_loaded(source: &str, agent: &Agent, base: u64, took: Duration) -> u64 {
    // Settled: the parse's and the list's garbage returned.
    std::thread::sleep(Duration::from_secs(3));
    let (steady, peak) = rss(agent.pid());
    let per_pod = steady.saturating_sub(base) / u64::from(PODS);
    println!(
        "{source}: {PODS} pods loaded in {took:.1?}: resident {:.1} MiB (agent without metadata \
         {:.1} MiB): {per_pod} B per pod; peak {:.1} MiB ({:.2}x)",
        mib(steady),
        mib(base),
        mib(peak),
        peak as f64 / steady as f64
    );
    assert!(per_pod <= PER_POD, "{source}: {per_pod} B per pod");
    assert!(peak <= 2 * steady, "{source}: peak {peak} > 2 x {steady}");
    steady
}

/// Once the pods are gone and their tombstones expired, the memory is back near the baseline.
fn check_returned(source: &str, agent: &Agent, base: u64, loaded: u64) {
    let back = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        let now = rss(agent.pid()).0;
        (now <= base + (32 << 20)).then_some(now)
    });
    let now = rss(agent.pid()).0;
    println!(
        "{source}: pods gone: resident {:.1} MiB (was {:.1} MiB loaded)",
        mib(now),
        mib(loaded)
    );
    assert!(
        back.is_some(),
        "{source}: {now} B resident after the pods went"
    );
}

#[test]
fn a_150k_pod_file_fits_1_kib_per_pod_and_is_given_back() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("m");
    let node = Node::new(&p, 75).expect("node");
    let base = baseline(&node);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.json");
    write_list(&path, PODS);
    let agent = Agent::start(
        &node,
        &[
            "--kubernetes",
            "off",
            "--metadata-file",
            path.to_str().unwrap(),
            "--tombstone-ttl",
            "5s",
        ],
    );
    let took = wait_log(&agent, "metadata file loaded", Duration::from_secs(120));
    let loaded = check_loaded("file", &agent, base, took);
    // Down to 3 pods (an atomic replace, as kubectl > tmp && mv would).
    let tmp = dir.path().join("pods.tmp");
    write_list(&tmp, 3);
    std::fs::rename(&tmp, &path).unwrap();
    wait_log(&agent, "reloaded", Duration::from_secs(30));
    check_returned("file", &agent, base, loaded);
}

#[test]
fn a_150k_pod_cluster_fits_1_kib_per_pod_and_is_given_back() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("k");
    let node = Node::new(&p, 76).expect("node");
    let base = baseline(&node);
    // The API server inside the node's namespace, where the agent reaches it on loopback.
    let listener = node
        .ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .expect("listener in the node namespace");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(MockApi::start_on(listener));
    for i in 0..PODS {
        api.upsert("pods", pod(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            api.kube_config().cluster_url.authority().unwrap()
        ),
    )
    .unwrap();
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    let agent = Agent::start_wrapped(
        &node,
        "node-7",
        &["env", &env],
        &["--kubernetes", "on", "--tombstone-ttl", "5s"],
    );
    // Both pod watches (this node's, the others') have listed.
    let started = Instant::now();
    let listed = wait_for(Duration::from_secs(300), Duration::from_millis(200), || {
        agent.assert_running();
        (agent.log_text().matches("kubernetes pods listed").count() >= 2).then_some(())
    });
    assert!(listed.is_some(), "{}", agent.log_text());
    let took = started.elapsed();
    let loaded = check_loaded("kubernetes", &agent, base, took);
    for i in 0..PODS {
        api.delete("pods", pod(i)["metadata"]["uid"].as_str().unwrap());
    }
    check_returned("kubernetes", &agent, base, loaded);
    drop(agent);
    drop(rt);
}

//! The deploy manifests agree with the agent: the DaemonSet adds exactly the capabilities
//! `podflow::privileges::required_capabilities()` names (the list the start-up check and the
//! setpriv end-to-end test use), and passes only flags the agent knows.
//! (The full manifest checks, with kustomize, schemas and promtool, are `cargo xtask test`'s.)
#![expect(clippy::expect_used, reason = "tests")]
use std::path::PathBuf;

use clap::Args as _;
use podflow::privileges::required_capabilities;
use serde_yaml::Value;

fn deploy(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(rel)).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn agent_container(docs: &[Value]) -> Value {
    let ds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "podflow-agent")
        .collect();
    assert_eq!(ds.len(), 1, "one agent DaemonSet");
    let containers = ds[0]["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    containers[0].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemonset_adds_exactly_the_required_capabilities() {
    let mut want: Vec<String> = required_capabilities()
        .iter()
        .map(|(name, _)| name.strip_prefix("CAP_").expect("CAP_ prefix").to_string())
        .collect();
    want.sort();
    assert_eq!(want, ["BPF", "NET_ADMIN", "PERFMON"]);
    for file in ["podflow.yaml", "kustomize/base/agent-daemonset.yaml"] {
        let c = agent_container(&docs(file));
        let caps = &c["securityContext"]["capabilities"];
        let mut added = strings(&caps["add"]);
        added.sort();
        assert_eq!(added, want, "{file}: capabilities.add");
        assert_eq!(strings(&caps["drop"]), ["ALL"], "{file}: capabilities.drop");
        assert_eq!(
            c["securityContext"]["privileged"].as_bool(),
            Some(false),
            "{file}"
        );
    }
}

/// Flags the manifests pass that the agent does not have yet (health and metrics listeners,
/// collector export with TLS). Remove each from here once `podflow agent` has it.
const PENDING_FLAGS: &[&str] = &[
    "health-listen",
    "metrics-listen",
    "collector",
    "tls-ca",
    "tls-cert",
    "tls-key",
];
/// Global flags of `podflow` (main.rs), accepted after the subcommand.
const GLOBAL_FLAGS: &[&str] = &["log-format"];

#[test]
fn daemonset_passes_only_flags_the_agent_knows() {
    let cmd = podflow::agent::AgentArgs::augment_args(clap::Command::new("agent"));
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    assert!(known.iter().any(|k| k == "flush-interval"), "{known:?}");
    for file in ["podflow.yaml", "kustomize/base/agent-daemonset.yaml"] {
        let args = strings(&agent_container(&docs(file))["args"]);
        assert_eq!(args.first().map(String::as_str), Some("agent"), "{file}");
        for a in &args[1..] {
            let flag = a
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{file}: {a:?} is not --flag=value"));
            let name = flag.split_once('=').map_or(flag, |(n, _)| n);
            assert!(
                known.iter().any(|k| k == name)
                    || PENDING_FLAGS.contains(&name)
                    || GLOBAL_FLAGS.contains(&name),
                "{file}: `podflow agent` has no --{name}"
            );
        }
    }
}

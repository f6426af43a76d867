//! The deploy manifests agree with the agent: the DaemonSet adds exactly the capabilities
//! `podflow::privileges::required_capabilities()` names (the list the start-up check and the
//! setpriv end-to-end test use), and passes only flags the agent knows.
//! (The full manifest checks, with kustomize, schemas and promtool, are `cargo xtask test`'s.)
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

/// Global flags of `podflow` (main.rs), accepted after the subcommand.
const GLOBAL_FLAGS: &[&str] = &["log-format"];

fn container(docs: &[Value], kind: &str, name: &str) -> Value {
    let objs: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(objs.len(), 1, "one {kind} {name}");
    objs[0]["spec"]["template"]["spec"]["containers"][0].clone()
}

/// Every `--flag=value` of a manifest container is a flag of the subcommand (or global).
fn assert_known_flags(file: &str, args: &[String], sub: &str, cmd: clap::Command) {
    let known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    assert!(known.len() > 3, "{known:?}");
    assert_eq!(args.first().map(String::as_str), Some(sub), "{file}");
    for a in &args[1..] {
        let flag = a
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("{file}: {a:?} is not --flag=value"));
        let name = flag.split_once('=').map_or(flag, |(n, _)| n);
        assert!(
            known.iter().any(|k| k == name) || GLOBAL_FLAGS.contains(&name),
            "{file}: `podflow {sub}` has no --{name}"
        );
    }
}

#[test]
fn manifests_pass_only_flags_podflow_knows() {
    for file in ["podflow.yaml", "kustomize/base/agent-daemonset.yaml"] {
        let args = strings(&agent_container(&docs(file))["args"]);
        let cmd = podflow::agent::AgentArgs::augment_args(clap::Command::new("agent"));
        assert_known_flags(file, &args, "agent", cmd);
    }
    for file in ["podflow.yaml", "kustomize/base/collector-deployment.yaml"] {
        let args = strings(&container(&docs(file), "Deployment", "podflow-collector")["args"]);
        let cmd = podflow::collector::CollectorArgs::augment_args(clap::Command::new("collector"));
        assert_known_flags(file, &args, "collector", cmd);
    }
}

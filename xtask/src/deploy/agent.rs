//! The agent DaemonSet: host networking, scheduling, mounts, flags, probes and configuration.
use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Toleration},
    scheduling::v1::PriorityClass,
};

use super::{
    AGENT,
    container::{args, check_arg_references, container_env, flag_values, named_port, port_of},
    hardening::check_container_hardening,
    objects::{Object, all, name_of, named},
    overlays::Overlay,
    problems::Problems,
    tls::check_tls,
};

/// Capabilities the agent container adds (after dropping ALL). Equal to
/// `podflow::privileges::required_capabilities()` without the `CAP_` prefix (checked by
/// agent/tests/it/deploy_manifests.rs).
pub const AGENT_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// The only host paths the agent mounts.
pub const AGENT_HOST_PATHS: &[&str] = &["/run/podflow", "/sys/fs/bpf"];

/// The agent: exactly one DaemonSet, [`AGENT`], its pod, container and configuration.
pub fn check_agent(p: &mut Problems, objects: &[Object], overlay: &Overlay) {
    let dss: Vec<&DaemonSet> = all(objects).collect();
    let Some(ds) = dss
        .iter()
        .copied()
        .find(|d| name_of(*d) == AGENT)
        .filter(|_| dss.len() == 1)
    else {
        p.push(format!("expected exactly one DaemonSet, {AGENT}"));
        return;
    };
    let template = ds.spec.as_ref().map(|s| &s.template);
    let Some(pod) = template.and_then(|t| t.spec.as_ref()) else {
        p.push("agent DaemonSet has no pod template".into());
        return;
    };
    p.expect(pod.host_network == Some(true), || {
        "agent: hostNetwork must be true".into()
    });
    p.expect(pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"), || {
        "agent: dnsPolicy must be ClusterFirstWithHostNet (hostNetwork, resolves the collector Service)".into()
    });
    for (host, set) in [("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)] {
        p.expect(set != Some(true), || {
            format!("agent: {host} must not be set")
        });
    }
    p.expect(pod.service_account_name.as_deref() == Some(AGENT), || {
        format!("agent: serviceAccountName must be {AGENT}")
    });
    p.expect(pod.init_containers.is_none(), || {
        "agent: no init containers expected".into()
    });
    // The untyped check was "a mapping with the single key operator: Exists"; typed, that is a
    // toleration whose operator is Exists and whose every other field is unset. (Keys the model
    // does not know are not seen here; kubernetes-validate --strict rejects them.)
    let tolerate_all = Toleration {
        operator: Some("Exists".into()),
        ..Toleration::default()
    };
    p.expect(
        pod.tolerations.iter().flatten().any(|t| *t == tolerate_all),
        || "agent: tolerations must include {operator: Exists} (every taint, every node)".into(),
    );
    match pod.priority_class_name.as_deref() {
        Some("system-node-critical") => {}
        Some(pc) => {
            let value = named::<PriorityClass>(objects, pc).map(|c| c.value);
            p.expect(value.is_some_and(|v| v >= 1_000_000_000), || {
                format!("agent: priority class {pc} must be defined here with value >= 1000000000")
            });
        }
        None => p.push("agent: no priorityClassName".into()),
    }

    let containers = &pod.containers;
    p.expect(containers.len() == 1, || {
        format!("agent: expected one container, found {}", containers.len())
    });
    let Some(c) = containers.first() else { return };
    check_container_hardening(p, "agent", pod, c, AGENT_CAPABILITIES);
    // The container's user, else the pod's.
    let run_as_user = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.security_context.as_ref()?.run_as_user);
    p.expect(run_as_user == Some(0), || {
        "agent: runAsUser must be 0 (capabilities do not survive execve for non-root without ambient caps)".into()
    });

    // NODE_NAME from the downward API.
    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME");
    let field_path = node_name
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    p.expect(field_path == Some("spec.nodeName"), || {
        "agent: env NODE_NAME must come from fieldRef spec.nodeName".into()
    });

    // Volumes: host paths exactly /sys/fs/bpf and /run/podflow, each mounted where it is on the host.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| Some(v.host_path.as_ref()?.path.as_str()))
        .collect();
    p.expect(
        host_paths == AGENT_HOST_PATHS.iter().copied().collect(),
        || format!("agent: host paths must be exactly {AGENT_HOST_PATHS:?}, are {host_paths:?}"),
    );
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let volume_of = |mount_path: &str| {
        let m = mounts.iter().find(|m| m.mount_path == mount_path)?;
        volumes.iter().find(|v| v.name == m.name)
    };
    for path in AGENT_HOST_PATHS {
        let host_path = volume_of(path).and_then(|v| Some(v.host_path.as_ref()?.path.as_str()));
        p.expect(host_path == Some(*path), || {
            format!("agent: {path} must be mounted from the host's {path}")
        });
        // The socket is created in /run/podflow and --pin-dir pins under /sys/fs/bpf: a
        // read-only mount fails the agent at start (EROFS; seen in containerd).
        let read_only = mounts
            .iter()
            .find(|m| m.mount_path == *path)
            .and_then(|m| m.read_only);
        p.expect(read_only != Some(true), || {
            format!("agent: {path} must be mounted writable (the agent creates files there)")
        });
    }

    // Flags.
    let flags = flag_values(c);
    let one = |f: &str| {
        flags
            .get(f)
            .and_then(|v| (v.len() == 1).then(|| v[0].as_str()))
    };
    p.expect(args(c).first().map(String::as_str) == Some("agent"), || {
        "agent: args must start with `agent`".into()
    });
    p.expect(
        one("socket").is_some_and(|s| s.starts_with("/run/podflow/")),
        || "agent: --socket must be under /run/podflow (the host mount)".into(),
    );
    p.expect(
        one("pin-dir").is_some_and(|d| d.starts_with("/sys/fs/bpf/")),
        || {
            "agent: --pin-dir under /sys/fs/bpf (the host's bpffs) keeps counting across \
             restarts and upgrades"
                .into()
        },
    );
    if let Some(listen) = one("listen") {
        p.expect(listen.starts_with("127.0.0.1:") || listen.starts_with("[::1]:"), || {
            format!("agent: --listen={listen} would expose the unauthenticated API on the node's addresses")
        });
    }
    let health = one("health-listen");
    p.expect(health.is_some_and(|h| h.starts_with("0.0.0.0:")), || {
        "agent: --health-listen=0.0.0.0:PORT needed (the kubelet probes the node IP)".into()
    });
    let health_port = health.and_then(port_of);
    for (probe, pr) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(pr) = pr else {
            p.expect(probe == "startupProbe", || format!("agent: no {probe}"));
            continue;
        };
        let grpc_port = pr.grpc.as_ref().map(|g| i64::from(g.port));
        p.expect(health_port.is_some() && grpc_port == health_port, || {
            format!(
                "agent: {probe} must be a grpc probe on the --health-listen port {health_port:?}"
            )
        });
    }
    let metrics_port = one("metrics-listen").and_then(port_of);
    p.expect(metrics_port.is_some(), || {
        "agent: no --metrics-listen".into()
    });
    p.expect(named_port(c, "metrics") == metrics_port, || {
        "agent: container port `metrics` must be the --metrics-listen port".into()
    });
    p.expect(named_port(c, "health") == health_port, || {
        "agent: container port `health` must be the --health-listen port".into()
    });
    let annotated_port = template
        .and_then(|t| t.metadata.as_ref()?.annotations.as_ref())
        .and_then(|a| a.get("prometheus.io/port"))
        .and_then(|port| port.parse::<i64>().ok());
    p.expect(annotated_port == metrics_port, || {
        "agent: annotation prometheus.io/port must be the metrics port".into()
    });
    check_tls(p, "agent", "tls-ca", &flags, pod, c);

    // $(VAR) references resolve; the agent's configuration is the overlay's.
    let config = c
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| Some(e.config_map_ref.as_ref()?.name.as_str()))
        .find_map(|cm| named::<ConfigMap>(objects, cm));
    let config_value = |key: &str| {
        config
            .and_then(|cm| cm.data.as_ref()?.get(key))
            .map(String::as_str)
    };
    check_arg_references(p, "agent", c, &container_env(objects, c));
    for (key, want) in [
        ("PODFLOW_VETH_PATTERNS", overlay.veth_patterns),
        ("PODFLOW_L3_PATTERNS", overlay.l3_patterns),
    ] {
        let have: BTreeSet<&str> = config_value(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        for w in want {
            p.expect(have.contains(w), || {
                format!(
                    "agent: {key} must include {w:?} in overlay {}",
                    overlay.name
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, Volume};

    use super::super::manifests::fixtures::{agent_container, agent_pod, committed, problems};

    #[test]
    fn rejects_pod_wiring_mistakes() {
        let mut d = committed();
        agent_container(&mut d).env = Some(vec![]);
        assert!(problems(&d).contains("NODE_NAME"), "{}", problems(&d));

        let mut d = committed();
        agent_pod(&mut d).host_network = Some(false);
        agent_pod(&mut d).tolerations = Some(vec![]);
        let pr = problems(&d);
        assert!(
            pr.contains("hostNetwork") && pr.contains("tolerations"),
            "{pr}"
        );

        let mut d = committed();
        let liveness = agent_container(&mut d)
            .liveness_probe
            .get_or_insert_default();
        liveness.grpc.get_or_insert_default().port = 9999;
        assert!(
            problems(&d).contains("livenessProbe must be a grpc probe"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        agent_pod(&mut d).volumes = Some(vec![Volume {
            name: "root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: None,
            }),
            ..Volume::default()
        }]);
        assert!(
            problems(&d).contains("host paths must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        let sc = agent_container(&mut d)
            .security_context
            .get_or_insert_default();
        sc.seccomp_profile.get_or_insert_default().type_ = "Unconfined".into();
        assert!(
            problems(&d).contains("seccompProfile must be RuntimeDefault"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        agent_container(&mut d).resources = None;
        agent_pod(&mut d).priority_class_name = Some("low".into());
        let pr = problems(&d);
        assert!(
            pr.contains("no resources.requests.cpu") && pr.contains("priority class low"),
            "{pr}"
        );

        let mut d = committed();
        for m in agent_container(&mut d).volume_mounts.iter_mut().flatten() {
            if m.mount_path == "/sys/fs/bpf" {
                m.read_only = Some(true);
            }
        }
        let pr = problems(&d);
        assert!(
            pr.contains("agent: /sys/fs/bpf must be mounted writable"),
            "{pr}"
        );

        let mut d = committed();
        agent_container(&mut d).args =
            Some(vec!["agent".into(), "--flush-interval=$(NOPE)".into()]);
        let pr = problems(&d);
        assert!(
            pr.contains("$(NOPE)")
                && pr.contains("--health-listen")
                && pr.contains("no --tls-ca")
                && pr.contains("--pin-dir"),
            "{pr}"
        );
    }
}

//! The collector Deployment and its Service: non-root, no host access, gRPC on [`COLLECTOR_PORT`].
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{PodSpec, Service},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    COLLECTOR,
    clickhouse::check_clickhouse,
    container::{args, check_arg_references, container_env, flag_values, named_port, port_of},
    hardening::check_container_hardening,
    objects::{Object, named},
    overlays::Overlay,
    problems::Problems,
    tls::check_tls,
};

/// The collector's gRPC port (`--listen`, Service).
pub const COLLECTOR_PORT: i64 = 4245;

/// The collector Deployment's pod spec.
pub fn collector_pod(objects: &[Object]) -> Option<&PodSpec> {
    named::<Deployment>(objects, COLLECTOR)?
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()
}

/// The collector: the Deployment [`COLLECTOR`], its pod and container (and its ClickHouse store,
/// as `overlay` declares it), and its Service.
pub fn check_collector(p: &mut Problems, objects: &[Object], overlay: &Overlay) {
    let Some(dep) = named::<Deployment>(objects, COLLECTOR) else {
        p.push(format!("no Deployment {COLLECTOR}"));
        return;
    };
    let template = dep.spec.as_ref().map(|s| &s.template);
    let Some(pod) = template.and_then(|t| t.spec.as_ref()) else {
        p.push("collector Deployment has no pod template".into());
        return;
    };
    p.expect(
        pod.service_account_name.as_deref() == Some(COLLECTOR),
        || format!("collector: serviceAccountName must be {COLLECTOR}"),
    );
    p.expect(pod.automount_service_account_token == Some(false), || {
        "collector: automountServiceAccountToken must be false (it calls no Kubernetes API)".into()
    });
    for (host, set) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        p.expect(set != Some(true), || {
            format!("collector: {host} must not be set")
        });
    }
    p.expect(
        pod.volumes.iter().flatten().all(|v| v.host_path.is_none()),
        || "collector: no hostPath volumes".into(),
    );
    let containers = &pod.containers;
    p.expect(containers.len() == 1, || {
        "collector: expected one container".into()
    });
    let Some(c) = containers.first() else { return };
    check_container_hardening(p, "collector", pod, c, &[]);
    // The container's setting, else the pod's.
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod.security_context.as_ref()?.run_as_non_root);
    p.expect(non_root == Some(true), || {
        "collector: runAsNonRoot must be true".into()
    });
    let flags = flag_values(c);
    p.expect(
        args(c).first().map(String::as_str) == Some("collector"),
        || "collector: args must start with `collector`".into(),
    );
    p.expect(
        flags
            .get("listen")
            .and_then(|v| v.first())
            .map(String::as_str)
            == Some(&format!("0.0.0.0:{COLLECTOR_PORT}")),
        || format!("collector: --listen=0.0.0.0:{COLLECTOR_PORT} expected"),
    );
    // The kubelet's grpc probes speak no TLS: they go to the plaintext --health-listen port,
    // never to the (mutual) TLS --listen port, which refuses them.
    let health_port = flags
        .get("health-listen")
        .and_then(|v| v.first())
        .filter(|h| h.starts_with("0.0.0.0:"))
        .and_then(|h| port_of(h));
    p.expect(
        health_port.is_some() && health_port != Some(COLLECTOR_PORT),
        || {
            format!(
                "collector: --health-listen=0.0.0.0:PORT needed, another port than \
                 {COLLECTOR_PORT} (the kubelet's grpc probes speak no TLS)"
            )
        },
    );
    for (probe, pr) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
    ] {
        let grpc_port = pr.as_ref().and_then(|pr| pr.grpc.as_ref());
        p.expect(
            health_port.is_some() && grpc_port.map(|g| i64::from(g.port)) == health_port,
            || format!("collector: {probe} must be a grpc probe on the --health-listen port {health_port:?}"),
        );
    }
    check_tls(p, "collector", "tls-client-ca", &flags, pod, c);
    let env = container_env(objects, c);
    check_arg_references(p, "collector", c, &env);
    check_clickhouse(p, objects, pod, c, &env, overlay.clickhouse);

    // The Service reaches the collector's gRPC port.
    let Some(svc) = named::<Service>(objects, COLLECTOR) else {
        p.push(format!("no Service {COLLECTOR}"));
        return;
    };
    let pod_labels = template.and_then(|t| t.metadata.as_ref()?.labels.as_ref());
    let svc_spec = svc.spec.as_ref();
    let selector = svc_spec.and_then(|s| s.selector.as_ref());
    p.expect(
        selector.is_some_and(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|(k, v)| pod_labels.and_then(|l| l.get(k)) == Some(v))
        }),
        || "collector: the Service's selector does not select the collector pods".into(),
    );
    let grpc = svc_spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .find(|pt| i64::from(pt.port) == COLLECTOR_PORT);
    let target_port = match grpc.and_then(|pt| pt.target_port.as_ref()) {
        Some(IntOrString::String(n)) => named_port(c, n),
        Some(IntOrString::Int(port)) => Some(i64::from(*port)),
        None => None,
    };
    p.expect(target_port == Some(COLLECTOR_PORT), || {
        format!(
            "collector: Service port {COLLECTOR_PORT} must target the container's {COLLECTOR_PORT}"
        )
    });
}

#[cfg(test)]
mod tests {
    use super::super::manifests::fixtures::{collector_pod, committed, problems};

    #[test]
    fn rejects_collector_mistakes() {
        let mut d = committed();
        collector_pod(&mut d).host_network = Some(true);
        collector_pod(&mut d)
            .security_context
            .get_or_insert_default()
            .run_as_non_root = Some(false);
        let pr = problems(&d);
        assert!(
            pr.contains("collector: hostNetwork") && pr.contains("runAsNonRoot"),
            "{pr}"
        );
    }

    #[test]
    fn probes_go_to_the_plaintext_health_port() {
        // A grpc probe on the mutual-TLS port: the kubelet's probe speaks no TLS.
        let mut d = committed();
        let c = &mut collector_pod(&mut d).containers[0];
        if let Some(g) = c.liveness_probe.as_mut().and_then(|p| p.grpc.as_mut()) {
            g.port = 4245;
        }
        let pr = problems(&d);
        assert!(
            pr.contains(
                "collector: livenessProbe must be a grpc probe on the --health-listen port"
            ),
            "{pr}"
        );
        // No --health-listen at all.
        let mut d = committed();
        let c = &mut collector_pod(&mut d).containers[0];
        if let Some(args) = c.args.as_mut() {
            args.retain(|a| !a.starts_with("--health-listen"));
        }
        let pr = problems(&d);
        assert!(
            pr.contains("collector: --health-listen=0.0.0.0:PORT needed"),
            "{pr}"
        );
    }
}

use std::collections::BTreeMap;

use super::*;

fn manifest() -> Manifest {
    Manifest::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/podflow.yaml"))
        .expect("deploy/podflow.yaml")
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/usr/local/bin/podflow".into()],
        cmd: vec!["agent".into()],
        user: (65532, 65532),
    }
}

fn kubelet(dir: &Path, m: &Manifest) -> Kubelet {
    let tls: BTreeMap<String, Vec<u8>> = ["ca.crt", "tls.crt", "tls.key"]
        .iter()
        .map(|k| (k.to_string(), format!("{k} contents").into_bytes()))
        .collect();
    std::fs::create_dir_all(dir.join("host-bpffs")).unwrap();
    Kubelet {
        node_name: "node-1".into(),
        namespace: "podflow".into(),
        dir: dir.to_path_buf(),
        node_netns: "/var/run/netns/n1".into(),
        config_maps: m.config_maps(),
        secrets: [
            ("podflow-agent-tls".to_string(), tls.clone()),
            ("podflow-collector-tls".to_string(), tls),
        ]
        .into_iter()
        .collect(),
        host_paths: [
            ("/run/podflow".to_string(), dir.join("host-run")),
            ("/sys/fs/bpf".to_string(), dir.join("host-bpffs")),
        ]
        .into_iter()
        .collect(),
        seccomp_root: dir.join("seccomp"),
        cluster_dns: [(
            "podflow-collector.podflow.svc".to_string(),
            "10.1.0.2".parse().unwrap(),
        )]
        .into_iter()
        .collect(),
    }
}

/// The value following each occurrence of `flag`.
fn values<'a>(run: &'a CtrRun, flag: &str) -> Vec<&'a str> {
    run.flags
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn the_agent_daemonset_translates_to_ctr_options() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let k = kubelet(dir.path(), &m);
    let spec = m.pod_spec("DaemonSet", "podflow-agent").unwrap();
    let run = k
        .translate(&spec, "agent-pod", "agent", None, &image())
        .unwrap();

    // The manifest's args after the image's entrypoint, the ConfigMap's values expanded.
    assert_eq!(
        run.argv,
        [
            "/usr/local/bin/podflow",
            "agent",
            "--log-format=json",
            "--socket=/run/podflow/podflow.sock",
            "--health-listen=0.0.0.0:4246",
            "--metrics-listen=0.0.0.0:4247",
            "--pin-dir=/sys/fs/bpf/podflow",
            "--collector=podflow-collector.podflow.svc:4245",
            "--tls-ca=/etc/podflow/tls/ca.crt",
            "--tls-cert=/etc/podflow/tls/tls.crt",
            "--tls-key=/etc/podflow/tls/tls.key",
            "--flush-interval=5s",
            "--sample-rate=1",
            "--veth-pattern=veth*,cali*,lxc*,gke*",
            "--l3-pattern=cilium_wg*,wg*",
            "--exclude=lxc_health",
        ]
    );
    assert_eq!(run.user, (0, 0), "runAsUser/runAsGroup 0");
    assert_eq!(run.grace, Duration::from_secs(30));
    assert_eq!(
        m.pod_annotations("DaemonSet", "podflow-agent").unwrap()["prometheus.io/path"],
        "/metrics"
    );
    // drop: [ALL] then add: [BPF, NET_ADMIN, PERFMON].
    let mut drops = values(&run, "--cap-drop");
    drops.sort_unstable();
    let mut defaults = CONTAINERD_DEFAULT_CAPS.to_vec();
    defaults.sort_unstable();
    assert_eq!(drops, defaults);
    assert_eq!(
        values(&run, "--cap-add"),
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
    );
    assert!(run.flags.contains(&"--read-only".to_string()));
    assert!(run.flags.contains(&"--seccomp".to_string()));
    assert!(!run.flags.contains(&"--allow-new-privs".to_string()));
    assert!(!run.flags.contains(&"--privileged".to_string()));
    assert_eq!(values(&run, "--with-ns"), ["network:/var/run/netns/n1"]);
    let env = values(&run, "--env");
    for want in [
        "NODE_NAME=node-1",
        "PODFLOW_COLLECTOR=podflow-collector.podflow.svc:4245",
        "PODFLOW_SAMPLE_RATE=1",
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    let d = dir.path().display();
    assert_eq!(
        values(&run, "--mount"),
        [
            format!("type=bind,src={d}/agent-pod/hosts,dst=/etc/hosts,options=rbind:ro"),
            format!("type=bind,src={d}/agent-pod/image-run,dst=/run,options=rbind:ro"),
            format!("type=bind,src={d}/host-run,dst=/run/podflow,options=rbind:rw"),
            format!("type=bind,src={d}/host-bpffs,dst=/sys/fs/bpf,options=rbind:rw"),
            format!("type=bind,src={d}/agent-pod/secret/tls,dst=/etc/podflow/tls,options=rbind:ro"),
            format!("type=bind,src={d}/agent-pod/empty-dir/tmp,dst=/tmp,options=rbind:rw"),
        ]
    );
    // The Secret's files, with defaultMode 0400; the Service name resolves.
    let key = dir.path().join("agent-pod/secret/tls/tls.key");
    assert_eq!(std::fs::read(&key).unwrap(), b"tls.key contents");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o400
    );
    let hosts = std::fs::read_to_string(dir.path().join("agent-pod/hosts")).unwrap();
    assert!(
        hosts.contains("10.1.0.2\tpodflow-collector.podflow.svc\n"),
        "{hosts}"
    );
    // limits 1 CPU / 1Gi, requests 100m.
    assert_eq!(values(&run, "--memory-limit"), ["1073741824"]);
    assert_eq!(values(&run, "--cpus"), ["1"]);
    assert_eq!(values(&run, "--cpu-shares"), ["102"]);
}

#[test]
fn the_collector_runs_as_nonroot_in_its_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let k = kubelet(dir.path(), &m);
    let spec = m.pod_spec("Deployment", "podflow-collector").unwrap();
    let err = k
        .translate(&spec, "c", "collector", None, &image())
        .unwrap_err();
    assert!(err.to_string().starts_with("spec.hostNetwork"), "{err}");
    let run = k
        .translate(
            &spec,
            "c",
            "collector",
            Some(Path::new("/run/netns/p")),
            &image(),
        )
        .unwrap();
    assert_eq!(run.user, (65532, 65532));
    assert_eq!(run.argv[..2], ["/usr/local/bin/podflow", "collector"]);
    assert!(values(&run, "--cap-add").is_empty());
    assert_eq!(
        values(&run, "--cap-drop").len(),
        CONTAINERD_DEFAULT_CAPS.len()
    );
    assert_eq!(values(&run, "--with-ns"), ["network:/run/netns/p"]);
    // The pod-level seccomp profile applies to the container.
    assert!(run.flags.contains(&"--seccomp".to_string()));
    let key = dir.path().join("c/secret/tls/tls.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o440
    );
}

#[test]
fn an_unknown_field_fails_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let k = kubelet(dir.path(), &m);
    let base = m.pod_spec("DaemonSet", "podflow-agent").unwrap();
    let mut cases: Vec<(PodSpec, &str)> = Vec::new();
    let mut s = base.clone();
    s.host_pid = Some(true);
    cases.push((s, "spec.hostPID"));
    let mut s = base.clone();
    s.init_containers = Some(vec![Container::default()]);
    cases.push((s, "spec.initContainers"));
    let mut s = base.clone();
    s.containers[0].volume_mounts.as_mut().unwrap()[0].sub_path = Some("x".into());
    cases.push((s, "spec.containers[0].volumeMounts[0].subPath"));
    let mut s = base.clone();
    let sc = s.containers[0].security_context.as_mut().unwrap();
    sc.proc_mount = Some("Unmasked".into());
    cases.push((s, "spec.containers[0].securityContext.procMount"));
    let mut s = base;
    s.volumes.as_mut().unwrap()[0].host_path = None;
    s.volumes.as_mut().unwrap()[0].nfs = Some(Default::default());
    cases.push((s, "spec.volumes[0].nfs"));
    for (spec, path) in cases {
        let err = k
            .translate(&spec, "p", "agent", None, &image())
            .expect_err(path);
        assert!(
            matches!(&err, KubeletError::Unknown { path: p } if p == path),
            "{path}: {err}"
        );
    }
}

#[test]
fn settings_that_cannot_run_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest();
    let k = kubelet(dir.path(), &m);
    let base = m.pod_spec("DaemonSet", "podflow-agent").unwrap();
    // runAsNonRoot with UID 0: the kubelet would not start it.
    let mut s = base.clone();
    s.containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .run_as_non_root = Some(true);
    let err = k.translate(&s, "p", "agent", None, &image()).unwrap_err();
    assert!(err.to_string().contains("runAsNonRoot"), "{err}");
    // An arg naming a variable nothing defines.
    let mut s = base.clone();
    s.containers[0]
        .args
        .as_mut()
        .unwrap()
        .push("--x=$(NOPE)".into());
    let err = k.translate(&s, "p", "agent", None, &image()).unwrap_err();
    assert!(err.to_string().contains("$(NOPE) is not defined"), "{err}");
    // A Localhost seccomp profile that is not there.
    let mut s = base.clone();
    s.containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .seccomp_profile = Some(k8s_openapi::api::core::v1::SeccompProfile {
        type_: "Localhost".into(),
        localhost_profile: Some("nope.json".into()),
    });
    let err = k.translate(&s, "p", "agent", None, &image()).unwrap_err();
    assert!(err.to_string().contains("no profile at"), "{err}");
    // capabilities.add: [ALL].
    let mut s = base.clone();
    let caps = s.containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .capabilities
        .as_mut()
        .unwrap();
    caps.add = Some(vec!["ALL".into()]);
    let err = k.translate(&s, "p", "agent", None, &image()).unwrap_err();
    assert!(err.to_string().contains("capabilities.add"), "{err}");
    // A hostPath the test gave no directory for.
    let mut k2 = k.clone();
    k2.host_paths.remove("/run/podflow");
    let err = k2
        .translate(&base, "p", "agent", None, &image())
        .unwrap_err();
    assert!(err.to_string().contains("no test directory"), "{err}");
}

#[test]
fn a_removed_capability_and_a_localhost_profile_translate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("seccomp")).unwrap();
    std::fs::write(dir.path().join("seccomp/p.json"), "{}").unwrap();
    let m = manifest();
    let k = kubelet(dir.path(), &m);
    let mut s = m.pod_spec("DaemonSet", "podflow-agent").unwrap();
    let sc = s.containers[0].security_context.as_mut().unwrap();
    sc.capabilities
        .as_mut()
        .unwrap()
        .add
        .as_mut()
        .unwrap()
        .retain(|c| c != "PERFMON");
    sc.seccomp_profile = Some(k8s_openapi::api::core::v1::SeccompProfile {
        type_: "Localhost".into(),
        localhost_profile: Some("p.json".into()),
    });
    sc.allow_privilege_escalation = None;
    let run = k.translate(&s, "p", "agent", None, &image()).unwrap();
    assert_eq!(values(&run, "--cap-add"), ["CAP_BPF", "CAP_NET_ADMIN"]);
    let profile = dir.path().join("seccomp/p.json").display().to_string();
    assert_eq!(values(&run, "--seccomp-profile"), [profile.as_str()]);
    // Kubernetes' default for allowPrivilegeEscalation is true.
    assert!(run.flags.contains(&"--allow-new-privs".to_string()));
}

#[test]
fn expands_variables_as_the_kubelet_does() {
    let env: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
    assert_eq!(expand("x=$(A)", &env, "p").unwrap(), "x=1");
    assert_eq!(expand("$$(A) $(A)$(A)", &env, "p").unwrap(), "$(A) 11");
    assert_eq!(expand("$A $( $", &env, "p").unwrap(), "$A $( $");
    assert!(expand("$(B)", &env, "p").is_err());
}

#[test]
fn parses_quantities() {
    assert_eq!(quantity_milli("1Gi"), Some(1000 << 30));
    assert_eq!(quantity_milli("256Mi"), Some((1000 * 256) << 20));
    assert_eq!(quantity_milli("100m"), Some(100));
    assert_eq!(quantity_milli("2"), Some(2000));
    assert_eq!(quantity_milli("0.5"), Some(500));
    assert_eq!(quantity_milli("1.5Gi"), Some(1500 << 30));
    assert_eq!(quantity_milli("1x"), None);
    assert_eq!(quantity_milli("Gi"), None);
}

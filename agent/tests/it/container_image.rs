//! The agent's image built here (`podflow_testbed::container`: umoci, no registry) and run by a
//! real container runtime (a private containerd 1.6 with runc): the image holds the binary and
//! exactly its runtime files, imports into containerd, and the binary runs from it as the
//! manifest asks: read-only root, containerd's default seccomp profile, every capability
//! dropped, as `nonroot`; and it is the image deploy/Dockerfile describes (the same files and
//! configuration). The DaemonSet's own settings: `container_manifest.rs`. Privileged (root).
use std::{collections::BTreeSet, path::Path};

use podflow_testbed::container::{self, Containerd};

use crate::support::privileged;

/// The image's files, unpacked into `scratch`; libraries by file name (their directory differs
/// between distributions).
fn tree(layout: &Path, scratch: &Path) -> BTreeSet<String> {
    container::image_files(layout, "test", scratch)
        .unwrap()
        .into_iter()
        .map(|f| {
            if f.contains(".so") {
                f.rsplit('/').next().unwrap_or(&f).to_string()
            } else {
                f
            }
        })
        .collect()
}

/// The final stage of deploy/Dockerfile, as the image it describes: its files (what it states it
/// uses of the base, and its COPY destinations) and its configuration.
struct DockerImage {
    base: String,
    files: BTreeSet<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
}

fn dockerfile_image() -> DockerImage {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"))
            .unwrap();
    // The final stage: from the last FROM on.
    let lines: Vec<&str> = text.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let stage = &lines[last_from..];
    let base = stage[0].split_whitespace().nth(1).unwrap().to_string();
    let mut image = DockerImage {
        base,
        files: BTreeSet::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        user: String::new(),
    };
    let json = |rest: &str| -> Vec<String> { serde_json::from_str(rest.trim()).unwrap() };
    for line in &stage[1..] {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "#" if rest.starts_with("base-files:") || rest.starts_with("base-libraries:") => {
                let list = rest.split_once(':').unwrap().1;
                image.files.extend(
                    list.split_whitespace()
                        .map(|f| f.trim_start_matches('/').to_string()),
                );
            }
            // Comments, LABEL and its continuation lines (indented: an empty first word).
            "#" | "" | "LABEL" | "ARG" => {}
            "COPY" => {
                let dst = rest.split_whitespace().last().unwrap();
                image.files.insert(dst.trim_start_matches('/').to_string());
            }
            "USER" => image.user = rest.trim().to_string(),
            "ENTRYPOINT" => image.entrypoint = json(rest),
            "CMD" => image.cmd = json(rest),
            other => panic!(
                "deploy/Dockerfile's final stage has {other}: the image tests build (umoci) \
                 cannot follow it; change podflow_testbed::container::build_image too and \
                 teach this test"
            ),
        }
    }
    image
}

/// The image configuration an OCI layout's tag `tag` carries.
fn oci_config(layout: &Path, tag: &str) -> serde_json::Value {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |digest: &str| {
        let (alg, hex) = digest.split_once(':').unwrap();
        layout.join("blobs").join(alg).join(hex)
    };
    let index = read(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("the tag");
    let manifest = read(&blob(manifest["digest"].as_str().unwrap()));
    read(&blob(manifest["config"]["digest"].as_str().unwrap()))["config"].clone()
}

/// The Dockerfile (for users with a registry) and the image the tests build with umoci (no
/// registry here) describe the same image: the same files and the same entrypoint, cmd and
/// user. What this covers: the Dockerfile's final stage as written (its COPY destinations, and
/// the base files it states it uses) against the umoci image's real tree; not what the
/// distroless base really holds (nothing can pull it here), nor a Docker build.
#[test]
fn the_dockerfile_and_the_umoci_image_are_the_same_image() {
    if !available() {
        return;
    }
    let docker = dockerfile_image();
    assert_eq!(
        docker.base, "gcr.io/distroless/cc-debian12:nonroot",
        "a new base: check what it holds, and the base-files/base-libraries it states"
    );
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_podflow"));
    let layout = container::build_image(binary, dir.path(), "test").unwrap();
    assert_eq!(tree(&layout, &dir.path().join("check")), docker.files);
    let config = oci_config(&layout, "test");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(strings(&config["Entrypoint"]), docker.entrypoint);
    assert_eq!(strings(&config["Cmd"]), docker.cmd);
    assert_eq!(config["User"].as_str(), Some(docker.user.as_str()));
    // And the translation of the pod specs takes the same defaults.
    let defaults = container::image_config();
    assert_eq!(defaults.entrypoint, docker.entrypoint);
    assert_eq!(defaults.cmd, docker.cmd);
    assert_eq!(
        format!("{}:{}", defaults.user.0, defaults.user.1),
        docker.user
    );
}

/// Whether the tools are there (`cargo xtask setup` installs them).
fn available() -> bool {
    let installed = ["umoci", "containerd", "ctr", "runc"].iter().all(|t| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        installed || std::env::var_os("PODFLOW_SKIP_CONTAINERS").is_some(),
        "umoci, containerd or runc is not installed: run `cargo xtask setup` (or set \
         PODFLOW_SKIP_CONTAINERS=1 to skip)"
    );
    installed
}

#[test]
fn the_image_runs_under_containerd_read_only_without_capabilities() {
    if !privileged() || !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_podflow"));
    let layout = container::build_image(binary, dir.path(), "test").unwrap();

    // Exactly the binary and its runtime files, nothing else.
    let files = tree(&layout, &dir.path().join("check"));
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "ld-linux-x86-64.so.2",
            "libc.so.6",
            "libgcc_s.so.1",
            "libm.so.6",
            "usr/local/bin/podflow",
        ]
    );

    let runtime = Containerd::start().unwrap();
    let image = runtime.import(&layout, "test").unwrap();
    // containerd's default capabilities, each dropped (ctr 1.6 takes no ALL); the process runs
    // as the image's configured user, nonroot (ctr 1.6 has no --user).
    let private = runtime.private_run_flags();
    let mut args = vec!["run", "--rm", "--read-only", "--seccomp"];
    args.extend(private.iter().map(String::as_str));
    for cap in podflow_testbed::kubelet::CONTAINERD_DEFAULT_CAPS {
        args.extend(["--cap-drop", cap]);
    }
    args.extend([
        image.as_str(),
        "podflow-version",
        container::BINARY_PATH,
        "--version",
    ]);
    let run = runtime.ctr(&args).unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.starts_with("podflow "),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        runtime.log()
    );
    // Stopped with nothing left: no mount, no process naming its directory.
    let dir = runtime.dir().to_path_buf();
    drop(runtime);
    assert_eq!(container::leftovers(&dir), Vec::<String>::new());
}

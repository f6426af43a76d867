//! The agent's image built here (`podflow_testbed::container`: umoci, no registry) and run by a
//! real container runtime (a private containerd 1.6 with runc): the image holds the binary and
//! exactly its runtime files, imports into containerd, and the binary runs from it as the
//! manifest asks: read-only root, containerd's default seccomp profile, every capability
//! dropped, as `nonroot`. Issue 15's first step; the DaemonSet's own settings come next.
//! Privileged (root).
use std::collections::BTreeSet;

use podflow_testbed::container::{self, Containerd};

use crate::support::privileged;

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
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(dir.path().join("check"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("check/rootfs");
    let mut files = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
                // The loader's and libraries' directories differ between distributions.
                let name = rel.rsplit('/').next().unwrap().to_owned();
                files.insert(if rel.contains(".so") { name } else { rel });
            }
        }
    }
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "etc/group",
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
    let mut args = vec!["run", "--rm", "--read-only", "--seccomp"];
    for cap in [
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
    ] {
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
}

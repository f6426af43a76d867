//! The agent's container image built here, without pulling anything, and a private containerd
//! to run it (issue 15): the image is an OCI layout written by `umoci` (Debian's package), with
//! the binary and exactly the runtime files it needs — what `gcr.io/distroless/cc` provides: the
//! dynamic loader, libc, libm, libgcc_s, the CA certificates, `/etc/passwd` and `/etc/group`
//! with `root` and `nonroot` (65532). containerd (Debian's 1.6, with runc) runs from a directory
//! of its own (root, state, socket) and is killed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TestbedError, run_checked, wait_for};

/// The `nonroot` user and group of distroless images.
pub const NONROOT: u32 = 65532;

/// Where the binary goes in the image.
pub const BINARY_PATH: &str = "/usr/local/bin/podflow";

/// The shared libraries `binary` loads (from `ldd`), the loader included.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, TestbedError> {
    let out = run_checked(Command::new("ldd").arg(binary))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Builds the image of `binary` as an OCI layout in `dir` (tag `tag`); returns the layout's path.
pub fn build_image(binary: &Path, dir: &Path, tag: &str) -> Result<PathBuf, TestbedError> {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run_checked(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    run_checked(Command::new("umoci").args(["new", "--image", &image]))?;
    run_checked(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &image])
            .arg(&bundle),
    )?;
    let rootfs = bundle.join("rootfs");
    let put = |src: &Path, dst: &str| -> Result<(), TestbedError> {
        let to = rootfs.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap_or(&rootfs))?;
        // Dereferenced: the image holds files, not links into the build machine.
        std::fs::copy(src, &to)?;
        Ok(())
    };
    put(binary, BINARY_PATH)?;
    for lib in libraries(binary)? {
        put(&lib, &lib.to_string_lossy())?;
    }
    put(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        "/etc/ssl/certs/ca-certificates.crt",
    )?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    std::fs::write(
        rootfs.join("etc/group"),
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
    )?;
    for d in ["tmp", "run/podflow", "home/nonroot"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    run_checked(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    )?;
    run_checked(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        BINARY_PATH,
        "--config.user",
        &format!("{NONROOT}:{NONROOT}"),
    ]))?;
    Ok(layout)
}

/// A containerd of its own: root, state and socket under a temporary directory.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts it and waits (≤ 20 s) until it answers.
    pub fn start() -> Result<Containerd, TestbedError> {
        let dir = tempfile::Builder::new()
            .prefix("podflow-containerd-")
            .tempdir()?;
        let d = dir.path().display();
        let config = dir.path().join("config.toml");
        // The CRI plugin keeps its streaming server on loopback, on a port of the kernel's
        // choosing: several of these may run at once.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \
                 \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
                 disable_tcp_service = true\n  stream_server_address = \"127.0.0.1\"\n  \
                 stream_server_port = \"0\"\n"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let c = Containerd { child, dir };
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            c.ctr(&["version"]).ok().filter(|o| o.status.success())
        });
        if up.is_none() {
            return Err(TestbedError::Timeout(format!(
                "containerd did not answer within 20 s: {}",
                c.log()
            )));
        }
        Ok(c)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr -a SOCKET -n podflow-test ARGS`.
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "podflow-test"])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Imports an OCI layout (as a tar of it); returns the image's reference.
    pub fn import(&self, layout: &Path, tag: &str) -> Result<String, TestbedError> {
        let tar = self.dir.path().join(format!("{tag}.tar"));
        run_checked(
            Command::new("tar")
                .arg("-C")
                .arg(layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        let reference = format!("podflow.local/podflow:{tag}");
        run_checked(
            Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .args([
                    "-n",
                    "podflow-test",
                    "images",
                    "import",
                    "--index-name",
                    &reference,
                ])
                .arg(&tar),
        )?;
        Ok(reference)
    }

    /// Its log, for error messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first (their shims outlive containerd otherwise), then the daemon.
        if let Ok(out) = self.ctr(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "-f", id]);
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

use crate::{
    TestbedError,
    kubelet::{CtrRun, ImageConfig},
    run_checked, wait_for,
};

/// The `nonroot` user and group of distroless images.
pub const NONROOT: u32 = 65532;

/// Where the binary goes in the image.
pub const BINARY_PATH: &str = "/usr/local/bin/podflow";

/// The image's configuration: the Dockerfile's `ENTRYPOINT`, `CMD` and `USER` (compared with
/// it by the `container_image` tests).
pub fn image_config() -> ImageConfig {
    ImageConfig {
        entrypoint: vec![BINARY_PATH.to_string()],
        cmd: vec!["agent".to_string()],
        user: (NONROOT, NONROOT),
    }
}

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
    std::fs::write(
        rootfs.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    )?;
    for d in ["tmp", "run/podflow", "home/nonroot"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    run_checked(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    )?;
    let config = image_config();
    let mut args = vec!["config".to_string(), "--image".to_string(), image];
    for e in &config.entrypoint {
        args.extend(["--config.entrypoint".to_string(), e.clone()]);
    }
    for c in &config.cmd {
        args.extend(["--config.cmd".to_string(), c.clone()]);
    }
    args.extend([
        "--config.user".to_string(),
        format!("{}:{}", config.user.0, config.user.1),
    ]);
    run_checked(Command::new("umoci").args(&args))?;
    Ok(layout)
}

/// A copy of the image `layout`:`tag` in `dir` whose configured user is `user`: ctr 1.6 has no
/// `--user`, so a pod spec's `runAsUser`/`runAsGroup` become the image's user (what the CRI
/// sets in the container's spec). Returns the copy's layout.
pub fn with_user(
    layout: &Path,
    tag: &str,
    user: (u32, u32),
    dir: &Path,
) -> Result<PathBuf, TestbedError> {
    let copy = dir.join(format!("oci-{}-{}", user.0, user.1));
    if !copy.exists() {
        run_checked(Command::new("cp").arg("-a").arg(layout).arg(&copy))?;
        run_checked(Command::new("umoci").args([
            "config",
            "--image",
            &format!("{}:{tag}", copy.display()),
            "--config.user",
            &format!("{}:{}", user.0, user.1),
        ]))?;
        run_checked(Command::new("umoci").args(["gc", "--layout"]).arg(&copy))?;
    }
    Ok(copy)
}

/// The files of the image `layout`:`tag` (paths relative to its root, no directories),
/// unpacked into `scratch`.
pub fn image_files(
    layout: &Path,
    tag: &str,
    scratch: &Path,
) -> Result<std::collections::BTreeSet<String>, TestbedError> {
    run_checked(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(scratch),
    )?;
    let root = scratch.join("rootfs");
    let mut files = std::collections::BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else if let Ok(rel) = e.path().strip_prefix(&root) {
                files.insert(rel.display().to_string());
            }
        }
    }
    Ok(files)
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

    /// Its directory (root, state, socket, runc's state, the IO fifos).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr run` options that keep runc's state and the IO fifos in [`Containerd::dir`] rather
    /// than under /run/containerd (ctr's defaults). containerd 1.6 still puts its shims' sockets
    /// in /run/containerd/s (hard-coded), removed when the shims exit.
    pub fn private_run_flags(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            "--runc-root".into(),
            d.join("runc").display().to_string(),
            "--fifo-dir".into(),
            d.join("fifo").display().to_string(),
        ]
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

    /// Runs `image` as container `id` with a [`CtrRun`] (`ctr run --rm`, in the foreground of a
    /// child `ctr` whose output, the container's, goes to `log`). Killed and removed on drop.
    pub fn run(
        &self,
        image: &str,
        id: &str,
        run: &CtrRun,
        log: &Path,
    ) -> Result<Task<'_>, TestbedError> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "podflow-test", "run", "--rm"])
            .args(self.private_run_flags())
            .args(&run.flags)
            .arg(image)
            .arg(id)
            .args(&run.argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(Task {
            runtime: self,
            id: id.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            grace: run.grace,
        })
    }

    /// The OCI runtime spec containerd gives container `id` created from `image` with `run`'s
    /// options (`ctr containers create`, then `info`; the container is deleted again): what the
    /// runtime really gets, e.g. the seccomp profile of `--seccomp` (built for the capabilities
    /// granted). The CPU flags, which apply to the task, are left out.
    pub fn spec_of(
        &self,
        image: &str,
        id: &str,
        run: &CtrRun,
    ) -> Result<serde_json::Value, TestbedError> {
        let mut args: Vec<&str> = vec!["containers", "create"];
        // `ctr containers create` lacks run's CPU flags (set on the task, not in the spec).
        let mut flags = run.flags.iter().map(String::as_str);
        while let Some(f) = flags.next() {
            if matches!(f, "--cpus" | "--cpu-shares") {
                flags.next();
            } else {
                args.push(f);
            }
        }
        args.extend([image, id]);
        args.extend(run.argv.iter().map(String::as_str));
        let created = self.ctr(&args)?;
        if !created.status.success() {
            return Err(TestbedError::Failed {
                cmd: format!("ctr {}", args.join(" ")),
                status: created.status.to_string(),
                stderr: String::from_utf8_lossy(&created.stderr).into_owned(),
            });
        }
        let info = self.ctr(&["containers", "info", id]);
        let _ = self.ctr(&["containers", "delete", id]);
        let info = info?;
        let v: serde_json::Value =
            serde_json::from_slice(&info.stdout).map_err(|e| TestbedError::Parse {
                what: format!("ctr containers info {id} ({e})"),
                text: String::from_utf8_lossy(&info.stdout).into_owned(),
            })?;
        Ok(v["Spec"].clone())
    }
}

/// What a stopped [`Containerd`] whose directory was `dir` left behind: mounts under `dir`
/// and processes (containerd, shims, containers' `ctr`) that name it. Empty when it cleaned up.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| format!("mount: {l}"))
        .collect();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            left.push(format!(
                "process {}: {cmdline}",
                p.file_name().to_string_lossy()
            ));
        }
    }
    left
}

/// A container run by [`Containerd::run`]: SIGKILLed and removed on drop.
pub struct Task<'a> {
    runtime: &'a Containerd,
    id: String,
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
}

impl Task<'_> {
    /// The container's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's init process (in the host's pid namespace), once it runs.
    pub fn pid(&self) -> Option<u32> {
        let out = self.runtime.ctr(&["tasks", "ls"]).ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(self.id.as_str()))
                .then(|| f.next()?.parse().ok())
                .flatten()
                .filter(|p| *p != 0)
        })
    }

    /// Whether the container still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (≤ `timeout`) for the container to exit; its exit status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        wait_for(timeout, Duration::from_millis(50), || {
            child.try_wait().ok().flatten()
        })
    }

    /// Stops it as the kubelet does: SIGTERM, then SIGKILL after the grace period. Its exit
    /// status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self
            .runtime
            .ctr(&["tasks", "kill", "-s", "SIGTERM", &self.id]);
        if let Some(st) = self.wait_exit(self.grace) {
            return Some(st);
        }
        let _ = self
            .runtime
            .ctr(&["tasks", "kill", "-s", "SIGKILL", &self.id]);
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = self
                .runtime
                .ctr(&["tasks", "kill", "-s", "SIGKILL", &self.id]);
            let gone = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                child.try_wait().ok().flatten()
            });
            if gone.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = self.runtime.ctr(&["tasks", "delete", "-f", &self.id]);
        let _ = self.runtime.ctr(&["containers", "delete", &self.id]);
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

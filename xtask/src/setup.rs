//! `cargo xtask setup`: install what building and testing podflow needs, idempotently.
//!
//! - Debian packages used by the tests, the demo and the benchmark (only the missing ones).
//! - rust-src for the nightly toolchain (the eBPF crate is built with `-Z build-std=core`).
//! - bpf-linker, built against the nightly toolchain's own libLLVM so that the bitcode rustc emits
//!   and the linker's LLVM agree. bpf-linker's llvm-sys looks for `libLLVM.so` under
//!   `$LLVM_PREFIX/lib`; the nightly ships it only under its soname, so we make a lasting prefix
//!   (`~/.local/share/podflow/llvm-<version>`) whose `lib/` links both names to the nightly's file.
//!   The built linker finds libLLVM through an rpath into that prefix.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd_output, run};

/// Debian packages the project's tests, demo and benchmark call.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "iperf3",
    "tcpdump",
    "ethtool",
    "netcat-openbsd",
    "wireguard-go",
    "wireguard-tools",
    "procps",
    "iputils-ping",
    "prometheus",
    // Service NAT shaped like kube-proxy's (iptables and nftables modes) in the tests and the
    // demo; `conntrack` to inspect and flush the tables in tests.
    "iptables",
    "nftables",
    "conntrack",
    // The exporter's ClickHouse tests start real servers (`clickhouse-server`) and read them
    // back; the client is for looking at a test's server by hand.
    "clickhouse-server",
    "clickhouse-client",
    // The container image (an OCI layout written by umoci) and the runtime the tests run it in.
    "umoci",
    "containerd",
    "runc",
    // DNS on the records: a real server (dnsmasq) and client (dig) in the tests' namespaces.
    "dnsmasq-base",
    "bind9-dnsutils",
];

pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run_setup() -> anyhow::Result<()> {
    apt_packages()?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    bpf_linker()?;
    Ok(())
}

pub fn is_root() -> bool {
    cmd_output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            // `dpkg-query -W -f '${Status}'` says "install ok installed" for installed packages.
            cmd_output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", p]))
                .map(|s| !s.contains("ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian packages (as root), or says which command would.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {packages:?}: run `sudo apt-get install -y {}` (or run this \
             as root)",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages {packages:?}");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
}

/// Facts about the nightly toolchain, derived from `rustc +nightly -vV` and its sysroot.
struct Nightly {
    release: String,
    llvm_major: String,
    llvm_major_minor: String,
    lib_dir: PathBuf,
}

fn nightly() -> anyhow::Result<Nightly> {
    let vv = cmd_output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .with_context(|| format!("`rustc +{NIGHTLY} -vV` printed no `{name}` line"))
    };
    let release = field("release:")?;
    let llvm = field("LLVM version:")?;
    let mut parts = llvm.split('.');
    let major = parts.next().unwrap_or_default().to_string();
    let minor = parts.next().unwrap_or("0").to_string();
    let sysroot =
        cmd_output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    Ok(Nightly {
        release,
        llvm_major_minor: format!("{major}.{minor}"),
        llvm_major: major,
        lib_dir: PathBuf::from(sysroot.trim()).join("lib"),
    })
}

/// Where the project keeps lasting tool installs (`$XDG_DATA_HOME/podflow`).
pub fn data_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("podflow"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/podflow"))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn bpf_linker() -> anyhow::Result<()> {
    let n = nightly()?;
    let soname = format!("libLLVM.so.{}-rust-{}", n.llvm_major_minor, n.release);
    let lib = n.lib_dir.join(&soname);
    if !lib.is_file() {
        bail!(
            "the nightly toolchain has no {} (expected from `rustc +{NIGHTLY} -vV`)",
            lib.display()
        );
    }
    let prefix = data_dir()?.join(format!("llvm-{}", n.release));
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{} {}",
        n.llvm_major,
        lib.display()
    );
    if bpf_linker_works() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        symlink_force(&lib, &prefix_lib.join(name))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {}",
        lib.display()
    );
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", n.llvm_major),
        ]))?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails: is ~/.cargo/bin in PATH?"
        );
    }
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn symlink_force(target: &Path, link: &Path) -> anyhow::Result<()> {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

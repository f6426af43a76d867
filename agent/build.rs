//! Builds the eBPF programs in `agent-ebpf/` with the nightly toolchain (bpfel target, build-std
//! core, linked by bpf-linker) and leaves the object in `OUT_DIR/podflow-ebpf`, which the agent
//! embeds. `cargo xtask setup` installs what this needs.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR")
            .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent/ has no parent directory")?
        .join("agent-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?;
    which_bpf_linker()?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "podflow-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Fails early with a useful message instead of a linker error deep in the nightly build.
fn which_bpf_linker() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file());
    if found {
        Ok(())
    } else {
        Err(anyhow!(
            "bpf-linker not found in PATH: run `cargo xtask setup` once (it builds bpf-linker \
             against the nightly toolchain's LLVM)"
        ))
    }
}

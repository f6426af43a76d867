//! `cargo xtask bench [--smoke] [-- ARGS]`: podflow against the no-agent baseline.
//!
//! Builds the release binaries (`podflow`, and `podflow-bench` of the `bench/` crate) and runs `podflow-bench` as root.
//! The benchmark builds its own network namespaces (a node with two pods on veths), interleaves
//! runs with and without the agent, prints a table of every figure with its target and pass/miss,
//! and (full run only) writes it into `docs/BENCHMARKS.md` with the machine and the command.
//! `--smoke` (CI) runs one short pair to check the harness end to end: it fails only when a
//! measurement could not be taken, never on the (noisy) numbers.
//!
//! This module does not depend on the podflow crate (xtask must build before bpf-linker exists).
use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds the binaries and runs the benchmark. `extra` goes to `podflow-bench` (e.g.
/// `--pairs 9`, `--secs 5`).
pub fn run(smoke: bool, extra: &[String]) -> anyhow::Result<()> {
    crate::setup::run_setup()?;
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "-p",
        "podflow",
        "-p",
        "podflow-bench",
    ]))?;
    let release = crate::target_dir().join("release");
    let bench = release.join("podflow-bench");
    if !bench.exists() {
        bail!("{} was not built", bench.display());
    }
    let mut shown = String::from("cargo xtask bench");
    if smoke {
        shown.push_str(" --smoke");
    }
    if !extra.is_empty() {
        shown.push_str(" -- ");
        shown.push_str(&extra.join(" "));
    }
    let mut cmd = if crate::setup::is_root() {
        Command::new(&bench)
    } else {
        // The benchmark creates network namespaces and loads BPF programs.
        let mut c = Command::new("sudo");
        c.arg(&bench);
        c
    };
    cmd.arg("--podflow").arg(release.join("podflow"));
    if smoke {
        cmd.arg("--smoke");
    } else {
        cmd.arg("--doc")
            .arg(crate::workspace_root().join("docs/BENCHMARKS.md"));
    }
    cmd.arg("--command").arg(&shown).args(extra);
    crate::run(&mut cmd).context("podflow-bench")
}

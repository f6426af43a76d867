//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: install what the build and the tests need (idempotent).
//! - `test`: setup, then every check and test CI runs (`.ci/run` calls this).
//! - `demo`: setup, build, and run a demo node (network namespaces with pods) with live flows.
//! - `bench`: podflow against the no-agent baseline; writes docs/BENCHMARKS.md.
//! - `codegen`: regenerate the protobuf code under proto/src/gen.
//! - `deploy-render`: regenerate deploy/podflow.yaml and the Prometheus rules file.
//! - `deploy-check`: render every Kustomize overlay and validate the manifests and alert rules.
mod bench;
mod codegen;
mod deploy;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install apt packages, rust-src for nightly and bpf-linker (idempotent).
    Setup,
    /// Setup, then formatting, lints, unit and privileged end-to-end tests.
    Test {
        /// Skip clippy (faster local iterations).
        #[arg(long)]
        no_clippy: bool,
        /// Extra arguments passed to `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Setup, build, then run a demo node with pods and live flows (`podflow demo`).
    Demo {
        /// Arguments passed to `podflow demo`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark podflow against the no-agent baseline (root; builds its own namespaces) and
    /// write docs/BENCHMARKS.md.
    Bench {
        /// One short pair, to check the harness (what CI runs, through the test suite).
        #[arg(long)]
        smoke: bool,
        /// Arguments passed to `podflow-bench`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Regenerate proto/src/gen from proto/podflow/v1/*.proto.
    Codegen,
    /// Regenerate deploy/podflow.yaml and deploy/prometheus/podflow-rules.yaml.
    DeployRender,
    /// Validate the deployment: Kustomize overlays, Kubernetes schemas, pod security, RBAC,
    /// alert rules, and that the rendered files are up to date.
    DeployCheck,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run_setup(),
        Task::Test {
            no_clippy,
            cargo_test_args,
        } => test(no_clippy, &cargo_test_args),
        Task::Demo { args } => demo(&args),
        Task::Bench { smoke, args } => bench::run(smoke, &args),
        Task::Codegen => codegen::run(),
        Task::DeployRender => deploy::render(),
        Task::DeployCheck => deploy::check(),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(workspace_root());
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing on a non-zero exit.
pub fn cmd_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test(no_clippy: bool, extra: &[String]) -> anyhow::Result<()> {
    setup::run_setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    if !no_clippy {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Unit tests, BPF_PROG_TEST_RUN tests and the privileged end-to-end tests (which build their
    // own network namespaces and run the real `podflow` binary inside them).
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .arg("--")
        .args(extra))
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    setup::run_setup()?;
    run(cargo().args(["build", "--release", "-p", "podflow"]))?;
    let bin = workspace_root().join("target/release/podflow");
    run(Command::new(bin).arg("demo").args(args))
}

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
    /// Setup, build, then run a demo node with pods and live flows (`podflow-demo`).
    Demo {
        /// Arguments passed to `podflow-demo`.
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

/// Where cargo puts the release binaries (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
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
    report_free_disk();
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
    // The deployment: every overlay rendered and validated, pod security, RBAC, promtool on the
    // alert rules (seconds).
    deploy::check()?;
    // Unit tests, BPF_PROG_TEST_RUN tests and the privileged end-to-end tests (which build their
    // own network namespaces and run the real `podflow` binary inside them).
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .arg("--")
        .args(extra)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.spawn().context("failed to start cargo test")?;
    let mut totals = TestTotals::default();
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            totals.add(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // One closing line for the whole suite (cargo's own last line is often an empty doc-test
    // section).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// A clean build of the test suite needs about 2.5 GiB under target/ (clippy's check artifacts
/// included); the linker dies with SIGBUS, not a clear message, when the disk fills while it writes.
const TEST_BUILD_DISK_BYTES: u64 = 3 << 30;

/// Says how much disk the build has, and warns early when it is likely too little.
fn report_free_disk() {
    let root = workspace_root();
    let Ok(out) = cmd_output(Command::new("df").args(["-Pk", "--"]).arg(&root)) else {
        return;
    };
    let Some(avail_kib) = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let avail = avail_kib * 1024;
    eprintln!(
        "xtask: {:.1} GiB free on the build's disk",
        avail as f64 / f64::from(1u32 << 30)
    );
    if avail < TEST_BUILD_DISK_BYTES {
        eprintln!(
            "xtask: warning: a clean test build needs about {} GiB; linking may fail with SIGBUS",
            TEST_BUILD_DISK_BYTES >> 30
        );
    }
}

/// Sums cargo test's `test result: ok. N passed; N failed; N ignored; ...` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    setup::run_setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "podflow",
        "-p",
        "podflow-testbed",
    ]))?;
    let release = target_dir().join("release");
    run(Command::new(release.join("podflow-demo"))
        .arg("--podflow")
        .arg(release.join("podflow"))
        .args(args))
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut t = TestTotals::default();
        t.add("test result: ok. 83 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.08s");
        t.add("test result: FAILED. 1 passed; 2 failed; 3 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("running 3 tests");
        t.add("test foo ... ok");
        assert_eq!(
            t,
            TestTotals {
                passed: 84,
                failed: 2,
                ignored: 3
            }
        );
    }
}

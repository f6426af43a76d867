//! `cargo xtask codegen`: regenerate proto/src/gen from proto/podflow/v1/*.proto.
//!
//! Pure Rust, no protoc: protox parses the .proto files (its bundled well-known types provide
//! google/protobuf/timestamp.proto) and tonic-prost-build generates the messages, the client and
//! the server. prost and tonic format their output with prettyplease, so the result depends only
//! on the inputs and the generator versions pinned in Cargo.lock.
//!
//! This file is also compiled into `proto/tests/codegen_fresh.rs` (via `#[path]`), which
//! regenerates into a temp dir and fails when the committed code is stale. Keep it free of
//! xtask-only dependencies (anyhow, protox and tonic-prost-build only).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Generated files, relative to the output directory, one per proto package.
pub const GENERATED_FILES: &[&str] = &["podflow.v1.rs"];

/// Compiles every `*.proto` under `proto_dir` (which is also the include root) and writes the
/// generated Rust, one file per package (e.g. `podflow.v1.rs`), into `out_dir`.
pub fn generate(proto_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    // Absolute paths, so protox never resolves them against the current directory.
    let proto_dir = &std::fs::canonicalize(proto_dir)
        .with_context(|| format!("resolving {}", proto_dir.display()))?;
    let mut files = Vec::new();
    collect_protos(proto_dir, proto_dir, &mut files)?;
    if files.is_empty() {
        bail!("no .proto files under {}", proto_dir.display());
    }
    // Sorted relative paths: the descriptor set, hence the output, does not depend on the order
    // the file system lists directories in.
    files.sort();
    let files = files.iter().map(|file| proto_dir.join(file));
    let fds = protox::compile(files, [proto_dir])
        .with_context(|| format!("parsing the .proto files under {}", proto_dir.display()))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        // Map fields (an endpoint's labels) as BTreeMap: the metadata index keeps labels that
        // way, so enrichment moves them into a record instead of rebuilding a HashMap each time,
        // and they come out sorted.
        .btree_map(".")
        // A batch keeps its events encoded (proto/src/export_batch.rs: same wire format, the
        // collector and the agent pass them on without decoding and encoding them again).
        .extern_path(
            ".podflow.v1.ExportBatch",
            "crate::export_batch::ExportBatch",
        )
        .out_dir(out_dir)
        .compile_fds(fds)
        .with_context(|| format!("generating Rust code into {}", out_dir.display()))?;
    for file in GENERATED_FILES {
        rustfmt_in_place(&out_dir.join(file), proto_dir)?;
    }
    Ok(())
}

/// Formats a generated file with rustfmt (edition 2024), reading the source from stdin in
/// `config_dir` so that the same rustfmt.toml, if any, applies wherever the file is written (the
/// workspace or a temp dir). prettyplease's layout is close to rustfmt's but not identical.
fn rustfmt_in_place(path: &Path, config_dir: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let source =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    let mut child = Command::new(&rustfmt)
        .args(["--edition", "2024", "--emit", "stdout"])
        .current_dir(config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "running {}: is rustfmt installed? (rustup component add rustfmt)",
                rustfmt.to_string_lossy()
            )
        })?;
    let mut stdin = child.stdin.take().context("rustfmt's stdin is not piped")?;
    // rustfmt reads all of stdin before writing, so writing first cannot deadlock.
    stdin
        .write_all(source.as_bytes())
        .context("writing to rustfmt")?;
    drop(stdin);
    let output = child.wait_with_output().context("waiting for rustfmt")?;
    if !output.status.success() {
        bail!(
            "rustfmt failed on {} ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(path, &output.stdout).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Entry point of `cargo xtask codegen`: regenerates `proto/src/gen/` of this workspace.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let proto_dir = root.join("proto");
    let out_dir = proto_dir.join("src").join("gen");
    generate(&proto_dir, &out_dir)?;
    for file in GENERATED_FILES {
        let path = out_dir.join(file);
        if !path.is_file() {
            bail!("the generator did not write {}", path.display());
        }
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Collects the paths, relative to `root`, of the `*.proto` files under `dir`, skipping `src/`
/// (Rust sources, including the generated code) and hidden directories.
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading the type of {}", path.display()))?;
        if file_type.is_dir() {
            let skip = name.starts_with('.')
                || (dir == root && matches!(name.as_ref(), "src" | "tests" | "target"));
            if !skip {
                collect_protos(root, &path, out)?;
            }
        } else if name.ends_with(".proto") {
            let relative = path
                .strip_prefix(root)
                .with_context(|| format!("{} is not under {}", path.display(), root.display()))?;
            out.push(relative.to_path_buf());
        }
    }
    Ok(())
}

//! Fails when the committed generated code (proto/src/gen) is stale: regenerates it into a temp
//! dir with the very generator `cargo xtask codegen` runs and compares byte for byte.
#[expect(
    dead_code,
    reason = "only `generate` is needed here; `run` is the xtask entry point"
)]
#[path = "../../xtask/src/codegen.rs"]
mod codegen;

use std::path::Path;

#[test]
fn generated_code_is_fresh() -> anyhow::Result<()> {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_dir = proto_dir.join("src").join("gen");
    let tmp = tempfile::tempdir()?;
    codegen::generate(proto_dir, tmp.path())?;
    for file in codegen::GENERATED_FILES {
        let fresh = std::fs::read(tmp.path().join(file))?;
        let committed = std::fs::read(committed_dir.join(file)).unwrap_or_default();
        assert!(
            fresh == committed,
            "proto/src/gen/{file} is stale: run cargo xtask codegen (and commit the result)"
        );
    }
    // No extra, forgotten files either.
    let mut generated: Vec<String> = std::fs::read_dir(tmp.path())?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    generated.sort();
    assert_eq!(
        generated,
        codegen::GENERATED_FILES,
        "run cargo xtask codegen"
    );
    Ok(())
}

//! `cargo xtask codegen`: regenerate proto/src/gen from proto/podflow/v1/*.proto.

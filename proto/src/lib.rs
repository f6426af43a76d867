//! podflow's protobuf API (`podflow.v1`). The Rust code under `src/gen/` is generated from
//! `podflow/v1/*.proto` by `cargo xtask codegen` and committed, so building needs no protoc.
//! A test fails when the committed code is stale.

pub mod v1 {
    include!("gen/podflow.v1.rs");
}

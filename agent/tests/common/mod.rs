//! Shared helpers for podflow's integration tests.
//!
//! Each `tests/*.rs` file is its own crate: include these with `mod common;` and use what you
//! need (unused helpers are fine, hence the `dead_code` expectation in each submodule).
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

pub mod netns;

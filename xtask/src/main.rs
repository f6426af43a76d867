//! Project tasks: `cargo xtask setup | test | demo | codegen`.
mod codegen;

fn main() {}

//! Real ClickHouse servers for the tests: see [`podflow_testbed::clickhouse`] (shared with the
//! benchmark and the demo).
pub use podflow_testbed::clickhouse::*;

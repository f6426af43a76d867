//! podflow: an eBPF node agent that makes pod traffic visible.
//!
//! Data flows one way: kernel maps ([`capture`]) → flow table ([`flows`]) → fan-out to API
//! subscribers ([`api`]). [`cli`] holds the command-line front ends (`podflow tail`).
pub mod agent;
pub mod api;
pub mod capture;
pub mod cli;
pub mod collector;
pub mod export;
pub mod filter;
pub mod flows;
pub mod format;
pub mod hash;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod privileges;
pub mod report;
pub mod time;

pub use podflow_proto::v1 as proto;

/// The agent's version, reported in its status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default path of the agent's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/podflow/podflow.sock";

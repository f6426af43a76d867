//! podflow: an eBPF node agent that makes pod traffic visible.
//!
//! Data flows one way, each stage in its own room, wired in one place ([`agent`]):
//!
//! ```text
//! kernel maps ─ capture ─▶ flows ─▶ flows::enrich ◀─ metadata (Kubernetes API / file → index)
//!  (drain, epoch flip)    (count once,      │
//!                          records)         ▼
//!                                 metrics (Prometheus) ──▶ api (gRPC: tail, status)
//!                                           └────────────▶ export ──▶ collector (files, API)
//!                                                                          │ collector::store
//!                                                                          ▼
//!                                                      podflow query ──▶ ClickHouse
//! ```
//!
//! - [`capture`]: load the eBPF object, attach to pod veths and WireGuard devices, drain the
//!   kernel's flow maps exactly once per packet.
//! - [`flows`]: the flow table (one counting point per flow), records, enrichment with
//!   [`metadata`], and the flow rules.
//! - [`metadata`]: sources (Kubernetes API, a `kubectl get -o json` file) and the IP → owner
//!   index over time.
//! - [`api`]: the gRPC consumer API (a bounded ring and followers); [`export`]: the acknowledged
//!   stream to a collector; [`collector`]: receives the streams, serves the same API, writes
//!   files and stores in ClickHouse; [`metrics`]: Prometheus.
//! - [`clickhouse`]: the store's HTTP client, schema and migrations, RowBinary rows and the saved
//!   queries (used by the collector and by `podflow query`).
//! - [`policy`]: the Kubernetes NetworkPolicy evaluator (allowed or not, and why), for advise/audit.
//! - Front ends: [`cli`] (`podflow tail`, `podflow status`, `podflow query`), [`format`](mod@format) (JSON, compact and GKE
//!   lines), [`filter`] (the filters tail and the API share).
//! - Shared pieces: [`net`] (addresses, CIDRs), [`time`] (kernel clock, timestamps), [`hash`]
//!   (keyed hasher), [`tls`] (certificate files, client and server side), [`report`] (error
//!   chains), [`logging`], [`privileges`] (the start-up check).
pub mod agent;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clickhouse;
pub mod collector;
pub mod conntrack;
pub mod dns;
pub mod drops;
pub mod export;
pub mod filter;
pub mod flows;
pub mod format;
pub mod handshake;
pub mod hash;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod privileges;
pub mod report;
pub mod time;
pub mod tls;

pub use podflow_proto::v1 as proto;

/// The agent's version, reported in its status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default path of the agent's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/podflow/podflow.sock";

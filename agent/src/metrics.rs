//! Prometheus metrics: the agent's ([`Metrics`], fed a flush's records as a [`FlowBatch`]) and
//! the collector's ([`collector_exposition`]), served as OpenMetrics text on `GET /metrics`
//! ([`serve_metrics`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `podflow_flows_total` | counter | `src_namespace`, `src_workload`, `dst_namespace`, `dst_workload`, `locality` (`same_node`/`inter_node`/`other`), `encrypted` (`true`/`false`) |
//! | `podflow_flow_packets_total` | counter | same |
//! | `podflow_flow_bytes_total` | counter | same (IP-layer bytes) |
//! | `podflow_plaintext_inter_node_bytes_total` | counter | the four workload labels: inter-node bytes not seen encrypted |
//! | `podflow_flow_label_sets` | gauge | distinct workload label sets in use (≤ the limit) |
//! | `podflow_flow_label_overflow_total` | counter | flow observations folded into the `_other` set |
//! | `podflow_kernel_packets_total` | counter | `counter`: every kernel counter ([`podflow_ebpf::KernelCounter`]) |
//! | `podflow_lost_packets_total` | counter | `reason`: the kernel's loss counters only ([`podflow_ebpf::KernelCounter::is_loss`]) |
//! | `podflow_user_lost_total` | counter | `reason`: user-space losses (e.g. `untracked_flows`) |
//! | `podflow_interfaces_attached` | gauge | `kind` (`veth`, `l3`) |
//! | `podflow_export_queue_depth` | gauge | records waiting to be exported |
//! | `podflow_export_failures_total` | counter | failed export attempts |
//! | `podflow_export_dropped_total` | counter | records dropped by the exporter (queue full, give-up) |
//! | `podflow_metadata_age_seconds` | gauge | age of the Kubernetes metadata snapshot |
//! | `podflow_build_info` | gauge | `version`; always 1 |
//!
//! **Bounded cardinality.** The flow metrics keep at most `max_label_sets` distinct
//! `(src_namespace, src_workload, dst_namespace, dst_workload)` tuples (default
//! [`DEFAULT_MAX_LABEL_SETS`]); observations of any further tuple are counted under the tuple whose
//! four values are `_other` (and in `podflow_flow_label_overflow_total`). With the two `locality`
//! and two `encrypted` values each flow metric has at most `4 × (max_label_sets + 1)` series. A
//! tuple, once admitted, stays for the process' lifetime (workload names are stable; pod names,
//! which are not, are never labels). `_other` and `_unknown` (for an empty value: an address with
//! no known pod) cannot collide with Kubernetes names, which never contain `_`.
//!
//! Kernel counters are cumulative per process: [`Metrics::set_kernel_counters`] takes the current
//! array and adds the growth since the previous call. Every kernel counter series exists from
//! start (at 0), so `increase()` sees the first loss.
mod agent;
mod batch;
mod collector;
mod serve;

use std::net::SocketAddr;

pub use self::{
    agent::Metrics,
    batch::FlowBatch,
    collector::collector_exposition,
    serve::{serve_exposition_on, serve_metrics, serve_metrics_on},
};

/// Where a flow runs, for the `locality` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Locality {
    /// Both ends are pods behind this node's veths.
    SameNode,
    /// Between this node and another node of the cluster.
    InterNode,
    /// Anything else: to or from outside the cluster, or not known.
    Other,
}

impl Locality {
    pub fn as_str(self) -> &'static str {
        match self {
            Locality::SameNode => "same_node",
            Locality::InterNode => "inter_node",
            Locality::Other => "other",
        }
    }

    /// From a record's `same_node` and `inter_node`.
    pub fn of(same_node: bool, inter_node: bool) -> Locality {
        if same_node {
            Locality::SameNode
        } else if inter_node {
            Locality::InterNode
        } else {
            Locality::Other
        }
    }
}

/// Default limit of distinct workload label tuples of the flow metrics.
pub const DEFAULT_MAX_LABEL_SETS: usize = 2000;
/// Label value of the overflow tuple.
pub const OVERFLOW_LABEL: &str = "_other";
/// Label value standing for an empty namespace or workload.
pub const UNKNOWN_LABEL: &str = "_unknown";
/// Content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listener could not be bound.
    #[error("binding the metrics listener on {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("serving metrics failed")]
    Serve {
        #[source]
        source: std::io::Error,
    },
    /// The exposition could not be encoded.
    #[error("encoding the metrics failed")]
    Encode,
}

/// Parses one sample value out of an exposition: the value of the line whose name and labels
/// are exactly `series` (e.g. `podflow_export_failures_total` or
/// `podflow_lost_packets_total{reason="lost_map_full"}`). For tests and `podflow status`-like
/// tools.
pub fn sample_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

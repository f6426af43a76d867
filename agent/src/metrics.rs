//! Prometheus metrics of the agent (and, later, the collector), served as OpenMetrics text on
//! `GET /metrics` by [`serve_metrics`].
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
use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use podflow_ebpf::{COUNTER_COUNT, KernelCounter};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
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

/// Flow records summed per label set, borrowing the names from the records: what a flush hands
/// to [`Metrics::observe_flows`], so that the shared counter families (a lock, a label set of
/// owned strings, three hash lookups) are touched once per label set, not once per record.
#[derive(Debug, Default)]
pub struct FlowBatch<'a> {
    index: std::collections::HashMap<BatchKey<'a>, usize, crate::hash::FlowHashState>,
    /// In the order each label set was first seen (label-set admission follows it).
    sets: Vec<(BatchKey<'a>, BatchSum)>,
}

#[derive(Clone, Copy, Debug, Eq)]
struct BatchKey<'a> {
    workloads: [&'a str; 4],
    locality: Locality,
    encrypted: bool,
}

impl std::hash::Hash for BatchKey<'_> {
    /// The names' contents and the two flags, as the comparison below reads them.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.workloads.hash(state);
        self.locality.hash(state);
        self.encrypted.hash(state);
    }
}

impl PartialEq for BatchKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.locality == other.locality
            && self.encrypted == other.encrypted
            && self
                .workloads
                .iter()
                .zip(&other.workloads)
                .all(|(a, b)| same_str(a, b))
    }
}

/// String equality that skips the `memcmp` call for empty strings (no metadata) and for the very
/// same string (the derived comparison of four names per record was 12 % of the agent's CPU).
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

#[derive(Clone, Copy, Debug, Default)]
struct BatchSum {
    records: u64,
    packets: u64,
    bytes: u64,
}

impl<'a> FlowBatch<'a> {
    pub fn new() -> FlowBatch<'a> {
        FlowBatch {
            index: std::collections::HashMap::with_hasher(crate::hash::flow_hash_state()),
            sets: Vec::new(),
        }
    }

    /// Adds one record, as [`Metrics::observe_flow`] takes it.
    #[expect(
        clippy::too_many_arguments,
        reason = "the same values as Metrics::observe_flow"
    )]
    pub fn add(
        &mut self,
        src_ns: &'a str,
        src_workload: &'a str,
        dst_ns: &'a str,
        dst_workload: &'a str,
        packets: u64,
        bytes: u64,
        locality: Locality,
        encrypted: bool,
    ) {
        let key = BatchKey {
            workloads: [src_ns, src_workload, dst_ns, dst_workload],
            locality,
            encrypted,
        };
        let sets = &mut self.sets;
        let i = *self.index.entry(key).or_insert_with(|| {
            sets.push((key, BatchSum::default()));
            sets.len() - 1
        });
        if let Some((_, sum)) = self.sets.get_mut(i) {
            sum.records += 1;
            sum.packets = sum.packets.saturating_add(packets);
            sum.bytes = sum.bytes.saturating_add(bytes);
        }
    }

    /// Distinct label sets in the batch.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    src_namespace: String,
    src_workload: String,
    dst_namespace: String,
    dst_workload: String,
    locality: &'static str,
    encrypted: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadPairLabels {
    src_namespace: String,
    src_workload: String,
    dst_namespace: String,
    dst_workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    counter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type WorkloadTuple = [String; 4];

/// The agent's metrics. Cheap to update from any task; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    max_label_sets: usize,
    label_sets: Mutex<HashSet<WorkloadTuple>>,
    flows: Family<FlowLabels, Counter>,
    packets: Family<FlowLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    plaintext_inter_node_bytes: Family<WorkloadPairLabels, Counter>,
    label_sets_gauge: Gauge,
    label_overflow: Counter,
    kernel: Family<CounterLabels, Counter>,
    kernel_lost: Family<ReasonLabels, Counter>,
    kernel_last: Mutex<[u64; COUNTER_COUNT as usize]>,
    user_lost: Family<ReasonLabels, Counter>,
    user_last: Mutex<std::collections::HashMap<String, u64>>,
    interfaces: Family<KindLabels, Gauge>,
    export_queue_depth: Gauge,
    export_failures: Counter,
    export_dropped: Counter,
    /// (failures, dropped) at the previous [`Metrics::set_export_state`].
    export_last: Mutex<(u64, u64)>,
    metadata_age: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Metrics with the default label-set limit ([`DEFAULT_MAX_LABEL_SETS`]).
    pub fn new() -> Arc<Metrics> {
        Metrics::with_max_label_sets(DEFAULT_MAX_LABEL_SETS)
    }

    /// Metrics keeping at most `max_label_sets` workload tuples (then `_other`).
    pub fn with_max_label_sets(max_label_sets: usize) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let flows = Family::<FlowLabels, Counter>::default();
        let packets = Family::<FlowLabels, Counter>::default();
        let bytes = Family::<FlowLabels, Counter>::default();
        let plaintext = Family::<WorkloadPairLabels, Counter>::default();
        let label_sets_gauge = Gauge::default();
        let label_overflow = Counter::default();
        let kernel = Family::<CounterLabels, Counter>::default();
        let kernel_lost = Family::<ReasonLabels, Counter>::default();
        let user_lost = Family::<ReasonLabels, Counter>::default();
        let interfaces = Family::<KindLabels, Gauge>::default();
        let export_queue_depth = Gauge::default();
        let export_failures = Counter::default();
        let export_dropped = Counter::default();
        let metadata_age = Gauge::<f64, AtomicU64>::default();
        let build_info = Family::<VersionLabels, Gauge>::default();

        registry.register(
            "podflow_flows",
            "Flow records, by source and destination workload",
            flows.clone(),
        );
        registry.register(
            "podflow_flow_packets",
            "Packets of flow records (scaled by the sampling rate), by source and destination workload",
            packets.clone(),
        );
        registry.register(
            "podflow_flow_bytes",
            "IP-layer bytes of flow records (scaled by the sampling rate), by source and destination workload",
            bytes.clone(),
        );
        registry.register(
            "podflow_plaintext_inter_node_bytes",
            "Bytes between pods of different nodes that were not seen encrypted",
            plaintext.clone(),
        );
        registry.register(
            "podflow_flow_label_sets",
            "Distinct (src_namespace, src_workload, dst_namespace, dst_workload) label sets in use",
            label_sets_gauge.clone(),
        );
        registry.register(
            "podflow_flow_label_overflow",
            "Flow observations counted under the _other label set because the label-set limit was reached",
            label_overflow.clone(),
        );
        registry.register(
            "podflow_kernel_packets",
            "Kernel counters, by counter",
            kernel.clone(),
        );
        registry.register(
            "podflow_lost_packets",
            "Packets the kernel could not record into flows, by reason",
            kernel_lost.clone(),
        );
        registry.register(
            "podflow_user_lost",
            "Records lost in user space, by reason",
            user_lost.clone(),
        );
        registry.register(
            "podflow_interfaces_attached",
            "Interfaces with podflow programs attached, by kind",
            interfaces.clone(),
        );
        registry.register(
            "podflow_export_queue_depth",
            "Records waiting to be exported",
            export_queue_depth.clone(),
        );
        registry.register(
            "podflow_export_failures",
            "Failed export attempts",
            export_failures.clone(),
        );
        registry.register(
            "podflow_export_dropped",
            "Records dropped by the exporter",
            export_dropped.clone(),
        );
        registry.register(
            "podflow_metadata_age_seconds",
            "Age of the Kubernetes metadata snapshot in seconds",
            metadata_age.clone(),
        );
        registry.register(
            "podflow_build_info",
            "podflow version; always 1",
            build_info.clone(),
        );

        build_info
            .get_or_create(&VersionLabels {
                version: crate::VERSION,
            })
            .set(1);
        for c in KernelCounter::ALL {
            // Create every series at 0, so `increase()` sees the first count.
            let _ = kernel.get_or_create(&CounterLabels { counter: c.name() });
            if c.is_loss() {
                let _ = kernel_lost.get_or_create(&ReasonLabels {
                    reason: c.name().to_string(),
                });
            }
        }
        for kind in ["veth", "l3"] {
            let _ = interfaces.get_or_create(&KindLabels {
                kind: kind.to_string(),
            });
        }

        Arc::new(Metrics {
            registry,
            max_label_sets,
            label_sets: Mutex::new(HashSet::new()),
            flows,
            packets,
            bytes,
            plaintext_inter_node_bytes: plaintext,
            label_sets_gauge,
            label_overflow,
            kernel,
            kernel_lost,
            kernel_last: Mutex::new([0; COUNTER_COUNT as usize]),
            user_lost,
            user_last: Mutex::new(std::collections::HashMap::new()),
            interfaces,
            export_queue_depth,
            export_failures,
            export_dropped,
            export_last: Mutex::new((0, 0)),
            metadata_age,
        })
    }

    /// The label-set limit.
    pub fn max_label_sets(&self) -> usize {
        self.max_label_sets
    }

    /// Counts one flow record of `packets` and `bytes` (already scaled by the sampling rate)
    /// between two workloads. Empty names become `_unknown`; beyond the label-set limit the record
    /// is counted under `_other`. Inter-node records not seen encrypted also count into
    /// `podflow_plaintext_inter_node_bytes_total`.
    ///
    /// Alerts sum over agents: observe an inter-node record on one node only (the source pod's),
    /// or its traffic counts twice (once leaving one node, once arriving at the other).
    #[expect(
        clippy::too_many_arguments,
        reason = "the API the agent loop calls, one value per label"
    )]
    pub fn observe_flow(
        &self,
        src_ns: &str,
        src_workload: &str,
        dst_ns: &str,
        dst_workload: &str,
        packets: u64,
        bytes: u64,
        locality: Locality,
        encrypted: bool,
    ) {
        self.observe(
            [src_ns, src_workload, dst_ns, dst_workload],
            1,
            packets,
            bytes,
            locality,
            encrypted,
        );
    }

    /// Counts a batch of flow records: the same as [`Metrics::observe_flow`] for each record of
    /// the batch, in the order the batch first saw each label set, at the cost of one update per
    /// label set.
    pub fn observe_flows(&self, batch: &FlowBatch<'_>) {
        for (k, sum) in &batch.sets {
            self.observe(
                k.workloads,
                sum.records,
                sum.packets,
                sum.bytes,
                k.locality,
                k.encrypted,
            );
        }
    }

    fn observe(
        &self,
        workloads: [&str; 4],
        records: u64,
        packets: u64,
        bytes: u64,
        locality: Locality,
        encrypted: bool,
    ) {
        let [src_namespace, src_workload, dst_namespace, dst_workload] =
            self.admit(workloads, records);
        let labels = FlowLabels {
            src_namespace,
            src_workload,
            dst_namespace,
            dst_workload,
            locality: locality.as_str(),
            encrypted: if encrypted { "true" } else { "false" },
        };
        self.flows.get_or_create(&labels).inc_by(records);
        self.packets.get_or_create(&labels).inc_by(packets);
        self.bytes.get_or_create(&labels).inc_by(bytes);
        if locality == Locality::InterNode && !encrypted {
            let pair = WorkloadPairLabels {
                src_namespace: labels.src_namespace,
                src_workload: labels.src_workload,
                dst_namespace: labels.dst_namespace,
                dst_workload: labels.dst_workload,
            };
            self.plaintext_inter_node_bytes
                .get_or_create(&pair)
                .inc_by(bytes);
        }
    }

    /// The label values to use for a tuple of `records` observations: itself if admitted (or
    /// admissible), else `_other`.
    fn admit(&self, tuple: [&str; 4], records: u64) -> WorkloadTuple {
        let tuple = tuple.map(|v| {
            if v.is_empty() {
                UNKNOWN_LABEL.to_string()
            } else {
                v.to_string()
            }
        });
        let mut sets = self
            .label_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sets.contains(&tuple) {
            return tuple;
        }
        if sets.len() < self.max_label_sets {
            sets.insert(tuple.clone());
            self.label_sets_gauge
                .set(i64::try_from(sets.len()).unwrap_or(i64::MAX));
            return tuple;
        }
        self.label_overflow.inc_by(records);
        [OVERFLOW_LABEL; 4].map(str::to_string)
    }

    /// Takes the kernel's cumulative counter array (indexed by [`podflow_ebpf::KernelCounter`]) and adds
    /// the growth since the previous call to `podflow_kernel_packets_total` and, for loss
    /// counters, `podflow_lost_packets_total`. A value below the previous one (new maps) counts as
    /// growth from 0. Extra entries are ignored, missing ones left unchanged.
    pub fn set_kernel_counters(&self, counters: &[u64]) {
        let mut last = self
            .kernel_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in KernelCounter::ALL {
            let i = c as usize;
            let Some(&now) = counters.get(i) else {
                continue;
            };
            let delta = if now >= last[i] { now - last[i] } else { now };
            last[i] = now;
            if delta == 0 {
                continue;
            }
            self.kernel
                .get_or_create(&CounterLabels { counter: c.name() })
                .inc_by(delta);
            if c.is_loss() {
                self.kernel_lost
                    .get_or_create(&ReasonLabels {
                        reason: c.name().to_string(),
                    })
                    .inc_by(delta);
            }
        }
    }

    /// Takes a cumulative user-space loss counter (e.g. `untracked_flows`) and adds its growth.
    pub fn set_user_loss(&self, reason: &str, cumulative: u64) {
        let mut last = self
            .user_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = last.insert(reason.to_string(), cumulative).unwrap_or(0);
        let delta = if cumulative >= prev {
            cumulative - prev
        } else {
            cumulative
        };
        // Create the series even at 0, so `increase()` sees the first loss.
        let c = self.user_lost.get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        });
        if delta > 0 {
            c.inc_by(delta);
        }
    }

    /// Number of attached interfaces of `kind` (`veth` or `l3`, as `IfaceKind::as_str`).
    pub fn set_interfaces(&self, kind: &str, n: usize) {
        self.interfaces
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_export_queue_depth(&self, n: usize) {
        self.export_queue_depth
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The exporter's cumulative failures and dropped records; the counters grow by the
    /// difference since the previous call (a restarted exporter starts again from 0).
    pub fn set_export_state(&self, failures: u64, dropped: u64) {
        let mut last = self
            .export_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let grow = |now: u64, prev: u64| if now >= prev { now - prev } else { now };
        self.export_failures.inc_by(grow(failures, last.0));
        self.export_dropped.inc_by(grow(dropped, last.1));
        *last = (failures, dropped);
    }

    pub fn set_metadata_age(&self, secs: f64) {
        self.metadata_age.set(secs);
    }

    /// The OpenMetrics text exposition (what `GET /metrics` returns).
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|_| MetricsError::Encode)?;
        Ok(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics listener on {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics failed")]
    Serve {
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the metrics failed")]
    Encode,
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` completes.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_metrics_on(metrics, listener, shutdown).await
}

/// Serves `GET /metrics` on an already bound listener (tests bind `127.0.0.1:0` and read the
/// port first) until `shutdown` completes.
pub async fn serve_metrics_on(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    serve_exposition_on(listener, move || metrics.encode(), shutdown).await
}

/// Serves `GET /metrics` with whatever `render` returns at each scrape (the collector renders
/// its per-agent status this way).
pub async fn serve_exposition_on(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> Result<String, MetricsError> + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    use axum::{http::StatusCode, http::header::CONTENT_TYPE, routing::get};
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render() {
                    Ok(body) => (
                        StatusCode::OK,
                        [(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                        body,
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        e.to_string(),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { source })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLossLabels {
    node: String,
    reason: String,
    unit: String,
}

/// The collector's metrics, rendered from its status: per agent (by node) records received,
/// duplicate batches dropped, connection state, and every loss the agent declared.
pub fn collector_exposition(
    status: &podflow_proto::v1::GetStatusResponse,
) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let received = Family::<AgentLabels, Counter>::default();
    let duplicates = Family::<AgentLabels, Counter>::default();
    let connected = Family::<AgentLabels, Gauge>::default();
    let lost = Family::<AgentLossLabels, Counter>::default();
    for a in &status.agents {
        let l = AgentLabels {
            node: a.node.clone(),
        };
        received.get_or_create(&l).inc_by(a.records_received);
        duplicates.get_or_create(&l).inc_by(a.duplicate_batches);
        connected.get_or_create(&l).set(i64::from(a.connected));
        for c in &a.losses {
            lost.get_or_create(&AgentLossLabels {
                node: a.node.clone(),
                reason: c.name.clone(),
                unit: c.unit.clone(),
            })
            .inc_by(c.value);
        }
    }
    registry.register(
        "podflow_collector_records_received",
        "Records received from each agent",
        received,
    );
    registry.register(
        "podflow_collector_duplicate_batches",
        "Re-sent batches recognised and dropped, per agent",
        duplicates,
    );
    registry.register(
        "podflow_collector_agent_connected",
        "1 while the agent's export stream is open",
        connected,
    );
    registry.register(
        "podflow_collector_agent_lost",
        "Losses each agent declared in its stream, by reason",
        lost,
    );
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|_| MetricsError::Encode)?;
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_series(name: &str, l: [&str; 4], locality: &str, encrypted: &str) -> String {
        format!(
            "{name}{{src_namespace=\"{}\",src_workload=\"{}\",dst_namespace=\"{}\",dst_workload=\"{}\",locality=\"{locality}\",encrypted=\"{encrypted}\"}}",
            l[0], l[1], l[2], l[3]
        )
    }

    #[test]
    fn counts_flows_by_workload() {
        let m = Metrics::new();
        m.observe_flow(
            "shop",
            "frontend",
            "shop",
            "backend",
            10,
            1000,
            Locality::SameNode,
            false,
        );
        m.observe_flow(
            "shop",
            "frontend",
            "shop",
            "backend",
            5,
            500,
            Locality::SameNode,
            false,
        );
        m.observe_flow(
            "shop",
            "frontend",
            "db",
            "postgres",
            3,
            300,
            Locality::InterNode,
            true,
        );
        m.observe_flow(
            "shop",
            "frontend",
            "",
            "",
            2,
            200,
            Locality::InterNode,
            false,
        );
        let t = m.encode().unwrap();
        let fb = ["shop", "frontend", "shop", "backend"];
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flows_total", fb, "same_node", "false")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flow_packets_total", fb, "same_node", "false")
            ),
            Some(15.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flow_bytes_total", fb, "same_node", "false")
            ),
            Some(1500.0)
        );
        let fp = ["shop", "frontend", "db", "postgres"];
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flow_bytes_total", fp, "inter_node", "true")
            ),
            Some(300.0)
        );
        let fu = ["shop", "frontend", "_unknown", "_unknown"];
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flow_bytes_total", fu, "inter_node", "false")
            ),
            Some(200.0)
        );
        // Only the unencrypted inter-node flow is plaintext.
        assert_eq!(
            sample_value(
                &t,
                "podflow_plaintext_inter_node_bytes_total{src_namespace=\"shop\",src_workload=\"frontend\",dst_namespace=\"_unknown\",dst_workload=\"_unknown\"}"
            ),
            Some(200.0)
        );
        assert_eq!(
            t.matches("podflow_plaintext_inter_node_bytes_total{")
                .count(),
            1,
            "{t}"
        );
        assert_eq!(sample_value(&t, "podflow_flow_label_sets"), Some(3.0));
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn label_sets_are_bounded_with_an_other_bucket() {
        let m = Metrics::with_max_label_sets(2);
        m.observe_flow("a", "x", "b", "y", 1, 10, Locality::SameNode, false);
        m.observe_flow("a", "x", "b", "z", 1, 10, Locality::SameNode, false);
        m.observe_flow("a", "x", "c", "w", 1, 10, Locality::SameNode, false); // third: overflows
        m.observe_flow("a", "x", "d", "v", 2, 20, Locality::SameNode, false); // fourth: overflows
        m.observe_flow("a", "x", "b", "y", 1, 10, Locality::SameNode, false); // admitted before: still its own
        let t = m.encode().unwrap();
        let other = [OVERFLOW_LABEL; 4];
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flow_bytes_total", other, "same_node", "false")
            ),
            Some(30.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &flow_series("podflow_flows_total", other, "same_node", "false")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &flow_series(
                    "podflow_flow_bytes_total",
                    ["a", "x", "b", "y"],
                    "same_node",
                    "false"
                )
            ),
            Some(20.0)
        );
        assert_eq!(
            sample_value(&t, "podflow_flow_label_overflow_total"),
            Some(2.0)
        );
        assert_eq!(sample_value(&t, "podflow_flow_label_sets"), Some(2.0));
        // 2 admitted tuples + _other, one locality/encryption combination each.
        assert_eq!(t.matches("podflow_flow_bytes_total{").count(), 3, "{t}");
    }

    #[test]
    fn a_batch_counts_like_one_observation_per_record() {
        // Near the label-set limit, with repeats, empty names, both localities and encryption.
        let records: [([&str; 4], u64, u64, Locality, bool); 7] = [
            (["a", "x", "b", "y"], 1, 10, Locality::SameNode, false),
            (["a", "x", "", ""], 2, 20, Locality::InterNode, false),
            (["a", "x", "c", "w"], 3, 30, Locality::SameNode, false), // overflows
            (["a", "x", "b", "y"], 4, 40, Locality::SameNode, false),
            (["a", "x", "c", "w"], 5, 50, Locality::SameNode, false), // overflows
            (["a", "x", "b", "y"], 6, 60, Locality::InterNode, true),
            (["a", "x", "", ""], 7, 70, Locality::InterNode, false),
        ];
        let one_by_one = Metrics::with_max_label_sets(2);
        for (w, p, b, l, e) in records {
            one_by_one.observe_flow(w[0], w[1], w[2], w[3], p, b, l, e);
        }
        let batched = Metrics::with_max_label_sets(2);
        // Names in distinct allocations, as they are in distinct records.
        let owned: Vec<[String; 4]> = records
            .iter()
            .map(|(w, ..)| w.map(str::to_string))
            .collect();
        let mut batch = FlowBatch::new();
        for ((_, p, b, l, e), w) in records.iter().zip(&owned) {
            batch.add(&w[0], &w[1], &w[2], &w[3], *p, *b, *l, *e);
        }
        assert_eq!(batch.len(), 4);
        batched.observe_flows(&batch);
        let t = batched.encode().unwrap();
        // The same series and values (a family's series come in hash order: sort them).
        let sorted = |t: &str| {
            let mut lines: Vec<String> = t.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&t), sorted(&one_by_one.encode().unwrap()));
        assert_eq!(
            sample_value(&t, "podflow_flow_label_overflow_total"),
            Some(2.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &flow_series(
                    "podflow_flows_total",
                    ["a", "x", "b", "y"],
                    "same_node",
                    "false"
                )
            ),
            Some(2.0)
        );
    }

    #[test]
    fn same_str_compares_contents() {
        let (a, b) = (String::from("cart"), String::from("cart"));
        assert!(same_str(&a, &b));
        assert!(same_str(&a, &a));
        let empty = String::with_capacity(8);
        assert!(same_str("", &empty));
        assert!(!same_str("cart", "carT"));
        assert!(!same_str("cart", "car"));
        assert!(!same_str("", "x"));
    }

    #[test]
    fn kernel_counters_are_cumulative_and_losses_have_a_reason() {
        let m = Metrics::new();
        let before = m.encode().unwrap();
        // Every series exists from start, at 0.
        for c in KernelCounter::ALL {
            let s = format!("podflow_kernel_packets_total{{counter=\"{}\"}}", c.name());
            assert_eq!(sample_value(&before, &s), Some(0.0), "{s}");
            let l = format!("podflow_lost_packets_total{{reason=\"{}\"}}", c.name());
            assert_eq!(sample_value(&before, &l).is_some(), c.is_loss(), "{l}");
        }
        let mut k = [0u64; COUNTER_COUNT as usize];
        k[KernelCounter::Packets as usize] = 100;
        k[KernelCounter::LostMapFull as usize] = 7;
        m.set_kernel_counters(&k);
        k[KernelCounter::Packets as usize] = 150;
        k[KernelCounter::LostMapFull as usize] = 9;
        k[KernelCounter::LostIpMalformed as usize] = 1;
        m.set_kernel_counters(&k);
        m.set_kernel_counters(&k); // no growth, no change
        let t = m.encode().unwrap();
        assert_eq!(
            sample_value(&t, "podflow_kernel_packets_total{counter=\"packets\"}"),
            Some(150.0)
        );
        assert_eq!(
            sample_value(&t, "podflow_lost_packets_total{reason=\"lost_map_full\"}"),
            Some(9.0)
        );
        assert_eq!(
            sample_value(
                &t,
                "podflow_lost_packets_total{reason=\"lost_ip_malformed\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample_value(&t, "podflow_lost_packets_total{reason=\"lost_map_error\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample_value(
                &t,
                "podflow_kernel_packets_total{counter=\"lost_map_full\"}"
            ),
            Some(9.0)
        );
    }

    #[test]
    fn gauges_and_export_and_user_losses() {
        let m = Metrics::new();
        m.set_interfaces("veth", 12);
        m.set_interfaces("l3", 1);
        m.set_export_queue_depth(42);
        m.set_export_state(1, 0);
        m.set_export_state(2, 5);
        m.set_metadata_age(2.5);
        m.set_user_loss("untracked_flows", 3);
        m.set_user_loss("untracked_flows", 10);
        let t = m.encode().unwrap();
        assert_eq!(
            sample_value(&t, "podflow_interfaces_attached{kind=\"veth\"}"),
            Some(12.0)
        );
        assert_eq!(
            sample_value(&t, "podflow_interfaces_attached{kind=\"l3\"}"),
            Some(1.0)
        );
        assert_eq!(sample_value(&t, "podflow_export_queue_depth"), Some(42.0));
        assert_eq!(sample_value(&t, "podflow_export_failures_total"), Some(2.0));
        assert_eq!(sample_value(&t, "podflow_export_dropped_total"), Some(5.0));
        assert_eq!(sample_value(&t, "podflow_metadata_age_seconds"), Some(2.5));
        assert_eq!(
            sample_value(&t, "podflow_user_lost_total{reason=\"untracked_flows\"}"),
            Some(10.0)
        );
        assert_eq!(
            sample_value(
                &t,
                &format!("podflow_build_info{{version=\"{}\"}}", crate::VERSION)
            ),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let m = Metrics::new();
        m.set_export_queue_depth(7);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics_on(m, listener, async move {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            resp
        };
        let resp = get("/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{resp}"
        );
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(sample_value(body, "podflow_export_queue_depth"), Some(7.0));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

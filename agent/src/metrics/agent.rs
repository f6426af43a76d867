//! The agent's metrics: flow counters by workload pair (bounded label sets), kernel and user-space
//! losses, interfaces, the exporter and the metadata age.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use podflow_ebpf::{COUNTER_COUNT, KernelCounter};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{
    DEFAULT_MAX_LABEL_SETS, FlowBatch, Locality, MetricsError, OVERFLOW_LABEL, UNKNOWN_LABEL,
};

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
struct RcodeLabels {
    rcode: String,
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
    /// The cumulative values last set, by series (`user_lost` and `attribution_gaps` reasons, the
    /// translated records), to add their growth.
    last: Mutex<std::collections::HashMap<String, u64>>,
    attribution_gaps: Family<ReasonLabels, Counter>,
    translated_records: Counter,
    conntrack_entries: Gauge,
    interfaces: Family<KindLabels, Gauge>,
    export_queue_depth: Gauge,
    export_failures: Counter,
    export_dropped: Counter,
    /// (failures, dropped) at the previous [`Metrics::set_export_state`].
    export_last: Mutex<(u64, u64)>,
    metadata_age: Gauge<f64, AtomicU64>,
    dns_messages: Family<KindLabels, Counter>,
    dns_responses: Family<RcodeLabels, Counter>,
    dropped_packets: Family<ReasonLabels, Counter>,
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
        let attribution_gaps = Family::<ReasonLabels, Counter>::default();
        let translated_records = Counter::default();
        let conntrack_entries = Gauge::default();
        let interfaces = Family::<KindLabels, Gauge>::default();
        let export_queue_depth = Gauge::default();
        let export_failures = Counter::default();
        let export_dropped = Counter::default();
        let metadata_age = Gauge::<f64, AtomicU64>::default();
        let dns_messages = Family::<KindLabels, Counter>::default();
        let dns_responses = Family::<RcodeLabels, Counter>::default();
        let dropped_packets = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "podflow_dropped_packets",
            "Packets of flows the kernel dropped, by the kernel's reason (enum skb_drop_reason: a \
             bounded set)",
            dropped_packets.clone(),
        );
        registry.register(
            "podflow_dns_messages",
            "DNS messages the pods sent or received, by kind (query, response, malformed, \
             unanswered: queries without a response within 10 s, lost: not read)",
            dns_messages.clone(),
        );
        registry.register(
            "podflow_dns_responses",
            "DNS responses to the pods, by response code",
            dns_responses.clone(),
        );
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
            "podflow_attribution_gaps",
            "Times or records a flow could not be attributed to its Service backend, by reason",
            attribution_gaps.clone(),
        );
        registry.register(
            "podflow_translated_records",
            "Records of flows the node translated (Service DNAT, masquerade), named by their real ends",
            translated_records.clone(),
        );
        registry.register(
            "podflow_conntrack_entries",
            "Translated connections of the node's conntrack that the agent follows",
            conntrack_entries.clone(),
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
            last: Mutex::new(std::collections::HashMap::new()),
            attribution_gaps,
            translated_records,
            conntrack_entries,
            interfaces,
            export_queue_depth,
            export_failures,
            export_dropped,
            export_last: Mutex::new((0, 0)),
            metadata_age,
            dns_messages,
            dns_responses,
            dropped_packets,
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
    /// Alerts sum over agents: observe only the records that count once
    /// (`flows::rules::counted_on`), or an inter-node flow's traffic counts twice (once leaving
    /// one node, once arriving at the other).
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
        // Create the series even at 0, so `increase()` sees the first loss.
        let c = self.user_lost.get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        });
        c.inc_by(self.growth(&format!("user_lost/{reason}"), cumulative));
    }

    /// Takes a cumulative count of one reason why flows could not be attributed to their
    /// Service backend (e.g. `conntrack_events_dropped`) and adds its growth.
    pub fn set_attribution_gap(&self, reason: &str, cumulative: u64) {
        let c = self.attribution_gaps.get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        });
        c.inc_by(self.growth(&format!("attribution_gaps/{reason}"), cumulative));
    }

    /// The DNS tracker's cumulative counts. The response codes are the header's 16 values, by
    /// name: a bounded label set.
    pub fn set_dns(&self, s: &crate::dns::DnsStats) {
        for (kind, value) in [
            ("query", s.queries),
            ("response", s.responses),
            ("malformed", s.malformed),
            ("unanswered", s.unanswered),
            ("lost", s.lost),
        ] {
            let c = self.dns_messages.get_or_create(&KindLabels {
                kind: kind.to_string(),
            });
            c.inc_by(self.growth(&format!("dns_messages/{kind}"), value));
        }
        for (rcode, &value) in s.rcodes.iter().enumerate() {
            if value == 0 {
                continue;
            }
            let name = crate::dns::rcode_name(rcode as u32);
            let c = self.dns_responses.get_or_create(&RcodeLabels {
                rcode: name.clone(),
            });
            c.inc_by(self.growth(&format!("dns_responses/{name}"), value));
        }
    }

    /// The drop tracker's cumulative counts by reason.
    pub fn set_drops(&self, s: &crate::drops::DropStats) {
        for (reason, &value) in &s.by_reason {
            let c = self.dropped_packets.get_or_create(&ReasonLabels {
                reason: reason.clone(),
            });
            c.inc_by(self.growth(&format!("dropped_packets/{reason}"), value));
        }
    }

    /// The cumulative count of translated records, and the translated connections followed now.
    pub fn set_translations(&self, records: u64, entries: u64) {
        self.translated_records
            .inc_by(self.growth("translated_records", records));
        self.conntrack_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The growth of the cumulative `series` since its previous value (a value below it counts
    /// as growth from 0: a restarted source).
    fn growth(&self, series: &str, cumulative: u64) -> u64 {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = last.insert(series.to_string(), cumulative).unwrap_or(0);
        if cumulative >= prev {
            cumulative - prev
        } else {
            cumulative
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample_value;

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
}

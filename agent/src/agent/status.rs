//! What the agent counts beside the records (kernel counters, plaintext inter-node traffic, the
//! exporter's view) and the status and loss records it serves from them.
use podflow_ebpf::KernelCounter;

use crate::{
    capture::{Capture, Gap, KernelCounters},
    conntrack::ConntrackStats,
    dns::DnsStats,
    drops::DropStats,
    export::{EXPORT_BUFFER_FULL, ExportStats},
    flows::FlowTable,
    handshake::HandshakeStats,
    metrics::Metrics,
    proto,
    time::Clock,
};

/// Loss and informational counters of user space and kernel, as reported in the status.
#[derive(Debug, Default)]
pub(super) struct Tallies {
    pub(super) kernel: KernelCounters,
    /// The kernel counters as of the last loss records.
    kernel_reported: KernelCounters,
    /// Records flagged plaintext inter-node, and their bytes (scaled by the sampling rate).
    pub(super) plaintext_inter_node_flows: u64,
    pub(super) plaintext_inter_node_bytes: u64,
    /// The exporter's view, when exporting to a collector.
    pub(super) export: Option<ExportStats>,
    /// Records the node's conntrack translated (Service backends named), and translated records
    /// whose Service address names no known Service.
    pub(super) translated_records: u64,
    pub(super) service_unknown: u64,
    /// The conntrack source's view.
    pub(super) conntrack: ConntrackStats,
    /// The DNS tracker's counts.
    pub(super) dns: DnsStats,
    /// The TCP handshake tracker's counts.
    pub(super) handshakes: HandshakeStats,
    /// The drop tracker's counts.
    pub(super) drops: DropStats,
    /// RTT samples put on records, and those whose record did not come.
    pub(super) rtt: (u64, u64),
}

impl Tallies {
    /// Adopted kernel maps: the loss counts the previous agent reported are not reported again.
    pub(super) fn set_reported(&mut self, reported: KernelCounters) {
        self.kernel_reported = reported;
    }

    pub(super) fn reported(&self) -> &KernelCounters {
        &self.kernel_reported
    }

    /// Counters of Service attribution, cumulative: (name, value, unit). Those that say where
    /// a flow could not be attributed are the `attribution_gaps` of the metrics.
    pub(super) fn attribution(&self) -> [(&'static str, u64, &'static str); 10] {
        let c = &self.conntrack;
        [
            ("translated_records", self.translated_records, "records"),
            ("conntrack_translations", c.table.added, "connections"),
            ("conntrack_found", c.found, "entries"),
            ("conntrack_asked", c.asked, "connections"),
            ("conntrack_entries", c.table.entries, "connections"),
            ("conntrack_table_full", c.table.table_full, "connections"),
            ("conntrack_events_dropped", c.overflows, "times"),
            ("conntrack_errors", c.errors, "times"),
            ("conntrack_unavailable", u64::from(c.unavailable), "state"),
            ("service_unknown", self.service_unknown, "records"),
        ]
    }
}

/// The attribution counters that say where records could not be attributed to a Service.
pub(super) const ATTRIBUTION_GAPS: [&str; 5] = [
    "conntrack_table_full",
    "conntrack_events_dropped",
    "conntrack_errors",
    "conntrack_unavailable",
    "service_unknown",
];

/// What the status of a running agent says that does not change while it runs.
pub(super) struct StatusInfo {
    pub(super) node: String,
    pub(super) start_time: prost_types::Timestamp,
    pub(super) flush_interval_ms: u32,
    pub(super) sampling_rate: u32,
}

impl StatusInfo {
    /// The status the API serves now.
    pub(super) fn status(
        &self,
        capture: &Capture,
        table: &FlowTable,
        tallies: &Tallies,
    ) -> proto::GetStatusResponse {
        proto::GetStatusResponse {
            node: self.node.clone(),
            version: crate::VERSION.to_string(),
            start_time: Some(self.start_time),
            interfaces: capture
                .interfaces()
                .into_iter()
                .map(|i| proto::Interface {
                    name: i.name,
                    ifindex: i.ifindex,
                    kind: i.kind.as_str().to_string(),
                    attach_mode: i.mode.as_str().to_string(),
                })
                .collect(),
            flows_active: table.active_flows() as u64,
            flush_interval_ms: self.flush_interval_ms,
            sampling_rate: self.sampling_rate,
            flow_map_capacity: capture.flow_map_capacity(),
            counters: {
                let mut counters = status_counters(tallies, table);
                counters.push(proto::StatusCounter {
                    name: "attachments_restored".into(),
                    value: capture.restored_attachments(),
                    loss: false,
                    unit: "interfaces".into(),
                });
                counters
            },
            buffered_events: 0,
            agents: Vec::new(),
        }
    }
}

/// Loss records for every kernel loss counter that grew since the last report.
pub(super) fn loss_events(
    counters: &mut Tallies,
    node: &str,
    clock: &Clock,
) -> Vec<proto::FlowEvent> {
    let mut out = Vec::new();
    for c in KernelCounter::ALL {
        if !c.is_loss() {
            continue;
        }
        let i = c as usize;
        let delta = counters.kernel[i].saturating_sub(counters.kernel_reported[i]);
        counters.kernel_reported[i] = counters.kernel[i];
        if delta > 0 {
            out.push(proto::FlowEvent {
                event: Some(proto::flow_event::Event::Loss(proto::LossRecord {
                    time: Some(clock.to_timestamp(clock.mono_now_ns)),
                    node: node.to_string(),
                    reason: c.name().to_string(),
                    count: delta,
                    unit: "packets".into(),
                    ..Default::default()
                })),
            });
        }
    }
    out
}

/// Loss records for the times packets were not counted, one per reason: `count` is the sum of
/// the windows in ns, `from`/`to` their span.
pub(super) fn gap_events(gaps: &[Gap], node: &str) -> Vec<proto::FlowEvent> {
    let mut by_reason: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
    for g in gaps {
        let e = by_reason.entry(g.reason).or_insert((u64::MAX, 0, 0));
        e.0 = e.0.min(g.from_ns);
        e.1 = e.1.max(g.to_ns);
        e.2 += g.to_ns.saturating_sub(g.from_ns);
    }
    let ts = |ns: u64| crate::time::timestamp_from_unix_ns(i128::from(ns));
    by_reason
        .into_iter()
        .map(|(reason, (from, to, total))| proto::FlowEvent {
            event: Some(proto::flow_event::Event::Loss(proto::LossRecord {
                time: Some(ts(to)),
                node: node.to_string(),
                reason: reason.to_string(),
                count: total,
                unit: "nanoseconds".into(),
                from: Some(ts(from)),
                to: Some(ts(to)),
            })),
        })
        .collect()
}

fn status_counters(counters: &Tallies, table: &FlowTable) -> Vec<proto::StatusCounter> {
    let mut out: Vec<proto::StatusCounter> = KernelCounter::ALL
        .iter()
        .map(|c| proto::StatusCounter {
            name: c.name().to_string(),
            value: counters.kernel[*c as usize],
            loss: c.is_loss(),
            unit: "packets".into(),
        })
        .collect();
    out.push(proto::StatusCounter {
        name: "plaintext_inter_node_flows".into(),
        value: counters.plaintext_inter_node_flows,
        loss: false,
        unit: "records".into(),
    });
    out.push(proto::StatusCounter {
        name: "plaintext_inter_node_bytes".into(),
        value: counters.plaintext_inter_node_bytes,
        loss: false,
        unit: "bytes".into(),
    });
    if let Some(export) = &counters.export {
        // Always report the buffer-full reason, so its series exists before the first loss.
        let mut dropped = export.dropped_records.clone();
        dropped.entry(EXPORT_BUFFER_FULL.to_string()).or_insert(0);
        for (reason, value) in dropped {
            out.push(proto::StatusCounter {
                name: reason,
                value,
                loss: true,
                unit: "records".into(),
            });
        }
        for (name, value) in [
            ("export_acked_records", export.acked_records),
            ("export_queue_depth", export.queue_depth),
            ("export_failures", export.failures),
            ("export_connected", u64::from(export.connected)),
        ] {
            out.push(proto::StatusCounter {
                name: name.into(),
                value,
                loss: false,
                unit: "records".into(),
            });
        }
    }
    out.push(proto::StatusCounter {
        name: "untracked_flows".into(),
        value: table.untracked(),
        loss: false,
        unit: "records".into(),
    });
    let d = &counters.dns;
    out.extend(
        [
            ("dns_messages", d.messages, "messages"),
            ("dns_malformed", d.malformed, "messages"),
            ("dns_matched", d.matched, "responses"),
            ("dns_unanswered", d.unanswered, "queries"),
            ("dns_pending_evicted", d.pending_evicted, "queries"),
            (
                "dns_messages_dropped",
                d.dropped_per_record + d.unattached,
                "messages",
            ),
            ("dns_lost", d.lost, "messages"),
            (
                "tcp_handshakes_timed",
                counters.handshakes.matched,
                "connections",
            ),
            (
                "tcp_handshakes_unanswered",
                counters.handshakes.unanswered,
                "connections",
            ),
            (
                "tcp_handshakes_evicted",
                counters.handshakes.evicted,
                "connections",
            ),
            (
                "tcp_handshakes_unattached",
                counters.handshakes.unattached,
                "connections",
            ),
            (
                "tcp_handshake_segments_lost",
                counters.handshakes.lost,
                "segments",
            ),
            (
                "dropped_packets_attached",
                counters.drops.attached,
                "packets",
            ),
            (
                "dropped_packets_unattached",
                counters.drops.unattached,
                "packets",
            ),
            ("tcp_srtt_samples_attached", counters.rtt.0, "samples"),
            ("tcp_srtt_samples_unattached", counters.rtt.1, "samples"),
        ]
        .into_iter()
        .map(|(name, value, unit)| proto::StatusCounter {
            name: name.into(),
            value,
            loss: false,
            unit: unit.into(),
        }),
    );
    out.extend(
        counters
            .attribution()
            .into_iter()
            .map(|(name, value, unit)| proto::StatusCounter {
                name: name.into(),
                value,
                loss: false,
                unit: unit.into(),
            }),
    );
    out
}

/// Sets the agent's gauges and counters in the metrics.
pub(super) fn update_metrics(
    metrics: &Metrics,
    capture: &Capture,
    table: &FlowTable,
    counters: &Tallies,
) {
    metrics.set_kernel_counters(&counters.kernel);
    metrics.set_user_loss("untracked_flows", table.untracked());
    for (name, value, _) in counters.attribution() {
        if ATTRIBUTION_GAPS.contains(&name) {
            metrics.set_attribution_gap(name, value);
        }
    }
    metrics.set_dns(&counters.dns);
    metrics.set_drops(&counters.drops);
    metrics.set_translations(
        counters.translated_records,
        counters.conntrack.table.entries,
    );
    if let Some(export) = &counters.export {
        metrics.set_export_queue_depth(usize::try_from(export.queue_depth).unwrap_or(usize::MAX));
        metrics.set_export_state(export.failures, export.dropped_total());
    }
    let ifaces = capture.interfaces();
    for kind in ["veth", "l3"] {
        metrics.set_interfaces(
            kind,
            ifaces.iter().filter(|i| i.kind.as_str() == kind).count(),
        );
    }
}

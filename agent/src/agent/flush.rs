//! The flush pipeline: drain the kernel, turn the entries into records a chunk at a time (flow
//! table), name their endpoints (enrichment), apply the flow rules, count them into the metrics
//! and hand them to the API hub and the exporter, then the loss records.
use tracing::warn;

use super::status::{Tallies, gap_events, loss_events};
use crate::{
    api::Hub,
    capture::{Capture, FlowEntry, IfaceKind},
    conntrack::Conntrack,
    dns::DnsSource,
    drops::{DropSource, RttSource},
    export::ExporterHandle,
    flows::{FlowTable, enrich, rules},
    handshake::HandshakeSource,
    metadata,
    metrics::{FlowBatch, Locality, Metrics},
    proto,
    report::error_chain,
    time::Clock,
};

/// Where a flush's records go, and what names them.
pub(super) struct Outputs<'a> {
    pub(super) node: &'a str,
    pub(super) hub: &'a Hub,
    pub(super) index: Option<&'a metadata::SharedIndex>,
    pub(super) metrics: &'a Metrics,
    pub(super) exporter: Option<&'a ExporterHandle>,
}

/// What the records carry beside their counts, from the kernel's other sources: DNS messages,
/// TCP handshakes, drops.
pub(super) struct Extras {
    pub(super) dns: DnsSource,
    pub(super) handshakes: HandshakeSource,
    pub(super) drops: DropSource,
    pub(super) rtt: RttSource,
}

/// Records are made, enriched, counted and published this many at a time: a flush of 100 000
/// flows never holds all of its records at once (they used to peak at ~100 MiB of short-lived
/// heap, which glibc kept as resident memory).
/// Small enough that a chunk's short-lived allocations are recycled by the allocator's per-thread
/// caches while still hot.
const FLUSH_CHUNK: usize = 256;

/// `entries`: the drain's buffer, kept from one flush to the next (empty between flushes).
pub(super) fn flush_once(
    capture: &mut Capture,
    table: &mut FlowTable,
    conntrack: &mut Conntrack,
    extras: &mut Extras,
    counters: &mut Tallies,
    entries: &mut Vec<FlowEntry>,
    out: &Outputs<'_>,
) {
    match tokio::task::block_in_place(|| capture.drain_into(entries)) {
        Ok((kernel, flip_ns)) => {
            counters.kernel = kernel;
            // Pods that only receive from other pods of the node are known from their veth's
            // slot (their packets are counted once, where they entered).
            for (ifindex, family, addr) in capture.veth_peers() {
                table.learn_local(family, &addr, ifindex, flip_ns);
            }
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "draining the flow maps failed");
            return;
        }
    }
    // The events of every connection the drain holds packets of are queued by now (see
    // `conntrack`): apply them before the records are made.
    let _ = conntrack.catch_up();
    // (Checked here too: flows of the first second of a node's first connections were counted
    // before the programs' lookups were switched on; they are asked for. Without the programs'
    // lookups this reads nothing.)
    conntrack.check_tracking();
    if conntrack.asks() {
        let mut unfound = Vec::new();
        table.unfound(entries, conntrack.translations(), &mut unfound);
        if !unfound.is_empty() {
            tokio::task::block_in_place(|| conntrack.ask(&unfound));
        }
    }
    let clock = Clock::now();
    // Likewise the DNS messages of the drain's packets are in the ring: named by the real ends
    // (the translations just applied) before the records that carry them are made.
    let nat = conntrack.translations();
    extras.dns.read();
    extras.dns.tracker.prepare(nat, clock.mono_now_ns);
    extras.handshakes.read();
    extras.handshakes.tracker.prepare(nat, clock.mono_now_ns);
    // The drops of the drain's packets are in the kernel's map by now (same reasoning).
    extras.drops.read(nat);
    extras.rtt.read(nat);
    let wireguard = capture
        .interfaces()
        .iter()
        .any(|i| matches!(i.kind, IfaceKind::L3));
    let ifname = |ifindex| capture.interface_name(ifindex);
    let n = table.group(entries);
    let mut records = Vec::with_capacity(n.min(FLUSH_CHUNK));
    let mut from = 0;
    while from < n {
        let to = (from + FLUSH_CHUNK).min(n);
        table.records(
            entries,
            from..to,
            &clock,
            &ifname,
            conntrack.translations(),
            &mut records,
        );
        publish_records(&mut records, wireguard, extras, counters, out);
        from = to;
    }
    extras.dns.tracker.end_flush();
    counters.dns = extras.dns.tracker.stats();
    extras.handshakes.tracker.end_flush();
    counters.handshakes = extras.handshakes.tracker.stats();
    extras.drops.tracker.end_flush();
    extras.rtt.end_flush();
    counters.rtt = (extras.rtt.attached, extras.rtt.unattached);
    counters.drops = extras.drops.tracker.stats().clone();
    table.evict(&clock);
    // Keep the allocation for the next flush, but not a burst's worth of it for ever.
    let len = entries.len();
    entries.clear();
    if entries.capacity() > 4 * len.max(FLUSH_CHUNK) {
        entries.shrink_to(2 * len.max(FLUSH_CHUNK));
    }
    let mut losses = loss_events(counters, out.node, &clock);
    if capture.persistent()
        && let Err(e) = capture.save_state(counters.reported())
    {
        warn!(error = %error_chain(&e), "recording the drain for the next agent failed");
    }
    losses.extend(gap_events(&capture.take_gaps(), out.node));
    if !losses.is_empty() {
        out.hub.publish_each(&losses);
        if let Some(exporter) = out.exporter {
            exporter.send(losses);
        }
    }
}

/// Enriches a chunk of records, counts them into the metrics and hands them to the hub and the
/// exporter; leaves `records` empty (its capacity is reused).
fn publish_records(
    records: &mut Vec<proto::Flow>,
    wireguard: bool,
    extras: &mut Extras,
    counters: &mut Tallies,
    out: &Outputs<'_>,
) {
    if records.is_empty() {
        return;
    }
    let dns = &mut extras.dns.tracker;
    if !dns.is_idle() {
        for r in records.iter_mut() {
            dns.attach(r);
        }
    }
    let handshakes = &mut extras.handshakes.tracker;
    if !handshakes.is_idle() {
        for r in records.iter_mut().filter(|r| r.protocol == 6) {
            handshakes.attach(r);
        }
    }
    let drops = &mut extras.drops.tracker;
    if !drops.is_idle() {
        for r in records.iter_mut() {
            drops.attach(r);
        }
    }
    let rtt = &mut extras.rtt;
    if !rtt.is_idle() {
        for r in records.iter_mut().filter(|r| r.protocol == 6) {
            rtt.attach(r);
        }
    }
    let node = out.node;
    if let Some(index) = out.index {
        let stats = enrich::enrich(records, &metadata::read_index(index), node);
        counters.service_unknown += stats.service_unknown;
    }
    for r in records.iter_mut() {
        counters.translated_records += u64::from(r.translation.is_some());
        r.plaintext_inter_node = rules::plaintext_inter_node(r, wireguard);
        if r.plaintext_inter_node {
            counters.plaintext_inter_node_flows += 1;
            counters.plaintext_inter_node_bytes += rules::scaled(r.bytes, r.sampling_rate);
        }
    }
    let mut batch = FlowBatch::new();
    for r in records.iter().filter(|r| rules::counted_on(r, node)) {
        let (src, dst) = (
            r.src.as_ref().map_or(("", ""), endpoint_names),
            r.dst.as_ref().map_or(("", ""), endpoint_names),
        );
        batch.add(
            src.0,
            src.1,
            dst.0,
            dst.1,
            rules::scaled(r.packets, r.sampling_rate),
            rules::scaled(r.bytes, r.sampling_rate),
            Locality::of(r.same_node, r.inter_node),
            r.encrypted,
        );
    }
    out.metrics.observe_flows(&batch);
    drop(batch);
    let events = records.drain(..).map(|f| proto::FlowEvent {
        event: Some(proto::flow_event::Event::Flow(f)),
    });
    match out.exporter {
        Some(exporter) => {
            // Encoded once for both: the ring and the export buffer keep the same slices.
            let events: Vec<proto::FlowEvent> = events.collect();
            let encoded = proto::ExportBatch::encode_events(&events);
            drop(events);
            out.hub.publish_encoded(encoded.clone());
            exporter.send_encoded(encoded);
        }
        None => out.hub.publish_each(events),
    }
}

/// (namespace, workload) of an endpoint.
fn endpoint_names(e: &proto::Endpoint) -> (&str, &str) {
    (&e.namespace, &e.workload)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::{api, metrics::sample_value};

    fn endpoint(namespace: &str, workload: &str, node: &str) -> proto::Endpoint {
        proto::Endpoint {
            kind: "pod".into(),
            namespace: namespace.into(),
            workload: workload.into(),
            node: node.into(),
            ..Default::default()
        }
    }

    /// A record made on node-a (a pod-to-pod flow: reported by both nodes when inter-node).
    fn record(port: u32, src_node: &str, dst_node: &str) -> proto::Flow {
        proto::Flow {
            src_port: port,
            packets: 2,
            bytes: 100,
            sampling_rate: 4,
            node: "node-a".into(),
            inter_node: src_node != dst_node,
            reporter: if src_node == "node-a" { "SRC" } else { "DEST" }.into(),
            src: Some(endpoint("shop", "cart", src_node)),
            dst: Some(endpoint("shop", "db", dst_node)),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_chunk_is_counted_once_and_published_in_order() {
        let hub = Hub::new(100);
        let metrics = Metrics::new();
        let outputs = Outputs {
            node: "node-a",
            hub: &hub,
            index: None,
            metrics: &metrics,
            exporter: None,
        };
        let mut counters = Tallies::default();
        let mut records = vec![
            record(1, "node-a", "node-b"),
            // Inter-node from the other node: its source's node counts it.
            record(2, "node-b", "node-a"),
            record(3, "node-a", "node-a"),
        ];
        let capacity = records.capacity();
        let mut extras = Extras {
            dns: DnsSource::new(
                None,
                crate::dns::DnsTracker::new(crate::dns::DnsConfig::default()),
            ),
            handshakes: HandshakeSource::new(
                None,
                crate::handshake::HandshakeTracker::new(
                    crate::handshake::HandshakeConfig::default(),
                ),
            ),
            drops: DropSource::new(None),
            rtt: RttSource::new(None),
        };
        publish_records(&mut records, true, &mut extras, &mut counters, &outputs);
        assert!(records.is_empty());
        assert_eq!(records.capacity(), capacity);
        let ports: Vec<u32> = hub
            .subscribe(api::Query::default())
            .map(|e| match e.event {
                Some(proto::flow_event::Event::Flow(f)) => {
                    assert_eq!(f.plaintext_inter_node, f.inter_node);
                    f.src_port
                }
                _ => 0,
            })
            .collect()
            .await;
        assert_eq!(ports, [1, 2, 3]);
        // Both inter-node records bypassed WireGuard on this node; bytes scaled by the rate.
        assert_eq!(counters.plaintext_inter_node_flows, 2);
        assert_eq!(counters.plaintext_inter_node_bytes, 800);
        let t = metrics.encode().unwrap();
        let series = |locality: &str| {
            format!(
                "podflow_flow_packets_total{{src_namespace=\"shop\",src_workload=\"cart\",dst_namespace=\"shop\",dst_workload=\"db\",locality=\"{locality}\",encrypted=\"false\"}}"
            )
        };
        assert_eq!(sample_value(&t, &series("inter_node")), Some(8.0));
        assert_eq!(sample_value(&t, &series("other")), Some(8.0));
    }
}

//! Rules that decide what a record means beyond its counts: which traffic is plaintext where it
//! should be encrypted, how sampled counts scale, and which records count when the records of all
//! nodes are summed.
use crate::proto;

/// [`proto::Flow::reporter`] of a record made on the source's side of the flow.
pub const SRC: &str = "SRC";
/// [`proto::Flow::reporter`] of a record made on the destination's side of the flow.
pub const DEST: &str = "DEST";

/// Inter-node traffic that did not go through WireGuard, on a node that has WireGuard
/// (`wireguard`: an L3 interface is attached here).
pub fn plaintext_inter_node(r: &proto::Flow, wireguard: bool) -> bool {
    wireguard && r.inter_node && !r.encrypted
}

/// A sampled count as an estimate of the total: `count` × the record's 1-in-N rate (0 reads as 1).
pub fn scaled(count: u64, sampling_rate: u32) -> u64 {
    count.saturating_mul(u64::from(sampling_rate.max(1)))
}

/// Whether the record counts when the records of all nodes are summed (cluster-wide metrics, a
/// collector's totals): every record does, except a destination-side record of a flow whose
/// source side also reported it. That is an inter-node flow ([`proto::Flow::inter_node`]: both
/// ends live on nodes, one of them this one) reported by the destination's node when
///
/// - the source is a pod (not a host-network pod): its node's agent counted the packets on the
///   pod's veth as they left it; or
/// - the packets went through WireGuard: the sending node's agent counted them on its WireGuard
///   egress (a host process's or a host-network pod's traffic included).
///
/// This assumes podflow runs on every node, as its DaemonSet does. Where it does not, the flows
/// from a node without podflow are missing from the sums (their destination's records are
/// dropped as duplicates of source records that were never made). A host process or a
/// host-network pod sending in plaintext has no veth and no WireGuard device on its way out, so
/// only the destination's side sees it, and its record counts. A record without a reporter (made
/// by an older agent) counts.
pub fn counted_once(r: &proto::Flow) -> bool {
    let src_is_pod = r.src.as_ref().is_some_and(|e| e.kind == "pod");
    counted_once_by(&r.reporter, r.inter_node, src_is_pod, r.encrypted)
}

/// [`counted_once`] from the fields it reads (for a record read in place from its encoding).
pub fn counted_once_by(
    reporter: &str,
    inter_node: bool,
    src_is_pod: bool,
    encrypted: bool,
) -> bool {
    !(reporter == DEST && inter_node && (src_is_pod || encrypted))
}

/// Whether the metrics of `node` count the record: it is one of `node`'s records and it counts in
/// sums over nodes ([`counted_once`]), so that metrics summed over agents (and the alerts on them)
/// count an inter-node flow once.
pub fn counted_on(r: &proto::Flow, node: &str) -> bool {
    r.node == node && counted_once(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(inter_node: bool, encrypted: bool, src_node: &str) -> proto::Flow {
        proto::Flow {
            inter_node,
            encrypted,
            src: Some(proto::Endpoint {
                node: src_node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A record made by `node`, as enrichment leaves it: the source's kind and node, the
    /// destination's node, and `inter_node`/`reporter` derived as enrichment derives them.
    fn record(
        node: &str,
        (src_kind, src_node): (&str, &str),
        dst_node: &str,
        encrypted: bool,
    ) -> proto::Flow {
        let homes = (!src_node.is_empty(), !dst_node.is_empty());
        proto::Flow {
            node: node.into(),
            encrypted,
            inter_node: homes == (true, true)
                && src_node != dst_node
                && (src_node == node || dst_node == node),
            reporter: if src_node == node { SRC } else { DEST }.into(),
            src: Some(proto::Endpoint {
                kind: src_kind.into(),
                node: src_node.into(),
                ..Default::default()
            }),
            dst: Some(proto::Endpoint {
                kind: if dst_node.is_empty() {
                    "external"
                } else {
                    "pod"
                }
                .into(),
                node: dst_node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The records that count, among those of every node that saw the flow.
    fn counting(records: &[proto::Flow]) -> Vec<(&str, &str)> {
        records
            .iter()
            .filter(|r| counted_once(r))
            .map(|r| (r.node.as_str(), r.reporter.as_str()))
            .collect()
    }

    #[test]
    fn plaintext_only_inter_node_unencrypted_on_a_wireguard_node() {
        assert!(plaintext_inter_node(&flow(true, false, "a"), true));
        assert!(!plaintext_inter_node(&flow(true, false, "a"), false));
        assert!(!plaintext_inter_node(&flow(true, true, "a"), true));
        assert!(!plaintext_inter_node(&flow(false, false, "a"), true));
    }

    #[test]
    fn scaling() {
        assert_eq!(scaled(3, 4), 12);
        assert_eq!(scaled(3, 0), 3);
        assert_eq!(scaled(u64::MAX, 2), u64::MAX);
    }

    #[test]
    fn same_node_flows_count_once_whatever_the_side() {
        let r = record("a", ("pod", "a"), "a", false);
        assert!(!r.inter_node);
        assert_eq!(counting(&[r]), [("a", SRC)]);
        // Not inter-node: even a destination-side record counts (it is the only one).
        let mut dest = record("a", ("pod", "a"), "a", false);
        dest.reporter = DEST.into();
        assert!(counted_once(&dest));
    }

    #[test]
    fn pod_to_remote_pod_counts_on_the_source_side_only() {
        for encrypted in [false, true] {
            let seen = [
                record("a", ("pod", "a"), "b", encrypted),
                record("b", ("pod", "a"), "b", encrypted),
            ];
            assert!(seen.iter().all(|r| r.inter_node));
            assert_eq!(counting(&seen), [("a", SRC)], "encrypted: {encrypted}");
        }
    }

    #[test]
    fn external_to_pod_counts_on_the_destination_side() {
        let r = record("b", ("external", ""), "b", false);
        assert!(!r.inter_node);
        assert_eq!(counting(&[r]), [("b", DEST)]);
        // And a pod's traffic to an external address, on its own node.
        let mut out = record("a", ("pod", "a"), "", false);
        out.dst = None;
        assert_eq!(counting(&[out]), [("a", SRC)]);
    }

    #[test]
    fn node_to_remote_pod_counts_where_it_was_first_counted() {
        // Plaintext: no veth and no WireGuard device on the sending node, which saw nothing.
        let plain = [record("b", ("node", "a"), "b", false)];
        assert_eq!(counting(&plain), [("b", DEST)]);
        // Through WireGuard: counted on the sender's WireGuard egress and the receiver's ingress.
        let wg = [
            record("a", ("node", "a"), "b", true),
            record("b", ("node", "a"), "b", true),
        ];
        assert_eq!(counting(&wg), [("a", SRC)]);
    }

    #[test]
    fn host_network_pod_source_is_like_its_node() {
        let plain = [record("b", ("host_network_pod", "a"), "b", false)];
        assert_eq!(counting(&plain), [("b", DEST)]);
        let wg = [
            record("a", ("host_network_pod", "a"), "b", true),
            record("b", ("host_network_pod", "a"), "b", true),
        ];
        assert_eq!(counting(&wg), [("a", SRC)]);
    }

    #[test]
    fn records_without_a_reporter_or_source_count() {
        // From an agent that predates the field.
        let mut old = record("b", ("pod", "a"), "b", false);
        old.reporter.clear();
        assert!(counted_once(&old));
        // An unnamed source is not known to have been reported by its side.
        let mut unnamed = record("b", ("pod", "a"), "b", false);
        unnamed.src = None;
        assert!(counted_once(&unnamed));
        unnamed.encrypted = true;
        assert!(!counted_once(&unnamed));
    }

    #[test]
    fn a_nodes_metrics_count_its_records_that_count_once() {
        let src_side = record("a", ("pod", "a"), "b", false);
        let dest_side = record("b", ("pod", "a"), "b", false);
        let plain_from_node = record("b", ("node", "a"), "b", false);
        assert!(counted_on(&src_side, "a"));
        assert!(!counted_on(&src_side, "b"));
        assert!(!counted_on(&dest_side, "b"));
        assert!(!counted_on(&dest_side, "a"));
        // Counted nowhere before counted_on was defined through counted_once.
        assert!(counted_on(&plain_from_node, "b"));
    }
}

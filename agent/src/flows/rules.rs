//! Rules that decide what a record means beyond its counts: which traffic is plaintext where it
//! should be encrypted, how sampled counts scale, and which node's metrics count a flow.
use crate::proto;

/// Inter-node traffic that did not go through WireGuard, on a node that has WireGuard
/// (`wireguard`: an L3 interface is attached here).
pub fn plaintext_inter_node(r: &proto::Flow, wireguard: bool) -> bool {
    wireguard && r.inter_node && !r.encrypted
}

/// A sampled count as an estimate of the total: `count` × the record's 1-in-N rate (0 reads as 1).
pub fn scaled(count: u64, sampling_rate: u32) -> u64 {
    count.saturating_mul(u64::from(sampling_rate.max(1)))
}

/// Whether the metrics of `node` count the record. An inter-node flow is recorded on both of its
/// nodes; metrics summed over agents (and the alerts on them) count it once, on the source's node.
pub fn counted_on(r: &proto::Flow, node: &str) -> bool {
    !r.inter_node || r.src.as_ref().is_some_and(|e| e.node == node)
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

    #[test]
    fn plaintext_only_inter_node_unencrypted_on_a_wireguard_node() {
        assert!(plaintext_inter_node(&flow(true, false, "a"), true));
        assert!(!plaintext_inter_node(&flow(true, false, "a"), false));
        assert!(!plaintext_inter_node(&flow(true, true, "a"), true));
        assert!(!plaintext_inter_node(&flow(false, false, "a"), true));
    }

    #[test]
    fn scaling_and_the_counting_node() {
        assert_eq!(scaled(3, 4), 12);
        assert_eq!(scaled(3, 0), 3);
        assert_eq!(scaled(u64::MAX, 2), u64::MAX);
        assert!(counted_on(&flow(false, false, "b"), "a"));
        assert!(counted_on(&flow(true, false, "a"), "a"));
        assert!(!counted_on(&flow(true, false, "b"), "a"));
        let mut no_src = flow(true, false, "a");
        no_src.src = None;
        assert!(!counted_on(&no_src, "a"));
    }
}

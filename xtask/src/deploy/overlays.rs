//! The Kustomize directories checked, the interface patterns each one's agent must watch, and
//! where each one's collector stores the records.
use super::clickhouse::Store;

/// A Kustomize directory and what its agent and collector configuration must include.
#[derive(Debug, Clone, Copy)]
pub struct Overlay {
    pub name: &'static str,
    pub dir: &'static str,
    /// Globs `PODFLOW_VETH_PATTERNS` must contain.
    pub veth_patterns: &'static [&'static str],
    /// Globs `PODFLOW_L3_PATTERNS` must contain.
    pub l3_patterns: &'static [&'static str],
    /// The collector's ClickHouse store (components/clickhouse*), if any.
    pub clickhouse: Store,
}

pub const BASE: Overlay = Overlay {
    name: "base",
    dir: "deploy/kustomize/base",
    veth_patterns: &["veth*", "cali*", "lxc*", "gke*"],
    l3_patterns: &["cilium_wg*", "wg*"],
    clickhouse: Store::None,
};

pub const OVERLAYS: &[Overlay] = &[
    BASE,
    Overlay {
        name: "gke-dataplane-v2-wireguard",
        dir: "deploy/kustomize/overlays/gke-dataplane-v2-wireguard",
        veth_patterns: &["lxc*"],
        l3_patterns: &["cilium_wg*"],
        clickhouse: Store::None,
    },
    Overlay {
        name: "calico",
        dir: "deploy/kustomize/overlays/calico",
        veth_patterns: &["cali*"],
        l3_patterns: &["wireguard.cali"],
        clickhouse: Store::None,
    },
    // gke-dataplane-v2-wireguard with the components clickhouse and clickhouse-replicated.
    Overlay {
        name: "gke-dataplane-v2-wireguard-clickhouse",
        dir: "deploy/kustomize/overlays/gke-dataplane-v2-wireguard-clickhouse",
        veth_patterns: &["lxc*"],
        l3_patterns: &["cilium_wg*"],
        clickhouse: Store::Replicated,
    },
];

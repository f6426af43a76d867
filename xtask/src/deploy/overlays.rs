//! The Kustomize directories checked, and the interface patterns each one's agent must watch.

/// A Kustomize directory and what its agent configuration must include.
#[derive(Debug, Clone, Copy)]
pub struct Overlay {
    pub name: &'static str,
    pub dir: &'static str,
    /// Globs `PODFLOW_VETH_PATTERNS` must contain.
    pub veth_patterns: &'static [&'static str],
    /// Globs `PODFLOW_L3_PATTERNS` must contain.
    pub l3_patterns: &'static [&'static str],
}

pub const BASE: Overlay = Overlay {
    name: "base",
    dir: "deploy/kustomize/base",
    veth_patterns: &["veth*", "cali*", "lxc*", "gke*"],
    l3_patterns: &["cilium_wg*", "wg*"],
};

pub const OVERLAYS: &[Overlay] = &[
    BASE,
    Overlay {
        name: "gke-dataplane-v2-wireguard",
        dir: "deploy/kustomize/overlays/gke-dataplane-v2-wireguard",
        veth_patterns: &["lxc*"],
        l3_patterns: &["cilium_wg*"],
    },
    Overlay {
        name: "calico",
        dir: "deploy/kustomize/overlays/calico",
        veth_patterns: &["cali*"],
        l3_patterns: &["wireguard.cali"],
    },
];

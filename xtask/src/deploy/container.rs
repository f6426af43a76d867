//! A container's arguments, flags and named ports, as the agent and collector checks read them.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Container;

/// `--flag=value` arguments by flag (flags without `=` map to "").
pub type Flags = BTreeMap<String, Vec<String>>;

/// The container's `args`.
pub fn args(c: &Container) -> &[String] {
    c.args.as_deref().unwrap_or_default()
}

/// `--flag=value` arguments of a container as a map (flags without `=` map to "").
pub fn flag_values(c: &Container) -> Flags {
    let mut out = Flags::new();
    for a in args(c) {
        if let Some(flag) = a.strip_prefix("--") {
            let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// The port of a listen address (`0.0.0.0:4246`, `[::]:4247`).
pub fn port_of(listen: &str) -> Option<i64> {
    listen.rsplit_once(':')?.1.parse().ok()
}

/// The `containerPort` of the container port named `name`.
pub fn named_port(c: &Container, name: &str) -> Option<i64> {
    c.ports
        .iter()
        .flatten()
        .find(|pt| pt.name.as_deref() == Some(name))
        .map(|pt| i64::from(pt.container_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_ports() {
        assert_eq!(port_of("0.0.0.0:4246"), Some(4246));
        assert_eq!(port_of("[::]:4247"), Some(4247));
    }
}

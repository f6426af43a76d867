//! Flow filters (`podflow.v1.FlowFilter`), compiled once and matched against every event.
//!
//! Semantics (as documented in the proto): a flow matches when every non-empty field matches (AND
//! across fields) and a field matches when any of its values matches (OR within a field); the
//! empty filter matches everything.
//!
//! - IP values are addresses (`10.1.0.5`, `fd00::1`) or CIDR prefixes (`10.1.0.0/16`,
//!   `fd00::/64`). Host bits after the prefix length are ignored (`10.1.0.5/24` is `10.1.0.0/24`),
//!   as Go's `netip.Prefix.Contains` and Hubble do.
//! - Address families are matched strictly: an IPv4 value matches only 4-byte flow addresses and
//!   an IPv6 value only 16-byte ones. In particular an IPv4 value does **not** match the
//!   IPv4-mapped IPv6 address `::ffff:a.b.c.d`: the agent records the bytes of the packet header,
//!   IPv4 packets are recorded with 4-byte addresses, and an IPv6 packet carrying a mapped address
//!   (which RFC 4291 §2.5.5.2 keeps off the wire) is a different, suspicious packet that a filter on
//!   the IPv4 address should not silently fold in. Match it explicitly with `::ffff:a.b.c.d` or
//!   `::ffff:0:0/96`.
//! - Ports are matched as recorded, so for ICMP/ICMPv6 (whose `src_port` holds the type and
//!   `dst_port` the code) port filters match the type and code.
//! - Loss records carry no addresses and are never filtered out ([`CompiledFilter::matches_event`]).
use std::net::IpAddr;

use thiserror::Error;

use crate::{
    net::{IpNet, ip_from_bytes},
    proto::{self, flow_event::Event},
};

/// Why a [`proto::FlowFilter`] was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid {field} filter {value:?}: expected an IP address or a CIDR prefix")]
    InvalidIp {
        field: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("invalid {field} filter {value:?}: the prefix length must be a number from 0 to {max}")]
    InvalidPrefixLen {
        field: &'static str,
        value: String,
        max: u8,
    },
    #[error("invalid {field} filter {value}: ports range from 0 to 65535")]
    InvalidPort { field: &'static str, value: u32 },
    #[error("invalid protocol filter {value}: IP protocol numbers range from 0 to 255")]
    InvalidProtocol { value: u32 },
    #[error("invalid interface filter: the interface name is empty")]
    EmptyInterface,
    #[error("invalid {field} filter {value:?}")]
    InvalidMetadata { field: &'static str, value: String },
}

/// Parses an IP filter value: a prefix, or an address (a prefix of full length); host bits after
/// the prefix length are cleared.
fn parse_prefix(field: &'static str, value: &str) -> Result<IpNet, FilterError> {
    let trimmed = value.trim();
    let (addr_text, len_text) = match trimmed.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (trimmed, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|source| FilterError::InvalidIp {
        field,
        value: value.to_owned(),
        source,
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let invalid_len = || FilterError::InvalidPrefixLen {
        field,
        value: value.to_owned(),
        max,
    };
    let len = match len_text {
        None => max,
        Some(text) => text
            .parse::<u8>()
            .ok()
            // Only plain decimal digits: `u8::from_str` would also take "+8".
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(invalid_len)?,
    };
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .map_err(|_| invalid_len())
}

/// Whether the flow address `ip` (4 or 16 bytes) is in `net`; families match strictly, other
/// lengths never match.
/// A duration in nanoseconds (negative: 0).
fn duration_ns(d: &prost_types::Duration) -> u128 {
    u128::try_from(d.seconds).unwrap_or(0) * 1_000_000_000 + u128::try_from(d.nanos).unwrap_or(0)
}

fn net_contains(net: &IpNet, ip: &[u8]) -> bool {
    ip_from_bytes(ip).is_some_and(|a| net.contains(&a))
}

/// Whether one of `ends` was reached through (or is) one of the Services `wanted` (none wanted:
/// anything matches).
fn matches_service(wanted: &[(Option<String>, String)], ends: &[Option<&proto::Endpoint>]) -> bool {
    let is = |ns: &str, name: &str| {
        wanted
            .iter()
            .any(|(w_ns, w_name)| w_name == name && w_ns.as_deref().is_none_or(|w| w == ns))
    };
    wanted.is_empty()
        || ends.iter().flatten().any(|e| {
            e.services.iter().any(|s| is(&s.namespace, &s.name))
                || (e.kind == "service"
                    && e.service
                        .split_once('/')
                        .is_some_and(|(ns, name)| is(ns, name)))
        })
}

/// A validated [`proto::FlowFilter`], ready to match events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledFilter {
    ip: Vec<IpNet>,
    src_ip: Vec<IpNet>,
    dst_ip: Vec<IpNet>,
    port: Vec<u16>,
    src_port: Vec<u16>,
    dst_port: Vec<u16>,
    protocol: Vec<u8>,
    interface: Vec<String>,
    namespace: Vec<String>,
    /// (namespace if given, pod name).
    pod: Vec<(Option<String>, String)>,
    /// (key, value if given).
    label: Vec<(String, Option<String>)>,
    /// (kind if given, workload name).
    workload: Vec<(Option<String>, String)>,
    /// (namespace if given, Service name): either end, the destination, the source.
    service: Vec<(Option<String>, String)>,
    to_service: Vec<(Option<String>, String)>,
    from_service: Vec<(Option<String>, String)>,
    encrypted: bool,
    plaintext: bool,
    /// Lowercase, without a final dot.
    dns_name: Vec<String>,
    /// Nanoseconds.
    min_rtt_ns: Option<u128>,
    dropped: bool,
}

/// Splits "a/b" into (Some(a), b) and "b" into (None, b).
fn qualified(value: &str) -> (Option<String>, String) {
    match value.split_once('/') {
        Some((q, name)) => (Some(q.to_string()), name.to_string()),
        None => (None, value.to_string()),
    }
}

impl CompiledFilter {
    /// Validates and compiles `filter`.
    pub fn new(filter: &proto::FlowFilter) -> Result<Self, FilterError> {
        let prefixes = |field: &'static str, values: &[String]| {
            values
                .iter()
                .map(|value| parse_prefix(field, value))
                .collect::<Result<Vec<_>, _>>()
        };
        let ports = |field: &'static str, values: &[u32]| {
            values
                .iter()
                .map(|&value| {
                    u16::try_from(value).map_err(|_| FilterError::InvalidPort { field, value })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let protocol = filter
            .protocol
            .iter()
            .map(|&value| u8::try_from(value).map_err(|_| FilterError::InvalidProtocol { value }))
            .collect::<Result<Vec<_>, _>>()?;
        if filter.interface.iter().any(|name| name.is_empty()) {
            return Err(FilterError::EmptyInterface);
        }
        if let Some(value) = filter
            .dns_name
            .iter()
            .find(|n| n.trim_end_matches('.').is_empty())
        {
            return Err(FilterError::InvalidMetadata {
                field: "dns_name",
                value: value.clone(),
            });
        }
        for (field, values, slashes) in [
            ("namespace", &filter.namespace, 0),
            ("pod", &filter.pod, 1),
            ("label", &filter.label, usize::MAX),
            ("workload", &filter.workload, 1),
            ("service", &filter.service, 1),
            ("to_service", &filter.to_service, 1),
            ("from_service", &filter.from_service, 1),
        ] {
            if let Some(value) = values.iter().find(|v| {
                v.is_empty()
                    || v.starts_with('/')
                    || v.ends_with('/')
                    || v.starts_with('=')
                    || v.matches('/').count() > slashes
            }) {
                return Err(FilterError::InvalidMetadata {
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(Self {
            ip: prefixes("ip", &filter.ip)?,
            src_ip: prefixes("src_ip", &filter.src_ip)?,
            dst_ip: prefixes("dst_ip", &filter.dst_ip)?,
            port: ports("port", &filter.port)?,
            src_port: ports("src_port", &filter.src_port)?,
            dst_port: ports("dst_port", &filter.dst_port)?,
            protocol,
            interface: filter.interface.clone(),
            namespace: filter.namespace.clone(),
            pod: filter.pod.iter().map(|p| qualified(p)).collect(),
            label: filter
                .label
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (l.clone(), None),
                })
                .collect(),
            workload: filter.workload.iter().map(|w| qualified(w)).collect(),
            service: filter.service.iter().map(|w| qualified(w)).collect(),
            to_service: filter.to_service.iter().map(|w| qualified(w)).collect(),
            from_service: filter.from_service.iter().map(|w| qualified(w)).collect(),
            encrypted: filter.encrypted,
            plaintext: filter.plaintext,
            dns_name: filter
                .dns_name
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            min_rtt_ns: filter.min_rtt.as_ref().map(duration_ns),
            dropped: filter.dropped,
        })
    }

    /// Whether this filter matches everything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `flow` matches: every non-empty field matches, a field when any value matches.
    pub fn matches_flow(&self, flow: &proto::Flow) -> bool {
        let any_prefix = |prefixes: &[IpNet], ips: &[&[u8]]| {
            prefixes.is_empty()
                || prefixes
                    .iter()
                    .any(|p| ips.iter().any(|ip| net_contains(p, ip)))
        };
        let any_port = |ports: &[u16], values: &[u32]| {
            ports.is_empty() || ports.iter().any(|p| values.contains(&u32::from(*p)))
        };
        any_prefix(&self.ip, &[&flow.src_ip, &flow.dst_ip])
            && any_prefix(&self.src_ip, &[&flow.src_ip])
            && any_prefix(&self.dst_ip, &[&flow.dst_ip])
            && any_port(&self.port, &[flow.src_port, flow.dst_port])
            && any_port(&self.src_port, &[flow.src_port])
            && any_port(&self.dst_port, &[flow.dst_port])
            && (self.protocol.is_empty()
                || self.protocol.iter().any(|p| u32::from(*p) == flow.protocol))
            && (self.interface.is_empty()
                || self
                    .interface
                    .iter()
                    .any(|name| flow.interfaces.contains(name)))
            && self.matches_endpoints(flow)
            && matches_service(&self.service, &[flow.src.as_ref(), flow.dst.as_ref()])
            && matches_service(&self.to_service, &[flow.dst.as_ref()])
            && matches_service(&self.from_service, &[flow.src.as_ref()])
            && (!self.encrypted || flow.encrypted)
            && (!self.plaintext || flow.plaintext_inter_node)
            && (!self.dropped || flow.dropped_packets > 0)
            && self.min_rtt_ns.is_none_or(|min| {
                let at_least = |d: Option<&prost_types::Duration>| {
                    d.is_some_and(|max| duration_ns(max) >= min)
                };
                at_least(flow.tcp_handshake.as_ref().and_then(|h| h.max.as_ref()))
                    || at_least(flow.tcp_srtt.as_ref().and_then(|r| r.max.as_ref()))
            })
            && (self.dns_name.is_empty()
                || flow.dns.iter().any(|m| {
                    let q = m.qname.to_ascii_lowercase();
                    self.dns_name.iter().any(|n| {
                        q == *n
                            || (q.len() > n.len()
                                && q.ends_with(n.as_str())
                                && q[..q.len() - n.len()].ends_with('.'))
                    })
                }))
    }

    /// The metadata fields: each matches when the source or the destination endpoint matches.
    fn matches_endpoints(&self, flow: &proto::Flow) -> bool {
        let ends = [flow.src.as_ref(), flow.dst.as_ref()];
        let any_end = |f: &dyn Fn(&proto::Endpoint) -> bool| ends.iter().flatten().any(|e| f(e));
        (self.namespace.is_empty()
            || any_end(&|e| !e.namespace.is_empty() && self.namespace.contains(&e.namespace)))
            && (self.pod.is_empty()
                || any_end(&|e| {
                    !e.pod.is_empty()
                        && self.pod.iter().any(|(ns, name)| {
                            *name == e.pod && ns.as_ref().is_none_or(|ns| *ns == e.namespace)
                        })
                }))
            && (self.label.is_empty()
                || any_end(&|e| {
                    self.label.iter().any(|(k, v)| match (e.labels.get(k), v) {
                        (Some(have), Some(want)) => have == want,
                        (Some(_), None) => true,
                        (None, _) => false,
                    })
                }))
            && (self.workload.is_empty()
                || any_end(&|e| {
                    !e.workload.is_empty()
                        && self.workload.iter().any(|(kind, name)| {
                            *name == e.workload
                                && kind
                                    .as_ref()
                                    .is_none_or(|k| k.eq_ignore_ascii_case(&e.workload_kind))
                        })
                }))
    }

    /// Whether `event` passes: flows by [`Self::matches_flow`], loss records always (a filter
    /// must never hide that data is missing), empty events never.
    pub fn matches_event(&self, event: &proto::FlowEvent) -> bool {
        match &event.event {
            Some(Event::Flow(flow)) => self.matches_flow(flow),
            Some(Event::Loss(_)) => true,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;

//! Output formats of a record: pure functions from an event to one line (no newline), used by
//! `podflow tail` and by the collector's files.
//!
//! - JSON: one flat object per flow; the keys are an interface, fixed from now on (new keys may
//!   be added, none renamed). A loss record is `{"loss":{...}}`.
//! - compact: one readable line per event.
pub mod gke;

use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    net::ip_from_bytes,
    proto::{self, flow_event::Event},
};

/// IP protocol numbers with a name.
pub const ICMP: u32 = 1;
pub const TCP: u32 = 6;
pub const UDP: u32 = 17;
pub const ICMPV6: u32 = 58;
pub const SCTP: u32 = 132;
/// Transport protocols whose records carry ports (DCCP 33 and UDP-Lite 136 besides the above).
const PORTED: [u32; 5] = [TCP, UDP, 33, 136, SCTP];

/// TCP flag names in bit order (FIN 0x01 ... CWR 0x80).
const TCP_FLAGS: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

/// The name of an IP protocol number, for the ones podflow names.
pub fn protocol_name(protocol: u32) -> Option<&'static str> {
    match protocol {
        ICMP => Some("ICMP"),
        TCP => Some("TCP"),
        UDP => Some("UDP"),
        ICMPV6 => Some("ICMPv6"),
        SCTP => Some("SCTP"),
        _ => None,
    }
}

/// Names of the TCP flags set in `flags`, in bit order.
pub fn tcp_flag_names(flags: u32) -> Vec<&'static str> {
    TCP_FLAGS
        .iter()
        .enumerate()
        .filter(|(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// RFC 3339 in UTC with nanoseconds (`2026-11-23T13:05:01.123456789Z`); `None` when absent or
/// outside years 0000-9999.
pub fn rfc3339_nanos(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let (dt, nanos) = utc(ts)?;
    Some(format!("{}.{nanos:09}Z", date_time(&dt)))
}

/// Like [`rfc3339_nanos`] with milliseconds (`2026-11-23T13:05:01.123Z`), for people.
pub fn rfc3339_millis(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let (dt, nanos) = utc(ts)?;
    Some(format!("{}.{:03}Z", date_time(&dt), nanos / 1_000_000))
}

/// RFC 3339 in UTC to the second (`2026-11-23T13:05:01Z`) of `secs` since the Unix epoch; the
/// number itself outside years 0000-9999.
pub fn rfc3339_seconds(secs: i64) -> String {
    let ts = prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    };
    utc(Some(&ts)).map_or_else(
        || secs.to_string(),
        |(dt, _)| format!("{}Z", date_time(&dt)),
    )
}

fn utc(ts: Option<&prost_types::Timestamp>) -> Option<(OffsetDateTime, u32)> {
    let ts = ts?;
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let dt = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    (0..=9999)
        .contains(&dt.year())
        .then(|| (dt, dt.nanosecond()))
}

fn date_time(dt: &OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// An address from a flow's bytes in text form; `None` unless 4 or 16 bytes.
pub fn ip_text(bytes: &[u8]) -> Option<String> {
    ip_from_bytes(bytes).map(|ip| ip.to_string())
}

/// `1.9 KiB`-style size (IEC units, one decimal from KiB on).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "a rounded size for people")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonProtocol<'a> {
    Name(&'static str),
    Number(u32),
    Text(&'a str),
}

#[derive(Serialize)]
struct JsonFlow<'a> {
    start_time: Option<String>,
    end_time: Option<String>,
    src_ip: Option<String>,
    dst_ip: Option<String>,
    src_port: u32,
    dst_port: u32,
    protocol: JsonProtocol<'a>,
    packets: u64,
    bytes: u64,
    tcp_flags: Vec<&'static str>,
    interfaces: &'a [String],
    same_node: bool,
    sampling_rate: u32,
    fragment: bool,
    node: &'a str,
    /// "SRC" or "DEST": which side of the flow `node` is (see `flows::rules::counted_once`).
    reporter: &'a str,
    encrypted: bool,
    inter_node: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    plaintext_inter_node: bool,
    src: JsonEndpoint<'a>,
    dst: JsonEndpoint<'a>,
    /// What the node translated; absent when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    translation: Option<JsonTranslation>,
    /// Seconds; absent when the agent has no metadata source.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_age_seconds: Option<f64>,
    /// The DNS messages the flow's packets carried; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dns: Vec<JsonDns<'a>>,
    /// The TCP handshakes timed on this (the client's) record; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_handshake: Option<JsonHandshake>,
    /// Packets of the flow the kernel dropped (absent when none), the reason of the latest, and
    /// whether it was in the node (else in the destination pod).
    #[serde(skip_serializing_if = "is_zero")]
    dropped_packets: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dropped_bytes: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    drop_reason: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dropped_in_node: bool,
    /// The smoothed RTT of the sending socket (`--tcp-rtt`); absent when not sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_srtt: Option<JsonSrtt>,
}

/// `{"samples":40,"min_ms":0.03,"max_ms":0.09,"last_ms":0.05}`.
#[derive(Serialize)]
struct JsonSrtt {
    samples: u32,
    min_ms: f64,
    max_ms: f64,
    last_ms: f64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `{"count":1,"min_ms":0.21,"max_ms":0.21,"last_ms":0.21}`.
#[derive(Serialize)]
struct JsonHandshake {
    count: u32,
    min_ms: f64,
    max_ms: f64,
    last_ms: f64,
}

impl JsonHandshake {
    fn of(h: &proto::TcpHandshake) -> Self {
        let ms = |d: Option<&prost_types::Duration>| d.map_or(0.0, duration_ms);
        JsonHandshake {
            count: h.count,
            min_ms: ms(h.min.as_ref()),
            max_ms: ms(h.max.as_ref()),
            last_ms: ms(h.last.as_ref()),
        }
    }
}

/// One DNS message: `{"id":7,"response":true,"qname":"db.shop.svc","qtype":"A","rcode":
/// "NXDOMAIN","answers":0,"latency_ms":1.5}`; a type without a name as its number.
#[derive(Serialize)]
struct JsonDns<'a> {
    id: u32,
    response: bool,
    qname: &'a str,
    qtype: JsonProtocol<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    rcode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tcp: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    qname_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    malformed: bool,
}

impl<'a> JsonDns<'a> {
    fn of(m: &'a proto::DnsMessage) -> Self {
        JsonDns {
            id: m.id,
            response: m.response,
            qname: &m.qname,
            qtype: if m.qtype_name.is_empty() {
                JsonProtocol::Number(m.qtype)
            } else {
                JsonProtocol::Text(&m.qtype_name)
            },
            rcode: &m.rcode_name,
            answers: m.response.then_some(m.answers),
            latency_ms: m.latency.as_ref().map(duration_ms),
            tcp: m.tcp,
            qname_truncated: m.qname_truncated,
            malformed: m.malformed,
        }
    }
}

/// A duration in milliseconds, for people.
#[expect(
    clippy::cast_precision_loss,
    reason = "a latency in milliseconds for people"
)]
fn duration_ms(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6
}

/// `src`/`dst`: who the endpoint was. Always present; `kind` is "unknown" without metadata.
#[derive(Serialize)]
struct JsonEndpoint<'a> {
    kind: &'a str,
    namespace: &'a str,
    pod: &'a str,
    uid: &'a str,
    workload_kind: &'a str,
    workload: &'a str,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    node: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    service: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ambiguous: bool,
    /// The Services the endpoint was reached through.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<JsonService<'a>>,
}

#[derive(Serialize)]
struct JsonService<'a> {
    namespace: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    port_name: &'a str,
    port: u32,
}

#[derive(Serialize)]
struct JsonTranslation {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_port: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snat_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snat_port: Option<u32>,
    reply: bool,
}

impl JsonTranslation {
    fn of(t: &proto::Translation) -> Self {
        let service_ip = ip_text(&t.service_ip);
        let snat_ip = ip_text(&t.snat_ip);
        JsonTranslation {
            service_port: service_ip.as_ref().map(|_| t.service_port),
            snat_port: snat_ip.as_ref().map(|_| t.snat_port),
            service_ip,
            snat_ip,
            reply: t.reply,
        }
    }
}

impl<'a> JsonEndpoint<'a> {
    fn of(e: Option<&'a proto::Endpoint>) -> Self {
        match e {
            Some(e) => JsonEndpoint {
                kind: if e.kind.is_empty() {
                    "unknown"
                } else {
                    &e.kind
                },
                namespace: &e.namespace,
                pod: &e.pod,
                uid: &e.uid,
                workload_kind: &e.workload_kind,
                workload: &e.workload,
                labels: e
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                node: &e.node,
                service: &e.service,
                ambiguous: e.ambiguous,
                services: e
                    .services
                    .iter()
                    .map(|s| JsonService {
                        namespace: &s.namespace,
                        name: &s.name,
                        port_name: &s.port_name,
                        port: s.port,
                    })
                    .collect(),
            },
            None => JsonEndpoint {
                kind: "unknown",
                namespace: "",
                pod: "",
                uid: "",
                workload_kind: "",
                workload: "",
                labels: std::collections::BTreeMap::new(),
                node: "",
                service: "",
                ambiguous: false,
                services: Vec::new(),
            },
        }
    }
}

#[derive(Serialize)]
struct JsonLoss<'a> {
    time: Option<String>,
    node: &'a str,
    reason: &'a str,
    count: u64,
    unit: &'a str,
    /// A gap's bounds (unit "nanoseconds").
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
}

#[derive(Serialize)]
struct JsonLossLine<'a> {
    loss: JsonLoss<'a>,
}

/// One JSON object for `event`; `Ok(None)` for an empty event.
pub fn json_line(event: &proto::FlowEvent) -> Result<Option<String>, serde_json::Error> {
    match &event.event {
        Some(Event::Flow(flow)) => serde_json::to_string(&JsonFlow {
            start_time: rfc3339_nanos(flow.start_time.as_ref()),
            end_time: rfc3339_nanos(flow.end_time.as_ref()),
            src_ip: ip_text(&flow.src_ip),
            dst_ip: ip_text(&flow.dst_ip),
            src_port: flow.src_port,
            dst_port: flow.dst_port,
            protocol: match protocol_name(flow.protocol) {
                Some(name) => JsonProtocol::Name(name),
                None => JsonProtocol::Number(flow.protocol),
            },
            packets: flow.packets,
            bytes: flow.bytes,
            tcp_flags: tcp_flag_names(flow.tcp_flags),
            interfaces: &flow.interfaces,
            same_node: flow.same_node,
            sampling_rate: flow.sampling_rate,
            fragment: flow.fragment,
            node: &flow.node,
            reporter: &flow.reporter,
            encrypted: flow.encrypted,
            inter_node: flow.inter_node,
            plaintext_inter_node: flow.plaintext_inter_node,
            src: JsonEndpoint::of(flow.src.as_ref()),
            dst: JsonEndpoint::of(flow.dst.as_ref()),
            translation: flow.translation.as_ref().map(JsonTranslation::of),
            metadata_age_seconds: flow.metadata_age.as_ref().map(|d| {
                #[expect(clippy::cast_precision_loss, reason = "an age in seconds for people")]
                let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
                secs
            }),
            dns: flow.dns.iter().map(JsonDns::of).collect(),
            tcp_handshake: flow.tcp_handshake.as_ref().map(JsonHandshake::of),
            dropped_packets: flow.dropped_packets,
            dropped_bytes: flow.dropped_bytes,
            drop_reason: &flow.drop_reason,
            dropped_in_node: flow.dropped_in_node,
            tcp_srtt: flow.tcp_srtt.as_ref().map(|r| {
                let ms = |d: Option<&prost_types::Duration>| d.map_or(0.0, duration_ms);
                JsonSrtt {
                    samples: r.samples,
                    min_ms: ms(r.min.as_ref()),
                    max_ms: ms(r.max.as_ref()),
                    last_ms: ms(r.last.as_ref()),
                }
            }),
        })
        .map(Some),
        Some(Event::Loss(loss)) => serde_json::to_string(&JsonLossLine {
            loss: JsonLoss {
                time: rfc3339_nanos(loss.time.as_ref()),
                node: &loss.node,
                reason: &loss.reason,
                count: loss.count,
                unit: &loss.unit,
                from: rfc3339_nanos(loss.from.as_ref()),
                to: rfc3339_nanos(loss.to.as_ref()),
            },
        })
        .map(Some),
        None => Ok(None),
    }
}

/// One readable line for `event`; `None` for an empty event.
///
/// `2026-11-23T13:05:01.123Z  10.1.0.5:43512 -> 10.1.0.9:80  TCP [SYN,ACK]  12 pkts  1.9 KiB
/// veth1a,veth2b  same-node` (one line; the time is the record's end), then any of `inter-node`
/// (`inter-node SRC` or `inter-node DEST`: the side that reported it), `encrypted`, `PLAINTEXT`,
/// `sampled 1/N`, `fragment`. IPv6 endpoints are `[addr]:port`; ICMP shows
/// `type T code C` instead of ports; protocols without ports show bare addresses.
pub fn compact_line(event: &proto::FlowEvent) -> Option<String> {
    match &event.event {
        Some(Event::Flow(flow)) => Some(compact_flow(flow)),
        Some(Event::Loss(loss)) => {
            let mut line = format!(
                "{}  LOST {} {} ({})",
                rfc3339_millis(loss.time.as_ref()).unwrap_or_else(|| "-".to_owned()),
                loss.count,
                if loss.unit.is_empty() {
                    "packets"
                } else {
                    &loss.unit
                },
                loss.reason
            );
            if !loss.node.is_empty() {
                line.push_str(" on node ");
                line.push_str(&loss.node);
            }
            if let (Some(from), Some(to)) = (
                rfc3339_millis(loss.from.as_ref()),
                rfc3339_millis(loss.to.as_ref()),
            ) {
                line.push_str(&format!(" from {from} to {to}"));
            }
            Some(line)
        }
        None => None,
    }
}

fn compact_flow(flow: &proto::Flow) -> String {
    let time = rfc3339_millis(flow.end_time.as_ref()).unwrap_or_else(|| "-".to_owned());
    let src_ip = ip_from_bytes(&flow.src_ip);
    let dst_ip = ip_from_bytes(&flow.dst_ip);
    let is_icmp = matches!(flow.protocol, ICMP | ICMPV6);
    let (src, dst) = if PORTED.contains(&flow.protocol) {
        (
            endpoint(flow.src.as_ref(), src_ip, Some(flow.src_port)),
            endpoint(flow.dst.as_ref(), dst_ip, Some(flow.dst_port)),
        )
    } else {
        (
            endpoint(flow.src.as_ref(), src_ip, None),
            endpoint(flow.dst.as_ref(), dst_ip, None),
        )
    };
    let mut protocol = match protocol_name(flow.protocol) {
        Some(name) => name.to_owned(),
        None => format!("proto {}", flow.protocol),
    };
    if is_icmp {
        protocol.push_str(&format!(" type {} code {}", flow.src_port, flow.dst_port));
    }
    let flags = tcp_flag_names(flow.tcp_flags);
    if flow.protocol == TCP && !flags.is_empty() {
        protocol.push_str(&format!(" [{}]", flags.join(",")));
    }
    let packets = format!(
        "{} {}",
        flow.packets,
        if flow.packets == 1 { "pkt" } else { "pkts" }
    );
    let mut fields = vec![time, format!("{src} -> {dst}")];
    if let Some(via) = via_service(flow) {
        fields.push(via);
    }
    fields.extend([protocol, packets, human_bytes(flow.bytes)]);
    if !flow.interfaces.is_empty() {
        fields.push(flow.interfaces.join(","));
    }
    if flow.same_node {
        fields.push("same-node".to_owned());
    }
    if flow.inter_node {
        // Both nodes report an inter-node flow: say which side this record is.
        fields.push(if flow.reporter.is_empty() {
            "inter-node".to_owned()
        } else {
            format!("inter-node {}", flow.reporter)
        });
    }
    if flow.encrypted {
        fields.push("encrypted".to_owned());
    }
    if flow.plaintext_inter_node {
        fields.push("PLAINTEXT".to_owned());
    }
    if flow.sampling_rate > 1 {
        fields.push(format!("sampled 1/{}", flow.sampling_rate));
    }
    if flow.fragment {
        fields.push("fragment".to_owned());
    }
    if let Some(snat) = flow.translation.as_ref().and_then(|t| {
        let ip = ip_from_bytes(&t.snat_ip)?;
        Some(endpoint(None, Some(ip), Some(t.snat_port)))
    }) {
        fields.push(format!("snat {snat}"));
    }
    if let Some(h) = &flow.tcp_handshake {
        let ms = |d: Option<&prost_types::Duration>| d.map_or(0.0, duration_ms);
        fields.push(if h.count == 1 {
            format!("handshake {:.2}ms", ms(h.last.as_ref()))
        } else {
            format!(
                "handshakes {} {:.2}-{:.2}ms",
                h.count,
                ms(h.min.as_ref()),
                ms(h.max.as_ref())
            )
        });
    }
    if let Some(r) = &flow.tcp_srtt {
        let ms = |d: Option<&prost_types::Duration>| d.map_or(0.0, duration_ms);
        fields.push(format!("srtt {:.2}ms", ms(r.last.as_ref())));
    }
    if flow.dropped_packets > 0 {
        fields.push(format!(
            "DROPPED {} {} {} ({})",
            flow.dropped_packets,
            if flow.dropped_packets == 1 {
                "pkt"
            } else {
                "pkts"
            },
            if flow.dropped_in_node {
                "in the node"
            } else {
                "in the pod"
            },
            flow.drop_reason
        ));
    }
    fields.extend(flow.dns.iter().map(compact_dns));
    fields.join("  ")
}

/// `dns? A db.shop.svc` for a query, `dns A db.shop.svc NOERROR 2 answers 1.5ms` for a response
/// (the latency where its query was seen), `dns malformed` for what could not be read.
fn compact_dns(m: &proto::DnsMessage) -> String {
    if m.malformed {
        return format!("dns malformed id {}", m.id);
    }
    let qtype = if m.qtype_name.is_empty() {
        format!("TYPE{}", m.qtype)
    } else {
        m.qtype_name.clone()
    };
    let name = if m.qname.is_empty() { "." } else { &m.qname };
    let cut = if m.qname_truncated { "..." } else { "" };
    if !m.response {
        return format!("dns? {qtype} {name}{cut}");
    }
    let mut s = format!(
        "dns {qtype} {name}{cut} {} {} {}",
        m.rcode_name,
        m.answers,
        if m.answers == 1 { "answer" } else { "answers" }
    );
    if let Some(d) = &m.latency {
        s.push_str(&format!(" {:.1}ms", duration_ms(d)));
    }
    s
}

/// `(svc ns/name)` for the Services the flow's ends were reached through (the backend's, for a
/// translated flow), or `(via ADDR:PORT)` for a translated flow whose Service is not known.
fn via_service(flow: &proto::Flow) -> Option<String> {
    let names: Vec<String> = [flow.src.as_ref(), flow.dst.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|e| &e.services)
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    if !names.is_empty() {
        return Some(format!("(svc {})", names.join(",")));
    }
    let t = flow.translation.as_ref()?;
    let ip = ip_from_bytes(&t.service_ip)?;
    Some(format!(
        "(via {})",
        endpoint(None, Some(ip), Some(t.service_port))
    ))
}

/// `namespace/pod` (or `svc:namespace/name`, `node:name`) where the metadata names the endpoint,
/// else the address; then `:port`.
fn endpoint(meta: Option<&proto::Endpoint>, ip: Option<IpAddr>, port: Option<u32>) -> String {
    let name = meta.and_then(|e| match e.kind.as_str() {
        "pod" | "host_network_pod" if !e.pod.is_empty() => {
            Some(format!("{}/{}", e.namespace, e.pod))
        }
        "service" if !e.service.is_empty() => Some(format!("svc:{}", e.service)),
        "node" if !e.node.is_empty() => Some(format!("node:{}", e.node)),
        _ => None,
    });
    if let Some(name) = name {
        return match port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        };
    }
    match (ip, port) {
        (Some(IpAddr::V4(ip)), Some(port)) => format!("{ip}:{port}"),
        (Some(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
        (Some(ip), None) => ip.to_string(),
        (None, Some(port)) => format!("?:{port}"),
        (None, None) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests;

//! Flow and loss records read in place from their protobuf encoding: what the collector writes
//! into ClickHouse rows, without building a `proto::Flow` (a dozen allocations a record for its
//! strings and labels, and as many frees) only to copy its fields out again. Strings and bytes
//! are borrowed from the received buffer; repeated fields are kept inline up to a few items.
//!
//! The result is what prost's decoding would give, field by field: proto3 semantics (the last
//! value of a scalar wins, occurrences of an embedded message merge, repeated fields append, a map
//! keeps the last value of a key), unknown fields skipped (groups included), and the same
//! refusals: a truncated field, an overlong varint, a wire type that does not match the field's
//! type, a string that is not UTF-8. A test feeds non-canonical encodings through both.
use smallvec::SmallVec;

/// Why an encoded event could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewError(pub &'static str);

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ViewError {}

type Result<T> = std::result::Result<T, ViewError>;

/// A `FlowEvent`.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one record at a time, on the stack: boxing the flow would be the allocation the \
              view exists to avoid"
)]
pub enum EventView<'a> {
    Flow(FlowView<'a>),
    Loss(LossView<'a>),
    /// No oneof set.
    Empty,
}

/// A `google.protobuf.Timestamp` or `Duration`: seconds and nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Time {
    pub seconds: i64,
    pub nanos: i32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowView<'a> {
    pub start_time: Option<Time>,
    pub end_time: Option<Time>,
    pub src_ip: &'a [u8],
    pub dst_ip: &'a [u8],
    pub src_port: u32,
    pub dst_port: u32,
    pub protocol: u32,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u32,
    pub interfaces: SmallVec<[&'a str; 2]>,
    pub same_node: bool,
    pub sampling_rate: u32,
    pub fragment: bool,
    pub node: &'a str,
    pub encrypted: bool,
    pub inter_node: bool,
    pub src: Option<EndpointView<'a>>,
    pub dst: Option<EndpointView<'a>>,
    pub metadata_age: Option<Time>,
    pub plaintext_inter_node: bool,
    pub translation: Option<TranslationView<'a>>,
    pub reporter: &'a str,
    pub dns: SmallVec<[DnsView<'a>; 2]>,
    pub tcp_handshake: Option<HandshakeView>,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub drop_reason: &'a str,
    pub dropped_in_node: bool,
    pub tcp_srtt: Option<HandshakeView>,
}

/// A `DnsMessage` (the names of qtype and rcode are not stored: they follow from the numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsView<'a> {
    pub id: u32,
    pub response: bool,
    pub qname: &'a str,
    pub qtype: u32,
    pub rcode: u32,
    pub answers: u32,
    pub latency: Option<Time>,
    pub tcp: bool,
    pub qname_truncated: bool,
    pub malformed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeView {
    pub count: u32,
    pub min: Option<Time>,
    pub max: Option<Time>,
    pub last: Option<Time>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointView<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub workload_kind: &'a str,
    pub workload: &'a str,
    /// Sorted by key, one value per key (the map's semantics; see [`EndpointView::labels`]).
    labels: SmallVec<[(&'a str, &'a str); 8]>,
    pub node: &'a str,
    pub service: &'a str,
    pub ambiguous: bool,
    pub services: SmallVec<[ServiceView<'a>; 2]>,
}

impl<'a> EndpointView<'a> {
    /// The labels, sorted by key, as the generated `BTreeMap` holds them.
    pub fn labels(&self) -> &[(&'a str, &'a str)] {
        &self.labels
    }

    /// The map's semantics over the entries as they came: sorted by key, the last value of a key
    /// kept. Entries an agent wrote come sorted and unique (a `BTreeMap`): nothing to do then.
    fn settle_labels(&mut self) {
        if self.labels.windows(2).all(|w| w[0].0 < w[1].0) {
            return;
        }
        // Stable: equal keys keep their order of arrival; then the last of each run wins.
        self.labels.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: SmallVec<[(&'a str, &'a str); 8]> = SmallVec::new();
        for entry in self.labels.drain(..) {
            match out.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => out.push(entry),
            }
        }
        self.labels = out;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub port_name: &'a str,
    pub port: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslationView<'a> {
    pub service_ip: &'a [u8],
    pub service_port: u32,
    pub snat_ip: &'a [u8],
    pub snat_port: u32,
    pub reply: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossView<'a> {
    pub time: Option<Time>,
    pub node: &'a str,
    pub reason: &'a str,
    pub count: u64,
    pub unit: &'a str,
    pub from: Option<Time>,
    pub to: Option<Time>,
}

/// Reads an encoded `FlowEvent`.
pub fn event(buf: &[u8]) -> Result<EventView<'_>> {
    // The oneof: the last occurrence's variant wins; occurrences of that same variant in a row
    // merge (prost's oneof merge), an occurrence of the other variant starts it afresh.
    let mut kind = 0u32;
    let mut parts: SmallVec<[&[u8]; 1]> = SmallVec::new();
    let mut fields = Fields::new(buf);
    while let Some((tag, value)) = fields.next()? {
        if let 1 | 2 = tag {
            let part = value.bytes()?;
            if tag != kind {
                // Replaced, but prost reads them all the same, and refuses one that is malformed.
                for old in parts.drain(..) {
                    match kind {
                        1 => merge_flow(&mut FlowView::default(), old)?,
                        _ => merge_loss(&mut LossView::default(), old)?,
                    }
                }
                kind = tag;
            }
            parts.push(part);
        }
    }
    Ok(match kind {
        1 => {
            let mut flow = FlowView::default();
            for part in parts {
                merge_flow(&mut flow, part)?;
            }
            for e in [&mut flow.src, &mut flow.dst].into_iter().flatten() {
                e.settle_labels();
            }
            EventView::Flow(flow)
        }
        2 => {
            let mut loss = LossView::default();
            for part in parts {
                merge_loss(&mut loss, part)?;
            }
            EventView::Loss(loss)
        }
        _ => EventView::Empty,
    })
}

fn merge_flow<'a>(f: &mut FlowView<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => merge_time(f.start_time.get_or_insert_default(), v.bytes()?)?,
            2 => merge_time(f.end_time.get_or_insert_default(), v.bytes()?)?,
            3 => f.src_ip = v.bytes()?,
            4 => f.dst_ip = v.bytes()?,
            5 => f.src_port = v.u32()?,
            6 => f.dst_port = v.u32()?,
            7 => f.protocol = v.u32()?,
            8 => f.packets = v.varint()?,
            9 => f.bytes = v.varint()?,
            10 => f.tcp_flags = v.u32()?,
            11 => f.interfaces.push(v.str()?),
            12 => f.same_node = v.bool()?,
            13 => f.sampling_rate = v.u32()?,
            14 => f.fragment = v.bool()?,
            15 => f.node = v.str()?,
            16 => f.encrypted = v.bool()?,
            17 => f.inter_node = v.bool()?,
            18 => merge_endpoint(f.src.get_or_insert_default(), v.bytes()?)?,
            19 => merge_endpoint(f.dst.get_or_insert_default(), v.bytes()?)?,
            20 => merge_time(f.metadata_age.get_or_insert_default(), v.bytes()?)?,
            21 => f.plaintext_inter_node = v.bool()?,
            22 => merge_translation(f.translation.get_or_insert_default(), v.bytes()?)?,
            23 => f.reporter = v.str()?,
            24 => f.dns.push(dns(v.bytes()?)?),
            25 => merge_handshake(f.tcp_handshake.get_or_insert_default(), v.bytes()?)?,
            26 => f.dropped_packets = v.varint()?,
            27 => f.dropped_bytes = v.varint()?,
            28 => f.drop_reason = v.str()?,
            29 => f.dropped_in_node = v.bool()?,
            // The same shape as a TcpHandshake (count = samples).
            30 => merge_handshake(f.tcp_srtt.get_or_insert_default(), v.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

fn dns(buf: &[u8]) -> Result<DnsView<'_>> {
    let mut d = DnsView::default();
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => d.id = v.u32()?,
            2 => d.response = v.bool()?,
            3 => d.qname = v.str()?,
            4 => d.qtype = v.u32()?,
            // 5 and 7: the names of the type and the code.
            5 | 7 => {
                v.str()?;
            }
            6 => d.rcode = v.u32()?,
            8 => d.answers = v.u32()?,
            9 => merge_time(d.latency.get_or_insert_default(), v.bytes()?)?,
            10 => d.tcp = v.bool()?,
            11 => d.qname_truncated = v.bool()?,
            12 => d.malformed = v.bool()?,
            _ => {}
        }
    }
    Ok(d)
}

fn merge_handshake(h: &mut HandshakeView, buf: &[u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => h.count = v.u32()?,
            2 => merge_time(h.min.get_or_insert_default(), v.bytes()?)?,
            3 => merge_time(h.max.get_or_insert_default(), v.bytes()?)?,
            4 => merge_time(h.last.get_or_insert_default(), v.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

fn merge_endpoint<'a>(e: &mut EndpointView<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => e.kind = v.str()?,
            2 => e.namespace = v.str()?,
            3 => e.pod = v.str()?,
            4 => e.uid = v.str()?,
            5 => e.workload_kind = v.str()?,
            6 => e.workload = v.str()?,
            7 => {
                let (mut key, mut value) = ("", "");
                let mut entry = Fields::new(v.bytes()?);
                while let Some((tag, v)) = entry.next()? {
                    match tag {
                        1 => key = v.str()?,
                        2 => value = v.str()?,
                        _ => {}
                    }
                }
                e.labels.push((key, value));
            }
            8 => e.node = v.str()?,
            9 => e.service = v.str()?,
            10 => e.ambiguous = v.bool()?,
            11 => {
                let mut s = ServiceView::default();
                let mut fields = Fields::new(v.bytes()?);
                while let Some((tag, v)) = fields.next()? {
                    match tag {
                        1 => s.namespace = v.str()?,
                        2 => s.name = v.str()?,
                        3 => s.port_name = v.str()?,
                        4 => s.port = v.u32()?,
                        _ => {}
                    }
                }
                e.services.push(s);
            }
            _ => {}
        }
    }
    Ok(())
}

fn merge_translation<'a>(t: &mut TranslationView<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => t.service_ip = v.bytes()?,
            2 => t.service_port = v.u32()?,
            3 => t.snat_ip = v.bytes()?,
            4 => t.snat_port = v.u32()?,
            5 => t.reply = v.bool()?,
            _ => {}
        }
    }
    Ok(())
}

fn merge_loss<'a>(l: &mut LossView<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            1 => merge_time(l.time.get_or_insert_default(), v.bytes()?)?,
            2 => l.node = v.str()?,
            3 => l.reason = v.str()?,
            4 => l.count = v.varint()?,
            5 => l.unit = v.str()?,
            6 => merge_time(l.from.get_or_insert_default(), v.bytes()?)?,
            7 => merge_time(l.to.get_or_insert_default(), v.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

/// `Timestamp` and `Duration` alike: int64 seconds = 1, int32 nanos = 2 (truncated as prost
/// does).
fn merge_time(t: &mut Time, buf: &[u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some((tag, v)) = fields.next()? {
        match tag {
            #[expect(clippy::cast_possible_wrap, reason = "int64 on the wire")]
            1 => t.seconds = v.varint()? as i64,
            #[expect(
                clippy::cast_possible_truncation,
                reason = "int32 on the wire: truncated as prost does"
            )]
            2 => t.nanos = v.varint()? as i32,
            _ => {}
        }
    }
    Ok(())
}

/// A field's value as it came: a varint, a length-delimited slice, or a fixed-width number.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Value<'a> {
    fn varint(self) -> Result<u64> {
        match self {
            Value::Varint(n) => Ok(n),
            _ => Err(ViewError("invalid wire type for a varint field")),
        }
    }

    #[expect(
        clippy::cast_possible_truncation,
        reason = "uint32 on the wire: truncated as prost does"
    )]
    fn u32(self) -> Result<u32> {
        self.varint().map(|n| n as u32)
    }

    fn bool(self) -> Result<bool> {
        self.varint().map(|n| n != 0)
    }

    fn bytes(self) -> Result<&'a [u8]> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(ViewError("invalid wire type for a length-delimited field")),
        }
    }

    fn str(self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| ViewError("invalid string value: data is not UTF-8 encoded"))
    }
}

/// The fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(ViewError("buffer underflow"));
            };
            self.buf = rest;
            // The tenth byte may hold only the top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(ViewError("invalid varint"));
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(ViewError("invalid varint"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let len = usize::try_from(len).map_err(|_| ViewError("buffer underflow"))?;
        if len > self.buf.len() {
            return Err(ViewError("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The value of wire type `wire` (varint, fixed 64, length-delimited, fixed 32); groups
    /// (3, 4) are the caller's.
    fn value(&mut self, wire: u64) -> Result<Value<'a>> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(ViewError("invalid wire type value")),
        })
    }

    /// A key: (tag, wire type).
    fn key(&mut self) -> Result<(u32, u64)> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| ViewError("invalid key value"))?;
        Ok((tag, key & 7))
    }

    /// The next known-shape field (tag, value); groups are skipped whole, with their fields.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let (tag, wire) = self.key()?;
            if tag == 0 {
                return Err(ViewError("invalid tag value: 0"));
            }
            match wire {
                3 => self.skip_group(tag)?,
                4 => return Err(ViewError("unexpected end group tag")),
                _ => return Ok(Some((tag, self.value(wire)?))),
            }
        }
    }

    /// Skips the fields of the group that started with `tag`, through its end-group key.
    fn skip_group(&mut self, tag: u32) -> Result<()> {
        let mut open: SmallVec<[u32; 4]> = SmallVec::new();
        open.push(tag);
        while let Some(&top) = open.last() {
            if self.buf.is_empty() {
                return Err(ViewError("buffer underflow"));
            }
            match self.key()? {
                (inner, 3) => {
                    if open.len() >= 100 {
                        return Err(ViewError("recursion limit reached"));
                    }
                    open.push(inner);
                }
                (inner, 4) if inner == top => {
                    open.pop();
                }
                (_, 4) => return Err(ViewError("unexpected end group tag")),
                (_, wire) => {
                    self.value(wire)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto::{self, flow_event::Event};

    /// A record with every field of every message set to something other than its default.
    pub(crate) fn every_field() -> proto::Flow {
        let endpoint = |pod: &str, kind: &str| proto::Endpoint {
            kind: kind.into(),
            namespace: "shop".into(),
            pod: pod.into(),
            uid: format!("uid-{pod}"),
            workload_kind: "Deployment".into(),
            workload: "web".into(),
            labels: [
                ("app".into(), "web".into()),
                ("tier".into(), "x".repeat(200)),
            ]
            .into_iter()
            .collect(),
            node: "n1".into(),
            service: "shop/web".into(),
            ambiguous: true,
            services: vec![
                proto::ServiceRef {
                    namespace: "shop".into(),
                    name: "web".into(),
                    port_name: "http".into(),
                    port: 80,
                },
                proto::ServiceRef {
                    namespace: "shop".into(),
                    name: "web-canary".into(),
                    port_name: String::new(),
                    port: 8443,
                },
            ],
        };
        proto::Flow {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_001,
                nanos: 7,
            }),
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            src_port: 40000,
            dst_port: 80,
            protocol: 6,
            packets: 3,
            bytes: 1 << 41,
            tcp_flags: 0x1b,
            interfaces: vec!["veth1".into(), "veth2".into()],
            same_node: true,
            sampling_rate: 4,
            fragment: true,
            node: "n1".into(),
            encrypted: true,
            inter_node: true,
            src: Some(endpoint("a", "pod")),
            dst: Some(endpoint("b", "service")),
            metadata_age: Some(prost_types::Duration {
                seconds: 2,
                nanos: 500,
            }),
            plaintext_inter_node: true,
            translation: Some(proto::Translation {
                service_ip: vec![10, 96, 0, 10],
                service_port: 80,
                snat_ip: vec![192, 168, 0, 1],
                snat_port: 31000,
                reply: true,
            }),
            reporter: "DEST".into(),
            dns: vec![proto::DnsMessage {
                id: 7,
                response: true,
                qname: "db.shop.svc.cluster.local".into(),
                qtype: 1,
                qtype_name: "A".into(),
                rcode: 3,
                rcode_name: "NXDOMAIN".into(),
                answers: 0,
                latency: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_500_000,
                }),
                tcp: false,
                qname_truncated: false,
                malformed: false,
            }],
            tcp_handshake: Some(proto::TcpHandshake {
                count: 2,
                min: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000,
                }),
                max: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 300_000,
                }),
                last: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000,
                }),
            }),
            dropped_packets: 20,
            dropped_bytes: 1 << 33,
            drop_reason: "NETFILTER_DROP".into(),
            dropped_in_node: true,
            tcp_srtt: Some(proto::TcpRtt {
                samples: 40,
                min: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 30_000,
                }),
                max: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 90_000,
                }),
                last: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 50_000,
                }),
            }),
        }
    }

    /// What a view of `f`'s encoding must hold, field by field (written from the struct).
    fn expected(f: &proto::Flow) -> FlowView<'_> {
        let time = |t: &prost_types::Timestamp| Time {
            seconds: t.seconds,
            nanos: t.nanos,
        };
        let duration = |d: &Option<prost_types::Duration>| {
            d.as_ref().map(|d| Time {
                seconds: d.seconds,
                nanos: d.nanos,
            })
        };
        fn endpoint(e: &proto::Endpoint) -> EndpointView<'_> {
            EndpointView {
                kind: &e.kind,
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
                    .map(|s| ServiceView {
                        namespace: &s.namespace,
                        name: &s.name,
                        port_name: &s.port_name,
                        port: s.port,
                    })
                    .collect(),
            }
        }
        FlowView {
            start_time: f.start_time.as_ref().map(time),
            end_time: f.end_time.as_ref().map(time),
            src_ip: &f.src_ip,
            dst_ip: &f.dst_ip,
            src_port: f.src_port,
            dst_port: f.dst_port,
            protocol: f.protocol,
            packets: f.packets,
            bytes: f.bytes,
            tcp_flags: f.tcp_flags,
            interfaces: f.interfaces.iter().map(String::as_str).collect(),
            same_node: f.same_node,
            sampling_rate: f.sampling_rate,
            fragment: f.fragment,
            node: &f.node,
            encrypted: f.encrypted,
            inter_node: f.inter_node,
            src: f.src.as_ref().map(endpoint),
            dst: f.dst.as_ref().map(endpoint),
            metadata_age: duration(&f.metadata_age),
            plaintext_inter_node: f.plaintext_inter_node,
            translation: f.translation.as_ref().map(|t| TranslationView {
                service_ip: &t.service_ip,
                service_port: t.service_port,
                snat_ip: &t.snat_ip,
                snat_port: t.snat_port,
                reply: t.reply,
            }),
            reporter: &f.reporter,
            dns: f
                .dns
                .iter()
                .map(|m| DnsView {
                    id: m.id,
                    response: m.response,
                    qname: &m.qname,
                    qtype: m.qtype,
                    rcode: m.rcode,
                    answers: m.answers,
                    latency: duration(&m.latency),
                    tcp: m.tcp,
                    qname_truncated: m.qname_truncated,
                    malformed: m.malformed,
                })
                .collect(),
            tcp_handshake: f.tcp_handshake.as_ref().map(|h| HandshakeView {
                count: h.count,
                min: duration(&h.min),
                max: duration(&h.max),
                last: duration(&h.last),
            }),
            dropped_packets: f.dropped_packets,
            dropped_bytes: f.dropped_bytes,
            drop_reason: &f.drop_reason,
            dropped_in_node: f.dropped_in_node,
            tcp_srtt: f.tcp_srtt.as_ref().map(|r| HandshakeView {
                count: r.samples,
                min: duration(&r.min),
                max: duration(&r.max),
                last: duration(&r.last),
            }),
        }
    }

    fn flow_event(f: proto::Flow) -> Vec<u8> {
        proto::FlowEvent {
            event: Some(Event::Flow(f)),
        }
        .encode_to_vec()
    }

    #[test]
    fn every_field_is_read() {
        let f = every_field();
        let encoded = flow_event(f.clone());
        let EventView::Flow(view) = event(&encoded).unwrap() else {
            panic!("not a flow");
        };
        assert_eq!(view, expected(&f));
        // And with every field at its default (nothing on the wire but the oneof).
        let empty = flow_event(proto::Flow::default());
        let EventView::Flow(view) = event(&empty).unwrap() else {
            panic!("not a flow");
        };
        assert_eq!(view, FlowView::default());

        let loss = proto::LossRecord {
            time: Some(prost_types::Timestamp {
                seconds: 9,
                nanos: 1,
            }),
            node: "n".into(),
            reason: "lost_map_full".into(),
            count: 7,
            unit: "packets".into(),
            from: Some(prost_types::Timestamp {
                seconds: -3,
                nanos: 2,
            }),
            to: Some(prost_types::Timestamp {
                seconds: 4,
                nanos: -5,
            }),
        };
        let encoded = proto::FlowEvent {
            event: Some(Event::Loss(loss)),
        }
        .encode_to_vec();
        assert_eq!(
            event(&encoded).unwrap(),
            EventView::Loss(LossView {
                time: Some(Time {
                    seconds: 9,
                    nanos: 1
                }),
                node: "n",
                reason: "lost_map_full",
                count: 7,
                unit: "packets",
                from: Some(Time {
                    seconds: -3,
                    nanos: 2
                }),
                to: Some(Time {
                    seconds: 4,
                    nanos: -5
                }),
            })
        );
        assert_eq!(event(&[]).unwrap(), EventView::Empty);
    }

    // A hand encoder for encodings prost would not write.
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn key(out: &mut Vec<u8>, tag: u32, wire: u8) {
        varint(out, u64::from(tag) << 3 | u64::from(wire));
    }
    fn len(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
        key(out, tag, 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    fn num(out: &mut Vec<u8>, tag: u32, n: u64) {
        key(out, tag, 0);
        varint(out, n);
    }
    fn label(out: &mut Vec<u8>, k: &str, v: &str) {
        let mut entry = Vec::new();
        len(&mut entry, 1, k.as_bytes());
        len(&mut entry, 2, v.as_bytes());
        len(out, 7, &entry);
    }

    /// Encodings no agent writes but protobuf allows: the view reads them as prost does.
    #[test]
    fn non_canonical_encodings_read_as_prost_reads_them() {
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        // Labels unsorted, a key twice (the last value wins), an entry without a value, the
        // endpoint in two occurrences that merge, unknown fields of every wire type (a group
        // with a nested group among them), a scalar twice (the last wins), interfaces
        // interleaved with other fields.
        let mut src_a = Vec::new();
        len(&mut src_a, 3, b"pod-a");
        label(&mut src_a, "zone", "b");
        label(&mut src_a, "app", "web");
        num(&mut src_a, 99, 1);
        let mut src_b = Vec::new();
        label(&mut src_b, "zone", "c");
        let mut entry = Vec::new();
        len(&mut entry, 1, b"empty");
        len(&mut src_b, 7, &entry);
        len(&mut src_b, 2, b"ns");
        let mut svc = Vec::new();
        len(&mut svc, 2, b"web");
        num(&mut svc, 4, 80);
        len(&mut src_b, 11, &svc);
        let mut flow = Vec::new();
        num(&mut flow, 5, 1);
        len(&mut flow, 11, b"veth1");
        len(&mut flow, 18, &src_a);
        num(&mut flow, 5, 70_000 + (1 << 32));
        key(&mut flow, 100, 1);
        flow.extend_from_slice(&[1; 8]);
        key(&mut flow, 101, 5);
        flow.extend_from_slice(&[2; 4]);
        key(&mut flow, 102, 3);
        num(&mut flow, 1, 5);
        key(&mut flow, 103, 3);
        len(&mut flow, 2, b"x");
        key(&mut flow, 103, 4);
        key(&mut flow, 102, 4);
        len(&mut flow, 11, b"veth2");
        len(&mut flow, 18, &src_b);
        num(&mut flow, 16, 0);
        num(&mut flow, 16, 1);
        let mut t = Vec::new();
        num(&mut t, 1, 5);
        len(&mut flow, 2, &t);
        let mut t = Vec::new();
        num(&mut t, 2, 9);
        len(&mut flow, 2, &t);
        let mut ev = Vec::new();
        len(&mut ev, 1, &flow);
        cases.push(("merged and unsorted", ev));

        // The oneof: a flow, then a loss (replaces it), then a flow again (starts afresh).
        let mut ev = Vec::new();
        let mut first = Vec::new();
        num(&mut first, 6, 53);
        len(&mut ev, 1, &first);
        let mut loss = Vec::new();
        num(&mut loss, 4, 3);
        len(&mut ev, 2, &loss);
        let mut last = Vec::new();
        num(&mut last, 8, 10);
        len(&mut ev, 1, &last);
        cases.push(("flow, loss, flow", ev));

        // A flow in two occurrences in a row: they merge.
        let mut ev = Vec::new();
        len(&mut ev, 1, &first);
        len(&mut ev, 1, &last);
        cases.push(("flow twice", ev));

        // A loss, then a flow.
        let mut ev = Vec::new();
        len(&mut ev, 2, &loss);
        len(&mut ev, 1, &first);
        cases.push(("loss, flow", ev));

        for (name, raw) in cases {
            let decoded = proto::FlowEvent::decode(&*raw).unwrap();
            let canonical = decoded.encode_to_vec();
            let (a, b) = (event(&raw).unwrap(), event(&canonical).unwrap());
            assert_eq!(a, b, "{name}");
            if let Some(Event::Flow(f)) = &decoded.event {
                assert_eq!(a, EventView::Flow(expected(f)), "{name}");
            }
        }
    }

    /// Whatever prost refuses, the view refuses.
    #[test]
    fn malformed_encodings_are_refused_as_prost_refuses_them() {
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let good = flow_event(every_field());
        for cut in [1, 2, 10, good.len() / 2, good.len() - 1] {
            cases.push(("truncated", good[..cut].to_vec()));
        }
        let mut flow = Vec::new();
        len(&mut flow, 5, b"80");
        let mut ev = Vec::new();
        len(&mut ev, 1, &flow);
        cases.push(("a number as bytes", ev));
        let mut flow = Vec::new();
        num(&mut flow, 15, 3);
        let mut ev = Vec::new();
        len(&mut ev, 1, &flow);
        cases.push(("a string as a number", ev));
        let mut src = Vec::new();
        len(&mut src, 2, &[0xff, 0xfe]);
        let mut flow = Vec::new();
        len(&mut flow, 18, &src);
        let mut ev = Vec::new();
        len(&mut ev, 1, &flow);
        cases.push(("not UTF-8", ev.clone()));
        let mut replaced = ev;
        let mut loss = Vec::new();
        num(&mut loss, 4, 3);
        len(&mut replaced, 2, &loss);
        cases.push(("not UTF-8 in a replaced occurrence", replaced));
        let mut ev = Vec::new();
        key(&mut ev, 1, 2);
        ev.extend_from_slice(&[0xff; 11]);
        cases.push(("overlong varint", ev));
        let mut ev = Vec::new();
        key(&mut ev, 7, 3);
        num(&mut ev, 1, 1);
        cases.push(("unterminated group", ev));
        let mut ev = Vec::new();
        key(&mut ev, 7, 4);
        cases.push(("stray end of group", ev));
        cases.push(("tag 0", vec![0x00, 0x01]));
        cases.push(("wire type 6", vec![0x0e]));
        for (name, raw) in cases {
            assert!(proto::FlowEvent::decode(&*raw).is_err(), "prost: {name}");
            assert!(event(&raw).is_err(), "view: {name}");
        }
    }
}

//! Flow and loss records as ClickHouse `RowBinary` rows, in the column order of
//! [`super::schema`] (the INSERT names its columns, so the tables may have more).
//!
//! `RowBinary`: integers little-endian, `DateTime` as UInt32 seconds, strings and arrays as a
//! LEB128 length and their items, `Nullable` as a null byte and the value. The same on every
//! ClickHouse version (18.16 included); several times cheaper to write and to parse than JSON.
use std::fmt::Write as _;

use bytes::{BufMut as _, Bytes, BytesMut};

use super::{
    schema::{Column, FLOW_COLUMNS, LOSS_COLUMNS},
    view::{
        self, DnsView, EndpointView, EventView, FlowView, LossView, Time, TranslationView,
        ViewError,
    },
};
use crate::{flows::rules, net::ip_from_bytes};

/// `INSERT INTO db.table (columns) FORMAT RowBinary`.
pub fn insert_sql(database: &str, table: &str, columns: &[Column]) -> String {
    let mut sql = format!("INSERT INTO {database}.{table} (");
    for (i, c) in columns.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}`{}`", c.name);
    }
    sql.push_str(") FORMAT RowBinary");
    sql
}

/// The INSERT of flow rows.
pub fn insert_flows(database: &str, table: &str) -> String {
    insert_sql(database, table, &FLOW_COLUMNS)
}

/// The INSERT of loss rows.
pub fn insert_losses(database: &str, table: &str) -> String {
    insert_sql(database, table, &LOSS_COLUMNS)
}

/// The rows of one batch of an agent, made when the batch arrives (on the stream's task, in
/// parallel across agents), straight from its encoded events ([`super::view`]): a `flows` and a
/// `losses` buffer, and where each row ends. An insert concatenates them, leaving out the rows
/// a check found stored.
#[derive(Debug, Clone, Default)]
pub struct BatchRows {
    pub agent_id: String,
    pub seq: u64,
    pub flows: Bytes,
    pub flow_marks: Vec<Mark>,
    pub losses: Bytes,
    pub loss_marks: Vec<Mark>,
}

/// One row of a [`BatchRows`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The event's index in its batch (a batch's flows and losses share one numbering).
    pub idx: u32,
    /// Where the row ends in its buffer.
    pub end: usize,
    /// The row's time (seconds): a flow's end, a loss record's time, as written (the column the
    /// tables are partitioned by).
    pub time: u32,
}

/// An event of a batch that is not a valid `FlowEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {index} of the batch: {reason}")]
pub struct BadEvent {
    pub index: usize,
    pub reason: ViewError,
}

impl BatchRows {
    /// The rows of batch `seq` of `agent_id` whose events are `events` (each an encoded
    /// `FlowEvent`); fails on the first event that is not one.
    pub fn build(agent_id: &str, seq: u64, events: &[Bytes]) -> Result<BatchRows, BadEvent> {
        let mut flows = BytesMut::with_capacity(events.iter().map(|e| e.len() + 64).sum());
        let mut losses = BytesMut::new();
        let (mut flow_marks, mut loss_marks) = (Vec::with_capacity(events.len()), Vec::new());
        for (index, event) in events.iter().enumerate() {
            let idx = u32::try_from(index).unwrap_or(u32::MAX);
            match view::event(event).map_err(|reason| BadEvent { index, reason })? {
                EventView::Flow(f) => {
                    let time = flow_row(&mut flows, &f, agent_id, seq, idx);
                    flow_marks.push(Mark {
                        idx,
                        end: flows.len(),
                        time,
                    });
                }
                EventView::Loss(l) => {
                    let time = loss_row(&mut losses, &l, agent_id, seq, idx);
                    loss_marks.push(Mark {
                        idx,
                        end: losses.len(),
                        time,
                    });
                }
                EventView::Empty => {}
            }
        }
        Ok(BatchRows {
            agent_id: agent_id.to_owned(),
            seq,
            flows: flows.freeze(),
            flow_marks,
            losses: losses.freeze(),
            loss_marks,
        })
    }

    /// Rows of both tables.
    pub fn len(&self) -> usize {
        self.flow_marks.len() + self.loss_marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's mark, flows first.
    pub fn marks(&self) -> impl Iterator<Item = &Mark> {
        self.flow_marks.iter().chain(&self.loss_marks)
    }
}

/// Rows of one insert, for both tables.
#[derive(Debug, Default)]
pub struct Rows {
    pub flows: BytesMut,
    pub flow_rows: usize,
    pub losses: BytesMut,
    pub loss_rows: usize,
}

impl Rows {
    /// Appends the rows of `batch`, except those for which `skip(idx)` holds (rows a previous
    /// attempt already stored).
    pub fn push_batch(&mut self, batch: &BatchRows, skip: impl Fn(u32) -> bool) {
        for (out, count, data, marks) in [
            (
                &mut self.flows,
                &mut self.flow_rows,
                &batch.flows,
                &batch.flow_marks,
            ),
            (
                &mut self.losses,
                &mut self.loss_rows,
                &batch.losses,
                &batch.loss_marks,
            ),
        ] {
            if !marks.iter().any(|m| skip(m.idx)) {
                out.extend_from_slice(data);
                *count += marks.len();
                continue;
            }
            let mut start = 0;
            for m in marks {
                if !skip(m.idx) {
                    out.extend_from_slice(&data[start..m.end]);
                    *count += 1;
                }
                start = m.end;
            }
        }
    }
}

fn leb128(out: &mut BytesMut, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

fn string(out: &mut BytesMut, s: &str) {
    leb128(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn strings<'a>(out: &mut BytesMut, items: impl ExactSizeIterator<Item = &'a str>) {
    leb128(out, items.len() as u64);
    for s in items {
        string(out, s);
    }
}

/// The address's text (`format::ip_text`; empty when the bytes are no address), formatted on the
/// stack: four addresses a row, no allocation each.
fn ip(out: &mut BytesMut, bytes: &[u8]) {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        // Most addresses: dotted decimal by hand, without the formatting machinery (which was
        // a tenth of the collector's CPU per record). Equal to `Ipv4Addr`'s `Display` (tested).
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        leb128(out, len as u64);
        out.put_slice(&text[..len]);
        return;
    }
    let Some(ip) = ip_from_bytes(bytes) else {
        out.put_u8(0);
        return;
    };
    let mut text = IpText::default();
    // The longest form (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45 bytes.
    let _ = write!(text, "{ip}");
    string(out, text.as_str());
}

/// A stack buffer for an address's text.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are written (see `write_str`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

/// Seconds and nanoseconds since the epoch (0 for an absent or negative time); seconds
/// saturate at `DateTime`'s end (2106).
fn time(ts: Option<Time>) -> (u32, u64) {
    let Some(ts) = ts else { return (0, 0) };
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u64::try_from(ts.nanos).unwrap_or(0);
    (
        u32::try_from(secs).unwrap_or(u32::MAX),
        secs.saturating_mul(1_000_000_000).saturating_add(nanos),
    )
}

fn narrow16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn narrow8(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

fn endpoint(out: &mut BytesMut, e: Option<&EndpointView<'_>>) {
    let empty = EndpointView::default();
    let e = e.unwrap_or(&empty);
    let kind = if e.kind.is_empty() { "unknown" } else { e.kind };
    string(out, kind);
    string(out, e.namespace);
    string(out, e.pod);
    string(out, e.uid);
    string(out, e.workload_kind);
    string(out, e.workload);
    string(out, e.node);
    string(out, e.service);
    out.put_u8(b(e.ambiguous));
    // Label keys, then values, sorted by key as in the JSON record.
    strings(out, e.labels().iter().map(|l| l.0));
    strings(out, e.labels().iter().map(|l| l.1));
    strings(out, e.services.iter().map(|s| s.namespace));
    strings(out, e.services.iter().map(|s| s.name));
    strings(out, e.services.iter().map(|s| s.port_name));
    leb128(out, e.services.len() as u64);
    for s in &e.services {
        out.put_u16_le(narrow16(s.port));
    }
}

/// A duration in nanoseconds (negative: 0).
fn duration_ns(d: Time) -> u64 {
    u64::try_from(d.seconds)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(d.nanos).unwrap_or(0))
}

/// The `dns.*` arrays, one element per message.
fn dns_columns(out: &mut BytesMut, dns: &[DnsView<'_>]) {
    let n = dns.len() as u64;
    leb128(out, n);
    for m in dns {
        out.put_u16_le(narrow16(m.id));
    }
    leb128(out, n);
    for m in dns {
        out.put_u8(b(m.response));
    }
    strings(out, dns.iter().map(|m| m.qname));
    leb128(out, n);
    for m in dns {
        out.put_u16_le(narrow16(m.qtype));
    }
    leb128(out, n);
    for m in dns {
        out.put_u8(narrow8(m.rcode));
    }
    leb128(out, n);
    for m in dns {
        out.put_u16_le(narrow16(m.answers));
    }
    leb128(out, n);
    for m in dns {
        out.put_u64_le(m.latency.map_or(0, duration_ns));
    }
    leb128(out, n);
    for m in dns {
        out.put_u8(u8::from(m.tcp) | u8::from(m.qname_truncated) << 1 | u8::from(m.malformed) << 2);
    }
}

/// One `flows` row; returns its time (seconds, `end_time`).
fn flow_row(out: &mut BytesMut, f: &FlowView<'_>, agent_id: &str, seq: u64, idx: u32) -> u32 {
    let (end, end_ns) = time(f.end_time);
    let (start, start_ns) = time(f.start_time);
    out.put_u32_le(end);
    out.put_u32_le(start);
    out.put_u64_le(end_ns);
    out.put_u64_le(start_ns);
    string(out, f.node);
    string(out, f.reporter);
    let src_is_pod = f.src.as_ref().is_some_and(|e| e.kind == "pod");
    out.put_u8(b(rules::counted_once_by(
        f.reporter,
        f.inter_node,
        src_is_pod,
        f.encrypted,
    )));
    ip(out, f.src_ip);
    ip(out, f.dst_ip);
    out.put_u16_le(narrow16(f.src_port));
    out.put_u16_le(narrow16(f.dst_port));
    out.put_u8(narrow8(f.protocol));
    out.put_u64_le(f.packets);
    out.put_u64_le(f.bytes);
    out.put_u8(narrow8(f.tcp_flags));
    strings(out, f.interfaces.iter().copied());
    out.put_u8(b(f.same_node));
    out.put_u8(b(f.inter_node));
    out.put_u8(b(f.encrypted));
    out.put_u8(b(f.plaintext_inter_node));
    out.put_u8(b(f.fragment));
    out.put_u32_le(f.sampling_rate.max(1));
    endpoint(out, f.src.as_ref());
    endpoint(out, f.dst.as_ref());
    let none = TranslationView::default();
    let t = f.translation.as_ref().unwrap_or(&none);
    ip(out, t.service_ip);
    out.put_u16_le(narrow16(t.service_port));
    ip(out, t.snat_ip);
    out.put_u16_le(narrow16(t.snat_port));
    out.put_u8(b(t.reply));
    dns_columns(out, &f.dns);
    let h = f.tcp_handshake.clone().unwrap_or_default();
    out.put_u32_le(h.count);
    for d in [h.min, h.max, h.last] {
        out.put_u64_le(d.map_or(0, duration_ns));
    }
    out.put_u64_le(f.dropped_packets);
    out.put_u64_le(f.dropped_bytes);
    string(out, f.drop_reason);
    out.put_u8(b(f.dropped_in_node));
    let r = f.tcp_srtt.clone().unwrap_or_default();
    out.put_u32_le(r.count);
    for d in [r.min, r.max, r.last] {
        out.put_u32_le(u32::try_from(d.map_or(0, duration_ns) / 1000).unwrap_or(u32::MAX));
    }
    match f.metadata_age {
        Some(age) => {
            out.put_u8(0);
            #[expect(clippy::cast_precision_loss, reason = "an age in seconds")]
            out.put_f64_le(age.seconds as f64 + f64::from(age.nanos) / 1e9);
        }
        None => out.put_u8(1),
    }
    string(out, agent_id);
    out.put_u64_le(seq);
    out.put_u32_le(idx);
    end
}

/// One `losses` row; returns its time (seconds).
fn loss_row(out: &mut BytesMut, l: &LossView<'_>, agent_id: &str, seq: u64, idx: u32) -> u32 {
    let (t, t_ns) = time(l.time);
    out.put_u32_le(t);
    out.put_u64_le(t_ns);
    string(out, l.node);
    string(out, l.reason);
    string(out, l.unit);
    out.put_u64_le(l.count);
    out.put_u64_le(time(l.from).1);
    out.put_u64_le(time(l.to).1);
    string(out, agent_id);
    out.put_u64_le(seq);
    out.put_u32_le(idx);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clickhouse::{schema::Ty, view::tests::every_field},
        proto::{self, flow_event::Event},
    };

    /// Reads one row of `columns` from `data` by their types; returns the bytes used.
    fn read_row(data: &[u8], columns: &[Column]) -> usize {
        let mut at = 0;
        let leb = |at: &mut usize| {
            let mut n = 0u64;
            let mut shift = 0;
            loop {
                let byte = data[*at];
                *at += 1;
                n |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    return usize::try_from(n).unwrap();
                }
            }
        };
        for c in columns {
            match c.ty {
                Ty::UInt8 => at += 1,
                Ty::UInt16 => at += 2,
                Ty::UInt32 | Ty::DateTime => at += 4,
                Ty::UInt64 => at += 8,
                Ty::OptFloat64 => {
                    let null = data[at];
                    at += 1;
                    if null == 0 {
                        at += 8;
                    }
                }
                Ty::String | Ty::LowString => {
                    let n = leb(&mut at);
                    at += n;
                }
                Ty::ArrayString => {
                    for _ in 0..leb(&mut at) {
                        let n = leb(&mut at);
                        at += n;
                    }
                }
                Ty::ArrayUInt8 => {
                    let n = leb(&mut at);
                    at += n;
                }
                Ty::ArrayUInt16 => {
                    let n = leb(&mut at);
                    at += 2 * n;
                }
                Ty::ArrayUInt64 => {
                    let n = leb(&mut at);
                    at += 8 * n;
                }
            }
        }
        at
    }

    #[test]
    fn rows_follow_the_schema_columns() {
        let events = vec![
            proto::FlowEvent {
                event: Some(Event::Flow(every_field())),
            },
            proto::FlowEvent {
                event: Some(Event::Flow(proto::Flow::default())),
            },
            proto::FlowEvent {
                event: Some(Event::Loss(proto::LossRecord {
                    reason: "lost_map_full".into(),
                    count: 9,
                    unit: "packets".into(),
                    ..Default::default()
                })),
            },
            // No oneof: no row, but it keeps its index.
            proto::FlowEvent::default(),
            proto::FlowEvent {
                event: Some(Event::Flow(every_field())),
            },
        ];
        let batch =
            BatchRows::build("agent", 4, &proto::ExportBatch::encode_events(&events)).unwrap();
        assert_eq!((batch.flow_marks.len(), batch.loss_marks.len()), (3, 1));
        let mut rows = Rows::default();
        rows.push_batch(&batch, |_| false);
        assert_eq!((rows.flow_rows, rows.loss_rows), (3, 1));
        let mut at = 0;
        for mark in &batch.flow_marks {
            at += read_row(&rows.flows[at..], &FLOW_COLUMNS);
            assert_eq!(at, mark.end);
        }
        assert_eq!(at, rows.flows.len());
        assert_eq!(read_row(&rows.losses, &LOSS_COLUMNS), rows.losses.len());
        let first = batch.flow_marks[0].end;
        // The idempotency key closes each row: agent_id, seq 4, idx 0 / 2 / 4.
        assert!(rows.flows[..first].ends_with(b"\x05agent\x04\0\0\0\0\0\0\0\0\0\0\0"));
        assert!(
            rows.flows
                .ends_with(b"\x05agent\x04\0\0\0\0\0\0\0\x04\0\0\0")
        );
        assert!(
            rows.losses
                .ends_with(b"\x05agent\x04\0\0\0\0\0\0\0\x02\0\0\0")
        );
        let marks: Vec<(u32, u32)> = batch.marks().map(|m| (m.idx, m.time)).collect();
        assert_eq!(
            marks,
            [(0, 1_800_000_001), (1, 0), (4, 1_800_000_001), (2, 0)]
        );

        // A check found rows 0 and 2 stored: the others go, byte for byte.
        let mut skipped = Rows::default();
        skipped.push_batch(&batch, |idx| idx == 0 || idx == 2);
        assert_eq!((skipped.flow_rows, skipped.loss_rows), (2, 0));
        assert_eq!(skipped.flows[..], rows.flows[first..]);
        assert!(skipped.losses.is_empty());
    }

    #[test]
    fn a_malformed_event_is_named() {
        let mut events = proto::ExportBatch::encode_events(&[proto::FlowEvent {
            event: Some(Event::Flow(every_field())),
        }]);
        events.push(Bytes::from_static(&[0x0a, 0x05, 0x28]));
        let err = BatchRows::build("agent", 1, &events).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.to_string(), "event 1 of the batch: buffer underflow");
    }

    #[test]
    fn addresses_as_ip_text() {
        let longest = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 255, 255, 255,
            255,
        ];
        for bytes in [
            &[10, 0, 0, 1][..],
            &[255, 255, 255, 255],
            &[0, 9, 10, 99],
            &[100, 101, 199, 200],
            &[1, 20, 250, 7],
            &[0; 16],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 2],
            &longest,
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[1, 2, 3],
            &[],
        ] {
            let mut got = BytesMut::new();
            ip(&mut got, bytes);
            let mut want = BytesMut::new();
            string(
                &mut want,
                &crate::format::ip_text(bytes).unwrap_or_default(),
            );
            assert_eq!(got, want, "{bytes:?}");
        }
    }

    #[test]
    fn leb128_lengths() {
        let mut out = BytesMut::new();
        leb128(&mut out, 300);
        assert_eq!(&out[..], &[0xac, 0x02]);
        let sql = insert_losses("podflow", "losses");
        assert!(
            sql.starts_with("INSERT INTO podflow.losses (`time`, `time_ns`"),
            "{sql}"
        );
        assert!(sql.ends_with("`idx`) FORMAT RowBinary"));
    }
}

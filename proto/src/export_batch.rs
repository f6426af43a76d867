//! `podflow.v1.ExportBatch` as Rust code holds it: the events stay protobuf-encoded.
//!
//! The wire format is the `.proto` file's (`repeated FlowEvent events = 5`): an embedded message
//! and a `bytes` field are both length-delimited, so a batch whose events are kept as their
//! encoded bytes is byte-for-byte the batch of decoded events (tested below both ways). Every
//! other language sees the schema; only this crate's type differs, through the generator's
//! `extern_path` (`cargo xtask codegen`).
//!
//! Why: a batch passes through the collector mostly untouched. Decoded as structs, each record cost
//! a dozen allocations to build and as many frees, then was encoded again for the subscribers'
//! ring; kept encoded, receiving a batch is slicing the received buffer (tonic's `DecodeBuf` hands
//! out its `Bytes` without copying), the ring stores the same slices, and a consumer decodes only
//! what it reads ([`ExportBatch::decode_events`]). On the agent, a batch is encoded once when it is
//! formed, so keeping it for retransmission and sending it again clone reference counts.
use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::v1::FlowEvent;

/// One batch of an agent's export stream (see `collector.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportBatch {
    /// Unique per agent process run: the key the collector deduplicates sequence numbers by.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// Node name of the agent.
    #[prost(string, tag = "2")]
    pub node: String,
    /// Agent version.
    #[prost(string, tag = "3")]
    pub version: String,
    /// 1, 2, 3, ... within agent_id.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// Flows and loss records, each an encoded `FlowEvent` ([`ExportBatch::encode_events`],
    /// [`ExportBatch::decode_events`]).
    #[prost(bytes = "bytes", repeated, tag = "5")]
    pub events: Vec<Bytes>,
    /// When the agent formed the batch.
    #[prost(message, optional, tag = "6")]
    pub sent_time: Option<prost_types::Timestamp>,
    /// Sent before, on a stream that broke before its ack.
    #[prost(bool, tag = "7")]
    pub retransmission: bool,
}

impl ExportBatch {
    /// `events` encoded into one buffer, each event a slice of it (one allocation per batch).
    pub fn encode_events<'a>(events: impl IntoIterator<Item = &'a FlowEvent>) -> Vec<Bytes> {
        let events: Vec<&FlowEvent> = events.into_iter().collect();
        let lengths: Vec<usize> = events.iter().map(|e| e.encoded_len()).collect();
        let mut buffer = BytesMut::with_capacity(lengths.iter().sum());
        for event in &events {
            event.encode_raw(&mut buffer);
        }
        let buffer = buffer.freeze();
        let mut start = 0;
        lengths
            .into_iter()
            .map(|len| {
                let slice = buffer.slice(start..start + len);
                start += len;
                slice
            })
            .collect()
    }

    /// The events decoded; fails on the first that is not a valid `FlowEvent` (naming its index).
    pub fn decode_events(&self) -> Result<Vec<FlowEvent>, EventDecodeError> {
        self.events
            .iter()
            .enumerate()
            .map(|(index, e)| {
                FlowEvent::decode(e.as_ref()).map_err(|source| EventDecodeError { index, source })
            })
            .collect()
    }
}

/// An event of a batch that is not a valid `FlowEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDecodeError {
    /// Its index in the batch.
    pub index: usize,
    pub source: prost::DecodeError,
}

impl std::fmt::Display for EventDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {} of the batch: {}", self.index, self.source)
    }
}

impl std::error::Error for EventDecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether an encoded `FlowEvent` is a loss record, without decoding the record: a view of the
/// oneof's two fields as bytes. Both present (a sender may repeat a oneof; the last occurrence
/// wins) is settled by a full decode. Not a valid `FlowEvent`: false.
pub fn is_loss(event: &Bytes) -> bool {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Kind {
        #[prost(bytes = "bytes", optional, tag = "1")]
        flow: Option<Bytes>,
        #[prost(bytes = "bytes", optional, tag = "2")]
        loss: Option<Bytes>,
    }
    match Kind::decode(event.clone()) {
        Ok(Kind {
            flow: None,
            loss: Some(_),
        }) => true,
        Ok(Kind {
            flow: Some(_),
            loss: Some(_),
        }) => FlowEvent::decode(event.as_ref())
            .is_ok_and(|e| matches!(e.event, Some(crate::v1::flow_event::Event::Loss(_)))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Endpoint, Flow, LossRecord, flow_event::Event};

    /// The batch as the `.proto` file declares it, decoded events and all.
    #[derive(Clone, PartialEq, prost::Message)]
    struct DeclaredBatch {
        #[prost(string, tag = "1")]
        agent_id: String,
        #[prost(string, tag = "2")]
        node: String,
        #[prost(string, tag = "3")]
        version: String,
        #[prost(uint64, tag = "4")]
        seq: u64,
        #[prost(message, repeated, tag = "5")]
        events: Vec<FlowEvent>,
        #[prost(message, optional, tag = "6")]
        sent_time: Option<prost_types::Timestamp>,
        #[prost(bool, tag = "7")]
        retransmission: bool,
    }

    fn events() -> Vec<FlowEvent> {
        let flow = |port: u32| FlowEvent {
            event: Some(Event::Flow(Flow {
                src_port: port,
                dst_port: 80,
                protocol: 6,
                bytes: 1 << 40,
                packets: 3,
                src: Some(Endpoint {
                    namespace: "shop".into(),
                    pod: format!("cart-{port}"),
                    labels: [("app".to_string(), "cart".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        vec![
            flow(1),
            FlowEvent {
                event: Some(Event::Loss(LossRecord {
                    reason: "export_buffer_full".into(),
                    count: 7,
                    ..Default::default()
                })),
            },
            // An empty event (no oneof set) is valid protobuf and must survive as such.
            FlowEvent::default(),
            flow(65535),
        ]
    }

    fn declared() -> DeclaredBatch {
        DeclaredBatch {
            agent_id: "node-a/1-2".into(),
            node: "node-a".into(),
            version: "0.1.0".into(),
            seq: 42,
            events: events(),
            sent_time: Some(prost_types::Timestamp {
                seconds: 1_765_000_000,
                nanos: 5,
            }),
            retransmission: true,
        }
    }

    fn kept(d: &DeclaredBatch) -> ExportBatch {
        ExportBatch {
            agent_id: d.agent_id.clone(),
            node: d.node.clone(),
            version: d.version.clone(),
            seq: d.seq,
            events: ExportBatch::encode_events(&d.events),
            sent_time: d.sent_time,
            retransmission: d.retransmission,
        }
    }

    #[test]
    fn same_bytes_as_the_declared_message_both_ways() {
        let d = declared();
        let wire = d.encode_to_vec();
        assert_eq!(kept(&d).encode_to_vec(), wire);
        assert_eq!(kept(&d).encoded_len(), wire.len());
        let received = ExportBatch::decode(Bytes::from(wire.clone())).unwrap();
        assert_eq!(received, kept(&d));
        assert_eq!(received.decode_events().unwrap(), d.events);
        assert_eq!(
            DeclaredBatch::decode(&*received.encode_to_vec()).unwrap(),
            d
        );
    }

    #[test]
    fn received_events_are_slices_of_the_received_buffer() {
        let wire = Bytes::from(declared().encode_to_vec());
        let received = ExportBatch::decode(wire.clone()).unwrap();
        let range = wire.as_ptr_range();
        for event in &received.events {
            assert!(range.contains(&event.as_ptr()), "copied, not sliced");
        }
    }

    #[test]
    fn a_malformed_event_is_named_by_its_index() {
        let mut batch = kept(&declared());
        // A length-delimited field claiming more bytes than the event has.
        batch.events[2] = Bytes::from_static(&[0x0a, 0x7f, 0x01]);
        let err = batch.decode_events().unwrap_err();
        assert_eq!(err.index, 2);
        assert!(
            err.to_string().starts_with("event 2 of the batch: "),
            "{err}"
        );
    }

    #[test]
    fn loss_records_are_told_apart_without_decoding() {
        let kinds: Vec<bool> = ExportBatch::encode_events(&events())
            .iter()
            .map(is_loss)
            .collect();
        assert_eq!(kinds, [false, true, false, false]);
        assert!(!is_loss(&Bytes::from_static(&[0x12, 0x7f])), "malformed");
        // The oneof twice, loss first: the flow (the last) wins, as in a full decode.
        let mut twice = ExportBatch::encode_events(&events()[1..2])[0].to_vec();
        twice.extend_from_slice(&ExportBatch::encode_events(&events()[..1])[0]);
        assert!(!is_loss(&Bytes::from(twice.clone())));
        let mut loss_last = ExportBatch::encode_events(&events()[..1])[0].to_vec();
        loss_last.extend_from_slice(&ExportBatch::encode_events(&events()[1..2])[0]);
        assert!(is_loss(&Bytes::from(loss_last)));
    }
}

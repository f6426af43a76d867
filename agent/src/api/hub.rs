//! The hub between the pipeline and API subscribers: a bounded ring of the latest events and a
//! broadcast to followers. Publishing never waits for a subscriber: a follower that falls more than
//! the broadcast capacity behind loses the oldest events and gets a `subscriber_lagged` loss record
//! instead.
//!
//! Events are kept protobuf-encoded: a flow record is ~100 bytes on the wire but ~600 in memory as
//! a `proto::Flow` (six heap allocations: addresses, interface names, node, plus the endpoints'
//! labels once enriched). At 100 000 flows per flush the default ring of 65 536 events held
//! ~55 MiB as structs; encoded it holds ~8 MiB, and the ring is also bounded in bytes. The cost
//! moves to the readers: `tail --last` and followers decode what they read.
use std::{
    borrow::Borrow,
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use bytes::Bytes;
use futures::{Stream, StreamExt as _, future, stream};
use prost::Message as _;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{
    filter::CompiledFilter,
    proto::{self, ExportBatch, flow_event::Event},
};

/// Reason of the loss record a lagging follower gets.
pub const SUBSCRIBER_LAGGED: &str = "subscriber_lagged";

/// Upper bound of the broadcast capacity (tokio's broadcast allocates every slot up front).
const MAX_FOLLOW_CAPACITY: usize = 1 << 20;

/// Default bound of the ring's memory ([`Hub::with_limits`]).
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;

/// Memory an event takes in the ring besides its encoded bytes: the `Bytes` handle in the ring's
/// slot and the allocator's header and rounding of the buffer.
const EVENT_OVERHEAD: usize = 48;

/// The latest events and status of the pipeline, shared (via `Arc`) by the pipeline, which
/// publishes, and the API, which reads and follows.
#[derive(Debug)]
pub struct Hub {
    ring: Mutex<Ring>,
    /// Encoded events.
    tx: broadcast::Sender<Bytes>,
    status: Mutex<proto::GetStatusResponse>,
}

#[derive(Debug)]
struct Ring {
    /// Encoded events, oldest first.
    events: VecDeque<Bytes>,
    /// At most this many events...
    capacity: usize,
    /// ...and at most this much memory (encoded length + [`EVENT_OVERHEAD`] per event).
    max_bytes: usize,
    bytes: usize,
}

/// What a subscriber asks for; the gRPC layer builds it from a `GetFlowsRequest`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// At most this many buffered events; 0: all of them, or none when following.
    pub number: u64,
    /// Also send events published from now on.
    pub follow: bool,
    /// Only events whose time (a flow's end, a loss record's time) is at or after this one.
    pub since: Option<prost_types::Timestamp>,
    /// Flow filter; loss records always pass.
    pub filter: CompiledFilter,
}

impl Hub {
    /// A hub keeping the last `capacity` events. Followers may fall up to `capacity` events
    /// (at least 1) behind before they lose any.
    pub fn new(capacity: usize) -> Arc<Hub> {
        Self::with_follow_capacity(capacity, capacity)
    }

    /// A hub keeping the last `capacity` events, whose followers may fall up to
    /// `follow_capacity` events behind (clamped to 1..=2^20) before they lose any.
    pub fn with_follow_capacity(capacity: usize, follow_capacity: usize) -> Arc<Hub> {
        Self::with_limits(capacity, DEFAULT_BUFFER_BYTES, follow_capacity)
    }

    /// A hub keeping the last `capacity` events as long as they take at most `max_bytes` of
    /// memory, whose followers may fall up to `follow_capacity` events behind (clamped to
    /// 1..=2^20) before they lose any.
    pub fn with_limits(capacity: usize, max_bytes: usize, follow_capacity: usize) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(follow_capacity.clamp(1, MAX_FOLLOW_CAPACITY));
        Arc::new(Hub {
            ring: Mutex::new(Ring {
                // Grows with use: a large bound costs nothing until events fill it.
                events: VecDeque::new(),
                capacity,
                max_bytes,
                bytes: 0,
            }),
            tx,
            status: Mutex::new(proto::GetStatusResponse {
                version: crate::VERSION.to_owned(),
                ..Default::default()
            }),
        })
    }

    /// Appends `events` to the ring (dropping the oldest beyond its bounds) and sends them to the
    /// followers. Never blocks on a subscriber.
    pub fn publish(&self, events: Vec<proto::FlowEvent>) {
        self.publish_each(events);
    }

    /// [`Hub::publish`] for events owned or borrowed, from any iterator (no vector needed).
    pub fn publish_each<E: Borrow<proto::FlowEvent>>(&self, events: impl IntoIterator<Item = E>) {
        let events: Vec<E> = events.into_iter().collect();
        // One buffer for the whole batch, each event a slice of it: one allocation (and one free,
        // once the ring has let go of every event of the batch) instead of one per event. The
        // ring's byte bound counts each slice; a batch's buffer outlives its first evicted events
        // by at most the rest of the batch.
        self.publish_encoded(ExportBatch::encode_events(
            events.iter().map(Borrow::borrow),
        ));
    }

    /// [`Hub::publish`] for events already encoded (`FlowEvent`s, as an `ExportBatch` carries
    /// them): the collector passes its agents' events on as they arrived.
    pub fn publish_encoded(&self, events: Vec<Bytes>) {
        if events.is_empty() {
            return;
        }
        // The ring lock is held while broadcasting so that a new subscriber sees every event
        // exactly once: either in its snapshot of the ring or on its receiver.
        let mut ring = self.ring();
        let following = self.tx.receiver_count() > 0;
        for encoded in events {
            if following {
                // An error only means that the last follower just left.
                let _ = self.tx.send(encoded.clone());
            }
            ring.push(encoded);
        }
    }

    /// Replaces the status served by GetStatus; the hub fills in `buffered_events`.
    pub fn set_status(&self, status: proto::GetStatusResponse) {
        *lock(&self.status) = status;
    }

    /// The latest status, with `buffered_events` filled in.
    pub fn status(&self) -> proto::GetStatusResponse {
        let buffered = self.buffered_events();
        let mut status = lock(&self.status).clone();
        status.buffered_events = buffered;
        status
    }

    /// Number of events in the ring.
    pub fn buffered_events(&self) -> u64 {
        u64::try_from(self.ring().events.len()).unwrap_or(u64::MAX)
    }

    /// Number of current followers.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The matching buffered events and, when following, every matching event published after
    /// them, in publication order. The stream ends after the buffered events when not following;
    /// otherwise it ends when dropped. Lost events are reported in band as a `subscriber_lagged`
    /// loss record counting the events (before filtering) this subscriber missed.
    pub fn subscribe(&self, query: Query) -> impl Stream<Item = proto::FlowEvent> + Send + 'static {
        let Query {
            number,
            follow,
            since,
            filter,
        } = query;
        let since = since.as_ref().map(timestamp_nanos);
        let passes = move |event: &proto::FlowEvent| {
            filter.matches_event(event)
                && since.is_none_or(|since| event_nanos(event).is_some_and(|t| t >= since))
        };
        let limit = match (number, follow) {
            (0, false) => usize::MAX,
            (n, _) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let node = lock(&self.status).node.clone();

        let (buffered, receiver) = {
            let ring = self.ring();
            let mut buffered: Vec<proto::FlowEvent> = ring
                .events
                .iter()
                .rev()
                .filter_map(decode)
                .filter(|event| passes(event))
                .take(limit)
                .collect();
            buffered.reverse();
            (buffered, follow.then(|| self.tx.subscribe()))
        };

        let live = match receiver {
            None => stream::empty().left_stream(),
            Some(receiver) => BroadcastStream::new(receiver)
                .filter_map(move |item| {
                    future::ready(match item {
                        Ok(encoded) => decode(&encoded).filter(|event| passes(event)),
                        Err(BroadcastStreamRecvError::Lagged(count)) => {
                            Some(lagged_record(&node, count))
                        }
                    })
                })
                .right_stream(),
        };
        stream::iter(buffered).chain(live)
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.ring)
    }
}

impl Ring {
    fn push(&mut self, encoded: Bytes) {
        let size = encoded.len() + EVENT_OVERHEAD;
        if self.capacity == 0 || size > self.max_bytes {
            return;
        }
        while self.events.len() >= self.capacity || self.bytes + size > self.max_bytes {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.len() + EVENT_OVERHEAD;
        }
        self.bytes += size;
        self.events.push_back(encoded);
    }
}

/// An event of the ring. The hub encoded it, so decoding does not fail; if it did, the event
/// would be skipped.
fn decode(encoded: &Bytes) -> Option<proto::FlowEvent> {
    proto::FlowEvent::decode(encoded.as_ref()).ok()
}

/// Locks `mutex`, going on after a panic elsewhere: the data (events, a status) stays consistent
/// whatever point a panicking holder reached.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lagged_record(node: &str, count: u64) -> proto::FlowEvent {
    proto::FlowEvent {
        event: Some(Event::Loss(proto::LossRecord {
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
            node: node.to_owned(),
            reason: SUBSCRIBER_LAGGED.to_owned(),
            count,
            unit: "records".to_owned(),
            ..Default::default()
        })),
    }
}

/// Nanoseconds since the Unix epoch (exact, whatever the normalization of `ts`).
fn timestamp_nanos(ts: &prost_types::Timestamp) -> i128 {
    i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos)
}

/// The time `since` compares with: a flow's end, a loss record's time.
fn event_nanos(event: &proto::FlowEvent) -> Option<i128> {
    match &event.event {
        Some(Event::Flow(flow)) => flow.end_time.as_ref().map(timestamp_nanos),
        Some(Event::Loss(loss)) => loss.time.as_ref().map(timestamp_nanos),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: u32, end_secs: i64) -> proto::FlowEvent {
        proto::FlowEvent {
            event: Some(Event::Flow(proto::Flow {
                src_port: id,
                protocol: if id.is_multiple_of(2) { 6 } else { 17 },
                end_time: Some(prost_types::Timestamp {
                    seconds: end_secs,
                    nanos: 0,
                }),
                ..Default::default()
            })),
        }
    }

    fn ids(events: &[proto::FlowEvent]) -> Vec<u32> {
        events
            .iter()
            .map(|e| match &e.event {
                Some(Event::Flow(f)) => f.src_port,
                Some(Event::Loss(l)) => 1_000_000 + u32::try_from(l.count).unwrap(),
                None => u32::MAX,
            })
            .collect()
    }

    async fn collect(hub: &Hub, query: Query) -> Vec<proto::FlowEvent> {
        hub.subscribe(query).collect().await
    }

    #[tokio::test]
    async fn ring_keeps_the_last_capacity_events() {
        let hub = Hub::new(3);
        hub.publish((1..=5).map(|i| flow(i, 100)).collect());
        assert_eq!(hub.buffered_events(), 3);
        assert_eq!(ids(&collect(&hub, Query::default()).await), [3, 4, 5]);
        let last2 = Query {
            number: 2,
            ..Default::default()
        };
        assert_eq!(ids(&collect(&hub, last2).await), [4, 5]);
    }

    #[tokio::test]
    async fn zero_capacity_buffers_nothing() {
        let hub = Hub::new(0);
        hub.publish(vec![flow(1, 1)]);
        assert_eq!(hub.buffered_events(), 0);
        assert!(collect(&hub, Query::default()).await.is_empty());
    }

    #[tokio::test]
    async fn last_n_counts_matching_events_and_since_applies() {
        let hub = Hub::new(10);
        hub.publish((1..=8).map(|i| flow(i, i64::from(i) * 10)).collect());
        let udp = CompiledFilter::new(&proto::FlowFilter {
            protocol: vec![17],
            ..Default::default()
        })
        .unwrap();
        let query = Query {
            number: 2,
            filter: udp.clone(),
            ..Default::default()
        };
        assert_eq!(ids(&collect(&hub, query).await), [5, 7]);
        let query = Query {
            since: Some(prost_types::Timestamp {
                seconds: 50,
                nanos: 0,
            }),
            filter: udp,
            ..Default::default()
        };
        assert_eq!(ids(&collect(&hub, query).await), [5, 7]);
        let just_after = Query {
            since: Some(prost_types::Timestamp {
                seconds: 49,
                nanos: 1_000_000_001,
            }),
            ..Default::default()
        };
        assert_eq!(ids(&collect(&hub, just_after).await), [6, 7, 8]);
    }

    #[tokio::test]
    async fn follow_with_number_zero_starts_with_new_events() {
        let hub = Hub::new(10);
        hub.publish(vec![flow(1, 1)]);
        let mut sub = Box::pin(hub.subscribe(Query {
            follow: true,
            ..Default::default()
        }));
        assert_eq!(hub.followers(), 1);
        hub.publish(vec![flow(2, 2), flow(3, 3)]);
        let got = vec![sub.next().await.unwrap(), sub.next().await.unwrap()];
        assert_eq!(ids(&got), [2, 3]);
        drop(sub);
        assert_eq!(hub.followers(), 0);
    }

    #[tokio::test]
    async fn lagging_follower_gets_a_loss_record_and_goes_on() {
        let hub = Hub::with_follow_capacity(100, 4);
        hub.set_status(proto::GetStatusResponse {
            node: "node-a".into(),
            ..Default::default()
        });
        let mut sub = Box::pin(hub.subscribe(Query {
            number: 1,
            follow: true,
            ..Default::default()
        }));
        hub.publish((1..=10).map(|i| flow(i, 1)).collect());
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(sub.next().await.unwrap());
        }
        // Nothing was buffered when subscribing; 6 of 10 were overwritten before being read.
        assert_eq!(ids(&got), [1_000_006, 7, 8, 9, 10]);
        let Some(Event::Loss(loss)) = &got[0].event else {
            panic!("not a loss record: {got:?}");
        };
        assert_eq!(
            (
                loss.node.as_str(),
                loss.reason.as_str(),
                loss.unit.as_str(),
                loss.count
            ),
            ("node-a", SUBSCRIBER_LAGGED, "records", 6)
        );
        hub.publish(vec![flow(11, 1)]);
        assert_eq!(ids(&[sub.next().await.unwrap()]), [11]);
    }

    #[test]
    fn status_carries_buffered_events() {
        let hub = Hub::new(2);
        assert_eq!(hub.status().version, crate::VERSION);
        hub.set_status(proto::GetStatusResponse {
            node: "n".into(),
            buffered_events: 99,
            ..Default::default()
        });
        hub.publish(vec![flow(1, 1), flow(2, 2), flow(3, 3)]);
        let status = hub.status();
        assert_eq!((status.node.as_str(), status.buffered_events), ("n", 2));
    }

    fn rich_flow() -> proto::FlowEvent {
        let ep = |pod: &str| proto::Endpoint {
            kind: "pod".into(),
            namespace: "shop".into(),
            pod: pod.into(),
            workload: "cart".into(),
            labels: [("app".to_string(), "cart".to_string())].into(),
            node: "node-a".into(),
            ..Default::default()
        };
        proto::FlowEvent {
            event: Some(Event::Flow(proto::Flow {
                src_ip: vec![10, 0, 0, 1],
                dst_ip: vec![10, 0, 0, 2],
                src_port: 40000,
                dst_port: 443,
                protocol: 6,
                packets: 12,
                bytes: 3400,
                interfaces: vec!["vethA".into(), "vethB".into()],
                node: "node-a".into(),
                src: Some(ep("cart-1")),
                dst: Some(ep("cart-2")),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn events_come_back_as_published_to_readers_and_followers() {
        let hub = Hub::new(10);
        let mut sub = Box::pin(hub.subscribe(Query {
            follow: true,
            ..Default::default()
        }));
        let event = rich_flow();
        // Borrowed events, from any iterator.
        hub.publish_each(std::slice::from_ref(&event));
        assert_eq!(
            collect(&hub, Query::default()).await,
            std::slice::from_ref(&event)
        );
        assert_eq!(sub.next().await, Some(event));
    }

    #[tokio::test]
    async fn ring_is_bounded_in_bytes_too() {
        let one = rich_flow().encoded_len() + EVENT_OVERHEAD;
        // Room for three events' bytes, and for 100 events by count.
        let hub = Hub::with_limits(100, 3 * one + one / 2, 10);
        hub.publish((1..=5).map(|_| rich_flow()).collect());
        assert_eq!(hub.buffered_events(), 3);
        assert_eq!(hub.ring().bytes, 3 * one);
        // An event larger than the whole bound is not kept (but still followed).
        let tiny = Hub::with_limits(100, one - 1, 10);
        tiny.publish(vec![rich_flow()]);
        assert_eq!(tiny.buffered_events(), 0);
        // Bytes are given back as events leave by count.
        let by_count = Hub::with_limits(2, usize::MAX, 10);
        by_count.publish((1..=5).map(|i| flow(i, 1)).collect());
        assert_eq!(ids(&collect(&by_count, Query::default()).await), [4, 5]);
        let kept: usize = [flow(4, 1), flow(5, 1)]
            .iter()
            .map(|e| e.encoded_len() + EVENT_OVERHEAD)
            .sum();
        assert_eq!(by_count.ring().bytes, kept);
    }
}

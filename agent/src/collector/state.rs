//! The collector's state: the window, the per-agent counters and sequence numbers (duplicates
//! dropped, batches pending in the store), the files, and the status it publishes.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{RotatingWriter, Store, StoreStats};
use crate::{
    api::Hub,
    format::gke,
    proto::{self, ExportAck, ExportBatch, flow_event::Event},
};
use podflow_proto::export_batch;
use prost::Message as _;

#[derive(Debug)]
pub(super) struct State {
    pub(super) hub: Arc<Hub>,
    /// ClickHouse, when configured.
    pub(super) store: Option<Store>,
    pub(super) node: String,
    pub(super) start_time: prost_types::Timestamp,
    pub(super) inner: Mutex<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) agents: HashMap<String, AgentState>,
    pub(super) sinks: Sinks,
    /// The collector's own counters (e.g. file write failures).
    pub(super) counters: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub(super) struct Sinks {
    pub(super) native: Option<RotatingWriter>,
    pub(super) gke: Option<RotatingWriter>,
    pub(super) cluster: Option<gke::ClusterInfo>,
}

#[derive(Debug, Default)]
pub(super) struct AgentState {
    node: String,
    version: String,
    streams: u32,
    last_batch_time: Option<prost_types::Timestamp>,
    last_seq: u64,
    batches: u64,
    records: u64,
    duplicates: u64,
    /// (reason, unit) -> count.
    losses: BTreeMap<(String, String), u64>,
    /// Batches handed to the store and not yet stored: a retransmission of one waits for it
    /// instead of being stored twice. The sender says `true` once stored.
    pending: BTreeMap<u64, watch::Sender<bool>>,
}

/// What to do with a batch that arrived (see [`State::begin`]).
pub(super) enum Begin {
    /// Already accepted: acknowledge as a duplicate.
    Duplicate(ExportAck),
    /// Being stored (a retransmission of a pending batch): acknowledge once stored.
    Wait(watch::Receiver<bool>),
    /// New: store it; `check` when this process cannot know whether it is stored already.
    Store { check: bool },
}

/// Records the files could not hold.
const SINK_WRITE_FAILED: &str = "sink_write_failed";

impl State {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stream_opened(&self, batch: &ExportBatch) {
        let mut inner = self.lock();
        let agent = inner.agents.entry(batch.agent_id.clone()).or_default();
        agent.streams += 1;
        agent.node.clone_from(&batch.node);
        agent.version.clone_from(&batch.version);
        info!(agent = %batch.agent_id, node = %batch.node, "agent connected");
        self.publish_status(&inner);
    }

    pub(super) fn stream_closed(&self, agent_id: &str) {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(agent_id) {
            agent.streams = agent.streams.saturating_sub(1);
        }
        info!(agent = %agent_id, "agent disconnected");
        self.publish_status(&inner);
    }

    /// Classifies a batch for the store path: a duplicate, a retransmission of a pending batch,
    /// or a new one (then registered as pending).
    pub(super) fn begin(&self, batch: &ExportBatch) -> Begin {
        let mut inner = self.lock();
        let agent = inner.agents.entry(batch.agent_id.clone()).or_default();
        // Whether this process has had a batch of the agent. Not whether the agent has an entry:
        // `stream_opened` makes it before the stream's first batch gets here, so a resend to a
        // new collector by an agent that does not flag retransmissions was never checked (and
        // was stored twice).
        let known = agent.last_seq > 0 || !agent.pending.is_empty();
        // Pending first: batches of one agent may be stored out of order (see `commit`).
        if let Some(stored) = agent.pending.get(&batch.seq) {
            agent.duplicates += 1;
            return Begin::Wait(stored.subscribe());
        }
        if batch.seq <= agent.last_seq {
            return Begin::Duplicate(self.duplicate(&mut inner, batch));
        }
        let (stored, _) = watch::channel(false);
        agent.pending.insert(batch.seq, stored);
        // A retransmission this process has no record of may have been stored by a previous
        // collector that died before acknowledging it; a batch of an agent first seen with a
        // sequence number past 1 too (an agent too old to flag retransmissions).
        let check = batch.retransmission || (!known && batch.seq > 1);
        Begin::Store { check }
    }

    /// Takes a batch the store has stored: files, window, counters; returns its ack.
    pub(super) fn commit(&self, batch: ExportBatch) -> ExportAck {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(&batch.agent_id)
            && let Some(stored) = agent.pending.remove(&batch.seq)
        {
            stored.send_replace(true);
        }
        self.record(&mut inner, batch, None)
    }

    /// Forgets a pending batch the store could not take (the collector is stopping).
    pub(super) fn abandon(&self, agent_id: &str, seq: u64) {
        if let Some(agent) = self.lock().agents.get_mut(agent_id) {
            agent.pending.remove(&seq);
        }
    }

    /// Stores a batch (`events`: its events decoded, if at hand) unless it is a retransmission;
    /// returns its ack.
    pub(super) fn accept(
        &self,
        batch: ExportBatch,
        events: Option<&[proto::FlowEvent]>,
    ) -> ExportAck {
        let mut inner = self.lock();
        let agent = inner.agents.entry(batch.agent_id.clone()).or_default();
        if batch.seq <= agent.last_seq {
            return self.duplicate(&mut inner, &batch);
        }
        self.record(&mut inner, batch, events)
    }

    /// Counts a retransmission of a batch already accepted; returns its ack.
    fn duplicate(&self, inner: &mut Inner, batch: &ExportBatch) -> ExportAck {
        if let Some(agent) = inner.agents.get_mut(&batch.agent_id) {
            agent.duplicates += 1;
        }
        self.publish_status(inner);
        ExportAck {
            seq: batch.seq,
            duplicate: true,
        }
    }

    /// Counts a new batch, writes it to the files, publishes it (still encoded); returns its ack.
    /// `events`: the batch's events decoded, if at hand; otherwise only what the loss counters
    /// and the files need is decoded (the batch's events were checked on arrival).
    fn record(
        &self,
        inner: &mut MutexGuard<'_, Inner>,
        batch: ExportBatch,
        events: Option<&[proto::FlowEvent]>,
    ) -> ExportAck {
        let Inner {
            agents,
            sinks,
            counters,
        } = &mut **inner;
        let agent = agents.entry(batch.agent_id.clone()).or_default();
        agent.last_seq = agent.last_seq.max(batch.seq);
        agent.batches += 1;
        agent.records += batch.events.len() as u64;
        agent.last_batch_time = Some(prost_types::Timestamp::from(SystemTime::now()));
        let decoded: Vec<proto::FlowEvent>;
        let events = match events {
            Some(events) => events,
            None => {
                // Without files, only the loss records are read.
                let files = !sinks.is_empty();
                decoded = batch
                    .events
                    .iter()
                    .filter(|e| files || export_batch::is_loss(e))
                    .filter_map(|e| proto::FlowEvent::decode(e.as_ref()).ok())
                    .collect();
                &decoded
            }
        };
        for event in events {
            if let Some(Event::Loss(loss)) = &event.event {
                *agent
                    .losses
                    .entry((loss.reason.clone(), loss.unit.clone()))
                    .or_default() += loss.count;
            }
        }
        if !sinks.is_empty()
            && let Err(err) = sinks.write(events)
        {
            warn!(error = %err, "failed to write records to the output files");
            *counters.entry(SINK_WRITE_FAILED).or_default() += batch.events.len() as u64;
        }
        let seq = batch.seq;
        self.hub.publish_encoded(batch.events);
        self.publish_status(inner);
        ExportAck {
            seq,
            duplicate: false,
        }
    }

    pub(super) fn publish_status(&self, inner: &Inner) {
        let mut agents: Vec<proto::AgentStatus> = inner
            .agents
            .iter()
            .map(|(id, agent)| proto::AgentStatus {
                agent_id: id.clone(),
                node: agent.node.clone(),
                version: agent.version.clone(),
                connected: agent.streams > 0,
                last_batch_time: agent.last_batch_time,
                batches_received: agent.batches,
                records_received: agent.records,
                duplicate_batches: agent.duplicates,
                losses: agent
                    .losses
                    .iter()
                    .map(|((reason, unit), count)| proto::StatusCounter {
                        name: reason.clone(),
                        value: *count,
                        loss: true,
                        unit: unit.clone(),
                    })
                    .collect(),
            })
            .collect();
        agents.sort_by(|a, b| (&a.node, &a.agent_id).cmp(&(&b.node, &b.agent_id)));
        let mut counters = vec![
            proto::StatusCounter {
                name: "records_received".into(),
                value: agents.iter().map(|a| a.records_received).sum(),
                loss: false,
                unit: "records".into(),
            },
            proto::StatusCounter {
                name: "duplicate_batches".into(),
                value: agents.iter().map(|a| a.duplicate_batches).sum(),
                loss: false,
                unit: "batches".into(),
            },
        ];
        counters.push(proto::StatusCounter {
            name: SINK_WRITE_FAILED.into(),
            value: inner.counters.get(SINK_WRITE_FAILED).copied().unwrap_or(0),
            loss: true,
            unit: "records".into(),
        });
        if let Some(store) = &self.store {
            counters.extend(store_counters(&store.stats()));
        }
        self.hub.set_status(proto::GetStatusResponse {
            node: self.node.clone(),
            version: crate::VERSION.to_owned(),
            start_time: Some(self.start_time),
            counters,
            agents,
            ..Default::default()
        });
    }
}

/// The store's counters in the collector's status.
fn store_counters(stats: &StoreStats) -> Vec<proto::StatusCounter> {
    let counter = |name: &str, value: u64, unit: &str| proto::StatusCounter {
        name: name.into(),
        value,
        loss: false,
        unit: unit.into(),
    };
    let mut out = vec![
        counter("clickhouse_rows_inserted", stats.rows_inserted, "records"),
        counter("clickhouse_inserts", stats.inserts, "inserts"),
        counter(
            "clickhouse_rows_already_stored",
            stats.rows_already_stored,
            "records",
        ),
        counter(
            "clickhouse_buffered_records",
            stats.buffered_records,
            "records",
        ),
        counter("clickhouse_failures", stats.failures_total(), "requests"),
        counter(
            "clickhouse_partitions_dropped",
            stats.partitions_dropped,
            "partitions",
        ),
        counter("clickhouse_columns_added", stats.columns_added, "columns"),
        counter(
            "clickhouse_rollup_records_restored",
            stats.rollup_records_restored,
            "records",
        ),
    ];
    out.extend(
        stats
            .failures
            .iter()
            .map(|(cause, n)| counter(&format!("clickhouse_failures_{cause}"), *n, "requests")),
    );
    out
}

impl Sinks {
    /// No file is written.
    fn is_empty(&self) -> bool {
        self.native.is_none() && self.gke.is_none()
    }

    fn write(&mut self, events: &[proto::FlowEvent]) -> io::Result<()> {
        let to_io = |err: serde_json::Error| io::Error::new(io::ErrorKind::InvalidData, err);
        if let Some(native) = &mut self.native {
            let lines = events
                .iter()
                .filter_map(|e| crate::format::json_line(e).transpose())
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_io)?;
            native.write_lines(lines.iter().map(String::as_str))?;
        }
        if let Some(gke) = &mut self.gke {
            let lines = events
                .iter()
                .filter_map(|e| gke::gke_line(e, self.cluster.as_ref()).transpose())
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_io)?;
            gke.write_lines(lines.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

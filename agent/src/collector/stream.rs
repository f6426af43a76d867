//! `podflow.v1.CollectorService/Export`: one task per agent stream, batches handed to the state
//! (and the store), acknowledged in order.
use std::{future::Future, pin::Pin, sync::Arc};

use futures::{Stream, StreamExt as _, stream::FuturesOrdered};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::state::{Begin, State};
use crate::{
    clickhouse::rows::BatchRows,
    proto::{ExportAck, ExportBatch, FlowEvent, collector_service_server::CollectorService},
};

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Batches of one stream waiting for their ack at most (beyond the agent's own window).
const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// Resolves to a batch's ack, or `None` when it cannot be given (the collector is stopping).
type AckFuture = Pin<Box<dyn Future<Output = Option<ExportAck>> + Send>>;

/// What a batch's path needs of its events, made when it arrives (which checks them): the rows
/// for the store, read in place from the encoded events; without a store, the events decoded
/// (files, loss counters). The subscribers get the events as they came, still encoded.
enum Prepared {
    Rows(BatchRows),
    Events(Vec<FlowEvent>),
}

impl Prepared {
    fn of(state: &State, batch: &ExportBatch) -> Result<Prepared, String> {
        if state.store.is_some() {
            BatchRows::build(&batch.agent_id, batch.seq, &batch.events)
                .map(Prepared::Rows)
                .map_err(|e| e.to_string())
        } else {
            batch
                .decode_events()
                .map(Prepared::Events)
                .map_err(|e| e.to_string())
        }
    }
}

/// The ack of `batch`: at once without a store; with one, once stored.
fn ack_future(state: &Arc<State>, batch: ExportBatch, prepared: Prepared) -> AckFuture {
    let (store, rows) = match (&state.store, prepared) {
        (Some(store), Prepared::Rows(rows)) => (store, rows),
        // (Rows are made only with a store: without one, the events are at hand.)
        (_, prepared) => {
            let events = match prepared {
                Prepared::Events(events) => Some(events),
                Prepared::Rows(_) => None,
            };
            let ack = state.accept(batch, events.as_deref());
            return Box::pin(async move { Some(ack) });
        }
    };
    match state.begin(&batch) {
        Begin::Duplicate(ack) => Box::pin(async move { Some(ack) }),
        Begin::Wait(mut stored) => {
            let seq = batch.seq;
            Box::pin(async move {
                stored.wait_for(|stored| *stored).await.ok()?;
                Some(ExportAck {
                    seq,
                    duplicate: true,
                })
            })
        }
        Begin::Store { check } => {
            let stored = store.submit(rows, check);
            let state = Arc::clone(state);
            // A task of its own: the batch is stored and committed even if its stream ends first
            // (a retransmission on the next stream waits for it as pending).
            let task = tokio::spawn(async move {
                match stored.await {
                    Ok(()) => Some(state.commit(batch)),
                    Err(_) => {
                        state.abandon(&batch.agent_id, batch.seq);
                        None
                    }
                }
            });
            Box::pin(async move { task.await.ok().flatten() })
        }
    }
}

/// `podflow.v1.CollectorService`.
#[derive(Debug, Clone)]
pub(super) struct ExportApi {
    pub(super) state: Arc<State>,
    pub(super) stop: watch::Receiver<bool>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ExportAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CollectorService for ExportApi {
    type ExportStream = AckStream;

    async fn export(
        &self,
        request: Request<Streaming<ExportBatch>>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let mut inbound = request.into_inner();
        let state = Arc::clone(&self.state);
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut agent: Option<String> = None;
            // Acks in batch order; with a store, several batches are in flight at once.
            let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            loop {
                let message = tokio::select! {
                    Some(ack) = acks.next(), if !acks.is_empty() => Err(ack),
                    message = inbound.message(), if acks.len() < MAX_BATCHES_IN_FLIGHT => {
                        Ok(message)
                    }
                    () = stopped(&mut stop) => break,
                };
                let message = match message {
                    Ok(message) => message,
                    Err(Some(ack)) if tx.send(Ok(ack)).await.is_ok() => continue,
                    Err(_) => break,
                };
                let batch = match message {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        info!(agent = ?agent, %status, "export stream ended");
                        break;
                    }
                };
                if batch.agent_id.is_empty() {
                    let _ = tx
                        .send(Err(Status::invalid_argument("a batch needs an agent_id")))
                        .await;
                    break;
                }
                match &agent {
                    None => {
                        state.stream_opened(&batch);
                        agent = Some(batch.agent_id.clone());
                    }
                    Some(id) if *id != batch.agent_id => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "the agent_id changed within a stream",
                            )))
                            .await;
                        break;
                    }
                    Some(_) => {}
                }
                // A malformed event fails the stream as a malformed message did when batches
                // were decoded whole on receipt.
                let prepared = match Prepared::of(&state, &batch) {
                    Ok(prepared) => prepared,
                    Err(err) => {
                        info!(agent = ?agent, error = %err, "malformed batch");
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!(
                                "batch {}: {err}",
                                batch.seq
                            ))))
                            .await;
                        break;
                    }
                };
                acks.push_back(ack_future(&state, batch, prepared));
            }
            // The acks of batches received before the stream ended are owed to nobody now; the
            // store still finishes their batches (a retransmission will find them stored).
            if let Some(id) = agent {
                state.stream_closed(&id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

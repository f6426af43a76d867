//! The exporter task: one acknowledged stream at a time, batches numbered and kept until acked,
//! re-sent after a reconnect, with deadlines and jittered backoff.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::target::Target;
use super::*;
use crate::proto::{
    self, ExportBatch, collector_service_client::CollectorServiceClient, flow_event::Event,
};
use crate::report::{error_chain, refused_after_tls_handshake, status_text};

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: ExporterConfig,
    pub(super) target: Target,
    pub(super) agent_id: String,
    pub(super) max_in_flight: usize,
    /// The shutdown deadline, once asked for.
    pub(super) stop: watch::Receiver<Option<Instant>>,
}

/// Why a stream ended without an error.
enum SessionEnd {
    /// Shutdown: everything acknowledged, or the deadline passed.
    Shutdown,
    /// The TLS files changed: reconnect at once.
    Reload,
}

impl Worker {
    pub(super) async fn run(self) {
        let mut backoff = self.cfg.backoff_initial;
        loop {
            if self.shutdown_finished() {
                break;
            }
            let mut established = false;
            match self.session(&mut established).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Reload) => {
                    info!("collector TLS files changed: reconnecting");
                    backoff = self.cfg.backoff_initial;
                    continue;
                }
                Err(err) => {
                    {
                        let mut state = self.shared.lock();
                        state.stats.connected = false;
                        state.stats.failures += 1;
                        state.stats.last_error = Some(err.to_string());
                    }
                    warn!(collector = %self.cfg.collector, error = %err, "export stream failed");
                    if established {
                        backoff = self.cfg.backoff_initial;
                    }
                    let pause = jitter(backoff);
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    let mut stop = self.stop.clone();
                    let deadline = async move {
                        match stop.wait_for(Option::is_some).await.ok().and_then(|d| *d) {
                            Some(deadline) => tokio::time::sleep_until(deadline).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = deadline => break,
                    }
                }
            }
        }
        self.shared.drop_leftovers();
    }

    /// Shutdown asked for, and nothing left or the deadline passed.
    fn shutdown_finished(&self) -> bool {
        match *self.stop.borrow() {
            None => false,
            Some(deadline) => {
                let state = self.shared.lock();
                (state.queue.is_empty()
                    && state.unacked.is_empty()
                    && state.pending_loss.is_empty())
                    || Instant::now() >= deadline
            }
        }
    }

    async fn connect(&self) -> Result<Channel, ExportError> {
        let connect_error = |err: tonic::transport::Error| ExportError::Connect {
            collector: self.cfg.collector.clone(),
            reason: error_chain(&err),
        };
        let endpoint = |uri: String| -> Result<Endpoint, ExportError> {
            Ok(Endpoint::from_shared(uri)
                .map_err(connect_error)?
                .connect_timeout(self.cfg.connect_timeout)
                .http2_keep_alive_interval(self.cfg.keepalive_interval)
                .keep_alive_timeout(self.cfg.keepalive_timeout)
                .keep_alive_while_idle(true)
                .tcp_keepalive(Some(self.cfg.keepalive_interval))
                .tcp_nodelay(true))
        };
        match &self.target {
            Target::Tcp { uri } => {
                let mut endpoint = endpoint(uri.clone())?;
                if let Some(tls) = &self.cfg.tls {
                    endpoint = endpoint
                        .tls_config(tls.load()?.client_config())
                        .map_err(connect_error)?;
                }
                endpoint.connect().await.map_err(connect_error)
            }
            Target::Unix(path) => {
                crate::api::connect_unix(endpoint("http://localhost".to_owned())?, path.clone())
                    .await
                    .map_err(connect_error)
            }
        }
    }

    /// One connection and export stream, until an error, a TLS file change or the shutdown.
    async fn session(&self, established: &mut bool) -> Result<SessionEnd, ExportError> {
        let tls_snapshot = self.cfg.tls.as_ref().map(TlsClientConfig::snapshot);
        let channel = tokio::time::timeout(self.cfg.connect_timeout, self.connect())
            .await
            .map_err(|_| ExportError::Connect {
                collector: self.cfg.collector.clone(),
                reason: format!("timed out after {:?}", self.cfg.connect_timeout),
            })??;
        let mut client = CollectorServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20);
        if let Some(encoding) = self.cfg.compression.encoding() {
            client = client.send_compressed(encoding).accept_compressed(encoding);
        }
        // Room for every batch that may be outstanding, so sending never waits.
        let (tx, rx) = mpsc::channel::<ExportBatch>(self.max_in_flight + 1);
        {
            let mut state = self.shared.lock();
            let mut resent = 0u64;
            for batch in &state.unacked {
                resent += batch.events.len() as u64;
                let mut batch = batch.clone();
                batch.retransmission = true;
                if tx.try_send(batch).is_err() {
                    break;
                }
            }
            state.stats.retransmitted_records += resent;
        }
        let response =
            tokio::time::timeout(self.cfg.ack_timeout, client.export(ReceiverStream::new(rx)))
                .await
                .map_err(|_| ExportError::AckTimeout(self.cfg.ack_timeout))?
                .map_err(|status| {
                    let mut reason = status_text(&status);
                    if self.cfg.tls.is_some()
                        && let Some(hint) = refused_after_tls_handshake(&status)
                    {
                        reason = format!("{hint}: {reason}");
                    }
                    ExportError::Rpc { reason }
                })?;
        let mut acks = response.into_inner();
        *established = true;
        {
            let mut state = self.shared.lock();
            state.stats.connected = true;
            state.stats.connections += 1;
        }
        info!(collector = %self.cfg.collector, "export stream established");

        let mut stop = self.stop.clone();
        let mut ack_deadline: Option<Instant> = None;
        let mut cert_check = tokio::time::interval(self.cfg.cert_check_interval);
        cert_check.tick().await;
        loop {
            let (linger_until, outstanding, done) = self.fill(&tx)?;
            if done {
                // Everything acknowledged at shutdown: close our side.
                drop(tx);
                return Ok(SessionEnd::Shutdown);
            }
            if !outstanding {
                ack_deadline = None;
            } else if ack_deadline.is_none() {
                ack_deadline = Some(Instant::now() + self.cfg.ack_timeout);
            }
            let stop_at = *stop.borrow();
            tokio::select! {
                message = acks.message() => match message {
                    Ok(Some(ack)) => {
                        self.on_ack(&ack);
                        ack_deadline = None;
                    }
                    Ok(None) => return Err(ExportError::StreamClosed),
                    Err(status) => return Err(ExportError::Rpc { reason: status_text(&status) }),
                },
                () = self.shared.wake.notified() => {}
                () = sleep_until_opt(linger_until) => {}
                () = sleep_until_opt(ack_deadline) => {
                    return Err(ExportError::AckTimeout(self.cfg.ack_timeout));
                }
                () = sleep_until_opt(stop_at) => return Ok(SessionEnd::Shutdown),
                _ = stop.changed() => {}
                _ = cert_check.tick() => {
                    if let (Some(tls), Some(before)) = (&self.cfg.tls, &tls_snapshot)
                        && tls.snapshot() != *before
                    {
                        return Ok(SessionEnd::Reload);
                    }
                }
            }
        }
    }

    /// Forms and sends the batches that are due. Returns when the next linger expires, whether
    /// batches are outstanding, and whether a shutdown is complete.
    fn fill(
        &self,
        tx: &mpsc::Sender<ExportBatch>,
    ) -> Result<(Option<Instant>, bool, bool), ExportError> {
        let stopping = self.stop.borrow().is_some();
        let mut state = self.shared.lock();
        let now = Instant::now();
        if !state.queue.is_empty() && state.queue_since.is_none() {
            state.queue_since = Some(now);
        }
        while state.unacked.len() < self.max_in_flight {
            let lingered = state
                .queue_since
                .is_some_and(|since| now >= since + self.cfg.linger);
            let due = state.queue.len() >= self.cfg.batch_size
                || (!state.queue.is_empty() && (lingered || stopping))
                || !state.pending_loss.is_empty();
            if !due {
                break;
            }
            let take = state.queue.len().min(self.cfg.batch_size);
            let time = prost_types::Timestamp::from(SystemTime::now());
            let losses = std::mem::take(&mut state.pending_loss);
            let mut loss_events = Vec::with_capacity(losses.len());
            for (reason, count) in losses {
                loss_events.push(proto::FlowEvent {
                    event: Some(Event::Loss(proto::LossRecord {
                        time: Some(time),
                        node: self.cfg.node.clone(),
                        reason: reason.to_owned(),
                        count,
                        unit: "records".to_owned(),
                        ..Default::default()
                    })),
                });
                state.stats.loss_records_sent += 1;
            }
            // The queue holds encoded events: a batch lists them (the copy kept for
            // retransmission and the one sent share their buffers).
            let mut events = ExportBatch::encode_events(&loss_events);
            events.reserve(take);
            events.extend(state.queue.drain(..take));
            state.queue_since = if state.queue.is_empty() {
                None
            } else {
                Some(now)
            };
            let seq = state.next_seq;
            state.next_seq += 1;
            let batch = ExportBatch {
                agent_id: self.agent_id.clone(),
                node: self.cfg.node.clone(),
                version: crate::VERSION.to_owned(),
                seq,
                events,
                sent_time: Some(time),
                retransmission: false,
            };
            let len = batch.events.len();
            if tx.try_send(batch.clone()).is_err() {
                // Cannot happen (the channel has room for max_in_flight batches) unless the
                // stream is gone; keep the batch for the next connection.
                state.unacked.push_back(batch);
                state.unacked_records += len;
                return Err(ExportError::StreamClosed);
            }
            debug!(seq, events = len, "batch sent");
            state.unacked.push_back(batch);
            state.unacked_records += len;
            state.stats.sent_records += len as u64;
        }
        let linger_until = state.queue_since.map(|since| since + self.cfg.linger);
        let outstanding = !state.unacked.is_empty();
        let done = stopping
            && state.queue.is_empty()
            && state.unacked.is_empty()
            && state.pending_loss.is_empty();
        Ok((linger_until, outstanding, done))
    }

    fn on_ack(&self, ack: &proto::ExportAck) {
        let mut state = self.shared.lock();
        // Acks come in order; an ack covers its batch and any earlier one.
        while state.unacked.front().is_some_and(|b| b.seq <= ack.seq) {
            if let Some(batch) = state.unacked.pop_front() {
                let len = batch.events.len();
                state.unacked_records -= len;
                state.stats.acked_records += len as u64;
            }
        }
        if ack.duplicate {
            state.stats.duplicate_batches += 1;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `base` ±50%.
fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // A cheap, good-enough random factor in [0.5, 1.5): mixes the clock's nanoseconds.
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44; // 20 bits
    let factor = 0.5 + (mixed as f64) / f64::from(1u32 << 20);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d < Duration::from_secs(15),
                "{d:?}"
            );
        }
    }
}

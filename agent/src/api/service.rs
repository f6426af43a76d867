//! `podflow.v1.FlowService` over the [`Hub`]: the only place that maps errors to `tonic::Status`.
use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::hub::{Hub, Query};
use crate::{
    filter::CompiledFilter,
    proto::{self, flow_service_server::FlowService},
};

/// The service; clones share the hub and the stop signal.
#[derive(Debug, Clone)]
pub struct FlowApi {
    hub: Arc<Hub>,
    /// Turns true when the server shuts down: follow streams end then, so that the graceful
    /// shutdown does not wait for clients that follow forever.
    stop: watch::Receiver<bool>,
}

impl FlowApi {
    pub fn new(hub: Arc<Hub>, stop: watch::Receiver<bool>) -> Self {
        Self { hub, stop }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::FlowEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlowService for FlowApi {
    type GetFlowsStream = EventStream;

    async fn get_flows(
        &self,
        request: Request<proto::GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        let filter = CompiledFilter::new(&request.filter.unwrap_or_default())
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let events = self.hub.subscribe(Query {
            number: request.number,
            follow: request.follow,
            since: request.since,
            filter,
        });
        let mut stop = self.stop.clone();
        let stopped = async move {
            // An error means the server is gone: stop too.
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let stream = events.take_until(stopped).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        Ok(Response::new(self.hub.status()))
    }
}

//! `podflow agent`: the configuration is built from the flags first (`config`), then the agent
//! runs (`run`): one task owns the capture (kernel maps, attached programs) and the
//! flow table; it reacts to netlink link events, drains the kernel every flush interval and hands
//! the records to the flush pipeline (`flush`: flow table → enrichment → metrics → API hub and
//! exporter); `status` keeps the counters and the status the API serves. The gRPC server, the
//! metadata source, the exporter and the metrics and health endpoints run beside it.
//! SIGTERM/SIGINT: a last drain (so nothing counted is dropped), then detach exactly what was
//! attached.
mod config;
mod flush;
mod lock;
mod run;
mod status;

use std::{net::SocketAddr, time::Duration};

pub use self::{
    config::{AgentArgs, AgentConfig, KubeMode, MetadataSource},
    run::MMAP_THRESHOLD,
};
use crate::{api, capture::CaptureError};

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    run::run(AgentConfig::build(args)?).await
}

/// Why the agent stopped (or did not start).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A `--cluster-cidr` value is not a prefix or an address.
    #[error("invalid --cluster-cidr {0:?}")]
    ClusterCidr(String),
    /// Another agent runs in this network namespace.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Loading, attaching or draining failed.
    #[error("capture failed")]
    Capture {
        #[source]
        source: CaptureError,
    },
    /// The gRPC API could not be served.
    #[error("api server failed")]
    Api {
        #[source]
        source: api::ApiError,
    },
    /// The exporter could not start.
    #[error("exporter")]
    Export {
        #[source]
        source: crate::export::ExportError,
    },
    /// The start-up check found a missing capability, limit, blocked syscall or unwritable
    /// socket directory.
    #[error("start-up check failed")]
    Privileges {
        #[source]
        source: crate::privileges::PrivilegeError,
    },
    /// The metrics endpoint could not be served.
    #[error("metrics endpoint failed")]
    Metrics {
        #[source]
        source: crate::metrics::MetricsError,
    },
    /// The health endpoint could not be served.
    #[error("health endpoint on {addr} failed")]
    Health {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    /// The flush interval is longer than the flow maps' time stamps allow.
    #[error(
        "--flush-interval {}s is longer than the {}s the kernel's tick rate allows (the flow maps keep 16 bits of jiffies)",
        .interval.as_secs(),
        .max.as_secs()
    )]
    FlushInterval { interval: Duration, max: Duration },
    /// `--conntrack on` and ctnetlink cannot be used.
    #[error("reading the node's conntrack failed")]
    Conntrack {
        #[source]
        source: crate::conntrack::ConntrackError,
    },
    /// SIGTERM/SIGINT handlers could not be installed.
    #[error("installing signal handlers failed")]
    Signal {
        #[source]
        source: std::io::Error,
    },
}

impl From<CaptureError> for AgentError {
    fn from(source: CaptureError) -> Self {
        AgentError::Capture { source }
    }
}

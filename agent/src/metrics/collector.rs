//! The collector's metrics, rendered from its status at each scrape.
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::MetricsError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLossLabels {
    node: String,
    reason: String,
    unit: String,
}

/// The collector's metrics, rendered from its status: per agent (by node) records received,
/// duplicate batches dropped, connection state, and every loss the agent declared.
pub fn collector_exposition(
    status: &podflow_proto::v1::GetStatusResponse,
) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let received = Family::<AgentLabels, Counter>::default();
    let duplicates = Family::<AgentLabels, Counter>::default();
    let connected = Family::<AgentLabels, Gauge>::default();
    let lost = Family::<AgentLossLabels, Counter>::default();
    for a in &status.agents {
        let l = AgentLabels {
            node: a.node.clone(),
        };
        received.get_or_create(&l).inc_by(a.records_received);
        duplicates.get_or_create(&l).inc_by(a.duplicate_batches);
        connected.get_or_create(&l).set(i64::from(a.connected));
        for c in &a.losses {
            lost.get_or_create(&AgentLossLabels {
                node: a.node.clone(),
                reason: c.name.clone(),
                unit: c.unit.clone(),
            })
            .inc_by(c.value);
        }
    }
    registry.register(
        "podflow_collector_records_received",
        "Records received from each agent",
        received,
    );
    registry.register(
        "podflow_collector_duplicate_batches",
        "Re-sent batches recognised and dropped, per agent",
        duplicates,
    );
    registry.register(
        "podflow_collector_agent_connected",
        "1 while the agent's export stream is open",
        connected,
    );
    registry.register(
        "podflow_collector_agent_lost",
        "Losses each agent declared in its stream, by reason",
        lost,
    );
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|_| MetricsError::Encode)?;
    Ok(out)
}

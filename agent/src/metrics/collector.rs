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
struct RefusalLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLossLabels {
    node: String,
    reason: String,
    unit: String,
}

/// The collector's metrics, rendered from its status: per agent (by node) records received,
/// duplicate batches dropped, connection state, and every loss the agent declared; and the
/// connections the collector refused, by reason (`refused`, every reason listed).
pub fn collector_exposition(
    status: &podflow_proto::v1::GetStatusResponse,
    refused: &std::collections::BTreeMap<&'static str, u64>,
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
    let refusals = Family::<RefusalLabels, Counter>::default();
    for (reason, count) in refused {
        refusals
            .get_or_create(&RefusalLabels {
                reason: (*reason).to_owned(),
            })
            .inc_by(*count);
    }
    registry.register(
        "podflow_collector_refused_connections",
        "Connections refused before gRPC (not TLS, no or an untrusted client certificate, HTTP/1, \
         garbage, timeout), by reason; each is logged with the peer address (rate-limited)",
        refusals,
    );
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|_| MetricsError::Encode)?;
    Ok(out)
}

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
struct CauseLabels {
    cause: String,
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
    // The ClickHouse store's counters (collector status counters `clickhouse_*`).
    let failures = Family::<CauseLabels, Counter>::default();
    for c in &status.counters {
        let Some(name) = c.name.strip_prefix("clickhouse_") else {
            continue;
        };
        if let Some(cause) = name.strip_prefix("failures_") {
            failures
                .get_or_create(&CauseLabels {
                    cause: cause.to_owned(),
                })
                .inc_by(c.value);
            continue;
        }
        let help = match name {
            "rows_inserted" => "Flow and loss rows ClickHouse accepted",
            "inserts" => "INSERT statements ClickHouse accepted",
            "rows_already_stored" => {
                "Rows a retry or a retransmission found already stored (not inserted again)"
            }
            "buffered_records" => "Records waiting for ClickHouse (bounded by --clickhouse-buffer)",
            "partitions_dropped" => "Expired partitions dropped (retention)",
            "columns_added" => "Columns the schema migration added (new or dropped ones)",
            "rollup_records_restored" => {
                "Records whose roll-up rows a partial insert had lost, restored by the collector"
            }
            _ => continue,
        };
        if name == "buffered_records" {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(c.value).unwrap_or(i64::MAX));
            registry.register(format!("podflow_collector_clickhouse_{name}"), help, gauge);
        } else {
            let counter = Counter::<u64>::default();
            counter.inc_by(c.value);
            registry.register(
                format!("podflow_collector_clickhouse_{name}"),
                help,
                counter,
            );
        }
    }
    registry.register(
        "podflow_collector_clickhouse_failures",
        "Failed ClickHouse requests by cause (disk_full, schema, timeout, connect, tls, http, \
         server, config); retried until they succeed",
        failures,
    );
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|_| MetricsError::Encode)?;
    Ok(out)
}

//! `podflow status`: the agent's status (interfaces, active flows, every counter).
use std::io::{self, Write as _};

use serde::Serialize;

use super::{ClientTlsArgs, OutputFormat, Server, TailError, connect, parse_server};
use crate::format::rfc3339_nanos;
use crate::proto::{self, flow_service_client::FlowServiceClient};

/// `podflow status`: show the agent's status.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Server: a unix socket path, unix:///path, or host:port / http://host:port /
    /// https://host:port for TCP (https, or host:port with --tls-ca: TLS).
    #[arg(long, default_value = crate::DEFAULT_SOCKET, value_parser = parse_server)]
    pub server: Server,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Output format (compact: readable text).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Compact)]
    pub output: OutputFormat,
}

/// Runs `podflow status`: one GetStatus call, printed to stdout. Errors are `tail`'s (connect,
/// rpc, output).
pub async fn run_status(args: StatusArgs) -> Result<(), TailError> {
    let mut client = FlowServiceClient::new(connect(&args.server, &args.tls).await?);
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(|status| super::rpc_error(status, &args.tls))?
        .into_inner();
    let text = match args.output {
        OutputFormat::Compact => status_text(&status),
        OutputFormat::Json => status_json(&status).map_err(|source| TailError::Json { source })?,
    };
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(TailError::Stdout { source }),
    }
}

/// The status as readable text (several lines, no trailing newline).
pub fn status_text(status: &proto::GetStatusResponse) -> String {
    let mut lines = vec![
        format!("node:              {}", status.node),
        format!("version:           {}", status.version),
        format!(
            "started:           {}",
            rfc3339_nanos(status.start_time.as_ref()).unwrap_or_else(|| "-".to_owned())
        ),
        format!("active flows:      {}", status.flows_active),
        format!("buffered events:   {}", status.buffered_events),
        format!("flush interval:    {} ms", status.flush_interval_ms),
        format!("sampling:          1/{}", status.sampling_rate.max(1)),
        format!("flow map capacity: {}", status.flow_map_capacity),
        format!("interfaces:        {}", status.interfaces.len()),
    ];
    for iface in &status.interfaces {
        lines.push(format!(
            "  {} (ifindex {}, {}, {})",
            iface.name, iface.ifindex, iface.kind, iface.attach_mode
        ));
    }
    lines.push("counters:".to_owned());
    for counter in &status.counters {
        lines.push(format!(
            "  {:<28} {:>12} {}{}",
            counter.name,
            counter.value,
            counter.unit,
            if counter.loss { "  (loss)" } else { "" }
        ));
    }
    if !status.agents.is_empty() {
        lines.push(format!("agents:            {}", status.agents.len()));
        for a in &status.agents {
            let lost: u64 = a.losses.iter().map(|c| c.value).sum();
            lines.push(format!(
                "  {} ({}): {} records in {} batches, last {}, {} declared lost",
                a.node,
                if a.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                a.records_received,
                a.batches_received,
                rfc3339_nanos(a.last_batch_time.as_ref()).unwrap_or_else(|| "-".to_owned()),
                lost
            ));
        }
    }
    lines.join("\n")
}

#[derive(Serialize)]
struct JsonStatus<'a> {
    node: &'a str,
    version: &'a str,
    start_time: Option<String>,
    flows_active: u64,
    buffered_events: u64,
    flush_interval_ms: u32,
    sampling_rate: u32,
    flow_map_capacity: u32,
    interfaces: Vec<JsonInterface<'a>>,
    counters: Vec<JsonCounter<'a>>,
    /// On a collector: the agents that export to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    agents: Vec<JsonAgent<'a>>,
}

#[derive(Serialize)]
struct JsonAgent<'a> {
    agent_id: &'a str,
    node: &'a str,
    version: &'a str,
    connected: bool,
    last_batch_time: Option<String>,
    batches_received: u64,
    records_received: u64,
    duplicate_batches: u64,
    losses: Vec<JsonCounter<'a>>,
}

fn json_counters(counters: &[proto::StatusCounter]) -> Vec<JsonCounter<'_>> {
    counters
        .iter()
        .map(|c| JsonCounter {
            name: &c.name,
            value: c.value,
            loss: c.loss,
            unit: &c.unit,
        })
        .collect()
}

#[derive(Serialize)]
struct JsonInterface<'a> {
    name: &'a str,
    ifindex: u32,
    kind: &'a str,
    attach_mode: &'a str,
}

#[derive(Serialize)]
struct JsonCounter<'a> {
    name: &'a str,
    value: u64,
    loss: bool,
    unit: &'a str,
}

/// The status as one JSON object.
pub fn status_json(status: &proto::GetStatusResponse) -> Result<String, serde_json::Error> {
    serde_json::to_string(&JsonStatus {
        node: &status.node,
        version: &status.version,
        start_time: rfc3339_nanos(status.start_time.as_ref()),
        flows_active: status.flows_active,
        buffered_events: status.buffered_events,
        flush_interval_ms: status.flush_interval_ms,
        sampling_rate: status.sampling_rate,
        flow_map_capacity: status.flow_map_capacity,
        interfaces: status
            .interfaces
            .iter()
            .map(|i| JsonInterface {
                name: &i.name,
                ifindex: i.ifindex,
                kind: &i.kind,
                attach_mode: &i.attach_mode,
            })
            .collect(),
        counters: json_counters(&status.counters),
        agents: status
            .agents
            .iter()
            .map(|a| JsonAgent {
                agent_id: &a.agent_id,
                node: &a.node,
                version: &a.version,
                connected: a.connected,
                last_batch_time: rfc3339_nanos(a.last_batch_time.as_ref()),
                batches_received: a.batches_received,
                records_received: a.records_received,
                duplicate_batches: a.duplicate_batches,
                losses: json_counters(&a.losses),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> proto::GetStatusResponse {
        proto::GetStatusResponse {
            node: "node-a".into(),
            version: "0.1.0".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: 1_795_439_101,
                nanos: 0,
            }),
            interfaces: vec![proto::Interface {
                name: "veth1".into(),
                ifindex: 7,
                kind: "veth".into(),
                attach_mode: "tcx".into(),
            }],
            flows_active: 42,
            flush_interval_ms: 5000,
            sampling_rate: 1,
            flow_map_capacity: 65536,
            counters: vec![proto::StatusCounter {
                name: "lost_map_full".into(),
                value: 3,
                loss: true,
                unit: "packets".into(),
            }],
            buffered_events: 100,
            ..Default::default()
        }
    }

    #[test]
    fn text() {
        assert_eq!(
            status_text(&status()),
            "node:              node-a\n\
             version:           0.1.0\n\
             started:           2026-11-23T13:05:01.000000000Z\n\
             active flows:      42\n\
             buffered events:   100\n\
             flush interval:    5000 ms\n\
             sampling:          1/1\n\
             flow map capacity: 65536\n\
             interfaces:        1\n  \
             veth1 (ifindex 7, veth, tcx)\n\
             counters:\n  \
             lost_map_full                           3 packets  (loss)"
        );
    }

    #[test]
    fn json() {
        assert_eq!(
            status_json(&status()).unwrap(),
            r#"{"node":"node-a","version":"0.1.0","start_time":"2026-11-23T13:05:01.000000000Z","flows_active":42,"buffered_events":100,"flush_interval_ms":5000,"sampling_rate":1,"flow_map_capacity":65536,"interfaces":[{"name":"veth1","ifindex":7,"kind":"veth","attach_mode":"tcx"}],"counters":[{"name":"lost_map_full","value":3,"loss":true,"unit":"packets"}]}"#
        );
    }
}

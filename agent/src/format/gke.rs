//! Flow records with the field names of GKE VPC flow logs (the `jsonPayload` of
//! `compute.googleapis.com/vpc_flows`), so same-node pod traffic, which never reaches the VPC,
//! can be loaded next to VPC flow logs in BigQuery and queried with the same SQL.
//!
//! Types follow the VPC flow logs' JSON (proto3 JSON mapping) and hence their BigQuery export:
//! int64 counters (`bytes_sent`, `packets_sent`) are decimal *strings*, int32 fields (ports,
//! protocol) are numbers, times are RFC 3339 strings with nanoseconds. The schema is in
//! `deploy/schema/gke-flow-log.schema.json`.
//!
//! `reporter`: VPC flow logs say which side's VM reported the record; podflow's records say which
//! side their node is (`Flow.reporter`), and that is what is written. Only same-node flows are
//! written (inter-node and external traffic crosses the VPC and is already in VPC flow logs;
//! writing it too would count it twice). A same-node flow is counted once, at the source pod's
//! veth (the earliest point on the packet's path, see `flows`), so its reporter is `"SRC"`, also
//! for a record without one (from an agent that predates the field).
//!
//! Counters are estimates of the totals: sampled counts times the sampling rate, as VPC flow
//! logs report them.
use serde::Serialize;

use crate::{
    flows::rules,
    format::{ip_text, rfc3339_nanos},
    proto,
};

/// Cluster identity put in `*_gke_details.cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    pub location: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    connection: Connection,
    bytes_sent: String,
    packets_sent: String,
    start_time: Option<String>,
    end_time: Option<String>,
    reporter: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_gke_details: Option<GkeDetails<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dest_gke_details: Option<GkeDetails<'a>>,
}

#[derive(Serialize)]
struct Connection {
    src_ip: String,
    dest_ip: String,
    src_port: u32,
    dest_port: u32,
    protocol: u32,
}

#[derive(Serialize)]
struct GkeDetails<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Cluster<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<Pod<'a>>,
    /// The Services the end was reached through, as VPC flow logs list them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service: Vec<Service<'a>>,
}

#[derive(Serialize)]
struct Service<'a> {
    service_name: &'a str,
    service_namespace: &'a str,
}

#[derive(Serialize)]
struct Cluster<'a> {
    cluster_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_location: Option<&'a str>,
}

#[derive(Serialize)]
struct Pod<'a> {
    pod_name: &'a str,
    pod_namespace: &'a str,
}

/// The GKE-format line of `event`, or `None` for what is not written in that format (loss
/// records, flows that are not same-node, records without addresses).
pub fn gke_line(
    event: &proto::FlowEvent,
    cluster: Option<&ClusterInfo>,
) -> Result<Option<String>, serde_json::Error> {
    let Some(proto::flow_event::Event::Flow(flow)) = &event.event else {
        return Ok(None);
    };
    if !flow.same_node {
        return Ok(None);
    }
    let (Some(src_ip), Some(dest_ip)) = (ip_text(&flow.src_ip), ip_text(&flow.dst_ip)) else {
        return Ok(None);
    };
    let rate = u64::from(flow.sampling_rate.max(1));
    let line = Line {
        connection: Connection {
            src_ip,
            dest_ip,
            src_port: flow.src_port,
            dest_port: flow.dst_port,
            protocol: flow.protocol,
        },
        bytes_sent: flow.bytes.saturating_mul(rate).to_string(),
        packets_sent: flow.packets.saturating_mul(rate).to_string(),
        start_time: rfc3339_nanos(flow.start_time.as_ref()),
        end_time: rfc3339_nanos(flow.end_time.as_ref()),
        reporter: if flow.reporter == rules::DEST {
            rules::DEST
        } else {
            rules::SRC
        },
        src_gke_details: details(flow.src.as_ref(), cluster),
        dest_gke_details: details(flow.dst.as_ref(), cluster),
    };
    serde_json::to_string(&line).map(Some)
}

/// The GKE details of one end: its pod when the metadata names one, the cluster when known.
fn details<'a>(
    endpoint: Option<&'a proto::Endpoint>,
    cluster: Option<&'a ClusterInfo>,
) -> Option<GkeDetails<'a>> {
    let pod = endpoint
        .filter(|e| matches!(e.kind.as_str(), "pod" | "host_network_pod") && !e.pod.is_empty())
        .map(|e| Pod {
            pod_name: &e.pod,
            pod_namespace: &e.namespace,
        });
    let cluster = cluster.map(|c| Cluster {
        cluster_name: &c.name,
        cluster_location: c.location.as_deref(),
    });
    let service: Vec<Service<'a>> = endpoint
        .map(|e| {
            e.services
                .iter()
                .map(|s| Service {
                    service_name: &s.name,
                    service_namespace: &s.namespace,
                })
                .collect()
        })
        .unwrap_or_default();
    (pod.is_some() || cluster.is_some() || !service.is_empty()).then_some(GkeDetails {
        cluster,
        pod,
        service,
    })
}

-- podflow's tables on a ClickHouse server older than 21.8 (e.g. Debian's 18.16): no TTL (the collector
-- drops expired partitions), no LowCardinality. Generated from agent/src/clickhouse/schema.rs.

CREATE DATABASE IF NOT EXISTS podflow;

CREATE TABLE IF NOT EXISTS podflow.flows
(
    `end_time` DateTime,
    `start_time` DateTime,
    `end_time_ns` UInt64,
    `start_time_ns` UInt64,
    `node` String,
    `reporter` String,
    `counted` UInt8,
    `src_ip` String,
    `dst_ip` String,
    `src_port` UInt16,
    `dst_port` UInt16,
    `protocol` UInt8,
    `packets` UInt64,
    `bytes` UInt64,
    `tcp_flags` UInt8,
    `interfaces` Array(String),
    `same_node` UInt8,
    `inter_node` UInt8,
    `encrypted` UInt8,
    `plaintext_inter_node` UInt8,
    `fragment` UInt8,
    `sampling_rate` UInt32,
    `src_kind` String,
    `src_namespace` String,
    `src_pod` String,
    `src_uid` String,
    `src_workload_kind` String,
    `src_workload` String,
    `src_node` String,
    `src_service` String,
    `src_ambiguous` UInt8,
    `src_labels.key` Array(String),
    `src_labels.value` Array(String),
    `src_services.namespace` Array(String),
    `src_services.name` Array(String),
    `src_services.port_name` Array(String),
    `src_services.port` Array(UInt16),
    `dst_kind` String,
    `dst_namespace` String,
    `dst_pod` String,
    `dst_uid` String,
    `dst_workload_kind` String,
    `dst_workload` String,
    `dst_node` String,
    `dst_service` String,
    `dst_ambiguous` UInt8,
    `dst_labels.key` Array(String),
    `dst_labels.value` Array(String),
    `dst_services.namespace` Array(String),
    `dst_services.name` Array(String),
    `dst_services.port_name` Array(String),
    `dst_services.port` Array(UInt16),
    `translation_service_ip` String,
    `translation_service_port` UInt16,
    `translation_snat_ip` String,
    `translation_snat_port` UInt16,
    `translation_reply` UInt8,
    `dns.id` Array(UInt16),
    `dns.response` Array(UInt8),
    `dns.qname` Array(String),
    `dns.qtype` Array(UInt16),
    `dns.rcode` Array(UInt8),
    `dns.answers` Array(UInt16),
    `dns.latency_ns` Array(UInt64),
    `dns.flags` Array(UInt8),
    `tcp_handshakes` UInt32,
    `tcp_handshake_min_ns` UInt64,
    `tcp_handshake_max_ns` UInt64,
    `tcp_handshake_last_ns` UInt64,
    `dropped_packets` UInt64,
    `dropped_bytes` UInt64,
    `drop_reason` String,
    `dropped_in_node` UInt8,
    `tcp_srtt_samples` UInt32,
    `tcp_srtt_min_us` UInt32,
    `tcp_srtt_max_us` UInt32,
    `tcp_srtt_last_us` UInt32,
    `metadata_age_seconds` Nullable(Float64),
    `agent_id` String,
    `seq` UInt64,
    `idx` UInt32
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(end_time)
ORDER BY (src_namespace, dst_namespace, src_workload, dst_workload, end_time);

CREATE TABLE IF NOT EXISTS podflow.losses
(
    `time` DateTime,
    `time_ns` UInt64,
    `node` String,
    `reason` String,
    `unit` String,
    `count` UInt64,
    `from_ns` UInt64,
    `to_ns` UInt64,
    `agent_id` String,
    `seq` UInt64,
    `idx` UInt32
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(time)
ORDER BY (node, reason, time);

CREATE TABLE IF NOT EXISTS podflow.flows_5m
(
    `t` DateTime,
    `src_namespace` String,
    `src_workload_kind` String,
    `src_workload` String,
    `dst_namespace` String,
    `dst_workload_kind` String,
    `dst_workload` String,
    `same_node` UInt8,
    `inter_node` UInt8,
    `encrypted` UInt8,
    `packets` UInt64,
    `bytes` UInt64,
    `records` UInt64
)
ENGINE = SummingMergeTree((packets, bytes, records))
PARTITION BY toYYYYMMDD(t)
ORDER BY (src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted, t);

CREATE TABLE IF NOT EXISTS podflow.flows_1h
(
    `t` DateTime,
    `src_namespace` String,
    `src_workload_kind` String,
    `src_workload` String,
    `dst_namespace` String,
    `dst_workload_kind` String,
    `dst_workload` String,
    `same_node` UInt8,
    `inter_node` UInt8,
    `encrypted` UInt8,
    `packets` UInt64,
    `bytes` UInt64,
    `records` UInt64
)
ENGINE = SummingMergeTree((packets, bytes, records))
PARTITION BY toYYYYMM(t)
ORDER BY (src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted, t);

CREATE MATERIALIZED VIEW IF NOT EXISTS podflow.flows_5m_mv TO podflow.flows_5m
AS SELECT toStartOfFiveMinute(end_time) AS t, src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted,
    sum(packets * sampling_rate) AS packets, sum(bytes * sampling_rate) AS bytes, count() AS records
FROM podflow.flows
WHERE counted = 1
GROUP BY t, src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted;

CREATE MATERIALIZED VIEW IF NOT EXISTS podflow.flows_1h_mv TO podflow.flows_1h
AS SELECT toStartOfHour(end_time) AS t, src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted,
    sum(packets * sampling_rate) AS packets, sum(bytes * sampling_rate) AS bytes, count() AS records
FROM podflow.flows
WHERE counted = 1
GROUP BY t, src_namespace, src_workload_kind, src_workload, dst_namespace, dst_workload_kind, dst_workload, same_node, inter_node, encrypted;

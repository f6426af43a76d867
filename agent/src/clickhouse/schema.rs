//! podflow's tables in ClickHouse, created and migrated by the collector; the same statements
//! are shipped as plain SQL under `deploy/clickhouse/` (a test keeps the files current).
//!
//! | table | what | engine | partition | order |
//! |---|---|---|---|---|
//! | `flows` | every flow record, columns named as the JSON record's keys | MergeTree | day | namespace and workload pairs, time |
//! | `losses` | every loss record | MergeTree | day | node, reason, time |
//! | `flows_5m`, `flows_1h` | bytes, packets and records by (src namespace/workload, dst namespace/workload, same_node, inter_node, encrypted), each packet counted once | SummingMergeTree, filled by materialized views on `flows` | day, month | the dimensions, time |
//!
//! Counts once: an inter-node flow is reported by both nodes (`reporter` SRC and DEST); the
//! column `counted` (see [`crate::flows::rules::counted_once`]) is 1 on exactly one of them, and
//! every roll-up and saved query sums only `counted = 1` rows. Sampled counts are scaled by
//! `sampling_rate` wherever they are summed.
//!
//! Idempotency key: `(agent_id, seq, idx)`, the agent run, the batch's sequence number and the
//! record's index in it; the collector uses it to make a retried insert a no-op (see
//! `collector::store`).
//!
//! Layouts: one server ([`Layout::Single`]); a cluster without replication ([`Layout::Sharded`]:
//! `*_local` MergeTree tables and materialized views on every shard, `Distributed` tables of the
//! public names on every shard, sharded by `cityHash64(agent_id, seq)` so that a batch lands on one
//! shard); and the production layout ([`Layout::Replicated`]: the same with
//! `Replicated*MergeTree` and `ON CLUSTER` DDL, which needs ClickHouse Keeper or ZooKeeper, and is
//! shipped as SQL, not run by the tests).
//!
//! Versions: the columns and their wire encoding are the same on every server. From 21.8 on
//! (LTS; [`Features`]) the low-cardinality strings are `LowCardinality(String)` (same wire
//! format) and every table has a `TTL` of its retention. Older servers (Debian's 18.16) have
//! neither; retention is then only the collector's daily partition drops (done on every version).
use std::fmt::Write as _;

use thiserror::Error;

use super::{ClickHouseError, Client};

/// A column's type; the SQL type may depend on the server's [`Features`], the wire encoding
/// never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    DateTime,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    /// `Nullable(Float64)`.
    OptFloat64,
    String,
    /// A string with few distinct values (names of namespaces, workloads, nodes, reasons).
    LowString,
    ArrayString,
    ArrayUInt8,
    ArrayUInt16,
    ArrayUInt64,
}

impl Ty {
    pub fn sql(self, features: Features) -> &'static str {
        match self {
            Ty::DateTime => "DateTime",
            Ty::UInt8 => "UInt8",
            Ty::UInt16 => "UInt16",
            Ty::UInt32 => "UInt32",
            Ty::UInt64 => "UInt64",
            Ty::OptFloat64 => "Nullable(Float64)",
            Ty::String => "String",
            Ty::LowString if features.low_cardinality => "LowCardinality(String)",
            Ty::LowString => "String",
            Ty::ArrayString => "Array(String)",
            Ty::ArrayUInt8 => "Array(UInt8)",
            Ty::ArrayUInt16 => "Array(UInt16)",
            Ty::ArrayUInt64 => "Array(UInt64)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: Ty,
}

const fn col(name: &'static str, ty: Ty) -> Column {
    Column { name, ty }
}

/// Columns of an endpoint (`src_*`, `dst_*`), named as the JSON record's `src.*` keys; labels
/// and Services as parallel arrays (`Nested`).
macro_rules! endpoint_columns {
    ($p:literal) => {
        [
            col(concat!($p, "_kind"), Ty::LowString),
            col(concat!($p, "_namespace"), Ty::LowString),
            col(concat!($p, "_pod"), Ty::String),
            col(concat!($p, "_uid"), Ty::String),
            col(concat!($p, "_workload_kind"), Ty::LowString),
            col(concat!($p, "_workload"), Ty::LowString),
            col(concat!($p, "_node"), Ty::LowString),
            col(concat!($p, "_service"), Ty::LowString),
            col(concat!($p, "_ambiguous"), Ty::UInt8),
            col(concat!($p, "_labels.key"), Ty::ArrayString),
            col(concat!($p, "_labels.value"), Ty::ArrayString),
            col(concat!($p, "_services.namespace"), Ty::ArrayString),
            col(concat!($p, "_services.name"), Ty::ArrayString),
            col(concat!($p, "_services.port_name"), Ty::ArrayString),
            col(concat!($p, "_services.port"), Ty::ArrayUInt16),
        ]
    };
}

const FLOW_HEAD: [Column; 22] = [
    col("end_time", Ty::DateTime),
    col("start_time", Ty::DateTime),
    col("end_time_ns", Ty::UInt64),
    col("start_time_ns", Ty::UInt64),
    col("node", Ty::LowString),
    col("reporter", Ty::LowString),
    col("counted", Ty::UInt8),
    col("src_ip", Ty::String),
    col("dst_ip", Ty::String),
    col("src_port", Ty::UInt16),
    col("dst_port", Ty::UInt16),
    col("protocol", Ty::UInt8),
    col("packets", Ty::UInt64),
    col("bytes", Ty::UInt64),
    col("tcp_flags", Ty::UInt8),
    col("interfaces", Ty::ArrayString),
    col("same_node", Ty::UInt8),
    col("inter_node", Ty::UInt8),
    col("encrypted", Ty::UInt8),
    col("plaintext_inter_node", Ty::UInt8),
    col("fragment", Ty::UInt8),
    col("sampling_rate", Ty::UInt32),
];
const SRC: [Column; 15] = endpoint_columns!("src");
const DST: [Column; 15] = endpoint_columns!("dst");
const FLOW_TAIL: [Column; 29] = [
    col("translation_service_ip", Ty::String),
    col("translation_service_port", Ty::UInt16),
    col("translation_snat_ip", Ty::String),
    col("translation_snat_port", Ty::UInt16),
    col("translation_reply", Ty::UInt8),
    // The record's DNS messages (Flow.dns), one array element each (a `Nested`); qtype and
    // rcode as numbers (1 A, 28 AAAA; 0 NOERROR, 3 NXDOMAIN), latency 0 when unknown, flags:
    // bit 0 over TCP, bit 1 name truncated, bit 2 malformed.
    col("dns.id", Ty::ArrayUInt16),
    col("dns.response", Ty::ArrayUInt8),
    col("dns.qname", Ty::ArrayString),
    col("dns.qtype", Ty::ArrayUInt16),
    col("dns.rcode", Ty::ArrayUInt8),
    col("dns.answers", Ty::ArrayUInt16),
    col("dns.latency_ns", Ty::ArrayUInt64),
    col("dns.flags", Ty::ArrayUInt8),
    // TCP handshakes of the record (Flow.tcp_handshake): how many, nanoseconds; 0 when none.
    col("tcp_handshakes", Ty::UInt32),
    col("tcp_handshake_min_ns", Ty::UInt64),
    col("tcp_handshake_max_ns", Ty::UInt64),
    col("tcp_handshake_last_ns", Ty::UInt64),
    // Packets of the flow the kernel dropped (Flow.dropped_*), the latest reason, in the node.
    col("dropped_packets", Ty::UInt64),
    col("dropped_bytes", Ty::UInt64),
    col("drop_reason", Ty::LowString),
    col("dropped_in_node", Ty::UInt8),
    // The sending socket's smoothed RTT (Flow.tcp_srtt), µs; 0 samples when not sampled.
    col("tcp_srtt_samples", Ty::UInt32),
    col("tcp_srtt_min_us", Ty::UInt32),
    col("tcp_srtt_max_us", Ty::UInt32),
    col("tcp_srtt_last_us", Ty::UInt32),
    col("metadata_age_seconds", Ty::OptFloat64),
    col("agent_id", Ty::String),
    col("seq", Ty::UInt64),
    col("idx", Ty::UInt32),
];

const fn concat<const N: usize>(parts: [&[Column]; 4]) -> [Column; N] {
    let mut out = [col("", Ty::UInt8); N];
    let mut i = 0;
    let mut p = 0;
    while p < parts.len() {
        let mut j = 0;
        while j < parts[p].len() {
            out[i] = parts[p][j];
            i += 1;
            j += 1;
        }
        p += 1;
    }
    assert!(i == N);
    out
}

/// The columns of `flows`, in the order [`super::rows`] writes them.
pub const FLOW_COLUMNS: [Column; 81] = concat([&FLOW_HEAD, &SRC, &DST, &FLOW_TAIL]);

/// The columns of `losses`, in the order [`super::rows`] writes them.
pub const LOSS_COLUMNS: [Column; 11] = [
    col("time", Ty::DateTime),
    col("time_ns", Ty::UInt64),
    col("node", Ty::LowString),
    col("reason", Ty::LowString),
    col("unit", Ty::LowString),
    col("count", Ty::UInt64),
    col("from_ns", Ty::UInt64),
    col("to_ns", Ty::UInt64),
    col("agent_id", Ty::String),
    col("seq", Ty::UInt64),
    col("idx", Ty::UInt32),
];

/// The dimensions of the roll-ups.
const ROLLUP_KEYS: [Column; 9] = [
    col("src_namespace", Ty::LowString),
    col("src_workload_kind", Ty::LowString),
    col("src_workload", Ty::LowString),
    col("dst_namespace", Ty::LowString),
    col("dst_workload_kind", Ty::LowString),
    col("dst_workload", Ty::LowString),
    col("same_node", Ty::UInt8),
    col("inter_node", Ty::UInt8),
    col("encrypted", Ty::UInt8),
];

/// What the server supports beyond 18.16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub low_cardinality: bool,
    pub ttl: bool,
}

impl Features {
    /// From `SELECT version()` (e.g. `18.16.1`, `24.8.4.13`).
    pub fn of_version(version: &str) -> Features {
        let mut parts = version
            .trim()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        let modern = (major, minor) >= (21, 8);
        Features {
            low_cardinality: modern,
            ttl: modern,
        }
    }
}

/// How long each table keeps its rows, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub flows_days: u32,
    pub losses_days: u32,
    pub rollup_5m_days: u32,
    pub rollup_1h_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            flows_days: 7,
            losses_days: 30,
            rollup_5m_days: 35,
            rollup_1h_days: 400,
        }
    }
}

/// Where the tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One server: the public names are MergeTree tables.
    Single,
    /// Shards without replication (`remote_servers` cluster `name`): the collector runs the DDL
    /// on every shard itself.
    Sharded { cluster: String },
    /// Production: `Replicated*MergeTree` on every replica, DDL `ON CLUSTER` (needs Keeper;
    /// `{shard}` and `{replica}` macros on every server).
    Replicated { cluster: String },
}

impl Layout {
    fn cluster(&self) -> Option<&str> {
        match self {
            Layout::Single => None,
            Layout::Sharded { cluster } | Layout::Replicated { cluster } => Some(cluster),
        }
    }

    /// The name of the table that stores `public` on each server.
    pub fn local(&self, public: &str) -> String {
        match self {
            Layout::Single => public.to_owned(),
            _ => format!("{public}_local"),
        }
    }
}

/// One table's definition.
struct Table {
    public: &'static str,
    columns: &'static [Column],
    engine: Engine,
    partition: &'static str,
    order: &'static str,
    ttl_column: &'static str,
    retention: fn(&Retention) -> u32,
}

#[derive(Clone, Copy)]
enum Engine {
    MergeTree,
    Summing,
}

const FLOWS: &str = "flows";
const LOSSES: &str = "losses";
const ROLLUP_COLUMNS: [Column; 13] = {
    let mut out = [col("", Ty::UInt8); 13];
    out[0] = col("t", Ty::DateTime);
    let mut i = 0;
    while i < ROLLUP_KEYS.len() {
        out[i + 1] = ROLLUP_KEYS[i];
        i += 1;
    }
    out[10] = col("packets", Ty::UInt64);
    out[11] = col("bytes", Ty::UInt64);
    out[12] = col("records", Ty::UInt64);
    out
};
const ROLLUP_ORDER: &str = "(src_namespace, src_workload_kind, src_workload, dst_namespace, \
                            dst_workload_kind, dst_workload, same_node, inter_node, encrypted, t)";

const TABLES: [Table; 4] = [
    Table {
        public: FLOWS,
        columns: &FLOW_COLUMNS,
        engine: Engine::MergeTree,
        partition: "toYYYYMMDD(end_time)",
        order: "(src_namespace, dst_namespace, src_workload, dst_workload, end_time)",
        ttl_column: "end_time",
        retention: |r| r.flows_days,
    },
    Table {
        public: LOSSES,
        columns: &LOSS_COLUMNS,
        engine: Engine::MergeTree,
        partition: "toYYYYMMDD(time)",
        order: "(node, reason, time)",
        ttl_column: "time",
        retention: |r| r.losses_days,
    },
    Table {
        public: "flows_5m",
        columns: &ROLLUP_COLUMNS,
        engine: Engine::Summing,
        partition: "toYYYYMMDD(t)",
        order: ROLLUP_ORDER,
        ttl_column: "t",
        retention: |r| r.rollup_5m_days,
    },
    Table {
        public: "flows_1h",
        columns: &ROLLUP_COLUMNS,
        engine: Engine::Summing,
        partition: "toYYYYMM(t)",
        order: ROLLUP_ORDER,
        ttl_column: "t",
        retention: |r| r.rollup_1h_days,
    },
];

/// A roll-up: its table, the materialized view that fills it, and its time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollup {
    pub table: &'static str,
    pub view: &'static str,
    /// The bucket of a `flows` row, as SQL.
    pub bucket: &'static str,
    /// The bucket's length in seconds.
    pub seconds: u32,
}

/// The roll-ups (filled by their views; restored by the collector after a partial insert).
pub const ROLLUPS: [Rollup; 2] = [
    Rollup {
        table: "flows_5m",
        view: "flows_5m_mv",
        bucket: "toStartOfFiveMinute(end_time)",
        seconds: 300,
    },
    Rollup {
        table: "flows_1h",
        view: "flows_1h_mv",
        bucket: "toStartOfHour(end_time)",
        seconds: 3600,
    },
];

/// The dimensions of the roll-ups, in their column order.
pub fn rollup_keys() -> impl Iterator<Item = &'static str> {
    ROLLUP_KEYS.iter().map(|c| c.name)
}

/// The tables whose old partitions the collector drops: (public name, partition granularity).
pub fn partitioned_tables()
-> impl Iterator<Item = (&'static str, Granularity, fn(&Retention) -> u32)> {
    TABLES.iter().map(|t| {
        let granularity = if t.partition.starts_with("toYYYYMMDD") {
            Granularity::Day
        } else {
            Granularity::Month
        };
        (t.public, granularity, t.retention)
    })
}

/// A partition's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
}

/// The DDL, in order, for `layout` on a server with `features`. For [`Layout::Sharded`] every
/// statement runs on every shard.
pub fn statements(
    database: &str,
    layout: &Layout,
    features: Features,
    retention: &Retention,
) -> Vec<String> {
    let on_cluster = match layout {
        Layout::Replicated { cluster } => format!(" ON CLUSTER {cluster}"),
        _ => String::new(),
    };
    let mut out = vec![format!(
        "CREATE DATABASE IF NOT EXISTS {database}{on_cluster}"
    )];
    for table in &TABLES {
        let local = layout.local(table.public);
        let mut sql = format!("CREATE TABLE IF NOT EXISTS {database}.{local}{on_cluster}\n(\n");
        for (i, c) in table.columns.iter().enumerate() {
            let sep = if i + 1 == table.columns.len() {
                ""
            } else {
                ","
            };
            let _ = writeln!(sql, "    `{}` {}{sep}", c.name, c.ty.sql(features));
        }
        let sums = "(packets, bytes, records)";
        let engine = match (layout, table.engine) {
            (Layout::Replicated { .. }, engine) => {
                let path =
                    format!("'/clickhouse/tables/{{shard}}/{database}/{local}', '{{replica}}'");
                match engine {
                    Engine::MergeTree => format!("ReplicatedMergeTree({path})"),
                    Engine::Summing => format!("ReplicatedSummingMergeTree({path}, {sums})"),
                }
            }
            (_, Engine::MergeTree) => "MergeTree".to_owned(),
            (_, Engine::Summing) => format!("SummingMergeTree({sums})"),
        };
        let _ = write!(
            sql,
            ")\nENGINE = {engine}\nPARTITION BY {}\nORDER BY {}",
            table.partition, table.order
        );
        if features.ttl {
            let _ = write!(
                sql,
                "\nTTL {} + INTERVAL {} DAY",
                table.ttl_column,
                (table.retention)(retention)
            );
        }
        out.push(sql);
    }
    let keys = rollup_keys().collect::<Vec<_>>().join(", ");
    for Rollup {
        table: target,
        view,
        bucket,
        ..
    } in ROLLUPS
    {
        out.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{view}{on_cluster} TO \
             {database}.{target_local}\nAS SELECT {bucket} AS t, {keys},\n    \
             sum(packets * sampling_rate) AS packets, sum(bytes * sampling_rate) AS bytes, \
             count() AS records\nFROM {database}.{flows_local}\nWHERE counted = 1\nGROUP BY t, \
             {keys}",
            view = layout.local(view),
            target_local = layout.local(target),
            flows_local = layout.local(FLOWS),
        ));
    }
    if let Some(cluster) = layout.cluster() {
        for table in &TABLES {
            // Flows and losses are written through their Distributed table: whole batches to one
            // shard. The roll-ups are read through theirs (their views fill them per shard).
            // The roll-ups get a random one: only the collector's reconciliation rows (see
            // `collector::store`) are written through them.
            let sharding = match table.public {
                FLOWS | LOSSES => ", cityHash64(agent_id, seq)",
                _ => ", rand()",
            };
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {database}.{public}{on_cluster} AS \
                 {database}.{local}\nENGINE = Distributed({cluster}, {database}, {local}{sharding})",
                public = table.public,
                local = layout.local(table.public),
            ));
        }
    }
    out
}

/// The shipped SQL file of a layout (`deploy/clickhouse/*.sql`), for a server with `features`.
pub fn sql_file(layout: &Layout, features: Features, header: &str) -> String {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "-- {line}");
    }
    for statement in statements("podflow", layout, features, &Retention::default()) {
        let _ = write!(out, "\n{statement};\n");
    }
    out
}

#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("failed to read the server's version")]
    Version {
        #[source]
        source: ClickHouseError,
    },
    #[error("failed to create or migrate the schema on {server}")]
    Ddl {
        server: String,
        #[source]
        source: ClickHouseError,
    },
    #[error(
        "column {table}.{column} has type {found} where podflow writes {expected}: change it \
         back (ALTER TABLE ... MODIFY COLUMN) or point the collector at another database"
    )]
    Drift {
        table: String,
        column: String,
        found: String,
        expected: String,
    },
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// `table.column` added to existing tables (a table created earlier, or a column dropped).
    pub added_columns: Vec<String>,
}

/// The server's version and what it supports.
pub async fn features(client: &mut Client) -> Result<(String, Features), SchemaError> {
    let version = client
        .query("SELECT version()", None, &[])
        .await
        .map_err(|source| SchemaError::Version { source })?;
    let version = String::from_utf8_lossy(&version).trim().to_owned();
    let features = Features::of_version(&version);
    Ok((version, features))
}

/// Creates what is missing on the server of `client` and adds the columns missing from existing
/// tables (so a collector of a newer podflow migrates the tables of an older one, and a dropped
/// column comes back); a column of another type is an error (the data would not fit).
pub async fn migrate(
    client: &mut Client,
    layout: &Layout,
    retention: &Retention,
) -> Result<Migration, SchemaError> {
    let (_, features) = features(client).await?;
    let database = client.endpoint().database.clone();
    let server = client.endpoint().addr.clone();
    let ddl = |source| SchemaError::Ddl {
        server: server.clone(),
        source,
    };
    for statement in statements(&database, layout, features, retention) {
        client.execute(&statement).await.map_err(ddl)?;
    }
    let on_cluster = match layout {
        Layout::Replicated { cluster } => format!(" ON CLUSTER {cluster}"),
        _ => String::new(),
    };
    let mut migration = Migration::default();
    let mut tables: Vec<(String, &[Column])> = Vec::new();
    for table in &TABLES {
        tables.push((layout.local(table.public), table.columns));
        if layout.cluster().is_some() {
            tables.push((table.public.to_owned(), table.columns));
        }
    }
    for (table, columns) in tables {
        let existing = client
            .query(
                &format!(
                    "SELECT name, type FROM system.columns WHERE database = '{database}' AND \
                     table = '{table}' FORMAT TabSeparated"
                ),
                None,
                &[],
            )
            .await
            .map_err(ddl)?;
        let existing = String::from_utf8_lossy(&existing);
        let existing: Vec<(&str, &str)> = existing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .collect();
        for c in columns {
            let expected = c.ty.sql(features);
            match existing.iter().find(|(name, _)| *name == c.name) {
                Some((_, found)) if same_type(found, expected) => {}
                Some((_, found)) => {
                    return Err(SchemaError::Drift {
                        table: table.clone(),
                        column: c.name.to_owned(),
                        found: (*found).to_owned(),
                        expected: expected.to_owned(),
                    });
                }
                None => {
                    client
                        .execute(&format!(
                            "ALTER TABLE {database}.{table}{on_cluster} ADD COLUMN `{}` {expected}",
                            c.name
                        ))
                        .await
                        .map_err(ddl)?;
                    migration.added_columns.push(format!("{table}.{}", c.name));
                }
            }
        }
    }
    Ok(migration)
}

/// Types equal but for `LowCardinality` (a table made by 18.16 keeps `String` after an upgrade).
fn same_type(found: &str, expected: &str) -> bool {
    let strip = |t: &str| {
        t.strip_prefix("LowCardinality(")
            .and_then(|t| t.strip_suffix(')'))
            .map(str::to_owned)
            .unwrap_or_else(|| t.to_owned())
    };
    strip(found) == strip(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Features::of_version("18.16.1"), Features::default());
        assert!(Features::of_version("24.8.4.13").ttl);
        assert!(Features::of_version("21.8.1").low_cardinality);
        assert!(!Features::of_version("21.3.20").ttl);
        assert!(!Features::of_version("garbage").ttl);
    }

    #[test]
    fn column_names_are_unique_and_json_keys() {
        let mut names: Vec<_> = FLOW_COLUMNS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FLOW_COLUMNS.len());
        for key in [
            "src_ip",
            "dst_port",
            "packets",
            "bytes",
            "same_node",
            "reporter",
        ] {
            assert!(names.contains(&key), "{key}");
        }
    }

    #[test]
    fn old_servers_get_neither_ttl_nor_low_cardinality() {
        let old = statements(
            "podflow",
            &Layout::Single,
            Features::default(),
            &Retention::default(),
        );
        let text = old.join("\n");
        assert!(
            !text.contains("TTL") && !text.contains("LowCardinality"),
            "{text}"
        );
        assert!(text.contains("CREATE TABLE IF NOT EXISTS podflow.flows\n"));
        let new = statements(
            "podflow",
            &Layout::Single,
            Features::of_version("24.8"),
            &Retention::default(),
        )
        .join("\n");
        assert!(new.contains("TTL end_time + INTERVAL 7 DAY"), "{new}");
        assert!(new.contains("`src_namespace` LowCardinality(String)"));
    }

    #[test]
    fn clusters_write_through_distributed_tables() {
        let sharded = statements(
            "podflow",
            &Layout::Sharded {
                cluster: "podflow".into(),
            },
            Features::default(),
            &Retention::default(),
        )
        .join("\n");
        assert!(sharded.contains(
            "ENGINE = Distributed(podflow, podflow, flows_local, cityHash64(agent_id, seq))"
        ));
        assert!(sharded.contains("FROM podflow.flows_local\nWHERE counted = 1"));
        assert!(!sharded.contains("ON CLUSTER"));
        let replicated = statements(
            "podflow",
            &Layout::Replicated {
                cluster: "podflow".into(),
            },
            Features::of_version("24.8"),
            &Retention::default(),
        )
        .join("\n");
        assert!(replicated.contains(
            "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/podflow/flows_5m_local', \
             '{replica}', (packets, bytes, records))"
        ));
        assert!(
            replicated
                .contains("CREATE TABLE IF NOT EXISTS podflow.flows_local ON CLUSTER podflow")
        );
    }

    /// The files under deploy/clickhouse/ are what the collector runs; regenerate them with
    /// `PODFLOW_WRITE_SQL=1 cargo test -p podflow --lib shipped_sql`.
    #[test]
    fn shipped_sql_is_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/clickhouse");
        let modern = Features::of_version("23.8");
        let files = [
            (
                "schema.sql",
                sql_file(
                    &Layout::Single,
                    modern,
                    "podflow's tables on one ClickHouse server (21.8 and later: LowCardinality, \
                     TTL).\nThe collector creates and migrates them itself (podflow collector \
                     --clickhouse URL); this file is\nfor review and for creating them by hand. \
                     Generated from agent/src/clickhouse/schema.rs.",
                ),
            ),
            (
                "schema-18.16.sql",
                sql_file(
                    &Layout::Single,
                    Features::default(),
                    "podflow's tables on a ClickHouse server older than 21.8 (e.g. Debian's \
                     18.16): no TTL (the collector\ndrops expired partitions), no \
                     LowCardinality. Generated from agent/src/clickhouse/schema.rs.",
                ),
            ),
            (
                "cluster.sql",
                sql_file(
                    &Layout::Replicated {
                        cluster: "podflow".into(),
                    },
                    modern,
                    "Production layout: a cluster named `podflow` in remote_servers, ClickHouse \
                     Keeper (or ZooKeeper),\nmacros {shard} and {replica} on every server. \
                     ReplicatedMergeTree tables *_local on every replica,\nDistributed tables \
                     of the public names; run once, ON CLUSTER. Point the collector at any \
                     server\nwith --clickhouse-cluster podflow (it then writes through the \
                     Distributed tables with\ninsert_distributed_sync=1). Generated from \
                     agent/src/clickhouse/schema.rs.",
                ),
            ),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            if std::env::var_os("PODFLOW_WRITE_SQL").is_some() {
                std::fs::write(&path, &text).unwrap();
            }
            let shipped = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                shipped == text,
                "{} is stale: PODFLOW_WRITE_SQL=1 cargo test -p podflow --lib shipped_sql",
                path.display()
            );
        }
    }

    #[test]
    fn types_match_modulo_low_cardinality() {
        assert!(same_type("String", "LowCardinality(String)"));
        assert!(same_type("LowCardinality(String)", "String"));
        assert!(!same_type("UInt32", "UInt64"));
    }
}

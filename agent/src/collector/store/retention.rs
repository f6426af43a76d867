//! Retention: expired partitions dropped on every server, at start and every hour (on every
//! server version; tables made on 21.8 or later also have a TTL).
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::{StoreConfig, StoreStats, lock};
use crate::{
    clickhouse::{
        ClickHouseError, Client,
        schema::{self, Granularity, Layout, Retention},
    },
    report::error_chain,
};

/// Drops expired partitions on every server, now and every `retention_interval`.
pub(super) async fn retention_task(cfg: StoreConfig, stats: Arc<Mutex<StoreStats>>) {
    loop {
        for server in &cfg.servers {
            let Ok(mut client) = Client::new(server.clone(), cfg.timeout) else {
                continue;
            };
            let today = crate::time::realtime_ns() / 1_000_000_000 / 86_400;
            match drop_expired(&mut client, &cfg.layout, &cfg.retention, today).await {
                Ok(dropped) if !dropped.is_empty() => {
                    info!(server = %server.addr, ?dropped, "clickhouse: dropped expired partitions");
                    lock(&stats).partitions_dropped += dropped.len() as u64;
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(server = %server.addr, error = %error_chain(&err), "clickhouse: dropping expired partitions failed");
                }
            }
        }
        tokio::time::sleep(cfg.retention_interval).await;
    }
}

/// Drops the partitions of `server` whose every day is older than the table's retention
/// (`today`: days since the epoch); returns `table/partition` of each.
pub async fn drop_expired(
    client: &mut Client,
    layout: &Layout,
    retention: &Retention,
    today: u64,
) -> Result<Vec<String>, ClickHouseError> {
    let database = client.endpoint().database.clone();
    let mut dropped = Vec::new();
    for (public, granularity, days) in schema::partitioned_tables() {
        let table = layout.local(public);
        let answer = client
            .query(
                &format!(
                    "SELECT DISTINCT partition FROM system.parts WHERE database = '{database}' \
                     AND table = '{table}' AND active FORMAT TabSeparated"
                ),
                None,
                &[],
            )
            .await?;
        let keep_from = today.saturating_sub(u64::from(days(retention)));
        for partition in String::from_utf8_lossy(&answer).lines() {
            let partition = partition.trim().trim_matches('\'');
            let Some(last_day) = partition_last_day(partition, granularity) else {
                continue;
            };
            if last_day < keep_from {
                client
                    .execute(&format!(
                        "ALTER TABLE {database}.{table} DROP PARTITION {partition}"
                    ))
                    .await?;
                dropped.push(format!("{table}/{partition}"));
            }
        }
    }
    Ok(dropped)
}

/// The last day (days since the epoch) of partition `20261207` (day) or `202612` (month).
fn partition_last_day(partition: &str, granularity: Granularity) -> Option<u64> {
    if !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = partition.parse().ok()?;
    let (year, month, day) = match granularity {
        Granularity::Day => (n / 10_000, (n / 100) % 100, Some(n % 100)),
        Granularity::Month => (n / 100, n % 100, None),
    };
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let year = i32::try_from(year).ok()?;
    let day = match day {
        Some(d) => u8::try_from(d).ok()?,
        None => time::util::days_in_month(month, year),
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1).ok()?;
    u64::try_from((date - epoch).whole_days()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_expire_after_their_last_day() {
        // 2026-12-07 is day 20794.
        assert_eq!(
            partition_last_day("20261207", Granularity::Day),
            Some(20_794)
        );
        assert_eq!(
            partition_last_day("202612", Granularity::Month),
            Some(20_818)
        );
        assert_eq!(
            partition_last_day("202602", Granularity::Month),
            Some(20_512)
        );
        assert_eq!(partition_last_day("tuple()", Granularity::Day), None);
        assert_eq!(partition_last_day("20261340", Granularity::Day), None);
    }
}

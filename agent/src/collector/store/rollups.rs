//! Roll-ups restored after a partial insert (ClickHouse keeps an INSERT's `flows` part and may lose
//! its materialized views' parts when it dies in between).
use std::fmt::Write as _;

use tracing::warn;

use super::{lock, writer::Writer};
use crate::clickhouse::{ClickHouseError, schema};

impl Writer {
    /// Brings the roll-ups of the buckets in `[from, to]` (seconds) back to the raw rows' sums.
    ///
    /// ClickHouse writes an INSERT's `flows` part before its materialized views' parts, not
    /// atomically: a server killed (or a disk filling up) in between keeps the raw rows and loses
    /// their roll-up rows, and the retry finds the raw rows stored and skips them. So after every
    /// check that found rows stored, the collector compares, per bucket and roll-up key, the raw
    /// counted sums with the roll-up's and inserts the difference (the roll-ups never hold more
    /// than the raw rows: every row is stored once). This writer inserts nothing meanwhile; an
    /// insert of another collector into the same buckets between its raw and its view parts
    /// (milliseconds) would be counted twice in the roll-up: a known limit with several
    /// collectors.
    pub(super) async fn reconcile_rollups(
        &mut self,
        from: u32,
        to: u32,
    ) -> Result<(), ClickHouseError> {
        let database = self.cfg.endpoint.database.clone();
        let keys = schema::rollup_keys().collect::<Vec<_>>().join(", ");
        let mut added = 0u64;
        for schema::Rollup {
            table,
            bucket,
            seconds: len,
            ..
        } in schema::ROLLUPS
        {
            let lo = from / len * len;
            let hi = (to / len + 1).saturating_mul(len);
            let raw = self
                .client
                .query(
                    &format!(
                        "SELECT {bucket} AS t, {keys}, sum(packets * sampling_rate), \
                         sum(bytes * sampling_rate), count() FROM {database}.flows WHERE \
                         counted = 1 AND end_time >= toDateTime({lo}) AND end_time < \
                         toDateTime({hi}) GROUP BY t, {keys} FORMAT TabSeparated"
                    ),
                    None,
                    &[],
                )
                .await?;
            let rolled = self
                .client
                .query(
                    &format!(
                        "SELECT t, {keys}, sum(packets), sum(bytes), sum(records) FROM \
                         {database}.{table} WHERE t >= toDateTime({lo}) AND t < toDateTime({hi}) \
                         GROUP BY t, {keys} FORMAT TabSeparated"
                    ),
                    None,
                    &[],
                )
                .await?;
            let missing = rollup_deficit(
                &String::from_utf8_lossy(&raw),
                &String::from_utf8_lossy(&rolled),
            );
            if missing.rows == 0 {
                continue;
            }
            self.client
                .query(
                    &format!(
                        "INSERT INTO {database}.{table} (t, {keys}, packets, bytes, records) \
                         FORMAT TabSeparated"
                    ),
                    Some(bytes::Bytes::from(missing.tsv)),
                    &self.insert_settings.clone(),
                )
                .await?;
            // The same records' rows in each roll-up: counted once.
            added = added.max(missing.records);
            warn!(
                table,
                records = missing.records,
                "clickhouse: roll-up rows restored after a partial insert"
            );
        }
        lock(&self.stats).rollup_records_restored += added;
        Ok(())
    }
}

/// The roll-up rows missing: per (bucket, key) line, raw sums less rolled-up sums.
#[derive(Debug, Default, PartialEq, Eq)]
struct Deficit {
    /// `t, keys..., packets, bytes, records` lines (TabSeparated, as the server wrote them).
    tsv: String,
    rows: usize,
    records: u64,
}

/// Compares two TabSeparated answers of `t, keys..., packets, bytes, records`.
fn rollup_deficit(raw: &str, rolled: &str) -> Deficit {
    let split = |line: &str| -> Option<(String, [u64; 3])> {
        let mut fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 4 {
            return None;
        }
        let sums = fields.split_off(fields.len() - 3);
        let mut out = [0u64; 3];
        for (o, v) in out.iter_mut().zip(sums) {
            *o = v.parse().ok()?;
        }
        Some((fields.join("\t"), out))
    };
    let have: std::collections::HashMap<String, [u64; 3]> =
        rolled.lines().filter_map(split).collect();
    let mut deficit = Deficit::default();
    for (key, sums) in raw.lines().filter_map(split) {
        let got = have.get(&key).copied().unwrap_or_default();
        let diff = [0, 1, 2].map(|i| sums[i].saturating_sub(got[i]));
        if diff.iter().any(|d| *d > 0) {
            let _ = writeln!(deficit.tsv, "{key}\t{}\t{}\t{}", diff[0], diff[1], diff[2]);
            deficit.rows += 1;
            deficit.records += diff[2];
        }
    }
    deficit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_deficits_are_raw_less_rolled_up() {
        let raw = "2026-12-07 10:00:00\tshop\tweb\t1\t100\t10000\t3\n\
                   2026-12-07 10:00:00\tshop\tdb\t0\t5\t500\t1\n";
        let rolled = "2026-12-07 10:00:00\tshop\tweb\t1\t60\t6000\t2\n";
        let d = rollup_deficit(raw, rolled);
        assert_eq!(
            d.tsv,
            "2026-12-07 10:00:00\tshop\tweb\t1\t40\t4000\t1\n\
             2026-12-07 10:00:00\tshop\tdb\t0\t5\t500\t1\n"
        );
        assert_eq!((d.rows, d.records), (2, 2));
        assert_eq!(rollup_deficit(raw, raw), Deficit::default());
    }
}

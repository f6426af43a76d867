//! The ClickHouse test servers themselves ([`crate::support::clickhouse`]): a single server, and a
//! 2-shard cluster where rows inserted through a Distributed table land on both shards, are
//! counted through it and on each shard, and survive a `kill -9` and restart of a shard; a server
//! whose disk is full refuses RowBinary inserts (HTTP 500, code 75) until space is freed, and a
//! stopped (SIGSTOP) one does not answer until SIGCONT.
//! Privileged (the tests run as root); needs Debian's `clickhouse-server` (`cargo xtask setup`),
//! and fails without it unless `PODFLOW_SKIP_CLICKHOUSE=1`.
use std::time::Duration;

use crate::support::{
    clickhouse::{self, CLUSTER, ClickHouse, Options, Tmpfs, cluster2},
    privileged,
};

/// Rows inserted through the Distributed table: keys `k0..k9` × ports `0..6`.
const ROWS: u64 = 1000;

fn runnable() -> bool {
    if !privileged() {
        return false;
    }
    if !clickhouse::installed() && std::env::var_os("PODFLOW_SKIP_CLICKHOUSE").is_some() {
        eprintln!("clickhouse-server not installed and PODFLOW_SKIP_CLICKHOUSE set: skipping");
        return false;
    }
    assert!(
        clickhouse::installed(),
        "{} is missing: run `cargo xtask setup`",
        clickhouse::SERVER
    );
    true
}

/// `count(), sum(n)` of `table` on `server`.
fn count_sum(server: &ClickHouse, table: &str) -> (u64, u64) {
    let out = server.query(&format!("SELECT count(), sum(n) FROM {table} FORMAT TSV"));
    let (c, s) = out
        .trim()
        .split_once('\t')
        .unwrap_or_else(|| panic!("unexpected answer {out:?}"));
    (c.parse().unwrap(), s.parse().unwrap())
}

#[test]
fn one_server_answers_and_keeps_its_data() {
    if !runnable() {
        return;
    }
    let mut ch = ClickHouse::start();
    assert_eq!(ch.query("SELECT version()").trim(), "18.16.1");
    ch.query("CREATE TABLE t (a String, n UInt64) ENGINE = MergeTree ORDER BY a");
    ch.query("INSERT INTO t SELECT toString(number), number FROM numbers(100)");
    assert_eq!(count_sum(&ch, "t"), (100, 4950));
    let table_dir = ch.data_dir().join("data/default/t");
    assert!(table_dir.is_dir(), "no {}", table_dir.display());
    let err = ch.try_query("SELECT 1 FROM missing").unwrap_err();
    assert!(err.starts_with("HTTP 404: "), "{err}");
    assert_eq!(clickhouse::exception_code(&err), Some(60), "{err}");

    ch.kill9();
    assert!(
        ch.try_query("SELECT 1").is_err(),
        "a killed server answered"
    );
    ch.restart();
    assert_eq!(count_sum(&ch, "t"), (100, 4950));
}

#[test]
fn two_shards_split_distributed_inserts_and_survive_a_kill() {
    if !runnable() {
        return;
    }
    let (mut s1, s2) = cluster2();
    for s in [&s1, &s2] {
        let shards = s.query(&format!(
            "SELECT shard_num, port FROM system.clusters WHERE cluster = '{CLUSTER}' \
             ORDER BY shard_num FORMAT TSV"
        ));
        assert_eq!(
            shards,
            format!("1\t{}\n2\t{}\n", s1.tcp_port(), s2.tcp_port()),
            "the cluster as {} sees it",
            s.http_url()
        );
        s.query(
            "CREATE TABLE f_local (a String, b UInt16, n UInt64) \
             ENGINE = MergeTree ORDER BY (a, b)",
        );
        s.query(&format!(
            "CREATE TABLE f AS f_local \
             ENGINE = Distributed({CLUSTER}, default, f_local, cityHash64(a, b))"
        ));
    }
    s1.query_with(
        &[("insert_distributed_sync", "1")],
        &format!(
            "INSERT INTO f SELECT concat('k', toString(number % 10)), toUInt16(number % 7), \
             number FROM numbers({ROWS})"
        ),
    );
    let total = (ROWS, ROWS * (ROWS - 1) / 2);
    let (c1, n1) = count_sum(&s1, "f_local");
    let (c2, n2) = count_sum(&s2, "f_local");
    assert!(c1 > 0 && c2 > 0, "a shard got nothing: {c1} and {c2} rows");
    assert_eq!((c1 + c2, n1 + n2), total, "the shards together");
    assert_eq!(
        count_sum(&s1, "f"),
        total,
        "through the Distributed table on shard 1"
    );
    assert_eq!(
        count_sum(&s2, "f"),
        total,
        "through the Distributed table on shard 2"
    );
    // Every (a, b) on one shard only (the sharding key): the 70 pairs (number mod 70) split
    // between the shards, and the 30 rows of two pairs are found by a tuple IN.
    let pairs = |s: &ClickHouse| -> u64 {
        s.query("SELECT count() FROM (SELECT a, b FROM f_local GROUP BY a, b) FORMAT TSV")
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(pairs(&s1) + pairs(&s2), 70, "a pair on both shards");
    let picked =
        s2.query("SELECT count() FROM f WHERE (a, b) IN (('k1', 1), ('k3', 3)) FORMAT TSV");
    assert_eq!(picked.trim(), "30");

    let pid = s1.pid();
    s1.kill9();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the killed server's process is still there"
    );
    let down = s2.try_query("SELECT count() FROM f").unwrap_err();
    assert_eq!(clickhouse::exception_code(&down), Some(279), "{down}");
    s1.restart();
    assert_eq!(count_sum(&s1, "f_local"), (c1, n1), "shard 1 after kill -9");
    assert_eq!(
        count_sum(&s2, "f"),
        total,
        "through the Distributed table after the restart"
    );
}

/// `n` RowBinary rows of `(t DateTime, s String, n UInt64)`: t = 2026-12-01 10:00:00 + i,
/// s = `row-i`, n = i.
fn row_binary(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&(1_796_119_200 + i).to_le_bytes());
        let s = format!("row-{i}");
        out.push(u8::try_from(s.len()).unwrap()); // LEB128 of a length < 128
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&u64::from(i).to_le_bytes());
    }
    out
}

#[test]
fn a_full_disk_or_a_stopped_server_refuses_then_recovers() {
    if !runnable() {
        return;
    }
    // Mounted first, so unmounted after the server is gone.
    let disk = Tmpfs::mount(64);
    let mut ch = ClickHouse::start_with(Options {
        data_dir: Some(disk.path().join("data")),
        ..Options::default()
    });
    ch.query(
        "CREATE TABLE t (t DateTime, s String, n UInt64) \
         ENGINE = MergeTree PARTITION BY toYYYYMMDD(t) ORDER BY t",
    );
    let insert = |ch: &ClickHouse, rows| {
        ch.try_insert("t", &["t", "s", "n"], "RowBinary", &[], &row_binary(rows))
    };
    insert(&ch, 10).unwrap();
    assert_eq!(count_sum(&ch, "t"), (10, 45));

    disk.fill();
    let err = insert(&ch, 5).unwrap_err();
    assert!(err.starts_with("HTTP 500: "), "{err}");
    assert_eq!(clickhouse::exception_code(&err), Some(75), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(count_sum(&ch, "t"), (10, 45), "reads work on a full disk");
    disk.unfill();
    insert(&ch, 5).unwrap();
    assert_eq!(count_sum(&ch, "t"), (15, 55));

    ch.stop_signal();
    ch.set_timeout(Duration::from_millis(500));
    let err = ch.try_query("SELECT 1").unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    ch.cont_signal();
    ch.set_timeout(clickhouse::HTTP_TIMEOUT);
    assert_eq!(count_sum(&ch, "t"), (15, 55));
    assert!(ch.terminate().success(), "SIGTERM: not a clean exit");
}

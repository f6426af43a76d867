//! `podflow query`: the saved questions (`deploy/clickhouse/queries/`) against the flows stored in
//! ClickHouse by the collector.
//!
//! ```text
//! podflow query top_pod_pairs --clickhouse http://127.0.0.1:8123 --since 1h
//! podflow query big_transfers --from 2026-12-01T02:00:00Z --to 2026-12-01T03:00:00Z --threshold 1GB
//! podflow query losses --since 24h -o json
//! podflow query --list
//! ```
use std::{io::Write as _, time::Duration};

use thiserror::Error;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::clickhouse::{
    self, ClickHouseError, Client,
    queries::{self, Params, QueryError, SAVED},
};

/// `podflow query`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// The saved query (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the saved queries.
    #[arg(long)]
    pub list: bool,
    /// Print the SQL that would run instead of running it.
    #[arg(long)]
    pub print_sql: bool,
    #[command(flatten)]
    pub connect: clickhouse::ConnectArgs,
    /// Start of the range: a duration ago (30m, 24h) when --from is not given.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, conflicts_with = "from")]
    pub since: Duration,
    /// Start of the range (RFC 3339, inclusive).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<OffsetDateTime>,
    /// End of the range (RFC 3339, exclusive; default: the end of the current second).
    #[arg(long, value_parser = parse_time)]
    pub to: Option<OffsetDateTime>,
    /// Rows at most.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Bytes for big_transfers (e.g. 1GB, 500MiB).
    #[arg(long, default_value = "1GB", value_parser = crate::collector::parse_size)]
    pub threshold: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = QueryOutput::Table)]
    pub output: QueryOutput,
}

/// `-o/--output` of `podflow query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryOutput {
    /// Aligned columns with a header.
    Table,
    /// One JSON object per row (numbers as numbers).
    Json,
}

#[derive(Debug, Error)]
pub enum QueryCliError {
    #[error("no saved query named {0:?} (see podflow query --list)")]
    Unknown(String),
    #[error("podflow query needs --clickhouse URL")]
    NoServer,
    #[error(transparent)]
    Render(#[from] QueryError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("failed to write the answer")]
    Write(#[source] std::io::Error),
}

fn parse_time(value: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| format!("expected RFC 3339: {e}"))
}

/// Runs `podflow query`.
pub async fn run_query(args: QueryArgs) -> Result<(), QueryCliError> {
    let mut out = std::io::stdout().lock();
    let write = QueryCliError::Write;
    if args.list {
        for s in &SAVED {
            writeln!(out, "{:<22} {}", s.name, s.about).map_err(write)?;
        }
        return Ok(());
    }
    let name = args.name.clone().unwrap_or_default();
    let saved = queries::saved(&name).ok_or_else(|| QueryCliError::Unknown(name.clone()))?;
    // The end is exclusive and in whole seconds: by default the end of the current second, so
    // that records that ended in it are in.
    let now = OffsetDateTime::now_utc() + time::Duration::SECOND;
    let to = args.to.unwrap_or(now);
    let from = args
        .from
        .unwrap_or_else(|| to - time::Duration::try_from(args.since).unwrap_or_default());
    let params = Params {
        from: from.unix_timestamp(),
        to: to.unix_timestamp(),
        limit: args.limit,
        threshold: args.threshold,
    };
    let sql = queries::render(saved.sql, &params)?;
    if args.print_sql {
        writeln!(out, "{sql}").map_err(write)?;
        return Ok(());
    }
    let endpoint = args.connect.endpoint()?.ok_or(QueryCliError::NoServer)?;
    let mut client = Client::new(endpoint, Duration::from_secs(60))?.use_database();
    let format = match args.output {
        QueryOutput::Table => "TabSeparatedWithNames",
        QueryOutput::Json => "JSONEachRow",
    };
    let answer = client
        .query(
            &format!("{sql}\nFORMAT {format}"),
            None,
            &[("output_format_json_quote_64bit_integers", "0")],
        )
        .await?;
    let text = String::from_utf8_lossy(&answer);
    match args.output {
        QueryOutput::Json => out.write_all(text.as_bytes()).map_err(write)?,
        QueryOutput::Table => out.write_all(table(&text).as_bytes()).map_err(write)?,
    }
    Ok(())
}

/// TabSeparatedWithNames as aligned columns (numbers right-aligned).
pub fn table(tsv: &str) -> String {
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    let Some(columns) = rows.first().map(Vec::len) else {
        return String::new();
    };
    let mut widths = vec![0; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..columns)
        .map(|i| {
            rows.len() > 1
                && rows[1..]
                    .iter()
                    .all(|r| r.get(i).is_some_and(|c| c.parse::<f64>().is_ok()))
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i > 0 {
                line.push_str("  ");
            }
            let w = widths[i];
            if numeric[i] {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table("src\tbytes\na\t5\nlonger\t1000\n");
        assert_eq!(t, "src     bytes\na           5\nlonger   1000\n");
        assert_eq!(table(""), "");
    }
}

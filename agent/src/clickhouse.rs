//! ClickHouse: the store that answers questions about flows over days with SQL (the collector
//! writes to it, `podflow query` reads from it).
//!
//! - [`http`]: a client of ClickHouse's HTTP interface (one keep-alive HTTP/1.1 connection,
//!   optional TLS, credentials in headers, errors that carry ClickHouse's own code and message).
//! - [`schema`]: the tables, views and roll-ups, created and migrated by the collector, on one
//!   server or on every shard of a cluster; the same DDL is shipped under `deploy/clickhouse/`.
//! - [`rows`]: flow and loss records as `RowBinary` rows, in the column order of [`schema`].
//! - [`queries`]: the saved questions (`deploy/clickhouse/queries/*.sql`) and their parameters.
//!
//! Designed for the servers users run today (23.x and later) and for Debian's 18.16, which the
//! tests run: the wire format and every query are the same on both; what 18.16 lacks (TTL,
//! `LowCardinality`) switches on by the server's version (see [`schema::Features`]).
pub mod http;
pub mod queries;
pub mod rows;
pub mod schema;
pub mod view;

use std::path::PathBuf;

pub use self::http::{ClickHouseError, Client, Endpoint};

/// Environment variable holding the ClickHouse password (when no file names it).
pub const PASSWORD_ENV: &str = "PODFLOW_CLICKHOUSE_PASSWORD";

/// Where ClickHouse is and how to log in: the flags the collector and `podflow query` share.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConnectArgs {
    /// ClickHouse HTTP(S) interface, e.g. http://127.0.0.1:8123 or https://ch:8443 (no
    /// credentials in the URL: see --clickhouse-user and --clickhouse-password-file).
    #[arg(id = "clickhouse_url", long = "clickhouse", value_name = "URL")]
    pub url: Option<String>,
    /// Database of podflow's tables (created by the collector when missing).
    #[arg(
        id = "clickhouse_database",
        long = "clickhouse-database",
        default_value = "podflow",
        value_name = "NAME"
    )]
    pub database: String,
    /// ClickHouse user.
    #[arg(
        id = "clickhouse_user",
        long = "clickhouse-user",
        default_value = "default",
        value_name = "NAME"
    )]
    pub user: String,
    /// File holding the user's password (default: the environment variable
    /// PODFLOW_CLICKHOUSE_PASSWORD, else no password). Never a flag value: flags show in `ps`.
    #[arg(
        id = "clickhouse_password_file",
        long = "clickhouse-password-file",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https:// ClickHouse (default for https: none, refused).
    #[arg(id = "clickhouse_ca", long = "clickhouse-ca", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to ClickHouse (with --clickhouse-key).
    #[arg(
        id = "clickhouse_cert",
        long = "clickhouse-cert",
        value_name = "PEM",
        requires = "clickhouse_key"
    )]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS to ClickHouse.
    #[arg(
        id = "clickhouse_key",
        long = "clickhouse-key",
        value_name = "PEM",
        requires = "clickhouse_cert"
    )]
    pub key: Option<PathBuf>,
}

impl ConnectArgs {
    /// The endpoint these flags name (`None` without `--clickhouse`).
    pub fn endpoint(&self) -> Result<Option<Endpoint>, ClickHouseError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ClickHouseError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => std::env::var(PASSWORD_ENV).ok(),
        };
        let tls = self.ca.as_ref().map(|ca| crate::tls::TlsClientConfig {
            ca: ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: None,
        });
        Endpoint::parse(url, &self.database, &self.user, password, tls).map(Some)
    }
}

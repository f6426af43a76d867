//! A client of ClickHouse's HTTP interface: one keep-alive HTTP/1.1 connection (reopened after
//! any error), TLS with a given CA, the user and password in `X-ClickHouse-User`/`-Key` headers,
//! a deadline per request, and errors that carry ClickHouse's exception code and message.
use std::{fmt::Write as _, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

use crate::tls::TlsClientConfig;

/// ClickHouse exception codes podflow acts on.
pub mod code {
    /// A column of the INSERT is not in the table (the schema drifted).
    pub const NO_SUCH_COLUMN_IN_TABLE: u32 = 16;
    pub const THERE_IS_NO_COLUMN: u32 = 8;
    pub const UNKNOWN_IDENTIFIER: u32 = 47;
    pub const UNKNOWN_TABLE: u32 = 60;
    pub const UNKNOWN_DATABASE: u32 = 81;
    /// The server's disk is full.
    pub const NOT_ENOUGH_SPACE: u32 = 243;
    /// A query with this id runs already (a previous attempt of the same insert).
    pub const QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING: u32 = 216;
}

#[derive(Debug, Error)]
pub enum ClickHouseError {
    /// The URL is not one podflow can use.
    #[error("invalid ClickHouse URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The password file could not be read.
    #[error("failed to read the ClickHouse password file {}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// No TCP connection (nothing was sent).
    #[error("failed to connect to ClickHouse at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (nothing was sent).
    #[error("TLS handshake with ClickHouse at {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the request may or may not have been executed).
    #[error("HTTP exchange with ClickHouse failed")]
    Http {
        #[source]
        source: hyper::Error,
    },
    /// No answer within the deadline (the request may or may not have been executed).
    #[error("no answer from ClickHouse within {0:?}")]
    Timeout(Duration),
    /// ClickHouse answered with an error.
    #[error("ClickHouse refused the query (HTTP {status}): {message}")]
    Server {
        status: u16,
        /// ClickHouse's exception code (`Code: 60, e.displayText() = ...`), when it said one.
        code: Option<u32>,
        message: String,
    },
}

impl ClickHouseError {
    /// ClickHouse's exception code, for errors ClickHouse reported.
    pub fn code(&self) -> Option<u32> {
        match self {
            ClickHouseError::Server { code, .. } => *code,
            _ => None,
        }
    }

    /// Whether the schema is missing something (a table, a column, the database): creating
    /// and migrating it again may fix the query.
    pub fn is_schema(&self) -> bool {
        matches!(
            self.code(),
            Some(
                code::NO_SUCH_COLUMN_IN_TABLE
                    | code::THERE_IS_NO_COLUMN
                    | code::UNKNOWN_IDENTIFIER
                    | code::UNKNOWN_TABLE
                    | code::UNKNOWN_DATABASE
            )
        )
    }

    /// Whether nothing of the request reached the server.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            ClickHouseError::Connect { .. }
                | ClickHouseError::Handshake { .. }
                | ClickHouseError::InvalidUrl { .. }
                | ClickHouseError::Tls(_)
                | ClickHouseError::PasswordFile { .. }
        )
    }

    /// A short stable name of the cause, for counters and metrics labels.
    pub fn cause(&self) -> &'static str {
        match self {
            ClickHouseError::InvalidUrl { .. }
            | ClickHouseError::PasswordFile { .. }
            | ClickHouseError::Tls(_) => "config",
            ClickHouseError::Connect { .. } => "connect",
            ClickHouseError::Handshake { .. } => "tls",
            ClickHouseError::Http { .. } => "http",
            ClickHouseError::Timeout(_) => "timeout",
            ClickHouseError::Server { .. } if self.is_schema() => "schema",
            ClickHouseError::Server { code, message, .. }
                if *code == Some(code::NOT_ENOUGH_SPACE)
                    || message.contains("No space left on device") =>
            {
                "disk_full"
            }
            ClickHouseError::Server { .. } => "server",
        }
    }
}

/// A ClickHouse server (or the entry server of a cluster) and how to log in.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port` (IPv6 hosts in brackets).
    pub addr: String,
    host: String,
    pub database: String,
    user: String,
    password: Option<String>,
    tls: Option<TlsClientConfig>,
}

impl std::fmt::Debug for Endpoint {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `http://host[:8123]` or `https://host[:8443]` (a path, query or credentials are refused).
    pub fn parse(
        url: &str,
        database: &str,
        user: &str,
        password: Option<String>,
        tls: Option<TlsClientConfig>,
    ) -> Result<Endpoint, ClickHouseError> {
        let invalid = |reason| ClickHouseError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(invalid("expected http://host:port or https://host:port"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(invalid(
                "credentials in the URL would show in `ps`: use --clickhouse-user and \
                 --clickhouse-password-file",
            ));
        }
        if rest.contains(['/', '?', '#']) || rest.is_empty() {
            return Err(invalid("expected only a host and a port"));
        }
        if https && tls.is_none() {
            return Err(invalid(
                "https needs the server's CA certificate (--clickhouse-ca)",
            ));
        }
        if !https && tls.is_some() {
            return Err(invalid("a CA certificate is given for an http:// URL"));
        }
        let default_port = if https { 8443 } else { 8123 };
        let (host, addr) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                if host.contains(':') && !host.starts_with('[') {
                    // A bare IPv6 address without brackets or port.
                    (rest.to_owned(), format!("[{rest}]:{default_port}"))
                } else {
                    port.parse::<u16>().map_err(|_| invalid("invalid port"))?;
                    (host.to_owned(), rest.to_owned())
                }
            }
            _ => (rest.to_owned(), format!("{rest}:{default_port}")),
        };
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || database.is_empty()
        {
            return Err(invalid("the database name must be [A-Za-z0-9_]+"));
        }
        Ok(Endpoint {
            addr,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            database: database.to_owned(),
            user: user.to_owned(),
            password,
            tls,
        })
    }

    /// The same login on another server (a shard of the cluster, by `host:port`).
    pub fn with_addr(&self, url: &str) -> Result<Endpoint, ClickHouseError> {
        Endpoint::parse(
            url,
            &self.database,
            &self.user,
            self.password.clone(),
            self.tls.clone(),
        )
    }
}

/// A connection to one ClickHouse server, opened on first use and after every error.
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// Unqualified table names refer to the endpoint's database (the saved queries); off, the
    /// server's default database (podflow's own statements name theirs, and it may not exist yet).
    use_database: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with a deadline of `timeout` per request (connection included).
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Client, ClickHouseError> {
        let tls = match &endpoint.tls {
            None => None,
            Some(cfg) => {
                let config: Arc<rustls::ClientConfig> = cfg.rustls_client(&[b"http/1.1"])?;
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
                    ClickHouseError::InvalidUrl {
                        url: endpoint.addr.clone(),
                        reason: "the host is not a valid TLS server name",
                    }
                })?;
                Some((TlsConnector::from(config), name))
            }
        };
        Ok(Client {
            endpoint,
            timeout,
            tls,
            conn: None,
            use_database: false,
        })
    }

    /// Unqualified table names refer to the endpoint's database.
    pub fn use_database(mut self) -> Client {
        self.use_database = true;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Runs `sql`, with `data` as the INSERT's data when given (the SQL then goes in the URL),
    /// and `settings` as ClickHouse settings; returns the answer's body.
    pub async fn query(
        &mut self,
        sql: &str,
        data: Option<Bytes>,
        settings: &[(&str, &str)],
    ) -> Result<Bytes, ClickHouseError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(sql, data, settings)).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(err)) => {
                if !matches!(err, ClickHouseError::Server { .. }) {
                    self.conn = None;
                }
                Err(err)
            }
            Err(_) => {
                self.conn = None;
                Err(ClickHouseError::Timeout(timeout))
            }
        }
    }

    /// [`Client::query`] of a statement that returns nothing worth keeping.
    pub async fn execute(&mut self, sql: &str) -> Result<(), ClickHouseError> {
        self.query(sql, None, &[]).await.map(drop)
    }

    async fn exchange(
        &mut self,
        sql: &str,
        data: Option<Bytes>,
        settings: &[(&str, &str)],
    ) -> Result<Bytes, ClickHouseError> {
        let mut params: Vec<String> = Vec::new();
        if self.use_database {
            params.push(format!("database={}", self.endpoint.database));
        }
        for (name, value) in settings {
            params.push(format!("{name}={}", percent_encode(value)));
        }
        let body = match data {
            Some(data) => {
                params.push(format!("query={}", percent_encode(sql)));
                data
            }
            None => Bytes::copy_from_slice(sql.as_bytes()),
        };
        let path = format!("/?{}", params.join("&"));
        let mut request = Request::post(path)
            .header(hyper::header::HOST, &self.endpoint.addr)
            .header("X-ClickHouse-User", &self.endpoint.user);
        if let Some(password) = &self.endpoint.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| ClickHouseError::InvalidUrl {
                url: self.endpoint.addr.clone(),
                reason: "the user or password is not a valid HTTP header value",
            })?;
        let mut conn = match self.conn.take() {
            Some(conn) if conn.is_ready() => conn,
            _ => self.connect().await?,
        };
        conn.ready()
            .await
            .map_err(|source| ClickHouseError::Http { source })?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|source| ClickHouseError::Http { source })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClickHouseError::Http { source })?
            .to_bytes();
        self.conn = Some(conn);
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(server_error(status.as_u16(), &body))
        }
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, ClickHouseError> {
        let addr = self.endpoint.addr.clone();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| ClickHouseError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let handshake = |source| ClickHouseError::Http { source };
        match &self.tls {
            None => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(conn);
                Ok(send)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ClickHouseError::Handshake { addr, source })?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(conn);
                Ok(send)
            }
        }
    }
}

/// ClickHouse's error answer: `Code: 60, e.displayText() = DB::Exception: Table x doesn't
/// exist., e.what() = DB::Exception` (18.x) or `Code: 60. DB::Exception: ... (UNKNOWN_TABLE)`
/// (newer); the exception code also comes in the `X-ClickHouse-Exception-Code` header on newer
/// servers, but the body says it on all of them.
fn server_error(status: u16, body: &[u8]) -> ClickHouseError {
    let text = String::from_utf8_lossy(body);
    let message = text.trim().to_owned();
    let code = message.strip_prefix("Code: ").and_then(|rest| {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    });
    ClickHouseError::Server {
        status,
        code,
        message,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = |url: &str| Endpoint::parse(url, "podflow", "default", None, None).unwrap();
        assert_eq!(ok("http://127.0.0.1:8123").addr, "127.0.0.1:8123");
        assert_eq!(ok("http://ch/").addr, "ch:8123");
        assert_eq!(ok("http://[::1]:9000").addr, "[::1]:9000");
        assert_eq!(ok("http://[::1]:9000").host, "::1");
        for bad in [
            "ch:8123",
            "http://user:secret@ch:8123",
            "http://ch:8123/db",
            "http://ch:8123?x=1",
            "http://ch:port",
            "https://ch:8443",
        ] {
            assert!(
                Endpoint::parse(bad, "podflow", "default", None, None).is_err(),
                "{bad}"
            );
        }
        assert!(Endpoint::parse("http://ch", "pod-flow", "default", None, None).is_err());
        let debug = format!(
            "{:?}",
            Endpoint::parse("http://ch", "p", "u", Some("hunter2".into()), None).unwrap()
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn error_codes() {
        let old = server_error(
            500,
            b"Code: 16, e.displayText() = DB::Exception: No such column bytes in table podflow.flows, e.what() = DB::Exception\n",
        );
        assert_eq!(old.code(), Some(16));
        assert!(old.is_schema());
        assert_eq!(old.cause(), "schema");
        let new = server_error(
            507,
            b"Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
        );
        assert_eq!(new.code(), Some(243));
        assert_eq!(new.cause(), "disk_full");
        assert_eq!(server_error(502, b"Bad gateway").code(), None);
        // 18.16 on a full disk: an errno exception, not NOT_ENOUGH_SPACE.
        let full = server_error(
            500,
            b"Code: 75, e.displayText() = DB::ErrnoException: Cannot write to file /x/primary.idx, errno: 28, strerror: No space left on device, e.what() = DB::ErrnoException",
        );
        assert_eq!(full.cause(), "disk_full");
        assert_eq!(
            percent_encode("INSERT INTO t FORMAT RowBinary"),
            "INSERT%20INTO%20t%20FORMAT%20RowBinary"
        );
    }
}

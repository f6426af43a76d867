//! Real ClickHouse servers (Debian's `clickhouse-server` 18.16.1) for the tests, the benchmark and
//! the demo: each one a
//! process of its own on loopback, with its own ports, config, data and logs in a temporary
//! directory; killed (and the directory removed) on drop. [`cluster2`] starts two of them that
//! share a 2-shard cluster named [`CLUSTER`]. Queries go over the HTTP interface through a small
//! HTTP/1.1 client (`Connection: close`, chunked bodies decoded).
//!
//! What ClickHouse 18.16.1 does, checked on the test machine (Debian 18.16.1+ds-7.3+b2):
//!
//! * Startup: `start()` is ready (`GET /ping` answers `Ok.`) in ~0.1 s, `cluster2()` too (both
//!   start at once), `restart()` after `kill9()` in ~0.06 s; SIGTERM: exits (status 0) in ~0.8 s
//!   when idle. Running as root is accepted.
//! * Works: `ENGINE = MergeTree PARTITION BY toYYYYMMDD(t) ORDER BY (...)`; `Nested(key String,
//!   value String)` columns, inserted and read back as the arrays `col.key` / `col.value`; `INSERT
//!   INTO t (c, ...) FORMAT RowBinary` with the query in the URL (`?query=`) and the rows in the
//!   body: String = LEB128 length + bytes, UInt64 = 8 bytes LE, DateTime = UInt32 LE seconds,
//!   Array(T) = LEB128 count + elements (a truncated body: HTTP 500, nothing inserted, code 33
//!   "Cannot read all data. Bytes read: 2. Bytes expected: 4.: (at row 3)" or code 32 "Attempt to
//!   read after eof", depending on where it is cut); `CREATE MATERIALIZED VIEW mv TO target AS
//!   SELECT ... GROUP BY ...` into a `SummingMergeTree` (one row per insert block until a merge:
//!   read with `sum()` / `GROUP BY`, or `OPTIMIZE TABLE ... FINAL`); `Distributed(podflow, default,
//!   t_local, cityHash64(a, b))` with `?insert_distributed_sync=1`: the rows land on both shards
//!   during the request, a SELECT through it sums both shards; tuple `IN`: `WHERE (a, b) IN (('x',
//!   1), ('y', 2))` (`(String, UInt32)` against literals like `('a', 1)` too); `ALTER TABLE t DROP
//!   PARTITION 20261201` (an unquoted number for a `toYYYYMMDD` key, `'20261201'` is code 53 "Type
//!   mismatch"; a missing partition is a no-op, 200); `system.parts` has `partition` (String),
//!   `table`, `active` (UInt8), `rows`, `database`; `system.columns` has `database`, `table`,
//!   `name`, `type`; `ALTER TABLE t ADD COLUMN c T`, `DROP COLUMN c`; `SELECT version()` =
//!   `18.16.1`; `FORMAT JSONEachRow` quotes UInt64 unless
//!   `?output_format_json_quote_64bit_integers=0`; credentials as `X-ClickHouse-User` /
//!   `X-ClickHouse-Key` headers, basic auth, or `?user=&password=`; users.xml is re-read while
//!   running (a user added to it works ~2 s later). The server's time zone is set to UTC; error
//!   bodies end with a newline; a SIGSTOPped server's port still accepts connections (a request
//!   then times out).
//! * Does not exist in 18.16: `ADD COLUMN IF NOT EXISTS` / `DROP COLUMN IF EXISTS` (HTTP 400, code
//!   62 "Syntax error": read `system.columns` first); `max_server_memory_usage` (unknown keys of
//!   config.xml are ignored silently; `max_memory_usage_for_all_queries` is a profile setting and
//!   is set below); the functions `currentUser()` / `user()` (code 46, HTTP 404);
//!   `X-ClickHouse-Exception-Code` / `X-ClickHouse-Summary` response headers.
//! * Errors: the body is one line `Code: N, e.displayText() = DB::Exception: MESSAGE, e.what() =
//!   DB::Exception` (see [`exception_code`]); HTTP status by code: missing table (60) 404 (also on
//!   INSERT), unknown identifier (47) / function (46) 404, missing column in an INSERT's column
//!   list (16) 500, syntax (62) 400, wrong password (193) / unknown user (192) / password required
//!   (194) 401, type mismatch (53) 500, `DROP COLUMN` of a missing column (44) 500.
//! * Disk full (data on a full tmpfs): INSERT and CREATE TABLE answer HTTP 500, code 75, `Code: 75,
//!   e.displayText() = DB::ErrnoException: Cannot write to file
//!   <path>/tmp_insert_20261201_6_6_0/primary.idx, errno: 28, strerror: No space left on device,
//!   e.what() = DB::ErrnoException`; nothing is inserted, SELECT and `/ping` still work, and
//!   inserts succeed again as soon as space is freed (no restart).
//! * A shard down: a `insert_distributed_sync=1` insert answers HTTP 500, code 210 `Connection
//!   refused (127.0.0.1:PORT): Insertion status: ...` (the local shard's part was not kept); a
//!   SELECT through the Distributed table is code 279 "All connection tries failed" unless
//!   `?skip_unavailable_shards=1`; an async insert (no `insert_distributed_sync`) answers 200 and
//!   queues the remote rows under `<path>/data/default/<dist>/default@127%2E0%2E0%2E1:PORT/`,
//!   delivered ~2 s after the shard is back.
#![expect(
    clippy::expect_used,
    reason = "servers for tests, the benchmark and the demo: a failure to set one up panics with \
              its cause (the demo uses `try_start`)"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::percent_encode;

/// Debian's server binary.
pub const SERVER: &str = "/usr/sbin/clickhouse-server";
/// The cluster [`cluster2`] defines in `<remote_servers>`: two shards, one replica each.
pub const CLUSTER: &str = "podflow";
/// How long [`ClickHouse::start`] and [`ClickHouse::restart`] wait for `/ping`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound of one HTTP request (connect, send, read to the end).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`ClickHouse::terminate`] waits after SIGTERM, and a kill for the process to go.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the server binary is installed (`cargo xtask setup` installs it).
pub fn installed() -> bool {
    Path::new(SERVER).is_file()
}

/// How to configure a server beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The data directory (`<path>`, with `<tmp_path>` inside it); created if missing. For
    /// example on a small [`Tmpfs`] to fill the disk. Default: `data/` in the server's temporary
    /// directory.
    pub data_dir: Option<PathBuf>,
    /// Raw XML put inside `<remote_servers>` (cluster definitions).
    pub remote_servers: Option<String>,
    /// Raw XML put inside `<users>` next to the password-less `default` user, e.g.
    /// `<writer><password>s3cret</password><networks><ip>127.0.0.1</ip></networks>
    /// <profile>default</profile><quota>default</quota></writer>`.
    pub extra_users: Option<String>,
    /// Raw XML put inside `<yandex>` of config.xml (e.g. `<https_port>` and `<openSSL>`).
    pub extra_config: Option<String>,
}

/// The loopback ports of one server.
#[derive(Clone, Copy, Debug)]
struct Ports {
    http: u16,
    tcp: u16,
    interserver: u16,
}

impl Ports {
    /// `n` sets of distinct free ports: every listener is held until all are chosen.
    fn pick(n: usize) -> Vec<Ports> {
        let listeners: Vec<TcpListener> = (0..n * 3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local address").port())
            .collect();
        ports
            .chunks(3)
            .map(|p| Ports {
                http: p[0],
                tcp: p[1],
                interserver: p[2],
            })
            .collect()
    }
}

/// One running `clickhouse-server` on 127.0.0.1 (as the test's user, root), with its own ports
/// and temporary directory (config.xml, users.xml, data/, logs). Fully isolated: several may run
/// at once. On drop it is killed (SIGCONT, SIGKILL, waited for) and the directory removed.
pub struct ClickHouse {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: Ports,
    data_dir: PathBuf,
    timeout: Duration,
}

/// Why a start failed: the message, and whether a port was taken meanwhile (worth a retry).
struct StartError {
    message: String,
    port_taken: bool,
}

impl ClickHouse {
    /// Starts a server with the default [`Options`] and waits (≤ [`READY_TIMEOUT`]) until it
    /// answers; panics with its log tail if it does not.
    pub fn start() -> ClickHouse {
        ClickHouse::start_with(Options::default())
    }

    /// Starts a server configured by `opts` and waits until it answers (see [`ClickHouse::start`]).
    pub fn start_with(opts: Options) -> ClickHouse {
        ClickHouse::try_start(opts).unwrap_or_else(|message| panic!("{message}"))
    }

    /// [`ClickHouse::start_with`] that says why it failed instead of panicking (for the demo).
    pub fn try_start(opts: Options) -> Result<ClickHouse, String> {
        let mut attempt = 1;
        loop {
            let ports = Ports::pick(1)[0];
            let mut ch = ClickHouse::configure(&opts, ports);
            match ch.spawn().and_then(|()| ch.wait_ready()) {
                Ok(()) => return Ok(ch),
                Err(e) if e.port_taken && attempt < 3 => attempt += 1,
                Err(e) => return Err(e.message),
            }
        }
    }

    /// Writes the configuration of a server on `ports` into a new temporary directory.
    fn configure(opts: &Options, ports: Ports) -> ClickHouse {
        let dir = tempfile::Builder::new()
            .prefix("podflow-clickhouse-")
            .tempdir()
            .expect("tempdir");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", data_dir.display()));
        let p = |path: &Path| xml_escape(&format!("{}/", path.display()));
        let log = dir.path().join("clickhouse-server.log");
        let err_log = dir.path().join("clickhouse-server.err.log");
        let users = dir.path().join("users.xml");
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{log}</log>
        <errorlog>{err_log}</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{data}</path>
    <tmp_path>{tmp}</tmp_path>
    <user_files_path>{user_files}</user_files_path>
    <format_schema_path>{format_schemas}</format_schema_path>
    <users_config>{users}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <mlock_executable>false</mlock_executable>
    <remote_servers>{remote_servers}</remote_servers>
    {extra_config}
</yandex>
"#,
            log = xml_escape(&log.display().to_string()),
            err_log = xml_escape(&err_log.display().to_string()),
            http = ports.http,
            tcp = ports.tcp,
            interserver = ports.interserver,
            data = p(&data_dir),
            tmp = p(&data_dir.join("tmp")),
            user_files = p(&dir.path().join("user_files")),
            format_schemas = p(&dir.path().join("format_schemas")),
            users = xml_escape(&users.display().to_string()),
            remote_servers = opts.remote_servers.as_deref().unwrap_or(""),
            extra_config = opts.extra_config.as_deref().unwrap_or(""),
        );
        let users_xml = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <max_memory_usage_for_all_queries>4000000000</max_memory_usage_for_all_queries>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        {extra_users}
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#,
            extra_users = opts.extra_users.as_deref().unwrap_or(""),
        );
        std::fs::write(dir.path().join("config.xml"), config).expect("writing config.xml");
        std::fs::write(&users, users_xml).expect("writing users.xml");
        ClickHouse {
            child: None,
            dir,
            ports,
            data_dir,
            timeout: HTTP_TIMEOUT,
        }
    }

    /// Runs the server on the written configuration (stdout and stderr to files).
    fn spawn(&mut self) -> Result<(), StartError> {
        assert!(self.child.is_none(), "clickhouse-server is already running");
        let out = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .expect("creating a server output file")
        };
        let child = Command::new(SERVER)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out("stdout.log"))
            .stderr(out("stderr.log"))
            .spawn()
            .map_err(|e| StartError {
                message: format!("starting {SERVER} (`cargo xtask setup` installs it): {e}"),
                port_taken: false,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/ping` answers `Ok.`, the process exits, or [`READY_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                let tail = self.log_tail(40);
                return Err(StartError {
                    port_taken: tail.contains("Address already in use"),
                    message: format!("clickhouse-server exited ({status}) while starting:\n{tail}"),
                });
            }
            if let Ok((200, body)) = self.request("GET", "/ping", &[], b"", Duration::from_secs(2))
                && body.starts_with(b"Ok.")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill_and_reap();
                return Err(StartError {
                    port_taken: false,
                    message: format!(
                        "clickhouse-server not ready after {READY_TIMEOUT:?}:\n{}",
                        self.log_tail(40)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The exit status if the process has exited (without waiting).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The HTTP interface's address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// The native protocol's port (what `<remote_servers>` and `clickhouse-client --port` use).
    pub fn tcp_port(&self) -> u16 {
        self.ports.tcp
    }

    /// The data directory (`<path>`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's process id; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("clickhouse-server is not running")
            .id()
    }

    /// Whether the process is still alive (a stopped one counts).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// The bound of each later HTTP request (default [`HTTP_TIMEOUT`]); shorter to query a
    /// stopped server.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The last `n` lines of the server's log (clickhouse-server.log), then of its stderr when
    /// that has anything (errors from before the logger is set up): for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = format!(
            "--- clickhouse-server.log ---\n{}",
            tail("clickhouse-server.log")
        );
        let stderr = tail("stderr.log");
        if !stderr.trim().is_empty() {
            out.push_str(&format!("\n--- stderr ---\n{stderr}"));
        }
        out
    }

    /// Runs `sql` (POSTed as the body); the response body. Panics, with the status, body and log
    /// tail, unless it answers 200.
    pub fn query(&self, sql: &str) -> String {
        self.query_with(&[], sql)
    }

    /// Like [`ClickHouse::query`] with settings as URL parameters, e.g.
    /// `[("insert_distributed_sync", "1")]`.
    pub fn query_with(&self, params: &[(&str, &str)], sql: &str) -> String {
        self.try_query_with(params, sql)
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}\n{}", self.log_tail(20)))
    }

    /// Runs `sql`: `Ok(body)` on 200, else `Err("HTTP <status>: <body>")` (or the transport
    /// error).
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        self.try_query_with(&[], sql)
    }

    /// Like [`ClickHouse::try_query`] with settings as URL parameters.
    pub fn try_query_with(&self, params: &[(&str, &str)], sql: &str) -> Result<String, String> {
        let (status, body) = self.post(params, sql.as_bytes())?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }

    /// Inserts `data` in `format` (e.g. `RowBinary`) into `table (columns)`: the query goes in the
    /// URL, the rows in the body. `Ok(body)` on 200, else `Err("HTTP <status>: <body>")`.
    pub fn try_insert(
        &self,
        table: &str,
        columns: &[&str],
        format: &str,
        params: &[(&str, &str)],
        data: &[u8],
    ) -> Result<String, String> {
        let sql = format!(
            "INSERT INTO {table} ({}) FORMAT {format}",
            columns.join(", ")
        );
        let mut all = vec![("query", sql.as_str())];
        all.extend_from_slice(params);
        let (status, body) = self.post(&all, data)?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }

    /// `POST /?params` with `body`: (status, body as text). `Err` only when HTTP itself fails.
    pub fn post(&self, params: &[(&str, &str)], body: &[u8]) -> Result<(u16, String), String> {
        let target = format!("/?{}", query_string(params));
        let (status, body) = self.request("POST", &target, &[], body, self.timeout)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One HTTP/1.1 request (`Connection: close`) to the server, bounded by `timeout` overall:
    /// (status, body), a chunked body decoded.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        http_request(self.http_addr(), method, target, headers, body, timeout)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        assert!(self.child.is_some(), "clickhouse-server is not running");
        self.kill_and_reap();
    }

    /// Starts the server again on the same configuration, ports and data directory and waits
    /// until it answers; first stops it (SIGTERM) if it still runs. Panics with the log tail
    /// when it does not come up.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.terminate();
        }
        self.child = None;
        if let Err(e) = self.spawn().and_then(|()| self.wait_ready()) {
            panic!("restarting clickhouse-server: {}", e.message);
        }
    }

    /// SIGSTOP, and waits (≤ 10 s) until every thread of the server is stopped: from then on it
    /// hangs (the kernel still accepts connections, nothing answers). The wait matters: kill(2)
    /// returns before the threads stop, and a request sent at once may still be answered.
    pub fn stop_signal(&self) {
        self.signal(libc::SIGSTOP);
        self.wait_threads("stopped", |state| state == 'T');
    }

    /// SIGCONT, and waits (≤ 10 s) until no thread of the server is stopped any more.
    pub fn cont_signal(&self) {
        self.signal(libc::SIGCONT);
        self.wait_threads("resumed", |state| state != 'T');
    }

    /// Waits until the state letter of every thread satisfies `ok` (see [`wait_threads`]).
    fn wait_threads(&self, what: &str, ok: impl Fn(char) -> bool) {
        wait_threads(
            self.pid(),
            &format!("clickhouse-server (pid {})", self.pid()),
            what,
            ok,
        );
    }

    /// SIGTERM, and waits (≤ 30 s, then SIGKILL and a panic) for a clean exit; its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.cont_signal();
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill_and_reap();
                panic!(
                    "clickhouse-server did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which is not reaped yet (`child` is Some), so the pid
        // cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert!(
            rc == 0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// SIGCONT then SIGKILL, and waits (bounded) for the process; never panics.
    fn kill_and_reap(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id())
            && child.try_wait().ok().flatten().is_none()
        {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "clickhouse-server (pid {}) still there {EXIT_TIMEOUT:?} after SIGKILL",
                    child.id()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Waits (≤ 10 s) until the state letter (`/proc/PID/task/TID/stat`) of every thread of `pid`
/// satisfies `ok` (`T`: stopped): a SIGSTOP or SIGCONT has taken effect once `kill` returned only
/// for the thread that took it. Panics naming `who` and `what` after 10 s.
pub fn wait_threads(pid: u32, who: &str, what: &str, ok: impl Fn(char) -> bool) {
    let all_ok = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                // The state follows the command name, which is in parentheses.
                .and_then(|stat| stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
                .is_none_or(&ok)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_ok() {
        assert!(Instant::now() < deadline, "{who} not {what} within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two servers sharing `<remote_servers>` with the cluster [`CLUSTER`]: shard 1 is the first
/// server, shard 2 the second (one replica each, 127.0.0.1 and its tcp port). Both are ready on
/// return.
pub fn cluster2() -> (ClickHouse, ClickHouse) {
    let mut attempt = 1;
    loop {
        let ports = Ports::pick(2);
        let shards: String = ports
            .iter()
            .map(|p| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>",
                    p.tcp
                )
            })
            .collect();
        let opts = Options {
            remote_servers: Some(format!("<{CLUSTER}>{shards}</{CLUSTER}>")),
            ..Options::default()
        };
        let mut a = ClickHouse::configure(&opts, ports[0]);
        let mut b = ClickHouse::configure(&opts, ports[1]);
        let started = a
            .spawn()
            .and_then(|()| b.spawn())
            .and_then(|()| a.wait_ready())
            .and_then(|()| b.wait_ready());
        match started {
            Ok(()) => return (a, b),
            Err(e) if e.port_taken && attempt < 3 => attempt += 1,
            Err(e) => panic!("{}", e.message),
        }
    }
}

/// The exception code of a ClickHouse error body (`Code: 60, e.displayText() = ...`).
pub fn exception_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `k=v&...`, percent-encoded.
fn query_string(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One HTTP/1.1 request with `Connection: close`, read to EOF within `timeout`: (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{method} {target}: no answer within {timeout:?}"))
    };
    let mut s = TcpStream::connect_timeout(&addr, left()?.min(Duration::from_secs(5)))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)
        .map_err(|e| format!("{method} {target}: sending: {e}"))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{method} {target}: no answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("{method} {target}: reading: {e}")),
        }
    }
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {target}: no end of headers in {resp:?}"))?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let raw = &resp[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {target}: bad status line in {head:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(raw).map_err(|e| format!("{method} {target}: {e}"))?
    } else {
        raw.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body (chunk extensions and trailers ignored).
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size line")?;
        let line = String::from_utf8_lossy(&raw[..eol]);
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|e| format!("chunk size {hex:?}: {e}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A tmpfs of `size_mib` MiB mounted on a temporary directory (root only), to put a server's
/// data on a disk that can be filled; unmounted (lazily) on drop. Create it before the
/// [`ClickHouse`] that uses it, so that it is dropped after.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it; panics when `mount` fails.
    pub fn mount(size_mib: u32) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("podflow-tmpfs-")
            .tempdir()
            .expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mount -t tmpfs on {} failed",
            dir.path().display()
        );
        Tmpfs { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system (a file `filler`, written until ENOSPC).
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("creating the filler");
        let block = vec![0u8; 64 * 1024];
        let mut small = false;
        loop {
            let chunk = if small { &block[..512] } else { &block[..] };
            match f.write(chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if small {
                        break;
                    }
                    small = true;
                }
                Err(e) => panic!("filling {}: {e}", self.path().display()),
            }
        }
    }

    /// Removes what [`Tmpfs::fill`] wrote.
    pub fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler");
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

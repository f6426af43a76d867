//! A real Prometheus server (Debian's `prometheus` package) scraping given targets every second,
//! optionally evaluating rule files, and a tiny client for its HTTP query API. Killed on drop.
//!
//! The targets are parameters, so the same helper can scrape a test's in-process metrics server
//! or a running `podflow agent --metrics-listen`.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use podflow_testbed::percent_encode;

/// The `prometheus` binary, or `None` when it is not installed.
pub fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// One series of a query result: its labels and value.
pub type Sample = (serde_json::Map<String, serde_json::Value>, f64);

/// A Prometheus server on a free loopback port.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// The network namespace Prometheus runs in (None: this process' own).
    netns: Option<String>,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`/metrics`) every second and evaluating `rule_files`
    /// every second, and waits (≤ 30 s) until its API answers.
    pub fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> Result<Prometheus, String> {
        Prometheus::start_in(None, targets, rule_files)
    }

    /// Like [`Prometheus::start`], inside the network namespace `netns` (to scrape an agent that
    /// runs in a node namespace); queries are made from inside it too.
    pub fn start_in(
        netns: Option<&str>,
        targets: &[SocketAddr],
        rule_files: &[&Path],
    ) -> Result<Prometheus, String> {
        let bin = prometheus_binary()
            .ok_or("prometheus is not installed (Debian package `prometheus`)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rules = rule_files
            .iter()
            .map(|r| format!("  - '{}'\n", r.display()))
            .collect::<String>();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: podflow\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{targets}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let log =
            std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting prometheus: {e}"))?;
        let mut p = Prometheus {
            child,
            addr,
            dir,
            netns: netns.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("prometheus exited ({status}): {}", p.log()));
            }
            if matches!(p.get("/-/ready"), Ok((200, _))) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!("prometheus not ready after 30 s: {}", p.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus' own log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the server: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        match &self.netns {
            Some(ns) => {
                let (addr, path) = (self.addr, path.to_string());
                podflow_testbed::run_in(ns, move || http_get(addr, &path))
                    .map_err(|e| e.to_string())?
            }
            None => http_get(self.addr, path),
        }
    }
}

/// `GET path` over HTTP/1.0: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        // HTTP/1.0: no chunked encoding, the server closes when done.
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or("malformed http response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("malformed status line")?;
        Ok((status, body.to_string()))
    }
}

impl Prometheus {
    /// An instant query: each resulting series as (labels, value).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let (status, body) =
            self.get(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        if status != 200 {
            return Err(format!("query {promql:?}: http {status}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result in {body}"))?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"].as_object().cloned().unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| format!("no value in {r}"))?;
                Ok((labels, value))
            })
            .collect()
    }

    /// Polls `promql` until `pred` holds for its result (≤ `timeout`); returns the last result.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> Result<Vec<Sample>, String> {
        let deadline = Instant::now() + timeout;
        let mut last = Err("never queried".to_string());
        while Instant::now() < deadline {
            last = self.query(promql);
            if let Ok(r) = &last
                && pred(r)
            {
                return last;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "{promql:?} did not reach the expected value within {timeout:?}; last result {last:?}; \
             targets: {:?}; prometheus log: {}",
            self.get("/api/v1/targets").map(|(_, b)| b),
            self.log()
        ))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

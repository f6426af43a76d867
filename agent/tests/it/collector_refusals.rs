//! The collector says every refusal (issue 17 item 7): the real `podflow collector` with mutual
//! TLS on loopback, and clients that get it wrong — random bytes, an HTTP/1 request, a plaintext
//! gRPC client, no client certificate, a certificate from another CA, a client that does not
//! trust the collector, a client that sends nothing. Each is logged with the peer address and the
//! reason (once per peer and reason: the same mistake twice is one line), counted by reason in
//! the metrics; a connect-and-close health check is neither. And `podflow tail` reads the
//! collector over mutual TLS.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::support::{
    BIN,
    export::{ChildCollector, fast_config, flow, free_port, wait_stats},
    pki::pki,
    prometheus::http_get,
};
use podflow::export::{self, TlsClientConfig};

fn tail(port: u16, tls: &[&std::path::Path]) -> Output {
    let flags = ["--tls-ca", "--tls-cert", "--tls-key"];
    let mut cmd = Command::new(BIN);
    cmd.args(["tail", "-o", "json", "--server"])
        .arg(format!("https://127.0.0.1:{port}"));
    for (flag, path) in flags.iter().zip(tls) {
        cmd.arg(flag).arg(path);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The value of `podflow_collector_refused_connections_total{reason="…"}`.
fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("podflow_collector_refused_connections_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_refusal_is_logged_with_the_peer_and_counted() {
    let pki = pki();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let (cert, key, ca) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let collector = ChildCollector::start_logged(
        port,
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
            "--metrics-listen",
            &metrics_addr.to_string(),
        ],
        log.reopen().unwrap(),
    );

    // A client that says nothing: refused when the admission time is up (10 s), meanwhile the
    // others run.
    let silent = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = raw(port, b"");
        (started.elapsed(), answer)
    });
    // A health check: connect and close.
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());

    // Random bytes, twice from the same address: one log line, two counts.
    let garbage = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03];
    assert_eq!(raw(port, &garbage), "");
    assert_eq!(raw(port, &garbage), "");
    // HTTP/1 on the TLS port: answered with one line, then closed.
    let answer = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("gRPC over TLS only"),
        "{answer:?}"
    );
    // A plaintext gRPC client (HTTP/2 preface without TLS).
    let plain = raw(
        port,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    );
    assert_eq!(plain, "");
    // TLS without a client certificate, with one from another CA, and not trusting the collector.
    let no_cert = tail(port, &[&pki.ca]);
    let stranger = tail(
        port,
        &[&pki.ca, &pki.other_client_cert, &pki.other_client_key],
    );
    let distrust = tail(port, &[&pki.other_ca, &pki.client_cert, &pki.client_key]);
    for (what, out) in [
        ("no client certificate", &no_cert),
        ("a stranger's certificate", &stranger),
        ("distrust", &distrust),
    ] {
        assert!(!out.status.success(), "{what}: tail succeeded");
        println!(
            "tail with {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    assert!(
        String::from_utf8_lossy(&distrust.stderr).contains("UnknownIssuer"),
        "{}",
        String::from_utf8_lossy(&distrust.stderr)
    );
    // Refused after the handshake: tail says what that means (the alert may be lost).
    for out in [&no_cert, &stranger] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("CertificateRequired") || err.contains("refuses a client certificate"),
            "{err}"
        );
    }

    // The right certificate works: records exported over mutual TLS are read back by tail.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = fast_config(&format!("127.0.0.1:{port}"), "node-tls");
        cfg.tls = Some(TlsClientConfig {
            ca: pki.ca.clone(),
            cert: Some(pki.client_cert.clone()),
            key: Some(pki.client_key.clone()),
            domain: None,
        });
        let exporter = export::spawn(cfg).unwrap();
        exporter.send((0..5).map(|i| flow(i, "node-tls")).collect());
        wait_stats(&exporter, Duration::from_secs(30), "acked", |s| {
            s.acked_records == 5
        })
        .await;
        exporter.shutdown(Duration::from_secs(5)).await;
    });
    let ok = tail(port, &[&pki.ca, &pki.client_cert, &pki.client_key]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let lines = String::from_utf8_lossy(&ok.stdout)
        .lines()
        .filter(|l| l.contains("node-tls"))
        .count();
    assert_eq!(lines, 5, "{}", String::from_utf8_lossy(&ok.stdout));

    let (waited, answer) = silent.join().unwrap();
    assert_eq!(answer, "");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "{waited:?}"
    );

    let (status, metrics) = http_get(metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let want = [
        ("not_grpc", 2),
        ("http1", 1),
        ("plaintext_on_tls", 1),
        ("tls_on_plaintext", 0),
        ("no_client_certificate", 1),
        ("untrusted_client_certificate", 1),
        ("server_certificate_refused", 1),
        ("tls_handshake", 0),
        ("timeout", 1),
    ];
    let got: Vec<_> = want
        .iter()
        .map(|(reason, _)| (*reason, refused(&metrics, reason)))
        .collect();
    println!("{got:?}");
    for ((reason, want), (_, got)) in want.iter().zip(&got) {
        // tail's channel may reconnect a few times after a refusal that comes once the client's
        // side of the TLS handshake is done (mutual TLS, TLS 1.3): at least one, then.
        let after_handshake = matches!(
            *reason,
            "no_client_certificate" | "untrusted_client_certificate"
        );
        if after_handshake {
            assert!(*got >= *want, "{reason}: {got:?}");
        } else {
            assert_eq!(got, want, "{reason}: {got:?}");
        }
    }

    drop(collector);
    let text = std::fs::read_to_string(log.path()).unwrap();
    let refusal_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("collector refused a connection"))
        .collect();
    for line in &refusal_lines {
        println!("{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    }
    for (reason, count) in want {
        let lines = refusal_lines
            .iter()
            .filter(|l| l.contains(&format!("reason={reason} ")))
            .count();
        // Once per peer and reason: the second garbage connection is counted, not logged.
        assert_eq!(
            lines,
            usize::from(count > 0),
            "{reason}: {refusal_lines:#?}"
        );
    }
    let detail = |reason: &str| {
        refusal_lines
            .iter()
            .find(|l| l.contains(&format!("reason={reason} ")))
            .unwrap()
            .to_string()
    };
    assert!(detail("not_grpc").contains("deadbeef"));
    assert!(detail("http1").contains("GET /metrics HTTP/1.1"));
    assert!(detail("untrusted_client_certificate").contains("UnknownIssuer"));
}

#[test]
fn tail_says_what_its_tls_options_need() {
    let pki = pki();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("tail").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ca = pki.ca.to_str().unwrap();
    let port = free_port().to_string();
    let https = format!("https://127.0.0.1:{port}");
    let http = format!("http://127.0.0.1:{port}");
    assert!(run(&["--server", &https]).contains("--tls-ca"));
    assert!(run(&["--server", &http, "--tls-ca", ca]).contains("plaintext"));
    assert!(run(&["--server", "/run/x.sock", "--tls-ca", ca]).contains("unix socket"));
    // A client certificate needs its key (and a CA).
    assert!(run(&["--server", &https, "--tls-ca", ca, "--tls-cert", ca]).contains("--tls-key"));
}

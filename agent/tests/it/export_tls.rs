//! TLS between exporter and collector over loopback: server verification, mutual TLS, the
//! clear errors of the wrong setups, and certificate files picked up again when they change.
use std::{path::Path, time::Duration};

use crate::support::{
    export::*,
    pki::{Pki, leaf, pki, write},
};
use podflow::export::{self, ExporterConfig, TlsClientConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn tls_collector(pki: &Pki, mtls: bool) -> InProcess {
    let mut args = loopback_args();
    args.tls_cert = Some(pki.server_cert.clone());
    args.tls_key = Some(pki.server_key.clone());
    args.tls_client_ca = mtls.then(|| pki.ca.clone());
    InProcess::start(args).await
}

fn tls_exporter(collector: &InProcess, tls: Option<TlsClientConfig>) -> ExporterConfig {
    let mut cfg = fast_config(&format!("127.0.0.1:{}", collector.addr.port()), "node-a");
    cfg.tls = tls;
    cfg
}

fn client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsClientConfig {
    TlsClientConfig {
        ca: ca.to_path_buf(),
        cert: identity.map(|(c, _)| c.to_path_buf()),
        key: identity.map(|(_, k)| k.to_path_buf()),
        domain: None,
    }
}

/// Sends 10 records and expects them refused: never acknowledged, with `needle` in the error.
async fn assert_rejected(cfg: ExporterConfig, needle: &[&str]) -> String {
    let exporter = export::spawn(cfg).unwrap();
    exporter.send((0..10).map(|i| flow(i, "node-a")).collect());
    let stats = wait_stats(&exporter, TIMEOUT, "a failure", |s| s.failures >= 2).await;
    assert_eq!(stats.acked_records, 0, "{stats:#?}");
    let error = stats.last_error.clone().unwrap();
    assert!(
        needle
            .iter()
            .any(|n| error.to_lowercase().contains(&n.to_lowercase())),
        "error {error:?} does not mention any of {needle:?}"
    );
    exporter.shutdown(Duration::from_millis(100)).await;
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let pki = pki();

    // Server verification.
    let collector = tls_collector(&pki, false).await;
    let exporter =
        export::spawn(tls_exporter(&collector, Some(client_tls(&pki.ca, None)))).unwrap();
    exporter.send((0..10).map(|i| flow(i, "node-a")).collect());
    wait_stats(&exporter, TIMEOUT, "acked over tls", |s| {
        s.acked_records == 10
    })
    .await;
    exporter.shutdown(Duration::from_secs(5)).await;

    // Plaintext client to the TLS server (allowed on loopback, refused by the server).
    let error = assert_rejected(
        tls_exporter(&collector, None),
        &[
            "connection",
            "transport",
            "frame",
            "http2",
            "closed",
            "h2",
            "protocol",
        ],
    )
    .await;
    println!("plaintext to tls: {error}");

    // Wrong CA.
    let error = assert_rejected(
        tls_exporter(&collector, Some(client_tls(&pki.other_ca, None))),
        &["UnknownIssuer", "certificate"],
    )
    .await;
    println!("wrong ca: {error}");
    collector.stop().await;

    // Mutual TLS: no client certificate is refused, the CA's client certificate accepted.
    let collector = tls_collector(&pki, true).await;
    let error = assert_rejected(
        tls_exporter(&collector, Some(client_tls(&pki.ca, None))),
        &["certificate", "handshake", "closed", "tls", "connection"],
    )
    .await;
    println!("mtls without client cert: {error}");
    let exporter = export::spawn(tls_exporter(
        &collector,
        Some(client_tls(
            &pki.ca,
            Some((&pki.client_cert, &pki.client_key)),
        )),
    ))
    .unwrap();
    exporter.send((0..10).map(|i| flow(i, "node-a")).collect());
    wait_stats(&exporter, TIMEOUT, "acked over mtls", |s| {
        s.acked_records == 10
    })
    .await;
    exporter.shutdown(Duration::from_secs(5)).await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_picked_up() {
    let pki = pki();
    let collector = tls_collector(&pki, true).await;
    // The exporter starts with a CA file that holds the wrong CA: refused...
    let ca_file = write(
        pki.dir.path(),
        "rotating-ca.pem",
        &std::fs::read_to_string(&pki.other_ca).unwrap(),
    );
    let cert_file = write(
        pki.dir.path(),
        "rotating.pem",
        &std::fs::read_to_string(&pki.client_cert).unwrap(),
    );
    let key_file = write(
        pki.dir.path(),
        "rotating.key",
        &std::fs::read_to_string(&pki.client_key).unwrap(),
    );
    let exporter = export::spawn(tls_exporter(
        &collector,
        Some(client_tls(&ca_file, Some((&cert_file, &key_file)))),
    ))
    .unwrap();
    exporter.send((0..10).map(|i| flow(i, "node-a")).collect());
    wait_stats(&exporter, TIMEOUT, "refused", |s| s.failures >= 1).await;
    assert_eq!(exporter.stats().acked_records, 0);
    // ... until the file is replaced: read again on the next attempt.
    std::fs::write(&ca_file, std::fs::read_to_string(&pki.ca).unwrap()).unwrap();
    let stats = wait_stats(&exporter, TIMEOUT, "acked after the CA fix", |s| {
        s.acked_records == 10
    })
    .await;
    assert_eq!(stats.connections, 1);

    // A new client certificate while connected: the change is noticed and the exporter
    // reconnects with it (the files are written one after the other, so an attempt may read a
    // mismatched pair once and retry).
    let (new_cert, new_key) = leaf(&pki.ca_obj, "agent-rotated");
    std::fs::write(&key_file, new_key).unwrap();
    std::fs::write(&cert_file, new_cert).unwrap();
    let stats = wait_stats(&exporter, TIMEOUT, "reconnected", |s| {
        s.connections >= 2 && s.connected
    })
    .await;
    exporter.send((10..20).map(|i| flow(i, "node-a")).collect());
    let stats2 = wait_stats(&exporter, TIMEOUT, "acked after rotation", |s| {
        s.acked_records == 20
    })
    .await;
    assert!(stats2.connections >= 2, "{stats:#?} {stats2:#?}");
    exporter.shutdown(Duration::from_secs(5)).await;
    collector.stop().await;
}

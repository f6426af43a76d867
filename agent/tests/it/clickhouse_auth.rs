//! The collector and `podflow query` log in to ClickHouse as a user with a password read from a
//! file (never a flag value or the URL) and over TLS verified with a given CA; a wrong password
//! or an unknown CA fails naming the cause.
use std::time::Duration;

use podflow::export;

use crate::{
    clickhouse_store::{available, designed},
    support::{
        clickhouse::{ClickHouse, Options},
        export::{ChildCollector, fast_config, free_port, wait_stats},
        pki::{pki, write},
    },
};

fn podflow_query(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_podflow"))
        .arg("query")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_password_from_a_file() {
    if !available() {
        return;
    }
    let pki = pki();
    let https = free_port();
    let server = ClickHouse::start_with(Options {
        extra_users: Some(
            "<writer><password>s3cret</password><networks><ip>127.0.0.1</ip></networks>\
             <profile>default</profile><quota>default</quota></writer>"
                .into(),
        ),
        extra_config: Some(format!(
            "<https_port>{https}</https_port><openSSL><server>\
             <certificateFile>{}</certificateFile><privateKeyFile>{}</privateKeyFile>\
             <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>\
             <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols>\
             <preferServerCiphers>true</preferServerCiphers></server></openSSL>",
            pki.server_cert.display(),
            pki.server_key.display()
        )),
        ..Options::default()
    });
    let url = format!("https://127.0.0.1:{https}");
    let ca = pki.ca.to_str().unwrap().to_owned();
    let password = write(pki.dir.path(), "password", "s3cret\n");
    let wrong = write(pki.dir.path(), "wrong", "guess\n");

    // Credentials in the URL are refused (they would show in `ps`).
    let out = podflow_query(
        &["losses", "--clickhouse", "http://writer:s3cret@127.0.0.1:1"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials in the URL"));
    // A wrong password: refused, with ClickHouse's code.
    let out = podflow_query(
        &[
            "losses",
            "--clickhouse",
            &url,
            "--clickhouse-ca",
            &ca,
            "--clickhouse-user",
            "writer",
            "--clickhouse-password-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("HTTP 401") && stderr.contains("Code: 193"),
        "{stderr}"
    );
    // A CA that did not sign the server's certificate: the TLS handshake fails, named.
    let out = podflow_query(
        &[
            "losses",
            "--clickhouse",
            &url,
            "--clickhouse-ca",
            pki.other_ca.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("TLS handshake"),
        "{stderr}"
    );

    // The collector stores over TLS as `writer`.
    let port = free_port();
    let _collector = ChildCollector::start(
        port,
        &[
            "--clickhouse",
            &url,
            "--clickhouse-ca",
            &ca,
            "--clickhouse-user",
            "writer",
            "--clickhouse-password-file",
            password.to_str().unwrap(),
            "--clickhouse-linger",
            "20ms",
        ],
    );
    let (a, _) = designed(1_800_000_000);
    let n = a.len() as u64;
    let exporter = export::spawn(fast_config(&format!("127.0.0.1:{port}"), "node-a")).unwrap();
    exporter.send(a);
    wait_stats(&exporter, Duration::from_secs(30), "acks", |s| {
        s.acked_records == n
    })
    .await;
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        server.query("SELECT count() FROM podflow.flows").trim(),
        "5"
    );
    // `podflow query` with the password from the environment.
    let out = podflow_query(
        &[
            "losses",
            "--clickhouse",
            &url,
            "--clickhouse-ca",
            &ca,
            "--clickhouse-user",
            "writer",
            "--from",
            "2027-01-15T07:00:00Z",
            "--to",
            "2027-01-15T09:00:00Z",
            "-o",
            "json",
        ],
        &[("PODFLOW_CLICKHOUSE_PASSWORD", "s3cret")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"node":"node-a","reason":"lost_map_full","unit":"packets","count":5,"records":1}"#
    );
}

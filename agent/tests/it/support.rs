//! Helpers shared by the integration tests; the network namespaces themselves come from
//! [`podflow_testbed`], here are the test-only parts on top of it.
//!
//! * [`privileged`]: the gate every privileged test calls first; [`wait_until`]: a bounded
//!   async wait.
//! * [`agent`]: a running `podflow agent` inside a node namespace, read back through `podflow tail`.
//! * [`capture`]: an in-process `Capture` on a thread of a node namespace, and what the kernel has
//!   attached.
//! * [`packets`]: flow keys and crafted packets.
//! * [`export`]: known flow records, collectors in and out of process, their files.
//! * [`prometheus`]: a real Prometheus server scraping the tests' targets.
//! * [`clickhouse`]: real ClickHouse servers (one, or a 2-shard cluster) with their own ports and
//!   directories.
//! * [`pki`]: CAs and certificates for the TLS tests.
//! * [`kube_mock`]: a loopback Kubernetes API server (list/watch).
//! * [`wireguard`]: two node namespaces joined by an underlay and a WireGuard tunnel, with pods.
pub mod agent;
pub mod capture;
pub mod clickhouse;
pub mod export;
pub mod kube_mock;
pub mod packets;
pub mod pki;
pub mod prometheus;
pub mod udp;
pub mod wireguard;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// The `podflow` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_podflow");

/// This test binary, to run one of its tests in a child process (with [`one_test`]).
pub fn this_binary() -> PathBuf {
    std::env::current_exe().expect("the test binary")
}

/// The arguments that run exactly the test `path` (`module::name`) of [`this_binary`], alone and
/// with its output: for a test that needs a process of its own (a SIGKILL, a capability set,
/// per-process fd counts).
pub fn one_test(path: &str) -> [&str; 4] {
    ["--exact", path, "--nocapture", "--test-threads=1"]
}

/// Loads the nftables `rules` (`nft -f -`) in the network namespace `ns`; panics if nft refuses.
pub fn nft(ns: &podflow_testbed::Netns, rules: &str) {
    let mut nft = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(nft.stdin.as_mut().expect("stdin"), rules.as_bytes()).expect("rules");
    drop(nft.stdin.take());
    assert!(nft.wait().expect("nft").success(), "nft refused:\n{rules}");
}

/// Whether a privileged test may run ([`podflow_testbed::privileged`]); panics when it may not
/// be skipped.
pub fn privileged() -> bool {
    podflow_testbed::privileged().unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (polling every 20 ms) until `cond` holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

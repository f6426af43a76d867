//! End-to-end TCP handshake latency: two pods, real TCP connections, the real agent. One server
//! port drops the first SYN (an nftables quota in the server pod's own namespace), so the client
//! retransmits it after its initial timeout (1 s): the handshake the client saw lasts ~1 s and the
//! record says so; the other port answers at once. `tail --min-rtt` selects by it. Privileged.
use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::Value;

use crate::support::{
    agent::{Agent, tail},
    nft, privileged,
};

const FAST: u16 = 9000;
const SLOW: u16 = 9001;
/// An echo server: 20 round trips, each socket's smoothed RTT sampled (`--tcp-rtt`).
const ECHO: u16 = 9002;

fn handshake(records: &[Value], port: u16) -> Option<Value> {
    records
        .iter()
        .find(|r| r["dst_port"] == port && r["tcp_handshake"].is_object())
        .map(|r| r["tcp_handshake"].clone())
}

#[test]
fn the_clients_record_carries_its_handshakes_a_retransmitted_syn_included() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("h");
    let mut node = Node::new(&p, 74).expect("node");
    let (vc, vs) = (format!("veth{p}c"), format!("veth{p}s"));
    node.add_pod("client", &vc).expect("client");
    node.add_pod("server", &vs).expect("server");
    let server = node.pod("server").unwrap().ipv4;
    let server_ns = &node.pod("server").unwrap().ns;
    // The first SYN to SLOW is dropped (60 bytes counted against a 100-byte quota); the
    // retransmission passes.
    let rules = format!(
        "table inet hs {{\n chain input {{\n  type filter hook input priority 0;\n  \
         tcp dport {SLOW} tcp flags syn quota until 100 bytes drop\n }}\n}}\n"
    );
    nft(server_ns, &rules);
    // Listeners: each accepts one connection and reads it to the end.
    let listeners: Vec<_> = [FAST, SLOW]
        .into_iter()
        .map(|port| {
            server_ns
                .spawn(move || {
                    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
                    l.set_nonblocking(false).expect("blocking");
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                })
                .expect("listener thread")
        })
        .collect();
    let echo = server_ns
        .spawn(move || {
            let l = TcpListener::bind(("0.0.0.0", ECHO)).expect("bind echo");
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 100];
                for _ in 0..20 {
                    if s.read_exact(&mut buf).is_err()
                        || std::io::Write::write_all(&mut s, &buf).is_err()
                    {
                        break;
                    }
                }
            }
        })
        .expect("echo thread");
    let agent = Agent::start(&node, &["--tcp-rtt"]);
    agent.wait_attached(&[&vc, &vs], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    node.pod("client")
        .unwrap()
        .ns
        .run(move || {
            for port in [FAST, SLOW] {
                let to = SocketAddr::from((server, port));
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
                drop(s);
            }
            let to = SocketAddr::from((server, ECHO));
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [7u8; 100];
            for _ in 0..20 {
                std::io::Write::write_all(&mut s, &buf).expect("write");
                s.read_exact(&mut buf).expect("read");
            }
        })
        .expect("client thread");
    for l in listeners {
        l.join().expect("listener");
    }
    echo.join().expect("echo");

    let mut records = Vec::new();
    let found = wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        records = agent.flows(&[]);
        (handshake(&records, FAST).is_some() && handshake(&records, SLOW).is_some()).then_some(())
    });
    assert!(found.is_some(), "handshakes missing: {records:#?}");
    let fast = handshake(&records, FAST).unwrap();
    let slow = handshake(&records, SLOW).unwrap();
    assert_eq!(fast["count"], 1);
    let fast_ms = fast["last_ms"].as_f64().unwrap();
    assert!(fast_ms > 0.0 && fast_ms < 200.0, "{fast}");
    // From the first SYN: the retransmission timeout (1 s) plus a round trip.
    let slow_ms = slow["last_ms"].as_f64().unwrap();
    assert!((900.0..3500.0).contains(&slow_ms), "{slow}");
    assert_eq!(slow["min_ms"], slow["last_ms"]);
    // Only on the client's record (client -> server), never the server's.
    assert!(
        records
            .iter()
            .filter(|r| r["src_port"] == FAST || r["src_port"] == SLOW)
            .all(|r| r["tcp_handshake"].is_null())
    );

    let slow_only = tail(&agent.sock, &["--min-rtt", "500ms"]);
    assert!(!slow_only.is_empty());
    assert!(
        slow_only.iter().all(|r| r["dst_port"] == SLOW),
        "{slow_only:#?}"
    );
    assert!(tail(&agent.sock, &["--min-rtt", "1h"]).is_empty());
    let compact = std::process::Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args(["tail", "-o", "compact", "--min-rtt", "500ms", "--server"])
        .arg(&agent.sock)
        .output()
        .expect("tail");
    let text = String::from_utf8_lossy(&compact.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!(":{SLOW}")))
        .unwrap_or_default();
    let shown: f64 = line
        .split("handshake ")
        .nth(1)
        .and_then(|s| s.split("ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no handshake in {text}"));
    assert!((shown - slow_ms).abs() < 0.01, "{line}");
    assert!(agent.counter("tcp_handshakes_timed") >= 2);

    // The smoothed RTT of both sockets of the echo connection, each on its outgoing flow.
    let srtt = |pick: &dyn Fn(&Value) -> bool| -> Option<Value> {
        agent
            .flows(&[])
            .into_iter()
            .filter(|r| pick(r) && r["tcp_srtt"].is_object())
            .map(|r| r["tcp_srtt"].clone())
            .next()
    };
    let mut both = None;
    let _ = wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        both = srtt(&|r| r["dst_port"] == ECHO).zip(srtt(&|r| r["src_port"] == ECHO));
        both.as_ref().map(|_| ())
    });
    let (client_side, server_side) = both.expect("tcp_srtt on both records of the echo connection");
    for s in [&client_side, &server_side] {
        assert!(s["samples"].as_u64() >= Some(5), "{s}");
        let last = s["last_ms"].as_f64().unwrap();
        assert!(last > 0.0 && last < 200.0, "{s}");
        assert!(s["min_ms"].as_f64() <= s["max_ms"].as_f64(), "{s}");
    }
    assert!(agent.counter("tcp_srtt_samples_attached") >= 10);
    assert_eq!(agent.counter("tcp_handshake_segments_lost"), 0);
}

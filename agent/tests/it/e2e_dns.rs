//! End-to-end DNS: a real DNS server (Debian's dnsmasq) in a pod namespace, a real client
//! (`dig`) in another, the real agent in the node namespace. The records of the exchanges carry
//! the query (name, type) on the client's flow and the response (code, answers, latency) on the
//! server's; a malformed message is marked and its packet counted as any; `tail --dns-name`
//! selects by name; the status and the metrics count by response code. Privileged (root).
use std::{
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::Duration,
};

use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::Value;

use crate::support::{
    agent::{Agent, tail},
    privileged,
    prometheus::http_get,
};

/// dnsmasq, killed on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn available() -> bool {
    let installed = ["dnsmasq", "dig"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        installed,
        "dnsmasq or dig is not installed: run `cargo xtask setup`"
    );
    installed
}

fn dig(node: &Node, server: &str, args: &[&str]) -> String {
    let out = node
        .pod("client")
        .expect("client")
        .ns
        .command("dig")
        .args([&format!("@{server}"), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DNS messages of the records from `src` to `dst` (addresses as text).
fn messages(records: &[Value], src: &str, dst: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["src_ip"] == src && r["dst_ip"] == dst)
        .flat_map(|r| r["dns"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn queries_responses_latency_and_malformed_messages_on_the_records() {
    if !privileged() || !available() {
        return;
    }
    let p = unique_prefix("d");
    let mut node = Node::new(&p, 73).expect("node");
    let (vc, vd) = (format!("veth{p}c"), format!("veth{p}d"));
    node.add_pod("client", &vc).expect("client");
    node.add_pod("dns", &vd).expect("dns");
    let (client, server) = (
        node.pod("client").unwrap().ipv4.to_string(),
        node.pod("dns").unwrap().ipv4.to_string(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Answers db.shop.test with one A record; every other name under test. does not exist.
    let _dnsmasq = Dnsmasq(
        node.pod("dns")
            .unwrap()
            .ns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                &format!("--listen-address={server}"),
                "--address=/db.shop.test/10.9.9.9",
                "--local=/test/",
                "--log-facility=-",
            ])
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let metrics: SocketAddr = "127.0.0.1:9465".parse().unwrap();
    let agent = Agent::start(&node, &["--metrics-listen", &metrics.to_string()]);
    agent.wait_attached(&[&vc, &vd], Duration::from_secs(10));
    // dnsmasq answers once it listens.
    let up = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        dig(&node, &server, &["db.shop.test", "+short"])
            .contains("10.9.9.9")
            .then_some(())
    });
    assert!(up.is_some(), "dnsmasq did not answer");

    // The exchanges the test checks, from fixed source ports (one flow each).
    let answered = dig(
        &node,
        &server,
        &["-b", &format!("{client}#40001"), "db.shop.test", "A"],
    );
    assert!(answered.contains("10.9.9.9"), "{answered}");
    let missing = dig(
        &node,
        &server,
        &["-b", &format!("{client}#40002"), "nope.test", "AAAA"],
    );
    assert!(missing.contains("NXDOMAIN"), "{missing}");
    let over_tcp = dig(&node, &server, &["+tcp", "db.shop.test", "A"]);
    assert!(over_tcp.contains("10.9.9.9"), "{over_tcp}");
    // A message that lies: its question's name is a compression pointer to itself. dnsmasq
    // answers FORMERR or nothing; the agent marks it malformed and counts its packet.
    let bogus = [
        0x13, 0x37, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    node.pod("client")
        .unwrap()
        .ns
        .run({
            let to: SocketAddr = format!("{server}:53").parse().unwrap();
            move || {
                let s = UdpSocket::bind("0.0.0.0:40003").expect("bind");
                s.send_to(&bogus, to).expect("send");
            }
        })
        .expect("client thread");

    let mut records = Vec::new();
    let found = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        records = agent.flows(&[]);
        let responses = messages(&records, &server, &client);
        (responses.iter().filter(|m| m["rcode"].is_string()).count() >= 3
            && records
                .iter()
                .any(|r| r["src_port"] == 40003 && r["dns"].is_array()))
        .then_some(())
    });
    assert!(found.is_some(), "DNS records missing: {records:#?}");

    // The client's A query and the server's answer, with its latency.
    let q = messages(&records, &client, &server);
    let a_query = q
        .iter()
        .find(|m| m["qname"] == "db.shop.test" && m["qtype"] == "A" && m["tcp"].is_null())
        .unwrap_or_else(|| panic!("no A query in {q:#?}"));
    assert_eq!(a_query["response"], false);
    assert!(a_query["rcode"].is_null() && a_query["latency_ms"].is_null());
    let r = messages(&records, &server, &client);
    let answer = r
        .iter()
        .find(|m| m["qname"] == "db.shop.test" && m["tcp"].is_null())
        .unwrap_or_else(|| panic!("no A response in {r:#?}"));
    assert_eq!(answer["rcode"], "NOERROR");
    assert_eq!(answer["answers"], 1);
    assert_eq!(answer["id"], a_query["id"]);
    let latency = answer["latency_ms"].as_f64().expect("latency");
    assert!(latency > 0.0 && latency < 3000.0, "{latency}");
    // NXDOMAIN for AAAA, on the flow from port 40002.
    let nx = records
        .iter()
        .filter(|r| r["dst_port"] == 40002)
        .flat_map(|r| r["dns"].as_array().cloned().unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        nx.iter()
            .any(|m| m["rcode"] == "NXDOMAIN" && m["qtype"] == "AAAA" && m["qname"] == "nope.test"),
        "{nx:#?}"
    );
    // Over TCP: marked so, paired too.
    assert!(
        r.iter()
            .any(|m| m["tcp"] == true && m["rcode"] == "NOERROR" && m["latency_ms"].is_f64()),
        "{r:#?}"
    );
    // The malformed message: marked, nothing read from it, its one packet counted.
    let bogus_rec = records
        .iter()
        .find(|r| r["src_port"] == 40003 && r["dst_port"] == 53)
        .expect("record of the malformed message");
    assert_eq!(bogus_rec["packets"], 1);
    assert_eq!(bogus_rec["bytes"], 20 + 8 + bogus.len());
    let m = &bogus_rec["dns"][0];
    assert_eq!(
        (m["malformed"].clone(), m["id"].clone()),
        (Value::Bool(true), Value::from(0x1337))
    );
    assert!(m["qname"] == "");

    // tail --dns-name: the flows with messages about that name (or names under it) only.
    let by_name = tail(&agent.sock, &["--dns-name", "nope.test"]);
    assert!(!by_name.is_empty());
    assert!(by_name.iter().all(|r| {
        r["dns"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["qname"] == "nope.test"))
    }));
    let under = tail(&agent.sock, &["--dns-name", "shop.test"]);
    assert!(
        under
            .iter()
            .all(|r| r["dns"].to_string().contains("db.shop.test"))
    );
    assert!(under.len() >= 4, "{under:#?}");
    // Compact lines say it too.
    let compact = std::process::Command::new(env!("CARGO_BIN_EXE_podflow"))
        .args([
            "tail",
            "-o",
            "compact",
            "--dns-name",
            "nope.test",
            "--server",
        ])
        .arg(&agent.sock)
        .output()
        .expect("tail");
    let text = String::from_utf8_lossy(&compact.stdout);
    assert!(
        text.contains("dns AAAA nope.test NXDOMAIN 0 answers"),
        "{text}"
    );
    assert!(text.contains("dns? AAAA nope.test"), "{text}");

    // Counted: in the status, and in the metrics by response code.
    assert!(agent.counter("dns_messages") >= 7);
    // The bogus query, and dnsmasq's answer if it echoes the bogus question: each on a record.
    let malformed_on_records = agent
        .flows(&[])
        .iter()
        .flat_map(|r| r["dns"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["malformed"] == true)
        .count() as u64;
    assert!(malformed_on_records >= 1);
    assert_eq!(agent.counter("dns_malformed"), malformed_on_records);
    assert!(agent.counter("dns_matched") >= 3);
    assert_eq!(agent.counter("dns_lost"), 0);
    let (status, body) =
        podflow_testbed::run_in(node.ns.name(), move || http_get(metrics, "/metrics"))
            .expect("netns")
            .expect("metrics");
    assert_eq!(status, 200);
    let nxdomain = body
        .lines()
        .find(|l| l.starts_with("podflow_dns_responses_total{rcode=\"NXDOMAIN\"}"))
        .unwrap_or_else(|| panic!("no NXDOMAIN series in\n{body}"));
    assert!(!nxdomain.ends_with(" 0"), "{nxdomain}");
    assert!(
        body.contains(&format!(
            "podflow_dns_messages_total{{kind=\"malformed\"}} {malformed_on_records}"
        )),
        "{body}"
    );
}

//! End-to-end: Service traffic through NAT shaped like kube-proxy's (iptables mode, nftables
//! mode) in the node namespace, with a local and a remote backend picked at random, the real
//! agent following the node's conntrack. Records name the backend pod and the Service, keep
//! same-node traffic same-node, count every packet once, attribute a burst of one-packet flows,
//! and say what was masqueraded (NodePort, hairpin, pod → outside). Privileged (root).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use podflow_testbed::{
    GATEWAY_V4, Netns, Node,
    kube_proxy::{self, Mode, ServiceRule},
    link, outside_host, unique_prefix, wait_for,
};
use serde_json::{Value, json};

use crate::support::{
    agent::{Agent, tail},
    privileged,
    udp::{self, Servers, udp_flows, udp_flows_from},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_ALT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const NODE_PORT: u16 = 30080;
const ECHO: u16 = 8080;
const SINK: u16 = 8081;
/// UDP payload of every datagram: 40-byte IP packets.
/// Bytes of an IP packet of [`udp::PAYLOAD`]: 20 (IPv4) + 8 (UDP) + 12.
const PACKET_BYTES: u64 = 40;

/// Two nodes (`node-a` with a client pod and a `web` backend, `node-b` with another `web`
/// backend) joined by an underlay, a host outside the cluster linked to node-a, the metadata
/// file naming them, and the agent on node-a.
struct Cluster {
    node: Node,
    remote: Node,
    outside: Netns,
    /// node-a's address towards the outside host, and the outside host's.
    node_ext: Ipv4Addr,
    ext: Ipv4Addr,
    veth_client: String,
    veth_web: String,
    _dir: tempfile::TempDir,
    agent: Agent,
}

impl Cluster {
    fn ip(&self, pod: &str) -> Ipv4Addr {
        self.node.pod(pod).expect("pod").ipv4
    }

    fn remote_web(&self) -> Ipv4Addr {
        self.remote.pod("web").expect("pod").ipv4
    }
}

fn pod_json(name: &str, ip: Ipv4Addr, node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "labels": {"app": app, "pod-template-hash": "5d4f"}, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": format!("{app}-5d4f"), "uid": format!("rs-{app}"), "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                 "ports": [{"name": "echo", "containerPort": ECHO, "protocol": "UDP"},
                           {"name": "sink", "containerPort": SINK, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "startTime": "2026-01-01T00:00:00Z"}
    })
}

fn node_json(name: &str, ips: &[Ipv4Addr], cidr: &str) -> Value {
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}")},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": addresses}
    })
}

fn service_json(name: &str, ip: Ipv4Addr, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-svc-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "NodePort", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "selector": {"app": "web"}, "ports": ports}
    })
}

/// Builds the cluster with `mode`'s rules on node-a: Service `web` (80 → `echo`, 81 → `sink`,
/// node port 30080 → `echo`) across both backends, and masquerading of node-a's pods towards the
/// outside host.
fn cluster(tag: &str, mode: Mode, conntrack: &str) -> Cluster {
    let p = unique_prefix(tag);
    let mut node = Node::new(&format!("{p}a"), 81).expect("node a");
    let mut remote = Node::new(&format!("{p}b"), 82).expect("node b");
    let (veth_client, veth_web) = (format!("veth{p}c"), format!("veth{p}w"));
    node.add_pod("client", &veth_client).expect("client");
    node.add_pod("web", &veth_web).expect("web");
    remote
        .add_pod("web", &format!("veth{p}r"))
        .expect("remote web");
    let (ul_a, ul_b) = link(
        &node.ns,
        &format!("ul{p}a"),
        &remote.ns,
        &format!("ul{p}b"),
        1,
    )
    .expect("underlay");
    node.ns
        .ip(&[
            "route",
            "add",
            &remote.pod_cidr_v4(),
            "via",
            &ul_b.to_string(),
        ])
        .expect("route to node b");
    remote
        .ns
        .ip(&[
            "route",
            "add",
            &node.pod_cidr_v4(),
            "via",
            &ul_a.to_string(),
        ])
        .expect("route to node a");
    let (outside, node_ext, ext) = outside_host(&node.ns, &p, 2).expect("outside host");

    let (client, web_a, web_b) = (
        node.pod("client").expect("pod").ipv4,
        node.pod("web").expect("pod").ipv4,
        remote.pod("web").expect("pod").ipv4,
    );
    kube_proxy::install(
        &node.ns,
        mode,
        &[
            ServiceRule {
                name: "web".into(),
                cluster_ip: VIP,
                protocol: "udp",
                port: 80,
                node_port: Some(NODE_PORT),
                endpoints: vec![(web_a, ECHO), (web_b, ECHO)],
            },
            ServiceRule {
                name: "sink".into(),
                cluster_ip: VIP,
                protocol: "udp",
                port: 81,
                node_port: None,
                endpoints: vec![(web_a, SINK), (web_b, SINK)],
            },
        ],
        Some((&node.pod_cidr_v4(), &format!("ex{p}a"))),
    )
    .expect("kube-proxy rules");

    let dir = tempfile::tempdir().expect("tempdir");
    let metadata: PathBuf = dir.path().join("cluster.json");
    let items = vec![
        pod_json("client-0", client, "node-a", "client"),
        pod_json("web-a", web_a, "node-a", "web"),
        pod_json("web-b", web_b, "node-b", "web"),
        service_json(
            "web",
            VIP,
            json!([{"name": "echo", "port": 80, "targetPort": "echo", "protocol": "UDP", "nodePort": NODE_PORT},
                   {"name": "sink", "port": 81, "targetPort": "sink", "protocol": "UDP"}]),
        ),
        // A second Service selecting the same pods, straight to the echo port.
        service_json(
            "web-alt",
            VIP_ALT,
            json!([{"port": ECHO, "targetPort": ECHO, "protocol": "UDP"}]),
        ),
        node_json("node-a", &[ul_a, node_ext], &node.pod_cidr_v4()),
        node_json("node-b", &[ul_b], &remote.pod_cidr_v4()),
    ];
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&metadata, list.to_string()).expect("metadata file");
    let agent = Agent::start_named(
        &node,
        "node-a",
        &[
            "--metadata-file",
            &metadata.to_string_lossy(),
            "--conntrack",
            conntrack,
        ],
    );
    agent.wait_attached(&[&veth_client, &veth_web], Duration::from_secs(10));
    // Which way the agent follows conntrack: its own lookups unless told to use ctnetlink.
    let log = agent.log_text();
    let (kernel, events) = (
        log.contains("the programs look each new flow up"),
        log.contains("following the node's address translations"),
    );
    assert_eq!(
        (kernel, events),
        (conntrack != "netlink", conntrack == "netlink"),
        "{log}"
    );
    Cluster {
        node,
        remote,
        outside,
        node_ext,
        ext,
        veth_client,
        veth_web,
        _dir: dir,
        agent,
    }
}

/// Waits until the records `pick` selects add up to `packets`, then checks they stay there for
/// two more flushes. Returns them.
fn records(agent: &Agent, what: &str, packets: u64, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
    let sum = |recs: &[Value]| -> u64 {
        recs.iter()
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    let select = || -> Vec<Value> {
        agent
            .flows(&[])
            .into_iter()
            .filter(|r| r.get("loss").is_none() && pick(r))
            .collect()
    };
    let reached = wait_for(Duration::from_secs(20), Duration::from_millis(250), || {
        (sum(&select()) >= packets).then_some(())
    });
    std::thread::sleep(Duration::from_millis(2200));
    let recs = select();
    assert!(
        reached.is_some() && sum(&recs) == packets,
        "{what}: {} packets in records, {packets} expected: {recs:#?}",
        sum(&recs)
    );
    recs
}

fn ip_of(r: &Value, key: &str) -> Option<Ipv4Addr> {
    r[key].as_str()?.parse().ok()
}

fn services(r: &Value, end: &str) -> Vec<String> {
    r[end]["services"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|x| {
                    format!(
                        "{}/{}:{}:{}",
                        x["namespace"].as_str().unwrap_or(""),
                        x["name"].as_str().unwrap_or(""),
                        x["port_name"].as_str().unwrap_or(""),
                        x["port"]
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn packets_by(recs: &[Value], key: impl Fn(&Value) -> String) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for r in recs {
        *m.entry(key(r)).or_default() += r["packets"].as_u64().unwrap_or(0);
    }
    m
}

/// Requests and replies through the ClusterIP: the backend and the Service are named, local
/// backends stay same-node with both veths listed, every packet is counted once.
fn service_requests_and_replies(c: &Cluster, flows: usize) {
    let client_ns = &c.node.pod("client").expect("client").ns;
    let servers_a = Servers::start(
        &c.node.pod("web").expect("web").ns,
        &[(ECHO, true), (SINK, false)],
    );
    let servers_b = Servers::start(
        &c.remote.pod("web").expect("web").ns,
        &[(ECHO, true), (SINK, false)],
    );
    let answers = udp_flows(client_ns, SocketAddr::from((VIP, 80)), flows, true);
    assert_eq!(answers, flows as u64, "every request answered");
    let client = c.ip("client");
    let (web_a, web_b) = (c.ip("web"), c.remote_web());
    let from_client = Some(IpAddr::V4(client));
    let (to_a, to_b) = (
        servers_a.count(ECHO, from_client),
        servers_b.count(ECHO, from_client),
    );
    assert_eq!(to_a + to_b, flows as u64);
    assert!(
        to_a > 0 && to_b > 0,
        "both backends picked: {to_a} / {to_b}"
    );

    let requests = records(&c.agent, "requests", flows as u64, |r| {
        ip_of(r, "src_ip") == Some(client) && r["dst_port"] == ECHO
    });
    let by_pod = packets_by(&requests, |r| {
        r["dst"]["pod"].as_str().unwrap_or("?").into()
    });
    assert_eq!(
        (by_pod.get("web-a").copied(), by_pod.get("web-b").copied()),
        (Some(to_a), Some(to_b)),
        "{by_pod:?}"
    );
    for r in &requests {
        assert_eq!(r["protocol"], "UDP");
        assert_eq!(
            r["bytes"].as_u64(),
            r["packets"].as_u64().map(|p| p * PACKET_BYTES)
        );
        assert_eq!(
            r["translation"],
            json!({"service_ip": VIP.to_string(), "service_port": 80, "reply": false}),
            "{r}"
        );
        assert_eq!(services(r, "dst"), ["default/web:echo:80"], "{r}");
        assert!(services(r, "src").is_empty());
        assert_eq!(r["src"]["pod"], "client-0");
        assert_eq!(r["dst"]["workload"], "web");
        if ip_of(r, "dst_ip") == Some(web_a) {
            assert_eq!(r["same_node"], true, "{r}");
            assert_eq!(r["interfaces"], json!([c.veth_client, c.veth_web]), "{r}");
        } else {
            assert_eq!(ip_of(r, "dst_ip"), Some(web_b));
            assert_eq!(
                (r["same_node"].clone(), r["inter_node"].clone()),
                (json!(false), json!(true)),
                "{r}"
            );
            assert_eq!(r["interfaces"], json!([c.veth_client]), "{r}");
        }
    }

    let replies = records(&c.agent, "replies", flows as u64, |r| {
        ip_of(r, "dst_ip") == Some(client) && r["src_port"] == ECHO
    });
    for r in &replies {
        assert_eq!(services(r, "src"), ["default/web:echo:80"], "{r}");
        assert_eq!(r["translation"]["reply"], true, "{r}");
        assert_eq!(r["dst"]["pod"], "client-0");
        if ip_of(r, "src_ip") == Some(web_a) {
            assert_eq!(r["same_node"], true, "{r}");
            assert_eq!(r["interfaces"], json!([c.veth_web, c.veth_client]), "{r}");
        } else {
            assert_eq!(ip_of(r, "src_ip"), Some(web_b), "{r}");
            assert_eq!(r["interfaces"], json!([c.veth_client]), "{r}");
        }
    }
    // Nothing is left addressed to the ClusterIP.
    let to_vip: Vec<Value> = c
        .agent
        .flows(&[])
        .into_iter()
        .filter(|r| ip_of(r, "dst_ip") == Some(VIP) || ip_of(r, "src_ip") == Some(VIP))
        .collect();
    assert!(to_vip.is_empty(), "{to_vip:#?}");
}

#[test]
fn iptables_mode_names_backends_services_and_a_burst_of_short_flows() {
    if !privileged() {
        return;
    }
    let c = cluster("si", Mode::Iptables, "on");
    service_requests_and_replies(&c, 200);

    // A burst of 1,000 one-packet flows (no reply), as fast as the client sends them.
    let sink_a = Servers::start(&c.node.pod("web").expect("web").ns, &[(SINK, false)]);
    let sink_b = Servers::start(&c.remote.pod("web").expect("web").ns, &[(SINK, false)]);
    udp_flows(
        &c.node.pod("client").expect("client").ns,
        SocketAddr::from((VIP, 81)),
        1000,
        false,
    );
    let client = c.ip("client");
    let burst = records(&c.agent, "burst", 1000, |r| {
        ip_of(r, "src_ip") == Some(client) && r["dst_port"] == SINK
    });
    assert!(
        burst.iter().all(|r| r["translation"]["service_port"] == 81
            && services(r, "dst") == ["default/web:sink:81"])
    );
    // The programs found most of them themselves (the per-CPU cache holds a few flows for a
    // whole drain: those are asked for over ctnetlink).
    let (found, asked) = (
        c.agent.counter("conntrack_found"),
        c.agent.counter("conntrack_asked"),
    );
    assert!(found > 500, "found {found}, asked {asked}");
    let by_pod = packets_by(&burst, |r| r["dst"]["pod"].as_str().unwrap_or("?").into());
    let from_client = Some(IpAddr::V4(client));
    assert_eq!(
        by_pod.get("web-a").copied(),
        Some(sink_a.count(SINK, from_client))
    );
    assert_eq!(
        by_pod.get("web-b").copied(),
        Some(sink_b.count(SINK, from_client))
    );

    // Without translation on the wire (the client uses the pod address, as after socket load
    // balancing): every Service selecting the pod on that port.
    let echo = Servers::start(&c.node.pod("web").expect("web").ns, &[(ECHO, true)]);
    let web_a = c.ip("web");
    // From fixed ports: an ephemeral port one of the Service flows above used would give this
    // flow the reply tuple of a translated connection whose conntrack entry is still alive (UDP:
    // 30 s), a clash for the kernel, and the agent would name it with that connection's
    // translation (a known limit, issue 12). Seen once in a full run: 4 of 5 untranslated records found (cause not proven).
    udp_flows_from(
        &c.node.pod("client").expect("client").ns,
        20_001,
        SocketAddr::from((web_a, ECHO)),
        5,
        true,
    );
    drop(echo);
    let direct = records(&c.agent, "direct", 5, |r| {
        ip_of(r, "src_ip") == Some(client)
            && ip_of(r, "dst_ip") == Some(web_a)
            && r.get("translation").is_none()
    });
    for r in &direct {
        assert_eq!(
            services(r, "dst"),
            ["default/web:echo:80", "default/web-alt::8080"],
            "{r}"
        );
    }

    // tail's Service filters, and the compact form.
    let to_web = tail(&c.agent.sock, &["--to-service", "web"]);
    assert!(!to_web.is_empty() && to_web.iter().all(|r| !services(r, "dst").is_empty()));
    let from_web = tail(&c.agent.sock, &["--from-service", "default/web"]);
    assert!(
        !from_web.is_empty()
            && from_web
                .iter()
                .all(|r| r["translation"]["reply"] == true || !services(r, "src").is_empty())
    );
    let compact = std::process::Command::new(crate::support::BIN)
        .args([
            "tail",
            "-o",
            "compact",
            "--to-service",
            "web",
            "--last",
            "3",
            "--server",
        ])
        .arg(&c.agent.sock)
        .output()
        .expect("tail");
    let text = String::from_utf8_lossy(&compact.stdout);
    assert!(
        text.contains("default/client-0:") && text.contains("(svc default/web"),
        "{text}"
    );

    for name in [
        "conntrack_table_full",
        "conntrack_events_dropped",
        "conntrack_unavailable",
        "service_unknown",
    ] {
        assert_eq!(c.agent.counter(name), 0, "{name}");
    }
    // Every translated record made is in the buffer (nothing is dropped at this size).
    let translated = c
        .agent
        .flows(&[])
        .iter()
        .filter(|r| r.get("translation").is_some())
        .count() as u64;
    assert!(translated >= 1300, "{translated}");
    assert_eq!(c.agent.counter("translated_records"), translated);
}

#[test]
fn nftables_mode_names_backends_and_services() {
    if !privileged() {
        return;
    }
    let c = cluster("sn", Mode::Nftables, "netlink");
    // Before any traffic: following conntrack costs a quiet node no wake-ups (the loop waits on
    // the events socket, which the kernel's filter keeps silent); a 100 ms timer alone would wake
    // the agent 30 times in these 3 s. What remains: the 1 s flushes.
    std::thread::sleep(Duration::from_secs(1));
    let before = c.agent.wakeups();
    std::thread::sleep(Duration::from_secs(3));
    let woke = c.agent.wakeups() - before;
    eprintln!("idle agent, conntrack on: {woke} wake-ups in 3 s");
    assert!(woke < 30, "{woke} wake-ups in 3 s of no traffic");
    service_requests_and_replies(&c, 100);

    // A steady stream of new translated connections, one per ms for 2 s: events are read in
    // batches at most every 100 ms, so the agent wakes up tens of times, not once per event.
    let sinks = [
        Servers::start(&c.node.pod("web").expect("web").ns, &[(SINK, false)]),
        Servers::start(&c.remote.pod("web").expect("web").ns, &[(SINK, false)]),
    ];
    let before = c.agent.wakeups();
    let client_ns = &c.node.pod("client").expect("client").ns;
    let sent = client_ns
        .run(|| {
            let to = SocketAddr::from((VIP, 81));
            let start = std::time::Instant::now();
            for i in 0..2000u32 {
                let sock = UdpSocket::bind("0.0.0.0:0").expect("bind client");
                sock.send_to(&udp::PAYLOAD, to).expect("send");
                std::thread::sleep(
                    (start + Duration::from_millis(u64::from(i) + 1))
                        .saturating_duration_since(std::time::Instant::now()),
                );
            }
            start.elapsed()
        })
        .expect("client thread");
    let woke = c.agent.wakeups() - before;
    eprintln!("2000 translated connections in {sent:?}: {woke} agent wake-ups");
    assert!(woke < 400, "{woke} wake-ups for 2000 events in {sent:?}");
    let client = c.ip("client");
    let stream = records(&c.agent, "stream", 2000, |r| {
        ip_of(r, "src_ip") == Some(client) && r["dst_port"] == SINK
    });
    assert!(
        stream
            .iter()
            .all(|r| services(r, "dst") == ["default/web:sink:81"])
    );
    let from_client = Some(IpAddr::V4(client));
    let received: u64 = sinks.iter().map(|s| s.count(SINK, from_client)).sum();
    assert_eq!(received, 2000);
}

#[test]
fn nodeport_hairpin_and_masquerade_say_what_the_node_translated() {
    if !privileged() {
        return;
    }
    let c = cluster("sm", Mode::Iptables, "auto");
    let web_ns = &c.node.pod("web").expect("web").ns;
    let servers_a = Servers::start(web_ns, &[(ECHO, true)]);
    let servers_b = Servers::start(&c.remote.pod("web").expect("web").ns, &[(ECHO, true)]);
    let outside = Servers::start(&c.outside, &[(9999, true)]);
    let (client, web_a) = (c.ip("client"), c.ip("web"));
    let gateway: Ipv4Addr = GATEWAY_V4.parse().expect("gateway");

    // 1. From outside the cluster to the node port (externalTrafficPolicy Cluster: DNAT and
    // masquerade). node-a's agent sees the flows its local backend got, with the real client.
    let answers = udp_flows(
        &c.outside,
        SocketAddr::from((c.node_ext, NODE_PORT)),
        40,
        true,
    );
    assert_eq!(answers, 40);
    let local = servers_a.count(ECHO, Some(IpAddr::V4(gateway)));
    assert!(
        local > 0 && local < 40,
        "both backends: {local} of 40 local"
    );
    let nodeport = records(&c.agent, "node port", local, |r| {
        ip_of(r, "src_ip") == Some(c.ext) && r["dst_port"] == ECHO
    });
    for r in &nodeport {
        assert_eq!(ip_of(r, "dst_ip"), Some(web_a), "{r}");
        assert_eq!(
            r["translation"]["service_ip"],
            c.node_ext.to_string(),
            "{r}"
        );
        assert_eq!(r["translation"]["service_port"], NODE_PORT, "{r}");
        // Masqueraded to the address the node reaches the pod from.
        assert_eq!(r["translation"]["snat_ip"], GATEWAY_V4, "{r}");
        assert_eq!(
            services(r, "dst"),
            [format!("default/web:echo:{NODE_PORT}")],
            "{r}"
        );
        assert_eq!(r["src"]["kind"], "external", "{r}");
    }
    let back = records(&c.agent, "node port replies", local, |r| {
        ip_of(r, "dst_ip") == Some(c.ext) && r["src_port"] == ECHO
    });
    assert!(
        back.iter()
            .all(|r| r["translation"]["reply"] == true && ip_of(r, "src_ip") == Some(web_a))
    );

    // 2. Hairpin: the backend reaches its own Service; when it picks itself, it is masqueraded.
    let before = servers_a.count(ECHO, Some(IpAddr::V4(gateway)));
    udp_flows(web_ns, SocketAddr::from((VIP, 80)), 40, true);
    let to_self = servers_a.count(ECHO, Some(IpAddr::V4(gateway))) - before;
    let to_remote = servers_b.count(ECHO, Some(IpAddr::V4(web_a)));
    assert_eq!(to_self + to_remote, 40);
    let hairpin = records(&c.agent, "hairpin", to_self, |r| {
        ip_of(r, "src_ip") == Some(web_a)
            && ip_of(r, "dst_ip") == Some(web_a)
            && r["dst_port"] == ECHO
    });
    for r in &hairpin {
        assert_eq!(r["same_node"], true, "{r}");
        assert_eq!(r["translation"]["snat_ip"], GATEWAY_V4, "{r}");
        assert_eq!(r["translation"]["service_ip"], VIP.to_string(), "{r}");
        assert_eq!(r["interfaces"], json!([c.veth_web]), "{r}");
    }
    records(
        &c.agent,
        "through the Service to the remote backend",
        to_remote,
        |r| {
            ip_of(r, "src_ip") == Some(web_a)
                && ip_of(r, "dst_ip") == Some(c.remote_web())
                && r["translation"].get("snat_ip").is_none()
        },
    );

    // 3. A pod to the outside host, masqueraded to the node's address on that link.
    let answers = udp_flows(
        &c.node.pod("client").expect("client").ns,
        SocketAddr::from((c.ext, 9999)),
        10,
        true,
    );
    assert_eq!(answers, 10);
    assert_eq!(outside.count(9999, Some(IpAddr::V4(c.node_ext))), 10);
    let out = records(&c.agent, "to the outside", 10, |r| {
        ip_of(r, "src_ip") == Some(client) && ip_of(r, "dst_ip") == Some(c.ext)
    });
    for r in &out {
        assert_eq!(
            r["translation"],
            json!({"snat_ip": c.node_ext.to_string(), "snat_port": r["translation"]["snat_port"], "reply": false}),
            "{r}"
        );
        assert!(services(r, "dst").is_empty());
    }
    records(&c.agent, "answers from the outside", 10, |r| {
        ip_of(r, "src_ip") == Some(c.ext)
            && ip_of(r, "dst_ip") == Some(client)
            && r["translation"]["reply"] == true
    });
}

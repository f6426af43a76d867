//! Tests of the output formats: JSON keys and types, compact lines, Services and translations.
use super::*;

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

// 2026-11-23T13:05:01Z
const T: i64 = 1_795_439_101;

fn tcp_flow() -> proto::Flow {
    proto::Flow {
        start_time: ts(T - 1, 5),
        end_time: ts(T, 123_456_789),
        src_ip: vec![10, 1, 0, 5],
        dst_ip: vec![10, 1, 0, 9],
        src_port: 43512,
        dst_port: 80,
        protocol: TCP,
        packets: 12,
        bytes: 1946,
        tcp_flags: 0x13,
        interfaces: vec!["veth1a".into(), "veth2b".into()],
        same_node: true,
        sampling_rate: 1,
        fragment: false,
        node: "node-1".into(),
        reporter: "SRC".into(),
        encrypted: false,
        inter_node: false,
        ..Default::default()
    }
}

fn ev(flow: proto::Flow) -> proto::FlowEvent {
    proto::FlowEvent {
        event: Some(Event::Flow(flow)),
    }
}

fn loss() -> proto::FlowEvent {
    proto::FlowEvent {
        event: Some(Event::Loss(proto::LossRecord {
            time: ts(T, 500_000_000),
            node: "node-1".into(),
            reason: "lost_map_full".into(),
            count: 17,
            unit: "packets".into(),
            ..Default::default()
        })),
    }
}

#[test]
fn timestamps() {
    assert_eq!(
        rfc3339_nanos(ts(T, 123_456_789).as_ref()).unwrap(),
        "2026-11-23T13:05:01.123456789Z"
    );
    assert_eq!(
        rfc3339_nanos(ts(0, 0).as_ref()).unwrap(),
        "1970-01-01T00:00:00.000000000Z"
    );
    // Unnormalized: -1 s + 1.5 s.
    assert_eq!(
        rfc3339_nanos(ts(-1, 1_500_000_000).as_ref()).unwrap(),
        "1970-01-01T00:00:00.500000000Z"
    );
    assert_eq!(
        rfc3339_millis(ts(T, 123_999_999).as_ref()).unwrap(),
        "2026-11-23T13:05:01.123Z"
    );
    assert_eq!(rfc3339_nanos(None), None);
    assert_eq!(rfc3339_nanos(ts(i64::MAX, 0).as_ref()), None);
}

#[test]
fn helpers() {
    assert_eq!(tcp_flag_names(0), Vec::<&str>::new());
    assert_eq!(tcp_flag_names(0x12), ["SYN", "ACK"]);
    assert_eq!(
        tcp_flag_names(0xff),
        ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]
    );
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1024), "1.0 KiB");
    assert_eq!(human_bytes(1946), "1.9 KiB");
    assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
    assert_eq!(human_bytes(5 * 1024 * 1024 * 1024 + 1), "5.0 GiB");
    assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    assert_eq!(ip_text(&[1, 2, 3]), None);
}

#[test]
fn json_flow() {
    assert_eq!(
        json_line(&ev(tcp_flow())).unwrap().unwrap(),
        r#"{"start_time":"2026-11-23T13:05:00.000000005Z","end_time":"2026-11-23T13:05:01.123456789Z","src_ip":"10.1.0.5","dst_ip":"10.1.0.9","src_port":43512,"dst_port":80,"protocol":"TCP","packets":12,"bytes":1946,"tcp_flags":["FIN","SYN","ACK"],"interfaces":["veth1a","veth2b"],"same_node":true,"sampling_rate":1,"fragment":false,"node":"node-1","reporter":"SRC","encrypted":false,"inter_node":false,"src":{"kind":"unknown","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":""},"dst":{"kind":"unknown","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":""}}"#
    );
}

fn named(ns: &str, pod: &str) -> Option<proto::Endpoint> {
    Some(proto::Endpoint {
        kind: "pod".into(),
        namespace: ns.into(),
        pod: pod.into(),
        uid: format!("uid-{pod}"),
        workload_kind: "Deployment".into(),
        workload: pod.split('-').next().unwrap_or(pod).into(),
        labels: [("app".to_string(), "x".to_string())].into_iter().collect(),
        node: "node-1".into(),
        ..Default::default()
    })
}

#[test]
fn json_and_compact_with_metadata() {
    let mut f = tcp_flow();
    f.src = named("shop", "frontend-7d9f");
    f.dst = Some(proto::Endpoint {
        kind: "service".into(),
        service: "payments/api".into(),
        ..Default::default()
    });
    f.metadata_age = Some(prost_types::Duration {
        seconds: 3,
        nanos: 500_000_000,
    });
    let line = json_line(&ev(f.clone())).unwrap().unwrap();
    assert!(
        line.ends_with(r#""src":{"kind":"pod","namespace":"shop","pod":"frontend-7d9f","uid":"uid-frontend-7d9f","workload_kind":"Deployment","workload":"frontend","labels":{"app":"x"},"node":"node-1"},"dst":{"kind":"service","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":"","service":"payments/api"},"metadata_age_seconds":3.5}"#),
        "{line}"
    );
    let compact = compact_line(&ev(f)).unwrap();
    assert!(
        compact.contains("shop/frontend-7d9f:43512 -> svc:payments/api:80"),
        "{compact}"
    );
    let mut amb = tcp_flow();
    amb.src = Some(proto::Endpoint {
        kind: "pod".into(),
        ambiguous: true,
        ..Default::default()
    });
    let line = json_line(&ev(amb.clone())).unwrap().unwrap();
    assert!(line.contains(r#""kind":"pod","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":"","ambiguous":true}"#), "{line}");
    // An ambiguous endpoint has no name: the address is shown.
    assert!(
        compact_line(&ev(amb))
            .unwrap()
            .contains("10.1.0.5:43512 -> ")
    );
}

#[test]
fn json_other_protocols_ipv6_and_missing_fields() {
    let flow = proto::Flow {
        src_ip: "fd00::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        dst_ip: "fd00::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        protocol: 47,
        packets: 1,
        bytes: 100,
        sampling_rate: 8,
        fragment: true,
        encrypted: true,
        inter_node: true,
        ..Default::default()
    };
    assert_eq!(
        json_line(&ev(flow)).unwrap().unwrap(),
        r#"{"start_time":null,"end_time":null,"src_ip":"fd00::1","dst_ip":"fd00::2","src_port":0,"dst_port":0,"protocol":47,"packets":1,"bytes":100,"tcp_flags":[],"interfaces":[],"same_node":false,"sampling_rate":8,"fragment":true,"node":"","reporter":"","encrypted":true,"inter_node":true,"src":{"kind":"unknown","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":""},"dst":{"kind":"unknown","namespace":"","pod":"","uid":"","workload_kind":"","workload":"","labels":{},"node":""}}"#
    );
    let icmpv6 = proto::Flow {
        protocol: ICMPV6,
        ..Default::default()
    };
    let line = json_line(&ev(icmpv6)).unwrap().unwrap();
    assert!(line.contains(r#""src_ip":null,"dst_ip":null,"#), "{line}");
    assert!(line.contains(r#""protocol":"ICMPv6","#), "{line}");
    assert_eq!(json_line(&proto::FlowEvent::default()).unwrap(), None);
}

#[test]
fn json_loss() {
    assert_eq!(
        json_line(&loss()).unwrap().unwrap(),
        r#"{"loss":{"time":"2026-11-23T13:05:01.500000000Z","node":"node-1","reason":"lost_map_full","count":17,"unit":"packets"}}"#
    );
}

#[test]
fn compact_tcp() {
    assert_eq!(
        compact_line(&ev(tcp_flow())).unwrap(),
        "2026-11-23T13:05:01.123Z  10.1.0.5:43512 -> 10.1.0.9:80  TCP [FIN,SYN,ACK]  12 pkts  1.9 KiB  veth1a,veth2b  same-node"
    );
}

#[test]
fn compact_ipv6_udp_sampled_fragment() {
    let flow = proto::Flow {
        src_ip: "fd00::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        dst_ip: "fd00::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
        src_port: 5353,
        dst_port: 53,
        protocol: UDP,
        packets: 1,
        bytes: 80,
        tcp_flags: 0x02, // Ignored for UDP.
        interfaces: vec!["eth0".into()],
        sampling_rate: 10,
        fragment: true,
        inter_node: true,
        encrypted: true,
        end_time: ts(T, 0),
        ..Default::default()
    };
    assert_eq!(
        compact_line(&ev(flow.clone())).unwrap(),
        "2026-11-23T13:05:01.000Z  [fd00::1]:5353 -> [fd00::2]:53  UDP  1 pkt  80 B  eth0  inter-node  encrypted  sampled 1/10  fragment"
    );
    // The side that reported an inter-node flow (both nodes do).
    let dest = proto::Flow {
        reporter: "DEST".into(),
        ..flow
    };
    assert_eq!(
        compact_line(&ev(dest)).unwrap(),
        "2026-11-23T13:05:01.000Z  [fd00::1]:5353 -> [fd00::2]:53  UDP  1 pkt  80 B  eth0  inter-node DEST  encrypted  sampled 1/10  fragment"
    );
}

#[test]
fn compact_icmp_and_portless() {
    let icmp = proto::Flow {
        src_ip: vec![10, 1, 0, 5],
        dst_ip: vec![10, 1, 0, 9],
        src_port: 8,
        dst_port: 0,
        protocol: ICMP,
        packets: 3,
        bytes: 252,
        sampling_rate: 1,
        end_time: ts(T, 0),
        ..Default::default()
    };
    assert_eq!(
        compact_line(&ev(icmp)).unwrap(),
        "2026-11-23T13:05:01.000Z  10.1.0.5 -> 10.1.0.9  ICMP type 8 code 0  3 pkts  252 B"
    );
    let gre = proto::Flow {
        src_ip: vec![10, 1, 0, 5],
        dst_ip: vec![],
        protocol: 47,
        packets: 2,
        bytes: 2048,
        ..Default::default()
    };
    assert_eq!(
        compact_line(&ev(gre)).unwrap(),
        "-  10.1.0.5 -> ?  proto 47  2 pkts  2.0 KiB"
    );
}

#[test]
fn compact_loss() {
    assert_eq!(
        compact_line(&loss()).unwrap(),
        "2026-11-23T13:05:01.500Z  LOST 17 packets (lost_map_full) on node node-1"
    );
    let lagged = proto::FlowEvent {
        event: Some(Event::Loss(proto::LossRecord {
            time: ts(T, 0),
            node: String::new(),
            reason: "subscriber_lagged".into(),
            count: 3,
            unit: "records".into(),
            ..Default::default()
        })),
    };
    assert_eq!(
        compact_line(&lagged).unwrap(),
        "2026-11-23T13:05:01.000Z  LOST 3 records (subscriber_lagged)"
    );
    assert_eq!(compact_line(&proto::FlowEvent::default()), None);
}

fn service_flow() -> proto::Flow {
    let web = proto::ServiceRef {
        namespace: "shop".into(),
        name: "web".into(),
        port_name: "http".into(),
        port: 80,
    };
    proto::Flow {
        protocol: UDP,
        src_port: 40000,
        dst_port: 8080,
        src: Some(proto::Endpoint {
            kind: "pod".into(),
            namespace: "shop".into(),
            pod: "client".into(),
            ..Default::default()
        }),
        dst: Some(proto::Endpoint {
            kind: "pod".into(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            services: vec![web],
            ..Default::default()
        }),
        translation: Some(proto::Translation {
            service_ip: vec![10, 96, 0, 10],
            service_port: 80,
            snat_ip: vec![192, 168, 9, 1],
            snat_port: 61000,
            reply: false,
        }),
        ..tcp_flow()
    }
}

#[test]
fn service_flows_in_json_and_compact() {
    let line = json_line(&ev(service_flow())).unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["dst"]["services"],
        serde_json::json!([{"namespace": "shop", "name": "web", "port_name": "http", "port": 80}])
    );
    assert!(v["src"].get("services").is_none());
    assert_eq!(
        v["translation"],
        serde_json::json!({"service_ip": "10.96.0.10", "service_port": 80,
            "snat_ip": "192.168.9.1", "snat_port": 61000, "reply": false})
    );
    assert!(
        json_line(&ev(tcp_flow()))
            .unwrap()
            .unwrap()
            .find("translation")
            .is_none()
    );
    let c = compact_line(&ev(service_flow())).unwrap();
    assert!(
        c.contains("shop/client:40000 -> shop/web-1:8080  (svc shop/web)  UDP"),
        "{c}"
    );
    assert!(c.ends_with("snat 192.168.9.1:61000"), "{c}");
    // A translated flow whose Service is not known: the address the client used.
    let mut unknown = service_flow();
    unknown.dst.as_mut().unwrap().services.clear();
    let c = compact_line(&ev(unknown)).unwrap();
    assert!(c.contains("(via 10.96.0.10:80)"), "{c}");
}

#[test]
fn gke_reporter_is_the_records() {
    let reporter = |r: &str| {
        let flow = proto::Flow {
            reporter: r.into(),
            ..tcp_flow()
        };
        let line = gke::gke_line(&ev(flow), None).unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        value["reporter"].as_str().map(str::to_owned)
    };
    assert_eq!(reporter("SRC").as_deref(), Some("SRC"));
    assert_eq!(reporter("DEST").as_deref(), Some("DEST"));
    // A record without one (an older agent's) is a same-node flow's: counted at the source.
    assert_eq!(reporter("").as_deref(), Some("SRC"));
}

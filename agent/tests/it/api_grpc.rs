//! The gRPC API end to end: `serve` on a temp unix socket and on 127.0.0.1:0, known events
//! published into the hub, exact results asserted, then shut down.
use std::{
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use podflow::{
    api::{ApiConfig, ApiError, ApiListeners, Hub, SUBSCRIBER_LAGGED},
    cli::{self, Server},
    proto::{
        self, FlowEvent, FlowFilter, GetFlowsRequest, GetStatusRequest, flow_event::Event,
        flow_service_client::FlowServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Streaming, transport::Channel};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

struct Running {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ApiError>>>,
}

impl Running {
    async fn start(hub: Arc<Hub>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        // The parent directory does not exist yet: bind creates it.
        let socket = dir.path().join("run").join("podflow.sock");
        let listeners = ApiListeners::bind(&ApiConfig {
            unix_socket: Some(socket.clone()),
            tcp: Some("127.0.0.1:0".parse().unwrap()),
        })
        .await
        .unwrap();
        assert_eq!(listeners.unix_socket(), Some(socket.as_path()));
        let tcp = listeners.tcp_addr().unwrap().unwrap();
        assert_ne!(tcp.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listeners.serve(hub, async {
            let _ = stopped.await;
        }));
        Running {
            _dir: dir,
            socket,
            tcp,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn unix_client(&self) -> FlowServiceClient<Channel> {
        let channel = tokio::time::timeout(
            WAIT,
            cli::connect(&Server::Unix(self.socket.clone()), &Default::default()),
        )
        .await
        .unwrap()
        .unwrap();
        FlowServiceClient::new(channel)
    }

    async fn tcp_client(&self) -> FlowServiceClient<Channel> {
        let server = cli::parse_server(&self.tcp.to_string()).unwrap();
        let channel = tokio::time::timeout(WAIT, cli::connect(&server, &Default::default()))
            .await
            .unwrap()
            .unwrap();
        FlowServiceClient::new(channel)
    }

    async fn clients(&self) -> [FlowServiceClient<Channel>; 2] {
        [self.unix_client().await, self.tcp_client().await]
    }

    /// Shuts down, asserting that it completes in time and removes the socket file.
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("shutdown timed out")
            .unwrap()
            .unwrap();
        assert!(!self.socket.exists(), "the socket file is left behind");
    }
}

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A flow whose `packets` carries its id, which `label` shows.
#[expect(clippy::too_many_arguments, reason = "a table of test flows")]
fn flow(
    id: u64,
    src: &str,
    dst: &str,
    sport: u32,
    dport: u32,
    protocol: u32,
    interfaces: &[&str],
    end: i64,
) -> FlowEvent {
    let bytes = |ip: &str| match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    FlowEvent {
        event: Some(Event::Flow(proto::Flow {
            start_time: ts(end - 1, 0),
            end_time: ts(end, 0),
            src_ip: bytes(src),
            dst_ip: bytes(dst),
            src_port: sport,
            dst_port: dport,
            protocol,
            packets: id,
            bytes: 100 * id,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            sampling_rate: 1,
            node: "node-a".into(),
            ..Default::default()
        })),
    }
}

fn loss(count: u64, time: i64) -> FlowEvent {
    FlowEvent {
        event: Some(Event::Loss(proto::LossRecord {
            time: ts(time, 0),
            node: "node-a".into(),
            reason: "lost_map_full".into(),
            count,
            unit: "packets".into(),
            ..Default::default()
        })),
    }
}

/// `e<id>` for a flow, `L<count>` for a loss record.
fn label(event: &FlowEvent) -> String {
    match &event.event {
        Some(Event::Flow(flow)) => format!("e{}", flow.packets),
        Some(Event::Loss(loss)) => format!("L{}", loss.count),
        None => "empty".into(),
    }
}

/// The known events: ids 1-5 and a loss record of 3 packets.
fn known_events() -> Vec<FlowEvent> {
    vec![
        flow(1, "10.1.0.5", "10.1.0.9", 40000, 80, 6, &["veth1"], 100),
        flow(2, "10.1.0.9", "10.1.0.5", 80, 40000, 6, &["veth1"], 110),
        flow(3, "fd00::1", "fd00::2", 5353, 53, 17, &["eth0"], 120),
        loss(3, 125),
        flow(4, "10.2.0.7", "192.0.2.1", 123, 123, 17, &["eth0"], 130),
        flow(5, "10.1.0.5", "10.2.0.7", 8, 0, 1, &["veth1", "eth0"], 140),
    ]
}

async fn get(client: &mut FlowServiceClient<Channel>, request: GetFlowsRequest) -> Vec<String> {
    let mut stream = client.get_flows(request).await.unwrap().into_inner();
    let mut labels = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream did not end")
        .unwrap()
    {
        labels.push(label(&event));
    }
    labels
}

async fn next(stream: &mut Streaming<FlowEvent>) -> FlowEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no event in time")
        .unwrap()
        .expect("the stream ended")
}

fn filtered(filter: FlowFilter) -> GetFlowsRequest {
    GetFlowsRequest {
        filter: Some(filter),
        ..Default::default()
    }
}

#[tokio::test]
async fn last_n_since_and_filters_on_unix_and_tcp() {
    let hub = Hub::new(100);
    hub.publish(known_events());
    let server = Running::start(Arc::clone(&hub)).await;
    let all = ["e1", "e2", "e3", "L3", "e4", "e5"];
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for mut client in server.clients().await {
        let c = &mut client;
        assert_eq!(get(c, GetFlowsRequest::default()).await, all);
        let last = |number| GetFlowsRequest {
            number,
            ..Default::default()
        };
        assert_eq!(get(c, last(2)).await, ["e4", "e5"]);
        assert_eq!(get(c, last(6)).await, all);
        assert_eq!(get(c, last(1000)).await, all);
        // Since: end_time (or the loss time) >= since.
        let since = |seconds, nanos| GetFlowsRequest {
            since: ts(seconds, nanos),
            ..Default::default()
        };
        assert_eq!(get(c, since(120, 0)).await, ["e3", "L3", "e4", "e5"]);
        assert_eq!(get(c, since(125, 1)).await, ["e4", "e5"]);
        assert_eq!(get(c, since(141, 0)).await, Vec::<String>::new());
        // Each filter field; loss records always pass.
        let ip = |v: &[&str]| strs(v);
        let cases: Vec<(FlowFilter, Vec<&str>)> = vec![
            (
                FlowFilter {
                    ip: ip(&["10.1.0.5"]),
                    ..Default::default()
                },
                vec!["e1", "e2", "L3", "e5"],
            ),
            (
                FlowFilter {
                    src_ip: ip(&["10.1.0.5/32"]),
                    ..Default::default()
                },
                vec!["e1", "L3", "e5"],
            ),
            (
                FlowFilter {
                    dst_ip: ip(&["fd00::/16"]),
                    ..Default::default()
                },
                vec!["e3", "L3"],
            ),
            (
                FlowFilter {
                    dst_ip: ip(&["192.0.2.0/24", "10.1.0.9"]),
                    ..Default::default()
                },
                vec!["e1", "L3", "e4"],
            ),
            (
                FlowFilter {
                    port: vec![123],
                    ..Default::default()
                },
                vec!["L3", "e4"],
            ),
            (
                FlowFilter {
                    src_port: vec![80],
                    ..Default::default()
                },
                vec!["e2", "L3"],
            ),
            (
                FlowFilter {
                    dst_port: vec![80, 53],
                    ..Default::default()
                },
                vec!["e1", "e3", "L3"],
            ),
            (
                FlowFilter {
                    protocol: vec![17],
                    ..Default::default()
                },
                vec!["e3", "L3", "e4"],
            ),
            (
                FlowFilter {
                    interface: strs(&["eth0"]),
                    ..Default::default()
                },
                vec!["e3", "L3", "e4", "e5"],
            ),
            (
                FlowFilter {
                    ip: ip(&["10.1.0.0/24"]),
                    dst_port: vec![80],
                    protocol: vec![6],
                    ..Default::default()
                },
                vec!["e1", "L3"],
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(
                get(c, filtered(filter.clone())).await,
                expected,
                "{filter:?}"
            );
        }
        // Last N counts matching events, loss records included (they always match).
        let tcp_last = |number| GetFlowsRequest {
            number,
            filter: Some(FlowFilter {
                protocol: vec![6],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(get(c, tcp_last(1)).await, ["L3"]);
        assert_eq!(get(c, tcp_last(2)).await, ["e2", "L3"]);
        assert_eq!(get(c, tcp_last(3)).await, ["e1", "e2", "L3"]);
        // Invalid filters are rejected with the filter error's text.
        let status = c
            .get_flows(filtered(FlowFilter {
                ip: ip(&["nope"]),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid ip filter \"nope\": expected an IP address or a CIDR prefix"
        );
        let status = c
            .get_flows(filtered(FlowFilter {
                protocol: vec![300],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid protocol filter 300: IP protocol numbers range from 0 to 255"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn follow_sends_new_matching_events_in_order() {
    let hub = Hub::new(100);
    hub.publish(known_events());
    let server = Running::start(Arc::clone(&hub)).await;
    let [mut unix, mut tcp] = server.clients().await;
    // number 0 + follow: nothing buffered, then every new event.
    let mut all = unix
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // number 2 + follow + filter: the last 2 matching buffered events, then new matching ones.
    let mut udp = tcp
        .get_flows(GetFlowsRequest {
            number: 2,
            follow: true,
            filter: Some(FlowFilter {
                protocol: vec![17],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hub.followers(), 2);
    hub.publish(vec![
        flow(6, "10.1.0.5", "10.1.0.9", 1, 2, 6, &["veth1"], 200),
        flow(7, "10.1.0.5", "10.1.0.9", 1, 2, 17, &["veth1"], 201),
    ]);
    hub.publish(vec![loss(9, 202)]);
    hub.publish(vec![flow(
        8,
        "10.1.0.5",
        "10.1.0.9",
        1,
        2,
        17,
        &["veth1"],
        203,
    )]);
    let mut got_all = Vec::new();
    for _ in 0..4 {
        got_all.push(label(&next(&mut all).await));
    }
    assert_eq!(got_all, ["e6", "e7", "L9", "e8"]);
    let mut got_udp = Vec::new();
    for _ in 0..5 {
        got_udp.push(label(&next(&mut udp).await));
    }
    assert_eq!(got_udp, ["L3", "e4", "e7", "L9", "e8"]);
    // The client going away unsubscribes.
    drop(all);
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.followers() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower not dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shutting down ends the remaining follow stream instead of waiting for it.
    server.shutdown().await;
    let end = tokio::time::timeout(WAIT, udp.message()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

/// Single-threaded runtime: `publish` runs to completion before the server task reads anything,
/// so the number of overwritten events is exact.
#[tokio::test(flavor = "current_thread")]
async fn lagging_follower_gets_the_exact_loss_count() {
    let hub = Hub::with_follow_capacity(100, 4);
    hub.set_status(proto::GetStatusResponse {
        node: "node-a".into(),
        ..Default::default()
    });
    let server = Running::start(Arc::clone(&hub)).await;
    let mut client = server.unix_client().await;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    hub.publish(
        (1..=10)
            .map(|id| flow(id, "10.1.0.5", "10.1.0.9", 1, 2, 6, &["veth1"], 300))
            .collect(),
    );
    let first = next(&mut stream).await;
    let Some(Event::Loss(lagged)) = &first.event else {
        panic!("expected a loss record, got {first:?}");
    };
    assert_eq!(lagged.reason, SUBSCRIBER_LAGGED);
    assert_eq!(lagged.unit, "records");
    assert_eq!(lagged.count, 6);
    assert_eq!(lagged.node, "node-a");
    assert!(lagged.time.is_some());
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(label(&next(&mut stream).await));
    }
    assert_eq!(rest, ["e7", "e8", "e9", "e10"]);
    // It goes on.
    hub.publish(vec![flow(
        11,
        "10.1.0.5",
        "10.1.0.9",
        1,
        2,
        6,
        &["veth1"],
        301,
    )]);
    assert_eq!(label(&next(&mut stream).await), "e11");
    // The ring kept everything.
    assert_eq!(hub.buffered_events(), 11);
    server.shutdown().await;
}

/// A follower that does not read stalls on HTTP/2 flow control; the pipeline and a follower
/// that keeps up go on, and the slow one accounts for every event: flows + lost = published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_holds_back_neither_pipeline_nor_others() {
    const EVENTS: u64 = 3000;
    const BATCH: u64 = 4;
    let hub = Hub::with_follow_capacity(16, 8);
    let server = Running::start(Arc::clone(&hub)).await;
    // A small receive window makes the slow client stall after ~64 KiB.
    let slow_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.tcp))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let follow = GetFlowsRequest {
        follow: true,
        ..Default::default()
    };
    let mut slow = FlowServiceClient::new(slow_channel)
        .get_flows(follow.clone())
        .await
        .unwrap()
        .into_inner();
    let mut fast = server
        .unix_client()
        .await
        .get_flows(follow)
        .await
        .unwrap()
        .into_inner();
    // ~500 bytes per event: 1.5 MB in all, far beyond the slow client's window and buffers.
    let long_name = "x".repeat(480);
    let mut id = 0;
    while id < EVENTS {
        let batch: Vec<FlowEvent> = (id + 1..=id + BATCH)
            .map(|i| {
                flow(
                    i,
                    "10.1.0.5",
                    "10.1.0.9",
                    1,
                    2,
                    6,
                    &[long_name.as_str()],
                    400,
                )
            })
            .collect();
        let started = std::time::Instant::now();
        hub.publish(batch);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "publish blocked"
        );
        for expected in id + 1..=id + BATCH {
            assert_eq!(label(&next(&mut fast).await), format!("e{expected}"));
        }
        id += BATCH;
    }
    // The slow follower: flows in order, with loss records for the gaps, adding up exactly.
    let (mut flows, mut lost, mut losses, mut last_id) = (0, 0, 0, 0);
    while flows + lost < EVENTS {
        let event = next(&mut slow).await;
        match &event.event {
            Some(Event::Flow(flow)) => {
                assert!(
                    flow.packets > last_id,
                    "out of order: {} after {last_id}",
                    flow.packets
                );
                last_id = flow.packets;
                flows += 1;
            }
            Some(Event::Loss(loss)) => {
                assert_eq!(loss.reason, SUBSCRIBER_LAGGED);
                lost += loss.count;
                losses += 1;
            }
            None => panic!("empty event"),
        }
    }
    assert_eq!(flows + lost, EVENTS);
    assert_eq!(last_id, EVENTS);
    assert!(losses >= 1 && lost > 0, "the slow follower never lagged");
    server.shutdown().await;
}

#[tokio::test]
async fn status_round_trip_with_buffered_events() {
    let hub = Hub::new(100);
    let status = proto::GetStatusResponse {
        node: "node-a".into(),
        version: "1.2.3".into(),
        start_time: ts(1_795_439_101, 5),
        interfaces: vec![proto::Interface {
            name: "veth1".into(),
            ifindex: 7,
            kind: "veth".into(),
            attach_mode: "tcx".into(),
        }],
        flows_active: 42,
        flush_interval_ms: 5000,
        sampling_rate: 1,
        flow_map_capacity: 65536,
        counters: vec![proto::StatusCounter {
            name: "lost_map_full".into(),
            value: 3,
            loss: true,
            unit: "packets".into(),
        }],
        // Whatever the pipeline says, the hub fills this in.
        buffered_events: 12345,
        ..Default::default()
    };
    hub.set_status(status.clone());
    hub.publish(
        (1..=150)
            .map(|id| flow(id, "10.1.0.5", "10.1.0.9", 1, 2, 6, &["veth1"], 500))
            .collect(),
    );
    let server = Running::start(Arc::clone(&hub)).await;
    let expected = proto::GetStatusResponse {
        buffered_events: 100,
        ..status
    };
    for mut client in server.clients().await {
        let got = client
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, expected);
    }
    server.shutdown().await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn unix_socket_is_private_replaces_stale_sockets_and_refuses_others() {
    let server = Running::start(Hub::new(10)).await;
    let meta = std::fs::symlink_metadata(&server.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&server.socket), 0o600);
    // A live socket is not taken over.
    let err = ApiListeners::bind(&ApiConfig {
        unix_socket: Some(server.socket.clone()),
        tcp: None,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ApiError::SocketInUse { .. }), "{err:?}");
    server.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    // A stale socket (nobody accepting) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let listeners = ApiListeners::bind(&ApiConfig {
        unix_socket: Some(stale.clone()),
        tcp: None,
    })
    .await
    .unwrap();
    assert_eq!(mode(&stale), 0o600);
    assert_eq!(listeners.tcp_addr().unwrap(), None);
    // Dropping unserved listeners removes the socket too.
    drop(listeners);
    assert!(!stale.exists());
    // Anything else at the path is left alone.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "keep me").unwrap();
    let err = ApiListeners::bind(&ApiConfig {
        unix_socket: Some(file.clone()),
        tcp: None,
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // Nothing to serve on.
    let err = ApiListeners::bind(&ApiConfig::default()).await.unwrap_err();
    assert!(matches!(err, ApiError::NoListener), "{err:?}");
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("podflow.sock");
    let hub = Hub::new(10);
    hub.publish(known_events());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(podflow::api::serve(
        Arc::clone(&hub),
        ApiConfig {
            unix_socket: Some(socket.clone()),
            tcp: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    // Wait for the socket, then use it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "socket not created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let channel = cli::connect(&Server::Unix(socket.clone()), &Default::default())
        .await
        .unwrap();
    let mut client = FlowServiceClient::new(channel);
    assert_eq!(get(&mut client, GetFlowsRequest::default()).await.len(), 6);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!socket.exists());
}

#[derive(clap::Parser)]
struct TailCli {
    #[command(flatten)]
    tail: cli::TailArgs,
}

#[tokio::test]
async fn tail_reads_from_the_server_and_ends_with_the_stream() {
    use clap::Parser as _;

    let hub = Hub::new(10);
    hub.publish(known_events());
    let server = Running::start(Arc::clone(&hub)).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let tcp = server.tcp.to_string();
    for (server_arg, output) in [(socket.as_str(), "json"), (tcp.as_str(), "compact")] {
        let args = TailCli::try_parse_from([
            "tail",
            "--server",
            server_arg,
            "--last",
            "2",
            "--protocol",
            "udp",
            "-o",
            output,
        ])
        .unwrap()
        .tail;
        tokio::time::timeout(WAIT, cli::run_tail(args))
            .await
            .unwrap()
            .unwrap();
    }
    // A bad filter fails before connecting.
    let args = TailCli::try_parse_from(["tail", "--server", &tcp, "--ip", "10.0.0.0/40"])
        .unwrap()
        .tail;
    let err = cli::run_tail(args).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid ip filter \"10.0.0.0/40\": the prefix length must be a number from 0 to 32"
    );
    server.shutdown().await;
    // Nobody serving: a connection error naming the server.
    let args = TailCli::try_parse_from(["tail", "--server", &socket])
        .unwrap()
        .tail;
    let err = cli::run_tail(args).await.unwrap_err();
    assert_eq!(err.to_string(), format!("failed to connect to {socket}"));
}

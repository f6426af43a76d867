//! The agents of the collector figure: `n` real exporters (`podflow::export`, the agent's own
//! client: batches, zstd, acks; the agent's defaults) in this process, each fed fully enriched
//! flow records as fast as it sends them, without dropping any (a feeder keeps a few batches
//! queued beyond those in flight).
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow, ensure};
use bytes::{BufMut as _, Bytes, BytesMut};
use podflow::{
    export::{self, Compression, ExportStats, ExporterConfig, ExporterHandle},
    proto,
};
use prost::Message as _;
use tokio::{runtime::Runtime, task::JoinHandle};

/// Events each exporter may buffer, and batches it may have unacknowledged (the agent's
/// defaults, `ExporterConfig::new`).
const BUFFER: usize = 100_000;
const IN_FLIGHT: usize = 16;

/// How the exporters are configured.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    pub exporters: usize,
    pub batch_size: usize,
    pub compression: Compression,
}

/// The running exporters and their feeders (on a runtime of their own, two worker threads).
pub struct Load {
    rt: Runtime,
    exporters: Vec<Arc<ExporterHandle>>,
    feeders: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts `cfg.exporters` exporters to the collector at `addr`, node `node-0`, `node-1`, ...,
    /// and their feeders.
    pub fn start(addr: std::net::SocketAddr, cfg: LoadConfig) -> anyhow::Result<Load> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-exporter")
            .enable_all()
            .build()
            .context("starting the exporters' runtime")?;
        let stop = Arc::new(AtomicBool::new(false));
        let pods = Pods::new(cfg.exporters);
        let mut exporters = Vec::new();
        let mut feeders = Vec::new();
        for e in 0..cfg.exporters {
            let node = format!("node-{e}");
            let mut ec = ExporterConfig::new(addr.to_string(), node.clone());
            ec.batch_size = cfg.batch_size;
            ec.buffer_records = BUFFER.max(cfg.batch_size);
            ec.max_in_flight = IN_FLIGHT;
            ec.compression = cfg.compression;
            let handle = {
                let _guard = rt.enter();
                Arc::new(export::spawn(ec).map_err(|e| anyhow!("starting an exporter: {e}"))?)
            };
            let mut records = Records::new(&pods, e, &node);
            let (h, stop, chunk) = (Arc::clone(&handle), Arc::clone(&stop), cfg.batch_size);
            // Enough queued that the exporter never waits for records (its batches in flight and
            // four more), not its whole buffer: 100 000 records per exporter only cost memory
            // and cache here.
            let limit = ((IN_FLIGHT + 4) * cfg.batch_size).min(BUFFER.max(cfg.batch_size));
            feeders.push(rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if h.stats().queue_depth as usize + chunk <= limit {
                        h.send_encoded(records.chunk(chunk));
                    } else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }));
            exporters.push(handle);
        }
        Ok(Load {
            rt,
            exporters,
            feeders,
            stop,
        })
    }

    /// Every exporter's counters.
    pub fn stats(&self) -> Vec<ExportStats> {
        self.exporters.iter().map(|h| h.stats()).collect()
    }

    /// Records the collector acknowledged so far (stored in ClickHouse), over the exporters.
    pub fn acked(&self) -> u64 {
        self.stats().iter().map(|s| s.acked_records).sum()
    }

    /// Stops feeding, waits (≤ `timeout`) until every exporter has its records acknowledged,
    /// shuts the exporters down; their final counters.
    pub fn finish(self, timeout: Duration) -> anyhow::Result<Vec<ExportStats>> {
        self.stop.store(true, Ordering::Relaxed);
        let Load {
            rt,
            exporters,
            feeders,
            ..
        } = self;
        rt.block_on(async move {
            for f in feeders {
                f.await.context("a feeder failed")?;
            }
            let mut out = Vec::new();
            for h in exporters {
                let h = Arc::try_unwrap(h).map_err(|_| anyhow!("exporter still shared"))?;
                out.push(h.shutdown(timeout).await);
            }
            let left: u64 = out.iter().map(|s| s.queue_depth).sum();
            ensure!(
                left == 0,
                "{left} records not acknowledged within {timeout:?}"
            );
            Ok(out)
        })
    }
}

/// The pods of the simulated cluster: 5 namespaces × 4 Deployments × 8 replicas, spread over the
/// exporters' nodes, each with the labels a Deployment's pods carry; every Deployment has a
/// Service of its name.
struct Pods {
    pods: Vec<proto::Endpoint>,
    ips: Vec<[u8; 4]>,
}

impl Pods {
    fn new(nodes: usize) -> Pods {
        const NAMESPACES: [&str; 5] = ["shop", "payments", "search", "batch", "monitoring"];
        const WORKLOADS: [&str; 4] = ["frontend", "api", "worker", "cache"];
        let mut pods = Vec::new();
        let mut ips = Vec::new();
        for (n, ns) in NAMESPACES.iter().enumerate() {
            for (w, wl) in WORKLOADS.iter().enumerate() {
                let hash = format!("{:010x}", (n * 31 + w * 7 + 0x5d9f_8c6b) * 2_654_435_761)[..10]
                    .to_string();
                for r in 0..8usize {
                    let k = pods.len();
                    let labels: BTreeMap<String, String> = [
                        ("app", wl.to_string()),
                        ("pod-template-hash", hash.clone()),
                        ("app.kubernetes.io/part-of", ns.to_string()),
                        ("version", format!("v{}", 1 + r % 3)),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    pods.push(proto::Endpoint {
                        kind: "pod".into(),
                        namespace: ns.to_string(),
                        pod: format!("{wl}-{hash}-{:05x}", (k * 7919) & 0xfffff),
                        uid: format!(
                            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                            (k * 2_654_435_761) & 0xffff_ffff,
                            (k * 40_503) & 0xffff,
                            k & 0xfff,
                            (k * 13) & 0xfff,
                            k * 1_000_003
                        ),
                        workload_kind: "Deployment".into(),
                        workload: wl.to_string(),
                        labels,
                        node: format!("node-{}", k % nodes.max(1)),
                        ..Default::default()
                    });
                    ips.push([10, 244, (n * 4 + w) as u8, 2 + r as u8]);
                }
            }
        }
        Pods { pods, ips }
    }
}

/// The flow records one exporter (agent on `node`) sends: a pod of its node talking to a pod
/// anywhere through that pod's Service (translated ClusterIP), reported by the source.
///
/// Written encoded, as the agent hands a flush's records to its exporter
/// (`ExporterHandle::send_encoded`), and cheaply: what a pair's records share (endpoints with
/// labels and Services, addresses, interface, node, translation) is encoded once per pair; each
/// record adds its own times, port and counts in front. Protobuf merges the two parts of a message
/// (they set disjoint fields), so each record decodes to the full record (tested). Building and
/// encoding a struct per record made the generator, not the system under test, the largest user
/// of the shared CPUs.
struct Records {
    pairs: Vec<Pair>,
    next: u64,
}

/// Who talks to whom: the fields every record of the pair has (the source and destination pods
/// and addresses, the address of the destination's Service, the ClusterIP the source used),
/// encoded.
struct Pair {
    encoded: Bytes,
}

impl Records {
    fn new(p: &Pods, exporter: usize, node: &str) -> Records {
        let local: Vec<usize> = (0..p.pods.len())
            .filter(|&k| p.pods[k].node == node)
            .collect();
        let interface = format!("cali{:011x}", exporter * 0x9e37_79b9);
        let mut pairs = Vec::new();
        for (i, &s) in local.iter().enumerate() {
            for j in 0..16 {
                let d = (s * 37 + j * 11 + i) % p.pods.len();
                let mut dst = p.pods[d].clone();
                dst.services = vec![proto::ServiceRef {
                    namespace: dst.namespace.clone(),
                    name: dst.workload.clone(),
                    port_name: "http".into(),
                    port: 80,
                }];
                let vip = [10, 96, (d / 32) as u8, (d % 32 / 8) as u8 + 10];
                let same_node = dst.node == node;
                let shared = proto::Flow {
                    src_ip: p.ips[s].to_vec(),
                    dst_ip: p.ips[d].to_vec(),
                    dst_port: 8080,
                    protocol: 6,
                    tcp_flags: 0x1b,
                    interfaces: vec![interface.clone()],
                    same_node,
                    sampling_rate: 1,
                    node: node.to_string(),
                    inter_node: !same_node,
                    plaintext_inter_node: !same_node,
                    src: Some(p.pods[s].clone()),
                    dst: Some(dst),
                    metadata_age: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 500_000_000,
                    }),
                    translation: Some(proto::Translation {
                        service_ip: vip.to_vec(),
                        service_port: 80,
                        ..Default::default()
                    }),
                    reporter: "SRC".into(),
                    ..Default::default()
                };
                pairs.push(Pair {
                    encoded: Bytes::from(shared.encode_to_vec()),
                });
            }
        }
        Records { pairs, next: 0 }
    }

    /// The fields of record `i` (ending at `end`) that are its own, and its pair.
    fn own(&self, i: u64, end: prost_types::Timestamp) -> (proto::Flow, &Pair) {
        let packets = 1 + i % 97;
        let own = proto::Flow {
            start_time: Some(prost_types::Timestamp {
                seconds: end.seconds - 1 - (i % 5) as i64,
                nanos: end.nanos,
            }),
            end_time: Some(end),
            src_port: 32_768 + (i % 28_000) as u32,
            packets,
            bytes: packets * 880 + i % 1500,
            ..Default::default()
        };
        (own, &self.pairs[(i % self.pairs.len() as u64) as usize])
    }

    /// `n` records ending now, each an encoded `FlowEvent`, slices of one buffer.
    fn chunk(&mut self, n: usize) -> Vec<Bytes> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let end = prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        };
        let mut buf = BytesMut::with_capacity(n * (self.pairs[0].encoded.len() + 48));
        let mut lengths = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let (own, pair) = self.own(i, end);
            let start = buf.len();
            // FlowEvent { flow (field 1, length-delimited) = own fields ++ the pair's }.
            buf.put_u8(0x0a);
            varint(&mut buf, (own.encoded_len() + pair.encoded.len()) as u64);
            own.encode_raw(&mut buf);
            buf.put_slice(&pair.encoded);
            lengths.push(buf.len() - start);
        }
        let buf = buf.freeze();
        let mut at = 0;
        lengths
            .into_iter()
            .map(|len| {
                at += len;
                buf.slice(at - len..at)
            })
            .collect()
    }
}

fn varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow::proto::flow_event::Event;

    #[test]
    fn records_are_fully_enriched_and_local_to_their_node() {
        let pods = Pods::new(4);
        assert_eq!(pods.pods.len(), 160);
        let mut r = Records::new(&pods, 1, "node-1");
        let encoded = r.chunk(1000);
        assert_eq!(encoded.len(), 1000);
        let events: Vec<proto::FlowEvent> = encoded
            .iter()
            .map(|e| proto::FlowEvent::decode(e.as_ref()).unwrap())
            .collect();
        let Some(Event::Flow(first)) = &events[0].event else {
            panic!("not a flow: {:?}", events[0]);
        };
        let end = first.end_time.unwrap();
        for (i, e) in events.iter().enumerate() {
            let Some(Event::Flow(f)) = &e.event else {
                panic!("not a flow: {e:?}");
            };
            // Exactly the record as a struct: the pair's fields with the record's own.
            let (own, pair) = r.own(i as u64, end);
            let mut want = proto::Flow::decode(pair.encoded.as_ref()).unwrap();
            want.start_time = own.start_time;
            want.end_time = own.end_time;
            want.src_port = own.src_port;
            want.packets = own.packets;
            want.bytes = own.bytes;
            assert_eq!(*f, want);
            let (src, dst) = (f.src.as_ref().unwrap(), f.dst.as_ref().unwrap());
            assert_eq!(src.node, "node-1");
            assert_eq!((src.labels.len(), dst.labels.len()), (4, 4));
            assert_eq!(dst.services.len(), 1);
            assert!(!src.uid.is_empty() && !dst.pod.is_empty());
            assert_eq!(f.reporter, "SRC");
            assert!(f.translation.is_some() && f.metadata_age.is_some());
            assert_eq!(f.same_node, dst.node == "node-1");
            assert!(f.packets > 0 && f.src_port >= 32_768);
        }
        // Distinct pod pairs and ports.
        let pairs: std::collections::HashSet<(String, String)> = events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Flow(f)) => {
                    Some((f.src.as_ref()?.pod.clone(), f.dst.as_ref()?.pod.clone()))
                }
                _ => None,
            })
            .collect();
        assert!(pairs.len() > 100, "{}", pairs.len());
    }
}

//! `podflow agent`'s command line and the configuration built from it, before anything runs.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

use super::AgentError;
use crate::{
    api::{self, ApiConfig},
    capture::{AttachModePref, CaptureConfig},
    conntrack::{ConntrackConfig, ConntrackMode},
    export::{ExporterConfig, TlsClientConfig},
    flows::FlowTableConfig,
    metadata::IndexConfig,
};

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Name of this node, put on every record.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Unix socket the API is served on (mode 0600).
    #[arg(long, default_value = crate::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:4245).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// How often the kernel maps are drained into records (VPC flow logs' shortest aggregation
    /// interval is 5s). At most 2^16 kernel ticks less 2 s (63s at HZ=1000, 260s at HZ=250): the
    /// flow maps keep 16 bits of the tick counter; aggregate longer in the collector.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// A flow not seen for this long is forgotten.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Count 1 in N packets (1 = every packet). Records carry the rate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_rate: u32,
    /// DNS server port: the DNS messages (UDP and TCP) to and from it are read and attached to
    /// the records (query name and type, response code, answers, latency); 0 turns it off.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Do not time TCP handshakes (SYN to SYN/ACK, on the client's records).
    #[arg(long)]
    pub no_tcp_handshakes: bool,
    /// Follow the packets the kernel drops: a BTF tracepoint on kfree_skb puts dropped packets,
    /// the kernel's reason and where (the node or the pod), on their flows' records. Off by
    /// default: it costs ~0.8 µs in the kernel per dropped packet of a new flow and ~1.6 µs of
    /// agent CPU per flow with drops (docs/BENCHMARKS.md), over the targets on a node that drops
    /// much.
    #[arg(long)]
    pub drops: bool,
    /// Read the smoothed RTT of TCP connections (a BTF tracepoint on tcp_probe: it runs for
    /// every TCP segment a socket of the node receives) onto the records (`tcp_srtt`). Off by
    /// default: its cost is per received segment (docs/BENCHMARKS.md).
    #[arg(long)]
    pub tcp_rtt: bool,
    /// Capacity of each kernel flow map, IPv4 and IPv6 (distinct flows per observation point and
    /// flush interval; 96 B per IPv4 and 120 B per IPv6 entry, preallocated).
    #[arg(long, default_value_t = podflow_ebpf::DEFAULT_FLOW_MAP_ENTRIES)]
    pub flow_map_entries: u32,
    /// Flows tracked in user space at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_flows: usize,
    /// Events kept for `tail --last N` and late subscribers.
    #[arg(long, default_value_t = 65_536)]
    pub buffer: usize,
    /// Memory the kept events may take at most (they are kept protobuf-encoded, ~100-1000 bytes
    /// each depending on the metadata); the oldest go first.
    #[arg(long, default_value_t = api::DEFAULT_BUFFER_BYTES)]
    pub buffer_bytes: usize,
    /// Pod veth name patterns (globs); repeat or comma-separate to give several.
    /// Default: veth*, cali*, lxc*, gke*.
    #[arg(long = "veth-pattern", value_delimiter = ',')]
    pub veth_patterns: Vec<String>,
    /// Layer-3 tunnel (WireGuard) interface patterns. Default: cilium_wg*, wg*.
    #[arg(long = "l3-pattern", value_delimiter = ',')]
    pub l3_patterns: Vec<String>,
    /// Interface name patterns never attached to, even if an include pattern matches.
    #[arg(long = "exclude", value_delimiter = ',')]
    pub exclude_patterns: Vec<String>,
    /// Serve gRPC health checking (grpc.health.v1.Health) on this TCP address, for kubelet probes.
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (GET /metrics) on this TCP address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Name endpoints from a static file: what `kubectl get pods,services,nodes -A -o json`
    /// prints. Re-read when it changes. For machines without a Kubernetes API.
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// Name endpoints from the Kubernetes API (in-cluster config or KUBECONFIG): `auto` uses it
    /// when running in a cluster (KUBERNETES_SERVICE_HOST) or KUBECONFIG is set.
    #[arg(long, value_enum, default_value_t = KubeMode::Auto)]
    pub kubernetes: KubeMode,
    /// How long a deleted or completed pod keeps naming its IP (covers the flush delay and
    /// late records of short-lived pods).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub tombstone_ttl: Duration,
    /// Push records to a collector (`host:port`, `https://host:port`, or a unix socket path).
    #[arg(long)]
    pub collector: Option<String>,
    /// CA that signs the collector's certificate: enables TLS with server verification.
    #[arg(long, requires = "collector")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext to a non-loopback collector.
    #[arg(long)]
    pub insecure: bool,
    /// Records per export batch.
    #[arg(long, default_value_t = 1000)]
    pub export_batch_size: usize,
    /// How long a partial batch waits for more records.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub export_linger: Duration,
    /// Records buffered while the collector is slow or down; beyond, the oldest are dropped and
    /// declared lost.
    #[arg(long, default_value_t = 100_000)]
    pub export_buffer: usize,
    /// Compression of the export stream.
    #[arg(long, value_enum, default_value_t = crate::export::Compression::Zstd)]
    pub export_compression: crate::export::Compression,
    /// The cluster's pod and service CIDRs (repeatable or comma-separated): an unowned address
    /// inside is `unknown`, outside `external`.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// How to attach: tcx where the kernel has it (≥ 6.6) else clsact + cls_bpf (auto), or force one.
    #[arg(long, value_enum, default_value_t = AttachModePref::Auto)]
    pub attach_mode: AttachModePref,
    /// Keep the kernel side across agent restarts, pinned under this directory of a BPF file
    /// system (e.g. /sys/fs/bpf/podflow): a restarted or upgraded agent adopts the maps and links
    /// and counts what the programs counted while no agent ran; on exit the programs stay
    /// attached (`podflow cleanup --pin-dir DIR` removes them). Unset: detached on exit.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<std::path::PathBuf>,
    /// Read the node's address translations (kube-proxy's Service DNAT, masquerade) from
    /// conntrack, so records name the backend behind a Service: `auto` has the programs look
    /// each new flow up (conntrack kfuncs) where the kernel lets them, else follows ctnetlink
    /// events; `on` refuses to start without either; `netlink` only follows ctnetlink events.
    #[arg(long, value_enum, default_value_t = ConntrackMode::Auto)]
    pub conntrack: ConntrackMode,
    /// Translated connections kept at most (~250 B each); beyond, new ones go untranslated and
    /// are counted (conntrack_table_full).
    #[arg(long, default_value_t = 131_072)]
    pub nat_table_entries: usize,
    /// Re-list interfaces this often, in case a netlink event was missed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    Auto,
    On,
    Off,
}

/// Where endpoint metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSource {
    /// `kubectl get pods,services,nodes -A -o json` output, re-read on change.
    File(PathBuf),
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kube,
}

/// Everything the agent needs to run, checked and resolved from [`AgentArgs`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub capture: CaptureConfig,
    pub table: FlowTableConfig,
    pub flush_interval: Duration,
    pub resync_interval: Duration,
    pub api: ApiConfig,
    /// Events kept for `tail --last` and late subscribers, and the bytes they may take.
    pub buffer: usize,
    pub buffer_bytes: usize,
    /// The metadata source and the index it fills; `None`: records carry addresses only.
    pub metadata: Option<(MetadataSource, IndexConfig)>,
    pub exporter: Option<ExporterConfig>,
    pub conntrack: ConntrackConfig,
    /// Follow the kernel's drops.
    pub drops: bool,
    /// Read the sockets' smoothed RTT.
    pub tcp_rtt: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub health_listen: Option<SocketAddr>,
}

impl AgentConfig {
    /// Resolves the flags: node name, interface patterns, metadata source, exporter.
    pub fn build(args: AgentArgs) -> Result<AgentConfig, AgentError> {
        let node = node_name(&args);
        let mut capture = CaptureConfig::default();
        if let Some(p) = non_empty(&args.veth_patterns) {
            capture.veth_patterns = p;
        }
        if let Some(p) = non_empty(&args.l3_patterns) {
            capture.l3_patterns = p;
        }
        capture.exclude_patterns = non_empty(&args.exclude_patterns).unwrap_or_default();
        capture.attach_mode = args.attach_mode;
        capture.flow_map_entries = args.flow_map_entries;
        capture.sample_rate = args.sample_rate;
        capture.dns_port = args.dns_port;
        capture.handshakes = !args.no_tcp_handshakes;
        capture.tracepoints = args.drops || args.tcp_rtt;
        capture.conntrack = args.conntrack.kernel_lookups();
        capture.pin_dir = args.pin_dir.clone();
        let metadata = metadata_source(&args).map(|source| {
            Ok::<_, AgentError>((
                source,
                IndexConfig {
                    tombstone_ttl: args.tombstone_ttl,
                    cluster_cidrs: cluster_cidrs(&args.cluster_cidr)?,
                    ..IndexConfig::default()
                },
            ))
        });
        let exporter = args.collector.as_ref().map(|collector| {
            let mut cfg = ExporterConfig::new(collector.clone(), node.clone());
            cfg.batch_size = args.export_batch_size;
            cfg.linger = args.export_linger;
            cfg.buffer_records = args.export_buffer;
            cfg.compression = args.export_compression;
            cfg.insecure = args.insecure;
            cfg.tls = args.tls_ca.clone().map(|ca| TlsClientConfig {
                ca,
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
                domain: None,
            });
            cfg
        });
        Ok(AgentConfig {
            table: FlowTableConfig {
                node: node.clone(),
                idle_timeout: args.idle_timeout,
                max_flows: args.max_flows,
                sampling_rate: args.sample_rate,
            },
            node,
            capture,
            flush_interval: args.flush_interval,
            resync_interval: args.resync_interval,
            api: ApiConfig {
                unix_socket: Some(args.socket.clone()),
                tcp: args.listen,
            },
            buffer: args.buffer,
            buffer_bytes: args.buffer_bytes,
            metadata: metadata.transpose()?,
            exporter,
            conntrack: ConntrackConfig {
                mode: args.conntrack,
                max_entries: args.nat_table_entries,
                // A destroyed entry's last packets are in the next drain at the latest.
                grace_ns: u64::try_from(
                    (2 * args.flush_interval + Duration::from_secs(10)).as_nanos(),
                )
                .unwrap_or(u64::MAX),
                // Found again by each drain with packets of the connection: kept for the drain
                // after the last (its records and the DNS and handshake trackers use it there).
                found_grace_ns: u64::try_from(
                    (2 * args.flush_interval + Duration::from_secs(1)).as_nanos(),
                )
                .unwrap_or(u64::MAX),
            },
            metrics_listen: args.metrics_listen,
            drops: args.drops,
            tcp_rtt: args.tcp_rtt,
            health_listen: args.health_listen,
        })
    }
}

fn node_name(args: &AgentArgs) -> String {
    if let Some(n) = args.node_name.as_ref().filter(|n| !n.is_empty()) {
        return n.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn non_empty(patterns: &[String]) -> Option<Vec<String>> {
    let p: Vec<String> = patterns
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!p.is_empty()).then_some(p)
}

/// The metadata source the flags ask for; `None` when there is none.
fn metadata_source(args: &AgentArgs) -> Option<MetadataSource> {
    if let Some(path) = &args.metadata_file {
        return Some(MetadataSource::File(path.clone()));
    }
    let kube = match args.kubernetes {
        KubeMode::On => true,
        KubeMode::Off => false,
        KubeMode::Auto => {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                || std::env::var_os("KUBECONFIG").is_some()
        }
    };
    kube.then_some(MetadataSource::Kube)
}

/// `--cluster-cidr` values: prefixes, or addresses (a host prefix); host bits are cleared.
fn cluster_cidrs(values: &[String]) -> Result<Vec<IpNet>, AgentError> {
    values
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| AgentError::ClusterCidr(c.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn build(flags: &[&str]) -> Result<AgentConfig, AgentError> {
        let cli = Cli::try_parse_from(std::iter::once("agent").chain(flags.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        AgentConfig::build(cli.args)
    }

    #[test]
    fn flags_become_the_configuration() {
        let cfg = build(&[
            "--node-name",
            "n1",
            "--veth-pattern",
            "lxc*, ,gke*",
            "--metadata-file",
            "/m.json",
            "--kubernetes",
            "on",
            "--cluster-cidr",
            "10.96.0.5/12,fd00::/48",
            "--collector",
            "c:4246",
            "--sample-rate",
            "4",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.capture.veth_patterns, ["lxc*", "gke*"]);
        assert_eq!(
            cfg.capture.l3_patterns,
            CaptureConfig::default().l3_patterns
        );
        assert_eq!((cfg.capture.sample_rate, cfg.table.sampling_rate), (4, 4));
        let (source, index) = cfg.metadata.unwrap_or_else(|| panic!("metadata"));
        // A file wins over the API.
        assert_eq!(source, MetadataSource::File("/m.json".into()));
        let cidrs: Vec<String> = index
            .cluster_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "fd00::/48"]);
        assert_eq!(cfg.exporter.map(|e| e.node), Some("n1".to_owned()));
    }

    #[test]
    fn no_source_no_metadata_and_bad_cidrs_are_named() {
        let cfg = build(&["--kubernetes", "off"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.metadata.is_none() && cfg.exporter.is_none());
        for bad in ["10.0.0.0/33", "ten/8", "10.0.0.0/x"] {
            let err = build(&["--kubernetes", "on", "--cluster-cidr", bad]).err();
            assert_eq!(
                err.map(|e| e.to_string()),
                Some(format!("invalid --cluster-cidr {bad:?}"))
            );
        }
        assert_eq!(
            build(&["--kubernetes", "on", "--cluster-cidr", "10.1.2.3"])
                .ok()
                .and_then(|c| c.metadata)
                .map(|(_, i)| i.cluster_cidrs[0].to_string()),
            Some("10.1.2.3/32".to_owned())
        );
    }
}

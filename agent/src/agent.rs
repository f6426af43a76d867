//! `podflow agent`: the run loop.
//!
//! One task owns the capture (kernel maps, attached programs) and the flow table; it reacts to
//! netlink link events, drains the kernel every flush interval, turns the entries into records and
//! hands them to the API hub. The gRPC server runs beside it. SIGTERM/SIGINT: a last drain (so
//! nothing counted is dropped), then detach exactly what was attached.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use podflow_ebpf::{COUNTER_COUNT, KernelCounter};
use tokio::{signal::unix::SignalKind, sync::oneshot};
use tracing::{info, warn};

use crate::{
    api::{self, ApiConfig, Hub},
    capture::{
        AttachModePref, Capture, CaptureConfig, CaptureError, FlowEntry, InterfaceChange,
        LinkWatcher,
    },
    flows::{FlowTable, FlowTableConfig},
    metadata, proto,
    report::error_chain,
    time::{Clock, timestamp_from_unix_ns},
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

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid --cluster-cidr {0:?}")]
    ClusterCidr(String),
    #[error("capture failed")]
    Capture {
        #[source]
        source: CaptureError,
    },
    #[error("api server failed")]
    Api {
        #[source]
        source: api::ApiError,
    },
    #[error("exporter")]
    Export {
        #[source]
        source: crate::export::ExportError,
    },
    #[error("insufficient privileges")]
    Privileges {
        #[source]
        source: crate::privileges::PrivilegeError,
    },
    #[error("metrics endpoint failed")]
    Metrics {
        #[source]
        source: crate::metrics::MetricsError,
    },
    #[error("health endpoint on {addr} failed")]
    Health {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "--flush-interval {}s is longer than the {}s the kernel's tick rate allows (the flow maps keep 16 bits of jiffies)",
        .interval.as_secs(),
        .max.as_secs()
    )]
    FlushInterval { interval: Duration, max: Duration },
    #[error("installing signal handlers failed")]
    Signal {
        #[source]
        source: std::io::Error,
    },
}

impl From<CaptureError> for AgentError {
    fn from(source: CaptureError) -> Self {
        AgentError::Capture { source }
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

/// Loss and informational counters of user space and kernel, as reported in the status.
struct Counters {
    kernel: [u64; COUNTER_COUNT as usize],
    kernel_reported: [u64; COUNTER_COUNT as usize],
    /// Records flagged plaintext inter-node, and their bytes (scaled by the sampling rate).
    plaintext_inter_node_flows: u64,
    plaintext_inter_node_bytes: u64,
    /// The exporter's view, when exporting to a collector.
    export: Option<crate::export::ExportStats>,
}

pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    tune_allocator();
    crate::privileges::check().map_err(|source| AgentError::Privileges { source })?;
    let node = node_name(&args);
    let mut cfg = CaptureConfig::default();
    if let Some(p) = non_empty(&args.veth_patterns) {
        cfg.veth_patterns = p;
    }
    if let Some(p) = non_empty(&args.l3_patterns) {
        cfg.l3_patterns = p;
    }
    cfg.exclude_patterns = non_empty(&args.exclude_patterns).unwrap_or_default();
    cfg.attach_mode = args.attach_mode;
    cfg.flow_map_entries = args.flow_map_entries;
    cfg.sample_rate = args.sample_rate;

    let mut capture = Capture::load(cfg)?;
    let max = capture.max_flush_interval();
    if args.flush_interval > max {
        return Err(AgentError::FlushInterval {
            interval: args.flush_interval,
            max,
        });
    }
    // Subscribe before listing, so a veth created in between is not missed until the re-sync.
    let mut links = LinkWatcher::new()?;
    for change in capture.sync_interfaces()? {
        log_change(&change);
    }
    let mut table = FlowTable::new(FlowTableConfig {
        node: node.clone(),
        idle_timeout: args.idle_timeout,
        max_flows: args.max_flows,
        sampling_rate: args.sample_rate,
    });

    let hub = Hub::with_limits(args.buffer, args.buffer_bytes, args.buffer);
    let started = Clock::now();
    let start_time =
        timestamp_from_unix_ns(i128::from(started.mono_now_ns) + started.realtime_offset_ns);
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let api_cfg = ApiConfig {
        unix_socket: Some(args.socket.clone()),
        tcp: args.listen,
    };
    let api_task = tokio::spawn(api::serve(hub.clone(), api_cfg, async move {
        let _ = api_stopped.await;
    }));
    let (stop_aux, aux_stopped) = tokio::sync::watch::channel(false);
    let index = start_metadata(&args, &node, &aux_stopped)?;
    let exporter = match &args.collector {
        Some(collector) => {
            let mut cfg = crate::export::ExporterConfig::new(collector.clone(), node.clone());
            cfg.batch_size = args.export_batch_size;
            cfg.linger = args.export_linger;
            cfg.buffer_records = args.export_buffer;
            cfg.compression = args.export_compression;
            cfg.insecure = args.insecure;
            cfg.tls = args
                .tls_ca
                .clone()
                .map(|ca| crate::export::TlsClientConfig {
                    ca,
                    cert: args.tls_cert.clone(),
                    key: args.tls_key.clone(),
                    domain: None,
                });
            info!(collector = %collector, tls = cfg.tls.is_some(), "exporting to a collector");
            Some(crate::export::spawn(cfg).map_err(|source| AgentError::Export { source })?)
        }
        None => None,
    };
    let metrics = crate::metrics::Metrics::new();
    let mut aux_tasks = Vec::new();
    if let Some(addr) = args.metrics_listen {
        let mut rx = aux_stopped.clone();
        let m = metrics.clone();
        aux_tasks.push(tokio::spawn(async move {
            crate::metrics::serve_metrics(m, addr, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|source| AgentError::Metrics { source })
        }));
    }
    if let Some(addr) = args.health_listen {
        let mut rx = aux_stopped.clone();
        aux_tasks.push(tokio::spawn(async move {
            serve_health(addr, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }));
    }

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|source| AgentError::Signal { source })?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
        .map_err(|source| AgentError::Signal { source })?;
    let mut flush = tokio::time::interval(args.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    let mut resync = tokio::time::interval(args.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;

    let mut counters = Counters {
        kernel: [0; COUNTER_COUNT as usize],
        kernel_reported: [0; COUNTER_COUNT as usize],
        plaintext_inter_node_flows: 0,
        plaintext_inter_node_bytes: 0,
        export: None,
    };
    let status =
        |capture: &Capture, table: &FlowTable, counters: &Counters| proto::GetStatusResponse {
            node: node.clone(),
            version: crate::VERSION.to_string(),
            start_time: Some(start_time),
            interfaces: capture
                .interfaces()
                .into_iter()
                .map(|i| proto::Interface {
                    name: i.name,
                    ifindex: i.ifindex,
                    kind: i.kind.as_str().to_string(),
                    attach_mode: i.mode.as_str().to_string(),
                })
                .collect(),
            flows_active: table.active_flows() as u64,
            flush_interval_ms: u32::try_from(args.flush_interval.as_millis()).unwrap_or(u32::MAX),
            sampling_rate: args.sample_rate,
            flow_map_capacity: capture.flow_map_capacity(),
            counters: status_counters(counters, table),
            buffered_events: 0,
            agents: Vec::new(),
        };
    hub.set_status(status(&capture, &table, &counters));
    info!(node = %node, socket = %args.socket.display(), interfaces = capture.interfaces().len(), "podflow agent running");

    let mut entries = Vec::new();
    let outputs = Outputs {
        node: &node,
        hub: &hub,
        index: index.as_ref(),
        metrics: &metrics,
        exporter: exporter.as_ref(),
    };
    let mut links_open = true;
    loop {
        tokio::select! {
            ev = links.next(), if links_open => match ev {
                Some(ev) => match capture.handle_link_event(ev) {
                    Ok(changes) => {
                        apply_changes(&changes, &mut table);
                        if !changes.is_empty() {
                            hub.set_status(status(&capture, &table, &counters));
                        }
                    }
                    // The interface is retried at the next re-sync.
                    Err(e) => warn!(error = %error_chain(&e), "handling a link event failed"),
                },
                None => {
                    warn!("netlink link watch ended; relying on periodic re-sync");
                    links_open = false;
                }
            },
            _ = resync.tick() => match capture.sync_interfaces() {
                Ok(changes) => {
                    apply_changes(&changes, &mut table);
                    if !changes.is_empty() {
                        hub.set_status(status(&capture, &table, &counters));
                    }
                }
                Err(e) => warn!(error = %error_chain(&e), "interface re-sync failed"),
            },
            _ = flush.tick() => {
                flush_once(&mut capture, &mut table, &mut counters, &mut entries, &outputs);
                counters.export = exporter.as_ref().map(|e| e.stats());
                update_metrics(&metrics, &capture, &table, &counters);
                if let Some(age) = index.as_ref().and_then(|i| metadata::read_index(i).age()) {
                    metrics.set_metadata_age(age.as_secs_f64());
                }
                hub.set_status(status(&capture, &table, &counters));
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }

    // Last drain, so what was counted since the previous flush is not lost.
    flush_once(
        &mut capture,
        &mut table,
        &mut counters,
        &mut entries,
        &outputs,
    );
    capture.detach_all();
    if let Some(exporter) = exporter {
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        info!(
            acked = stats.acked_records,
            dropped = stats.dropped_total(),
            queued = stats.queue_depth,
            "exporter stopped"
        );
    }
    let _ = stop_api.send(());
    let _ = stop_aux.send(true);
    for t in aux_tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %error_chain(&e), "auxiliary endpoint failed"),
            Err(e) => warn!(error = %e, "auxiliary endpoint task panicked"),
        }
    }
    match api_task.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(AgentError::Api { source }),
        Err(e) => warn!(error = %e, "api task panicked"),
    }
    info!("podflow agent stopped");
    Ok(())
}

/// Allocations from this size on are mapped and unmapped on their own (see [`tune_allocator`]).
pub const MMAP_THRESHOLD: usize = 8 << 20;

/// glibc raises its mmap threshold to the size of every large block freed (up to 32 MiB), after
/// which the drain's and the flow table's buffers of tens of MiB come from the heap, and the heap
/// keeps what they leave as resident memory. A fixed threshold keeps them mapped and given back
/// when freed: with 100 000 active flows the agent's VmRSS went from 63.6 to 41.9 MiB. 8 MiB, not
/// less: the capture's 4 MiB batch buffers, allocated every drain, stay on the heap and reused
/// (at 1 MiB their page faults cost 0.6 µs per record at 10 000 new flows/s).
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; called before the busy threads
        // start allocating.
        let ok = unsafe {
            libc::mallopt(
                libc::M_MMAP_THRESHOLD,
                libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX),
            )
        };
        if ok != 1 {
            warn!("setting the allocator's mmap threshold failed; resident memory may be higher");
        }
    }
}

fn non_empty(patterns: &[String]) -> Option<Vec<String>> {
    let p: Vec<String> = patterns
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!p.is_empty()).then_some(p)
}

/// gRPC health checking for kubelet probes: "" (the process) and `podflow.v1.FlowService` are
/// SERVING once the agent runs (capture loaded, API being served).
async fn serve_health(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(
            "podflow.v1.FlowService",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_shutdown(addr, shutdown)
        .await
        .map_err(|source| AgentError::Health { addr, source })
}

fn update_metrics(
    metrics: &crate::metrics::Metrics,
    capture: &Capture,
    table: &FlowTable,
    counters: &Counters,
) {
    metrics.set_kernel_counters(&counters.kernel);
    metrics.set_user_loss("untracked_flows", table.untracked());
    if let Some(export) = &counters.export {
        metrics.set_export_queue_depth(usize::try_from(export.queue_depth).unwrap_or(usize::MAX));
        metrics.set_export_state(export.failures, export.dropped_total());
    }
    let ifaces = capture.interfaces();
    for kind in ["veth", "l3"] {
        metrics.set_interfaces(
            kind,
            ifaces.iter().filter(|i| i.kind.as_str() == kind).count(),
        );
    }
}

/// Starts the metadata source the flags ask for; `None` when there is none.
fn start_metadata(
    args: &AgentArgs,
    node: &str,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<metadata::SharedIndex>, AgentError> {
    let use_kube = match args.kubernetes {
        KubeMode::On => true,
        KubeMode::Off => false,
        KubeMode::Auto => {
            args.metadata_file.is_none()
                && (std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    || std::env::var_os("KUBECONFIG").is_some())
        }
    };
    if args.metadata_file.is_none() && !use_kube {
        return Ok(None);
    }
    let mut cluster_cidrs = Vec::new();
    for c in args.cluster_cidr.iter().filter(|c| !c.trim().is_empty()) {
        let (addr, len) = c.trim().split_once('/').unwrap_or((c.trim(), ""));
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| AgentError::ClusterCidr(c.clone()))?;
        let len: u8 = if len.is_empty() {
            if addr.is_ipv4() { 32 } else { 128 }
        } else {
            len.parse()
                .map_err(|_| AgentError::ClusterCidr(c.clone()))?
        };
        cluster_cidrs.push(
            metadata::IpNet::new(addr, len).ok_or_else(|| AgentError::ClusterCidr(c.clone()))?,
        );
    }
    let index = metadata::shared_index(metadata::IndexConfig {
        tombstone_ttl: args.tombstone_ttl,
        cluster_cidrs,
        ..Default::default()
    });
    let shutdown = {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(path) = args.metadata_file.clone() {
        let idx = index.clone();
        info!(file = %path.display(), "metadata from a static file");
        tokio::spawn(async move {
            if let Err(e) = metadata::run_file_source(path, idx, shutdown).await {
                warn!(error = %error_chain(&e), "metadata file source stopped; flows keep their last known names");
            }
        });
    } else {
        let cfg = metadata::KubeSourceConfig::new(node);
        let idx = index.clone();
        info!(node, "metadata from the Kubernetes API");
        tokio::spawn(async move {
            if let Err(e) = metadata::run_kube_source(cfg, idx, shutdown).await {
                warn!(error = %error_chain(&e), "kubernetes metadata source stopped; flows keep their last known names");
            }
        });
    }
    Ok(Some(index))
}

/// Where a flush's records go, and what names them.
struct Outputs<'a> {
    node: &'a str,
    hub: &'a Hub,
    index: Option<&'a metadata::SharedIndex>,
    metrics: &'a crate::metrics::Metrics,
    exporter: Option<&'a crate::export::ExporterHandle>,
}

/// Records are made, enriched, counted and published this many at a time: a flush of 100 000
/// flows never holds all of its records at once (they used to peak at ~100 MiB of short-lived
/// heap, which glibc kept as resident memory).
/// Small enough that a chunk's short-lived allocations are recycled by the allocator's per-thread
/// caches while still hot.
const FLUSH_CHUNK: usize = 256;

/// `entries`: the drain's buffer, kept from one flush to the next (empty between flushes).
fn flush_once(
    capture: &mut Capture,
    table: &mut FlowTable,
    counters: &mut Counters,
    entries: &mut Vec<FlowEntry>,
    out: &Outputs<'_>,
) {
    match tokio::task::block_in_place(|| capture.drain_into(entries)) {
        Ok((kernel, flip_ns)) => {
            counters.kernel = kernel;
            // Pods that only receive from other pods of the node are known from their veth's
            // slot (their packets are counted once, where they entered).
            for (ifindex, family, addr) in capture.veth_peers() {
                table.learn_local(family, &addr, ifindex, flip_ns);
            }
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "draining the flow maps failed");
            return;
        }
    }
    let clock = Clock::now();
    let wireguard = capture
        .interfaces()
        .iter()
        .any(|i| matches!(i.kind, crate::capture::IfaceKind::L3));
    let ifname = |ifindex| capture.interface_name(ifindex);
    let n = table.group(entries);
    let mut records = Vec::with_capacity(n.min(FLUSH_CHUNK));
    let mut from = 0;
    while from < n {
        let to = (from + FLUSH_CHUNK).min(n);
        table.records(entries, from..to, &clock, &ifname, &mut records);
        publish_records(&mut records, wireguard, counters, out);
        from = to;
    }
    table.evict(&clock);
    // Keep the allocation for the next flush, but not a burst's worth of it for ever.
    let len = entries.len();
    entries.clear();
    if entries.capacity() > 4 * len.max(FLUSH_CHUNK) {
        entries.shrink_to(2 * len.max(FLUSH_CHUNK));
    }
    let losses = loss_events(counters, out.node, &clock);
    if !losses.is_empty() {
        out.hub.publish_each(&losses);
        if let Some(exporter) = out.exporter {
            exporter.send(losses);
        }
    }
}

/// Enriches a chunk of records, counts them into the metrics and hands them to the hub and the
/// exporter; leaves `records` empty (its capacity is reused).
fn publish_records(
    records: &mut Vec<proto::Flow>,
    wireguard: bool,
    counters: &mut Counters,
    out: &Outputs<'_>,
) {
    if records.is_empty() {
        return;
    }
    let node = out.node;
    if let Some(index) = out.index {
        crate::flows::enrich::enrich(records, &metadata::read_index(index), node);
    }
    // Inter-node traffic that bypassed WireGuard on a node that has it.
    for r in records.iter_mut() {
        r.plaintext_inter_node = wireguard && r.inter_node && !r.encrypted;
        if r.plaintext_inter_node {
            counters.plaintext_inter_node_flows += 1;
            counters.plaintext_inter_node_bytes +=
                r.bytes.saturating_mul(u64::from(r.sampling_rate.max(1)));
        }
    }
    let mut batch = crate::metrics::FlowBatch::new();
    for r in records.iter() {
        let (src, dst) = (
            r.src.as_ref().map_or(("", "", ""), endpoint_names),
            r.dst.as_ref().map_or(("", "", ""), endpoint_names),
        );
        // An inter-node flow is recorded on both of its nodes; metrics summed over agents (and
        // the alerts on them) count it once, on the source's node.
        if r.inter_node && src.2 != node {
            continue;
        }
        let scale = u64::from(r.sampling_rate.max(1));
        batch.add(
            src.0,
            src.1,
            dst.0,
            dst.1,
            r.packets.saturating_mul(scale),
            r.bytes.saturating_mul(scale),
            crate::metrics::Locality::of(r.same_node, r.inter_node),
            r.encrypted,
        );
    }
    out.metrics.observe_flows(&batch);
    drop(batch);
    let events = records.drain(..).map(|f| proto::FlowEvent {
        event: Some(proto::flow_event::Event::Flow(f)),
    });
    match out.exporter {
        Some(exporter) => {
            let events: Vec<proto::FlowEvent> = events.collect();
            out.hub.publish_each(&events);
            exporter.send(events);
        }
        None => out.hub.publish_each(events),
    }
}

/// (namespace, workload, node) of an endpoint.
fn endpoint_names(e: &proto::Endpoint) -> (&str, &str, &str) {
    (&e.namespace, &e.workload, &e.node)
}

/// Loss records for every kernel loss counter that grew since the last report.
fn loss_events(counters: &mut Counters, node: &str, clock: &Clock) -> Vec<proto::FlowEvent> {
    let mut out = Vec::new();
    for c in KernelCounter::ALL {
        if !c.is_loss() {
            continue;
        }
        let i = c as usize;
        let delta = counters.kernel[i].saturating_sub(counters.kernel_reported[i]);
        counters.kernel_reported[i] = counters.kernel[i];
        if delta > 0 {
            out.push(proto::FlowEvent {
                event: Some(proto::flow_event::Event::Loss(proto::LossRecord {
                    time: Some(clock.to_timestamp(clock.mono_now_ns)),
                    node: node.to_string(),
                    reason: c.name().to_string(),
                    count: delta,
                    unit: "packets".into(),
                })),
            });
        }
    }
    out
}

fn status_counters(counters: &Counters, table: &FlowTable) -> Vec<proto::Counter> {
    let mut out: Vec<proto::Counter> = KernelCounter::ALL
        .iter()
        .map(|c| proto::Counter {
            name: c.name().to_string(),
            value: counters.kernel[*c as usize],
            loss: c.is_loss(),
            unit: "packets".into(),
        })
        .collect();
    out.push(proto::Counter {
        name: "plaintext_inter_node_flows".into(),
        value: counters.plaintext_inter_node_flows,
        loss: false,
        unit: "records".into(),
    });
    out.push(proto::Counter {
        name: "plaintext_inter_node_bytes".into(),
        value: counters.plaintext_inter_node_bytes,
        loss: false,
        unit: "bytes".into(),
    });
    if let Some(export) = &counters.export {
        // Always report the buffer-full reason, so its series exists before the first loss.
        let mut dropped = export.dropped_records.clone();
        dropped
            .entry(crate::export::EXPORT_BUFFER_FULL.to_string())
            .or_insert(0);
        for (reason, value) in dropped {
            out.push(proto::Counter {
                name: reason,
                value,
                loss: true,
                unit: "records".into(),
            });
        }
        for (name, value) in [
            ("export_acked_records", export.acked_records),
            ("export_queue_depth", export.queue_depth),
            ("export_failures", export.failures),
            ("export_connected", u64::from(export.connected)),
        ] {
            out.push(proto::Counter {
                name: name.into(),
                value,
                loss: false,
                unit: "records".into(),
            });
        }
    }
    out.push(proto::Counter {
        name: "untracked_flows".into(),
        value: table.untracked(),
        loss: false,
        unit: "records".into(),
    });
    out
}

fn apply_changes(changes: &[InterfaceChange], table: &mut FlowTable) {
    for change in changes {
        if let InterfaceChange::Detached(i) = change {
            table.forget_interface(i.ifindex);
        }
        log_change(change);
    }
}

fn log_change(change: &InterfaceChange) {
    match change {
        InterfaceChange::Attached(i) => {
            info!(interface = %i.name, ifindex = i.ifindex, kind = i.kind.as_str(), mode = i.mode.as_str(), "attached")
        }
        InterfaceChange::Detached(i) => {
            info!(interface = %i.name, ifindex = i.ifindex, "interface gone, forgotten")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    use crate::metrics::{Metrics, sample_value};

    fn endpoint(namespace: &str, workload: &str, node: &str) -> proto::Endpoint {
        proto::Endpoint {
            kind: "pod".into(),
            namespace: namespace.into(),
            workload: workload.into(),
            node: node.into(),
            ..Default::default()
        }
    }

    fn record(port: u32, inter_node: bool, src_node: &str) -> proto::Flow {
        proto::Flow {
            src_port: port,
            packets: 2,
            bytes: 100,
            sampling_rate: 4,
            inter_node,
            src: Some(endpoint("shop", "cart", src_node)),
            dst: Some(endpoint("shop", "db", "node-b")),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_chunk_is_counted_once_and_published_in_order() {
        let hub = Hub::new(100);
        let metrics = Metrics::new();
        let outputs = Outputs {
            node: "node-a",
            hub: &hub,
            index: None,
            metrics: &metrics,
            exporter: None,
        };
        let mut counters = Counters {
            kernel: [0; COUNTER_COUNT as usize],
            kernel_reported: [0; COUNTER_COUNT as usize],
            plaintext_inter_node_flows: 0,
            plaintext_inter_node_bytes: 0,
            export: None,
        };
        let mut records = vec![
            record(1, true, "node-a"),
            // Inter-node from the other node: its source's node counts it.
            record(2, true, "node-b"),
            record(3, false, "node-a"),
        ];
        let capacity = records.capacity();
        publish_records(&mut records, true, &mut counters, &outputs);
        assert!(records.is_empty());
        assert_eq!(records.capacity(), capacity);
        let ports: Vec<u32> = hub
            .subscribe(api::Query::default())
            .map(|e| match e.event {
                Some(proto::flow_event::Event::Flow(f)) => {
                    assert_eq!(f.plaintext_inter_node, f.inter_node);
                    f.src_port
                }
                _ => 0,
            })
            .collect()
            .await;
        assert_eq!(ports, [1, 2, 3]);
        // Both inter-node records bypassed WireGuard on this node; bytes scaled by the rate.
        assert_eq!(counters.plaintext_inter_node_flows, 2);
        assert_eq!(counters.plaintext_inter_node_bytes, 800);
        let t = metrics.encode().unwrap();
        let series = |locality: &str| {
            format!(
                "podflow_flow_packets_total{{src_namespace=\"shop\",src_workload=\"cart\",dst_namespace=\"shop\",dst_workload=\"db\",locality=\"{locality}\",encrypted=\"false\"}}"
            )
        };
        assert_eq!(sample_value(&t, &series("inter_node")), Some(8.0));
        assert_eq!(sample_value(&t, &series("other")), Some(8.0));
    }
}

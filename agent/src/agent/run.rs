//! The agent's run loop: start every part in order, react to link events, resync and flush on
//! their timers, and shut down (last flush, detach, stop the exporter and the servers).
use std::time::Duration;

use tokio::{signal::unix::SignalKind, sync::oneshot};
use tracing::{info, warn};

use super::{
    AgentConfig, AgentError, MetadataSource,
    flush::{Extras, Outputs, flush_once},
    status::{StatusInfo, Tallies, update_metrics},
};
use crate::{
    api::{self, Hub},
    capture::{Capture, InterfaceChange, LinkWatcher},
    conntrack::{Conntrack, ConntrackSource, LookupSwitch, pace::EventPacer},
    dns::{DnsConfig, DnsSource, DnsTracker},
    drops::{DropSource, RttSource},
    flows::FlowTable,
    handshake::{HandshakeConfig, HandshakeSource, HandshakeTracker},
    metadata,
    metrics::{self, Metrics},
    report::error_chain,
    time::Clock,
};

/// Runs the agent with a built configuration until SIGTERM or SIGINT.
pub(super) async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    tune_allocator();
    crate::privileges::check().map_err(|source| AgentError::Privileges { source })?;
    if let Some(socket) = &cfg.api.unix_socket {
        crate::privileges::check_socket_dir(socket)
            .map_err(|source| AgentError::Privileges { source })?;
    }
    // Before touching any filter: the filters of a live agent are not stale.
    // Nothing else runs yet: waiting here blocks no other task.
    let _lock = super::lock::acquire(Duration::from_secs(10))?;
    let mut capture = Capture::load(cfg.capture.clone())?;
    let max = capture.max_flush_interval();
    if cfg.flush_interval > max {
        return Err(AgentError::FlushInterval {
            interval: cfg.flush_interval,
            max,
        });
    }
    // Subscribe before listing, so a veth created in between is not missed until the re-sync.
    let mut links = LinkWatcher::new()?;
    capture.sync_interfaces()?;
    let mut table = FlowTable::new(cfg.table.clone());
    let found = capture.conntrack_events();
    let mut conntrack = tokio::task::block_in_place(|| Conntrack::start(cfg.conntrack, found))
        .map_err(|source| AgentError::Conntrack { source })?;
    let drops = if cfg.drops {
        match capture.follow_drops() {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %error_chain(&e), "drops: cannot follow the kernel's drops; records carry no dropped_packets");
                None
            }
        }
    } else {
        None
    };
    let rtt = if cfg.tcp_rtt {
        match capture.follow_rtt() {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(error = %error_chain(&e), "tcp rtt: cannot read the sockets' smoothed RTT; records carry no tcp_srtt");
                None
            }
        }
    } else {
        None
    };
    let mut extras = Extras {
        dns: DnsSource::new(capture.dns_events()?, DnsTracker::new(DnsConfig::default())),
        handshakes: HandshakeSource::new(
            capture.handshake_events()?,
            HandshakeTracker::new(HandshakeConfig::default()),
        ),
        drops: DropSource::new(drops),
        rtt: RttSource::new(rtt),
    };

    let hub = Hub::with_limits(cfg.buffer, cfg.buffer_bytes, cfg.buffer);
    let info = StatusInfo {
        node: cfg.node.clone(),
        start_time: {
            let now = Clock::now();
            now.to_timestamp(now.mono_now_ns)
        },
        flush_interval_ms: u32::try_from(cfg.flush_interval.as_millis()).unwrap_or(u32::MAX),
        sampling_rate: cfg.capture.sample_rate,
    };
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let api_task = tokio::spawn(api::serve(hub.clone(), cfg.api.clone(), async move {
        let _ = api_stopped.await;
    }));
    let (stop_aux, aux_stopped) = tokio::sync::watch::channel(false);
    let stopped = |rx: &tokio::sync::watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let index = cfg.metadata.clone().map(|(source, index_cfg)| {
        start_metadata(source, index_cfg, &cfg.node, stopped(&aux_stopped))
    });
    let exporter = match cfg.exporter.clone() {
        Some(ecfg) => {
            info!(collector = %ecfg.collector, tls = ecfg.tls.is_some(), "exporting to a collector");
            Some(crate::export::spawn(ecfg).map_err(|source| AgentError::Export { source })?)
        }
        None => None,
    };
    let metrics = Metrics::new();
    let mut aux_tasks = Vec::new();
    if let Some(addr) = cfg.metrics_listen {
        let (m, shutdown) = (metrics.clone(), stopped(&aux_stopped));
        aux_tasks.push(tokio::spawn(async move {
            metrics::serve_metrics(m, addr, shutdown)
                .await
                .map_err(|source| AgentError::Metrics { source })
        }));
    }
    if let Some(addr) = cfg.health_listen {
        aux_tasks.push(tokio::spawn(serve_health(addr, stopped(&aux_stopped))));
    }

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|source| AgentError::Signal { source })?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
        .map_err(|source| AgentError::Signal { source })?;
    let mut flush = tokio::time::interval(cfg.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    // Queued conntrack events are applied when there are some, at most every 100 ms (a flush
    // applies them too).
    let mut conntrack_pace = EventPacer::new(&conntrack);
    let mut resync = tokio::time::interval(cfg.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    // Whether conntrack tracks anything in the node's namespace, every second: the programs
    // look it up only then (see `LookupSwitch`).
    let mut ct_check = tokio::time::interval(Duration::from_secs(1));
    ct_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lookups = LookupSwitch::default();
    let kernel_ct = conntrack.stats().source == ConntrackSource::Kernel;
    if kernel_ct {
        switch_lookups(&mut capture, &mut conntrack, &mut lookups);
    }

    let mut tallies = Tallies::default();
    if let Some(reported) = capture.reported_before() {
        tallies.set_reported(reported);
    }
    hub.set_status(info.status(&capture, &table, &tallies));
    info!(node = %cfg.node, socket = ?cfg.api.unix_socket, interfaces = capture.interfaces().len(), "podflow agent running");

    let mut entries = Vec::new();
    let outputs = Outputs {
        node: &cfg.node,
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
                        if forget_detached(&changes, &mut table) {
                            hub.set_status(info.status(&capture, &table, &tallies));
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
            // Events are read in batches: often enough that the socket's buffer never fills,
            // seldom enough that a burst of connections costs a few wake-ups, not one each.
            woke = conntrack_pace.wait() => conntrack_pace.read(&mut conntrack, woke),
            () = conntrack.wait_found() => { conntrack.catch_up(); }
            _ = ct_check.tick(), if kernel_ct => switch_lookups(&mut capture, &mut conntrack, &mut lookups),
            // DNS messages likewise: read in batches while they come, never while quiet.
            () = extras.dns.wait() => extras.dns.read(),
            () = extras.handshakes.wait() => extras.handshakes.read(),
            _ = resync.tick() => match capture.sync_interfaces() {
                Ok(changes) => {
                    if forget_detached(&changes, &mut table) {
                        hub.set_status(info.status(&capture, &table, &tallies));
                    }
                }
                Err(e) => warn!(error = %error_chain(&e), "interface re-sync failed"),
            },
            _ = flush.tick() => {
                flush_once(&mut capture, &mut table, &mut conntrack, &mut extras, &mut tallies, &mut entries, &outputs);
                tallies.export = exporter.as_ref().map(|e| e.stats());
                tallies.conntrack = conntrack.stats();
                update_metrics(&metrics, &capture, &table, &tallies);
                if let Some(age) = index.as_ref().and_then(|i| metadata::read_index(i).age()) {
                    metrics.set_metadata_age(age.as_secs_f64());
                }
                hub.set_status(info.status(&capture, &table, &tallies));
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }

    // Last drain, so what was counted since the previous flush is not lost.
    flush_once(
        &mut capture,
        &mut table,
        &mut conntrack,
        &mut extras,
        &mut tallies,
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

/// Forgets the pods learned behind interfaces that went away; whether anything changed.
fn forget_detached(changes: &[InterfaceChange], table: &mut FlowTable) -> bool {
    for change in changes {
        if let InterfaceChange::Detached(i) = change {
            table.forget_interface(i.ifindex);
        }
    }
    !changes.is_empty()
}

/// Starts the metadata source and returns the index it fills.
fn start_metadata(
    source: MetadataSource,
    index_cfg: metadata::IndexConfig,
    node: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> metadata::SharedIndex {
    let index = metadata::shared_index(index_cfg);
    let idx = index.clone();
    match source {
        MetadataSource::File(path) => {
            info!(file = %path.display(), "metadata from a static file");
            tokio::spawn(metadata::run_file_source(path, idx, shutdown));
        }
        MetadataSource::Kube => {
            let cfg = metadata::KubeSourceConfig::new(node);
            info!(node, "metadata from the Kubernetes API");
            tokio::spawn(async move {
                if let Err(e) = metadata::run_kube_source(cfg, idx, shutdown).await {
                    warn!(error = %error_chain(&e), "kubernetes metadata source stopped; flows keep their last known names");
                }
            });
        }
    }
    index
}

/// Allocations from this size on are mapped and unmapped on their own (see `tune_allocator`).
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

/// gRPC health checking for kubelet probes: "" (the process) and `podflow.v1.FlowService` are
/// SERVING once the agent runs (capture loaded, API being served).
async fn serve_health(
    addr: std::net::SocketAddr,
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

/// Checks whether conntrack tracks connections in the node's namespace and switches the
/// programs' lookups accordingly (see [`LookupSwitch`]).
fn switch_lookups(capture: &mut Capture, conntrack: &mut Conntrack, lookups: &mut LookupSwitch) {
    let Some(on) = lookups.next(conntrack.check_tracking()) else {
        return;
    };
    match capture.set_conntrack_lookups(on) {
        Ok(()) => info!(on, "conntrack: the programs' lookups switched"),
        Err(e) => {
            lookups.failed();
            warn!(error = %error_chain(&e), "conntrack: switching the programs' lookups failed");
        }
    }
}

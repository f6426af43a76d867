//! `podflow advise network-policy`: least-privilege NetworkPolicies from the flows an agent or a
//! collector streams for a while ([`crate::policy::observe`] → [`crate::policy::generate`]).
//!
//! ```text
//! podflow advise network-policy --clickhouse http://clickhouse:8123 --since 7d -o policies.yaml
//! podflow advise network-policy --server collector:4246 --tls-ca ca.pem --for 10m > policies.yaml
//! podflow advise network-policy --for 30s --external-prefix 24 -o policies.yaml
//! ```
//!
//! From ClickHouse, the window is read aggregated: one row per pair of ends (a workload's pods
//! as one end), ports (every ephemeral port as one) and translation, counted once across nodes
//! (`counted`), so that a week of flows is a few thousand rows, not one per connection.
//!
//! The YAML goes to stdout (or `-o FILE`), with the report of what was not allowed as comments
//! at its top; a summary line goes to stderr.
use std::{collections::BTreeMap, io::Write as _, net::IpAddr, path::PathBuf, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize as _;
use thiserror::Error;

use super::{ClientTlsArgs, Server, TailError, connect, parse_server, rpc_error};
use crate::{
    clickhouse::{ClickHouseError, Client, Endpoint},
    metadata::FileSnapshot,
    policy::{
        NamedPort, NamespaceLabels, Protocol, audit,
        generate::{self, Evidence, Options, Peer, WorkloadKey},
        observe::{self, EPHEMERAL, Observations, Observer, Record},
    },
    proto::{self, flow_event::Event, flow_service_client::FlowServiceClient},
};

/// `podflow advise`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdviseCommand {
    /// One least-privilege NetworkPolicy per workload, from the flows observed over a window.
    NetworkPolicy(NetworkPolicyArgs),
}

/// `podflow advise network-policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkPolicyArgs {
    /// Agent or collector to read flows from for --for (as for `podflow tail`).
    #[arg(long, default_value = crate::DEFAULT_SOCKET, value_parser = parse_server)]
    pub server: Server,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// How long to observe the stream (30s, 10m, 2h): flows that end in that time.
    #[arg(
        long = "for",
        value_name = "DURATION",
        value_parser = humantime::parse_duration,
        required_unless_present = "clickhouse_url",
        conflicts_with = "clickhouse_url"
    )]
    pub duration: Option<Duration>,
    /// With --clickhouse: the window, a duration back from now (the flows that ended in it).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub connect: crate::clickhouse::ConnectArgs,
    /// Also the last N flows the server buffered before the window.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub last: u64,
    /// Aggregate outside IPv4 addresses to this prefix length in ipBlocks (32: one each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub external_prefix: u8,
    /// The same for IPv6 (128: one each).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub external_prefix_v6: u8,
    /// A kubectl `List` of the cluster's pods (and their ReplicaSets, Jobs; `kubectl get
    /// pods,replicasets,jobs -A -o json`): the pod specs' named ports, written by name in the
    /// rules and telling which end of a connection listens.
    #[arg(long, value_name = "FILE", conflicts_with = "kube")]
    pub metadata_file: Option<PathBuf>,
    /// The same from the Kubernetes API (in-cluster config, else KUBECONFIG), read once: pods,
    /// ReplicaSets and Jobs (metadata), and the namespaces' labels for --check.
    #[arg(long)]
    pub kube: bool,
    /// Audit instead of generating: would the NetworkPolicies in FILE (YAML: policies, or a
    /// List such as `kubectl get networkpolicy -A -o yaml` writes) allow the observed
    /// connections? Lists the ones they would deny and the rules nothing used.
    #[arg(long, value_name = "FILE", conflicts_with = "check_cluster")]
    pub check: Option<PathBuf>,
    /// Audit against the cluster's NetworkPolicies (Kubernetes API, as --kube).
    #[arg(long)]
    pub check_cluster: bool,
    /// Write the YAML (or the audit) here instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum AdviseError {
    #[error(transparent)]
    Stream(#[from] TailError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("unexpected answer from ClickHouse: {0}")]
    Answer(String),
    #[error("reading --metadata-file")]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error("reading the cluster from the Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("reading the policies of --check {path}")]
    Policies {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to write {what}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `podflow advise`.
pub async fn run_advise(command: AdviseCommand) -> Result<(), AdviseError> {
    let AdviseCommand::NetworkPolicy(args) = command;
    let client = if args.kube || args.check_cluster {
        Some(kube::Client::try_default().await?)
    } else {
        None
    };
    let (ports, namespaces) = match (&args.metadata_file, &client) {
        (Some(path), _) => (named_ports(file_snapshot(path)?), NamespaceLabels::new()),
        (None, Some(client)) if args.kube => {
            let (snapshot, namespaces) = cluster(client).await?;
            (named_ports(snapshot), namespaces)
        }
        _ => (NamedPorts::new(), NamespaceLabels::new()),
    };
    let (observations, records) = match (args.connect.endpoint()?, args.duration) {
        (Some(endpoint), _) => from_clickhouse(endpoint, &args, &ports).await?,
        (None, Some(duration)) => observe(&args, duration, &ports).await?,
        // clap requires one of them.
        (None, None) => (Observations::default(), 0),
    };
    let existing = match (&args.check, &client) {
        (Some(path), _) => Some((path.display().to_string(), read_policies(path)?)),
        (None, Some(client)) if args.check_cluster => Some((
            "the cluster's NetworkPolicies".to_owned(),
            list_all::<NetworkPolicy>(client).await?,
        )),
        _ => None,
    };
    if let Some((source, policies)) = existing {
        let report = audit::audit(
            &policies,
            &observations.workloads,
            &namespaces,
            &observations.observed,
        )
        .map_err(|e| AdviseError::Policies {
            path: PathBuf::from(&source),
            source: Box::new(e),
        })?;
        let mut text = format!(
            "podflow advise network-policy --check {source}: {records} flow records, {} \
             connections, {} policies\n",
            observations.observed.len(),
            policies.len()
        );
        text.push_str(&report.to_string());
        for u in &observations.undirected {
            text.push_str(&format!("not checked: {u}\n"));
        }
        write_out(&args, &text)?;
        eprintln!(
            "podflow: {} connection(s) allowed, {} denied, {} rule peer(s) unused",
            report.allowed,
            report.denied.len(),
            report.unused.len()
        );
        return Ok(());
    }
    let advice = generate::generate(
        &observations.workloads,
        &observations.observed,
        Options {
            external_prefix_v4: args.external_prefix,
            external_prefix_v6: args.external_prefix_v6,
        },
    );
    let text = render(&observations, &advice, records);
    write_out(&args, &text)?;
    let not_allowed = advice.findings.len() + observations.undirected.len();
    eprintln!(
        "podflow: {records} flow records, {} connections, {} policies; {not_allowed} \
         connection(s) or workload(s) not allowed (listed at the top of the YAML)",
        observations.observed.len(),
        advice.policies.len(),
    );
    Ok(())
}

/// Writes `text` to `-o FILE` or stdout.
fn write_out(args: &NetworkPolicyArgs, text: &str) -> Result<(), AdviseError> {
    let (what, result) = match &args.output {
        Some(path) => (path.display().to_string(), std::fs::write(path, text)),
        None => ("stdout".to_owned(), {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }),
    };
    result.map_err(|source| AdviseError::Write { what, source })
}

/// The NetworkPolicies of a YAML file: documents that are policies, or Lists of them.
fn read_policies(path: &std::path::Path) -> Result<Vec<NetworkPolicy>, AdviseError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| AdviseError::Policies {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(Box::new(e)))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| fail(Box::new(e)))?;
        if value.is_null() {
            continue;
        }
        let items = match value.get("items") {
            Some(serde_yaml::Value::Sequence(items)) => items.clone(),
            _ => vec![value],
        };
        for item in items {
            if item.get("kind").and_then(serde_yaml::Value::as_str) != Some("NetworkPolicy") {
                continue;
            }
            out.push(serde_yaml::from_value(item).map_err(|e| fail(Box::new(e)))?);
        }
    }
    Ok(out)
}

/// Reads flows for the window; returns them observed, and the number of flow records read.
async fn observe(
    args: &NetworkPolicyArgs,
    duration: Duration,
    ports: &NamedPorts,
) -> Result<(Observations, u64), TailError> {
    let mut client = FlowServiceClient::new(connect(&args.server, &args.tls).await?);
    let request = proto::GetFlowsRequest {
        number: args.last,
        follow: true,
        ..Default::default()
    };
    let mut events = client
        .get_flows(request)
        .await
        .map_err(|status| rpc_error(status, &args.tls))?
        .into_inner();
    let mut observer = Observer::new();
    let mut records = 0u64;
    let declared = |peer: &Peer, port, protocol| declares(ports, peer, port, protocol);
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            event = events.next() => match event {
                Some(Ok(proto::FlowEvent { event: Some(Event::Flow(flow)) })) => {
                    records += 1;
                    observer.add(&flow, &declared);
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => return Err(TailError::Rpc { status }),
                None => break,
            },
        }
    }
    Ok((
        observer.finish(&|w| ports.get(w).cloned().unwrap_or_default()),
        records,
    ))
}

/// Each workload's named container ports.
type NamedPorts = BTreeMap<WorkloadKey, Vec<NamedPort>>;

/// Whether `peer`'s pods declare `port`.
fn declares(ports: &NamedPorts, peer: &Peer, port: u16, protocol: Protocol) -> bool {
    let Peer::Workload(w) = peer else {
        return false;
    };
    ports
        .get(w)
        .is_some_and(|ps| ps.iter().any(|p| p.port == port && p.protocol == protocol))
}

/// A metadata file's pods, owners, Services and nodes.
fn file_snapshot(path: &std::path::Path) -> Result<FileSnapshot, AdviseError> {
    let bytes = std::fs::read(path).map_err(|source| crate::metadata::MetadataError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(crate::metadata::parse_kubectl_list(path, &bytes)?)
}

/// Every object of a kind, listed a page at a time.
async fn list_all<K>(client: &kube::Client) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    list_pages(&kube::Api::<K>::all(client.clone())).await
}

async fn list_pages<K>(api: &kube::Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut lp = kube::api::ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// The cluster as a metadata file would give it (pods, ReplicaSets and Jobs as owners), and the
/// namespaces' labels.
async fn cluster(client: &kube::Client) -> Result<(FileSnapshot, NamespaceLabels), AdviseError> {
    use k8s_openapi::api::{
        apps::v1::ReplicaSet,
        batch::v1::Job,
        core::v1::{Namespace, Pod},
    };
    let mut snapshot = FileSnapshot {
        pods: list_all::<Pod>(client)
            .await?
            .iter()
            .filter_map(crate::metadata::pod_info)
            .collect(),
        ..FileSnapshot::default()
    };
    for rs in list_all::<ReplicaSet>(client).await? {
        snapshot
            .owners
            .extend(crate::metadata::owner_info("ReplicaSet", &rs.metadata));
    }
    for job in list_all::<Job>(client).await? {
        snapshot
            .owners
            .extend(crate::metadata::owner_info("Job", &job.metadata));
    }
    let namespaces = list_pages(&kube::Api::<Namespace>::all(client.clone()))
        .await?
        .into_iter()
        .filter_map(|ns| Some((ns.metadata.name?, ns.metadata.labels.unwrap_or_default())))
        .collect();
    Ok((snapshot, namespaces))
}

/// The named ports of every workload of `snapshot`, the pods' workloads resolved by the agent's
/// own index (owner chains, Deployments by their ReplicaSets' hash).
fn named_ports(snapshot: FileSnapshot) -> NamedPorts {
    let pods: Vec<(Vec<IpAddr>, Vec<crate::metadata::ContainerPort>)> = snapshot
        .pods
        .iter()
        .map(|p| (p.ips.clone(), p.ports.clone()))
        .collect();
    let index = crate::metadata::shared_index(crate::metadata::IndexConfig::default());
    let now = std::time::SystemTime::now();
    crate::metadata::apply_snapshot(&index, snapshot, now, None);
    let index = crate::metadata::read_index(&index);
    let mut out = NamedPorts::new();
    for (ips, ports) in pods {
        let Some(ip) = ips.first() else { continue };
        let e = index.lookup(*ip, now);
        if e.kind != crate::metadata::EndpointKind::Pod || e.ambiguous {
            continue;
        }
        let key = WorkloadKey {
            namespace: e.namespace,
            kind: e.workload_kind,
            name: e.workload,
        };
        let named = out.entry(key).or_default();
        for p in ports {
            let port = NamedPort {
                name: p.name,
                port: p.port,
                protocol: Protocol::from_number(p.protocol),
            };
            if !named.contains(&port) {
                named.push(port);
            }
        }
    }
    for named in out.values_mut() {
        named.sort_by(|a, b| (a.port, &a.name).cmp(&(b.port, &b.name)));
    }
    out
}

/// The YAML with the report on top.
fn render(o: &Observations, advice: &generate::Advice, records: u64) -> String {
    let mut text = format!(
        "# podflow advise network-policy: {records} flow records, {} connections.\n",
        o.observed.len()
    );
    if o.duplicates > 0 {
        text.push_str(&format!(
            "# {} records were the other node's copy of an inter-node flow (counted once).\n",
            o.duplicates
        ));
    }
    if o.contradictions > 0 {
        text.push_str(&format!(
            "# {} records disagreed with their conversation on which end initiated (the \
             first record's answer kept).\n",
            o.contradictions
        ));
    }
    let report: Vec<String> = advice
        .findings
        .iter()
        .map(ToString::to_string)
        .chain(o.undirected.iter().map(ToString::to_string))
        .collect();
    if !report.is_empty() {
        text.push_str("# Report (not allowed by these policies):\n");
        for line in report {
            text.push_str(&format!("#   {line}\n"));
        }
    }
    text.push_str(&advice.yaml());
    text
}

/// The window's flows from ClickHouse, aggregated there (see the module documentation); returns
/// them observed, and the number of flow records they stand for.
async fn from_clickhouse(
    endpoint: Endpoint,
    args: &NetworkPolicyArgs,
    ports: &NamedPorts,
) -> Result<(Observations, u64), AdviseError> {
    let mut client = Client::new(endpoint, Duration::from_secs(300))?.use_database();
    let to = crate::time::realtime_ns() / 1_000_000_000 + 1;
    let from = to.saturating_sub(args.since.as_secs());
    let answer = client
        .query(
            &window_sql(from, to),
            None,
            &[("output_format_json_quote_64bit_integers", "0")],
        )
        .await?;
    let mut observer = Observer::new();
    let mut records = 0;
    let declared = |peer: &Peer, port, protocol| declares(ports, peer, port, protocol);
    for line in answer.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let row: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| AdviseError::Answer(format!("{e}: {}", String::from_utf8_lossy(line))))?;
        let record = record_of(&row).ok_or_else(|| {
            AdviseError::Answer(format!("a row without the expected columns: {row}"))
        })?;
        records += record.evidence.flows;
        observer.add_record(record, &declared);
    }
    Ok((
        observer.finish(&|w| ports.get(w).cloned().unwrap_or_default()),
        records,
    ))
}

/// The aggregation of the flows that ended in [from, to) (seconds): the ends as the observer
/// keys them (a pod's address dropped unless the pod is ambiguous, an ephemeral port as 0),
/// counted once across nodes.
fn window_sql(from: u64, to: u64) -> String {
    let (lo, hi) = (EPHEMERAL.start(), EPHEMERAL.end());
    let end = |p: &str| {
        format!(
            "{p}_kind, {p}_namespace, {p}_workload_kind, {p}_workload, {p}_pod, {p}_node, \
             {p}_ambiguous, `{p}_labels.key` AS {p}_label_keys, `{p}_labels.value` AS \
             {p}_label_values, if({p}_kind = 'pod' AND {p}_ambiguous = 0, '', {p}_ip) AS \
             {p}_addr, if({p}_port BETWEEN {lo} AND {hi}, 0, {p}_port) AS {p}_port_key"
        )
    };
    let keys = [
        "src_kind",
        "src_namespace",
        "src_workload_kind",
        "src_workload",
        "src_pod",
        "src_node",
        "src_ambiguous",
        "src_label_keys",
        "src_label_values",
        "src_addr",
        "src_port_key",
        "dst_kind",
        "dst_namespace",
        "dst_workload_kind",
        "dst_workload",
        "dst_pod",
        "dst_node",
        "dst_ambiguous",
        "dst_label_keys",
        "dst_label_values",
        "dst_addr",
        "dst_port_key",
        "protocol",
        "translated",
        "translation_reply",
    ];
    format!(
        "SELECT {}, {}, protocol, (translation_service_ip != '' OR translation_snat_ip != '') AS \
         translated, translation_reply, count() AS records, sum(bytes) AS bytes, \
         toUInt32(min(start_time)) AS first, toUInt32(max(end_time)) AS last FROM flows WHERE \
         end_time >= toDateTime({from}) AND end_time < toDateTime({to}) AND counted = 1 GROUP \
         BY {} FORMAT JSONEachRow",
        end("src"),
        end("dst"),
        keys.join(", ")
    )
}

/// A row of [`window_sql`] as a record.
fn record_of(row: &serde_json::Value) -> Option<Record> {
    let text = |k: &str| row.get(k)?.as_str().map(str::to_owned);
    // 18.16 may quote 64-bit numbers whatever the setting: accept both.
    let num = |k: &str| {
        let v = row.get(k)?;
        v.as_u64().or_else(|| v.as_str()?.parse().ok())
    };
    let labels = |p: &str| -> Option<crate::policy::Labels> {
        let keys = row.get(format!("{p}_label_keys"))?.as_array()?;
        let values = row.get(format!("{p}_label_values"))?.as_array()?;
        keys.iter()
            .zip(values)
            .map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
            .collect()
    };
    let end = |p: &str| -> Option<(crate::policy::generate::Peer, Option<crate::policy::Labels>)> {
        let e = proto::Endpoint {
            kind: text(&format!("{p}_kind"))?,
            namespace: text(&format!("{p}_namespace"))?,
            pod: text(&format!("{p}_pod"))?,
            workload_kind: text(&format!("{p}_workload_kind"))?,
            workload: text(&format!("{p}_workload"))?,
            node: text(&format!("{p}_node"))?,
            ambiguous: num(&format!("{p}_ambiguous"))? != 0,
            ..Default::default()
        };
        let ip = text(&format!("{p}_addr"))?.parse().ok();
        let labels = (e.kind == "pod").then(|| labels(p)).flatten();
        Some((observe::peer(Some(&e), ip), labels))
    };
    let (src, src_labels) = end("src")?;
    let (dst, dst_labels) = end("dst")?;
    let protocol = Protocol::from_number(u8::try_from(num("protocol")?).ok()?);
    let port = |k: &str| num(k).and_then(|p| u16::try_from(p).ok());
    Some(Record {
        src,
        src_port: port("src_port_key")?,
        dst,
        dst_port: port("dst_port_key")?,
        protocol,
        translated: (num("translated")? != 0).then(|| num("translation_reply") != Some(0)),
        src_labels,
        dst_labels,
        evidence: Evidence {
            flows: num("records")?,
            bytes: num("bytes")?,
            first: i64::try_from(num("first")?).ok()?,
            last: i64::try_from(num("last")?).ok()?,
        },
    })
}

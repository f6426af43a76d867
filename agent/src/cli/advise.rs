//! `podflow advise network-policy`: least-privilege NetworkPolicies from the flows an agent or a
//! collector streams for a while ([`crate::policy::observe`] → [`crate::policy::generate`]).
//!
//! ```text
//! podflow advise network-policy --server collector:4246 --tls-ca ca.pem --for 10m > policies.yaml
//! podflow advise network-policy --for 30s --external-prefix 24 -o policies.yaml
//! ```
//!
//! The YAML goes to stdout (or `-o FILE`), with the report of what was not allowed as comments
//! at its top; a summary line goes to stderr.
use std::{io::Write as _, path::PathBuf, time::Duration};

use futures::StreamExt as _;
use thiserror::Error;

use super::{ClientTlsArgs, Server, TailError, connect, parse_server, rpc_error};
use crate::{
    policy::{
        generate::{self, Options},
        observe::{Observations, Observer},
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
    /// Agent or collector to read flows from (as for `podflow tail`).
    #[arg(long, default_value = crate::DEFAULT_SOCKET, value_parser = parse_server)]
    pub server: Server,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// How long to observe (30s, 10m, 2h): flows that end in that time.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Also the last N flows the server buffered before the window.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub last: u64,
    /// Aggregate outside IPv4 addresses to this prefix length in ipBlocks (32: one each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub external_prefix: u8,
    /// The same for IPv6 (128: one each).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub external_prefix_v6: u8,
    /// Write the YAML here instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum AdviseError {
    #[error(transparent)]
    Stream(#[from] TailError),
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
    let (observations, records) = observe(&args).await?;
    let advice = generate::generate(
        &observations.workloads,
        &observations.observed,
        Options {
            external_prefix_v4: args.external_prefix,
            external_prefix_v6: args.external_prefix_v6,
        },
    );
    let text = render(&observations, &advice, records);
    let (what, result) = match &args.output {
        Some(path) => (path.display().to_string(), std::fs::write(path, &text)),
        None => ("stdout".to_owned(), {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }),
    };
    result.map_err(|source| AdviseError::Write { what, source })?;
    let not_allowed = advice.findings.len() + observations.undirected.len();
    eprintln!(
        "podflow: {records} flow records, {} connections, {} policies; {not_allowed} \
         connection(s) or workload(s) not allowed (listed at the top of the YAML)",
        observations.observed.len(),
        advice.policies.len(),
    );
    Ok(())
}

/// Reads flows for the window; returns them observed, and the number of flow records read.
async fn observe(args: &NetworkPolicyArgs) -> Result<(Observations, u64), TailError> {
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
    // No pod spec at hand here: ports are told by translation and port ranges.
    let declared = |_: &_, _, _| false;
    let deadline = tokio::time::sleep(args.duration);
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
    Ok((observer.finish(&|_| Vec::new()), records))
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

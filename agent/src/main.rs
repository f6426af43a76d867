//! `podflow`: the node agent and its command-line tools.
use clap::{Parser, Subcommand};
use podflow::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "podflow",
    version,
    about = "eBPF pod flow visibility for Kubernetes nodes"
)]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent in the current network namespace.
    Agent(podflow::agent::AgentArgs),
    /// Show flows from an agent (or collector), live with -f.
    Tail(podflow::cli::TailArgs),
    /// Show the agent's status: attached interfaces, active flows, every loss counter.
    Status(podflow::cli::StatusArgs),
    /// Receive flow records from agents, serve them to consumers, write them to files.
    Collector(podflow::collector::CollectorArgs),
    /// Ask the flows stored in ClickHouse the saved questions (top talkers, same-node traffic,
    /// plaintext inter-node flows, big transfers, losses).
    Query(podflow::cli::QueryArgs),
    /// Advice from the observed flows: `network-policy` writes least-privilege NetworkPolicies.
    #[command(subcommand)]
    Advise(podflow::cli::AdviseCommand),
    /// Remove what agents run with --pin-dir left in this network namespace (uninstall).
    Cleanup(CleanupArgs),
}

#[derive(clap::Args, Debug)]
struct CleanupArgs {
    /// The directory the agents were given as --pin-dir.
    #[arg(long, value_name = "DIR")]
    pin_dir: std::path::PathBuf,
}

/// Errors end the process with status 1 and one line on stderr: the error and its causes
/// ("failed to connect to …: transport error: … received fatal alert: CertificateRequired").
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", podflow::report::error_chain(err.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("podflow")
        .build()?;
    match cli.command {
        Command::Agent(args) => rt.block_on(podflow::agent::run(args))?,
        Command::Tail(args) => rt.block_on(podflow::cli::run_tail(args))?,
        Command::Status(args) => rt.block_on(podflow::cli::run_status(args))?,
        Command::Collector(args) => rt.block_on(podflow::collector::run(args))?,
        Command::Query(args) => rt.block_on(podflow::cli::run_query(args))?,
        Command::Advise(command) => rt.block_on(podflow::cli::run_advise(command))?,
        Command::Cleanup(args) => {
            let cleaned = podflow::capture::cleanup(&args.pin_dir)?;
            println!(
                "removed {} pinned layout(s) and {} podflow tc filter(s)",
                cleaned.layouts, cleaned.filters
            );
        }
    }
    Ok(())
}

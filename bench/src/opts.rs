//! The command line (clap) and the options of a run: the full run's figures or `--smoke`'s.
use std::{fmt::Display, path::PathBuf, str::FromStr};

use anyhow::Context as _;
use clap::Parser;
pub use podflow::export::Compression;

/// Measures podflow against the no-agent baseline inside network namespaces (root needed).
#[derive(Debug, Parser)]
// A flag given twice takes its last value.
#[command(name = "podflow-bench", args_override_self = true)]
struct Cli {
    /// One short pair of everything (CI): checks the harness end to end with the smaller figures
    /// given below, and never fails on the numbers.
    #[arg(long)]
    smoke: bool,

    /// Interleaved pairs of throughput blocks, of kernel-cost windows, churn runs and collector
    /// windows [default: 9, 7, 5 and 5; with --smoke 1].
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    pairs: Option<usize>,

    /// Seconds per iperf3 run [default: 5; with --smoke 1].
    #[arg(long, value_name = "N", value_parser = at_least_one::<u32>)]
    secs: Option<u32>,

    /// iperf3 runs of each kind (TCP, UDP) per throughput block; a block's figure is their mean
    /// [default: 1].
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    reps: Option<usize>,

    /// Measures some figure groups only (and never writes --doc): throughput (TCP and UDP
    /// ratios, A/A, empty program), hook (kernel ns per hook), pairs (both), churn (CPU per
    /// flow), rss (resident memory), map (map memory and loss), collector (records per second
    /// and CPU per record, agent export → collector → ClickHouse); comma-separated.
    #[arg(long, value_name = "GROUPS", value_parser = parse_groups)]
    only: Option<Groups>,

    /// The podflow binary [default: `podflow` next to this executable].
    #[arg(long, value_name = "PATH")]
    podflow: Option<PathBuf>,

    /// Distinct flows of the "many flows" kernel-cost window [default: 60000; with --smoke
    /// 20000].
    #[arg(long, value_name = "N")]
    many_flows: Option<u64>,

    /// Flow map capacity of the agent in the throughput and kernel-cost runs [default: four times
    /// --many-flows, rounded up to a power of two, at least 65536].
    #[arg(long, value_name = "N")]
    map_entries: Option<u32>,

    /// Writes the table, the machine and the command into the generated section of FILE
    /// (docs/BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    doc: Option<PathBuf>,

    /// Seconds of each collector window [default: 20; with --smoke 2].
    #[arg(long, value_name = "N", value_parser = at_least_one::<u32>)]
    collector_secs: Option<u32>,

    /// Exporters (agents) sending to the collector at once [default: 8, whose unacknowledged
    /// batches (16 × 1000 records each, the agent's defaults) exceed the collector's 100 000-row
    /// INSERTs; with --smoke 2].
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    exporters: Option<usize>,

    /// Events per export batch of each exporter [default: 1000, the agent's].
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    export_batch: Option<usize>,

    /// Compression of the export streams: none, gzip, zstd [default: zstd, the agent's].
    #[arg(long, value_name = "KIND", value_enum)]
    export_compression: Option<Compression>,

    /// Extra arguments of `podflow collector` in the collector windows, whitespace-separated
    /// (e.g. "--clickhouse-batch-rows 50000 --clickhouse-linger 200ms") [default: none, the
    /// collector's defaults].
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    collector_args: Option<String>,

    /// The command shown with the results [default: the command line as typed].
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    command: Option<String>,
}

/// A number of at least 1.
fn at_least_one<T>(s: &str) -> Result<T, String>
where
    T: FromStr + PartialOrd + From<u8>,
    T::Err: Display,
{
    let v: T = s.parse().map_err(|e| format!("{e}"))?;
    if v < T::from(1) {
        return Err("must be at least 1".to_string());
    }
    Ok(v)
}

/// A figure group (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// TCP and UDP ratios, A/A, the empty program.
    Throughput,
    /// Kernel ns per hook.
    Hook,
    /// Agent CPU per flow.
    Churn,
    /// Agent resident memory.
    Rss,
    /// Map memory and loss.
    Map,
    /// Records per second and CPU per record through the collector into ClickHouse.
    Collector,
    /// The extra kernel ns and agent CPU of DNS messages and TCP handshakes.
    Features,
}

impl Group {
    /// Every group by its name on the command line (`pairs` is an alias of `throughput,hook`).
    const NAMES: [(&'static str, Group); 7] = [
        ("throughput", Group::Throughput),
        ("hook", Group::Hook),
        ("churn", Group::Churn),
        ("rss", Group::Rss),
        ("map", Group::Map),
        ("collector", Group::Collector),
        ("features", Group::Features),
    ];

    /// Whether the group runs on the node of network namespaces (all but the collector, which
    /// runs on loopback in the root namespace).
    pub fn needs_bed(self) -> bool {
        self != Group::Collector
    }
}

/// The groups of one `--only` value.
#[derive(Debug, Clone)]
struct Groups(Vec<Group>);

fn parse_groups(s: &str) -> Result<Groups, String> {
    let mut groups = Vec::new();
    for name in s.split(',') {
        if name == "pairs" {
            groups.extend([Group::Throughput, Group::Hook]);
            continue;
        }
        let Some(&(_, g)) = Group::NAMES.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = Group::NAMES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown group {name} (groups: {})",
                names.join(",")
            ));
        };
        groups.push(g);
    }
    Ok(Groups(groups))
}

/// The options of a run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub smoke: bool,
    /// Interleaved pairs of throughput blocks (with / without the agent).
    pub pairs: usize,
    /// Interleaved pairs of kernel-cost windows (agent / empty program).
    pub hook_pairs: usize,
    /// Runs of each churn rate.
    pub churn_runs: usize,
    /// Seconds of each iperf3 run.
    pub iperf_secs: u32,
    /// iperf3 runs of each kind (TCP, UDP) per block; a block's figure is their mean.
    pub reps: usize,
    /// Seconds of the agent's idle window (CPU and wake-ups with no traffic).
    pub idle_secs: f64,
    /// Seconds of each generator window for the kernel cost.
    pub hook_secs: f64,
    /// Packets per second of the generator for the kernel cost.
    pub hook_rate: u64,
    /// Distinct flows of the "many flows" kernel cost window.
    pub many_flows: u64,
    /// Flow map capacity for the kernel cost windows (default: from `many_flows`).
    pub hook_map_entries: Option<u32>,
    /// Flow churn rates (new flows per second) and the window of each.
    pub churn_rates: Vec<u64>,
    pub churn_secs: f64,
    /// Seconds at the rate before a churn window (steady state: see
    /// [`crate::measure::churn::STEADY_WARMUP_SECS`]).
    pub churn_warmup_secs: f64,
    /// Active flows for the resident memory figure.
    pub rss_flows: u64,
    /// Flow map capacity for the 50 % occupancy loss figure.
    pub loss_map_entries: u32,
    /// The collector figure: windows, seconds of each, warm-up seconds, exporters, their batch
    /// size and compression, and extra `podflow collector` arguments.
    pub collector_windows: usize,
    pub collector_secs: u32,
    pub collector_warmup_secs: u32,
    pub exporters: usize,
    pub export_batch: usize,
    pub export_compression: Compression,
    pub collector_args: Vec<String>,
    pub podflow: PathBuf,
    pub doc: Option<PathBuf>,
    pub command: String,
    /// Figure groups to measure (`--only`); empty: all of them.
    pub only: Vec<Group>,
}

impl Opts {
    /// The options of this process's command line; exits (2) with clap's message on a bad one.
    pub fn from_args() -> anyhow::Result<Opts> {
        let typed: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Opts::new(Cli::parse(), &typed)
    }

    /// The defaults (the full run's or `--smoke`'s) with the command line's figures on top.
    /// `typed` is the command line after the program name, for the default `--command`.
    fn new(cli: Cli, typed: &[String]) -> anyhow::Result<Opts> {
        let podflow = match cli.podflow {
            Some(p) => p,
            None => {
                let exe = std::env::current_exe().context("current_exe")?;
                exe.parent()
                    .map(|d| d.join("podflow"))
                    .unwrap_or_else(|| PathBuf::from("podflow"))
            }
        };
        let command = cli.command.filter(|c| !c.is_empty()).unwrap_or_else(|| {
            std::iter::once("podflow-bench".to_string())
                .chain(typed.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let only = cli.only.map(|g| g.0).unwrap_or_default();
        let mut o = if cli.smoke {
            Opts {
                smoke: true,
                pairs: 1,
                hook_pairs: 1,
                churn_runs: 1,
                iperf_secs: 1,
                reps: 1,
                idle_secs: 1.0,
                hook_secs: 1.0,
                hook_rate: 50_000,
                many_flows: 20_000,
                hook_map_entries: None,
                churn_rates: vec![2_000, 10_000],
                churn_secs: 1.0,
                // The smoke checks the harness, not the steady state.
                churn_warmup_secs: 2.0,
                rss_flows: 10_000,
                loss_map_entries: 16_384,
                collector_windows: 1,
                collector_secs: 2,
                collector_warmup_secs: 1,
                exporters: 2,
                export_batch: 1000,
                export_compression: Compression::Zstd,
                collector_args: Vec::new(),
                podflow,
                doc: cli.doc,
                command,
                only,
            }
        } else {
            Opts {
                smoke: false,
                pairs: 9,
                hook_pairs: 7,
                // 5, as the method says (it used to follow --pairs, 7): the time goes to the
                // throughput pairs.
                churn_runs: 5,
                iperf_secs: 5,
                reps: 1,
                idle_secs: 10.0,
                hook_secs: 2.0,
                hook_rate: 100_000,
                many_flows: 60_000,
                hook_map_entries: None,
                churn_rates: vec![10_000, 100_000],
                churn_secs: 5.0,
                churn_warmup_secs: crate::measure::churn::STEADY_WARMUP_SECS,
                rss_flows: 100_000,
                loss_map_entries: 131_072,
                collector_windows: 5,
                collector_secs: 20,
                collector_warmup_secs: 10,
                exporters: 8,
                export_batch: 1000,
                export_compression: Compression::Zstd,
                collector_args: Vec::new(),
                podflow,
                doc: cli.doc,
                command,
                only,
            }
        };
        // --pairs sets the number of every kind of pair.
        if let Some(n) = cli.pairs {
            o.pairs = n;
            o.hook_pairs = n;
            o.churn_runs = n;
            o.collector_windows = n;
        }
        if let Some(secs) = cli.collector_secs {
            o.collector_secs = secs;
        }
        if let Some(n) = cli.exporters {
            o.exporters = n;
        }
        if let Some(n) = cli.export_batch {
            o.export_batch = n;
        }
        if let Some(c) = cli.export_compression {
            o.export_compression = c;
        }
        if let Some(args) = cli.collector_args {
            o.collector_args = args.split_whitespace().map(str::to_string).collect();
        }
        if let Some(secs) = cli.secs {
            o.iperf_secs = secs;
        }
        if let Some(reps) = cli.reps {
            o.reps = reps;
        }
        if let Some(n) = cli.many_flows {
            o.many_flows = n;
        }
        o.hook_map_entries = cli.map_entries.or(o.hook_map_entries);
        Ok(o)
    }

    /// Whether the run measures `group`.
    pub fn wants(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }

    /// Whether the run measures a group that needs the node of network namespaces.
    pub fn wants_bed(&self) -> bool {
        Group::NAMES
            .iter()
            .any(|&(_, g)| g.needs_bed() && self.wants(g))
    }

    /// The map capacity of the agent in the throughput and kernel-cost runs: room for two epochs
    /// of the many-flows window (one entry each, at the source veth's ingress), the map at most
    /// half full.
    pub fn hook_entries(&self) -> u32 {
        self.hook_map_entries
            .unwrap_or((self.many_flows * 4).next_power_of_two().max(65_536) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<Opts, String> {
        let cli = Cli::try_parse_from(std::iter::once("podflow-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let typed: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Opts::new(cli, &typed).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_full_and_smoke() {
        let o = opts(&[]).unwrap();
        assert!(!o.smoke);
        assert_eq!((o.pairs, o.hook_pairs, o.churn_runs), (9, 7, 5));
        assert_eq!((o.iperf_secs, o.reps, o.many_flows), (5, 1, 60_000));
        assert_eq!(o.churn_rates, [10_000, 100_000]);
        assert_eq!((o.rss_flows, o.loss_map_entries), (100_000, 131_072));
        assert_eq!(o.hook_entries(), 262_144);
        assert_eq!(o.command, "podflow-bench");
        assert!(o.podflow.ends_with("podflow"));
        assert!(o.doc.is_none() && o.only.is_empty());

        let o = opts(&["--smoke"]).unwrap();
        assert!(o.smoke);
        assert_eq!((o.pairs, o.hook_pairs, o.churn_runs), (1, 1, 1));
        assert_eq!((o.iperf_secs, o.reps, o.many_flows), (1, 1, 20_000));
        assert_eq!(o.churn_rates, [2_000, 10_000]);
        assert_eq!((o.rss_flows, o.loss_map_entries), (10_000, 16_384));
        assert_eq!(o.hook_entries(), 131_072);
        assert_eq!(
            (o.collector_windows, o.collector_secs, o.exporters),
            (1, 2, 2)
        );
        let o = opts(&[]).unwrap();
        assert_eq!(
            (o.collector_windows, o.collector_secs, o.exporters),
            (5, 20, 8)
        );
        assert_eq!(
            (
                o.export_batch,
                o.export_compression,
                o.collector_warmup_secs
            ),
            (1000, Compression::Zstd, 10)
        );
        assert!(o.collector_args.is_empty());
    }

    #[test]
    fn collector_flags() {
        let o = opts(&[
            "--pairs",
            "3",
            "--collector-secs",
            "7",
            "--exporters",
            "6",
            "--export-batch",
            "500",
            "--export-compression",
            "none",
            "--collector-args",
            "--clickhouse-batch-rows 50000  --clickhouse-linger 200ms",
        ])
        .unwrap();
        assert_eq!(
            (o.collector_windows, o.collector_secs, o.exporters),
            (3, 7, 6)
        );
        assert_eq!(
            (o.export_batch, o.export_compression),
            (500, Compression::None)
        );
        assert_eq!(
            o.collector_args,
            [
                "--clickhouse-batch-rows",
                "50000",
                "--clickhouse-linger",
                "200ms"
            ]
        );
        assert!(opts(&["--export-compression", "lz4"]).is_err());
        assert!(opts(&["--exporters", "0"]).is_err());
    }

    #[test]
    fn flags_override_the_defaults() {
        let o = opts(&[
            "--pairs",
            "3",
            "--smoke",
            "--secs",
            "2",
            "--reps",
            "4",
            "--many-flows",
            "100",
            "--map-entries",
            "4096",
            "--podflow",
            "/x/podflow",
            "--doc",
            "d.md",
        ])
        .unwrap();
        assert!(o.smoke);
        assert_eq!((o.pairs, o.hook_pairs, o.churn_runs), (3, 3, 3));
        assert_eq!((o.iperf_secs, o.reps, o.many_flows), (2, 4, 100));
        assert_eq!(o.hook_entries(), 4096);
        assert_eq!(o.podflow, PathBuf::from("/x/podflow"));
        assert_eq!(o.doc, Some(PathBuf::from("d.md")));
        assert_eq!(
            o.command,
            "podflow-bench --pairs 3 --smoke --secs 2 --reps 4 --many-flows 100 --map-entries 4096 --podflow /x/podflow --doc d.md"
        );
    }

    #[test]
    fn command_as_given_and_last_value_wins() {
        let o = opts(&[
            "--command",
            "cargo xtask bench --smoke",
            "--secs",
            "2",
            "--secs",
            "3",
        ])
        .unwrap();
        assert_eq!(o.command, "cargo xtask bench --smoke");
        assert_eq!(o.iperf_secs, 3);
        let o = opts(&["--command", "--looks-like-a-flag"]).unwrap();
        assert_eq!(o.command, "--looks-like-a-flag");
    }

    #[test]
    fn only_selects_groups() {
        let o = opts(&["--only", "pairs,map"]).unwrap();
        assert_eq!(o.only, [Group::Throughput, Group::Hook, Group::Map]);
        assert!(o.wants(Group::Hook) && !o.wants(Group::Churn));
        assert!(o.wants_bed() && !o.wants(Group::Collector));
        let o = opts(&["--only", "collector"]).unwrap();
        assert_eq!(o.only, [Group::Collector]);
        assert!(!o.wants_bed());
        assert!(opts(&["--only", "collector,rss"]).unwrap().wants_bed());
        let o = opts(&["--only", "churn", "--only", "rss"]).unwrap();
        assert_eq!(o.only, [Group::Rss]);
        let all = opts(&[]).unwrap();
        assert!(all.wants(Group::Churn) && all.wants(Group::Map));
        for bad in ["foo", "", "throughput,"] {
            let e = opts(&["--only", bad]).unwrap_err();
            assert!(e.contains("unknown group"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_numbers_and_flags_are_errors() {
        for args in [
            &["--pairs", "0"][..],
            &["--reps", "0"],
            &["--secs", "0"],
            &["--secs", "x"],
            &["--pairs"],
            &["--bogus"],
            &["extra"],
        ] {
            assert!(opts(args).is_err(), "{args:?}");
        }
        let e = opts(&["--pairs", "0"]).unwrap_err();
        assert!(e.contains("must be at least 1"), "{e}");
    }
}

//! Agent CPU per exported flow under flow churn (every packet a new flow), per churn rate.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use podflow_testbed::wait_for;

use crate::{
    agent::Agent,
    bed::{Bed, Flows},
    harness::{ChildGuard, log, sleep},
    opts::Opts,
};

/// The runs at one churn rate.
#[derive(Debug, Clone)]
pub struct Churn {
    /// New flows per second asked of the generator.
    pub rate: u64,
    /// Agent CPU µs per exported flow, records exported and new flows per second achieved, of
    /// each run.
    pub us_per_flow: Vec<f64>,
    pub records: Vec<f64>,
    pub achieved: Vec<f64>,
}

/// `o.churn_runs` runs of each churn rate, a fresh agent each.
pub fn run(o: &Opts, bed: &Bed) -> anyhow::Result<Vec<Churn>> {
    let mut out = Vec::new();
    for &rate in &o.churn_rates {
        let mut c = Churn {
            rate,
            us_per_flow: Vec::new(),
            records: Vec::new(),
            achieved: Vec::new(),
        };
        for i in 0..o.churn_runs {
            log(format!("churn {rate}/s, run {}/{}", i + 1, o.churn_runs));
            let (ns, r, a) = once(o, bed, rate)?;
            c.us_per_flow.push(ns / 1000.0);
            c.records.push(r);
            c.achieved.push(a);
        }
        out.push(c);
    }
    Ok(out)
}

/// CPU per exported flow at a churn of `rate` new flows per second (fresh agent). Returns
/// (ns per flow, records, achieved new flows/s).
fn once(o: &Opts, bed: &Bed, rate: u64) -> anyhow::Result<(f64, f64, f64)> {
    let entries = ((rate as f64 * 2.0 * 1.5) as u64)
        .next_power_of_two()
        .max(65_536) as u32;
    let agent = Agent::start(bed, &o.podflow, entries, "1s", &[])?;
    // Warm up (first flush, lazy allocations) outside the window.
    bed.generate(Flows::Unique { start: 0 }, rate, 1.0)?;
    sleep(Duration::from_millis(2_500))?;
    let (cpu0, rec0) = (agent.cpu_ns()?, agent.records_exported()?);
    // PODFLOW_BENCH_PERF=DIR: profile the agent during each churn window (perf record -g).
    let mut perf = match std::env::var_os("PODFLOW_BENCH_PERF") {
        Some(dir) => Some(ChildGuard::new(
            Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-F",
                    "499",
                    "-g",
                    "-p",
                    &agent.pid().to_string(),
                    "-o",
                ])
                .arg(PathBuf::from(dir).join(format!("churn-{rate}.data")))
                .args(["--", "sleep", &format!("{}", o.churn_secs + 2.5)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record")?,
        )),
        None => None,
    };
    let g = bed.generate(Flows::Unique { start: 1_000_000 }, rate, o.churn_secs)?;
    // Two flushes after the last packet: every flow of the window has become a record.
    sleep(Duration::from_millis(2_500))?;
    let (cpu1, rec1) = (agent.cpu_ns()?, agent.records_exported()?);
    if let Some(c) = perf.as_mut().and_then(ChildGuard::get_mut) {
        // perf stops by itself (sleep); bounded wait, then the guard kills it.
        let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            c.try_wait().ok().flatten()
        });
    }
    drop(perf);
    let lost = agent.counter("lost_map_full")?;
    agent.stop()?;
    let records = rec1 - rec0;
    ensure!(
        records > 0.0,
        "no flow records exported in the churn window"
    );
    ensure!(lost == 0, "lost_map_full = {lost} during churn at {rate}/s");
    Ok((
        (cpu1 - cpu0) as f64 / records,
        records,
        g.sent as f64 / g.secs,
    ))
}

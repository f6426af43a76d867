//! The figure groups, one module each, in the order they run; each returns numbers for
//! [`crate::report`] to turn into rows.
pub mod churn;
pub mod collector;
pub mod features;
pub mod hook;
pub mod map;
pub mod rss;
pub mod throughput;

use crate::{agent::Agent, bed::Bed, harness::log, opts::Opts};

/// What a run measured: a group `--only` left out is `None` (or empty).
#[derive(Default)]
pub struct Results {
    pub throughput: Option<throughput::Throughput>,
    pub hooks: Option<hook::Hooks>,
    pub churn: Vec<churn::Churn>,
    /// The churn with every other flow through a translated Service, without and with the
    /// metadata that names the pods and the Service.
    pub service_churn: Option<(churn::Churn, churn::Churn)>,
    pub rss: Option<rss::Rss>,
    pub map: Option<map::MapFigures>,
    pub collector: Option<collector::CollectorFigures>,
    pub features: Option<features::Features>,
}

/// Starts the agent (default 5 s flush) and waits until it settled (see [`Agent::settle`]).
/// Returns the agent and the seconds that took, `None` when it did not settle within the bound
/// (measured anyway, and reported).
fn start_settled(o: &Opts, bed: &Bed, entries: u32) -> anyhow::Result<(Agent, Option<f64>)> {
    start_settled_with(o, bed, entries, &[])
}

/// [`start_settled`] with extra agent arguments.
fn start_settled_with(
    o: &Opts,
    bed: &Bed,
    entries: u32,
    extra: &[&str],
) -> anyhow::Result<(Agent, Option<f64>)> {
    let agent = Agent::start(bed, &o.podflow, entries, "5s", extra)?;
    let (took, settled) = agent.settle()?;
    if !settled {
        log(format!(
            "the agent was still using CPU {:.1} s after attaching; measuring anyway",
            took.as_secs_f64()
        ));
    }
    Ok((agent, settled.then_some(took.as_secs_f64())))
}

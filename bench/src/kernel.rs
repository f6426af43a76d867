//! The kernel side: bpftool (program run statistics, names, maps), the tcx attachments of the
//! pod veths and the empty reference program ([`tcx`]), and the memory-latency probe
//! ([`memory`]).
mod memory;
mod tcx;

use std::process::{Command, Stdio};

use anyhow::{Context as _, ensure};
use serde_json::Value;

pub use memory::memory_latency_ns;
pub use tcx::{EmptyProg, attached_prog_ids};

/// `bpftool -j ARGS` (in the root namespace: program and map ids are global).
fn bpftool_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The ids of the loaded programs whose name starts with `prefix` (bpftool shows names cut at
/// 15 bytes).
pub fn prog_ids_named(prefix: &str) -> anyhow::Result<Vec<u32>> {
    let all = bpftool_json(&["prog", "show"])?;
    Ok(all
        .as_array()
        .map(|progs| {
            progs
                .iter()
                .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .filter_map(|p| p["id"].as_u64().and_then(|i| u32::try_from(i).ok()))
                .collect()
        })
        .unwrap_or_default())
}

fn prog_show(id: u32) -> anyhow::Result<Value> {
    bpftool_json(&["prog", "show", "id", &id.to_string()])
}

/// (run_time_ns, run_cnt) of each program.
pub fn prog_stats(ids: &[u32]) -> anyhow::Result<Vec<(u64, u64)>> {
    ids.iter()
        .map(|&id| {
            let v = prog_show(id)?;
            Ok((
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// The name of each program (`bpftool -j prog show id N` → name).
pub fn prog_names(ids: &[u32]) -> anyhow::Result<Vec<String>> {
    ids.iter()
        .map(|&id| {
            let v = prog_show(id)?;
            Ok(v["name"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

/// The ids of the maps the programs use (`bpftool -j prog show id N` → map_ids), sorted, each
/// once.
pub fn map_ids(prog_ids: &[u32]) -> anyhow::Result<Vec<u64>> {
    let mut map_ids = Vec::new();
    for &id in prog_ids {
        let v = prog_show(id)?;
        if let Some(a) = v["map_ids"].as_array() {
            map_ids.extend(a.iter().filter_map(Value::as_u64));
        }
    }
    map_ids.sort_unstable();
    map_ids.dedup();
    Ok(map_ids)
}

/// What `bpftool -j map show id N` says of a map.
#[derive(Debug, Clone)]
pub struct MapInfo {
    pub name: String,
    pub bytes_memlock: u64,
    pub max_entries: u64,
}

pub fn map_info(id: u64) -> anyhow::Result<MapInfo> {
    let v = bpftool_json(&["map", "show", "id", &id.to_string()])?;
    Ok(MapInfo {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        bytes_memlock: v["bytes_memlock"].as_u64().unwrap_or(0),
        max_entries: v["max_entries"].as_u64().unwrap_or(0),
    })
}

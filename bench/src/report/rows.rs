//! The rows of the table: each figure's value, target and details, from what was measured.
use std::collections::BTreeMap;

use super::{
    Row,
    stats::{Summary, fmt_range, kilo, summarize, summary},
};
use crate::{
    measure::{
        Results,
        churn::Churn,
        collector::CollectorFigures,
        features::Features,
        hook::Hooks,
        map::{MapFigures, MapMemory},
        rss::Rss,
        throughput::Throughput,
    },
    opts::Opts,
};

/// The rows of every figure measured, in the order of the table.
pub fn rows(o: &Opts, r: &Results) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if let Some(t) = &r.throughput {
        throughput_rows(o, t, &mut rows)?;
    }
    if let Some(h) = &r.hooks {
        hook_rows(o, h, &mut rows)?;
    }
    churn_rows(o, &r.churn, &mut rows)?;
    if let Some((plain, named)) = &r.service_churn {
        rows.push(service_churn_row(o, plain, false)?);
        rows.push(service_churn_row(o, named, true)?);
    }
    if let Some(m) = &r.rss {
        rows.push(rss_row(o, m));
    }
    if let Some(m) = &r.map {
        map_rows(o, m, &mut rows);
    }
    if let Some(c) = &r.collector {
        collector_rows(o, c, &mut rows)?;
    }
    if let Some(f) = &r.features {
        feature_rows(o, f, &mut rows)?;
    }
    Ok(rows)
}

/// The extra cost of each feature (issue 16): the medians over the pairs of (with − baseline),
/// with both sides' medians and the spread of the differences.
fn feature_rows(o: &Opts, f: &Features, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let diff = |pairs: &[(f64, f64)]| -> anyhow::Result<(Summary, Summary, Summary)> {
        let d: Vec<f64> = pairs.iter().map(|(b, w)| w - b).collect();
        let b: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let w: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        Ok((summarize(&d)?, summarize(&b)?, summarize(&w)?))
    };
    let rate = crate::measure::features::CHURN_RATE;
    for (name, feat, packet, base, kernel_limit, cpu_limit) in [
        (
            "dns",
            &f.dns,
            "DNS query to port 53 (copied into the DNS ring)",
            "the same bytes to port 5354",
            250.0,
            2.0,
        ),
        (
            "tcp_handshake",
            &f.handshakes,
            "TCP SYN (put into the handshake ring)",
            "a TCP segment with only ACK",
            100.0,
            1.0,
        ),
        (
            "drops",
            &f.drops,
            "dropped packet (the kfree_skb program's own run, against none)",
            "no drop program",
            150.0,
            1.0,
        ),
    ] {
        if feat.kernel_ns.is_empty() {
            continue;
        }
        let (d, b, w) = diff(&feat.kernel_ns)?;
        rows.push(Row {
            key: match name {
                "dns" => "kernel_ns_extra_dns",
                "drops" => "kernel_ns_extra_drop",
                _ => "kernel_ns_extra_tcp_handshake",
            },
            figure: format!(
                "extra kernel ns per packet: a {packet} against {base}, every packet a new flow, \
                 {} pairs of {} s windows",
                feat.kernel_ns.len(),
                o.hook_secs
            ),
            value: Some(d.median),
            unit: "ns",
            target: format!("≤ {kernel_limit} ns"),
            at_least: false,
            limit: kernel_limit,
            digits: 1,
            detail: format!(
                "difference {} ns; ns per run with {} against {}",
                fmt_range(&d, 1),
                fmt_range(&w, 1),
                fmt_range(&b, 1)
            ),
        });
        let (d, b, w) = diff(&feat.cpu_us_per_flow)?;
        rows.push(Row {
            key: match name {
                "dns" => "cpu_per_flow_extra_dns",
                "drops" => "cpu_per_flow_extra_drops",
                _ => "cpu_per_flow_extra_tcp_handshake",
            },
            figure: format!(
                "extra agent CPU per exported flow at {rate} new flows/s, every flow one {packet} \
                 against {base}, {} alternated runs each",
                feat.cpu_us_per_flow.len()
            ),
            value: Some(d.median),
            unit: "µs",
            target: format!("≤ {cpu_limit} µs"),
            at_least: false,
            limit: cpu_limit,
            digits: 2,
            detail: format!(
                "difference {} µs; µs per flow with {} against {}",
                fmt_range(&d, 2),
                fmt_range(&w, 2),
                fmt_range(&b, 2)
            ),
        });
    }
    if !f.rtt.kernel_ns.is_empty() {
        let (d, _, _) = diff(&f.rtt.kernel_ns)?;
        let (g, without, with) = diff(&f.rtt.cpu_us_per_flow)?;
        rows.push(Row {
            key: "kernel_ns_tcp_rtt",
            figure: format!(
                "kernel ns per received TCP segment of the tcp_probe program (`--tcp-rtt`), \
                 during a 2 s iperf3 TCP stream between the pods, {} pairs",
                f.rtt.kernel_ns.len()
            ),
            value: Some(d.median),
            unit: "ns",
            target: "≤ 150 ns".into(),
            at_least: false,
            limit: 150.0,
            digits: 1,
            detail: format!(
                "{} ns; the stream's rate without the agent {} Gbit/s, with the agent and \
                 --tcp-rtt {} Gbit/s (difference {}; one 2 s stream each, statistics off: the \
                 whole agent, not the RTT program alone)",
                fmt_range(&d, 1),
                fmt_range(&without, 2),
                fmt_range(&with, 2),
                fmt_range(&g, 2)
            ),
        });
    }
    Ok(())
}

/// "name 95.1 ns × 200000 runs, ..." (medians over the pairs) for each program.
fn per_prog_detail(m: &BTreeMap<String, Vec<(f64, u64)>>) -> String {
    m.iter()
        .filter_map(|(name, v)| {
            let ns: Vec<f64> = v.iter().map(|p| p.0).collect();
            let runs: Vec<f64> = v.iter().map(|p| p.1 as f64).collect();
            Some(format!(
                "{name} {} ns per run × {:.0} runs",
                fmt_range(&summary(&ns)?, 1),
                summary(&runs)?.median
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The throughput rows: TCP and UDP ratios, with the A/A ratio and the empty program.
fn throughput_rows(o: &Opts, t: &Throughput, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let s = summarize;
    let block = if o.reps > 1 {
        format!("mean of {} runs of {} s per block", o.reps, o.iperf_secs)
    } else {
        format!("one run of {} s per block", o.iperf_secs)
    };
    let settle = summary(&t.settle_secs).map_or_else(
        || "agent never quiet within 10 s of attaching".to_string(),
        |v| format!("agent quiet {} s after attaching", fmt_range(&v, 1)),
    );
    let idle = &t.idle;
    let (tb, ta, tr) = (s(&t.tcp_base)?, s(&t.tcp_agent)?, s(&t.tcp_ratio)?);
    rows.push(Row {
        key: "tcp_throughput_ratio",
        figure: format!(
            "single-stream TCP pod→pod, agent / no agent (iperf3 -J, {block})"
        ),
        value: Some(tr.median),
        unit: "",
        target: "≥ 0.98".into(),
        at_least: true,
        limit: 0.98,
        digits: 3,
        detail: format!(
            "ratio {}; A/A (no agent / no agent, same structure) {}; no agent {} Gbit/s; agent {} Gbit/s; empty tc program on the same hooks instead of the agent: {} Gbit/s, {} of the adjacent no-agent block; {}{}; agent idle (no traffic, 5 s flush): {:.1} ms CPU and {:.1} wake-ups/s over {:.0} s; CPU pressure (PSI some, the highest block of each pair) {} %",
            fmt_range(&tr, 3),
            fmt_range(&s(&t.tcp_aa)?, 3),
            fmt_range(&tb, 2),
            fmt_range(&ta, 2),
            fmt_range(&s(&t.tcp_empty)?, 2),
            fmt_range(&s(&t.tcp_empty_ratio)?, 3),
            settle,
            if t.unsettled > 0 {
                format!(" ({} times not within 10 s)", t.unsettled)
            } else {
                String::new()
            },
            idle.cpu_ns as f64 / 1e6,
            idle.wakeups as f64 / idle.secs.max(1e-9),
            idle.secs,
            summary(&t.pressure).map_or_else(|| "not available".to_string(), |v| fmt_range(&v, 0))
        ),
    });
    let (ub, ua, ur) = (s(&t.udp_base)?, s(&t.udp_agent)?, s(&t.udp_ratio)?);
    rows.push(Row {
        key: "udp64_pps_ratio",
        figure: format!(
            "UDP 64-byte packet rate, receiver side, agent / no agent (iperf3 -u -l 64 -b 0, {block})"
        ),
        value: Some(ur.median),
        unit: "",
        target: "≥ 0.92".into(),
        at_least: true,
        limit: 0.92,
        digits: 3,
        detail: format!(
            "ratio {}; A/A (no agent / no agent, same structure) {}; no agent {} kpps; agent {} kpps; empty tc program on the same hooks instead of the agent: {} kpps, {} of the adjacent no-agent block",
            fmt_range(&ur, 3),
            fmt_range(&s(&t.udp_aa)?, 3),
            fmt_range(&kilo(&ub), 0),
            fmt_range(&kilo(&ua), 0),
            fmt_range(&kilo(&s(&t.udp_empty)?), 0),
            fmt_range(&s(&t.udp_empty_ratio)?, 3),
        ),
    });
    Ok(())
}

/// The kernel-cost rows: ns per hook with established flows and with many flows.
fn hook_rows(o: &Opts, h: &Hooks, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let s = summarize;
    let (de, ae, ee) = (s(&h.diff_est)?, s(&h.agent_est)?, s(&h.empty_est)?);
    rows.push(Row {
        key: "hook_ns_established",
        figure: format!(
            "kernel ns per packet per hook minus empty tc program, 16 established flows ({} kpps)",
            o.hook_rate / 1000
        ),
        value: Some(de.median),
        unit: "ns",
        target: "≤ 40 ns".into(),
        at_least: false,
        limit: 40.0,
        digits: 1,
        detail: format!(
            "difference {}; podflow {} ns; empty {} ns (bpf stats run_time_ns/run_cnt); per podflow program: {}",
            fmt_range(&de, 1),
            fmt_range(&ae, 1),
            fmt_range(&ee, 1),
            per_prog_detail(&h.prog_est)
        ),
    });
    let (dm, am, em) = (s(&h.diff_many)?, s(&h.agent_many)?, s(&h.empty_many)?);
    rows.push(Row {
        key: "hook_ns_many_flows",
        figure: format!(
            "kernel ns per packet per hook minus empty tc program, {} distinct flows ({} kpps, 5 s flush)",
            o.many_flows,
            o.hook_rate / 1000
        ),
        value: Some(dm.median),
        unit: "ns",
        target: "≤ 200 ns".into(),
        at_least: false,
        limit: 200.0,
        digits: 1,
        detail: format!(
            "difference {}; podflow {} ns; empty {} ns; per podflow program: {}; flow maps of {} entries, lost_map_full {}; memory floor: one dependent random access into {} MiB with 4 KiB pages takes {:.0} ns here, a lookup makes two (bucket, element)",
            fmt_range(&dm, 1),
            fmt_range(&am, 1),
            fmt_range(&em, 1),
            per_prog_detail(&h.prog_many),
            h.entries,
            h.lost,
            h.mem_latency_bytes >> 20,
            h.mem_latency_ns
        ),
    });
    Ok(())
}

/// The CPU-per-flow rows: the first churn rate is the low churn, the next the high churn.
fn churn_rows(o: &Opts, churn: &[Churn], rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for (k, c) in churn.iter().enumerate() {
        let key = if k == 0 {
            "cpu_per_flow_low_churn"
        } else {
            "cpu_per_flow_high_churn"
        };
        rows.push(churn_row(o, c, key, "")?);
    }
    Ok(())
}

/// The CPU-per-flow row of the churn with every other flow through a translated Service.
fn service_churn_row(o: &Opts, c: &Churn, named: bool) -> anyhow::Result<Row> {
    let (key, what) = if named {
        (
            "cpu_per_flow_service_churn_named",
            " with every other one through a Service the node translates (the agent follows conntrack its default way), and metadata naming the pods and the Service (the other rows run without metadata)",
        )
    } else {
        (
            "cpu_per_flow_service_churn",
            " with every other one through a Service the node translates (the agent follows conntrack its default way)",
        )
    };
    churn_row(o, c, key, what)
}

/// A CPU-per-flow row: `what` says what the churn's flows are beyond new. The share of
/// translated records is given where there are any.
fn churn_row(o: &Opts, c: &Churn, key: &'static str, what: &str) -> anyhow::Result<Row> {
    let p = summarize(&c.us_per_flow)?;
    let r = summarize(&c.records)?;
    let a = summarize(&c.achieved)?;
    let share: Vec<f64> = (c.translated.iter().zip(&c.records))
        .map(|(t, r)| if *r > 0.0 { 100.0 * t / r } else { 0.0 })
        .collect();
    let translated = match summarize(&share) {
        Ok(s) if s.median > 0.0 => format!("; translated {} %", fmt_range(&s, 1)),
        _ => String::new(),
    };
    Ok(Row {
        key,
        figure: format!(
            "agent CPU (utime+stime) per exported flow, churn {} new flows/s{what}, {} s window after {} s at the rate (steady state)",
            c.rate, o.churn_secs, o.churn_warmup_secs
        ),
        value: Some(p.median),
        unit: "µs",
        target: "≤ 2 µs".into(),
        at_least: false,
        limit: 2.0,
        digits: 2,
        detail: format!(
            "{} µs; records per window {}{translated}; achieved {} flows/s{}",
            fmt_range(&p, 2),
            fmt_range(&r, 0),
            fmt_range(&a, 0),
            match summarize(&c.machine_us_per_flow) {
                Ok(m) => format!(
                    "; the whole machine's busy CPU (generator, kernel, agent) {} µs per flow",
                    fmt_range(&m, 2)
                ),
                Err(_) => String::new(),
            }
        ),
    })
}

/// The resident memory row.
fn rss_row(o: &Opts, m: &Rss) -> Row {
    let full = &m.full;
    Row {
        key: "agent_rss",
        figure: format!("agent VmRSS with {} active flows", o.rss_flows),
        value: Some(full.rss_kib as f64 / 1024.0),
        unit: "MiB",
        target: "≤ 64 MiB".into(),
        at_least: false,
        limit: 64.0,
        digits: 1,
        detail: format!(
            "flows_active {}; VmHWM {:.1} MiB; VmRSS right after attaching (no flows) {:.1} MiB; same run with --buffer 1024 (the replay buffer for tail --last, default 65536 events and at most 32 MiB encoded): {:.1} MiB; lost_map_full {}",
            full.flows_active,
            full.hwm_kib as f64 / 1024.0,
            full.idle_kib as f64 / 1024.0,
            m.small.rss_kib as f64 / 1024.0,
            full.lost_map_full
        ),
    }
}

/// The map rows: memory per flow, and loss at 50 % occupancy.
fn map_rows(o: &Opts, m: &MapFigures, rows: &mut Vec<Row>) {
    let mem = &m.memory;
    let (v4, v6) = (
        MapMemory::per_flow(mem.v4, mem.spill_v4),
        MapMemory::per_flow(mem.v6, mem.spill_v6),
    );
    rows.push(Row {
        key: "map_bytes_per_flow",
        figure: "kernel flow-map memory per flow ((bytes_memlock of FLOWS_Vn + SPILL_Vn) ÷ max_entries of FLOWS_Vn, n = 4 and 6; the larger)".into(),
        value: Some(v4.max(v6)),
        unit: "B",
        target: "≤ 128 B".into(),
        at_least: false,
        limit: 128.0,
        digits: 2,
        detail: format!(
            "IPv4 {v4:.2} B ({} B for {} entries + {} B spill map), IPv6 {v6:.2} B ({} B for {} entries + {} B spill map); one entry per flow and observation point, independent of the number of CPUs ({} here)",
            mem.v4.0,
            mem.v4.1,
            mem.spill_v4,
            mem.v6.0,
            mem.v6.1,
            mem.spill_v6,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        ),
    });
    rows.push(Row {
        key: "lost_at_half_occupancy",
        figure: format!(
            "lost_map_full with the flow map at 50 % occupancy ({} flows, one entry each, in {} entries)",
            o.loss_map_entries / 2,
            o.loss_map_entries
        ),
        value: Some(m.lost as f64),
        unit: "",
        target: "0".into(),
        at_least: false,
        limit: 0.0,
        digits: 0,
        detail: format!("records exported in the window: {}", m.records),
    });
}

/// The collector rows: records per second stored in ClickHouse, and the collector's CPU per
/// record with ClickHouse's and the exporters' beside it.
fn collector_rows(o: &Opts, c: &CollectorFigures, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let s = summarize;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let windows = format!(
        "{} window{} of {} s after {} s of warm-up",
        o.collector_windows,
        if o.collector_windows == 1 { "" } else { "s" },
        o.collector_secs,
        o.collector_warmup_secs
    );
    let check = format!(
        "after draining: {} records acknowledged, {} rows in ClickHouse, {} dropped, {} stored twice",
        c.total_acked, c.total_stored, c.dropped, c.duplicates
    );
    let rate = s(&c.stored_per_s)?;
    let rows_per_insert = summary(&c.rows_per_insert).map_or_else(
        || "no INSERT ended in a window".into(),
        |v| fmt_range(&v, 0),
    );
    rows.push(Row {
        key: "collector_records_per_s",
        figure: format!(
            "flow records per second through the collector into ClickHouse 18.16, sustained ({}; {windows}; exporters, collector and ClickHouse share the machine's {cores} CPUs)",
            c.setup
        ),
        value: Some(rate.median),
        unit: "/s",
        target: "≥ 100000 /s".into(),
        at_least: true,
        limit: 100_000.0,
        digits: 0,
        detail: format!(
            "stored (Δ count() of podflow.flows) {} /s; acknowledged to the exporters {} /s; rows per INSERT {}; machine busy {} % of {cores} CPUs; CPUs used: collector {}, ClickHouse {}, exporters {}, other processes {}; {check}",
            fmt_range(&rate, 0),
            fmt_range(&s(&c.acked_per_s)?, 0),
            rows_per_insert,
            fmt_range(&s(&c.machine_busy_pct)?, 0),
            fmt_range(&s(&c.collector_cpus)?, 2),
            fmt_range(&s(&c.clickhouse_cpus)?, 2),
            fmt_range(&s(&c.exporters_cpus)?, 2),
            fmt_range(&s(&c.other_cpus)?, 2),
        ),
    });
    let cpu = s(&c.collector_us)?;
    rows.push(Row {
        key: "collector_cpu_per_record",
        figure: format!(
            "collector CPU (utime+stime, all threads) per record stored, at the sustained rate ({windows})"
        ),
        value: Some(cpu.median),
        unit: "µs",
        target: "≤ 5 µs".into(),
        at_least: false,
        limit: 5.0,
        digits: 2,
        detail: format!(
            "collector {} µs; beside it, per record: ClickHouse server {} µs, exporters (the agents' export client in the bench process, and making the records) {} µs",
            fmt_range(&cpu, 2),
            fmt_range(&s(&c.clickhouse_us)?, 2),
            fmt_range(&s(&c.exporters_us)?, 2),
        ),
    });
    Ok(())
}

//! Scripted churn against the pure index: thousands of IP moves between pods (UIDs), deletes,
//! completed pods, out-of-order delivery across pods, outages followed by (sometimes stale)
//! re-lists. Every flow is looked up at its flush time and compared with the script's ground
//! truth: zero misattributions; ambiguous/unknown answers only where the script says the
//! available information cannot decide.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use podflow::metadata::{
    EndpointKind, IndexConfig, MetadataIndex, OwnerRef, Partition, PodInfo, PodPhase,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, a: u64, b: u64) -> u64 {
        a + self.below(b - a)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const BASE_SECS: u64 = 1_800_000_000;
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(BASE_SECS) + Duration::from_millis(ms)
}
fn floor_sec(ms: u64) -> u64 {
    ms - ms % 1000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Deleted,
    Completed { delete_ms: u64 },
}

#[derive(Debug)]
struct TruthPod {
    uid: String,
    ip: usize,
    partition: Partition,
    created_ms: u64,
    assign_ms: u64,
    release_ms: u64,
    end: End,
    precise: bool,
    reported_from_ms: u64,
    /// When the index learned the pod ended (delivery or re-list); u64::MAX: never.
    observed_end_ms: u64,
    /// The index ever saw it with its IP.
    visible: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Pending,
    Running,
    Terminal,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// Re-list of a partition (0 local, 1 remote) after outage `o`.
    Relist {
        outage: usize,
        partition: u8,
    },
    Event {
        pod: usize,
        change: Change,
    },
    Lookup {
        flow: usize,
        second: bool,
    },
    Maintain,
}

struct Outage {
    start: u64,
    end: u64,
    snapshot: u64,
}

#[derive(Debug)]
struct Flow {
    pod: usize,
    t: u64,
    query: u64,
}

fn ip_of(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10 + u8::try_from(i).unwrap()))
}

fn info(p: &TruthPod, change: Change) -> PodInfo {
    let with_ip = matches!(change, Change::Running | Change::Terminal | Change::Delete);
    PodInfo {
        uid: p.uid.clone(),
        namespace: "churn".into(),
        name: format!("pod-{}", p.uid),
        node: if p.partition == Partition::Local {
            "n1".into()
        } else {
            "n2".into()
        },
        host_network: false,
        ips: if with_ip { vec![ip_of(p.ip)] } else { vec![] },
        labels: BTreeMap::from([("app".to_owned(), "churn".to_owned())]),
        owner: Some(OwnerRef {
            kind: "Job".into(),
            name: format!("job-{}", p.uid),
        }),
        phase: match change {
            Change::Pending => PodPhase::Pending,
            Change::Running => PodPhase::Running,
            // only completed pods have a Terminal change (a deleted pod is still Running)
            Change::Terminal => PodPhase::Succeeded,
            Change::Delete => PodPhase::Running,
        },
        ip_since: with_ip.then(|| at(p.reported_from_ms)),
        ip_since_precise: with_ip && p.precise,
        ports: Vec::new(),
    }
}

/// The API object of `p` at time `x`, if it exists.
fn state_at(p: &TruthPod, x: u64) -> Option<Change> {
    if x < p.created_ms {
        return None;
    }
    let gone = match p.end {
        End::Deleted => p.release_ms,
        End::Completed { delete_ms } => delete_ms,
    };
    if x >= gone {
        return None;
    }
    Some(if x < p.assign_ms {
        Change::Pending
    } else if x < p.release_ms {
        Change::Running
    } else {
        Change::Terminal
    })
}

#[test]
fn churn_zero_misattributions() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const IPS: usize = 40;
    const HORIZON: u64 = 900_000; // 15 simulated minutes

    // Outages: every ~90 s, 5–20 s long; 40% are followed by a stale re-list (cache lag).
    let mut outages = Vec::new();
    let mut c = 60_000;
    while c < HORIZON - 60_000 {
        let start = c + rng.below(30_000);
        let end = start + rng.range(5_000, 20_000);
        let snapshot = if rng.chance(40) {
            end - rng.below(3_000).min(end - start)
        } else {
            end
        };
        outages.push(Outage {
            start,
            end,
            snapshot,
        });
        c = end + 60_000;
    }
    let outage_at = |x: u64| outages.iter().position(|o| x >= o.start && x < o.end);

    // Pods: per IP a sequence of owners; reuse gaps from 0 (same second) to 1.5 s.
    let mut pods: Vec<TruthPod> = Vec::new();
    for ip in 0..IPS {
        let mut cursor = rng.below(5_000);
        loop {
            let assign = cursor + rng.below(1_500);
            let job = rng.chance(30);
            let life = if job {
                rng.range(1_500, 2_500)
            } else {
                rng.range(1_000, 20_000)
            };
            let release = assign + life;
            if release + 30_000 > HORIZON {
                break;
            }
            let end = if job || rng.chance(25) {
                End::Completed {
                    delete_ms: release + rng.range(2_000, 20_000),
                }
            } else {
                End::Deleted
            };
            let precise = rng.chance(80);
            let reported = if precise {
                floor_sec(assign)
            } else {
                floor_sec(assign.saturating_sub(rng.below(2_000)))
            };
            pods.push(TruthPod {
                uid: format!("u{}", pods.len()),
                ip,
                partition: if pods.len().is_multiple_of(2) {
                    Partition::Local
                } else {
                    Partition::Remote
                },
                created_ms: assign.saturating_sub(rng.range(200, 3_000)),
                assign_ms: assign,
                release_ms: release,
                end,
                precise,
                reported_from_ms: reported,
                observed_end_ms: u64::MAX,
                visible: false,
            });
            cursor = release;
        }
    }
    assert!(pods.len() > 2_000, "{} pods", pods.len());

    // Schedule: events (per-pod order kept, cross-pod reordering by random lag up to 1.5 s),
    // outages cut delivery, re-lists at the end of each outage replay what happened after
    // their snapshot.
    let mut queue: BinaryHeap<Reverse<(u64, u64, Action)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Action)>>, t: u64, a: Action| {
        seq += 1;
        q.push(Reverse((t, seq, a)));
    };
    for (o, out) in outages.iter().enumerate() {
        for partition in 0..2 {
            push(
                &mut queue,
                out.end,
                Action::Relist {
                    outage: o,
                    partition,
                },
            );
        }
    }
    for (i, p) in pods.iter().enumerate() {
        let mut changes = vec![
            (p.created_ms, Change::Pending),
            (p.assign_ms, Change::Running),
        ];
        match p.end {
            End::Deleted => changes.push((p.release_ms, Change::Delete)),
            End::Completed { delete_ms } => {
                changes.push((p.release_ms, Change::Terminal));
                changes.push((delete_ms, Change::Delete));
            }
        }
        let mut last = 0;
        for (x, change) in changes {
            let deliver = match outage_at(x) {
                None => {
                    let mut d = x + rng.below(1_500);
                    // in flight when an outage starts: delivered before the cut
                    if let Some(o) = outages.iter().find(|o| x < o.start && d >= o.start) {
                        d = o.start;
                    }
                    d
                }
                Some(o) if x > outages[o].snapshot => outages[o].end, // replayed after the re-list
                Some(_) => continue,                                  // covered by the re-list
            };
            let deliver = deliver.max(last);
            last = deliver;
            push(&mut queue, deliver, Action::Event { pod: i, change });
        }
    }
    let mut flows: Vec<Flow> = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        for _ in 0..3 {
            let t = p.assign_ms + rng.below(p.release_ms - p.assign_ms);
            let query = t + rng.range(2_000, 10_000);
            flows.push(Flow { pod: i, t, query });
            push(
                &mut queue,
                query,
                Action::Lookup {
                    flow: flows.len() - 1,
                    second: false,
                },
            );
            if let Some(o) = outage_at(query) {
                push(
                    &mut queue,
                    outages[o].end + 3_000,
                    Action::Lookup {
                        flow: flows.len() - 1,
                        second: true,
                    },
                );
            }
        }
    }
    for s in (0..HORIZON).step_by(1_000) {
        push(&mut queue, s, Action::Maintain);
    }

    // Run.
    let mut index = MetadataIndex::new(IndexConfig::default());
    let mut answers: Vec<(usize, bool, u64, podflow::metadata::Endpoint)> = Vec::new();
    while let Some(Reverse((now_ms, _, action))) = queue.pop() {
        let now = at(now_ms);
        match action {
            Action::Event { pod, change } => {
                let p = &pods[pod];
                match change {
                    Change::Delete => index.delete_pod(p.partition, &p.uid, now),
                    c => index.apply_pod(p.partition, info(p, c), now),
                }
                let p = &mut pods[pod];
                if matches!(change, Change::Running | Change::Terminal) {
                    p.visible = true;
                }
                if matches!(change, Change::Terminal | Change::Delete) {
                    p.observed_end_ms = p.observed_end_ms.min(now_ms);
                }
            }
            Action::Relist { outage, partition } => {
                let out = &outages[outage];
                let part = if partition == 0 {
                    Partition::Local
                } else {
                    Partition::Remote
                };
                let mut listed = Vec::new();
                for p in pods.iter_mut().filter(|p| p.partition == part) {
                    match state_at(p, out.snapshot) {
                        Some(c) => {
                            if c != Change::Pending {
                                p.visible = true;
                            }
                            if c == Change::Terminal {
                                p.observed_end_ms = p.observed_end_ms.min(now_ms);
                            }
                            listed.push(info(p, c));
                        }
                        None => {
                            // missing: if the index thought it alive, it ends now
                            if p.visible && p.observed_end_ms == u64::MAX {
                                p.observed_end_ms = now_ms;
                            }
                        }
                    }
                }
                index.relist_pods(part, listed, &HashSet::new(), now, Some(at(out.start)));
            }
            Action::Lookup { flow, second } => {
                let f = &flows[flow];
                let ep = index.lookup(ip_of(pods[f.pod].ip), at(f.t));
                answers.push((flow, second, now_ms, ep));
            }
            Action::Maintain => index.maintain(now),
        }
    }

    // Judge with full knowledge of the script.
    let by_ip: Vec<Vec<usize>> = (0..IPS)
        .map(|ip| (0..pods.len()).filter(|&i| pods[i].ip == ip).collect())
        .collect();
    let allowed_ambiguous = |pod: usize, t: u64| -> bool {
        let ip = pods[pod].ip;
        by_ip[ip].iter().any(|&q| {
            let qp = &pods[q];
            // (a) the second of a precise handover
            let handover =
                qp.precise && t >= floor_sec(qp.assign_ms) && t < floor_sec(qp.assign_ms) + 1_000;
            // (c) an imprecise start overlapping a predecessor until its end was observed
            let imprecise = !qp.precise
                && t >= qp.reported_from_ms
                && by_ip[ip].iter().any(|&r| {
                    let rp = &pods[r];
                    r != q && rp.assign_ms < qp.assign_ms && t < rp.observed_end_ms
                });
            handover || imprecise
        }) || outages.iter().any(|o| {
            // (b) the IP changed hands during an outage: its re-list cannot say when
            t >= o.start
                && t < o.end
                && by_ip[ip]
                    .iter()
                    .any(|&q| pods[q].release_ms >= o.start && pods[q].release_ms <= o.end)
        })
    };
    let (mut correct, mut ambiguous, mut unknown_unseen, mut stale_wrong, mut checked) =
        (0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for (flow, second, now_ms, ep) in &answers {
        let f = &flows[*flow];
        let p = &pods[f.pod];
        let stale = !second && outage_at(*now_ms).is_some_and(|o| f.t >= outages[o].start);
        assert_eq!(*now_ms, if *second { *now_ms } else { f.query });
        checked += 1;
        if ep.ambiguous {
            assert_eq!(
                ep.kind,
                EndpointKind::Pod,
                "ambiguous between pods keeps kind pod"
            );
            if stale || allowed_ambiguous(f.pod, f.t) {
                ambiguous += 1;
            } else {
                failures.push(format!("unexpected ambiguous: {f:?} {p:?}"));
            }
        } else if ep.kind == EndpointKind::Pod && ep.uid == p.uid {
            correct += 1;
            assert_eq!(ep.workload_kind, "Job");
            assert_eq!(ep.namespace, "churn");
        } else if stale {
            stale_wrong += 1; // looked up during an outage: last known state, age says so
        } else if ep.kind == EndpointKind::Pod {
            failures.push(format!("MISATTRIBUTED to {}: {f:?} {p:?}", ep.uid));
        } else if !p.visible {
            unknown_unseen += 1;
        } else {
            failures.push(format!("missed ({:?}): {f:?} {p:?}", ep.kind));
        }
    }
    let stats = index.stats();
    eprintln!(
        "pods={} flows={} checked={checked} correct={correct} ambiguous={ambiguous} \
         unknown_unseen={unknown_unseen} stale_wrong={stale_wrong} outages={} stats={stats:?}",
        pods.len(),
        flows.len(),
        outages.len()
    );
    if !failures.is_empty() {
        for o in &outages {
            eprintln!("outage {}..{} snapshot {}", o.start, o.end, o.snapshot);
        }
        for q in &by_ip[1] {
            let p = &pods[*q];
            if p.assign_ms > 80_000 && p.assign_ms < 110_000 {
                eprintln!("{p:?}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The script is harsh (IPs reused within 0–1.5 s, 20% imprecise start times, 9 outages),
    // so many answers fall in honest ambiguity windows; those outside were asserted exact above.
    assert!(
        correct * 100 >= checked * 70,
        "too few exact answers: {correct}/{checked}"
    );
    assert!(
        stale_wrong < checked / 10,
        "too many stale answers: {stale_wrong}"
    );
    assert!(
        ambiguous > 0,
        "the script has ambiguous windows; none answered ambiguous"
    );
    assert!(
        stats.stale_ignored > 0,
        "stale re-list entries must have been ignored at least once"
    );
}

//! Who owns podflow's filters (issue 17 item 6), netlink mode (cls_bpf filters outlive their
//! process, so "ours", "another live agent's" and "stale" must be told apart): a second agent in
//! the node's namespace refuses to start, naming the first one's pid, and leaves its filters
//! alone; a filter someone else deletes (`tc filter del`), or a tcx link someone detaches
//! (`bpftool link detach`), is attached again at the next resync, counted in the status and
//! declared as a gap. Privileged (root).
use std::time::{Duration, Instant};

use crate::support::{
    BIN,
    agent::{Agent, Tuple, expect_totals},
    capture::{podflow_programs, tcx_ingress_links},
    privileged,
};
use podflow_testbed::{Node, unique_prefix, wait_for};

fn ping(node: &Node, count: u32) {
    let b = node.pod("b").unwrap().ipv4;
    node.pod("a")
        .unwrap()
        .ns
        .exec(
            "ping",
            &[
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                "-q",
                &b.to_string(),
            ],
        )
        .expect("ping");
}

fn node(tag: &str, subnet: u8) -> (Node, String, String) {
    let p = unique_prefix(tag);
    let mut node = Node::new(&p, subnet).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("a");
    node.add_pod("b", &vb).expect("b");
    (node, va, vb)
}

#[test]
fn a_second_agent_refuses_to_start_and_leaves_the_first_alone() {
    if !privileged() {
        return;
    }
    let (node, va, vb) = node("o", 73);
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    let mut first = Agent::start(&node, &["--attach-mode", "netlink"]);
    first.wait_attached(&[&va, &vb], Duration::from_secs(10));

    let sock = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = node
        .ns
        .command("timeout")
        .args([
            "30",
            BIN,
            "--log-format",
            "text",
            "agent",
            "--attach-mode",
            "netlink",
        ])
        .arg("--socket")
        .arg(sock.path().join("second.sock"))
        .output()
        .expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "second agent: {err}");
    assert!(
        err.contains(&format!("another podflow agent (pid {})", first.pid())),
        "{err}"
    );
    println!(
        "second agent refused after {:?}: {}",
        started.elapsed(),
        err.lines().last().unwrap_or("")
    );

    // The first one's filters are intact and it counts on.
    assert_eq!(
        podflow_programs(&node.ns).len(),
        4,
        "{:?}",
        podflow_programs(&node.ns)
    );
    ping(&node, 3);
    expect_totals(&first, &Tuple::new(a, b, "ICMP", 8, 0), (3, 3 * 84));
    let st = first.terminate();
    assert!(st.success(), "exit {st}");
    assert_eq!(podflow_programs(&node.ns), vec![], "left after SIGTERM");
}

/// The preference of podflow's filter on `dev`'s ingress, from `tc filter show`.
fn podflow_pref(node: &Node, dev: &str) -> Option<String> {
    let out = node
        .ns
        .exec("tc", &["filter", "show", "dev", dev, "ingress"])
        .expect("tc filter show");
    out.lines()
        .find(|l| l.contains("podflow_veth_in"))
        .and_then(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "pref")?;
            words.next().map(str::to_owned)
        })
}

#[test]
fn a_filter_deleted_by_someone_else_is_attached_again_at_the_next_resync() {
    if !privileged() {
        return;
    }
    let (node, va, vb) = node("d", 74);
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    let agent = Agent::start(
        &node,
        &["--attach-mode", "netlink", "--resync-interval", "2s"],
    );
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));
    let pref = podflow_pref(&node, &va).expect("podflow filter on ingress");
    node.ns
        .exec(
            "tc",
            &["filter", "del", "dev", &va, "ingress", "pref", &pref],
        )
        .expect("tc filter del");
    assert_eq!(podflow_programs(&node.ns).len(), 3, "deleted");
    let deleted = Instant::now();
    let restored = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (podflow_programs(&node.ns).len() == 4 && podflow_pref(&node, &va).is_some())
            .then(|| deleted.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "not restored: {:?}\n{}",
            podflow_programs(&node.ns),
            agent.log_text()
        )
    });
    println!("restored {restored:?} after the delete (resync every 2 s)");
    assert!(restored < Duration::from_secs(5), "{restored:?}");
    let restored_count = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let n = agent.counter("attachments_restored");
        (n >= 1).then_some(n)
    });
    assert_eq!(restored_count, Some(1));
    // The time it was missing is declared.
    let gap = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        agent
            .flows(&[])
            .into_iter()
            .find(|e| e["loss"]["reason"] == "detached_gap")
    })
    .expect("a detached_gap loss record");
    assert_eq!(gap["loss"]["unit"], "nanoseconds", "{gap}");
    assert!(
        gap["loss"]["from"].as_str() < gap["loss"]["to"].as_str(),
        "{gap}"
    );
    // And it counts again, once.
    ping(&node, 3);
    expect_totals(&agent, &Tuple::new(a, b, "ICMP", 8, 0), (3, 3 * 84));
}

#[test]
fn a_tcx_link_detached_by_someone_else_is_attached_again_at_the_next_resync() {
    if !privileged() {
        return;
    }
    let (node, va, vb) = node("x", 77);
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    let agent = Agent::start(&node, &["--attach-mode", "tcx", "--resync-interval", "2s"]);
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));
    let links = tcx_ingress_links(&node.ns, &va);
    assert_eq!(links.len(), 1, "{links:?}");
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &links[0].to_string()])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tcx_ingress_links(&node.ns, &va),
        Vec::<u32>::new(),
        "detached"
    );
    let deleted = Instant::now();
    let restored = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (tcx_ingress_links(&node.ns, &va).len() == 1).then(|| deleted.elapsed())
    })
    .unwrap_or_else(|| panic!("not restored:\n{}", agent.log_text()));
    println!("tcx link restored {restored:?} after the detach (resync every 2 s)");
    assert_eq!(podflow_programs(&node.ns).len(), 4);
    let restored_count = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let n = agent.counter("attachments_restored");
        (n >= 1).then_some(n)
    });
    assert_eq!(restored_count, Some(1));
    ping(&node, 3);
    expect_totals(&agent, &Tuple::new(a, b, "ICMP", 8, 0), (3, 3 * 84));
}

//! The node under test: a node namespace with two pods (`src`, `dst`) on veths and an iperf3
//! server in `dst`, with the traffic it runs ([`iperf`] and the flow [`generator`]).
mod generator;
mod iperf;

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use podflow_testbed::{Netns, Node, unique_prefix, wait_for};

pub use generator::Flows;

use crate::harness::ChildGuard;

/// The host-side veths of the two pods (the agent's `--veth-pattern` is `vethpfb*`).
pub const SRC_VETH: &str = "vethpfbsrc";
pub const DST_VETH: &str = "vethpfbdst";

/// The node with pods `src` and `dst`, and the iperf3 server in `dst` (killed on drop; the
/// namespaces are deleted when the node drops).
pub struct Bed {
    node: Node,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    _iperf_server: ChildGuard,
}

impl Bed {
    /// Creates the node and its pods and starts the iperf3 server in `dst`.
    pub fn build() -> anyhow::Result<Bed> {
        let prefix = unique_prefix("pfb");
        let mut node = Node::new(&prefix, 213).context("creating the node namespace")?;
        let src_ip = node
            .add_pod("src", SRC_VETH)
            .context("adding pod src")?
            .ipv4;
        let dst_ip = node
            .add_pod("dst", DST_VETH)
            .context("adding pod dst")?
            .ipv4;
        let dst = node.pod("dst")?;
        let server = dst
            .ns
            .command("iperf3")
            .args(["-s", "-B", &dst_ip.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server in pod dst (is iperf3 installed?)")?;
        let server = ChildGuard::new(server);
        // Bounded wait until the server listens.
        let dst_ns = dst.ns.name().to_string();
        let listening = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
            let out = Command::new("ip")
                .args(["netns", "exec", &dst_ns, "ss", "-Hltn", "sport = :5201"])
                .output()
                .ok()?;
            (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
        });
        ensure!(
            listening.is_some(),
            "iperf3 server did not start within 5 s"
        );
        Ok(Bed {
            node,
            src_ip,
            dst_ip,
            _iperf_server: server,
        })
    }

    /// The node namespace: the agent runs and the programs attach there.
    pub fn node_ns(&self) -> &Netns {
        &self.node.ns
    }

    fn src(&self) -> anyhow::Result<&Netns> {
        Ok(&self.node.pod("src")?.ns)
    }
}

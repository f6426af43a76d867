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

pub use generator::{Flows, RawKind};

use crate::harness::ChildGuard;

/// The ClusterIP of the Service in front of `dst` ([`Bed::serve_dst`]).
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service's port, and the port it sends to on `dst`.
pub const SERVICE_PORT: u16 = 80;
pub const SERVICE_TARGET: u16 = 8080;

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

    /// Puts a Service in front of `dst`: its ClusterIP translated by the node as kube-proxy's
    /// iptables mode does, and a metadata file (`kubectl get -o json` form) naming the pods, the
    /// Service and the node, written into `dir`. Translation turns on conntrack in the node
    /// namespace: give it a bed of its own, not one other figures use.
    pub fn serve_dst(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        use podflow_testbed::kube_proxy::{self, Mode, ServiceRule};
        kube_proxy::install(
            &self.node.ns,
            Mode::Iptables,
            &[ServiceRule {
                name: "dst".into(),
                cluster_ip: SERVICE_VIP,
                protocol: "udp",
                port: SERVICE_PORT,
                node_port: None,
                endpoints: vec![(self.dst_ip, SERVICE_TARGET)],
            }],
            None,
        )
        .context("installing the Service's NAT rules")?;
        let pod = |name: &str, ip: Ipv4Addr| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "bench", "uid": format!("bench-{name}"),
                             "labels": {"app": name}, "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"nodeName": "bench", "containers": [{"name": name, "image": "bench",
                         "ports": [{"name": "echo", "containerPort": SERVICE_TARGET, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                           "startTime": "2026-01-01T00:00:00Z"}
            })
        };
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            pod("src", self.src_ip),
            pod("dst", self.dst_ip),
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "dst", "namespace": "bench", "uid": "bench-svc",
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
             "spec": {"clusterIP": SERVICE_VIP.to_string(), "clusterIPs": [SERVICE_VIP.to_string()],
                      "selector": {"app": "dst"},
                      "ports": [{"name": "echo", "port": SERVICE_PORT, "targetPort": "echo", "protocol": "UDP"}]}},
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": "bench", "uid": "bench-node"},
             "spec": {"podCIDR": self.node.pod_cidr_v4(), "podCIDRs": [self.node.pod_cidr_v4()]},
             "status": {"addresses": [{"type": "InternalIP", "address": self.node.ipv4.to_string()}]}}
        ]});
        let path = dir.join("cluster.json");
        std::fs::write(&path, list.to_string()).context("writing the metadata file")?;
        Ok(path)
    }

    /// Sets how long the node's conntrack keeps an unanswered UDP connection (a per-namespace
    /// sysctl of the node's namespace).
    pub fn set_udp_conntrack_timeout(&self, secs: u32) -> anyhow::Result<()> {
        podflow_testbed::run_checked(self.node.ns.command("sysctl").args([
            "-q",
            "-w",
            &format!("net.netfilter.nf_conntrack_udp_timeout={secs}"),
        ]))
        .context("setting the node's conntrack UDP timeout")?;
        Ok(())
    }

    /// Forgets the node's connections (`conntrack -F`), so that the next run's flows are new.
    pub fn flush_conntrack(&self) -> anyhow::Result<()> {
        podflow_testbed::run_checked(self.node.ns.command("conntrack").arg("-F"))
            .context("conntrack -F")?;
        Ok(())
    }

    /// Makes the node's conntrack track every forwarded packet (a kube-proxy node's state: one
    /// stateful iptables rule, as `kube-proxy` and most CNIs install), until the guard drops.
    pub fn track_connections(&self) -> anyhow::Result<ConntrackOn<'_>> {
        let rule = [
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ];
        podflow_testbed::run_checked(self.node.ns.command("iptables").arg("-A").args(rule))
            .context("iptables -A FORWARD (conntrack)")?;
        Ok(ConntrackOn { bed: self, rule })
    }

    /// The node namespace: the agent runs and the programs attach there.
    pub fn node_ns(&self) -> &Netns {
        &self.node.ns
    }

    fn src(&self) -> anyhow::Result<&Netns> {
        Ok(&self.node.pod("src")?.ns)
    }
}

/// See [`Bed::track_connections`]: removes the rule on drop.
pub struct ConntrackOn<'a> {
    bed: &'a Bed,
    rule: [&'static str; 7],
}

impl Drop for ConntrackOn<'_> {
    fn drop(&mut self) {
        let _ = podflow_testbed::run_checked(
            self.bed
                .node
                .ns
                .command("iptables")
                .arg("-D")
                .args(self.rule),
        );
        let _ = self.bed.flush_conntrack();
    }
}

//! Service NAT rules shaped like kube-proxy's, installed in a node namespace of the testbed: the
//! iptables mode (`KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` with `statistic --mode random`,
//! `KUBE-MARK-MASQ` and `KUBE-POSTROUTING`) and the nftables mode (a `kube-proxy` table with a
//! `service-ips` verdict map, `numgen random` across endpoint chains and a masquerading chain).
//! The chain structure and the translations are kube-proxy's; the names are shortened.
use std::net::Ipv4Addr;

use crate::{Netns, TestbedError};

/// kube-proxy's masquerade mark bit.
const MASQ_MARK: &str = "0x4000";

/// A Service port the rules translate.
#[derive(Debug, Clone)]
pub struct ServiceRule {
    /// Short, unique name (used in chain names; ≤ 12 characters).
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// `udp` or `tcp`.
    pub protocol: &'static str,
    pub port: u16,
    /// The node port, if the Service has one (DNAT on the node's local addresses, masqueraded).
    pub node_port: Option<u16>,
    /// Backends: address and target port, picked at random with equal probability.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The proxy mode to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// Installs the rules of `services` in `ns`, plus masquerading of `masquerade_from` (the pods'
/// range) towards `masquerade_out` (an interface leaving the cluster), as ip-masq-agent or a
/// CNI does, when given.
pub fn install(
    ns: &Netns,
    mode: Mode,
    services: &[ServiceRule],
    masquerade: Option<(&str, &str)>,
) -> Result<(), TestbedError> {
    match mode {
        Mode::Iptables => iptables(ns, services, masquerade),
        Mode::Nftables => nftables(ns, services, masquerade),
    }
}

fn iptables(
    ns: &Netns,
    services: &[ServiceRule],
    masquerade: Option<(&str, &str)>,
) -> Result<(), TestbedError> {
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut add = |r: &[&str]| rules.push(r.iter().map(|s| (*s).to_string()).collect());
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        add(&["-N", chain]);
    }
    add(&[
        "-A",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]);
    add(&[
        "-A",
        "OUTPUT",
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]);
    add(&[
        "-A",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes postrouting rules",
        "-j",
        "KUBE-POSTROUTING",
    ]);
    let mark = format!("{MASQ_MARK}/{MASQ_MARK}");
    add(&["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", &mark]);
    add(&[
        "-A",
        "KUBE-POSTROUTING",
        "-m",
        "mark",
        "!",
        "--mark",
        &mark,
        "-j",
        "RETURN",
    ]);
    add(&[
        "-A",
        "KUBE-POSTROUTING",
        "-j",
        "MARK",
        "--set-xmark",
        &format!("{MASQ_MARK}/0x0"),
    ]);
    add(&[
        "-A",
        "KUBE-POSTROUTING",
        "-j",
        "MASQUERADE",
        "--random-fully",
    ]);
    for s in services {
        let svc = format!("KUBE-SVC-{}", s.name.to_uppercase());
        add(&["-N", &svc]);
        let dport = s.port.to_string();
        let vip = format!("{}/32", s.cluster_ip);
        add(&[
            "-A",
            "KUBE-SERVICES",
            "-d",
            &vip,
            "-p",
            s.protocol,
            "-m",
            s.protocol,
            "--dport",
            &dport,
            "-j",
            &svc,
        ]);
        if let Some(np) = s.node_port {
            let ext = format!("KUBE-EXT-{}", s.name.to_uppercase());
            add(&["-N", &ext]);
            let np = np.to_string();
            add(&[
                "-A",
                "KUBE-NODEPORTS",
                "-p",
                s.protocol,
                "-m",
                s.protocol,
                "--dport",
                &np,
                "-j",
                &ext,
            ]);
            // externalTrafficPolicy: Cluster: masquerade, then the Service's endpoints.
            add(&["-A", &ext, "-j", "KUBE-MARK-MASQ"]);
            add(&["-A", &ext, "-j", &svc]);
        }
        let n = s.endpoints.len();
        for (i, (addr, port)) in s.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}{i}", s.name.to_uppercase());
            add(&["-N", &sep]);
            if i + 1 < n {
                // Pick 1 in (n - i) of what reaches this rule: equal shares.
                let p = format!("{:.11}", 1.0 / (n - i) as f64);
                add(&[
                    "-A",
                    &svc,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    &sep,
                ]);
            } else {
                add(&["-A", &svc, "-j", &sep]);
            }
            // Hairpin: a backend reaching itself through the Service is masqueraded.
            add(&[
                "-A",
                &sep,
                "-s",
                &format!("{addr}/32"),
                "-j",
                "KUBE-MARK-MASQ",
            ]);
            let to = format!("{addr}:{port}");
            add(&[
                "-A",
                &sep,
                "-p",
                s.protocol,
                "-m",
                s.protocol,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]);
        }
    }
    // Node ports on the node's own addresses, last (as kube-proxy does).
    add(&[
        "-A",
        "KUBE-SERVICES",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "KUBE-NODEPORTS",
    ]);
    if let Some((from, out)) = masquerade {
        add(&[
            "-A",
            "POSTROUTING",
            "-s",
            from,
            "-o",
            out,
            "-j",
            "MASQUERADE",
        ]);
    }
    for r in rules {
        let mut args = vec!["-w", "-t", "nat"];
        args.extend(r.iter().map(String::as_str));
        ns.exec("iptables", &args)?;
    }
    Ok(())
}

fn nftables(
    ns: &Netns,
    services: &[ServiceRule],
    masquerade: Option<(&str, &str)>,
) -> Result<(), TestbedError> {
    let mut elements = Vec::new();
    let mut node_ports = Vec::new();
    let mut chains = String::new();
    for s in services {
        let name = s.name.to_lowercase();
        elements.push(format!(
            "{} . {} . {} : goto service-{name}",
            s.cluster_ip, s.protocol, s.port
        ));
        if let Some(np) = s.node_port {
            node_ports.push(format!("{} . {np} : goto external-{name}", s.protocol));
            chains.push_str(&format!(
                "  chain external-{name} {{\n    jump mark-for-masquerade\n    goto service-{name}\n  }}\n"
            ));
        }
        let arms: Vec<String> = (0..s.endpoints.len())
            .map(|i| format!("{i} : goto endpoint-{name}-{i}"))
            .collect();
        chains.push_str(&format!(
            "  chain service-{name} {{\n    numgen random mod {} vmap {{ {} }}\n  }}\n",
            s.endpoints.len(),
            arms.join(", ")
        ));
        for (i, (addr, port)) in s.endpoints.iter().enumerate() {
            chains.push_str(&format!(
                "  chain endpoint-{name}-{i} {{\n    ip saddr {addr} jump mark-for-masquerade\n    meta l4proto {} dnat to {addr}:{port}\n  }}\n",
                s.protocol
            ));
        }
    }
    let masq = masquerade
        .map(|(from, out)| format!("    ip saddr {from} oifname \"{out}\" masquerade\n"))
        .unwrap_or_default();
    let service_ips = if elements.is_empty() {
        String::new()
    } else {
        format!("    elements = {{ {} }}\n", elements.join(", "))
    };
    let node_port_elements = if node_ports.is_empty() {
        String::new()
    } else {
        format!("    elements = {{ {} }}\n", node_ports.join(", "))
    };
    let ruleset = format!(
        "table ip kube-proxy {{\n\
  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{service_ips}  }}\n\
  map service-nodeports {{\n    type inet_proto . inet_service : verdict\n{node_port_elements}  }}\n\
  chain mark-for-masquerade {{\n    meta mark set meta mark or {MASQ_MARK}\n  }}\n\
  chain masquerading {{\n    meta mark & {MASQ_MARK} == 0 return\n    meta mark set meta mark xor {MASQ_MARK}\n    masquerade fully-random\n  }}\n\
  chain services {{\n    ip daddr . meta l4proto . th dport vmap @service-ips\n    fib daddr type local meta l4proto . th dport vmap @service-nodeports\n  }}\n\
  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n\
  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n\
  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n{masq}  }}\n\
{chains}}}\n"
    );
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| TestbedError::Spawn {
            cmd: "nft -f -".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|source| TestbedError::Spawn {
                cmd: "nft -f - (writing the ruleset)".into(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| TestbedError::Spawn {
            cmd: "nft -f -".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Failed {
            cmd: format!("nft -f - <<'EOF'\n{ruleset}EOF"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

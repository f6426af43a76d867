//! End-to-end: a pod that forges its IP headers, sending raw frames on its `eth0` (a packet
//! socket, as any pod with `CAP_NET_RAW` can). Bytes are counted only as far as the frame goes: a
//! header that claims more than the frame carries, or a broken IP header behind an IP ethertype,
//! is malformed IP — a loss reason, in the status and in the record stream — never a flow with
//! invented bytes. Privileged (root).
use std::{net::Ipv4Addr, os::fd::AsRawFd as _, time::Duration};

use podflow_testbed::{Node, unique_prefix, wait_for};
use serde_json::Value;

use crate::support::{
    agent::Agent,
    packets::pkt::{ETH_P_IP, ETH_P_IPV6, UDP, V4, eth, ipv6_plen, udp, with_ipv4_checksum},
    privileged,
};

/// Sends `frames` as they are on `eth0` of the calling thread's namespace (`AF_PACKET`,
/// `SOCK_RAW`: the frame's own Ethernet header, nothing added).
fn send_raw(frames: &[Vec<u8>]) {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor just returned by socket(2), owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let name = c"eth0";
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "eth0");
    // SAFETY: sockaddr_ll is plain data; zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    for frame in frames {
        // SAFETY: the frame and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send a {}-byte frame: {}",
            std::io::Error::last_os_error(),
            frame.len()
        );
    }
}

/// An IPv4/UDP packet `a` → `b` whose header says `tot_len` (the real length when `None`), with a
/// valid header checksum, behind an Ethernet header, padded with zeros to `frame` bytes.
fn udp4(a: Ipv4Addr, b: Ipv4Addr, dport: u16, payload: usize, tot_len: Option<u16>) -> Vec<u8> {
    let mut v4 = V4::new(a.octets(), b.octets(), UDP);
    v4.tot_len = tot_len;
    eth(
        ETH_P_IP,
        &with_ipv4_checksum(v4.build(&udp(40000, dport, payload))),
    )
}

fn padded(mut frame: Vec<u8>, to: usize) -> Vec<u8> {
    frame.resize(to.max(frame.len()), 0);
    frame
}

/// The records of flows from `a` to `b` on UDP port `dport` (packets, bytes).
fn totals(agent: &Agent, a: Ipv4Addr, b: Ipv4Addr, dport: u64) -> (u64, u64) {
    agent
        .flows(&[])
        .iter()
        .filter(|r| {
            r["src_ip"] == a.to_string()
                && r["dst_ip"] == b.to_string()
                && r["dst_port"].as_u64() == Some(dport)
        })
        .fold((0, 0), |(p, b), r| {
            (
                p + r["packets"].as_u64().unwrap_or(0),
                b + r["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// The loss records of `reason` in the stream, summed.
fn losses(agent: &Agent, reason: &str) -> u64 {
    agent
        .flows(&[])
        .iter()
        .filter_map(|r| r.get("loss"))
        .filter(|l| l["reason"] == reason)
        .map(|l: &Value| l["count"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn forged_lengths_and_broken_ip_headers_are_malformed_not_bytes() {
    if !privileged() {
        return;
    }
    let p = unique_prefix("fg");
    let mut node = Node::new(&p, 62).expect("node");
    let (va, vb) = (format!("veth{p}a"), format!("veth{p}b"));
    node.add_pod("a", &va).expect("pod a");
    node.add_pod("b", &vb).expect("pod b");
    let (a, b) = (node.pod("a").unwrap().ipv4, node.pod("b").unwrap().ipv4);
    let agent = Agent::start(&node, &[]);
    agent.wait_attached(&[&va, &vb], Duration::from_secs(10));

    let mut frames = Vec::new();
    // 1000 packets of 32 bytes (4 bytes of payload) whose header claims 65535 bytes, and 1000 of
    // 48 bytes that claim 1500: the kernel drops them all as truncated.
    frames.extend((0..1000).map(|_| udp4(a, b, 7001, 4, Some(65535))));
    frames.extend((0..1000).map(|_| udp4(a, b, 7002, 20, Some(1500))));
    // Broken headers behind the IPv4/IPv6 ethertype: 10 bytes of "IPv4", IHL 3, 20 bytes of
    // "IPv6", an IPv6 payload length past the frame.
    let whole = udp4(a, b, 7003, 4, None);
    frames.push(whole[..14 + 10].to_vec());
    let mut ihl3 = whole.clone();
    ihl3[14] = 0x43;
    frames.push(ihl3);
    frames.push(eth(ETH_P_IPV6, &[0x60; 20]));
    let (a6, b6) = (node.pod("a").unwrap().ipv6, node.pod("b").unwrap().ipv6);
    frames.push(eth(
        ETH_P_IPV6,
        &ipv6_plen(a6, b6, UDP, &udp(40000, 7004, 4), Some(1000)),
    ));
    let malformed = frames.len() as u64;
    // Honest packets for contrast: 10 of 32 bytes padded to the 60-byte Ethernet minimum count
    // 32 bytes each (the header's length, not the padding).
    frames.extend((0..10).map(|_| padded(udp4(a, b, 7005, 4, None), 60)));
    let pod_a = node.pod("a").unwrap();
    pod_a
        .ns
        .run(move || send_raw(&frames))
        .expect("send from pod a");

    let seen = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        (agent.counter("lost_ip_malformed") >= malformed).then_some(())
    });
    let got = agent.counter("lost_ip_malformed");
    assert!(
        seen.is_some() && got == malformed,
        "lost_ip_malformed {got}, sent {malformed}"
    );
    assert_eq!(
        wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
            let t = totals(&agent, a, b, 7005);
            (t == (10, 320)).then_some(t)
        }),
        Some((10, 320)),
        "honest padded packets: {:?}",
        totals(&agent, a, b, 7005)
    );
    for port in [7001, 7002, 7003, 7004] {
        assert_eq!(
            totals(&agent, a, b, port),
            (0, 0),
            "port {port}: no forged flow"
        );
    }
    assert_eq!(
        losses(&agent, "lost_ip_malformed"),
        malformed,
        "every malformed packet is in the loss stream"
    );
    agent.assert_running();
}

//! Privileged: the L3 programs on a device without an Ethernet header. A TUN device (what
//! wireguard-go creates; kernel WireGuard is the same link type, ARPHRD_NONE) in a test node
//! namespace: packets routed out of it hit `podflow_l3_eg`, packets written into it by "the
//! tunnel" hit `podflow_l3_in`; counts must be exact.
//!
//! Run as root: `cargo test -p podflow --test capture_l3`.
#![expect(
    clippy::expect_used,
    reason = "a test fails by panicking, with a message"
)]

mod common;

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
};

use common::netns::{NetNs, add_tun, require_root};
use podflow::capture::{AttachModePref, Capture, CaptureConfig, IfaceKind, InterfaceChange};
use podflow_ebpf::{FAMILY_IPV4, FlowKey, IPPROTO_UDP, ObsPoint};

/// Opens the persistent TUN device `name` (calling thread's namespace), IFF_TUN | IFF_NO_PI.
fn open_tun(name: &str) -> File {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads/writes a `struct ifreq` (40 bytes) at the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f
}

/// An IPv4/UDP packet (valid IP header checksum, UDP checksum 0 = none).
fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = IPPROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn key4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, obs: ObsPoint) -> FlowKey {
    FlowKey {
        src_addr: src.to_ipv6_mapped().octets(),
        dst_addr: dst.to_ipv6_mapped().octets(),
        src_port: sport,
        dst_port: dport,
        protocol: IPPROTO_UDP,
        obs: obs as u8,
        family: FAMILY_IPV4,
        key_flags: 0,
    }
}

fn l3_exact(mode: AttachModePref) {
    let node = NetNs::new("pfl3-node");
    add_tun(&node, "pfwg0");
    node.ip(&["addr", "add", "10.99.0.1/32", "dev", "pfwg0"]);
    node.ip(&["route", "add", "10.99.1.0/24", "dev", "pfwg0"]);
    let ifindex = node.ifindex("pfwg0").expect("pfwg0");
    let (local, remote) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 1, 5));
    node.run(move || {
        let mut cap = Capture::load(CaptureConfig {
            veth_patterns: vec![],
            l3_patterns: vec!["pfwg*".into()],
            exclude_patterns: vec![],
            attach_mode: mode,
            flow_map_entries: 1024,
            sample_rate: 1,
        })
        .expect("load");
        let changes = cap.sync_interfaces().expect("sync");
        assert!(
            matches!(changes.as_slice(), [InterfaceChange::Attached(i)] if i.kind == IfaceKind::L3 && i.name == "pfwg0"),
            "{changes:?}"
        );
        let mut tun = open_tun("pfwg0");
        let _ = cap.drain().expect("drain 0");

        // Egress: 5 datagrams routed out of the tunnel device.
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(local), 5555)).expect("bind");
        for _ in 0..5 {
            s.send_to(&[7u8; 50], SocketAddr::new(IpAddr::V4(remote), 7777)).expect("send");
        }
        // Ingress: 3 packets "decrypted" from the tunnel (written into the TUN device).
        let pkt = udp4(remote, local, 7777, 5555, &[9u8; 30]);
        for _ in 0..3 {
            tun.write_all(&pkt).expect("tun write");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let d = cap.drain().expect("drain");
        let eg = key4(local, remote, 5555, 7777, ObsPoint::L3Egress);
        let ing = key4(remote, local, 7777, 5555, ObsPoint::L3Ingress);
        let e = d.entries.iter().find(|e| e.key == eg).unwrap_or_else(|| panic!("no egress entry: {:#?}", d.entries));
        assert_eq!((e.stats.packets, e.stats.bytes, e.stats.ifindex), (5, 5 * 78, ifindex), "{e:?}");
        let i = d.entries.iter().find(|e| e.key == ing).unwrap_or_else(|| panic!("no ingress entry: {:#?}", d.entries));
        assert_eq!((i.stats.packets, i.stats.bytes, i.stats.ifindex), (3, 3 * 58, ifindex), "{i:?}");
        cap.detach_all();
        drop(tun);
    });
}

#[test]
fn capture_l3_tun_exact_tcx() {
    if !require_root() {
        return;
    }
    l3_exact(AttachModePref::Tcx);
}

#[test]
fn capture_l3_tun_exact_netlink() {
    if !require_root() {
        return;
    }
    l3_exact(AttachModePref::Netlink);
}

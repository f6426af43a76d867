//! Privileged: the L3 programs on a device without an Ethernet header. A TUN device (what
//! wireguard-go creates; kernel WireGuard is the same link type, ARPHRD_NONE) in a test node
//! namespace: packets routed out of it hit `podflow_l3_eg`, packets written into it by "the
//! tunnel" hit `podflow_l3_in`; counts must be exact.
//!
//! Run as root: `cargo test -p podflow --test capture_l3`.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
};

use crate::support::{
    packets::{
        flow_key,
        pkt::{ipv4, udp, with_ipv4_checksum},
    },
    privileged,
};
use podflow::capture::{AttachModePref, Capture, CaptureConfig, IfaceKind, InterfaceChange};
use podflow_ebpf::{IPPROTO_UDP, ObsPoint};
use podflow_testbed::{Netns, unique_prefix};

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

fn l3_exact(mode: AttachModePref) {
    let node = Netns::create(&format!("{}-node", unique_prefix("pfl3"))).expect("netns");
    node.add_tun("pfwg0").expect("tun");
    node.ip(&["addr", "add", "10.99.0.1/32", "dev", "pfwg0"])
        .expect("addr");
    node.ip(&["route", "add", "10.99.1.0/24", "dev", "pfwg0"])
        .expect("route");
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
            pin_dir: None,
            dns_port: 53,
            handshakes: true,
            tracepoints: false,
            conntrack: false,
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
        // A valid IPv4 header checksum: the kernel's IP layer sees these (UDP checksum 0: none).
        let pkt = with_ipv4_checksum(ipv4(remote.octets(), local.octets(), IPPROTO_UDP, &udp(7777, 5555, 30)));
        for _ in 0..3 {
            tun.write_all(&pkt).expect("tun write");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let d = cap.drain().expect("drain");
        let eg = flow_key(ObsPoint::L3Egress, local, remote, IPPROTO_UDP, 5555, 7777, 0);
        let ing = flow_key(ObsPoint::L3Ingress, remote, local, IPPROTO_UDP, 7777, 5555, 0);
        let e = d.entries.iter().find(|e| e.key == eg).unwrap_or_else(|| panic!("no egress entry: {:#?}", d.entries));
        assert_eq!((e.stats.packets, e.stats.bytes, e.stats.ifindex), (5, 5 * 78, ifindex), "{e:?}");
        let i = d.entries.iter().find(|e| e.key == ing).unwrap_or_else(|| panic!("no ingress entry: {:#?}", d.entries));
        assert_eq!((i.stats.packets, i.stats.bytes, i.stats.ifindex), (3, 3 * 58, ifindex), "{i:?}");
        cap.detach_all();
        drop(tun);
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn capture_l3_tun_exact_tcx() {
    if !privileged() {
        return;
    }
    l3_exact(AttachModePref::Tcx);
}

#[test]
fn capture_l3_tun_exact_netlink() {
    if !privileged() {
        return;
    }
    l3_exact(AttachModePref::Netlink);
}

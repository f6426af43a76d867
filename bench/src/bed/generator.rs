//! The in-process flow generator: UDP datagrams with rotating ports, sent from a thread inside
//! pod `src`, that make many distinct 5-tuples cheaply.
use std::{
    net::{SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};

use super::Bed;
use crate::harness::{check_stop, stopped};

/// What a generator window sent.
#[derive(Debug, Clone, Copy)]
pub struct GenResult {
    pub sent: u64,
    pub secs: f64,
}

/// Distinct destination ports per source socket (ports 10000..60000; iperf3 uses 5201).
const PORTS_PER_SOCKET: u64 = 50_000;

#[derive(Debug, Clone, Copy)]
pub enum Flows {
    /// Cycle through flows 0..n again and again (established flows).
    Rotate(u64),
    /// Every packet is a new flow, numbered from `start`.
    Unique { start: u64 },
    /// Every packet is a new flow, numbered from `start`; every other one goes to the Service
    /// in front of `dst` ([`super::SERVICE_VIP`] port 80, a new source port each, from a raw
    /// socket), the others to `dst` as in `Unique`.
    HalfService { start: u64 },
    /// Every packet is a new flow (a new source port, from a raw socket), numbered from
    /// `start`, to `dst`: what [`RawKind`] says (the features' figures).
    Raw { start: u64, kind: RawKind },
}

/// What a [`Flows::Raw`] packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// A UDP datagram to this port, the DNS query's size (the DNS figures' baseline).
    Udp(u16),
    /// A DNS query (A, 9-byte name) to port 53: copied into the DNS ring.
    Dns,
    /// A TCP segment with only ACK set to port 80 (the handshake figures' baseline).
    TcpAck,
    /// A TCP SYN to port 80: put into the handshake ring.
    TcpSyn,
}

/// The DNS query `RawKind::Dns` sends (and the size `RawKind::Udp` sends): id 0x5a5a, RD,
/// one question "pod.test" type A class IN.
const DNS_QUERY: [u8; 26] = [
    0x5a, 0x5a, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'p', b'o', b'd', 4, b't', b'e', b's', b't',
    0, 0, 1, 0, 1,
];

/// A raw UDP (or TCP) socket (the kernel adds the IP header): any source port, without a socket
/// each.
struct RawUdp(std::os::fd::OwnedFd);

impl RawUdp {
    fn open() -> anyhow::Result<RawUdp> {
        Self::open_proto(libc::IPPROTO_UDP)
    }

    fn open_proto(proto: libc::c_int) -> anyhow::Result<RawUdp> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw UDP socket");
        }
        // SAFETY: a new fd the kernel just gave us.
        Ok(RawUdp(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// One datagram from `src_port` to `to` (UDP checksum 0: none, as IPv4 allows).
    fn send(&self, src_port: u16, to: SocketAddrV4, payload: &[u8]) {
        let mut pkt = [0u8; 64];
        let len = 8 + payload.len().min(56);
        pkt[0..2].copy_from_slice(&src_port.to_be_bytes());
        pkt[2..4].copy_from_slice(&to.port().to_be_bytes());
        pkt[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        pkt[8..len].copy_from_slice(&payload[..len - 8]);
        self.send_l4(to, &pkt[..len]);
    }

    /// One 20-byte TCP header (checksum 0: the receiver drops it, after the tc programs saw it)
    /// from `src_port` to `to` with `flags`.
    fn send_tcp(&self, src_port: u16, to: SocketAddrV4, flags: u8) {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&src_port.to_be_bytes());
        h[2..4].copy_from_slice(&to.port().to_be_bytes());
        h[4..8].copy_from_slice(&1u32.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h[14..16].copy_from_slice(&64240u16.to_be_bytes());
        self.send_l4(to, &h);
    }

    fn send_l4(&self, to: SocketAddrV4, pkt: &[u8]) {
        use std::os::fd::AsRawFd as _;
        let len = pkt.len();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto with a buffer of `len` bytes and a sockaddr_in of its size. A failure
        // (ENOBUFS) is a datagram not sent, like the generator's other sends.
        unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                pkt.as_ptr().cast(),
                len,
                0,
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
    }
}

impl Bed {
    /// Sends 64-byte frames (22-byte UDP payloads) from a thread inside pod `src` to `dst` at
    /// `rate` packets per second for `secs`. Flow `i` is (socket `i / 50000`, destination port
    /// `10000 + i % 50000`); each socket has its own ephemeral source port. Nothing listens on
    /// those ports in `dst`: the packets cross both veths and are dropped by `dst`'s UDP layer
    /// (its ICMP errors are rate-limited by the kernel to about one per second).
    pub fn generate(&self, flows: Flows, rate: u64, secs: f64) -> anyhow::Result<GenResult> {
        let dst = self.dst_ip;
        let max_index = match flows {
            Flows::Rotate(n) => n.max(1),
            Flows::Unique { start } | Flows::HalfService { start } | Flows::Raw { start, .. } => {
                start + (rate as f64 * secs) as u64 + 1
            }
        };
        let nsock = max_index.div_ceil(PORTS_PER_SOCKET) as usize;
        let res = self.src()?.run(move || -> anyhow::Result<GenResult> {
            let socks: Vec<UdpSocket> = (0..nsock)
                .map(|_| UdpSocket::bind("0.0.0.0:0"))
                .collect::<Result<_, _>>()
                .context("binding generator sockets")?;
            let payload = [0x5au8; 22];
            let raw = match flows {
                Flows::HalfService { .. }
                | Flows::Raw {
                    kind: RawKind::Udp(_) | RawKind::Dns,
                    ..
                } => Some(RawUdp::open()?),
                Flows::Raw { .. } => Some(RawUdp::open_proto(libc::IPPROTO_TCP)?),
                _ => None,
            };
            let vip = SocketAddrV4::new(super::SERVICE_VIP, super::SERVICE_PORT);
            let start = Instant::now();
            let total = (rate as f64 * secs) as u64;
            let mut sent = 0u64;
            while sent < total {
                if stopped() {
                    break;
                }
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                while sent < due {
                    let i = match flows {
                        Flows::Rotate(n) => sent % n.max(1),
                        Flows::Unique { start }
                        | Flows::HalfService { start }
                        | Flows::Raw { start, .. } => start + sent,
                    };
                    if let (Flows::Raw { kind, .. }, Some(raw)) = (flows, raw.as_ref()) {
                        // Source ports 1024..65023: distinct within a window of ≤ 64 000 flows.
                        let sport = 1024 + (i % 64_000) as u16;
                        match kind {
                            RawKind::Udp(port) => {
                                raw.send(sport, SocketAddrV4::new(dst, port), &DNS_QUERY);
                            }
                            RawKind::Dns => raw.send(sport, SocketAddrV4::new(dst, 53), &DNS_QUERY),
                            RawKind::TcpAck => {
                                raw.send_tcp(sport, SocketAddrV4::new(dst, 80), 0x10)
                            }
                            RawKind::TcpSyn => {
                                raw.send_tcp(sport, SocketAddrV4::new(dst, 80), 0x02)
                            }
                        }
                        sent += 1;
                        continue;
                    }
                    if let Some(raw) = raw.as_ref().filter(|_| i % 2 == 1) {
                        // Source ports 1024..65023, distinct within a window of ≤ 64 000 flows.
                        raw.send(1024 + ((i / 2) % 64_000) as u16, vip, &payload);
                        sent += 1;
                        continue;
                    }
                    let sock = &socks[(i / PORTS_PER_SOCKET) as usize % nsock];
                    let port = 10_000 + (i % PORTS_PER_SOCKET) as u16;
                    // An error (e.g. ENOBUFS) just means the packet was not sent; it is counted
                    // anyway so pacing does not spin (the receiver-side figures do not depend on
                    // this number).
                    let _ = sock.send_to(&payload, SocketAddrV4::new(dst, port));
                    sent += 1;
                }
            }
            Ok(GenResult {
                sent,
                secs: start.elapsed().as_secs_f64(),
            })
        });
        let r = res.map_err(|e| anyhow!("generator thread: {e}"))??;
        check_stop()?;
        Ok(r)
    }
}

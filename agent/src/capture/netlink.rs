//! rtnetlink plumbing: an `RTM_GETLINK` dump of the current network namespace's links and a
//! subscription to `RTNLGRP_LINK` for links that come, change and go.
//!
//! Both use `netlink-sys` sockets created by the calling thread, so they act in that thread's
//! network namespace (see `setns(2)`).
use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use super::CaptureError;

/// `RTMGRP_LINK`: the multicast group bit of `RTNLGRP_LINK` (group 1).
const RTMGRP_LINK: u32 = 1;
/// Receive buffer for one netlink datagram. Dumps send up to ~32 KiB per datagram.
const RECV_BUF: usize = 64 * 1024;
/// A dump interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is retried this often.
const DUMP_ATTEMPTS: usize = 5;

/// A link as reported by rtnetlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub ifindex: u32,
    /// `ARPHRD_*` link-layer type (1 = `ARPHRD_ETHER`, 0xfffe = `ARPHRD_NONE`).
    pub link_type: u16,
}

/// Extracts name, index and link-layer type from a link message; `None` without a name.
pub(crate) fn link_info(msg: &LinkMessage) -> Option<LinkInfo> {
    let name = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    Some(LinkInfo {
        name,
        ifindex: msg.header.index,
        link_type: u16::from(msg.header.link_layer_type),
    })
}

fn open_socket() -> Result<Socket, CaptureError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(|source| CaptureError::Netlink {
        op: "socket",
        source,
    })?;
    sock.bind_auto()
        .map_err(|source| CaptureError::Netlink { op: "bind", source })?;
    Ok(sock)
}

/// Splits one netlink datagram into messages, parsing each as a route message.
fn parse_datagram(
    mut buf: &[u8],
) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, CaptureError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err(CaptureError::NetlinkDecode {
                reason: format!(
                    "bad netlink message length {len} (datagram rest {})",
                    buf.len()
                ),
            });
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]).map_err(|e| {
            CaptureError::NetlinkDecode {
                reason: e.to_string(),
            }
        })?;
        out.push(msg);
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Dumps all links of the calling thread's network namespace (`RTM_GETLINK` + `NLM_F_DUMP`).
pub fn dump_links() -> Result<Vec<LinkInfo>, CaptureError> {
    for _ in 0..DUMP_ATTEMPTS {
        match dump_links_once()? {
            Some(links) => return Ok(links),
            None => continue,
        }
    }
    Err(CaptureError::Netlink {
        op: "link dump",
        source: io::Error::other("dump interrupted repeatedly by concurrent changes"),
    })
}

/// A tc filter on a clsact hook of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcFilter {
    pub priority: u16,
    pub handle: u32,
    /// For cls_bpf filters: the program's id and name.
    pub prog_id: Option<u32>,
    pub name: Option<String>,
}

/// `TCA_BPF_NAME`, `TCA_BPF_ID` (uapi/linux/pkt_cls.h).
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;

/// Lists the filters of `ifindex`'s clsact hook (`egress` or ingress); none without a clsact
/// qdisc.
pub fn dump_filters(ifindex: u32, egress: bool) -> Result<Vec<TcFilter>, CaptureError> {
    let err = |op, source| CaptureError::Netlink { op, source };
    let sock = open_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut msg = TcMessage::default();
    msg.header.index = i32::try_from(ifindex).unwrap_or(i32::MAX);
    // TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: if egress { 0xfff3 } else { 0xfff2 },
    };
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetTrafficFilter(msg)),
    );
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    sock.send_to(&out, &SocketAddr::new(0, 0), 0)
        .map_err(|e| err("send filter dump", e))?;
    let mut filters = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)
            .map_err(|e| err("receive filter dump", e))?;
        for msg in parse_datagram(&buf)? {
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(filters),
                NetlinkPayload::Error(e) => {
                    let io = e.to_io();
                    // No clsact qdisc (or no device): no filters.
                    if matches!(
                        io.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
                    ) {
                        return Ok(Vec::new());
                    }
                    return Err(err("filter dump", io));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    filters.push(tc_filter(&m));
                }
                _ => {}
            }
        }
    }
}

fn tc_filter(m: &TcMessage) -> TcFilter {
    use netlink_packet_core::NlasIterator;
    let mut f = TcFilter {
        priority: (m.header.info >> 16) as u16,
        handle: (u32::from(m.header.handle.major) << 16) | u32::from(m.header.handle.minor),
        prog_id: None,
        name: None,
    };
    let bpf = m
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
    if !bpf {
        return f;
    }
    for a in &m.attributes {
        let TcAttribute::Options(opts) = a else {
            continue;
        };
        for o in opts {
            let TcOption::Other(nla) = o else { continue };
            // The whole TCA_OPTIONS nest: walk its attributes.
            let mut value = vec![0u8; netlink_packet_core::Nla::value_len(nla)];
            netlink_packet_core::Nla::emit_value(nla, &mut value);
            for inner in NlasIterator::new(&value[..]).flatten() {
                match inner.kind() {
                    TCA_BPF_ID if inner.value().len() >= 4 => {
                        let v = inner.value();
                        f.prog_id = Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
                    }
                    TCA_BPF_NAME => {
                        let v = inner.value();
                        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                        f.name = Some(String::from_utf8_lossy(&v[..end]).into_owned());
                    }
                    _ => {}
                }
            }
        }
    }
    f
}

/// One dump attempt; `Ok(None)` if the kernel flagged it as interrupted (`NLM_F_DUMP_INTR`).
fn dump_links_once() -> Result<Option<Vec<LinkInfo>>, CaptureError> {
    let sock = open_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    sock.send_to(&out, &SocketAddr::new(0, 0), 0)
        .map_err(|source| CaptureError::Netlink {
            op: "send link dump",
            source,
        })?;

    let mut links = Vec::new();
    let mut interrupted = false;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)
            .map_err(|source| CaptureError::Netlink {
                op: "receive link dump",
                source,
            })?;
        for msg in parse_datagram(&buf)? {
            if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => {
                    return Ok(if interrupted { None } else { Some(links) });
                }
                NetlinkPayload::Error(e) => {
                    return Err(CaptureError::Netlink {
                        op: "link dump",
                        source: e.to_io(),
                    });
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    if let Some(l) = link_info(&m) {
                        links.push(l);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A change of the link set, from [`LinkWatcher`] (or built by hand, e.g. in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: a link appeared or changed (state, name, ...). `link_type` is the
    /// `ARPHRD_*` link-layer type.
    Added {
        name: String,
        ifindex: u32,
        link_type: u16,
    },
    /// `RTM_DELLINK`: a link disappeared (or left this network namespace).
    Removed { name: String, ifindex: u32 },
    /// The kernel dropped notifications (`ENOBUFS`: the socket buffer overflowed): the link set
    /// must be re-read. [`super::Capture::handle_link_event`] runs a full
    /// [`super::Capture::sync_interfaces`] for it.
    Resync,
}

/// Async subscription to `RTNLGRP_LINK` in the network namespace of the thread that created it.
///
/// Must be created inside a tokio runtime (it registers its socket with the reactor).
pub struct LinkWatcher {
    fd: AsyncFd<Socket>,
    pending: VecDeque<LinkEvent>,
    buf: Vec<u8>,
}

impl LinkWatcher {
    /// Opens the netlink socket and joins the link multicast group. Events that happen from now on
    /// are queued by the kernel until read, so call this *before*
    /// [`super::Capture::sync_interfaces`] to not miss a link created in between.
    pub fn new() -> Result<Self, CaptureError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|source| CaptureError::Netlink {
            op: "socket",
            source,
        })?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(|source| CaptureError::Netlink {
                op: "bind link group",
                source,
            })?;
        // Best effort: a larger buffer makes ENOBUFS (and the resync it forces) rarer when many
        // pods start at once.
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        sock.set_non_blocking(true)
            .map_err(|source| CaptureError::Netlink {
                op: "set non-blocking",
                source,
            })?;
        // SAFETY: the `Socket` owns its descriptor, keeps it open until dropped and always
        // returns the same one from `as_raw_fd`; the `AsyncFd` owns the `Socket`.
        let fd =
            unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| {
                CaptureError::Netlink {
                    op: "register with tokio",
                    source: e.into_parts().1,
                }
            })?;
        Ok(Self {
            fd,
            pending: VecDeque::new(),
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The next link event; `None` only if the socket failed for good (the error is logged).
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "link watcher: poll failed");
                    return None;
                }
            };
            self.buf.clear();
            match guard.try_io(|s| s.get_ref().recv(&mut self.buf, 0)) {
                Err(_would_block) => continue,
                Ok(Ok(_)) => {
                    let msgs = match parse_datagram(&self.buf) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "link watcher: undecodable notification, resyncing");
                            self.pending.push_back(LinkEvent::Resync);
                            continue;
                        }
                    };
                    for msg in msgs {
                        if let Some(ev) = event_of(msg) {
                            self.pending.push_back(ev);
                        }
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("link watcher: netlink notifications were dropped, resyncing");
                    self.pending.push_back(LinkEvent::Resync);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "link watcher: receive failed");
                    return None;
                }
            }
        }
    }
}

impl AsRawFd for LinkWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

fn event_of(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
            let l = link_info(&m)?;
            Some(LinkEvent::Added {
                name: l.name,
                ifindex: l.ifindex,
                link_type: l.link_type,
            })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
            let l = link_info(&m)?;
            Some(LinkEvent::Removed {
                name: l.name,
                ifindex: l.ifindex,
            })
        }
        _ => None,
    }
}

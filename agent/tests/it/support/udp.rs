//! UDP traffic between test namespaces: servers that echo or sink and count what they
//! received, and clients that make one flow per datagram (a new socket each).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use podflow_testbed::Netns;

/// The payload of every datagram the clients send (12 bytes).
pub const PAYLOAD: [u8; 12] = *b"podflow-test";

/// UDP servers in a namespace, each an echo or a sink, counting the datagrams they received by
/// port and source address; stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<(u16, IpAddr), u64>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts a server on each `(port, echo)`, and waits until each is bound.
    pub fn start(ns: &Netns, ports: &[(u16, bool)]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let mut threads = Vec::new();
        for &(port, echo) in ports {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(
                ns.spawn(move || {
                    let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind server");
                    sock.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                    tx.send(()).expect("ready");
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            *seen
                                .lock()
                                .expect("lock")
                                .entry((port, from.ip()))
                                .or_default() += 1;
                            if echo {
                                let _ = sock.send_to(&buf[..n], from);
                            }
                        }
                    }
                })
                .expect("server thread"),
            );
            rx.recv_timeout(Duration::from_secs(5)).expect("server up");
        }
        Servers {
            stop,
            seen,
            threads,
        }
    }

    /// Datagrams received on `port`, from `from` (any source: `None`).
    pub fn count(&self, port: u16, from: Option<IpAddr>) -> u64 {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|((p, f), _)| *p == port && from.is_none_or(|x| x == *f))
            .map(|(_, n)| *n)
            .sum()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `n` flows of one datagram each (a new socket, so a new source port, per flow) from a thread
/// in `ns` to `to`; with `reply`, each waits up to 1 s for the answer. Returns the answers.
pub fn udp_flows(ns: &Netns, to: SocketAddr, n: usize, reply: bool) -> u64 {
    udp_flows_from(ns, 0, to, n, reply)
}

/// [`udp_flows`] from source ports `first`, `first + 1`, … (0: ephemeral ones). A flow that
/// must not share its 5-tuple with an earlier, translated one (its conntrack entry lives on for
/// 30 s) uses ports below the ephemeral range.
pub fn udp_flows_from(ns: &Netns, first: u16, to: SocketAddr, n: usize, reply: bool) -> u64 {
    ns.run(move || {
        let mut answers = 0;
        for i in 0..n {
            let port = if first == 0 { 0 } else { first + i as u16 };
            let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind client");
            sock.send_to(&PAYLOAD, to).expect("send");
            if reply {
                sock.set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                answers += u64::from(sock.recv(&mut buf).is_ok());
            }
        }
        answers
    })
    .expect("client thread")
}

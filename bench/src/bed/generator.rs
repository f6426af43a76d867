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
            Flows::Unique { start } => start + (rate as f64 * secs) as u64 + 1,
        };
        let nsock = max_index.div_ceil(PORTS_PER_SOCKET) as usize;
        let res = self.src()?.run(move || -> anyhow::Result<GenResult> {
            let socks: Vec<UdpSocket> = (0..nsock)
                .map(|_| UdpSocket::bind("0.0.0.0:0"))
                .collect::<Result<_, _>>()
                .context("binding generator sockets")?;
            let payload = [0x5au8; 22];
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
                        Flows::Unique { start } => start + sent,
                    };
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

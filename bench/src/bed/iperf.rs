//! iperf3 runs from pod `src` to the server in pod `dst`: TCP throughput, UDP packet rate.
use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::Value;

use super::Bed;
use crate::harness::{check_stop, sleep};

impl Bed {
    fn iperf(&self, args: &[&str]) -> anyhow::Result<Value> {
        let src = self.src()?;
        let dst = self.dst_ip.to_string();
        let mut last_err = None;
        // The server takes one test at a time and may still be closing the previous one: retry.
        for _ in 0..3 {
            check_stop()?;
            let mut cmd = src.command("timeout");
            cmd.args(["60", "iperf3", "-c", &dst, "-J"]);
            // Client on CPU 0, server on CPU 1 (iperf3 -A n,m), in every run with and without the
            // agent: the scheduler moving the two between the cores is most of the run-to-run
            // spread of a single stream on a 2-core VM.
            if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
                cmd.args(["-A", "0,1"]);
            }
            let out = cmd
                .args(args)
                .stdin(Stdio::null())
                .output()
                .context("running iperf3")?;
            let v: Result<Value, _> = serde_json::from_slice(&out.stdout);
            match v {
                Ok(v) if out.status.success() && v.get("error").is_none() => return Ok(v),
                Ok(v) => last_err = Some(format!("{}", v.get("error").unwrap_or(&Value::Null))),
                Err(e) => {
                    last_err = Some(format!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            sleep(Duration::from_millis(300))?;
        }
        bail!("iperf3 {args:?} failed: {}", last_err.unwrap_or_default())
    }

    /// Single-stream TCP throughput, receiver side, in Gbit/s.
    pub fn tcp_gbps(&self, secs: u32) -> anyhow::Result<f64> {
        let v = self.iperf(&["-t", &secs.to_string()])?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .ok_or_else(|| anyhow!("iperf3 TCP: no end.sum_received.bits_per_second"))
    }

    /// UDP 64-byte datagrams at full speed: packets per second the receiver got
    /// (`packets - lost_packets` over the receiver's interval).
    pub fn udp_pps(&self, secs: u32) -> anyhow::Result<f64> {
        let v = self.iperf(&["-u", "-l", "64", "-b", "0", "-t", &secs.to_string()])?;
        let s = &v["end"]["sum"];
        let (Some(packets), Some(lost), Some(seconds)) = (
            s["packets"].as_f64(),
            s["lost_packets"].as_f64(),
            s["seconds"].as_f64(),
        ) else {
            bail!("iperf3 UDP: no end.sum.packets/lost_packets/seconds: {s}");
        };
        ensure!(seconds > 0.0, "iperf3 UDP: zero-length run");
        Ok((packets - lost).max(0.0) / seconds)
    }
}

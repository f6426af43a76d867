//! The packets the node's kernel drops (see `podflow_ebpf::PROG_KFREE_SKB`): a BTF tracepoint on
//! `kfree_skb` adds each dropped IP packet to its flow's entry in an LRU map, with the kernel's
//! reason and where it was; user space takes the entries at each flush ([`crate::drops`]).
use std::os::fd::AsFd as _;

use aya::{
    maps::{HashMap, IterableMap as _, MapData},
    programs::BtfTracePoint,
};
use podflow_ebpf::{
    DROPS, DropValue, FlowKey, PROG_KFREE_SKB, PROG_TCP_PROBE, RTTS, RttValue, TP_KFREE_SKB,
    TP_TCP_PROBE,
};

use super::{Capture, CaptureError, btf::BtfError, load::open_map, sys};

/// Reads every entry of `map` in batches (`BPF_MAP_LOOKUP_BATCH`, 256 a call) and deletes them in
/// one `BPF_MAP_DELETE_BATCH`; `keys` is scratch space. An update between the read and the delete
/// of its entry is lost (microseconds).
fn take_all<V: aya::Pod + Default>(
    map: &HashMap<MapData, FlowKey, V>,
    keys: &mut Vec<FlowKey>,
    what: &'static str,
    mut f: impl FnMut(&FlowKey, &V),
) -> Result<u64, CaptureError> {
    let fd = map.map().fd().as_fd();
    keys.clear();
    let mut chunk = 256;
    let (mut kbuf, mut vbuf) = (vec![FlowKey::default(); chunk], vec![V::default(); chunk]);
    let (mut token, mut first) = (0u64, true);
    loop {
        let (n, res) = sys::lookup_batch(fd, first, &mut token, &mut kbuf, &mut vbuf);
        match res.as_ref().err().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {}
            Some(libc::ENOSPC) if n == 0 => {
                // One bucket holds more entries than `chunk`: grow and retry it.
                chunk *= 2;
                kbuf.resize(chunk, FlowKey::default());
                vbuf.resize(chunk, V::default());
                continue;
            }
            Some(_) => {
                return Err(CaptureError::Drain {
                    op: what,
                    source: res.err().unwrap_or_else(|| std::io::Error::other("?")),
                });
            }
        }
        for (k, v) in kbuf[..n].iter().zip(&vbuf[..n]) {
            f(k, v);
        }
        keys.extend_from_slice(&kbuf[..n]);
        if res.is_err() {
            break;
        }
        first = false;
    }
    let (_, deleted) = sys::delete_batch(fd, keys);
    deleted.map_err(|source| CaptureError::Drain { op: what, source })?;
    Ok(keys.len() as u64)
}

/// The smoothed-RTT map (`--tcp-rtt`).
pub struct RttEvents {
    map: HashMap<MapData, FlowKey, RttValue>,
    keys: Vec<FlowKey>,
}

impl std::fmt::Debug for RttEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RttEvents").finish_non_exhaustive()
    }
}

impl RttEvents {
    /// Takes every connection's RTT samples since the last call.
    pub fn take(&mut self, f: impl FnMut(&FlowKey, &RttValue)) -> Result<u64, CaptureError> {
        take_all(&self.map, &mut self.keys, "reading the RTT map", f)
    }
}

/// The drops map and the names of the kernel's drop reasons.
pub struct DropEvents {
    map: HashMap<MapData, FlowKey, DropValue>,
    reasons: std::collections::HashMap<u32, String>,
    keys: Vec<FlowKey>,
}

impl std::fmt::Debug for DropEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropEvents")
            .field("reasons", &self.reasons.len())
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Attaches the drop program (its offsets were set from the kernel's BTF at load) and returns
    /// its map. Fails where the kernel's BTF lacks what it reads or BTF tracepoints cannot be
    /// attached: the caller goes on without drops, and says so.
    pub fn follow_drops(&mut self) -> Result<DropEvents, CaptureError> {
        let reasons = prepared(
            &mut self.drop_reasons,
            "the drop program is attached already",
        )?;
        self.attach_btf_tracepoint(PROG_KFREE_SKB, TP_KFREE_SKB)?;
        Ok(DropEvents {
            map: open_map(&mut self.ebpf, DROPS)?,
            reasons: reasons
                .into_iter()
                .map(|(v, n)| {
                    let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_owned();
                    (v, short)
                })
                .collect(),
            keys: Vec::new(),
        })
    }
}

impl Capture {
    /// Attaches the RTT program (`tcp_probe`; offsets from the kernel's BTF at load) and returns
    /// its map.
    pub fn follow_rtt(&mut self) -> Result<RttEvents, CaptureError> {
        prepared(&mut self.rtt_offsets, "the RTT program is attached already")?;
        self.attach_btf_tracepoint(PROG_TCP_PROBE, TP_TCP_PROBE)?;
        Ok(RttEvents {
            map: open_map(&mut self.ebpf, RTTS)?,
            keys: Vec::new(),
        })
    }

    /// Loads the BTF tracepoint program `name` for the kernel's tracepoint `tracepoint` (typed
    /// by the kernel's BTF) and attaches it.
    fn attach_btf_tracepoint(
        &mut self,
        name: &'static str,
        tracepoint: &str,
    ) -> Result<(), CaptureError> {
        let btf = aya::Btf::from_sys_fs().map_err(|_| CaptureError::Btf {
            source: BtfError::Malformed("aya cannot read the kernel's BTF"),
        })?;
        let err = |e| CaptureError::LoadProgram {
            name,
            source: Box::new(e),
        };
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram { name })?
            .try_into()
            .map_err(err)?;
        prog.load(tracepoint, &btf).map_err(err)?;
        prog.attach().map_err(err)?;
        Ok(())
    }
}

/// What the load prepared from the kernel's BTF for a tracepoint program, taken once: its
/// error, or `attached` if it was taken already.
fn prepared<T>(
    slot: &mut Option<Result<T, BtfError>>,
    attached: &'static str,
) -> Result<T, CaptureError> {
    match slot.take() {
        Some(r) => r.map_err(|source| CaptureError::Btf { source }),
        None => Err(CaptureError::Btf {
            source: BtfError::Malformed(attached),
        }),
    }
}

impl DropEvents {
    /// Takes every flow's drops counted since the last call (see `take_all`; the LRU map also
    /// evicts the oldest flows when 16 384 flows dropped packets within a flush).
    pub fn take(&mut self, f: impl FnMut(&FlowKey, &DropValue)) -> Result<u64, CaptureError> {
        take_all(&self.map, &mut self.keys, "reading the drops map", f)
    }

    /// The kernel's name of a drop reason (`NETFILTER_DROP`, `NO_SOCKET`, ...), or its number.
    pub fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }
}

//! The packets the node's kernel drops (see `podflow_ebpf::PROG_KFREE_SKB`): a BTF tracepoint on
//! `kfree_skb` adds each dropped IP packet to its flow's entry in an LRU map, with the kernel's
//! reason and where it was; user space takes the entries at each flush ([`crate::drops`]).
use std::os::fd::AsFd as _;

use aya::{
    maps::{HashMap, IterableMap as _, MapData},
    programs::BtfTracePoint,
};
use podflow_ebpf::{DROPS, DropValue, FlowKey, PROG_KFREE_SKB, TP_KFREE_SKB};

use super::{Capture, CaptureError, btf::BtfError, load::open_map, sys};

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
        let reasons = match self.drop_reasons.take() {
            Some(Ok(r)) => r,
            Some(Err(source)) => return Err(CaptureError::Btf { source }),
            None => {
                return Err(CaptureError::Btf {
                    source: BtfError::Malformed("the drop program is attached already"),
                });
            }
        };
        let btf = aya::Btf::from_sys_fs().map_err(|_| CaptureError::Btf {
            source: BtfError::Malformed("aya cannot read the kernel's BTF"),
        })?;
        let err = |e| CaptureError::LoadProgram {
            name: PROG_KFREE_SKB,
            source: Box::new(e),
        };
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(PROG_KFREE_SKB)
            .ok_or(CaptureError::MissingProgram {
                name: PROG_KFREE_SKB,
            })?
            .try_into()
            .map_err(err)?;
        prog.load(TP_KFREE_SKB, &btf).map_err(err)?;
        prog.attach().map_err(err)?;
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

impl DropEvents {
    /// Takes every flow's drops counted since the last call: read in batches
    /// (`BPF_MAP_LOOKUP_BATCH`, 256 entries a call), then deleted in one `BPF_MAP_DELETE_BATCH`.
    /// A drop counted between the read and the delete of its entry is lost (microseconds; the
    /// LRU map also evicts the oldest flows when 16 384 flows dropped packets within a flush).
    pub fn take(&mut self, mut f: impl FnMut(&FlowKey, &DropValue)) -> Result<u64, CaptureError> {
        let fd = self.map.map().fd().as_fd();
        self.keys.clear();
        let mut chunk = 256;
        let (mut keys, mut vals) = (
            vec![FlowKey::default(); chunk],
            vec![DropValue::default(); chunk],
        );
        let (mut token, mut first) = (0u64, true);
        loop {
            let (n, res) = sys::lookup_batch(fd, first, &mut token, &mut keys, &mut vals);
            match res.as_ref().err().and_then(std::io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {}
                Some(libc::ENOSPC) if n == 0 => {
                    // One bucket holds more entries than `chunk`: grow and retry it.
                    chunk *= 2;
                    keys.resize(chunk, FlowKey::default());
                    vals.resize(chunk, DropValue::default());
                    continue;
                }
                Some(_) => {
                    return Err(CaptureError::Drain {
                        op: "BPF_MAP_LOOKUP_BATCH (drops)",
                        source: res.err().unwrap_or_else(|| std::io::Error::other("?")),
                    });
                }
            }
            for (k, v) in keys[..n].iter().zip(&vals[..n]) {
                f(k, v);
            }
            self.keys.extend_from_slice(&keys[..n]);
            if res.is_err() {
                break;
            }
            first = false;
        }
        let (_, deleted) = sys::delete_batch(fd, &self.keys);
        deleted.map_err(|source| CaptureError::Drain {
            op: "BPF_MAP_DELETE_BATCH (drops)",
            source,
        })?;
        Ok(self.keys.len() as u64)
    }

    /// The kernel's name of a drop reason (`NETFILTER_DROP`, `NO_SOCKET`, ...), or its number.
    pub fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }
}

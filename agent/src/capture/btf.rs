//! The little of the kernel's BTF the drop program needs: where `struct sk_buff` keeps its
//! headers, length and device, and where a device keeps its ifindex and network namespace; and
//! the names of the kernel's drop reasons (`enum skb_drop_reason`, which grows from release to
//! release). The programs are built once; the offsets depend on the kernel's configuration, so
//! user space reads them from `/sys/kernel/btf/vmlinux` and sets them as the object's read-only
//! globals before loading (what CO-RE relocations do for C programs; Rust's BPF target does not
//! emit them). The verifier sees the globals as constants and checks every load against BTF.
//!
//! Only the parts of the format (`Documentation/bpf/btf.rst`) needed to walk the type section
//! and read struct members: every kind's size is known so that the walk stays aligned.
use podflow_ebpf::{CtOffsets, DropOffsets, RttOffsets};

/// Errors of reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path} failed")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
    #[error("unexpected layout: {0}")]
    Layout(String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type: its kind, name, `size`/`type` word, vlen, kind flag, and where its extra data is.
#[derive(Debug, Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    extra: usize,
}

/// A parsed type section (type id `n` is `types[n - 1]`; 0 is void).
#[derive(Debug)]
pub struct Btf {
    data: Vec<u8>,
    types: Vec<Type>,
    str_at: usize,
    str_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        const PATH: &str = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(PATH).map_err(|source| BtfError::Read { path: PATH, source })?;
        Btf::parse(data)
    }

    /// Parses a little-endian BTF blob (the kernel's byte order on every platform podflow runs
    /// on).
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let magic = data
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Malformed("truncated header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (or not little-endian)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let (type_off, type_len) = (u32_at(&data, 8)? as usize, u32_at(&data, 12)? as usize);
        let (str_off, str_len) = (u32_at(&data, 16)? as usize, u32_at(&data, 20)? as usize);
        let (type_at, str_at) = (hdr_len + type_off, hdr_len + str_off);
        if data.len() < type_at + type_len || data.len() < str_at + str_len {
            return Err(BtfError::Malformed("sections past the end"));
        }
        let mut types = Vec::new();
        let (mut at, end) = (type_at, type_at + type_len);
        while at < end {
            let info = u32_at(&data, at + 4)?;
            let t = Type {
                name_off: u32_at(&data, at)?,
                kind: (info >> 24) & 0x1f,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(&data, at + 8)?,
                extra: at + 12,
            };
            let extra = match t.kind {
                1 | 14 | 17 => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * t.vlen,
                6 | 13 => 8 * t.vlen,
                2 | 7 | KIND_TYPEDEF..=KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("unknown kind")),
            };
            types.push(t);
            at += 12 + extra;
        }
        Ok(Btf {
            data,
            types,
            str_at,
            str_len,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.str_at + off as usize;
        let all = self
            .data
            .get(start..self.str_at + self.str_len)
            .unwrap_or(&[]);
        all.split(|&b| b == 0).next().unwrap_or(&[])
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The struct named `name` (the first with members, not a forward declaration).
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .map(|i| i as u32 + 1)
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t) if matches!(t.kind, KIND_TYPEDEF..=KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = t.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    /// The byte offset and type of member `name` of the struct or union `id`, looking into
    /// anonymous struct and union members.
    fn member(&self, id: u32, name: &str) -> Option<(usize, u32)> {
        let t = self.ty(self.resolve(id))?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen {
            let at = t.extra + 12 * i;
            let (name_off, ty) = (
                u32_at(&self.data, at).ok()?,
                u32_at(&self.data, at + 4).ok()?,
            );
            let raw = u32_at(&self.data, at + 8).ok()?;
            let bits = if t.kind_flag { raw & 0x00ff_ffff } else { raw };
            if bits % 8 != 0 {
                continue; // a bitfield: never what is asked for
            }
            let offset = bits as usize / 8;
            let member_name = self.name(name_off);
            if member_name == name.as_bytes() {
                return Some((offset, ty));
            }
            if member_name.is_empty()
                && let Some((inner, ty)) = self.member(ty, name)
            {
                return Some((offset + inner, ty));
            }
        }
        None
    }

    /// The offset of `path` (member names, outermost first) in struct `name`, and the innermost
    /// member's type.
    fn offset_of(&self, name: &str, path: &[&str]) -> Result<(usize, u32), BtfError> {
        let (mut id, mut offset) = (self.struct_id(name)?, 0);
        for m in path {
            let (o, ty) = self
                .member(id, m)
                .ok_or_else(|| BtfError::Missing(format!("{name}.{}", path.join("."))))?;
            offset += o;
            id = ty;
        }
        Ok((offset, id))
    }

    /// The size of type `id` (structs, unions, arrays of them).
    fn size_of(&self, id: u32) -> Option<usize> {
        let t = self.ty(self.resolve(id))?;
        match t.kind {
            KIND_STRUCT | KIND_UNION | 1 | 6 | 19 => Some(t.size_or_type as usize),
            KIND_ARRAY => {
                let elem = u32_at(&self.data, t.extra).ok()?;
                let n = u32_at(&self.data, t.extra + 8).ok()? as usize;
                Some(self.size_of(elem)? * n)
            }
            2 => Some(8),
            _ => None,
        }
    }

    /// The offset of `path` in struct `st`, checked to be `size` bytes (the load the program
    /// makes there).
    fn field(&self, st: &str, path: &[&str], size: usize) -> Result<u32, BtfError> {
        let (off, ty) = self.offset_of(st, path)?;
        if self.size_of(ty) != Some(size) {
            return Err(BtfError::Layout(format!(
                "{st}.{} is not {size} bytes",
                path.join(".")
            )));
        }
        u32::try_from(off).map_err(|_| BtfError::Layout("offset too large".into()))
    }

    /// Where the drop program reads (see `podflow_ebpf::DropOffsets`), each load size checked.
    pub fn drop_offsets(&self) -> Result<DropOffsets, BtfError> {
        let field = |st: &str, path: &[&str], size| self.field(st, path, size);
        Ok(DropOffsets {
            skb_head: field("sk_buff", &["head"], 8)?,
            skb_network_header: field("sk_buff", &["network_header"], 2)?,
            skb_transport_header: field("sk_buff", &["transport_header"], 2)?,
            skb_len: field("sk_buff", &["len"], 4)?,
            skb_dev: field("sk_buff", &["dev"], 8)?,
            dev_ifindex: field("net_device", &["ifindex"], 4)?,
            dev_net: field("net_device", &["nd_net", "net"], 8)?,
            net_inum: field("net", &["ns", "inum"], 4)?,
        })
    }

    /// Where the RTT program reads (see `podflow_ebpf::RttOffsets`), each load size checked.
    pub fn rtt_offsets(&self) -> Result<RttOffsets, BtfError> {
        let field = |st: &str, path: &[&str], size| self.field(st, path, size);
        Ok(RttOffsets {
            skc_family: field("sock_common", &["skc_family"], 2)?,
            skc_daddr: field("sock_common", &["skc_daddr"], 4)?,
            skc_rcv_saddr: field("sock_common", &["skc_rcv_saddr"], 4)?,
            skc_dport: field("sock_common", &["skc_dport"], 2)?,
            skc_num: field("sock_common", &["skc_num"], 2)?,
            skc_v6_daddr: field("sock_common", &["skc_v6_daddr"], 16)?,
            skc_v6_rcv_saddr: field("sock_common", &["skc_v6_rcv_saddr"], 16)?,
            srtt_us: field("tcp_sock", &["srtt_us"], 4)?,
        })
    }

    /// Where the programs read a `struct nf_conn` (see `podflow_ebpf::CtOffsets`), the
    /// tuple layout the programs assume checked member by member.
    pub fn ct_offsets(&self) -> Result<CtOffsets, BtfError> {
        let (tuplehash, ty) = self.offset_of("nf_conn", &["tuplehash"])?;
        let (tuple, _) = self.offset_of("nf_conntrack_tuple_hash", &["tuple"])?;
        let entry = self
            .size_of(ty)
            .map(|n| n / 2)
            .ok_or_else(|| BtfError::Layout("nf_conn.tuplehash has no size".into()))?;
        let layout = [
            (&["src", "u3"][..], 0, 16),
            (&["src", "u", "all"][..], 16, 2),
            (&["src", "l3num"][..], 18, 2),
            (&["dst", "u3"][..], 20, 16),
            (&["dst", "u", "all"][..], 36, 2),
            (&["dst", "protonum"][..], 38, 1),
        ];
        for (path, at, size) in layout {
            if self.field("nf_conntrack_tuple", path, size)? != at {
                return Err(BtfError::Layout(format!(
                    "nf_conntrack_tuple.{} is not at {at}",
                    path.join(".")
                )));
            }
        }
        let at =
            |n: usize| u32::try_from(n).map_err(|_| BtfError::Layout("offset too large".into()));
        Ok(CtOffsets {
            orig: at(tuplehash + tuple)?,
            reply: at(tuplehash + entry + tuple)?,
            status: self.field("nf_conn", &["status"], 8)?,
            _pad: 0,
        })
    }

    /// The type id of the kernel function `name` (a `FUNC`: what a kfunc call names).
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name.as_bytes())
            .map(|i| i as u32 + 1)
            .ok_or_else(|| BtfError::Missing(format!("function {name}")))
    }

    /// The values and names of the enum `name` (`ENUM` or `ENUM64`, values that fit 32 bits).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(u32, String)>, BtfError> {
        let t = self
            .types
            .iter()
            .find(|t| matches!(t.kind, 6 | 19) && self.name(t.name_off) == name.as_bytes())
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let stride = if t.kind == 6 { 8 } else { 12 };
        (0..t.vlen)
            .map(|i| {
                let at = t.extra + stride * i;
                let n = String::from_utf8_lossy(self.name(u32_at(&self.data, at)?)).into_owned();
                Ok((u32_at(&self.data, at + 4)?, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout and drop reasons (skipped where it has no BTF).
    #[test]
    fn the_running_kernels_skb_layout_and_drop_reasons() {
        let Ok(btf) = Btf::from_sys_fs() else {
            return;
        };
        let o = btf.drop_offsets().unwrap_or_else(|e| panic!("{e}"));
        // The header offsets sit next to each other, before head.
        assert!(o.skb_transport_header < o.skb_head && o.skb_network_header < o.skb_head);
        assert_ne!(o.skb_transport_header, o.skb_network_header);
        let rtt = btf.rtt_offsets().unwrap_or_else(|e| panic!("{e}"));
        // struct sock starts with struct sock_common; tcp_sock embeds struct sock first.
        assert!(rtt.srtt_us > rtt.skc_v6_rcv_saddr && rtt.skc_num == rtt.skc_dport + 2);
        // The conntrack kfuncs and where nf_conn keeps its tuples: the reply tuple one
        // `nf_conntrack_tuple_hash` (56 bytes) after the original, both before the status.
        let ct = btf.ct_offsets().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ct.reply - ct.orig, 56);
        assert!(ct.status >= ct.reply + 40);
        for f in ["bpf_skb_ct_lookup", "bpf_ct_release"] {
            assert!(btf.func_id(f).is_ok_and(|id| id > 0), "{f}");
        }
        assert!(matches!(
            btf.func_id("no_such_kfunc"),
            Err(BtfError::Missing(_))
        ));
        let reasons = btf
            .enum_values("skb_drop_reason")
            .unwrap_or_else(|e| panic!("{e}"));
        let named = |n: &str| reasons.iter().any(|(_, r)| r == n);
        assert!(named("SKB_DROP_REASON_NETFILTER_DROP") && named("SKB_DROP_REASON_NOT_SPECIFIED"));
        assert!(matches!(
            btf.enum_values("no_such_enum"),
            Err(BtfError::Missing(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(matches!(
            Btf::parse(vec![0; 8]),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(Btf::parse(vec![]), Err(BtfError::Malformed(_))));
        // A valid header whose sections point past the end.
        let mut b = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        b.extend(0u32.to_le_bytes());
        b.extend(100u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        assert!(matches!(Btf::parse(b), Err(BtfError::Malformed(_))));
    }
}

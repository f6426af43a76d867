//! What the flow table asks of a source of address translations (the node's conntrack): for the
//! tuple a record was counted under, the real ends and what the node changed.
use podflow_ebpf::FlowKey;

use crate::{flows::ip_bytes, proto};

/// A translated flow, oriented like the record it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translated {
    /// The record's key with the real ends: the client and the backend (the reverse for a
    /// reply). Protocol, family and observation point are the record's.
    pub key: FlowKey,
    /// The destination the client addressed (address as in a flow key, port), when the node
    /// translated the destination.
    pub service: Option<([u8; 16], u16)>,
    /// The source the node rewrote the client's to, when it translated the source.
    pub snat: Option<([u8; 16], u16)>,
    /// The record is of the reply direction.
    pub reply: bool,
}

impl Translated {
    /// The record's `translation` field.
    pub fn to_proto(&self) -> proto::Translation {
        let family = self.key.family;
        let (service_ip, service_port) = self.service.map_or((Vec::new(), 0), |(a, p)| {
            (ip_bytes(family, &a), u32::from(p))
        });
        let (snat_ip, snat_port) = self.snat.map_or((Vec::new(), 0), |(a, p)| {
            (ip_bytes(family, &a), u32::from(p))
        });
        proto::Translation {
            service_ip,
            service_port,
            snat_ip,
            snat_port,
            reply: self.reply,
        }
    }
}

/// A source of translations.
pub trait Translate {
    /// The translation of the flow counted under `key`, if the node translated it.
    fn translate(&self, key: &FlowKey) -> Option<Translated>;
}

/// No translations (no conntrack, or tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTranslation;

impl Translate for NoTranslation {
    fn translate(&self, _key: &FlowKey) -> Option<Translated> {
        None
    }
}

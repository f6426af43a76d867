//! Loading the object: maps sized and opened, `CONFIG` written, programs through the verifier.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError},
    programs::SchedClassifier,
};
use podflow_ebpf::{
    CONFIG, CT_OFFSETS, Config, CtOffsets, DNS_PORT, DROP_OFFSETS, FLOWS_V4, FLOWS_V6,
    KFUNC_CT_RELEASE, KFUNC_SKB_CT_LOOKUP, PROG_CLOCK, PROG_L3_EGRESS, PROG_L3_INGRESS,
    PROG_VETH_EGRESS, PROG_VETH_INGRESS, RTT_OFFSETS, STATE, TCP_HANDSHAKES, VETHS,
};

use super::{
    Capture, CaptureConfig, CaptureError,
    btf::{Btf, BtfError},
    drain::Drainer,
    interfaces::Interfaces,
    kfunc,
    persist::{self, PINNED_MAPS, State},
};

/// The programs the agent loads (attached ones and the clock sampler).
const PROGRAMS: [&str; 5] = [
    PROG_VETH_INGRESS,
    PROG_VETH_EGRESS,
    PROG_L3_INGRESS,
    PROG_L3_EGRESS,
    PROG_CLOCK,
];

/// See [`Capture::load_object`].
pub(super) fn load(obj: &[u8], cfg: CaptureConfig) -> Result<Capture, CaptureError> {
    let entries = cfg.flow_map_entries.max(1);
    let dns_port = cfg.dns_port;
    let handshakes = u8::from(cfg.handshakes);
    let pins = cfg
        .pin_dir
        .as_deref()
        .map(|root| persist::prepare(root, entries, cfg.sample_rate))
        .transpose()?;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(FLOWS_V4, entries)
        .map_max_entries(FLOWS_V6, entries);
    if let Some(pins) = &pins {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    // The tracepoint programs' and the conntrack lookups' offsets, read from the kernel's BTF
    // only when one of them may be used (a 6 MB file to parse: not at every start); without
    // them they stay off.
    let btf = if cfg.tracepoints || cfg.conntrack {
        Btf::from_sys_fs()
    } else {
        Err(BtfError::Malformed(
            "no tracepoint program was asked for (--drops, --tcp-rtt)",
        ))
    };
    let (kfuncs, ct_offsets) = if cfg.conntrack {
        conntrack_kfuncs(&btf)
    } else {
        (Err("conntrack is off".to_owned()), CtOffsets::default())
    };
    let table = match &kfuncs {
        Ok((lookup, release)) => [
            (KFUNC_SKB_CT_LOOKUP, kfunc::Target::Kfunc(*lookup)),
            (KFUNC_CT_RELEASE, kfunc::Target::Kfunc(*release)),
        ],
        Err(_) => [
            (KFUNC_SKB_CT_LOOKUP, kfunc::Target::Null),
            (KFUNC_CT_RELEASE, kfunc::Target::Null),
        ],
    };
    let patched =
        kfunc::patch(obj, &table).ok_or(CaptureError::Object("not a little-endian ELF64 file"))?;
    loader.override_global(CT_OFFSETS, &ct_offsets, true);
    let drop_offsets = btf
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|b| b.drop_offsets().map_err(|e| e.to_string()));
    let drop_reasons = match &btf {
        Ok(b) => b.enum_values("skb_drop_reason"),
        Err(e) => Err(BtfError::Layout(e.to_string())),
    };
    let drop_reasons = match (&drop_offsets, drop_reasons) {
        (Ok(_), r) => r,
        (Err(e), _) => Err(BtfError::Layout(e.clone())),
    };
    let offsets = drop_offsets.unwrap_or_default();
    loader.override_global(DROP_OFFSETS, &offsets, true);
    let rtt_offsets = match &btf {
        Ok(b) => b.rtt_offsets(),
        Err(e) => Err(BtfError::Layout(e.to_string())),
    };
    let rtt = rtt_offsets.as_ref().copied().unwrap_or_default();
    loader.override_global(RTT_OFFSETS, &rtt, true);
    loader
        .override_global(DNS_PORT, &dns_port, true)
        .override_global(TCP_HANDSHAKES, &handshakes, true);
    let mut ebpf = loader
        .load(patched.bytes())
        .map_err(|e| CaptureError::Load {
            source: Box::new(e),
        })?;

    // aya-log: only if the object logs at all.
    let logger = if ebpf.map("AYA_LOGS").is_some() {
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "ebpf logging unavailable");
                None
            }
        }
    } else {
        None
    };

    let adopted = pins.as_ref().is_some_and(|p| p.adopted);
    let mut config_map: Array<MapData, Config> = open_map(&mut ebpf, CONFIG)?;
    // Adopted maps: the programs of the previous agent count into the current epoch; continue it.
    let epoch = if adopted {
        config_map
            .get(&0, 0)
            .map_err(|source| CaptureError::Map {
                op: "read CONFIG",
                source,
            })?
            .epoch
    } else {
        0
    };
    config_map
        .set(
            0,
            Config {
                epoch,
                sample_rate: cfg.sample_rate,
            },
            0,
        )
        .map_err(|source| CaptureError::Map {
            op: "write CONFIG",
            source,
        })?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    let state = State::new(open_map(&mut ebpf, STATE)?);
    let reported = adopted.then(|| state.reported());
    let drainer = Drainer::new(&mut ebpf, config_map, cfg.sample_rate, entries, epoch)?;
    let links_dir = pins.as_ref().map(persist::Pins::links_dir);
    let gaps = pins.map(|p| p.gaps).unwrap_or_default();
    let mut prog_ids = std::collections::HashMap::new();
    for name in [
        PROG_VETH_INGRESS,
        PROG_VETH_EGRESS,
        PROG_L3_INGRESS,
        PROG_L3_EGRESS,
    ] {
        if let Some(id) = program(&ebpf, name)?.info().ok().map(|i| i.id()) {
            prog_ids.insert(name, id);
        }
    }
    let interfaces = Interfaces::new(open_map(&mut ebpf, VETHS)?, cfg, links_dir, prog_ids);
    tracing::info!(
        flow_map_entries = drainer.capacity(),
        sample_rate = drainer.sample_rate(),
        hz = drainer.clock().hz(),
        adopted,
        epoch,
        "ebpf programs loaded"
    );
    Ok(Capture {
        interfaces,
        drainer,
        state,
        reported,
        gaps,
        ebpf,
        logger,
        dns_port,
        handshakes: handshakes != 0,
        drop_reasons: Some(drop_reasons),
        rtt_offsets: Some(rtt_offsets.map(|_| ())),
        kernel_conntrack: kfuncs.map(|_| ()),
    })
}

/// The BTF ids of `bpf_skb_ct_lookup` and `bpf_ct_release` and where `struct nf_conn` keeps
/// its tuples and status; the reason when the kernel cannot give them (no BTF, conntrack not
/// built in or not loaded, a kernel before 6.0).
fn conntrack_kfuncs(btf: &Result<Btf, BtfError>) -> (Result<(u32, u32), String>, CtOffsets) {
    let found = btf.as_ref().map_err(|e| e.to_string()).and_then(|b| {
        let ids = (|| {
            Ok::<_, BtfError>((
                b.func_id("bpf_skb_ct_lookup")?,
                b.func_id("bpf_ct_release")?,
            ))
        })();
        ids.and_then(|ids| Ok((ids, b.ct_offsets()?)))
            .map_err(|e| e.to_string())
    });
    match found {
        Ok((ids, offsets)) => (Ok(ids), offsets),
        Err(e) => (Err(e), CtOffsets::default()),
    }
}

/// Takes the map `name` out of the object as a `T` (a typed aya map).
pub(super) fn open_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(CaptureError::MissingMap { name })?;
    T::try_from(map).map_err(|source| CaptureError::OpenMap { name, source })
}

/// The tc program `name` of the object.
pub(super) fn program<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a SchedClassifier, CaptureError> {
    ebpf.program(name)
        .ok_or(CaptureError::MissingProgram { name })?
        .try_into()
        .map_err(|e| CaptureError::LoadProgram {
            name,
            source: Box::new(e),
        })
}

/// Loads the tc program `name` of the object into the kernel.
pub(super) fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), CaptureError> {
    let err = |e| CaptureError::LoadProgram {
        name,
        source: Box::new(e),
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(CaptureError::MissingProgram { name })?
        .try_into()
        .map_err(err)?;
    prog.load().map_err(err)
}

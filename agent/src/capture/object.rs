//! The eBPF object built from `agent-ebpf/` by the build script.

/// The compiled eBPF object (ELF), 8-byte aligned as aya requires.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podflow-ebpf"));

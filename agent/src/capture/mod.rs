//! Capture: load the eBPF object, attach its tc programs to the node's pod veths and L3 tunnel
//! interfaces (tcx, or clsact + cls_bpf where tcx is missing), follow netlink for interfaces that
//! come and go, and drain the kernel's flow maps.
//!
//! CONTRACT used by `agent.rs` (owned by the capture work; keep these signatures or update the
//! caller):
//!
//! ```ignore
//! let mut cap = Capture::load(CaptureConfig { .. })?;      // loads + configures, attaches nothing
//! let changes = cap.sync_interfaces()?;                      // attach to every matching existing link
//! let mut events = LinkWatcher::new()?;                      // netlink RTM_NEWLINK/DELLINK stream
//! while let Some(ev) = events.next().await { cap.handle_link_event(ev)?; }
//! let drain: Drain = cap.drain()?;                           // flip, RCU-sync, read, clear
//! cap.interfaces();                                          // Vec<AttachedInterface>
//! cap.interface_name(ifindex);                               // also for recently removed ones
//! cap.detach_all();                                          // on SIGTERM: only what we attached
//! ```
pub mod object;

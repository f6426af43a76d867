//! An in-process `Capture` pinned to a thread of a node namespace ([`CaptureThread`]), and what
//! the kernel has attached there ([`attached_programs`], [`podflow_programs`]).
use std::cell::RefCell;

use podflow::capture::{Capture, CaptureConfig};
use podflow_testbed::{Netns, Node, NsThread, unique_prefix};
use serde_json::Value;

/// A node namespace (`<tag>…-node`, unique) with `n` pods `pod0`… behind host veths
/// `<veth_prefix>0`… (keep the prefix ≤ 13 bytes), addresses 10.77.0.1… and fd00:77::1… in
/// creation order. Addresses and veth names may repeat across tests running in parallel: every
/// node namespace is its own isolated world.
pub fn node_with_pods(tag: &str, veth_prefix: &str, n: usize) -> Node {
    let mut node = Node::new(&unique_prefix(tag), 77).expect("node namespace");
    for i in 0..n {
        node.add_pod(&format!("pod{i}"), &format!("{veth_prefix}{i}"))
            .expect("pod");
    }
    node
}

thread_local! {
    /// The capture of the [`CaptureThread`] running on this thread.
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// A `Capture` loaded on, and owned by, a thread inside a namespace (its attachments, netlink
/// socket and interface lookups live there), driven step by step from the test. Dropping it
/// drops the capture on that thread, then ends the thread.
pub struct CaptureThread {
    thread: NsThread,
}

impl CaptureThread {
    pub fn load(ns: &Netns, cfg: CaptureConfig) -> CaptureThread {
        let thread = NsThread::new(ns).expect("namespace thread");
        thread
            .run(move || {
                let cap = Capture::load(cfg).expect("load");
                CAPTURE.with(|c| *c.borrow_mut() = Some(cap));
            })
            .unwrap_or_else(|e| panic!("{e}"));
        CaptureThread { thread }
    }

    /// Runs `f` on the capture, on its thread; a panic in `f` fails the test with its message.
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Capture) -> R + Send + 'static) -> R {
        self.thread
            .run(move || {
                CAPTURE.with(|c| {
                    f(c.borrow_mut()
                        .as_mut()
                        .expect("capture loaded on this thread"))
                })
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        let _ = self
            .thread
            .run(|| CAPTURE.with(|c| drop(c.borrow_mut().take())));
    }
}

/// One BPF program attached to a tc hook of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetProg {
    pub dev: String,
    pub ifindex: u32,
    /// "ingress" / "egress".
    pub direction: String,
    /// Program name (the kernel's, at most 15 characters) or cls_bpf filter name.
    pub name: String,
    /// "tcx" (tcx link / mprog) or "tc" (cls_bpf filter under clsact).
    pub kind: String,
    pub prog_id: u32,
}

/// Every BPF program attached to a tc hook in `ns`, from the kernel:
/// * tcx: `BPF_PROG_QUERY` (aya's `SchedClassifier::query_tcx`) for every device and direction,
///   on a thread inside `ns` (Debian's bpftool 7.1 predates tcx in `bpftool net`);
/// * cls_bpf: `bpftool -j net show` run inside `ns`.
pub fn attached_programs(ns: &Netns) -> Vec<NetProg> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let devs = ns.links().expect("ip link");
    let mut progs = ns
        .run(move || {
            let mut out = Vec::new();
            for (ifindex, dev) in devs {
                for (dir, t) in [
                    ("ingress", TcAttachType::Ingress),
                    ("egress", TcAttachType::Egress),
                ] {
                    // Fails on devices without tcx state: none attached.
                    let Ok((_rev, infos)) = SchedClassifier::query_tcx(&dev, t) else {
                        continue;
                    };
                    for info in infos {
                        out.push(NetProg {
                            dev: dev.clone(),
                            ifindex,
                            direction: dir.into(),
                            name: info.name_as_str().unwrap_or_default().to_string(),
                            kind: "tcx".into(),
                            prog_id: info.id(),
                        });
                    }
                }
            }
            out
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let out = ns
        .exec("bpftool", &["-j", "net", "show"])
        .expect("bpftool net show");
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool json: {e}: {out}"));
    // Output: [ { "xdp": [...], "tc": [ {devname, ifindex, kind, name, id}, ... ], ... } ]
    for section in v.as_array().into_iter().flatten() {
        for e in section
            .get("tc")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let s = |k: &str| {
                e.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let n = |k: &str| e.get(k).and_then(|x| x.as_u64()).unwrap_or_default() as u32;
            let kind = s("kind");
            // "clsact/ingress", "clsact/egress"; newer bpftool also lists "tcx/ingress" ones,
            // which the query above already has.
            let (k, dir) = kind.split_once('/').unwrap_or((kind.as_str(), ""));
            if k == "tcx" {
                continue;
            }
            let name = s("name");
            progs.push(NetProg {
                dev: s("devname"),
                ifindex: n("ifindex"),
                direction: dir.to_string(),
                // A filter loaded by tc from an object file is named "file.o:[section]".
                name: name.split(':').next().unwrap_or_default().to_string(),
                kind: "tc".into(),
                // bpftool calls it "id" (older versions "prog_id").
                prog_id: n("id").max(n("prog_id")),
            });
        }
    }
    progs
}

/// How many programs named `prefix*` are attached on `dev`/`direction`.
pub fn count_progs(progs: &[NetProg], dev: &str, direction: &str, prefix: &str) -> usize {
    progs
        .iter()
        .filter(|p| p.dev == dev && p.direction == direction && p.name.starts_with(prefix))
        .count()
}

/// Asserts that exactly one podflow program is attached per direction on each of the veths
/// `devs` (`podflow_veth_in` / `podflow_veth_eg`), attached as `kind` ("tcx" or "tc").
pub fn assert_one_each(node: &Netns, devs: &[&str], kind: &str) {
    let progs = attached_programs(node);
    for dev in devs {
        for (dir, name) in [
            ("ingress", "podflow_veth_in"),
            ("egress", "podflow_veth_eg"),
        ] {
            let n = count_progs(&progs, dev, dir, "podflow_");
            assert_eq!(
                n, 1,
                "{dev} {dir}: {n} podflow programs; bpftool: {progs:#?}"
            );
            let p = progs
                .iter()
                .find(|p| p.dev == *dev && p.direction == dir && p.name.starts_with("podflow_"))
                .unwrap_or_else(|| panic!("no podflow program on {dev} {dir}"));
            // bpftool shows the kernel's program name (truncated to 15 chars) or the filter name.
            assert!(
                name.starts_with(&p.name) || p.name.starts_with(name),
                "{p:?} vs {name}"
            );
            assert_eq!(p.kind, kind, "{p:?}");
        }
    }
}

/// podflow programs attached in a namespace (from [`attached_programs`]), sorted, as
/// (interface, hook, program name) with hook "tcx/ingress", "clsact/egress"...
pub fn podflow_programs(ns: &Netns) -> Vec<(String, String, String)> {
    let mut progs: Vec<(String, String, String)> = attached_programs(ns)
        .into_iter()
        .filter(|p| p.name.starts_with("podflow"))
        .map(|p| {
            let hook = if p.kind == "tcx" { "tcx" } else { "clsact" };
            (p.dev, format!("{hook}/{}", p.direction), p.name)
        })
        .collect();
    progs.sort();
    progs
}

/// A BPF file system mounted on a temporary directory; unmounted (which drops every pin in it) on
/// drop.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Bpffs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t bpf failed");
        Bpffs { dir }
    }

    pub fn pin_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("podflow")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The ids of the tcx links on `ifname`'s ingress (`BPF_PROG_QUERY` inside `ns`).
pub fn tcx_ingress_links(ns: &Netns, ifname: &str) -> Vec<u32> {
    let ifname = ifname.to_owned();
    ns.run(move || {
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        podflow::capture::tcx_ingress_links(ifindex).expect("BPF_PROG_QUERY")
    })
    .expect("query in the namespace")
}

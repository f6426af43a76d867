//! Hooks for tests and the benchmark, outside the agent's path: forcing the per-entry drain,
//! running a loaded program on crafted packets, and the empty reference program.
use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, tc},
};
use podflow_ebpf::{FLOWS_V4, FLOWS_V6, PROG_EMPTY};

use super::{Capture, CaptureError, dir_str, load, object};

impl Capture {
    /// Uses (`true`, the default) or avoids `BPF_MAP_LOOKUP_BATCH`/`BPF_MAP_DELETE_BATCH` in
    /// [`Capture::drain`]; `false` forces the per-entry path (lookup each key, then delete each).
    /// The batch path also turns itself off if the kernel refuses the command.
    #[doc(hidden)]
    pub fn set_batch_drain(&mut self, on: bool) {
        self.drainer.set_batch(on);
    }

    /// Runs the loaded tc program `name` on `data` (`ctx`: a `struct __sk_buff`, or empty)
    /// `repeat` times with `BPF_PROG_TEST_RUN`, as if packets had crossed a hook — for tests of
    /// the drain path with packets no real interface could deliver in a test's time.
    #[doc(hidden)]
    pub fn test_run_program(
        &mut self,
        name: &'static str,
        data: &[u8],
        ctx: &[u8],
        repeat: u32,
    ) -> Result<(), CaptureError> {
        let mut out = vec![0u8; data.len() + 64];
        load::program(&self.ebpf, name)?
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: (!ctx.is_empty()).then_some(ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| CaptureError::LoadProgram {
                name,
                source: Box::new(e),
            })?;
        Ok(())
    }
}

/// The empty tc program of podflow's object ([`PROG_EMPTY`]: `r0 = TC_ACT_UNSPEC; exit`), loaded
/// on its own: what the benchmark and the per-packet cost test measure the hook itself with. Its
/// tcx links live as long as it does.
pub struct EmptyProgram {
    ebpf: Ebpf,
}

impl EmptyProgram {
    /// Loads the program (the object's flow maps are created with one entry each).
    pub fn load() -> Result<EmptyProgram, CaptureError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_V4, 1)
            .map_max_entries(FLOWS_V6, 1)
            .load(object::EBPF_OBJECT)
            .map_err(|e| CaptureError::Load {
                source: Box::new(e),
            })?;
        load::load_program(&mut ebpf, PROG_EMPTY)?;
        Ok(EmptyProgram { ebpf })
    }

    /// Attaches it first in the tcx chain of `ifname`'s hook `dir` (in the calling thread's
    /// network namespace) until it is dropped.
    pub fn attach(&mut self, ifname: &str, dir: TcAttachType) -> Result<(), CaptureError> {
        let err = |e| CaptureError::Attach {
            program: PROG_EMPTY,
            iface: ifname.to_owned(),
            direction: dir_str(dir),
            mode: "tcx",
            source: Box::new(e),
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_EMPTY)
            .ok_or(CaptureError::MissingProgram { name: PROG_EMPTY })?
            .try_into()
            .map_err(err)?;
        prog.attach_with_options(
            ifname,
            dir,
            tc::TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(err)?;
        Ok(())
    }

    /// How many 8-byte instruction slots the kernel holds of it (after verification): 3 for
    /// `r0 = -1; exit` as rustc emits it (`r0 = 0xffffffff ll` is a 16-byte `ld_imm64`).
    pub fn insn_slots(&self) -> Result<u32, CaptureError> {
        let err = |e| CaptureError::LoadProgram {
            name: PROG_EMPTY,
            source: Box::new(e),
        };
        let info = load::program(&self.ebpf, PROG_EMPTY)?.info().map_err(err)?;
        Ok(info.size_translated().unwrap_or(0) / 8)
    }

    /// Runs it `repeat` times on `data` with `BPF_PROG_TEST_RUN`.
    pub fn test_run(
        &self,
        data: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult, CaptureError> {
        load::program(&self.ebpf, PROG_EMPTY)?
            .test_run(TestRunOptions {
                data_in: Some(data),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| CaptureError::LoadProgram {
                name: PROG_EMPTY,
                source: Box::new(e),
            })
    }
}

/// The ids of the tcx links on the ingress hook of `ifindex`, in this thread's network
/// namespace, in order (`BPF_PROG_QUERY`; programs attached without a link are left out).
#[doc(hidden)]
pub fn tcx_ingress_links(ifindex: u32) -> std::io::Result<Vec<u32>> {
    Ok(super::sys::tcx_query(ifindex, super::sys::BPF_TCX_INGRESS)?
        .into_iter()
        .filter_map(|(_, link)| (link != 0).then_some(link))
        .collect())
}

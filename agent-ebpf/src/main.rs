#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};

    #[classifier]
    pub fn podflow_veth_in(_ctx: TcContext) -> i32 {
        TC_ACT_PIPE
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

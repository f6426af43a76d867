//! The memory floor of a flow-map lookup: the latency of one dependent random access into a
//! buffer the size of the maps, with 4 KiB pages.
use std::time::Instant;

use anyhow::ensure;

/// ns per step of a pointer chase through a random cyclic permutation of the cache lines of a
/// `bytes` buffer backed by 4 KiB pages (`MADV_NOHUGEPAGE`, like the kernel's vmalloc'd map
/// memory): the latency of one dependent access that misses the caches and the TLB, which is what
/// a hash lookup pays twice (bucket, then element) when flows are many.
pub fn memory_latency_ns(bytes: usize) -> anyhow::Result<f64> {
    const LINE: usize = 64;
    let lines = (bytes / LINE).max(2);
    let len = lines * LINE;
    // SAFETY: anonymous private mapping, checked below; unmapped at the end.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(p != libc::MAP_FAILED, "mmap {len} bytes failed");
    // SAFETY: the mapping above.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    let base = p.cast::<u8>();
    // A random cyclic order of the lines (xorshift-shuffled), each line pointing at the next.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for w in 0..lines {
        let (from, to) = (order[w], order[(w + 1) % lines]);
        // SAFETY: both offsets are line starts inside the mapping; 8-aligned.
        unsafe {
            *base.add(from * LINE).cast::<usize>() = base.add(to * LINE) as usize;
        }
    }
    let steps = 2_000_000usize;
    let mut cur = base.wrapping_add(order[0] * LINE) as usize;
    // Warm-up: a full lap (page tables, caches as warm as they get).
    for _ in 0..lines {
        // SAFETY: `cur` always holds a line start written above.
        cur = unsafe { *(cur as *const usize) };
    }
    let t = Instant::now();
    for _ in 0..steps {
        // SAFETY: as above.
        cur = unsafe { std::ptr::read_volatile(cur as *const usize) };
    }
    let ns = t.elapsed().as_nanos() as f64 / steps as f64;
    std::hint::black_box(cur);
    // SAFETY: the mapping above, no references into it remain.
    unsafe { libc::munmap(p, len) };
    Ok(ns)
}

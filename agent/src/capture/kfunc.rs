//! Kernel function (kfunc) calls in the object. Rust's BPF target cannot emit a kfunc call (an
//! instruction `call` whose source register is `BPF_PSEUDO_KFUNC_CALL` and whose immediate is the
//! function's BTF id in the running kernel), so the programs call placeholder helper numbers
//! (`podflow_ebpf::KFUNC_*`) and the loader rewrites those instructions in a copy of the object
//! before aya reads it: into the kfunc call where the kernel has the function, into `r0 = 0`
//! (the function "returned NULL") where it does not. aya relocates only BPF-to-BPF calls and
//! leaves both forms alone.

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const MOV64_IMM: u8 = 0xb7;
/// `src_reg` of a kfunc call.
const PSEUDO_KFUNC_CALL: u8 = 2;
/// `SHF_EXECINSTR`.
const EXEC: u64 = 0x4;

/// What a placeholder becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A call of the kernel function with this BTF id (in vmlinux).
    Kfunc(u32),
    /// `r0 = 0`.
    Null,
}

/// An object whose placeholders were rewritten, 8-byte aligned as aya requires.
pub struct Patched {
    words: Vec<u64>,
    len: usize,
    /// Instructions rewritten.
    pub calls: usize,
}

impl Patched {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The byte ranges of the executable sections of a little-endian ELF64 object.
fn code_sections(elf: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    if elf.get(0..4)? != b"\x7fELF" || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let (entsize, count) = (
        usize::from(u16_at(elf, 0x3a)?),
        usize::from(u16_at(elf, 0x3c)?),
    );
    let mut out = Vec::new();
    for i in 0..count {
        let sh = shoff + i * entsize;
        let flags = u64_at(elf, sh + 8)?;
        let (off, size) = (
            usize::try_from(u64_at(elf, sh + 24)?).ok()?,
            usize::try_from(u64_at(elf, sh + 32)?).ok()?,
        );
        if flags & EXEC != 0 && size > 0 {
            let end = off.checked_add(size)?;
            (end <= elf.len()).then_some(())?;
            out.push(off..end);
        }
    }
    Some(out)
}

/// Rewrites every call of a placeholder helper number in `table` (placeholder → target).
/// `None`: `elf` is not a little-endian ELF64 object.
pub fn patch(elf: &[u8], table: &[(u32, Target)]) -> Option<Patched> {
    let sections = code_sections(elf)?;
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    // SAFETY: `words` has room for `elf.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), elf.len()) };
    bytes.copy_from_slice(elf);
    let mut calls = 0;
    for range in sections {
        let mut at = range.start;
        while at + 8 <= range.end {
            let insn = &mut bytes[at..at + 8];
            let imm = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] == CALL
                && insn[1] == 0
                && let Some(&(_, target)) = table.iter().find(|(p, _)| *p == imm)
            {
                let (code, regs, imm) = match target {
                    Target::Kfunc(id) => (CALL, PSEUDO_KFUNC_CALL << 4, id),
                    Target::Null => (MOV64_IMM, 0, 0),
                };
                insn[0] = code;
                insn[1] = regs;
                insn[2..4].fill(0);
                insn[4..8].copy_from_slice(&imm.to_le_bytes());
                calls += 1;
            }
            // A 16-byte `ld_imm64` (0x18): its second half is not an instruction.
            at += if insn[0] == 0x18 { 16 } else { 8 };
        }
    }
    Some(Patched {
        words,
        len: elf.len(),
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOKUP: u32 = podflow_ebpf::KFUNC_SKB_CT_LOOKUP;

    /// A minimal ELF64 object: one executable section holding `code`, one data section holding
    /// the same bytes (not instructions: left alone).
    fn elf(code: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        let text = b.len();
        b.extend_from_slice(code);
        let data = b.len();
        b.extend_from_slice(code);
        let shoff = b.len();
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        for (flags, off) in [(0x6u64, text), (0x3, data)] {
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&1u32.to_le_bytes());
            sh[8..16].copy_from_slice(&flags.to_le_bytes());
            sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
            b.extend_from_slice(&sh);
        }
        b
    }

    fn insn(code: u8, regs: u8, imm: u32) -> [u8; 8] {
        let mut i = [code, regs, 0, 0, 0, 0, 0, 0];
        i[4..].copy_from_slice(&imm.to_le_bytes());
        i
    }

    #[test]
    fn rewrites_placeholder_calls_in_code_only() {
        let mut code = Vec::new();
        code.extend(insn(CALL, 0, LOOKUP));
        // An ld_imm64 whose second half looks like the placeholder call: not an instruction.
        code.extend(insn(0x18, 0x01, 0));
        code.extend(insn(CALL, 0, LOOKUP));
        code.extend(insn(CALL, 0, 12)); // a helper call
        code.extend(insn(CALL, 0x10, LOOKUP)); // a BPF-to-BPF call
        let obj = elf(&code);
        let p = patch(&obj, &[(LOOKUP, Target::Kfunc(65_112))]).expect("elf");
        assert_eq!(p.calls, 1);
        let out = p.bytes();
        assert_eq!(out.len(), obj.len());
        assert_eq!(out.as_ptr() as usize % 8, 0);
        assert_eq!(&out[64..72], insn(CALL, 0x20, 65_112));
        assert_eq!(out[72..], obj[72..], "everything else as it was");

        let p = patch(&obj, &[(LOOKUP, Target::Null)]).expect("elf");
        assert_eq!(&p.bytes()[64..72], insn(MOV64_IMM, 0, 0));
        assert!(patch(b"not an object", &[]).is_none());
        let mut truncated = obj.clone();
        truncated.truncate(obj.len() - 40);
        assert!(patch(&truncated, &[]).is_none());
    }
}

//! Decoding the guest instruction behind an MMIO exit.
//!
//! An EPT violation on an MMIO page tells the hypervisor the guest-physical
//! address but not the access width, the register or the value; those come
//! from the instruction at guest RIP. This module decodes it with `iced-x86`
//! and describes the access for the common `MOV` forms (Intel SDM Vol. 2B,
//! "MOV—Move", "MOVZX—Move With Zero-Extension", "MOVSX/MOVSXD—Move With
//! Sign-Extension"):
//!
//! | form                  | result                                   |
//! |-----------------------|------------------------------------------|
//! | `mov r/m, r` (88, 89, A2, A3) | [`MmioOp::Write`] from a register |
//! | `mov r/m, imm` (C6, C7)       | [`MmioOp::Write`] of an immediate |
//! | `mov r, r/m` (8A, 8B, A0, A1) | [`MmioOp::Read`], zero-extend     |
//! | `movzx` (0F B6, 0F B7)        | [`MmioOp::Read`], zero-extend     |
//! | `movsx`/`movsxd` (0F BE, 0F BF, 63) | [`MmioOp::Read`], sign-extend |
//!
//! Everything else (read-modify-write ALU forms, `test`/`cmp`, string
//! instructions, segment-register moves, SSE) is [`DecodeError::Unsupported`],
//! which the hypervisor turns into a logged guest fault. Nothing here panics
//! on any input.
//!
//! [`GprFile`] helpers apply the SDM Vol. 1 3.4.1.1 partial-register rules
//! to a `[u64; 16]` register file: a 32-bit destination zero-extends into
//! bits 63:32, 8- and 16-bit destinations (including AH..BH) merge.
use core::fmt;

use iced_x86::{Decoder, DecoderError, DecoderOptions, MemorySize, Mnemonic, OpKind, Register};

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// The code-segment size the guest executes in (CS.L / CS.D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 16-bit code (real mode or 16-bit protected mode).
    Bits16,
    /// 32-bit code (protected mode or compatibility mode).
    Bits32,
    /// 64-bit code.
    Bits64,
}

/// A 64-bit general-purpose register, numbered as in the ModRM/REX encoding
/// and as the index into a [`GprFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

const GPRS: [Gpr; 16] = [
    Gpr::Rax,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rbx,
    Gpr::Rsp,
    Gpr::Rbp,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// The guest's general-purpose registers, indexed by [`Gpr`].
pub type GprFile = [u64; 16];

/// A general-purpose register operand of some width: `CL` is
/// `{ gpr: Rcx, width: 1, high_byte: false }`, `AH` is
/// `{ gpr: Rax, width: 1, high_byte: true }`, `R8D` is `{ R8, 4, false }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegRef {
    /// The full register this is part of.
    pub gpr: Gpr,
    /// Operand width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// Bits 15:8 (AH, CH, DH, BH).
    pub high_byte: bool,
}

impl RegRef {
    /// The operand's value, zero-extended.
    pub fn read(self, regs: &GprFile) -> u64 {
        let full = regs[self.gpr as usize];
        if self.high_byte {
            (full >> 8) & 0xFF
        } else {
            full & mask(self.width)
        }
    }

    /// Store `value` (its low `width` bytes) with x86 partial-register
    /// semantics: 32-bit writes zero-extend, 8/16-bit writes merge.
    pub fn write(self, regs: &mut GprFile, value: u64) {
        let full = &mut regs[self.gpr as usize];
        *full = match (self.width, self.high_byte) {
            (_, true) => (*full & !0xFF00) | ((value & 0xFF) << 8),
            (8, _) => value,
            (4, _) => value & 0xFFFF_FFFF,
            (w, _) => (*full & !mask(w)) | (value & mask(w)),
        };
    }
}

/// How a read value narrower than its destination is widened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// `mov`, `movzx`.
    Zero,
    /// `movsx`, `movsxd`.
    Sign,
}

/// What a store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A register's value.
    Reg(RegRef),
    /// An immediate, already sign-extended as the instruction defines and
    /// truncated to the access size.
    Imm(u64),
}

/// The memory access an instruction performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// Load `size` bytes into `dest`, widened by `extend`.
    Read {
        /// Access size in bytes (1, 2, 4, 8).
        size: u8,
        /// Destination register (may be wider than `size`).
        dest: RegRef,
        /// How to widen.
        extend: Extension,
    },
    /// Store `size` bytes from `src`.
    Write {
        /// Access size in bytes (1, 2, 4, 8).
        size: u8,
        /// The stored value's origin.
        src: Source,
    },
}

impl MmioOp {
    /// Access size in bytes.
    pub fn size(&self) -> u8 {
        match *self {
            MmioOp::Read { size, .. } | MmioOp::Write { size, .. } => size,
        }
    }

    /// For a write: the value to store (low `size` bytes). `None` for reads.
    pub fn write_value(&self, regs: &GprFile) -> Option<u64> {
        match *self {
            MmioOp::Write { size, src } => Some(match src {
                Source::Reg(r) => r.read(regs) & mask(size),
                Source::Imm(v) => v & mask(size),
            }),
            MmioOp::Read { .. } => None,
        }
    }

    /// For a read: put the device's `value` (low `size` bytes used) into the
    /// destination register. Does nothing for writes.
    pub fn complete_read(&self, regs: &mut GprFile, value: u64) {
        if let MmioOp::Read { size, dest, extend } = *self {
            let v = value & mask(size);
            let v = match extend {
                Extension::Sign if size < 8 => {
                    let shift = 64 - 8 * u32::from(size);
                    (((v << shift) as i64) >> shift) as u64
                }
                _ => v,
            };
            dest.write(regs, v);
        }
    }
}

/// A decoded MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInsn {
    /// The access.
    pub op: MmioOp,
    /// Instruction length: advance RIP by this much after emulating it.
    pub len: u8,
}

/// Why the instruction cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end inside the instruction (fetch more, or the guest
    /// code straddles an unreadable page).
    Truncated,
    /// Not a valid instruction in this mode (the guest would get #UD).
    Invalid,
    /// A valid instruction this emulator does not handle.
    Unsupported(Mnemonic),
    /// A `mov` that does not access memory (the exit cannot have come from
    /// it: the bytes are not the faulting instruction).
    NoMemoryOperand,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "instruction bytes end early"),
            DecodeError::Invalid => write!(f, "invalid instruction"),
            DecodeError::Unsupported(m) => {
                write!(f, "MMIO access by unsupported instruction {m:?}")
            }
            DecodeError::NoMemoryOperand => write!(f, "instruction has no memory operand"),
        }
    }
}

/// Decode the instruction at the start of `bytes` (at most
/// [`MAX_INSN_LEN`] are used) and describe its memory access.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<MmioInsn, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let bitness = match mode {
        CpuMode::Bits16 => 16,
        CpuMode::Bits32 => 32,
        CpuMode::Bits64 => 64,
    };
    let mut decoder = Decoder::try_with_ip(bitness, bytes, 0, DecoderOptions::NONE)
        .map_err(|_| DecodeError::Invalid)?;
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            DecoderError::NoMoreBytes => DecodeError::Truncated,
            _ => DecodeError::Invalid,
        });
    }
    let mnemonic = insn.mnemonic();
    let unsupported = DecodeError::Unsupported(mnemonic);
    let extend = match mnemonic {
        Mnemonic::Mov | Mnemonic::Movzx => Extension::Zero,
        Mnemonic::Movsx | Mnemonic::Movsxd => Extension::Sign,
        _ => return Err(unsupported),
    };
    let size = || access_size(insn.memory_size()).ok_or(unsupported);
    let op = match (insn.op0_kind(), insn.op1_kind()) {
        (OpKind::Register, OpKind::Memory) => MmioOp::Read {
            size: size()?,
            dest: reg_ref(insn.op0_register()).ok_or(unsupported)?,
            extend,
        },
        (OpKind::Memory, OpKind::Register) if mnemonic == Mnemonic::Mov => MmioOp::Write {
            size: size()?,
            src: Source::Reg(reg_ref(insn.op1_register()).ok_or(unsupported)?),
        },
        (
            OpKind::Memory,
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64,
        ) if mnemonic == Mnemonic::Mov => {
            let size = size()?;
            MmioOp::Write {
                size,
                src: Source::Imm(insn.immediate(1) & mask(size)),
            }
        }
        _ if mnemonic == Mnemonic::Mov => return Err(DecodeError::NoMemoryOperand),
        _ => return Err(unsupported),
    };
    Ok(MmioInsn {
        op,
        len: insn.len() as u8,
    })
}

fn access_size(m: MemorySize) -> Option<u8> {
    match m {
        MemorySize::UInt8 | MemorySize::Int8 => Some(1),
        MemorySize::UInt16 | MemorySize::Int16 | MemorySize::WordOffset => Some(2),
        MemorySize::UInt32 | MemorySize::Int32 | MemorySize::DwordOffset => Some(4),
        MemorySize::UInt64 | MemorySize::Int64 | MemorySize::QwordOffset => Some(8),
        _ => None,
    }
}

/// Map an iced general-purpose register to a [`RegRef`]; `None` for
/// anything else (segment, control, vector registers).
fn reg_ref(r: Register) -> Option<RegRef> {
    let n = r as usize;
    let (index, width, high_byte) = match n {
        1..=4 => (n - 1, 1, false),    // AL CL DL BL
        5..=8 => (n - 5, 1, true),     // AH CH DH BH
        9..=20 => (n - 5, 1, false),   // SPL..DIL, R8L..R15L
        21..=36 => (n - 21, 2, false), // AX..R15W
        37..=52 => (n - 37, 4, false), // EAX..R15D
        53..=68 => (n - 53, 8, false), // RAX..R15
        _ => return None,
    };
    Some(RegRef {
        gpr: GPRS[index],
        width,
        high_byte,
    })
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(gpr: Gpr, width: u8) -> RegRef {
        RegRef {
            gpr,
            width,
            high_byte: false,
        }
    }

    const AH: RegRef = RegRef {
        gpr: Gpr::Rax,
        width: 1,
        high_byte: true,
    };

    fn write(size: u8, src: Source, len: u8) -> Result<MmioInsn, DecodeError> {
        Ok(MmioInsn {
            op: MmioOp::Write { size, src },
            len,
        })
    }

    fn read(size: u8, dest: RegRef, extend: Extension, len: u8) -> Result<MmioInsn, DecodeError> {
        Ok(MmioInsn {
            op: MmioOp::Read { size, dest, extend },
            len,
        })
    }

    #[test]
    fn stores_64bit_mode() {
        use Source::*;
        let m = CpuMode::Bits64;
        assert_eq!(decode(&[0x89, 0x08], m), write(4, Reg(r(Gpr::Rcx, 4)), 2));
        assert_eq!(
            decode(&[0x48, 0x89, 0x08], m),
            write(8, Reg(r(Gpr::Rcx, 8)), 3)
        );
        assert_eq!(
            decode(&[0x66, 0x89, 0x08], m),
            write(2, Reg(r(Gpr::Rcx, 2)), 3)
        );
        assert_eq!(decode(&[0x88, 0x20], m), write(1, Reg(AH), 2));
        assert_eq!(
            decode(&[0x40, 0x88, 0x20], m),
            write(1, Reg(r(Gpr::Rsp, 1)), 3)
        );
        assert_eq!(
            decode(&[0x40, 0x88, 0x38], m),
            write(1, Reg(r(Gpr::Rdi, 1)), 3)
        );
        assert_eq!(
            decode(&[0x44, 0x88, 0x38], m),
            write(1, Reg(r(Gpr::R15, 1)), 3)
        );
        assert_eq!(
            decode(&[0x4C, 0x89, 0x7B, 0x10], m),
            write(8, Reg(r(Gpr::R15, 8)), 4),
            "mov [rbx+0x10], r15"
        );
        assert_eq!(
            decode(&[0x89, 0x04, 0x25, 0x00, 0x00, 0xE0, 0xFE], m),
            write(4, Reg(r(Gpr::Rax, 4)), 7),
            "mov [0xfee00000], eax"
        );
        assert_eq!(
            decode(&[0xC7, 0x00, 0x78, 0x56, 0x34, 0x12], m),
            write(4, Imm(0x1234_5678), 6)
        );
        assert_eq!(
            decode(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF], m),
            write(8, Imm(u64::MAX), 7),
            "imm32 sign-extended to 64"
        );
        assert_eq!(decode(&[0xC6, 0x00, 0xAB], m), write(1, Imm(0xAB), 3));
        assert_eq!(
            decode(&[0x66, 0xC7, 0x00, 0x34, 0x12], m),
            write(2, Imm(0x1234), 5)
        );
        let mut moffs = [0xA3, 0, 0, 0xE0, 0xFE, 0, 0, 0, 0];
        assert_eq!(decode(&moffs, m), write(4, Reg(r(Gpr::Rax, 4)), 9));
        moffs[0] = 0xA2;
        assert_eq!(decode(&moffs, m), write(1, Reg(r(Gpr::Rax, 1)), 9));
    }

    #[test]
    fn loads_64bit_mode() {
        use Extension::*;
        let m = CpuMode::Bits64;
        assert_eq!(decode(&[0x8B, 0x03], m), read(4, r(Gpr::Rax, 4), Zero, 2));
        assert_eq!(
            decode(&[0x44, 0x8B, 0x43, 0x10], m),
            read(4, r(Gpr::R8, 4), Zero, 4)
        );
        assert_eq!(
            decode(&[0x8A, 0x3B], m),
            read(
                1,
                RegRef {
                    gpr: Gpr::Rbx,
                    ..AH
                },
                Zero,
                2
            )
        );
        assert_eq!(
            decode(&[0x0F, 0xB6, 0x03], m),
            read(1, r(Gpr::Rax, 4), Zero, 3)
        );
        assert_eq!(
            decode(&[0x66, 0x0F, 0xB6, 0x03], m),
            read(1, r(Gpr::Rax, 2), Zero, 4)
        );
        assert_eq!(
            decode(&[0x0F, 0xB7, 0x03], m),
            read(2, r(Gpr::Rax, 4), Zero, 3)
        );
        assert_eq!(
            decode(&[0x48, 0x0F, 0xBF, 0x03], m),
            read(2, r(Gpr::Rax, 8), Sign, 4)
        );
        assert_eq!(
            decode(&[0x0F, 0xBE, 0x03], m),
            read(1, r(Gpr::Rax, 4), Sign, 3)
        );
        assert_eq!(
            decode(&[0x48, 0x63, 0x03], m),
            read(4, r(Gpr::Rax, 8), Sign, 3)
        );
        let moffs = [0x48, 0xA1, 0, 0, 0xE0, 0xFE, 0, 0, 0, 0];
        assert_eq!(decode(&moffs, m), read(8, r(Gpr::Rax, 8), Zero, 10));
    }

    #[test]
    fn forms_32bit_and_16bit_modes() {
        let m = CpuMode::Bits32;
        let ecx = Source::Reg(r(Gpr::Rcx, 4));
        assert_eq!(decode(&[0x89, 0x08], m), write(4, ecx, 2));
        assert_eq!(
            decode(&[0x66, 0x8B, 0x03], m),
            read(2, r(Gpr::Rax, 2), Extension::Zero, 3)
        );
        assert_eq!(
            decode(&[0xA3, 0x00, 0x00, 0xE0, 0xFE], m),
            write(4, Source::Reg(r(Gpr::Rax, 4)), 5)
        );
        assert_eq!(
            decode(&[0x0F, 0xB7, 0x03], m),
            read(2, r(Gpr::Rax, 4), Extension::Zero, 3)
        );
        assert_eq!(
            decode(&[0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0, 0, 0, 0], m),
            write(4, Source::Imm(0), 10),
            "mov dword [0xfee000b0], 0"
        );
        let m = CpuMode::Bits16;
        assert_eq!(
            decode(&[0x89, 0x07], m),
            write(2, Source::Reg(r(Gpr::Rax, 2)), 2)
        );
        assert_eq!(
            decode(&[0x66, 0x89, 0x07], m),
            write(4, Source::Reg(r(Gpr::Rax, 4)), 3)
        );
    }

    #[test]
    fn errors_are_typed() {
        let m = CpuMode::Bits64;
        let unsupported = |x| Err(DecodeError::Unsupported(x));
        assert_eq!(decode(&[0x01, 0x08], m), unsupported(Mnemonic::Add));
        assert_eq!(decode(&[0x85, 0x08], m), unsupported(Mnemonic::Test));
        assert_eq!(decode(&[0x83, 0x38, 0x01], m), unsupported(Mnemonic::Cmp));
        assert_eq!(decode(&[0xF3, 0xA5], m), unsupported(Mnemonic::Movsd));
        assert_eq!(
            decode(&[0x8C, 0x18], m),
            unsupported(Mnemonic::Mov),
            "mov [rax], ds"
        );
        assert_eq!(
            decode(&[0x8E, 0x18], m),
            unsupported(Mnemonic::Mov),
            "mov ds, [rax]"
        );
        assert_eq!(decode(&[0x89, 0xC8], m), Err(DecodeError::NoMemoryOperand));
        assert_eq!(decode(&[0xC7, 0x00, 0x78], m), Err(DecodeError::Truncated));
        assert_eq!(decode(&[], m), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0x06, 0x90, 0x90], m),
            Err(DecodeError::Invalid),
            "push es in 64-bit"
        );
        assert_eq!(
            decode(&[0xF0, 0x89, 0x08], m),
            Err(DecodeError::Invalid),
            "lock mov"
        );
        assert_eq!(decode(&[0x40], CpuMode::Bits32), unsupported(Mnemonic::Inc));
        let e = DecodeError::Unsupported(Mnemonic::Add);
        assert_eq!(
            alloc::format!("{e}"),
            "MMIO access by unsupported instruction Add"
        );
    }

    #[test]
    fn partial_register_semantics() {
        let mut regs: GprFile = [0x1111_2222_3333_4444; 16];
        r(Gpr::Rax, 4).write(&mut regs, 0xAAAA_BBBB_CCCC_DDDD);
        assert_eq!(regs[0], 0x0000_0000_CCCC_DDDD, "32-bit zero-extends");
        r(Gpr::Rcx, 2).write(&mut regs, 0xFFFF_9999);
        assert_eq!(regs[1], 0x1111_2222_3333_9999, "16-bit merges");
        r(Gpr::Rdx, 1).write(&mut regs, 0x77);
        assert_eq!(regs[2], 0x1111_2222_3333_4477, "8-bit merges");
        RegRef {
            gpr: Gpr::Rbx,
            ..AH
        }
        .write(&mut regs, 0x1EE);
        assert_eq!(regs[3], 0x1111_2222_3333_EE44, "BH merges bits 15:8");
        assert_eq!(
            RegRef {
                gpr: Gpr::Rbx,
                ..AH
            }
            .read(&regs),
            0xEE
        );
        r(Gpr::R15, 8).write(&mut regs, 5);
        assert_eq!(regs[15], 5);
        assert_eq!(r(Gpr::Rsi, 2).read(&regs), 0x4444);
    }

    #[test]
    fn complete_read_extends() {
        let mut regs: GprFile = [u64::MAX; 16];
        let m = CpuMode::Bits64;
        let movsx_rax = decode(&[0x48, 0x0F, 0xBE, 0x03], m).unwrap().op;
        movsx_rax.complete_read(&mut regs, 0x1234_5680);
        assert_eq!(regs[0], 0xFFFF_FFFF_FFFF_FF80);
        let movsx_eax = decode(&[0x0F, 0xBF, 0x03], m).unwrap().op;
        movsx_eax.complete_read(&mut regs, 0x8001);
        assert_eq!(regs[0], 0x0000_0000_FFFF_8001);
        let movzx_ax = decode(&[0x66, 0x0F, 0xB6, 0x03], m).unwrap().op;
        movzx_ax.complete_read(&mut regs, 0xFFF0);
        assert_eq!(regs[0], 0x0000_0000_FFFF_00F0, "16-bit dest merges");
        let mov_al = decode(&[0x8A, 0x03], m).unwrap().op;
        mov_al.complete_read(&mut regs, 0x1234);
        assert_eq!(regs[0], 0x0000_0000_FFFF_0034);
        assert_eq!(mov_al.write_value(&regs), None);
        let mov_rax = decode(&[0x48, 0x8B, 0x03], m).unwrap().op;
        mov_rax.complete_read(&mut regs, 0x8765_4321_0FED_CBA9);
        assert_eq!(regs[0], 0x8765_4321_0FED_CBA9);
    }

    #[test]
    fn write_value_truncates_to_size() {
        let mut regs: GprFile = [0; 16];
        regs[1] = 0xDEAD_BEEF_CAFE_F00D;
        let m = CpuMode::Bits64;
        let w = |b: &[u8]| decode(b, m).unwrap().op.write_value(&regs);
        assert_eq!(w(&[0x89, 0x08]), Some(0xCAFE_F00D));
        assert_eq!(w(&[0x88, 0x28]), Some(0xF0), "mov [rax], ch");
        assert_eq!(w(&[0x48, 0x89, 0x08]), Some(0xDEAD_BEEF_CAFE_F00D));
        assert_eq!(w(&[0x66, 0xC7, 0x00, 0xFE, 0xFF]), Some(0xFFFE));
        assert_eq!(w(&[0x8B, 0x08]), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut ok = 0;
        for i in 0..60_000 {
            let mut buf = [0u8; 16];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let mode = [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64][i % 3];
            let len = (x >> 32) as usize % 17;
            if let Ok(insn) = decode(&buf[..len], mode) {
                ok += 1;
                assert!(usize::from(insn.len) <= len.min(MAX_INSN_LEN));
                assert!(matches!(insn.op.size(), 1 | 2 | 4 | 8));
            }
        }
        assert!(ok > 100, "some random bytes decode as MOV ({ok})");
    }
}

//! MMIO emulation for EPT-violation exits (Intel SDM Vol. 3C §28.2.1): the
//! faulting instruction is decoded ([`crate::mmio_decode`], `iced-x86`),
//! the access goes to the device the bus maps at the guest-physical address,
//! and a read's value lands in the destination register with the
//! instruction's width and extension. Pure and host-tested; the kernel
//! supplies the instruction bytes fetched through the guest page tables.
use crate::devices::{Bus, DeviceSet};
use crate::mmio_decode::{decode, CpuMode, GprFile, MmioOp};

/// Emulates one MMIO access. `None`: no device at `gpa` (the caller
/// reports a guest fault). `Some(Err)`: a device is there but the
/// instruction cannot be emulated. `Some(Ok(len))`: done, advance RIP.
pub fn emulate<Id: Copy>(
    bus: &mut Bus<Id>,
    devices: &mut impl DeviceSet<Id>,
    gpa: u64,
    insn: &[u8],
    mode: CpuMode,
    regs: &mut GprFile,
    now: u64,
) -> Option<Result<u8, &'static str>> {
    emulate_with(bus, devices, gpa, insn, mode, regs, now, &mut |v| v)
}

/// [`emulate`], with every value a device returns for a load passed
/// through `on_read` before it reaches the register (record/replay logs
/// it there, or replaces it with the logged one).
#[allow(clippy::too_many_arguments)]
pub fn emulate_with<Id: Copy>(
    bus: &mut Bus<Id>,
    devices: &mut impl DeviceSet<Id>,
    gpa: u64,
    insn: &[u8],
    mode: CpuMode,
    regs: &mut GprFile,
    now: u64,
    on_read: &mut dyn FnMut(u64) -> u64,
) -> Option<Result<u8, &'static str>> {
    bus.resolve_mmio(gpa, 1).ok()?;
    let Ok(decoded) = decode(insn, mode) else {
        return Some(Err(
            "MMIO access by an instruction ftvisor does not emulate",
        ));
    };
    let size = decoded.op.size();
    let done = match decoded.op {
        MmioOp::Read { .. } => bus.mmio_read(devices, gpa, size, now).map(|v| {
            decoded.op.complete_read(regs, on_read(v));
        }),
        MmioOp::Write { .. } => {
            let Some(value) = decoded.op.write_value(regs) else {
                return Some(Err("MMIO write without a source value"));
            };
            bus.mmio_write(devices, gpa, size, value, now)
        }
    };
    Some(match done {
        Ok(()) => Ok(decoded.len),
        Err(_) => Err("MMIO access straddles the end of a device's range"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{MmioDevice, PioDevice};

    #[derive(Default)]
    struct Scratch {
        regs: [u64; 4],
        log: Vec<(u64, u8, u64)>,
    }
    impl MmioDevice for Scratch {
        fn mmio_read(&mut self, offset: u64, _size: u8, _now: u64) -> u64 {
            self.regs[(offset / 8) as usize % 4]
        }
        fn mmio_write(&mut self, offset: u64, size: u8, value: u64, _now: u64) {
            self.log.push((offset, size, value));
            self.regs[(offset / 8) as usize % 4] = value;
        }
    }
    impl PioDevice for Scratch {
        fn pio_read(&mut self, _: u16, _: u8, _: u64) -> u32 {
            0
        }
        fn pio_write(&mut self, _: u16, _: u8, _: u32, _: u64) {}
    }
    impl DeviceSet<u8> for Scratch {
        fn pio(&mut self, _: u8) -> &mut dyn PioDevice {
            self
        }
        fn mmio(&mut self, _: u8) -> &mut dyn MmioDevice {
            self
        }
    }

    fn setup() -> (Bus<u8>, Scratch) {
        let mut bus = Bus::new();
        bus.insert_mmio(0xFEB0_0000, 0x20, 0).unwrap();
        (bus, Scratch::default())
    }

    #[test]
    fn write_then_read_back_through_registers() {
        let (mut bus, mut dev) = setup();
        let mut regs = [0u64; 16];
        regs[0] = 0x1122_3344_5566_7788;
        // mov dword [rbx], eax  (89 03)
        let r = emulate(
            &mut bus,
            &mut dev,
            0xFEB0_0008,
            &[0x89, 0x03],
            CpuMode::Bits64,
            &mut regs,
            0,
        );
        assert_eq!(r, Some(Ok(2)));
        assert_eq!(dev.log, vec![(8, 4, 0x5566_7788)]);
        // mov rcx, qword [rbx]  (48 8b 0b)
        let r = emulate(
            &mut bus,
            &mut dev,
            0xFEB0_0008,
            &[0x48, 0x8b, 0x0b],
            CpuMode::Bits64,
            &mut regs,
            0,
        );
        assert_eq!(r, Some(Ok(3)));
        assert_eq!(regs[1], 0x5566_7788);
    }

    #[test]
    fn unclaimed_and_undecodable() {
        let (mut bus, mut dev) = setup();
        let mut regs = [0u64; 16];
        assert_eq!(
            emulate(
                &mut bus,
                &mut dev,
                0x1000,
                &[0x89, 0x03],
                CpuMode::Bits64,
                &mut regs,
                0
            ),
            None
        );
        // add dword [rbx], eax (01 03): not emulated
        let r = emulate(
            &mut bus,
            &mut dev,
            0xFEB0_0000,
            &[0x01, 0x03],
            CpuMode::Bits64,
            &mut regs,
            0,
        );
        assert!(matches!(r, Some(Err(_))));
        // 8-byte read at the last byte of the range straddles its end
        let r = emulate(
            &mut bus,
            &mut dev,
            0xFEB0_001F,
            &[0x48, 0x8b, 0x0b],
            CpuMode::Bits64,
            &mut regs,
            0,
        );
        assert!(matches!(r, Some(Err(_))));
    }
}

//! The machine in and out of an `ft::state` transfer (issue 16; DESIGN.md
//! §1.9): what a serving node sends and a joining node applies, shared by
//! the repair (`super::repair`) and the same-boot clone test
//! (`super::clone`).
//!
//! * [`encode_pages`]: guest pages as they are now, zero pages as a flag;
//! * [`encode_stopped`]: with the guest stopped, the vCPU (general
//!   registers, the VMCS guest state, the syscall MSRs, the x87/SSE image,
//!   CR2 and the debug registers),
//!   every device model and the hypervisor's tallies of the guest
//!   (`kernel::devices::snapshot::Tallies`);
//! * [`write_page`] and [`apply`]: the joining side, pages as they arrive
//!   and the rest once the commit verified.
use alloc::string::String;
use alloc::vec::Vec;

use ft::state::{Chunk, PageData, Sender, Staged, FXSAVE_LEN, PAGE, PAGES_PER_CHUNK};
use kernel::devices::snapshot::{self, Tallies};
use vmx::exit::GuestRegs;

use super::hw::HwVmcs;
use super::machine::{read_syscall_msrs, write_syscall_msrs, Machine, SYSCALL_MSRS};

fn err<E: core::fmt::Debug>(e: E) -> String {
    alloc::format!("{e:?}")
}

/// Appends `pages` (their content now) as round `round`; how many of them
/// were all zero.
pub fn encode_pages(
    sender: &mut Sender,
    out: &mut Vec<u8>,
    ram: &[u8],
    round: u32,
    pages: &[u64],
) -> Result<u64, String> {
    let mut zero = 0;
    for batch in pages.chunks(PAGES_PER_CHUNK) {
        let pages = batch
            .iter()
            .map(|&n| {
                let at = n as usize * PAGE;
                let bytes = &ram[at..at + PAGE];
                if bytes.iter().all(|&b| b == 0) {
                    zero += 1;
                    (n, PageData::Zero)
                } else {
                    (n, PageData::Bytes(bytes.to_vec()))
                }
            })
            .collect();
        sender
            .push(Chunk::Pages { round, pages }, out)
            .map_err(err)?;
    }
    Ok(zero)
}

/// Appends the stopped vCPU, the device models and the tallies; how many
/// device models.
pub fn encode_stopped(
    sender: &mut Sender,
    out: &mut Vec<u8>,
    vmcs: &HwVmcs,
    regs: &mut GuestRegs,
    m: &Machine,
) -> Result<usize, String> {
    regs.sync_rsp(vmcs);
    let fields = vmx::state::capture_vcpu(vmcs).map_err(|e| alloc::format!("{e}"))?;
    let msrs = SYSCALL_MSRS
        .iter()
        .copied()
        .zip(read_syscall_msrs())
        .collect();
    sender
        .push(
            {
                let (cr2, debug) = crate::arch::guestregs::save();
                Chunk::Vcpu {
                    gprs: regs.gpr,
                    fields,
                    msrs,
                    fxsave: crate::arch::fpu::save().to_vec(),
                    cr2,
                    debug,
                }
            },
            out,
        )
        .map_err(err)?;
    let mut devices = alloc::vec![
        snapshot::save(&m.lapic),
        snapshot::save(&m.devices.uart),
        snapshot::save(&m.devices.io.blk),
        snapshot::save(&m.devices.io.net),
        snapshot::save(&Tallies {
            io_digest: m.devices.io.dirty.digest(),
            console_lines: m.console_lines,
            console_hash: m.console_hash,
        }),
    ];
    if let Some(l) = m.linux.as_ref() {
        devices.extend([
            snapshot::save(&l.models.ioapic),
            snapshot::save(&l.models.pit),
            snapshot::save(&l.models.rtc),
            snapshot::save(&l.models.pm),
        ]);
    }
    let count = devices.len();
    for (id, version, blob) in devices {
        sender
            .push(Chunk::Device { id, version, blob }, out)
            .map_err(err)?;
    }
    Ok(count)
}

/// A received page into guest RAM (`None`: all zero).
pub fn write_page(ram: &mut [u8], page: u64, data: Option<&[u8]>) {
    let at = page as usize * PAGE;
    match data {
        Some(b) => ram[at..at + PAGE].copy_from_slice(b),
        None => ram[at..at + PAGE].fill(0),
    }
}

/// Applies a verified transfer's vCPU, device models and tallies (its
/// pages are in RAM already).
pub fn apply(
    staged: &Staged,
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
) -> Result<(), String> {
    let Chunk::Vcpu {
        gprs,
        fields,
        msrs,
        fxsave,
        cr2,
        debug,
    } = &staged.vcpu
    else {
        return Err("no vCPU state".into());
    };
    vmx::state::restore_vcpu(vmcs, fields).map_err(|e| alloc::format!("{e}"))?;
    regs.gpr = *gprs;
    let mut values = [0u64; 5];
    for (i, msr) in SYSCALL_MSRS.iter().enumerate() {
        values[i] = msrs
            .iter()
            .find(|(k, _)| k == msr)
            .map(|(_, v)| *v)
            .ok_or("an MSR is missing")?;
    }
    write_syscall_msrs(&values);
    let image: &[u8; FXSAVE_LEN] = fxsave
        .as_slice()
        .try_into()
        .map_err(|_| "bad FXSAVE image")?;
    if !crate::arch::fpu::restore(image) {
        return Err("the FXSAVE image has reserved MXCSR bits set".into());
    }
    if !crate::arch::guestregs::restore(*cr2, *debug) {
        return Err("DR6 has reserved bits 63:32 set".into());
    }
    let mut tallies = None;
    for &(id, version, ref blob) in &staged.devices {
        let blob = blob.as_slice();
        if id == <Tallies as snapshot::DeviceState>::ID {
            tallies = Some(snapshot::load::<Tallies>(id, version, blob)?);
            continue;
        }
        let mut taken = snapshot::load_into(&mut m.lapic, id, version, blob)?
            || snapshot::load_into(&mut m.devices.uart, id, version, blob)?
            || snapshot::load_into(&mut m.devices.io.blk, id, version, blob)?
            || snapshot::load_into(&mut m.devices.io.net, id, version, blob)?;
        if let Some(l) = m.linux.as_mut() {
            let d = &mut l.models;
            taken = taken
                || snapshot::load_into(&mut d.ioapic, id, version, blob)?
                || snapshot::load_into(&mut d.pit, id, version, blob)?
                || snapshot::load_into(&mut d.rtc, id, version, blob)?
                || snapshot::load_into(&mut d.pm, id, version, blob)?;
        }
        if !taken {
            return Err(alloc::format!("device {id}: no such model in this machine"));
        }
    }
    let t = tallies.ok_or("no hypervisor tallies in the transfer")?;
    m.devices.io.dirty.set_digest(t.io_digest);
    m.console_lines = t.console_lines;
    m.console_hash = t.console_hash;
    Ok(())
}

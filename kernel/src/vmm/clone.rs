//! A repair's state transfer, end to end within one boot (issue 16,
//! `ft_test_clone=`): at a point in the guest's run the whole machine —
//! guest RAM, the vCPU (general registers, VMCS guest state, the syscall
//! MSRs, the x87/SSE image) and the device models — is written into an
//! `ft::state` transfer exactly as a serving node would send it; then the
//! live state is wrecked (RAM zeroed, the VMCS guest state reset to the
//! boot entry, registers zeroed, the FPU and the devices reset) and the
//! transfer is received and applied through `ft::state::Receiver`, as a
//! joining node would. The guest must go on as if nothing happened: the
//! test compares what it computes with a native run. What a repair adds
//! beyond this (the network, pre-copy rounds while the guest runs) sits on
//! top of the same capture and restore.
use alloc::vec::Vec;

use ft::state::{
    Chunk, Expect, PageData, Progress, Receiver, Sender, FXSAVE_LEN, PAGE, PAGES_PER_CHUNK,
};
use kernel::devices::snapshot;
use vmx::exit::GuestRegs;
use vmx::vmcs::{Field, VmcsAccess};

use super::hw::HwVmcs;
use super::machine::{read_syscall_msrs, write_syscall_msrs, Machine, SYSCALL_MSRS};

/// What the clone did, for the report line.
pub struct Cloned {
    pub bytes: usize,
    pub pages: u64,
    pub zero_pages: u64,
    pub rip: u64,
    /// Disk requests the backend held when the machine was sent (their
    /// completions reach the restored device model).
    pub disk_in_flight: usize,
}

/// Sends the machine's state into a transfer (the serving node's half).
fn send(
    vmcs: &HwVmcs,
    regs: &GuestRegs,
    m: &Machine,
    machine: ft::log::MachineId,
) -> Result<(Vec<u8>, u64), alloc::string::String> {
    let mut s = Sender::new();
    let mut out = Vec::new();
    let err = |e: ft::FtError| alloc::format!("{e:?}");
    s.push(
        Chunk::Begin {
            guest_id: [0; 16],
            machine,
            generation: 0,
            ram_bytes: m.ram().len() as u64,
        },
        &mut out,
    )
    .map_err(err)?;
    let mut zero = 0;
    let pages = m.ram().len() / PAGE;
    let mut batch = Vec::with_capacity(PAGES_PER_CHUNK);
    for p in 0..pages {
        let bytes = &m.ram()[p * PAGE..(p + 1) * PAGE];
        let data = if bytes.iter().all(|&b| b == 0) {
            zero += 1;
            PageData::Zero
        } else {
            PageData::Bytes(bytes.to_vec())
        };
        batch.push((p as u64, data));
        if batch.len() == PAGES_PER_CHUNK || p + 1 == pages {
            s.push(
                Chunk::Pages {
                    round: 0,
                    pages: core::mem::take(&mut batch),
                },
                &mut out,
            )
            .map_err(err)?;
        }
    }
    let fields = vmx::state::capture_vcpu(vmcs).map_err(|e| alloc::format!("{e}"))?;
    let msrs = SYSCALL_MSRS
        .iter()
        .copied()
        .zip(read_syscall_msrs())
        .collect();
    s.push(
        Chunk::Vcpu {
            gprs: regs.gpr,
            fields,
            msrs,
            fxsave: crate::arch::fpu::save().to_vec(),
        },
        &mut out,
    )
    .map_err(err)?;
    for (id, version, blob) in [
        snapshot::save(&m.lapic),
        snapshot::save(&m.devices.uart),
        snapshot::save(&m.devices.io.blk),
        snapshot::save(&m.devices.io.net),
    ] {
        s.push(Chunk::Device { id, version, blob }, &mut out)
            .map_err(err)?;
    }
    s.push(
        Chunk::Commit {
            at: ft::log::ExecPoint::default(),
            guest_time_ns: m.now(),
            resume_seq: 0,
            chunks: 0,
            pages: 0,
            digest: 0,
        },
        &mut out,
    )
    .map_err(err)?;
    Ok((out, zero))
}

/// Clones the machine through a transfer in this boot (see the module
/// docs). `Err`: what failed; the guest cannot go on then.
pub fn clone_in_place(
    vmcs: &mut HwVmcs,
    regs: &mut GuestRegs,
    m: &mut Machine,
    machine: ft::log::MachineId,
    caps: &vmx::caps::VmxCaps,
    start: kernel::loader::GuestStart,
) -> Result<Cloned, alloc::string::String> {
    regs.sync_rsp(vmcs);
    let disk_in_flight = m.devices.io.disk_in_flight();
    let (bytes, zero_pages) = send(vmcs, regs, m, machine)?;
    let rip = vmcs.get(Field::GuestRip);
    // Wreck what was sent: a receiver must bring every bit back.
    m.ram_mut().fill(0);
    *regs = GuestRegs::default();
    super::setup::write_guest_state(vmcs, caps, start, regs).map_err(|e| alloc::format!("{e}"))?;
    m.lapic = kernel::devices::lapic::Lapic::with_mode(kernel::devices::lapic::ApicMode::XApic, 40);
    m.devices.uart = kernel::devices::uart::Uart::new(None);
    m.devices.io.blk = kernel::devices::virtio::mmio::VirtioMmio::new(
        kernel::devices::virtio::blk::Blk::new(0, b""),
        0,
    );
    m.devices.io.net = kernel::devices::virtio::mmio::VirtioMmio::new(
        kernel::devices::virtio::net::Net::new([0; 6]),
        0,
    );
    write_syscall_msrs(&[0; 5]);
    // Receive, as a joining node does: pages into RAM, the rest staged
    // until the commit verifies.
    let mut r = Receiver::new(Expect {
        guest_id: [0; 16],
        machine,
    });
    let ram = m.ram_mut();
    let staged = match r.push(&bytes, &mut |p, data| {
        let at = p as usize * PAGE;
        match data {
            Some(b) => ram[at..at + PAGE].copy_from_slice(b),
            None => ram[at..at + PAGE].fill(0),
        }
    }) {
        Ok(Progress::Complete(s)) => s,
        Ok(Progress::Receiving) => return Err("the transfer did not complete".into()),
        Err(why) => return Err(alloc::format!("{why}")),
    };
    let Chunk::Vcpu {
        gprs,
        fields,
        msrs,
        fxsave,
    } = &staged.vcpu
    else {
        return Err("no vCPU state".into());
    };
    vmx::state::restore_vcpu(vmcs, fields).map_err(|e| alloc::format!("{e}"))?;
    regs.gpr = *gprs;
    let mut values = [0u64; 5];
    for (i, m) in SYSCALL_MSRS.iter().enumerate() {
        values[i] = msrs
            .iter()
            .find(|(k, _)| k == m)
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
    for (id, version, blob) in &staged.devices {
        match *id {
            1 => m.lapic = snapshot::load(*id, *version, blob).map_err(|e| e.0)?,
            6 => m.devices.uart = snapshot::load(*id, *version, blob).map_err(|e| e.0)?,
            7 => m.devices.io.blk = snapshot::load(*id, *version, blob).map_err(|e| e.0)?,
            8 => m.devices.io.net = snapshot::load(*id, *version, blob).map_err(|e| e.0)?,
            other => return Err(alloc::format!("unexpected device {other}")),
        }
    }
    Ok(Cloned {
        bytes: bytes.len(),
        pages: staged.pages,
        zero_pages,
        rip,
        disk_in_flight,
    })
}

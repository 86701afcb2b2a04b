//! `kmain`: bring-up and the top-level flow of the hypervisor.
use crate::arch::{console, cpu, exit::exit, gdt, heap, idt, multiboot::BootInfo};
use kernel::config::{Config, Mode, SelfTest};
use kernel::exitcode;

extern "C" {
    static __kernel_end: u8;
}

/// Entered from `boot` in long mode, interrupts off, identity mapped.
#[no_mangle]
pub extern "C" fn kmain(magic: u32, info_addr: u32) -> ! {
    console::init();
    println!("ftvisor {} booting", env!("CARGO_PKG_VERSION"));
    gdt::init();
    idt::init();
    // The hypervisor polls; mask the legacy PICs so no firmware-programmed
    // timer interrupt reaches the CPU (it would only cause VM exits).
    // SAFETY: writing the PIC interrupt-mask registers (OCW1).
    unsafe {
        x86::io::outb(0x21, 0xFF);
        x86::io::outb(0xA1, 0xFF);
    }
    if magic != boot::MULTIBOOT_BOOTLOADER_MAGIC {
        println!("error: not started by a multiboot loader (EAX={magic:#x}, expected 0x2badb002)");
        exit(exitcode::BAD_CONFIG);
    }
    // SAFETY: the loader passed this address with the multiboot magic.
    let boot = unsafe { BootInfo::new(info_addr) };
    let cmdline = boot.cmdline();

    // Everything the loader handed us must stay clear of the heap.
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let mut floor = kernel_end.max(info_addr as u64 + 88);
    floor = floor.max(cmdline.as_ptr() as u64 + cmdline.len() as u64 + 1);
    for m in boot.modules() {
        floor = floor
            .max(m.end)
            .max(m.cmdline.as_ptr() as u64 + m.cmdline.len() as u64 + 1);
    }
    let mut total_ram = 0u64;
    for r in boot.memory_map().filter(|r| r.is_usable()) {
        total_ram += r.len;
    }
    let Some((heap_start, heap_len)) =
        kernel::bootinfo::choose_heap(boot.memory_map(), floor, boot::IDENTITY_MAP_BYTES)
    else {
        println!("error: the boot memory map has no usable RAM above {floor:#x}");
        exit(exitcode::BAD_CONFIG);
    };
    // SAFETY: choose_heap returned usable RAM above everything in use.
    unsafe { heap::init(heap_start, heap_len) };
    println!(
        "mem: {} MiB usable, kernel image ends at {:#x}, heap {:#x}..{:#x} ({} MiB)",
        total_ram >> 20,
        kernel_end,
        heap_start,
        heap_start + heap_len,
        heap_len >> 20
    );
    println!("cmdline: \"{cmdline}\"");
    for m in boot.modules() {
        println!("module: {:#x}..{:#x} \"{}\"", m.start, m.end, m.cmdline);
    }
    let config = match Config::parse(cmdline) {
        Ok(c) => c,
        Err(e) => {
            println!("error: {e}");
            exit(exitcode::BAD_CONFIG);
        }
    };

    let report = cpu::report();
    crate::arch::entropy::init();
    cpu::pin_tsc_aux();
    match config.selftest {
        SelfTest::None => {}
        SelfTest::Panic => panic!("selftest: deliberate panic"),
        SelfTest::Fault => {
            println!("selftest: touching unmapped address 0x100_0000_0000");
            // SAFETY: deliberately faults (beyond the identity map) to test
            // the exception path; the handler exits the machine.
            unsafe { core::ptr::read_volatile(0x100_0000_0000 as *const u64) };
            unreachable!("the read above faults");
        }
    }
    match config.mode {
        Mode::Report => {
            let (used, size) = heap::stats();
            println!("report: done (heap {used}/{size} bytes used)");
            exit(exitcode::SUCCESS);
        }
        Mode::Net => crate::net::run(&config),
        Mode::Iscsi => crate::net::run(&config),
        Mode::Hypervisor => {
            // A repair's joining node (`ft_join=on`) gets its guest from
            // the serving node's state transfer: no image needed.
            let module = boot.modules().next();
            if module.is_none() && !config.pair.join {
                println!("error: no guest image: pass the guest as the first boot module (GRUB `module`, QEMU `-initrd`)");
                exit(exitcode::BAD_CONFIG);
            }
            if !report.has_vmx {
                println!(
                    "no VMX on this CPU: CPUID.1:ECX.VMX[bit 5] = 0. ftvisor needs Intel VT-x \
                     (QEMU/KVM: nested VMX with -cpu host on an Intel host; or Bochs 3.0)"
                );
                exit(exitcode::NO_VMX);
            }
            let caps = report.vmx.expect("VMX caps are read when VMX is present");
            if report.feature_control & 1 != 0 && report.feature_control & (1 << 2) == 0 {
                println!("no VMX on this CPU: {}", vmx::Error::VmxDisabledByFirmware);
                exit(exitcode::NO_VMX);
            }
            if let Err(e) = caps.check_required() {
                println!("no VMX on this CPU: {e}");
                exit(exitcode::NO_VMX);
            }
            let (image, guest_cmdline): (&[u8], &str) = match module {
                Some(module) => {
                    let len = module.end.saturating_sub(module.start) as usize;
                    // SAFETY: the loader placed the module at [start, end) in
                    // identity-mapped RAM, below the heap floor computed above.
                    let image =
                        unsafe { core::slice::from_raw_parts(module.start as *const u8, len) };
                    (image, kernel::config::strip_image_path(module.cmdline))
                }
                None => (&[], ""),
            };
            // The modules after the guest image: a recorded log for
            // `ft=replay` (issue 8); for `guest=linux` the initrd, then the log.
            let extra: alloc::vec::Vec<&[u8]> = boot
                .modules()
                .skip(1)
                .map(|m| {
                    let len = m.end.saturating_sub(m.start) as usize;
                    // SAFETY: as for the guest image: loader-placed, identity
                    // mapped, below the heap floor.
                    unsafe { core::slice::from_raw_parts(m.start as *const u8, len) }
                })
                .collect();
            // Issue 9: one side of an FT pair (NIC first, then the guest).
            if config.pair.role.is_some() {
                // `guest=linux`: the second module is the initrd, part of
                // the guest both sides must start identically.
                let initrd = extra.first().copied();
                crate::ftlive::start(&config, &caps, report.pmu, image, initrd, guest_cmdline);
            }
            crate::vmm::run(
                &config,
                &caps,
                report.pmu,
                image,
                guest_cmdline,
                &extra,
                None,
                None,
            );
        }
    }
}

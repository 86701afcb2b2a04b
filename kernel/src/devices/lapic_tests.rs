use super::*;

const GP: Result<(), Fault> = Err(Fault::GeneralProtection);

/// An enabled x2APIC (SVR software-enable set).
fn enabled() -> Lapic {
    let mut a = Lapic::new(39);
    a.wrmsr(0x80F, 0x1FF, 0).unwrap();
    a
}

fn rd(a: &mut Lapic, msr: u32, now: u64) -> u64 {
    a.rdmsr(msr, now).unwrap()
}

#[test]
fn identification_registers() {
    let mut a = Lapic::new(39);
    assert_eq!(rd(&mut a, 0x802, 0), 0);
    assert_eq!(rd(&mut a, 0x803, 0), 0x50014);
    assert_eq!(rd(&mut a, 0x80D, 0), 1);
    assert_eq!(rd(&mut a, 0x80F, 0), 0xFF, "reset SVR");
    assert_eq!(rd(&mut a, 0x832, 0), 0x10000, "LVT masked at reset");
    assert_eq!(rd(&mut a, 0x1B, 0), 0xFEE0_0D00);
}

#[test]
fn faults_on_bad_accesses() {
    let mut a = enabled();
    for ro in [0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x839] {
        assert_eq!(a.wrmsr(ro, 0, 0), GP, "write to read-only {ro:#x}");
    }
    for wo in [0x80B, 0x83F] {
        assert_eq!(a.rdmsr(wo, 0), Err(Fault::GeneralProtection), "{wo:#x}");
    }
    for unknown in [0x800, 0x801, 0x804, 0x82F, 0x831, 0x83A, 0x840, 0x8FF] {
        assert_eq!(a.rdmsr(unknown, 0), Err(Fault::GeneralProtection));
        assert_eq!(a.wrmsr(unknown, 0, 0), GP);
    }
    assert_eq!(a.wrmsr(0x80B, 1, 0), GP, "EOI must be written with 0");
    assert_eq!(a.wrmsr(0x828, 1, 0), GP, "ESR must be written with 0");
    assert_eq!(a.wrmsr(0x808, 1 << 32, 0), GP, "bits 63:32 reserved");
    assert_eq!(a.wrmsr(0x83F, 0x100, 0), GP, "SELF IPI reserved bits");
    assert_eq!(a.wrmsr(0x80B, 0, 0), Ok(()));
    assert_eq!(a.wrmsr(0x828, 0, 0), Ok(()));
}

#[test]
fn xapic_mode_has_no_msr_interface() {
    let mut a = Lapic::with_mode(ApicMode::XApic, 39);
    assert_eq!(a.rdmsr(0x802, 0), Err(Fault::GeneralProtection));
    assert_eq!(a.wrmsr(0x808, 0, 0), GP);
    a.wrmsr(0x1B, 0xFEE0_0000 | BASE_EN | BASE_EXTD, 0).unwrap();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(rd(&mut a, 0x802, 0), 0);
}

#[test]
fn apic_base_transitions() {
    let base = 0xFEE0_0000;
    let mut a = Lapic::new(39);
    assert_eq!(a.wrmsr(0x1B, base | BASE_EN, 0), GP, "x2APIC -> xAPIC");
    assert_eq!(
        a.wrmsr(0x1B, base | BASE_EXTD, 0),
        GP,
        "invalid EN=0 EXTD=1"
    );
    assert_eq!(
        a.wrmsr(0x1B, base | BASE_EN | BASE_EXTD | 1, 0),
        GP,
        "bit 0"
    );
    assert_eq!(a.wrmsr(0x1B, base | BASE_EN | BASE_EXTD | 1 << 9, 0), GP);
    assert_eq!(
        a.wrmsr(0x1B, 1 << 40 | BASE_EN | BASE_EXTD, 0),
        GP,
        "MAXPHYADDR"
    );
    a.wrmsr(0x808, 0x20, 0).unwrap();
    a.wrmsr(0x1B, base, 0).unwrap();
    assert_eq!(a.mode(), ApicMode::Disabled);
    assert_eq!(rd(&mut a, 0x1B, 0), base | BASE_BSP, "BSP stays set");
    assert_eq!(
        a.wrmsr(0x1B, base | BASE_EN | BASE_EXTD, 0),
        GP,
        "disabled -> x2APIC"
    );
    a.wrmsr(0x1B, base | BASE_EN, 0).unwrap();
    a.wrmsr(0x1B, base | BASE_EN | BASE_EXTD, 0).unwrap();
    assert_eq!(rd(&mut a, 0x808, 0), 0, "disabling reset the registers");
}

#[test]
fn divide_configuration_encodings() {
    let mut a = enabled();
    let expect = [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16)];
    let expect_hi = [(0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1)];
    for (dcr, div) in expect.into_iter().chain(expect_hi) {
        a.wrmsr(0x83E, dcr, 0).unwrap();
        assert_eq!(a.divisor(), div, "dcr {dcr:#b}");
        assert_eq!(rd(&mut a, 0x83E, 0), dcr);
    }
}

#[test]
fn one_shot_counts_down_and_fires_once() {
    let mut a = enabled();
    a.wrmsr(0x83E, 0b0011, 0).unwrap(); // divide by 16
    a.wrmsr(0x832, 0x40, 0).unwrap(); // one-shot, vector 0x40
    a.wrmsr(0x838, 100, 1000).unwrap();
    assert_eq!(a.next_deadline(), Some(1000 + 1600));
    let mut last = u64::MAX;
    for now in (1000..2600).step_by(97) {
        let c = rd(&mut a, 0x839, now);
        assert!(
            c < last || (c == 100 && last == u64::MAX),
            "{c} after {last}"
        );
        assert_eq!(c, 100 - (now - 1000) / 16);
        last = c;
    }
    assert_eq!(a.pending_vector(), None);
    a.tick(2599);
    assert_eq!(a.pending_vector(), None, "not yet due");
    a.tick(2600);
    assert_eq!(a.pending_vector(), Some(0x40));
    assert_eq!(a.next_deadline(), None);
    assert_eq!(rd(&mut a, 0x839, 3000), 0);
    assert_eq!(rd(&mut a, 0x838, 3000), 100, "initial count is kept");
}

#[test]
fn periodic_rate_is_exact_over_1000_periods() {
    let mut a = enabled();
    a.wrmsr(0x83E, 0b1011, 0).unwrap(); // divide by 1
    a.wrmsr(0x832, 1 << 17 | 0xEC, 0).unwrap();
    a.wrmsr(0x838, 12_345, 7).unwrap();
    let mut fired = 0;
    for k in 1..=1000u64 {
        let due = a.next_deadline().unwrap();
        assert_eq!(due, 7 + k * 12_345);
        a.tick(due + k % 50); // the hypervisor wakes up a little late
        if a.pending_vector() == Some(0xEC) {
            fired += 1;
            a.ack(0xEC);
            a.wrmsr(0x80B, 0, due + 60).unwrap();
        }
    }
    assert_eq!(fired, 1000);
    assert_eq!(a.missed_periods(), 0);
}

#[test]
fn periodic_catch_up_fires_once() {
    let mut a = enabled();
    a.wrmsr(0x83E, 0b1011, 0).unwrap();
    a.wrmsr(0x832, 1 << 17 | 0x30, 0).unwrap();
    a.wrmsr(0x838, 100, 0).unwrap();
    a.tick(1050); // deadlines 100..=1000 all passed
    assert_eq!(a.pending_vector(), Some(0x30));
    assert_eq!(a.missed_periods(), 9);
    assert_eq!(a.next_deadline(), Some(1100), "grid kept");
    assert_eq!(rd(&mut a, 0x839, 1050), 50);
}

#[test]
fn masked_timer_does_not_fire_but_keeps_counting() {
    let mut a = enabled();
    a.wrmsr(0x83E, 0b1011, 0).unwrap();
    a.wrmsr(0x832, 1 << 17 | 1 << 16 | 0x30, 0).unwrap();
    a.wrmsr(0x838, 100, 0).unwrap();
    assert_eq!(a.next_deadline(), None, "masked: nothing to arm");
    a.tick(250);
    assert_eq!(a.pending_vector(), None);
    assert_eq!(rd(&mut a, 0x839, 250), 50);
    a.wrmsr(0x832, 1 << 17 | 0x30, 260).unwrap(); // unmask
    assert_eq!(a.next_deadline(), Some(300));
    assert_eq!(a.pending_vector(), None, "unmasking does not fire late");
}

#[test]
fn software_disable_masks_lvts_and_drops_interrupts() {
    let mut a = enabled();
    a.wrmsr(0x832, 0x30, 0).unwrap();
    a.wrmsr(0x80F, 0xFF, 0).unwrap();
    assert_eq!(rd(&mut a, 0x832, 0) & 0x10000, 0x10000);
    a.wrmsr(0x835, 0x700, 0).unwrap();
    assert_eq!(rd(&mut a, 0x835, 0), 0x10700, "mask forced while disabled");
    a.raise(0x50);
    assert_eq!(a.pending_vector(), None);
}

#[test]
fn dcr_change_keeps_remaining_counts() {
    let mut a = enabled();
    a.wrmsr(0x83E, 0b1011, 0).unwrap(); // /1
    a.wrmsr(0x832, 0x30, 0).unwrap();
    a.wrmsr(0x838, 1000, 0).unwrap();
    a.wrmsr(0x83E, 0b0000, 400).unwrap(); // /2 with 600 counts left
    assert_eq!(rd(&mut a, 0x839, 400), 600);
    assert_eq!(a.next_deadline(), Some(400 + 1200));
}

#[test]
fn tsc_deadline_mode() {
    let mut a = enabled();
    a.wrmsr(0x6E0, 5000, 0).unwrap();
    assert_eq!(rd(&mut a, 0x6E0, 0), 0, "ignored outside deadline mode");
    a.wrmsr(0x832, 2 << 17 | 0xEF, 0).unwrap();
    a.wrmsr(0x838, 10, 0).unwrap();
    assert_eq!(rd(&mut a, 0x838, 0), 0, "initial count ignored");
    a.wrmsr(0x6E0, 5000, 0).unwrap();
    assert_eq!(a.next_deadline(), Some(5000));
    assert_eq!(rd(&mut a, 0x839, 100), 0);
    a.tick(4999);
    assert_eq!(a.pending_vector(), None);
    a.tick(5001);
    assert_eq!(a.pending_vector(), Some(0xEF));
    assert_eq!(rd(&mut a, 0x6E0, 5001), 0, "cleared when it fires");
    a.wrmsr(0x6E0, 9000, 6000).unwrap();
    a.wrmsr(0x832, 0xEF, 6000).unwrap(); // leave deadline mode: disarmed
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn eoi_order_and_priority_classes() {
    let mut a = enabled();
    a.raise(0x31);
    a.raise(0x52);
    assert_eq!(a.pending_vector(), Some(0x52));
    a.ack(0x52);
    assert_eq!(
        a.pending_vector(),
        None,
        "0x31 is below the in-service class"
    );
    assert_eq!(a.ppr(), 0x50);
    a.raise(0x55);
    assert_eq!(a.pending_vector(), None, "same class as in-service 0x52");
    a.raise(0x61);
    assert_eq!(a.pending_vector(), Some(0x61), "nests above");
    a.ack(0x61);
    assert_eq!(rd(&mut a, 0x813, 0), 1 << (0x61 - 0x60));
    assert_eq!(rd(&mut a, 0x812, 0), 1 << (0x52 - 0x40));
    a.wrmsr(0x80B, 0, 0).unwrap(); // retires 0x61
    assert_eq!(a.pending_vector(), None, "0x52 still in service");
    a.wrmsr(0x80B, 0, 0).unwrap(); // retires 0x52
    assert_eq!(a.pending_vector(), Some(0x55));
    a.ack(0x55);
    a.wrmsr(0x80B, 0, 0).unwrap();
    assert_eq!(a.pending_vector(), Some(0x31));
    assert_eq!(rd(&mut a, 0x821, 0), 1 << 0x11);
}

#[test]
fn tpr_blocks_lower_classes() {
    let mut a = enabled();
    a.wrmsr(0x808, 0x40, 0).unwrap();
    a.raise(0x45);
    assert_eq!(a.pending_vector(), None);
    a.raise(0x50);
    assert_eq!(a.pending_vector(), Some(0x50));
    assert_eq!(rd(&mut a, 0x80A, 0), 0x40);
    a.wrmsr(0x808, 0, 0).unwrap();
    a.ack(0x50);
    assert_eq!(a.pending_vector(), None, "0x45 below in-service 0x50");
}

#[test]
fn self_ipis_and_illegal_vectors() {
    let mut a = enabled();
    a.wrmsr(0x83F, 0x41, 0).unwrap();
    assert_eq!(a.pending_vector(), Some(0x41));
    a.ack(0x41);
    a.wrmsr(0x80B, 0, 0).unwrap();
    a.wrmsr(0x830, 1 << 18 | 0x42, 0).unwrap(); // ICR shorthand self
    assert_eq!(a.pending_vector(), Some(0x42));
    a.ack(0x42);
    a.wrmsr(0x80B, 0, 0).unwrap();
    a.wrmsr(0x830, 3 << 18 | 0x43, 0).unwrap(); // all excluding self
    a.wrmsr(0x830, 5 << 8 | 0x44, 0).unwrap(); // INIT
    assert_eq!(a.pending_vector(), None);
    a.raise(3);
    assert_eq!(a.pending_vector(), None);
    a.wrmsr(0x828, 0, 0).unwrap();
    assert_eq!(rd(&mut a, 0x828, 0), ESR_RECEIVED_ILLEGAL_VECTOR.into());
}

#[test]
fn highest_bit_search() {
    let mut m = [0u32; 8];
    assert_eq!(highest(&m), None);
    for v in [0x10, 0x1F, 0x20, 0xFF] {
        set_bit(&mut m, v);
        assert_eq!(highest(&m), Some(v));
    }
}

#[test]
fn xapic_mmio_page() {
    let mut a = Lapic::with_mode(ApicMode::XApic, 39);
    assert_eq!(a.xapic_read(0x30, 0), 0x50014, "version");
    assert_eq!(a.xapic_read(0x20, 0), 0, "APIC ID 0 in bits 31:24");
    assert_eq!(a.xapic_read(0xE0, 0), u32::MAX, "DFR flat model at reset");
    a.xapic_write(0xF0, 0x1FF, 0);
    assert_eq!(a.xapic_read(0xF0, 0), 0x1FF);
    a.xapic_write(0xD0, 0x0100_00FF, 0);
    assert_eq!(a.xapic_read(0xD0, 0), 0x0100_0000, "LDR bits 31:24");
    a.xapic_write(0xE0, 0x0, 0);
    assert_eq!(a.xapic_read(0xE0, 0), 0x0FFF_FFFF, "cluster model");
    // Timer through MMIO: one-shot at vector 0xEC, divide by 1.
    a.xapic_write(0x3E0, 0xB, 0);
    a.xapic_write(0x320, 0xEC, 0);
    a.xapic_write(0x380, 1000, 0);
    assert_eq!(a.xapic_read(0x390, 400), 600);
    a.tick(1000);
    assert_eq!(a.pending_vector(), Some(0xEC));
    a.ack(0xEC);
    assert_ne!(
        a.xapic_read(0x100 + 0x70, 1000) & (1 << 12),
        0,
        "ISR bit 0xEC"
    );
    a.xapic_write(0xB0, 0x1234, 1000); // EOI: any value in xAPIC mode
    assert_eq!(a.xapic_read(0x170, 1000), 0);
    // Self IPI through ICR (destination 0 in ICR high), read back split.
    a.xapic_write(0x310, 0, 1000);
    a.xapic_write(0x300, 0x41, 1000);
    assert_eq!(a.pending_vector(), Some(0x41));
    assert_eq!(a.xapic_read(0x300, 1000), 0x41);
    // IPI to another APIC ID goes nowhere.
    a.xapic_write(0x310, 0x0500_0000, 1000);
    assert_eq!(a.xapic_read(0x310, 1000), 0x0500_0000);
    a.ack(0x41);
    a.xapic_write(0x300, 0x42, 1000);
    assert_eq!(a.pending_vector(), None);
    // Read-only registers ignore writes, unaligned accesses read 0.
    a.xapic_write(0x30, 0, 1000);
    assert_eq!(a.xapic_read(0x30, 1000), 0x50014);
    assert_eq!(a.xapic_read(0x34, 1000), 0);
    // The MSR interface stays closed in xAPIC mode, and the page in x2APIC.
    assert_eq!(a.rdmsr(0x803, 0), Err(Fault::GeneralProtection));
    a.wrmsr(0x1B, 0xFEE0_0000 | BASE_EN | BASE_EXTD, 0).unwrap();
    assert_eq!(a.xapic_read(0x30, 0), 0);
}

//! Device models' state for a repair's state transfer (issue 16: "every
//! device model (LAPIC, I/O APIC, PIT, RTC, PM timer, UART, ...)"; the
//! `ft::state::Chunk::Device` blob): each model is plain data, serialised
//! with serde into postcard's compact format under an id and a layout
//! version. A blob of another id or layout, or one that does not decode
//! whole, is refused with a message before anything is applied.
use alloc::vec::Vec;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::acpi_pm::AcpiPm;
use super::ioapic::Ioapic;
use super::lapic::Lapic;
use super::pit::Pit;
use super::rtc::Rtc;
use super::uart::Uart;
use super::virtio::blk::Blk;
use super::virtio::mmio::VirtioMmio;
use super::virtio::net::Net;

/// The hypervisor's running tallies of the guest that checkpoints and the
/// final state hash cover, outside any device model: the digest of the
/// devices' writes into guest RAM (`guestio::DirtyLog::digest`) and the
/// console's line count and hash. A new backup must start from the
/// serving node's, or its first checkpoint differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tallies {
    pub io_digest: u64,
    pub console_lines: u64,
    pub console_hash: u64,
}

/// A device model whose state travels in a transfer.
pub trait DeviceState: Serialize + DeserializeOwned {
    /// The model's id in `ft::state::Chunk::Device`.
    const ID: u16;
    /// The layout of its blob; bumped whenever a field changes.
    const LAYOUT: u16;
    /// Its name, for messages.
    const NAME: &'static str;
}

macro_rules! device_state {
    ($($t:ty => $id:expr, $layout:expr, $name:expr;)*) => {
        $(impl DeviceState for $t {
            const ID: u16 = $id;
            const LAYOUT: u16 = $layout;
            const NAME: &'static str = $name;
        })*
    };
}

device_state! {
    Lapic => 1, 1, "LAPIC";
    Ioapic => 2, 1, "I/O APIC";
    Pit => 3, 1, "PIT";
    Rtc => 4, 1, "RTC";
    AcpiPm => 5, 1, "ACPI PM block";
    Uart => 6, 1, "UART";
    VirtioMmio<Blk> => 7, 1, "virtio-blk (transport, queues, requests in flight)";
    VirtioMmio<Net> => 8, 1, "virtio-net (transport, queues)";
    Tallies => 9, 1, "hypervisor tallies (device-write digest, console count and hash)";
}

/// `(id, layout, blob)` of `device`, as a `Device` chunk carries it.
pub fn save<T: DeviceState>(device: &T) -> (u16, u16, Vec<u8>) {
    // Serialising plain data into a Vec cannot fail (no I/O, no maps with
    // non-string keys): an error here is a bug in a model's derive.
    let blob = postcard::to_allocvec(device).unwrap_or_default();
    (T::ID, T::LAYOUT, blob)
}

/// Why a blob was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub alloc::string::String);

impl From<Refused> for alloc::string::String {
    fn from(r: Refused) -> Self {
        r.0
    }
}

/// The model `T` from a `Device` chunk's `(id, layout, blob)`.
pub fn load<T: DeviceState>(id: u16, layout: u16, blob: &[u8]) -> Result<T, Refused> {
    if id != T::ID {
        return Err(Refused(alloc::format!(
            "device {id} is not the {} (id {})",
            T::NAME,
            T::ID
        )));
    }
    if layout != T::LAYOUT {
        return Err(Refused(alloc::format!(
            "the {}'s state has layout {layout}, this build knows {}",
            T::NAME,
            T::LAYOUT
        )));
    }
    match postcard::take_from_bytes::<T>(blob) {
        Ok((t, [])) => Ok(t),
        Ok((_, rest)) => Err(Refused(alloc::format!(
            "the {}'s state has {} trailing bytes",
            T::NAME,
            rest.len()
        ))),
        Err(e) => Err(Refused(alloc::format!(
            "the {}'s state does not decode: {e}",
            T::NAME
        ))),
    }
}

/// `device` replaced by the blob if `id` names its model (`Ok(false)`:
/// another model's blob, `device` untouched).
pub fn load_into<T: DeviceState>(
    device: &mut T,
    id: u16,
    layout: u16,
    blob: &[u8],
) -> Result<bool, Refused> {
    if id != T::ID {
        return Ok(false);
    }
    *device = load(id, layout, blob)?;
    Ok(true)
}

/// serde for the RTC's 128 bytes of CMOS RAM (serde's arrays stop at 32).
pub mod bytes128 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 128], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 128], D::Error> {
        let v: &[u8] = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| D::Error::invalid_length(v.len(), &"128 bytes of CMOS RAM"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PioDevice;

    fn round_trip<T: DeviceState + PartialEq + core::fmt::Debug>(d: &T) {
        let (id, layout, blob) = save(d);
        let back: T = load(id, layout, &blob).unwrap();
        assert_eq!(&back, d, "{}", T::NAME);
    }

    #[test]
    fn every_platform_model_round_trips_in_a_used_state() {
        let mut lapic = Lapic::new(39);
        lapic.wrmsr(0x838, 5_000, 100).unwrap(); // timer initial count
        round_trip(&lapic);
        let mut pit = Pit::new(1_000_000_000);
        pit.pio_write(3, 1, 0b0011_0100, 0); // ch 0, lo/hi, mode 2
        pit.pio_write(0, 1, 0x34, 10);
        pit.pio_write(0, 1, 0x12, 20);
        round_trip(&pit);
        let mut rtc = Rtc::new(1_000_000_000);
        rtc.set_wall_clock(1_700_000_000, 0);
        rtc.pio_write(0, 1, 0x0E, 0);
        rtc.pio_write(1, 1, 0xA5, 0);
        round_trip(&rtc);
        let mut pm = AcpiPm::new(1_000_000_000);
        pm.pio_write(2, 2, 0x0021, 0);
        round_trip(&pm);
        round_trip(&Ioapic::new(1));
        let mut uart = Uart::new(Some(0x24));
        for b in b"half a line" {
            uart.pio_write(0, 1, u32::from(*b), 0);
        }
        round_trip(&uart);
        round_trip(&VirtioMmio::new(Blk::new(2048, b"serial"), 0x31));
        round_trip(&VirtioMmio::new(Net::new([2, 0, 0, 0, 0, 1]), 0x32));
    }

    #[test]
    fn a_blob_of_another_model_layout_or_shape_is_refused() {
        let (id, layout, blob) = save(&Pit::new(1_000_000_000));
        let e = load::<Rtc>(id, layout, &blob).unwrap_err();
        assert!(e.0.contains("is not the RTC"), "{e:?}");
        let mut rtc = Rtc::new(1);
        assert_eq!(load_into(&mut rtc, id, layout, &blob), Ok(false));
        assert_eq!(rtc, Rtc::new(1), "another model's blob leaves it alone");
        let e = load::<Pit>(id, layout + 1, &blob).unwrap_err();
        assert!(e.0.contains("layout 2, this build knows 1"), "{e:?}");
        let e = load::<Pit>(id, layout, &blob[..blob.len() - 1]).unwrap_err();
        assert!(e.0.contains("does not decode"), "{e:?}");
        let mut long = blob.clone();
        long.push(0);
        let e = load::<Pit>(id, layout, &long).unwrap_err();
        assert!(e.0.contains("1 trailing bytes"), "{e:?}");
        // Arbitrary bytes: refused or decoded, never a panic.
        for n in 0..300u32 {
            let junk: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let _ = load::<Lapic>(Lapic::ID, Lapic::LAYOUT, &junk);
            let _ = load::<Uart>(Uart::ID, Uart::LAYOUT, &junk);
            let _ = load::<Rtc>(Rtc::ID, Rtc::LAYOUT, &junk);
        }
    }
}

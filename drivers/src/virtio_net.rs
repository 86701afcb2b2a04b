//! virtio-net over PCI through the `virtio-drivers` crate (Virtual I/O
//! Device (VIRTIO) 1.2, §5.1 "Network Device", §4.1 "Virtio Over PCI Bus",
//! §2.7 split virtqueues), as a polled [`Nic`].
//!
//! [`IdentityHal`] is the crate's `Hal` for an identity-mapped kernel:
//! DMA memory comes from the heap, page aligned, and its physical address is
//! its pointer value; MMIO BARs are used at their physical address.
use crate::nic::{Nic, NicCounters, NicError, MAX_FRAME, MIN_FRAME};
use crate::pci::{ConfigSpace, PciAddress, VirtioCam};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// PCI vendor 0x1AF4; device 0x1000 (transitional) or 0x1041 (modern) (§4.1.2).
pub const PCI_IDS: &[(u16, u16)] = &[(0x1AF4, 0x1000), (0x1AF4, 0x1041)];

/// Queue depth and receive buffer length (header + largest frame).
const QUEUE: usize = 16;
const RX_BUF: usize = 2048;

/// `Hal` for an identity-mapped address space.
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory owned by the
// device until `dma_dealloc`; with the identity map its physical address is
// its virtual address, and `share` returns exactly that for any buffer.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout");
        // SAFETY: non-zero size (virtio-drivers never asks for 0 pages).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("out of memory for virtio DMA");
        (raw as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout");
        // SAFETY: the caller passes back an allocation from `dma_alloc`.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Why bring-up failed.
#[derive(Debug)]
pub enum VirtioNetError {
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    Device(virtio_drivers::Error),
}

/// The driver: a `VirtIONet` on a PCI transport.
pub struct VirtioNet {
    dev: VirtIONet<IdentityHal, PciTransport, QUEUE>,
    counters: NicCounters,
}

impl VirtioNet {
    /// Brings up the function at `addr` (its BARs must be assigned below
    /// 4 GiB and memory decoding + bus mastering enabled).
    pub fn new<C: ConfigSpace + Clone>(cfg: C, addr: PciAddress) -> Result<Self, VirtioNetError> {
        let mut root = PciRoot::new(VirtioCam(cfg));
        let df = DeviceFunction {
            bus: addr.bus,
            device: addr.device,
            function: addr.function,
        };
        let transport = PciTransport::new::<IdentityHal, _>(&mut root, df)
            .map_err(VirtioNetError::Transport)?;
        let dev = VirtIONet::new(transport, RX_BUF).map_err(VirtioNetError::Device)?;
        Ok(VirtioNet {
            dev,
            counters: NicCounters::default(),
        })
    }
}

impl Nic for VirtioNet {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    /// VIRTIO_NET_F_STATUS is not negotiated by the crate: a device that
    /// came up is taken as linked (§5.1.4).
    fn link_up(&mut self) -> bool {
        true
    }

    fn counters(&mut self) -> NicCounters {
        self.counters
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let rx = self.dev.receive().ok()?;
            let frame = rx.packet();
            let len = frame.len();
            let ok = (MIN_FRAME..=MAX_FRAME).contains(&len) && len <= buf.len();
            if ok {
                buf[..len].copy_from_slice(frame);
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
            } else {
                self.counters.rx_bad_length += 1;
            }
            if self.dev.recycle_rx_buffer(rx).is_err() {
                self.counters.rx_errors += 1;
            }
            if ok {
                return Some(len);
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.dev.can_send()
    }

    /// Blocks until the device has taken the frame (the crate's `send`).
    fn transmit(&mut self, frame: &[u8]) -> Result<(), NicError> {
        if frame.len() > MAX_FRAME || frame.len() < MIN_FRAME {
            return Err(NicError::BadLength(frame.len()));
        }
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        match self.dev.send(tx) {
            Ok(()) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += frame.len() as u64;
                Ok(())
            }
            Err(virtio_drivers::Error::QueueFull) => {
                self.counters.tx_busy += 1;
                Err(NicError::Busy)
            }
            Err(_) => Err(NicError::Device),
        }
    }

    /// Without VIRTIO_NET_F_CTRL_RX (not negotiated) the device delivers
    /// every frame (virtio 1.2 §5.1.6.5.1: filtering needs the control
    /// queue), so a second MAC's frames arrive already.
    fn accept_mac(&mut self, _mac: [u8; 6]) -> bool {
        true
    }
}

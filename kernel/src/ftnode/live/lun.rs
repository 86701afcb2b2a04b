//! The shared LUN as the FT node's storage (DESIGN.md §1.7): an adapter
//! that gives `ft::node::Node` the [`SharedStorage`] it arbitrates, joins
//! and fences on, over the hypervisor's iSCSI initiator.
//!
//! When the guest's disk is on the LUN (`disk=iscsi`), every operation
//! goes through the guest disk's own session ([`LunStorage::shared`]):
//! one I_T nexus per node, registered once at join, so that the winner's
//! one PREEMPT cuts the loser's data path and its flag path off together
//! (istgt 0.4 cannot preempt a key registered by several nexuses of a
//! node correctly: `drivers::arbitration`). Otherwise (the flag only, no
//! data to fence) each operation logs in on the node's own transport,
//! carries out one [`LunFlag`] operation and logs out: arbitration is
//! rare, and a session that stays open would have to be kept alive
//! through storage outages.
use super::endpoint;
use crate::net::transport::{Clock, SharedTransport};
use alloc::string::String;
use drivers::arbitration::{Arbiter, FlagDisk, LunFlag};
use drivers::iscsi::Initiator;
use drivers::nic::Nic;
use ft::arbitration::{FlagRecord, NodeId, SharedStorage};
use ft::FtError;
use kernel::config::Endpoint;

/// The flag block on the shared LUN (as `mode=iscsi` uses it).
pub const FLAG_LBA: u64 = 0;

/// Login timeout of the flag's iSCSI session (ms of this node's clock).
const LOGIN_TIMEOUT_MS: u64 = 60_000;

/// Where the shared LUN is: portal, target, LUN number (`iscsi=`,
/// `iscsi_target=`, `iscsi_lun=`).
#[derive(Clone)]
pub struct LunAddress {
    pub portal: Endpoint,
    pub target: String,
    pub lun: u64,
}

/// One side's view of the shared LUN, for the length of one call into the
/// FT node. `None` address: no LUN configured, so storage is unreachable
/// (no one may go live).
pub struct LunStorage<'a, N: Nic> {
    pub transport: &'a mut SharedTransport<N>,
    pub clock: Clock,
    pub address: Option<&'a LunAddress>,
    pub me: NodeId,
    pub role: &'static str,
    /// Printed before the first operation, if one happens (the failure the
    /// node is about to arbitrate on).
    pub announce: Option<String>,
    /// A retry during an outage: say nothing unless something changes.
    pub quiet: bool,
    /// The guest disk's session on the LUN, when there is one: used for
    /// everything instead of a login of the node's own.
    pub shared: Option<&'a mut dyn FlagDisk>,
    /// Fencing is on: only the registered (guest disk's) session may act
    /// on the LUN; without it at hand, storage counts as unreachable (a
    /// login of our own is an unregistered nexus: its COMPARE AND WRITE
    /// would conflict and read as a loss).
    pub only_shared: bool,
}

impl<'a, N: Nic> LunStorage<'a, N> {
    /// `me`'s view of the LUN at `address`: through the guest disk's
    /// session `shared` if there is one, else over `transport`.
    pub fn new(
        transport: &'a mut SharedTransport<N>,
        clock: Clock,
        address: Option<&'a LunAddress>,
        me: NodeId,
        role: &'static str,
        shared: Option<&'a mut dyn FlagDisk>,
    ) -> Self {
        LunStorage {
            transport,
            clock,
            address,
            me,
            role,
            announce: None,
            quiet: false,
            only_shared: false,
            shared,
        }
    }

    /// Logs in, runs `op` on the flag, logs out; says what failed.
    fn with<R>(
        &mut self,
        op: impl FnOnce(&mut LunFlag<'_, dyn FlagDisk + '_>) -> Result<R, FtError>,
    ) -> Result<R, FtError> {
        let role = self.role;
        if let Some(line) = self.announce.take() {
            println!("{line}");
        }
        if let Some(disk) = self.shared.as_deref_mut() {
            // After an outage longer than its reconnect budget the session
            // has failed for good: log in again on the same nexus.
            if let Err(e) = disk.revive() {
                if !self.quiet {
                    println!("ft: {role}: iSCSI login (guest disk's session) failed: {e}");
                }
                return Err(FtError::StorageUnreachable);
            }
            let mut flag = LunFlag::new(disk, Arbiter::new(FLAG_LBA));
            let r = op(&mut flag);
            if let (Err(_), Some((step, e))) = (&r, &flag.last_error) {
                println!("ft: {role}: {step} failed: {e}");
            }
            return r;
        }
        let Some(addr) = self.address.filter(|_| !self.only_shared) else {
            return Err(FtError::StorageUnreachable);
        };
        let me = self.me.0;
        let name = alloc::format!("iqn.2024-01.org.ftvisor:ft{me}");
        let mut cfg = drivers::iscsi::session::SessionConfig::new(
            &name,
            &addr.target,
            [0x80, 0x46, 0x54, 0x56, 0xF7, me as u8],
        );
        // Our timeouts count this machine's time; the target's answers
        // take its own. In an emulator spinning on the network, 10 s of
        // emulated time pass in under 2 s of wall time, while istgt takes
        // over a second to answer a login from a namespace (measured with
        // tcpdump at join): give the login room, the retry bounds it.
        cfg.login_timeout_ms = LOGIN_TIMEOUT_MS;
        // The node retries the whole operation on its own schedule; one
        // connection attempt per operation keeps it from blocking seconds.
        cfg.max_reconnects = 0;
        let mut ini = match Initiator::login(&mut *self.transport, self.clock, cfg, addr.lun) {
            Ok(i) => i,
            Err(e) => {
                if !self.quiet {
                    println!(
                        "ft: {role}: iSCSI login to {} failed: {e}",
                        endpoint(addr.portal)
                    );
                }
                return Err(FtError::StorageUnreachable);
            }
        };
        let disk: &mut dyn FlagDisk = &mut ini;
        let mut flag = LunFlag::new(disk, Arbiter::new(FLAG_LBA));
        let r = op(&mut flag);
        if let (Err(_), Some((step, e))) = (&r, &flag.last_error) {
            // "reading the flag failed: …" or "COMPARE AND WRITE failed: …"
            println!("ft: {role}: {step} failed: {e}");
        }
        if let Err(e) = ini.logout() {
            println!("ft: {role}: iSCSI logout: {e}");
        }
        r
    }
}

impl<N: Nic> SharedStorage for LunStorage<'_, N> {
    fn read_flag(&mut self) -> Result<FlagRecord, FtError> {
        self.with(|f| f.read_flag())
    }

    fn try_acquire(&mut self, expected: u64, me: NodeId) -> Result<FlagRecord, FtError> {
        if let Some(line) = self.announce.take() {
            println!("{line}");
        }
        if self.quiet {
        } else if let Some(a) = self.address {
            println!(
                "ft: {}: arbitrating on the shared LUN at {} lun {} (flag at lba {FLAG_LBA}): expecting generation {expected}",
                self.role,
                endpoint(a.portal),
                a.lun
            );
        } else {
            println!(
                "ft: {}: no shared LUN configured (iscsi=): storage unreachable",
                self.role
            );
        }
        self.with(|f| f.try_acquire(expected, me))
    }

    fn register(&mut self, me: NodeId) -> Result<(), FtError> {
        self.with(|f| f.register(me))
    }

    fn fence(&mut self, me: NodeId, loser: NodeId) -> Result<(), FtError> {
        self.with(|f| f.fence(me, loser))
    }
}

//! The virtio-mmio transport (virtio 1.2, section 4.2), modern interface only.
//!
//! A virtio-mmio device is a 4 KiB page of 32-bit registers (the register map is in
//! section 4.2.2 of the spec and in the `REG_*` constants below) followed, from offset
//! 0x100, by the device-specific configuration space. The transport owns everything that
//! is the same for every device type:
//!
//! - identification (magic, version 2, device and vendor IDs);
//! - feature negotiation, in 32-bit pages selected by `*FeaturesSel`;
//! - the device status state machine (`ACKNOWLEDGE` -> `DRIVER` -> `FEATURES_OK` ->
//!   `DRIVER_OK`, `FAILED`, reset by writing 0), which starts the device at `DRIVER_OK`;
//! - the configuration of each queue (size, ring addresses, ready), checked against guest
//!   memory before the device ever sees it;
//! - interrupt status and acknowledgement (the state itself is in [`VirtioInterrupt`],
//!   shared with the device's worker, which raises it).
//!
//! Queue notifications normally never reach this code: the VMM registers each of
//! [`MmioTransport::queue_events`] with KVM as an ioeventfd on `QueueNotify` (base + 0x50,
//! datamatch = queue index), so a notify is an eventfd signal from the kernel straight to
//! the device's worker. A notify that does reach the transport (no ioeventfd registered)
//! signals the same eventfd, so both set-ups behave the same.
//!
//! The guest is untrusted: every register write is checked against the current state and
//! ignored (with a rate-limited warning) when the spec does not allow it, and nothing a
//! guest writes can make the transport panic or hand the device a ring outside guest RAM.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET,
};
use virtio_bindings::virtio_mmio as regs;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::QueuePosition;
use super::{ActivateContext, GuestMemoryMmap, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::{warn_ratelimited, BusDevice};

/// `MagicValue`: "virt" in little-endian ASCII.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version`: 2, the modern (virtio 1.0+) register layout. Legacy (1) is not offered.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "MMVM" in ASCII (0x4d 'M', 0x56 'V'), for minivmm.
pub const MMIO_VENDOR_ID: u32 = 0x4d56_4d4d;
/// Size of a device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of `QueueNotify`, where the VMM registers the ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// Offset of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = regs::VIRTIO_MMIO_CONFIG as u64;

// Register offsets (virtio 1.2, 4.2.2), as u64 for matching bus offsets.
const REG_MAGIC: u64 = regs::VIRTIO_MMIO_MAGIC_VALUE as u64;
const REG_VERSION: u64 = regs::VIRTIO_MMIO_VERSION as u64;
const REG_DEVICE_ID: u64 = regs::VIRTIO_MMIO_DEVICE_ID as u64;
const REG_VENDOR_ID: u64 = regs::VIRTIO_MMIO_VENDOR_ID as u64;
const REG_DEVICE_FEATURES: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const REG_DEVICE_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const REG_DRIVER_FEATURES: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const REG_DRIVER_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const REG_QUEUE_SEL: u64 = regs::VIRTIO_MMIO_QUEUE_SEL as u64;
const REG_QUEUE_NUM_MAX: u64 = regs::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const REG_QUEUE_NUM: u64 = regs::VIRTIO_MMIO_QUEUE_NUM as u64;
const REG_QUEUE_READY: u64 = regs::VIRTIO_MMIO_QUEUE_READY as u64;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = regs::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const REG_INTERRUPT_ACK: u64 = regs::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const REG_STATUS: u64 = regs::VIRTIO_MMIO_STATUS as u64;
const REG_QUEUE_DESC_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const REG_QUEUE_DESC_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const REG_QUEUE_DRIVER_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const REG_QUEUE_DRIVER_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const REG_QUEUE_DEVICE_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const REG_QUEUE_DEVICE_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const REG_SHM_SEL: u64 = regs::VIRTIO_MMIO_SHM_SEL as u64;
const REG_SHM_LEN_LOW: u64 = regs::VIRTIO_MMIO_SHM_LEN_LOW as u64;
const REG_SHM_LEN_HIGH: u64 = regs::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
const REG_SHM_BASE_LOW: u64 = regs::VIRTIO_MMIO_SHM_BASE_LOW as u64;
const REG_SHM_BASE_HIGH: u64 = regs::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
const REG_CONFIG_GENERATION: u64 = regs::VIRTIO_MMIO_CONFIG_GENERATION as u64;

// Device status bits (virtio 1.2, 2.1).
/// Status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
/// Status bit: the guest has a driver for the device.
pub const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
/// Status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
/// Status bit: the driver is ready; the device is live.
pub const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
/// Status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
/// Status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// Features this transport cannot honour whatever the device says: the packed ring
/// (`virtio_queue::Queue` is split-only), notification data and per-queue reset.
const TRANSPORT_UNSUPPORTED_FEATURES: u64 =
    (1 << VIRTIO_F_RING_PACKED) | (1 << VIRTIO_F_NOTIFICATION_DATA) | (1 << VIRTIO_F_RING_RESET);

// Sizes of the split-ring parts for a queue of `n` entries (virtio 1.2, 2.7).
const DESC_ENTRY_SIZE: u64 = 16;
const RING_HEADER_SIZE: u64 = 4; // flags + idx
const RING_EVENT_SIZE: u64 = 2; // used_event / avail_event
const AVAIL_ENTRY_SIZE: u64 = 2;
const USED_ENTRY_SIZE: u64 = 8;

/// What is wrong with a device or a queue configuration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The device asks for a queue size `virtio_queue` cannot provide.
    #[error("queue {index}: maximum size {max} is not a power of two in 1..=32768")]
    BadMaxQueueSize {
        /// Queue index.
        index: usize,
        /// The size the device asked for.
        max: u16,
    },
    /// The device does not offer `VIRTIO_F_VERSION_1`, which this transport requires.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// The driver's `QueueNum` is not a power of two no larger than `QueueNumMax`.
    #[error("queue size {size} is not a power of two in 1..={max}")]
    BadQueueSize {
        /// What the driver wrote.
        size: u32,
        /// `QueueNumMax`.
        max: u16,
    },
    /// A ring address does not have the alignment the spec requires.
    #[error("{part} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring part.
        part: &'static str,
        /// The address the driver wrote.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// A ring part is not entirely inside guest RAM.
    #[error("{part} at {addr:#x} (+{len:#x} bytes) is not inside guest memory")]
    OutsideMemory {
        /// Which ring part.
        part: &'static str,
        /// Its start.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
}

/// One queue's configuration as the driver writes it. It becomes a `virtio_queue::Queue`
/// only once checked, when the driver sets `QueueReady` (and again at `DRIVER_OK`).
#[derive(Debug, Clone)]
struct QueueSlot {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueSlot {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Check the configuration and build the queue, marked ready.
    fn build(&self, index: usize, mem: &GuestMemoryMmap) -> Result<Queue, Error> {
        let bad_size = Error::BadQueueSize {
            size: self.size,
            max: self.max_size,
        };
        let size = u16::try_from(self.size).map_err(|_| bad_size.clone())?;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(bad_size);
        }
        let n = u64::from(size);
        // (part, address, alignment, length, access) per virtio 1.2, 2.7 (split rings).
        let parts = [
            (
                "descriptor table",
                self.desc,
                16,
                DESC_ENTRY_SIZE * n,
                Permissions::Read,
            ),
            (
                "driver (available) ring",
                self.driver,
                2,
                RING_HEADER_SIZE + AVAIL_ENTRY_SIZE * n + RING_EVENT_SIZE,
                Permissions::Read,
            ),
            (
                "device (used) ring",
                self.device,
                4,
                RING_HEADER_SIZE + USED_ENTRY_SIZE * n + RING_EVENT_SIZE,
                Permissions::ReadWrite,
            ),
        ];
        for (part, addr, align, len, access) in parts {
            if addr % align != 0 {
                return Err(Error::Misaligned { part, addr, align });
            }
            // `len` is at most 16 * 32768, so the usize conversion cannot fail on any
            // host minivmm runs on; treat a failure as "outside memory" anyway.
            let fits = usize::try_from(len)
                .map(|l| mem.check_range(GuestAddress(addr), l, access))
                .unwrap_or(false);
            if !fits {
                return Err(Error::OutsideMemory { part, addr, len });
            }
        }
        // The checks above cover virtio_queue's; build the queue through its checked
        // setters so it holds exactly what we checked.
        let misaligned = |part, addr, align| Error::Misaligned { part, addr, align };
        let mut q = Queue::new(self.max_size).map_err(|_| Error::BadMaxQueueSize {
            index,
            max: self.max_size,
        })?;
        q.try_set_size(size).map_err(|_| bad_size.clone())?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| misaligned("descriptor table", self.desc, 16))?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|_| misaligned("driver (available) ring", self.driver, 2))?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|_| misaligned("device (used) ring", self.device, 4))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            // Unreachable after the range checks above (is_valid checks the same ranges,
            // without the trailing event fields); kept as a second line of defence.
            return Err(Error::OutsideMemory {
                part: "queue",
                addr: self.desc,
                len: DESC_ENTRY_SIZE * n,
            });
        }
        Ok(q)
    }
}

/// One queue as a snapshot stores it: what the driver configured, and where the device is
/// in its rings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    /// `QueueNumMax`.
    pub max_size: u16,
    /// `QueueNum`, as the driver wrote it.
    pub size: u32,
    /// `QueueReady`.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
    /// The device's position in the rings (zero when the device was not live).
    pub position: QueuePosition,
}

/// A transport's registers and queues, as a snapshot stores them. Untrusted on restore:
/// [`MmioTransport::restore`] checks it like register writes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    /// The device type (must match the device it is restored onto).
    pub device_type: u32,
    /// The features offered (must match too: the driver negotiated from these).
    pub offered_features: u64,
    /// `Status`, as the driver set it.
    pub status: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver acked.
    pub driver_features: u64,
    /// The driver acked a bit in a page where nothing is offered.
    pub driver_acked_unknown_page: bool,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// The device was activated since the last reset.
    pub device_started: bool,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    /// The device gave up on its rings (`DEVICE_NEEDS_RESET`).
    pub needs_reset: bool,
    /// The queues, in index order.
    pub queues: Vec<QueueSnapshot>,
}

/// A virtio device behind the virtio-mmio register interface.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<VirtioInterrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueSlot>,
    /// The features offered: the device's, less what the transport cannot do.
    offered_features: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver acked a bit in a feature page above 1, where nothing is offered.
    driver_acked_unknown_page: bool,
    queue_sel: u32,
    /// `device.activate` was called since the last reset (successfully or not), so the
    /// device must be reset before it can start again.
    device_started: bool,
}

impl MmioTransport {
    /// Put `device` behind a virtio-mmio transport. Creates one (non-blocking) eventfd per
    /// queue. Fails if the device's queue sizes are not powers of two in 1..=32768 or it
    /// does not offer `VIRTIO_F_VERSION_1`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> io::Result<Self> {
        let invalid = |e: Error| io::Error::new(io::ErrorKind::InvalidInput, e);
        let mut queues = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            if Queue::new(max).is_err() {
                return Err(invalid(Error::BadMaxQueueSize { index, max }));
            }
            queues.push(QueueSlot::new(max));
        }
        if device.features() & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(invalid(Error::NoVersion1));
        }
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            offered_features: device.features() & !TRANSPORT_UNSUPPORTED_FEATURES,
            mem,
            device,
            interrupt,
            queue_evts,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_acked_unknown_page: false,
            queue_sel: 0,
            device_started: false,
        })
    }

    /// One eventfd per queue, in queue order, signalled when the driver notifies that
    /// queue. The VMM registers them as ioeventfds at base + [`QUEUE_NOTIFY_OFFSET`] with
    /// datamatch = queue index (a 32-bit write). The device gets clones at activation.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The `Status` register: what the driver set, plus `DEVICE_NEEDS_RESET` if the
    /// transport or the device (from its worker, through the interrupt) gave up.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device was activated successfully and not reset since.
    pub fn is_activated(&self) -> bool {
        let status = self.status();
        self.device_started
            && status & STATUS_DRIVER_OK != 0
            && status & STATUS_DEVICE_NEEDS_RESET == 0
    }

    /// The transport as it is now, for a snapshot; `positions` are the device's positions
    /// in its queues (from its paused worker), empty if it holds no queues.
    pub fn save(&self, positions: &[QueuePosition]) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            offered_features: self.offered_features,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            driver_acked_unknown_page: self.driver_acked_unknown_page,
            queue_sel: self.queue_sel,
            device_started: self.device_started,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| QueueSnapshot {
                    max_size: q.max_size,
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    position: positions.get(i).copied().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Put a transport that was just created (never touched by a driver) in the state
    /// `snap` describes, and start the device where it was live: its queues are checked
    /// against guest memory as at `DRIVER_OK`, then handed to the device at the saved
    /// positions. Refuses a snapshot of another kind of device or another feature set.
    pub fn restore(&mut self, snap: &TransportSnapshot) -> Result<(), String> {
        let kind = self.device.device_type();
        if snap.device_type != kind {
            return Err(format!(
                "device type {} where this VM has device type {kind}",
                snap.device_type
            ));
        }
        if snap.offered_features != self.offered_features {
            return Err(format!(
                "device type {kind} offered features {:#x}, this one offers {:#x} (a disk's \
                 read-only setting or a device option changed?)",
                snap.offered_features, self.offered_features
            ));
        }
        let maxes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        let saved: Vec<u16> = snap.queues.iter().map(|q| q.max_size).collect();
        if maxes != saved {
            return Err(format!(
                "device type {kind} has queues of sizes {saved:?} in the snapshot, {maxes:?} here"
            ));
        }
        let known = STATUS_ACKNOWLEDGE
            | STATUS_DRIVER
            | STATUS_FEATURES_OK
            | STATUS_DRIVER_OK
            | STATUS_FAILED
            | STATUS_DEVICE_NEEDS_RESET;
        if snap.status & !known != 0 || snap.driver_features & !self.offered_features != 0 {
            return Err(format!(
                "device type {kind}: status {:#x} or features {:#x} impossible",
                snap.status, snap.driver_features
            ));
        }
        self.status = snap.status;
        self.device_features_sel = snap.device_features_sel;
        self.driver_features_sel = snap.driver_features_sel;
        self.driver_features = snap.driver_features;
        self.driver_acked_unknown_page = snap.driver_acked_unknown_page;
        self.queue_sel = snap.queue_sel;
        for (slot, q) in self.queues.iter_mut().zip(&snap.queues) {
            slot.size = q.size;
            slot.ready = q.ready;
            slot.desc = q.desc;
            slot.driver = q.driver;
            slot.device = q.device;
        }
        self.interrupt
            .restore(snap.interrupt_status, snap.needs_reset);
        self.device_started = snap.device_started;
        let live = snap.status & STATUS_DRIVER_OK != 0
            && snap.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0
            && !snap.needs_reset;
        if !(snap.device_started && live) {
            return Ok(());
        }
        let mut ctx = self
            .activate_context()
            .map_err(|e| format!("device type {kind}: {e}"))?;
        for (q, saved) in ctx.queues.iter_mut().zip(&snap.queues) {
            q.set_next_avail(saved.position.next_avail);
            q.set_next_used(saved.position.next_used);
        }
        self.device
            .activate(ctx)
            .map_err(|e| format!("device type {kind} failed to start: {e}"))
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, mutably.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn selected_queue(&self) -> Option<&QueueSlot> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    /// The selected queue, if the driver may configure it now: features negotiated, the
    /// device not yet live, and the queue not yet ready (virtio 1.2, 4.2.3.2).
    fn configurable_queue(&mut self, reg: &str) -> Option<&mut QueueSlot> {
        let setup_phase = self.status & STATUS_FEATURES_OK != 0
            && self.status & (STATUS_DRIVER_OK | STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) == 0;
        let sel = self.queue_sel;
        let status = self.status;
        match usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        {
            Some(q) if setup_phase && !q.ready => Some(q),
            Some(_) => {
                warn_ratelimited!(
                    "virtio-mmio: {reg} write for queue {sel} ignored (status {status:#x}, \
                     queue ready or not in the setup phase)"
                );
                None
            }
            None => {
                warn_ratelimited!("virtio-mmio: {reg} write for nonexistent queue {sel}");
                None
            }
        }
    }

    fn device_features_page(&self) -> u32 {
        match self.device_features_sel {
            0 => self.offered_features as u32,
            1 => (self.offered_features >> 32) as u32,
            _ => 0,
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating = self.status & STATUS_DRIVER != 0
            && self.status & (STATUS_FEATURES_OK | STATUS_FAILED) == 0;
        if !negotiating {
            warn_ratelimited!(
                "virtio-mmio: DriverFeatures write ignored in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            page => {
                if value != 0 {
                    warn_ratelimited!(
                        "virtio-mmio: driver acked {value:#x} in feature page {page}, \
                         where nothing is offered"
                    );
                    self.driver_acked_unknown_page = true;
                }
            }
        }
    }

    /// Can the device accept the features the driver acked? (virtio 1.2, 3.1.1 step 5)
    fn features_acceptable(&self) -> bool {
        let unoffered = self.driver_features & !self.offered_features;
        if unoffered != 0 || self.driver_acked_unknown_page {
            warn_ratelimited!(
                "virtio-mmio: refusing FEATURES_OK: driver acked unoffered features {unoffered:#x}"
            );
            return false;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn_ratelimited!("virtio-mmio: refusing FEATURES_OK: VIRTIO_F_VERSION_1 not acked");
            return false;
        }
        true
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            warn_ratelimited!(
                "virtio-mmio: status {value:#x} clears bits of {old:#x} without a reset; ignored"
            );
            return;
        }
        let added = value & !old;
        if added & STATUS_FAILED != 0 {
            warn_ratelimited!(
                "virtio-mmio: driver set FAILED for device type {}",
                self.device.device_type()
            );
            self.status |= STATUS_FAILED;
        }
        if self.status & (STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0 {
            if added & !(STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET) != 0 {
                warn_ratelimited!(
                    "virtio-mmio: status {value:#x} ignored: device failed, reset it first"
                );
            }
            return;
        }
        // Apply the new bits in the order the spec sets them; each needs the previous ones.
        let steps = [
            (STATUS_ACKNOWLEDGE, 0),
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            (
                STATUS_DRIVER_OK,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            ),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if self.status & needs != needs {
                warn_ratelimited!(
                    "virtio-mmio: status bit {bit:#x} set out of order (status {:#x})",
                    self.status
                );
                return;
            }
            if bit == STATUS_FEATURES_OK && !self.features_acceptable() {
                // The driver re-reads Status and sees FEATURES_OK missing (3.1.1 step 6).
                return;
            }
            self.status |= bit;
            if bit == STATUS_DRIVER_OK {
                self.activate();
            }
        }
        let unknown = added
            & !(STATUS_ACKNOWLEDGE
                | STATUS_DRIVER
                | STATUS_FEATURES_OK
                | STATUS_DRIVER_OK
                | STATUS_FAILED);
        if unknown != 0 {
            warn_ratelimited!("virtio-mmio: unknown status bits {unknown:#x} ignored");
        }
    }

    /// `DRIVER_OK`: check the queues once more and start the device.
    fn activate(&mut self) {
        match self.activate_context() {
            Ok(ctx) => {
                self.device_started = true;
                match self.device.activate(ctx) {
                    Ok(()) => return,
                    Err(e) => crate::error_ratelimited!(
                        "virtio-mmio: device type {} failed to activate: {e}",
                        self.device.device_type()
                    ),
                }
            }
            Err(e) => crate::error_ratelimited!("virtio-mmio: cannot activate: {e}"),
        }
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn activate_context(&self) -> io::Result<ActivateContext> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, slot) in self.queues.iter().enumerate() {
            let mut q = if slot.ready {
                slot.build(index, &self.mem).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("queue {index}: {e}"))
                })?
            } else {
                // Checked in `new`, cannot fail; a not-ready queue the device may refuse.
                Queue::new(slot.max_size).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("queue {index}: {e:?}"))
                })?
            };
            q.set_event_idx(event_idx);
            queues.push(q);
        }
        let queue_events = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ActivateContext {
            mem: self.mem.clone(),
            acked_features: self.driver_features,
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
        })
    }

    /// Writing 0 to `Status`: back to the state right after `new`.
    fn reset(&mut self) {
        if self.device_started {
            self.device.reset();
            self.device_started = false;
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_acked_unknown_page = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueSlot::new(q.max_size);
        }
        // Drop notifications nobody will handle; the counter is shared with the device's
        // clones, which are gone after `device.reset()`.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.reset();
    }

    fn write_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel;
        let live = self.status & STATUS_DRIVER_OK != 0;
        match value {
            0 => {
                let Some(q) = usize::try_from(sel)
                    .ok()
                    .and_then(|i| self.queues.get_mut(i))
                else {
                    return;
                };
                if live && q.ready {
                    warn_ratelimited!(
                        "virtio-mmio: cannot disable queue {sel} of a live device (no queue reset)"
                    );
                } else {
                    q.ready = false;
                }
            }
            1 => {
                let mem = self.mem.clone();
                let Some(q) = self.configurable_queue("QueueReady") else {
                    return;
                };
                match q.build(sel as usize, &mem) {
                    Ok(_) => q.ready = true,
                    Err(e) => warn_ratelimited!("virtio-mmio: queue {sel} not made ready: {e}"),
                }
            }
            _ => warn_ratelimited!("virtio-mmio: QueueReady value {value} ignored"),
        }
    }

    fn notify(&self, index: u32) {
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.queue_evts.get(i))
        {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::error_ratelimited!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => warn_ratelimited!("virtio-mmio: notify for nonexistent queue {index}"),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => MMIO_VENDOR_ID,
            REG_DEVICE_FEATURES => self.device_features_page(),
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: a length of all ones means "no such region".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            // No device changes its configuration behind the driver's back while the
            // driver reads it, so the generation never changes.
            REG_CONFIG_GENERATION => 0,
            // Write-only and reserved registers read as 0.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.configurable_queue("QueueNum") {
                    q.size = value;
                }
            }
            REG_QUEUE_READY => self.write_queue_ready(value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                let Some(q) = self.configurable_queue("queue address") else {
                    return;
                };
                let (addr, high) = match offset {
                    REG_QUEUE_DESC_LOW => (&mut q.desc, false),
                    REG_QUEUE_DESC_HIGH => (&mut q.desc, true),
                    REG_QUEUE_DRIVER_LOW => (&mut q.driver, false),
                    REG_QUEUE_DRIVER_HIGH => (&mut q.driver, true),
                    REG_QUEUE_DEVICE_LOW => (&mut q.device, false),
                    _ => (&mut q.device, true),
                };
                *addr = if high {
                    (*addr & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (*addr & !0xffff_ffff) | u64::from(value)
                };
            }
            REG_SHM_SEL => {}
            _ => warn_ratelimited!(
                "virtio-mmio: write {value:#x} to read-only or unknown register {offset:#x}"
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if (CONFIG_SPACE_OFFSET..MMIO_SIZE).contains(&offset) {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset < CONFIG_SPACE_OFFSET => {
                *word = self.read_register(offset).to_le_bytes();
            }
            _ => {
                warn_ratelimited!(
                    "virtio-mmio: {}-byte read at {offset:#x} ignored (registers are 32-bit)",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if (CONFIG_SPACE_OFFSET..MMIO_SIZE).contains(&offset) {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset < CONFIG_SPACE_OFFSET => {
                self.write_register(offset, u32::from_le_bytes(word))
            }
            _ => warn_ratelimited!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored (registers are 32-bit)",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests;

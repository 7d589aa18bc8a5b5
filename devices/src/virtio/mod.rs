//! Virtio devices and the virtio-mmio transport (virtio 1.2, section 4.2).
//!
//! The split is the spec's: the transport ([`mmio`]) owns the registers, feature
//! negotiation, the status state machine and the queue configuration; a device (block,
//! net, ...) implements [`VirtioDevice`] and only sees its config space and, once the driver
//! sets `DRIVER_OK`, its ready queues. Device I/O runs on the device's worker thread
//! ([`worker`]: one shape for every device, started when the VMM builds the device), never
//! on the vCPU thread: the vCPU only writes the notify register, which KVM turns into an
//! eventfd signal (ioeventfd) without leaving the kernel.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use crate::Interrupt;

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod worker;

/// Guest memory as devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: the only mode minivmm's transport offers (modern virtio).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Interrupt status bit: the device used a buffer.
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
/// Interrupt status bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

/// The interrupt of one virtio-mmio device: the `InterruptStatus` register the driver reads
/// and acknowledges, and the line that tells it to look.
pub struct VirtioInterrupt {
    status: AtomicU32,
    /// The device found its rings broken and stopped using them (status `DEVICE_NEEDS_RESET`
    /// until the driver resets it).
    needs_reset: AtomicBool,
    line: Arc<dyn Interrupt>,
}

impl VirtioInterrupt {
    /// An interrupt with no pending status, raising `line`.
    pub fn new(line: Arc<dyn Interrupt>) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            line,
        }
    }

    /// Tell the driver the device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// Tell the driver the device configuration changed.
    pub fn signal_config_change(&self) {
        self.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device cannot go on with the driver's rings (an available ring it cannot read):
    /// the transport shows `DEVICE_NEEDS_RESET` from now until the driver resets the
    /// device, and the driver is told with a configuration-change interrupt (virtio 1.2,
    /// 2.1.2). Returns whether this call set it (false if it was already set).
    pub fn signal_needs_reset(&self) -> bool {
        if self.needs_reset.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.signal_config_change();
        true
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::error!("virtio: failed to raise interrupt: {e}");
        }
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver wrote `InterruptACK`: clear those bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Set the pending status and the needs-reset flag to what a snapshot saved (the line is
    /// not raised: the interrupt controller's own restored state says whether it is
    /// pending).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Clear all pending status (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not configure a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A worker thread or eventfd could not be created.
    #[error("could not start the device worker: {0}")]
    Worker(#[source] std::io::Error),
    /// Something else the device needs is missing or wrong.
    #[error("bad configuration: {0}")]
    BadConfig(String),
}

/// What a device receives when the driver sets `DRIVER_OK`.
pub struct ActivateContext {
    /// Guest memory, for the queues and the buffers they point to.
    pub mem: GuestMemoryMmap,
    /// The features the driver acknowledged (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
    /// The configured queues, in index order; their ring addresses were checked against
    /// guest memory by the transport.
    pub queues: Vec<virtio_queue::Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

impl ActivateContext {
    /// Check that the driver set up exactly the `count` queues `device` has, all ready, and
    /// split the context for the device's worker.
    pub fn take_queues(
        self,
        device: &str,
        count: usize,
    ) -> Result<(worker::ActiveQueues, Vec<EventFd>), ActivateError> {
        if self.queues.len() != count || self.queue_events.len() != count {
            return Err(ActivateError::BadConfig(format!(
                "{device} needs {count} queue(s) and as many queue events, got {} and {}",
                self.queues.len(),
                self.queue_events.len()
            )));
        }
        if let Some(i) = self.queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        Ok(self.split())
    }

    /// What the device's worker takes: the queues, and their eventfds in the same order.
    pub fn split(self) -> (worker::ActiveQueues, Vec<EventFd>) {
        (
            worker::ActiveQueues {
                mem: self.mem,
                acked_features: self.acked_features,
                queues: self.queues,
                interrupt: self.interrupt,
            },
            self.queue_events,
        )
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 = net, 2 = block, 4 = entropy, ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers, including `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// Read the device-specific configuration space at `offset`. Out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stop processing and drop everything `activate` was given (driver reset). After this
    /// the device can be activated again. Must not wait for the device's worker: it runs
    /// on the vCPU thread that wrote the `Status` register.
    fn reset(&mut self);
    /// The device's worker, for the VMM to pause and resume (None: no worker thread).
    fn worker(&self) -> Option<Arc<worker::Control>> {
        None
    }
    /// What the device has done so far, as (counter, value) pairs.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

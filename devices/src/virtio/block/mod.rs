//! virtio-blk: a raw disk image (regular file or block device) as a virtio block device
//! (virtio 1.2, section 5.2).
//!
//! The module owns the whole device behind the [`VirtioDevice`] trait:
//!
//! - [`Block`] (this file): opening the image, the feature bits, the config space, and
//!   starting/stopping the worker on activate/reset;
//! - [`request`]: parsing one descriptor chain into a validated [`request::Request`] — the
//!   only place guest-controlled values are checked, kept pure so it can be fuzzed;
//! - `handler`: draining the queue and executing requests against the image;
//! - `disk`: the image file itself (positional I/O straight into guest memory);
//! - the I/O runs on the device's [`Worker`](super::worker::Worker) thread (the shape all
//!   virtio devices share), so a slow disk never blocks a vCPU; [`BlockHandler`] is what
//!   that thread does.
//!
//! One request queue of up to 256 entries. Requests: read, write, flush, get-id, discard and
//! write-zeroes; anything else completes with `VIRTIO_BLK_S_UNSUPP`.

mod disk;
mod handler;
pub mod request;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::rate_limiter::{LimitTimer, RateLimit, RateLimiter};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;

pub use handler::QueueError;

use self::disk::DiskImage;
use self::handler::Engine;
use super::worker::{
    ActiveQueues, QueueHandler, QueuePosition, SingleQueue, Worker, WorkerContext,
};
use super::{ActivateContext, ActivateError, GuestMemoryMmap, VirtioDevice, VIRTIO_F_VERSION_1};

/// The virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Virtio-blk sectors are always 512 bytes, whatever the image's block size.
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data descriptors in one request (`seg_max`): a full queue minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest single data descriptor in bytes (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest discard, in sectors (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Segments per discard request.
pub const MAX_DISCARD_SEG: u32 = 1;
/// Preferred discard alignment in sectors (4 KiB, the usual file-system block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Largest write-zeroes, in sectors (1 GiB).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 21;
/// Segments per write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Length of the config space we expose (`struct virtio_blk_config` up to and including
/// `write_zeroes_may_unmap` and its padding).
pub const CONFIG_LEN: usize = 60;

/// Names worker threads `virtio-blk0`, `virtio-blk1`, ... in creation order.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image: a regular file or a block device, its size a multiple of 512 bytes.
    pub path: PathBuf,
    /// Open read-only and offer `VIRTIO_BLK_F_RO`; writes fail with `IOERR`.
    pub read_only: bool,
    /// Answer to `GET_ID` (at most 20 bytes); empty when `None`.
    pub serial: Option<String>,
    /// Bytes and requests per second (`--disk ...,bw=,iops=`); unlimited by default.
    pub limit: RateLimit,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds a conflicting lock on the image.
    #[error("disk image {} is in use by another process (it is locked)", path.display())]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// Locking failed for another reason.
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image's size could not be determined.
    #[error("cannot get the size of disk image {}: {source}", path.display())]
    Metadata {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("disk image {} is neither a regular file nor a block device", path.display())]
    NotADisk {
        /// The image.
        path: PathBuf,
    },
    /// The image is not a whole number of 512-byte sectors.
    #[error("disk image {} is {size} bytes, not a multiple of 512", path.display())]
    UnalignedSize {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The serial is longer than `GET_ID` can return.
    #[error("serial for disk image {} is {len} bytes, at most 20 allowed", path.display())]
    SerialTooLong {
        /// The image.
        path: PathBuf,
        /// The serial's length in bytes.
        len: usize,
    },
    /// The worker thread could not be started.
    #[error("cannot start the I/O thread for disk image {}: {source}", path.display())]
    Worker {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What a block device has done, counted by its worker and readable from any thread.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Requests completed (any type, any status).
    pub requests: AtomicU64,
    /// Bytes read from the image into guest memory.
    pub read_bytes: AtomicU64,
    /// Bytes written from guest memory to the image.
    pub write_bytes: AtomicU64,
    /// Requests that completed with an error status (`IOERR`, `UNSUPP`).
    pub errors: AtomicU64,
}

impl BlockCounters {
    /// The counters as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", get(&self.requests)),
            ("read_bytes", get(&self.read_bytes)),
            ("write_bytes", get(&self.write_bytes)),
            ("errors", get(&self.errors)),
        ]
    }
}

/// A virtio block device backed by a raw image.
pub struct Block {
    engine: Arc<Engine>,
    features: u64,
    queue_sizes: [u16; 1],
    config: [u8; CONFIG_LEN],
    worker: Worker,
}

/// What a block device's worker thread does: drain the request queue on every notification.
pub struct BlockHandler {
    engine: Arc<Engine>,
    active: Option<SingleQueue>,
    /// With a rate limit: the timer that ends a wait.
    timer: Option<LimitTimer>,
}

/// The rate-limit timer's token in the worker's epoll set.
const TOKEN_LIMIT_TIMER: u32 = 0;

impl BlockHandler {
    fn serve(&mut self, ctx: &mut WorkerContext) {
        if self.timer.as_ref().is_some_and(LimitTimer::is_armed) {
            // The timer brings us back.
            return;
        }
        let Some((mem, queue, interrupt)) = self.active.as_mut() else {
            return;
        };
        let control = ctx.control();
        match self.engine.process_queue_limited(
            mem,
            queue,
            Some(control.yield_flag()),
            Some(control.abort_flag()),
        ) {
            Ok((notify, wait)) => {
                if notify {
                    interrupt.signal_used_queue();
                }
                if let (Some(wait), Some(timer)) = (wait, self.timer.as_mut()) {
                    timer.arm(wait, "virtio-blk");
                }
            }
            Err(e) => {
                crate::error_ratelimited!("{e}");
                // Some chains may have been used before the failure; let the driver look.
                interrupt.signal_used_queue();
                // The ring itself is broken: stop using it until the driver resets us.
                if interrupt.signal_needs_reset() {
                    log::warn!(
                        "virtio-blk {}: queue is broken: device needs a reset",
                        self.engine.disk.path().display()
                    );
                }
                self.active = None;
                return;
            }
        }
        if control.should_yield() {
            // Stopped at a request boundary for a message: the rest comes after it.
            ctx.renotify(0);
        }
    }
}

impl QueueHandler for BlockHandler {
    fn activate(&mut self, q: ActiveQueues, ctx: &mut WorkerContext) {
        // `Block::activate` checked there is exactly one ready queue.
        self.active = q.into_single();
        if let Some(t) = self.timer.as_mut() {
            t.watch(ctx, TOKEN_LIMIT_TIMER, "virtio-blk");
        }
    }

    fn queue_event(&mut self, _index: usize, ctx: &mut WorkerContext) {
        self.serve(ctx);
    }

    fn fd_event(&mut self, _token: u32, ctx: &mut WorkerContext) {
        // The rate-limit wait is over.
        if let Some(t) = self.timer.as_mut() {
            t.fired();
        }
        self.serve(ctx);
    }

    fn queue_positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|(_, q, _)| QueuePosition::of(q))
            .collect()
    }

    fn reset(&mut self, _ctx: &mut WorkerContext) {
        self.active = None;
        if let Some(t) = self.timer.as_mut() {
            t.clear();
        }
    }
}

impl Block {
    /// Open the image described by `config` and start the device's (idle) worker thread.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let serial = config.serial.as_deref().unwrap_or("").as_bytes();
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        id.get_mut(..serial.len())
            .ok_or(BlockError::SerialTooLong {
                path: config.path.clone(),
                len: serial.len(),
            })?
            .copy_from_slice(serial);

        let disk = DiskImage::open(&config.path, config.read_only)?;
        let capacity = disk.size() >> SECTOR_SHIFT;

        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if config.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }

        let engine = Arc::new(Engine {
            disk,
            capacity,
            id,
            counters: BlockCounters::default(),
            limiter: RateLimiter::new(config.limit).map(Mutex::new),
        });
        let name = format!("virtio-blk{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let timer = if engine.limiter.is_some() {
            Some(LimitTimer::new().map_err(|source| BlockError::Worker {
                path: config.path.clone(),
                source,
            })?)
        } else {
            None
        };
        let handler = BlockHandler {
            engine: engine.clone(),
            active: None,
            timer,
        };
        let worker = Worker::spawn(name, handler).map_err(|source| BlockError::Worker {
            path: config.path.clone(),
            source,
        })?;
        Ok(Block {
            engine,
            features,
            queue_sizes: [QUEUE_SIZE],
            config: config_space(capacity),
            worker,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        self.engine.disk.path()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.engine.capacity
    }

    /// Whether the device is started (between a successful activate and a reset).
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }

    /// Handle every available request of `queue` on the calling thread, exactly as the worker
    /// does on a notification; returns whether the driver wants an interrupt. For tests and
    /// fuzzing: while the device is active, its worker owns the real queue.
    pub fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<bool, QueueError> {
        self.engine.process_queue(mem, queue, None, None)
    }
}

/// The little-endian `struct virtio_blk_config` for a disk of `capacity` sectors.
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &capacity.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // 16: geometry (not offered), 20: blk_size.
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // 24: topology (not offered), 32: writeback, 34: num_queues (not offered).
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    // write_zeroes_may_unmap: with the unmap flag we punch a hole.
    put(56, &[1]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::worker::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field we expose is read-only (`writeback` needs CONFIG_WCE, not offered).
        crate::warn_ratelimited!(
            "virtio-blk {}: ignoring {}-byte config write at offset {offset:#x}",
            self.path().display(),
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let (queues, events) = ctx.take_queues("virtio-blk", 1)?;
        self.worker.activate(queues, events)
    }

    fn reset(&mut self) {
        self.worker.reset();
    }

    fn worker(&self) -> Option<Arc<super::worker::Control>> {
        Some(self.worker.control())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.engine.counters.snapshot()
    }
}

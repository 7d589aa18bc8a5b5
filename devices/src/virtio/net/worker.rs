//! What the virtio-net worker thread does: move frames between the queues and the backend.
//!
//! The thread is the device's [`Worker`](crate::virtio::worker::Worker); it wakes on the RX
//! and TX queue eventfds (the driver's notifications) and on the backend fd (a frame is
//! queued), which [`NetHandler`] adds to its epoll set while it wants frames.
//!
//! RX flow control, without busy polling and without buffering in minivmm: a frame is read
//! from the backend only to be delivered at once. If the guest has no RX buffer for it, the
//! worker keeps that one frame, takes the backend fd out of the epoll set, and waits for the
//! guest to notify the RX queue; everything else stays queued in the kernel (which drops
//! frames once its queue is full, as a real NIC would).
//!
//! Guest input is untrusted: a malformed chain (a device-writable buffer on TX, a
//! device-readable one on RX, a buffer outside guest memory, a frame too long) is returned
//! to the guest with length 0, counted, and logged through the rate limiter.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::rate_limiter::{self, LimitTimer, RateLimit, RateLimiter};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{
    NetBackend, NetStats, MAX_RX_LEN_NO_OFFLOAD, MAX_RX_LEN_OFFLOAD, MAX_TX_LEN, NET_HDR_LEN,
    NUM_BUFFERS_OFFSET, RX_QUEUE, TX_QUEUE,
};
use crate::virtio::worker::{ActiveQueues, QueueHandler, QueuePosition, WorkerContext};
use crate::virtio::{GuestMemoryMmap, VirtioInterrupt};

/// The handler's token for the backend fd.
const TOKEN_BACKEND: u32 = 0;
/// The rate-limit timer's token.
const TOKEN_LIMIT_TIMER: u32 = 1;

/// Frames moved per wake-up before the loop looks at its other fds again (fairness between
/// RX, TX and the stop request when the guest or the host floods).
const BATCH: usize = 256;

/// The read buffer is one byte larger than the largest frame the device ever delivers, so
/// a frame that is too long shows up as a read of more than the limit (the kernel truncates
/// what does not fit) and is dropped, never delivered cut short.
const RX_READ_BUF_LEN: usize = MAX_RX_LEN_OFFLOAD + 1;

/// Why the device rejected a descriptor chain.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
    #[error("device-writable descriptor in a TX chain")]
    WritableInTx,
    #[error("device-readable descriptor in an RX chain")]
    ReadableInRx,
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("TX chain longer than {MAX_TX_LEN} bytes")]
    TooLong,
    #[error("TX chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(usize),
    #[error("RX chain has no room")]
    Empty,
}

/// A validated RX chain waiting to receive (part of) a frame.
#[derive(Debug)]
struct RxChain {
    head: u16,
    /// Its buffers, as a range of `Worker::rx_descs`.
    descs: Range<usize>,
}

/// What became of the frame the worker holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RxOutcome {
    /// Copied to the guest.
    Delivered,
    /// Dropped (counted).
    Dropped,
    /// The guest has not enough buffers: the frame stays held.
    NoBuffers,
}

/// What the worker thread runs for a net device: the queues while the device is active.
pub(super) struct NetHandler {
    pub(super) backend: Arc<dyn NetBackend>,
    pub(super) stats: Arc<NetStats>,
    pub(super) active: Option<Worker>,
    /// Whether the backend fd is in the worker's epoll set.
    pub(super) registered: bool,
    /// Each direction's limit (`--net ...,bw=,pps=`).
    pub(super) limit: RateLimit,
    /// With a limit: the timer that ends a wait.
    pub(super) timer: Option<LimitTimer>,
}

impl NetHandler {
    /// Arm the rate-limit timer if a direction asked to wait.
    fn arm_timer(&mut self) {
        let Some(w) = self.active.as_mut() else {
            return;
        };
        if let (Some(wait), Some(t)) = (w.limit_wait.take(), self.timer.as_mut()) {
            t.arm(wait, "virtio-net");
        }
    }

    /// Bring the epoll set in line with what the queues want (the backend fd is watched
    /// only while no frame is held).
    fn sync_backend(&mut self, ctx: &mut WorkerContext) {
        let want = self.active.as_ref().is_some_and(|w| w.backend_polled);
        if want == self.registered {
            return;
        }
        let fd = self.backend.poll_fd();
        let r = if want {
            ctx.add_fd(fd, TOKEN_BACKEND)
        } else {
            ctx.remove_fd(fd)
        };
        match r {
            Ok(()) => self.registered = want,
            Err(e) => log::error!(
                "virtio-net: {}: cannot {} the backend fd in epoll: {e}",
                self.backend.name(),
                if want { "add" } else { "remove" }
            ),
        }
    }
}

impl QueueHandler for NetHandler {
    fn activate(&mut self, q: ActiveQueues, ctx: &mut WorkerContext) {
        match Worker::new(q, self.backend.clone(), self.stats.clone()) {
            Ok(mut w) => {
                w.set_limit(self.limit);
                self.active = Some(w);
            }
            Err(e) => log::error!("virtio-net: {}: {e}", self.backend.name()),
        }
        if let Some(t) = self.timer.as_mut() {
            t.watch(ctx, TOKEN_LIMIT_TIMER, "virtio-net");
        }
        self.sync_backend(ctx);
    }

    fn queue_event(&mut self, index: usize, ctx: &mut WorkerContext) {
        let Some(w) = self.active.as_mut() else {
            return;
        };
        if index == RX_QUEUE {
            w.handle_rx();
        } else if index == TX_QUEUE {
            w.handle_tx();
            if std::mem::take(&mut w.tx_more) {
                // A full batch: come back after the other events.
                ctx.renotify(TX_QUEUE);
            }
        }
        self.arm_timer();
        self.sync_backend(ctx);
    }

    fn fd_event(&mut self, token: u32, ctx: &mut WorkerContext) {
        if token == TOKEN_LIMIT_TIMER {
            if let Some(t) = self.timer.as_mut() {
                t.fired();
            }
            if let Some(w) = self.active.as_mut() {
                w.rx_throttled = false;
                w.tx_throttled = false;
                w.handle_tx();
                if std::mem::take(&mut w.tx_more) {
                    ctx.renotify(TX_QUEUE);
                }
                w.handle_rx();
            }
        } else if let Some(w) = self.active.as_mut() {
            w.handle_rx();
        }
        self.arm_timer();
        self.sync_backend(ctx);
    }

    fn queue_positions(&self) -> Vec<QueuePosition> {
        let Some(w) = &self.active else {
            return Vec::new();
        };
        // Buffers popped for a frame not yet delivered go back to the guest's side: a
        // restored device pops them again (the frame itself is lost, as on a wire).
        let mut rx = QueuePosition::of(&w.rx);
        rx.next_avail = rx.next_avail.wrapping_sub(w.rx_chains.len() as u16);
        vec![rx, QueuePosition::of(&w.tx)]
    }

    fn reset(&mut self, ctx: &mut WorkerContext) {
        // A frame held for want of RX buffers dies with the queues (Worker's Drop counts it).
        self.active = None;
        if let Some(t) = self.timer.as_mut() {
            t.clear();
        }
        self.sync_backend(ctx);
    }
}

/// The queues of an active net device, and the frame state between wake-ups.
pub(super) struct Worker {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) interrupt: Arc<VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    stats: Arc<NetStats>,
    mrg_rxbuf: bool,
    guest_csum: bool,
    /// Largest header + frame the guest accepts (depends on the negotiated offloads).
    max_rx_len: usize,
    /// The frame read from the backend, header first.
    rx_frame: Vec<u8>,
    /// `Some(len)`: `rx_frame[..len]` holds a frame not yet delivered (at most one).
    pub(super) rx_pending: Option<usize>,
    /// Chains popped for the held frame (MRG_RXBUF may need several; if the guest has not
    /// offered enough yet, the ones already popped wait here).
    rx_chains: Vec<RxChain>,
    rx_descs: Vec<(GuestAddress, usize)>,
    rx_capacity: usize,
    tx_buf: Vec<u8>,
    /// Whether the backend fd should be watched (no frame held).
    pub(super) backend_polled: bool,
    /// TX stopped after a full batch with more chains possibly queued.
    pub(super) tx_more: bool,
    /// Each direction's rate limiter, and whether it is waiting for its timer.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    pub(super) rx_throttled: bool,
    pub(super) tx_throttled: bool,
    /// The longest wait a limiter asked for since the handler last looked.
    pub(super) limit_wait: Option<Duration>,
}

impl Worker {
    /// Take the queues the driver set up.
    pub(super) fn new(
        q: ActiveQueues,
        backend: Arc<dyn NetBackend>,
        stats: Arc<NetStats>,
    ) -> io::Result<Worker> {
        let ActiveQueues {
            mem,
            acked_features: acked,
            queues,
            interrupt,
        } = q;
        let mut queues = queues.into_iter();
        let missing = |what: &str| io::Error::other(format!("virtio-net: missing {what}"));
        // `Net::activate` checked there are exactly two; RX_QUEUE is 0 and TX_QUEUE 1.
        debug_assert_eq!((RX_QUEUE, TX_QUEUE), (0, 1));
        let rx = queues.next().ok_or_else(|| missing("RX queue"))?;
        let tx = queues.next().ok_or_else(|| missing("TX queue"))?;

        let has = |bit: u32| acked & (1u64 << bit) != 0;
        let offloads = has(VIRTIO_NET_F_GUEST_TSO4)
            || has(VIRTIO_NET_F_GUEST_TSO6)
            || has(VIRTIO_NET_F_GUEST_UFO);
        Ok(Worker {
            mem,
            rx,
            tx,
            interrupt,
            backend,
            stats,
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            max_rx_len: if offloads {
                MAX_RX_LEN_OFFLOAD
            } else {
                MAX_RX_LEN_NO_OFFLOAD
            },
            rx_frame: vec![0; RX_READ_BUF_LEN],
            rx_pending: None,
            rx_chains: Vec::new(),
            rx_descs: Vec::new(),
            rx_capacity: 0,
            tx_buf: vec![0; MAX_TX_LEN],
            // The first RX pass (right after activation) decides.
            backend_polled: false,
            tx_more: false,
            rx_limiter: None,
            tx_limiter: None,
            rx_throttled: false,
            tx_throttled: false,
            limit_wait: None,
        })
    }

    /// Limit each direction to `limit`.
    pub(super) fn set_limit(&mut self, limit: RateLimit) {
        self.rx_limiter = RateLimiter::new(limit);
        self.tx_limiter = RateLimiter::new(limit);
    }

    fn note_wait(&mut self, wait: Duration) {
        self.limit_wait = self.limit_wait.max(Some(wait));
    }

    /// Add or remove the backend fd from the epoll set (applied by [`NetHandler`]).
    fn set_backend_polled(&mut self, polled: bool) {
        self.backend_polled = polled;
    }

    /// RX, then tell the guest if it got buffers back.
    pub(super) fn handle_rx(&mut self) {
        if self.rx_throttled {
            self.set_backend_polled(false);
            return;
        }
        if self.process_rx() {
            self.notify_guest(RX_QUEUE);
        }
    }

    /// TX, then tell the guest if it got buffers back.
    pub(super) fn handle_tx(&mut self) {
        if self.tx_throttled {
            return;
        }
        if self.process_tx() {
            self.notify_guest(TX_QUEUE);
        }
    }

    fn notify_guest(&mut self, queue: usize) {
        let q = if queue == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        // Without EVENT_IDX (not offered) this is always true; keep the check so that
        // offering it later needs no change here.
        if q.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }

    /// Move frames from the backend to the guest. Returns whether the used ring changed.
    pub(super) fn process_rx(&mut self) -> bool {
        let mut used = false;
        for _ in 0..BATCH {
            if self.rx_pending.is_none() {
                if let Some(wait) = rate_limiter::wait(&mut self.rx_limiter) {
                    self.rx_throttled = true;
                    self.note_wait(wait);
                    break;
                }
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(len) => {
                        if len < NET_HDR_LEN || len > self.max_rx_len {
                            NetStats::add(&self.stats.rx_dropped, 1);
                            crate::warn_ratelimited!(
                                "virtio-net: {}: dropping a {len}-byte frame (limit {})",
                                self.backend.name(),
                                self.max_rx_len
                            );
                            continue;
                        }
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Not expected from a TAP. Do not spin on it: stop polling the backend
                        // until the guest next notifies the RX queue.
                        crate::error_ratelimited!(
                            "virtio-net: {}: read failed: {e}",
                            self.backend.name()
                        );
                        self.set_backend_polled(false);
                        return used;
                    }
                },
            };
            match self.deliver(len, &mut used) {
                RxOutcome::Delivered => {
                    rate_limiter::charge(&mut self.rx_limiter, 1, (len - NET_HDR_LEN) as u64);
                    self.rx_pending = None;
                }
                RxOutcome::Dropped => self.rx_pending = None,
                RxOutcome::NoBuffers => break,
            }
        }
        // Poll the backend only while there is no held frame: a held frame means the guest
        // is out of buffers, and its next RX notification wakes us instead. A rate limit's
        // wait stops polling too; its timer resumes it.
        self.set_backend_polled(self.rx_pending.is_none() && !self.rx_throttled);
        used
    }

    /// Pop and validate one RX chain; a malformed one goes straight back with length 0.
    /// Returns `false` when the guest offers no more chains.
    fn pop_rx_chain(&mut self, used: &mut bool) -> bool {
        let Some(chain) = pop_chain(&mut self.rx, &self.mem, &self.interrupt, RX_QUEUE) else {
            return false;
        };
        let head = chain.head_index();
        let start = self.rx_descs.len();
        match collect_rx_chain(&self.mem, chain, &mut self.rx_descs) {
            Ok(capacity) => {
                self.rx_capacity = self.rx_capacity.saturating_add(capacity);
                self.rx_chains.push(RxChain {
                    head,
                    descs: start..self.rx_descs.len(),
                });
            }
            Err(e) => {
                self.rx_descs.truncate(start);
                NetStats::add(&self.stats.malformed_chains, 1);
                crate::warn_ratelimited!("virtio-net: bad RX chain {head}: {e}");
                self.add_used(RX_QUEUE, head, 0);
                *used = true;
            }
        }
        true
    }

    /// Copy the held frame (`rx_frame[..len]`) into the guest's RX buffers.
    pub(super) fn deliver(&mut self, len: usize, used: &mut bool) -> RxOutcome {
        // Gather enough chains: the whole frame with MRG_RXBUF, else exactly one chain.
        loop {
            let enough = if self.mrg_rxbuf {
                self.rx_capacity >= len
            } else {
                !self.rx_chains.is_empty()
            };
            if enough {
                break;
            }
            if !self.pop_rx_chain(used) {
                return RxOutcome::NoBuffers;
            }
        }
        if !self.mrg_rxbuf && self.rx_capacity < len {
            // The chain stays for the next, smaller, frame.
            NetStats::add(&self.stats.rx_dropped, 1);
            crate::warn_ratelimited!(
                "virtio-net: dropping a {len}-byte frame: the guest's RX buffer holds {}",
                self.rx_capacity
            );
            return RxOutcome::Dropped;
        }

        // The header: num_buffers is ours to fill in (the kernel leaves those two bytes
        // alone); without GUEST_CSUM the guest must not see checksum flags.
        let num_buffers = u16::try_from(self.rx_chains.len()).unwrap_or(u16::MAX);
        let Some(frame) = self.rx_frame.get_mut(..len) else {
            return RxOutcome::Dropped;
        };
        frame[NUM_BUFFERS_OFFSET..NET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        if !self.guest_csum {
            frame[0] = 0;
        }

        // Every popped chain is needed: chains are popped only until the frame fits.
        let frame = &*frame;
        let mut offset = 0usize;
        let mut failed = false;
        for chain in &self.rx_chains {
            let mut written = 0usize;
            for &(addr, desc_len) in self.rx_descs.get(chain.descs.clone()).unwrap_or(&[]) {
                let n = desc_len.min(len - offset);
                let Some(src) = frame.get(offset..offset + n) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = self.mem.write_slice(src, addr) {
                    // Checked when the chain was popped; guest memory does not shrink.
                    crate::error_ratelimited!("virtio-net: RX write to {:#x} failed: {e}", addr.0);
                    failed = true;
                    break;
                }
                offset += n;
                written += n;
            }
            let used_len = if failed { 0 } else { written as u32 };
            add_used(&mut self.rx, &self.mem, RX_QUEUE, chain.head, used_len);
            *used = true;
        }
        self.rx_chains.clear();
        self.rx_descs.clear();
        self.rx_capacity = 0;

        if failed {
            NetStats::add(&self.stats.rx_dropped, 1);
            return RxOutcome::Dropped;
        }
        NetStats::add(&self.stats.rx_frames, 1);
        NetStats::add(&self.stats.rx_bytes, (len - NET_HDR_LEN) as u64);
        RxOutcome::Delivered
    }

    /// Send every frame the guest queued on TX. Returns whether the used ring changed.
    pub(super) fn process_tx(&mut self) -> bool {
        let mut used = false;
        for _ in 0..BATCH {
            if let Some(wait) = rate_limiter::wait(&mut self.tx_limiter) {
                self.tx_throttled = true;
                self.note_wait(wait);
                return used;
            }
            let Some(chain) = pop_chain(&mut self.tx, &self.mem, &self.interrupt, TX_QUEUE) else {
                return used;
            };
            let head = chain.head_index();
            match gather_tx_chain(&self.mem, chain, &mut self.tx_buf) {
                Ok(len) => match self.backend.write_frame(&self.tx_buf[..len]) {
                    Ok(_) => {
                        NetStats::add(&self.stats.tx_frames, 1);
                        NetStats::add(&self.stats.tx_bytes, (len - NET_HDR_LEN) as u64);
                        rate_limiter::charge(&mut self.tx_limiter, 1, (len - NET_HDR_LEN) as u64);
                    }
                    Err(e) => {
                        NetStats::add(&self.stats.tx_dropped, 1);
                        crate::warn_ratelimited!(
                            "virtio-net: {}: dropping a {len}-byte TX frame: {e}",
                            self.backend.name()
                        );
                    }
                },
                Err(e) => {
                    NetStats::add(&self.stats.tx_dropped, 1);
                    NetStats::add(&self.stats.malformed_chains, 1);
                    crate::warn_ratelimited!("virtio-net: bad TX chain {head}: {e}");
                }
            }
            // The device writes nothing into TX buffers: the used length is always 0.
            self.add_used(TX_QUEUE, head, 0);
            used = true;
        }
        // The batch is full and the guest may have queued more: come back after looking
        // at the other fds (the handler re-raises our own TX notification).
        self.tx_more = true;
        used
    }

    fn add_used(&mut self, queue: usize, head: u16, len: u32) {
        if queue == RX_QUEUE {
            add_used(&mut self.rx, &self.mem, queue, head, len);
        } else {
            add_used(&mut self.tx, &self.mem, queue, head, len);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A frame held for want of RX buffers dies with the worker (device reset).
        if self.rx_pending.is_some() {
            NetStats::add(&self.stats.rx_dropped, 1);
        }
    }
}

/// The next available chain of `q`. Unlike `Queue::pop_descriptor_chain`, a broken
/// available ring (an index the guest moved too far) is logged through the rate limiter,
/// since the guest can make it happen at every notification, and the device asks the
/// driver for a reset.
fn pop_chain<'a>(
    q: &mut Queue,
    mem: &'a GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    queue: usize,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    match q.iter(mem) {
        Ok(mut iter) => iter.next(),
        Err(e) => {
            crate::warn_ratelimited!("virtio-net: queue {queue}: bad available ring: {e}");
            if interrupt.signal_needs_reset() {
                log::warn!("virtio-net: queue {queue} is broken: device needs a reset");
            }
            None
        }
    }
}

/// Put chain `head` in `q`'s used ring (a failure means the ring is outside guest memory,
/// which the transport checked; it is logged, not fatal).
fn add_used(q: &mut Queue, mem: &GuestMemoryMmap, queue: usize, head: u16, len: u32) {
    if let Err(e) = q.add_used(mem, head, len) {
        crate::error_ratelimited!("virtio-net: queue {queue}: add_used({head}) failed: {e}");
    }
}

/// Record the buffers of an RX chain in `descs`; returns its capacity. Every buffer must
/// be device-writable and inside guest memory.
fn collect_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    descs: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, ChainError> {
    let mut capacity = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        capacity = capacity.saturating_add(len);
        descs.push((desc.addr(), len));
    }
    if capacity == 0 {
        return Err(ChainError::Empty);
    }
    Ok(capacity)
}

/// Copy a TX chain (header + frame) into `buf`; returns its length. Every buffer must be
/// device-readable and inside guest memory, and the total at most [`MAX_TX_LEN`].
fn gather_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WritableInTx);
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|&end| end <= MAX_TX_LEN)
            .ok_or(ChainError::TooLong)?;
        let dst = buf.get_mut(len..end).ok_or(ChainError::TooLong)?;
        mem.read_slice(dst, desc.addr())
            .map_err(|_| ChainError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        len = end;
    }
    if len < NET_HDR_LEN {
        return Err(ChainError::TooShort(len));
    }
    Ok(len)
}

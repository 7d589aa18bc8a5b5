//! The virtio-net device (virtio 1.2, section 5.1), backed by a host TAP interface.
//!
//! What this module owns: the device's feature bits, its configuration space (MAC address,
//! link status), and the worker thread that moves Ethernet frames between the guest's two
//! virtqueues and the TAP fd:
//!
//! - **RX** (queue 0, host to guest): the guest fills the queue with empty, device-writable
//!   buffers; the worker reads a frame from the TAP and copies it into one buffer, or, with
//!   `VIRTIO_NET_F_MRG_RXBUF`, across several (the header's `num_buffers` says how many).
//! - **TX** (queue 1, guest to host): each chain holds a header and a frame, in
//!   device-readable buffers; the worker gathers them and writes them to the TAP.
//!
//! Every frame in both directions starts with a 12-byte `virtio_net_hdr_v1` (flags, GSO
//! type and sizes, checksum start and offset, `num_buffers`). The TAP is opened with
//! `IFF_VNET_HDR`, so the kernel speaks the same header: the device passes it through and
//! only fills in `num_buffers`. That is what makes checksum and segmentation offloads
//! (`CSUM`, `GUEST_TSO4`, ...) nearly free: a 64 KiB TCP segment crosses as one frame.
//!
//! Flow control: frames wait in the kernel's TAP queue, not in minivmm. When the guest has
//! no RX buffers, the worker keeps at most one frame it already read and stops polling the
//! TAP until the guest notifies the RX queue (see `worker.rs`).
//!
//! The TAP is behind the small [`NetBackend`] trait so that the queue handling can be
//! tested with a socket pair instead of `/dev/net/tun`.

pub mod tap;
mod worker;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::rate_limiter::RateLimit;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use self::tap::offload::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use self::tap::{Tap, TapError};
use super::worker::Worker;
use super::{ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// The virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Length of the virtio-net header in front of every frame (`virtio_net_hdr_v1`, which
/// includes `num_buffers`; always this size since `VIRTIO_F_VERSION_1`).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (little-endian u16) in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest Ethernet frame without offloads (1500 bytes of payload and a 14-byte header).
pub const MAX_FRAME_NO_OFFLOAD: usize = 1514;
/// The largest header + frame the device delivers to the guest without `GUEST_TSO*/UFO`.
pub const MAX_RX_LEN_NO_OFFLOAD: usize = NET_HDR_LEN + MAX_FRAME_NO_OFFLOAD;
/// The largest header + frame the device delivers to the guest with `GUEST_TSO*/UFO`
/// (the buffer size the spec asks such drivers to provide, section 5.1.6.3.1).
pub const MAX_RX_LEN_OFFLOAD: usize = 65562;
/// The largest header + frame the device accepts from the guest (64 KiB of frame).
pub const MAX_TX_LEN: usize = NET_HDR_LEN + 65536;
/// Queue index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Queue index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// The maximum size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Size of the configuration space: `mac` (6), `status` (2), `max_virtqueue_pairs` (2).
const CONFIG_LEN: usize = 10;

/// Numbers the devices, for the worker threads' names (`virtio-net0`, `virtio-net1`, ...).
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// The host end of a virtio-net device: something that exchanges frames, each preceded by a
/// [`NET_HDR_LEN`]-byte virtio-net header, one frame per `read`/`write`, through a
/// non-blocking fd that `epoll` can watch. [`Tap`] is the real one.
pub trait NetBackend: Send + Sync {
    /// Read one frame into `buf`; `WouldBlock` when none is queued.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame.
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize>;
    /// Set the offloads the guest accepts (`tap::offload::TUN_F_*`).
    fn set_offload(&self, flags: u32) -> io::Result<()>;
    /// The fd that becomes readable when a frame is queued.
    fn poll_fd(&self) -> RawFd;
    /// A name for log messages.
    fn name(&self) -> &str;
}

/// For `fuzz/fuzz_targets/net_worker.rs`: run the TX and RX paths of an active device
/// synchronously, as its worker would on notifications, on queues the fuzzer set up and
/// with `backend` standing in for the tap. Returns the device's counters.
#[doc(hidden)]
pub fn fuzz_process(
    queues: super::worker::ActiveQueues,
    backend: Arc<dyn NetBackend>,
    limit: RateLimit,
) -> NetStatsSnapshot {
    let stats = Arc::new(NetStats::default());
    if let Ok(mut w) = worker::Worker::new(queues, backend, stats.clone()) {
        w.set_limit(limit);
        for _ in 0..2 {
            w.handle_tx();
            w.handle_rx();
        }
    }
    stats.snapshot()
}

impl NetBackend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(|e| match e {
            TapError::SetOffload { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }

    fn poll_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn name(&self) -> &str {
        self.if_name()
    }
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC address is multicast (or all zeros), which a NIC cannot have.
    #[error("invalid MAC address {0}: a NIC needs a non-zero unicast address")]
    InvalidMac(String),
    /// The TAP could not be configured.
    #[error("cannot configure the tap: {0}")]
    Tap(#[from] TapError),
    /// The worker thread could not be started.
    #[error("cannot start the device's thread: {0}")]
    Worker(#[source] io::Error),
}

/// Traffic counters of one net device, updated by its worker thread and readable from
/// any thread (`--stats`). Bytes count Ethernet frames, without the virtio-net header.
#[derive(Debug, Default)]
pub struct NetStats {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    malformed_chains: AtomicU64,
}

/// A copy of [`NetStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames from the host that were dropped (too big for the negotiated size or for the
    /// guest's buffer).
    pub rx_dropped: u64,
    /// Frames the guest sent that reached the TAP.
    pub tx_frames: u64,
    /// Bytes the guest sent that reached the TAP.
    pub tx_bytes: u64,
    /// Frames the guest sent that were dropped (malformed chain, too big, TAP error).
    pub tx_dropped: u64,
    /// Descriptor chains (RX or TX) the device rejected as malformed and returned unused.
    pub malformed_chains: u64,
}

impl NetStats {
    /// Read all counters.
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            malformed_chains: get(&self.malformed_chains),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A virtio-net device.
pub struct Net {
    id: usize,
    backend: Arc<dyn NetBackend>,
    mac: [u8; 6],
    /// `TUN_F_*` flags the backend accepted when probed.
    supported_offloads: u32,
    avail_features: u64,
    queue_sizes: [u16; 2],
    stats: Arc<NetStats>,
    worker: Worker,
}

/// The `TUN_F_*` offloads `backend` accepts, found by trying the richest set first (the
/// kernel refuses a whole set if it does not know one flag; old kernels lack UFO).
/// Leaves the backend with no offloads, which is right until a driver acknowledges some.
fn probe_offloads(backend: &dyn NetBackend) -> u32 {
    let candidates = [
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO,
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        TUN_F_CSUM,
    ];
    let supported = candidates
        .into_iter()
        .find(|&flags| backend.set_offload(flags).is_ok())
        .unwrap_or(0);
    if let Err(e) = backend.set_offload(0) {
        log::warn!("virtio-net: {}: cannot clear offloads: {e}", backend.name());
    }
    supported
}

/// Map the offloads a driver acknowledged (`GUEST_*` features: what the guest accepts) to
/// the TAP's `TUN_F_*` flags, keeping only what the backend supports. TSO and UFO need
/// checksum offload, so without `GUEST_CSUM` none are set.
fn offloads_for_features(acked: u64, supported: u32) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= TUN_F_UFO;
    }
    flags & supported
}

/// The features to offer given the backend's offloads.
fn features_for_offloads(supported: u32) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM);
    if supported & TUN_F_CSUM != 0 {
        if supported & TUN_F_TSO4 != 0 {
            features |= bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO4);
        }
        if supported & TUN_F_TSO6 != 0 {
            features |= bit(VIRTIO_NET_F_GUEST_TSO6) | bit(VIRTIO_NET_F_HOST_TSO6);
        }
        if supported & TUN_F_UFO != 0 {
            features |= bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO);
        }
    }
    features
}

/// `true` for an address a NIC may have: not multicast/broadcast, not all zeros.
pub fn is_valid_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 0x01 == 0 && mac.iter().any(|&b| b != 0)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Net {
    /// A net device on `tap` with guest MAC address `mac`. Sets the TAP's vnet header size
    /// to 12 and probes which offloads it supports, to decide which features to offer.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Net, NetError> {
        Self::new_limited(tap, mac, RateLimit::default())
    }

    /// [`Net::new`] with each direction limited to `limit` (bytes and frames per second).
    pub fn new_limited(tap: Tap, mac: [u8; 6], limit: RateLimit) -> Result<Net, NetError> {
        tap.set_vnet_hdr_size(NET_HDR_LEN as i32)?;
        Self::with_backend_limited(Arc::new(tap), mac, limit)
    }

    /// A net device on any [`NetBackend`] (tests use a socket pair). The backend must
    /// already speak [`NET_HDR_LEN`]-byte headers.
    pub fn with_backend(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> Result<Net, NetError> {
        Self::with_backend_limited(backend, mac, RateLimit::default())
    }

    /// [`Net::with_backend`] under a rate limit.
    pub fn with_backend_limited(
        backend: Arc<dyn NetBackend>,
        mac: [u8; 6],
        limit: RateLimit,
    ) -> Result<Net, NetError> {
        if !is_valid_unicast_mac(&mac) {
            return Err(NetError::InvalidMac(format_mac(&mac)));
        }
        let supported_offloads = probe_offloads(backend.as_ref());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "virtio-net{id}: backend {}, mac {}, offloads {supported_offloads:#x}",
            backend.name(),
            format_mac(&mac)
        );
        let stats = Arc::new(NetStats::default());
        let timer = if limit.is_limited() {
            Some(crate::rate_limiter::LimitTimer::new().map_err(NetError::Worker)?)
        } else {
            None
        };
        let handler = worker::NetHandler {
            backend: backend.clone(),
            stats: stats.clone(),
            active: None,
            registered: false,
            limit,
            timer,
        };
        let worker = Worker::spawn(format!("virtio-net{id}"), handler).map_err(NetError::Worker)?;
        Ok(Net {
            id,
            backend,
            mac,
            supported_offloads,
            avail_features: features_for_offloads(supported_offloads),
            queue_sizes: [QUEUE_MAX_SIZE; 2],
            stats,
            worker,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The traffic counters (shared: they keep counting after this call).
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(&self.stats)
    }

    /// The name of the backend (the TAP interface).
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // max_virtqueue_pairs: one RX/TX pair (only meaningful with VIRTIO_NET_F_MQ).
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::worker::read_config_space(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The net configuration space is read-only for a VERSION_1 driver (the MAC can only
        // be changed through a control queue, which this device does not have).
        crate::warn_ratelimited!(
            "virtio-net{}: ignoring a {}-byte config write at offset {offset}",
            self.id,
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let acked = ctx.acked_features & self.avail_features;
        let (mut queues, events) = ctx.take_queues("virtio-net", 2)?;

        let offloads = offloads_for_features(acked, self.supported_offloads);
        if let Err(e) = self.backend.set_offload(offloads) {
            // The backend keeps the empty set from probing: the guest simply receives no
            // offloaded frames.
            log::warn!(
                "virtio-net{}: {}: cannot set offloads {offloads:#x}: {e}",
                self.id,
                self.backend.name()
            );
        }
        queues.acked_features = acked;
        self.worker.activate(queues, events)?;
        log::debug!("virtio-net{}: activated, features {acked:#x}", self.id);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.reset();
        if let Err(e) = self.backend.set_offload(0) {
            log::warn!("virtio-net{}: cannot clear offloads: {e}", self.id);
        }
    }

    fn worker(&self) -> Option<Arc<super::worker::Control>> {
        Some(self.worker.control())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats.snapshot();
        vec![
            ("rx_frames", s.rx_frames),
            ("rx_bytes", s.rx_bytes),
            ("rx_dropped", s.rx_dropped),
            ("tx_frames", s.tx_frames),
            ("tx_bytes", s.tx_bytes),
            ("tx_dropped", s.tx_dropped),
            ("malformed_chains", s.malformed_chains),
        ]
    }
}

#[cfg(test)]
mod tests;

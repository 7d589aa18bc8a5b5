//! Tests of the net device on plain guest memory, with a Unix datagram socket pair in place
//! of the TAP (one frame per datagram, non-blocking, pollable: what the device needs), plus
//! one test on a real TAP inside a private network namespace.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_bindings::virtio_net::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::offload::*;
use super::worker::Worker;
use super::*;
use crate::test_util::{wait_for, CountingInterrupt, DriverQueue};
use crate::virtio::VIRTIO_MMIO_INT_CONFIG;
use crate::virtio::{ActivateContext, GuestMemoryMmap, VirtioInterrupt};

const MEM_SIZE: usize = 0x10_0000;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x4000;
const QSIZE: u16 = 256;
const VRING_DESC_F_NEXT: u16 = 1;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// A [`NetBackend`] on one end of a datagram socket pair; the test holds the other end
/// (the "host network").
struct SocketBackend {
    sock: UnixDatagram,
    accepted_offloads: u32,
    offload_calls: Mutex<Vec<u32>>,
}

impl NetBackend for SocketBackend {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.send(buf)
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        if flags & !self.accepted_offloads != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.offload_calls.lock().unwrap().push(flags);
        Ok(())
    }
    fn poll_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn name(&self) -> &str {
        "testsock"
    }
}

impl SocketBackend {
    /// Is a frame still queued for the device to read?
    fn has_queued_frame(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: `b` is a valid 1-byte buffer for the duration of the call.
        let r = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        r >= 0
    }
}

fn backend_pair(accepted_offloads: u32) -> (Arc<SocketBackend>, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (
        Arc::new(SocketBackend {
            sock: a,
            accepted_offloads,
            offload_calls: Mutex::new(Vec::new()),
        }),
        b,
    )
}

/// Guest memory, the two driver queues, and what `activate` receives.
struct Guest {
    mem: GuestMemoryMmap,
    rxq: DriverQueue,
    txq: DriverQueue,
    irq: Arc<CountingInterrupt>,
}

impl Guest {
    fn new() -> Guest {
        Guest {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
            rxq: DriverQueue::new(RX_RING, QSIZE),
            txq: DriverQueue::new(TX_RING, QSIZE),
            irq: Arc::new(CountingInterrupt::default()),
        }
    }

    /// The context plus clones of the queue eventfds (to play the driver's notify).
    fn activate_ctx(&self, acked: u64) -> (ActivateContext, EventFd, EventFd) {
        let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            acked_features: acked,
            queues: vec![self.rxq.queue(), self.txq.queue()],
            queue_events: vec![rx_evt.try_clone().unwrap(), tx_evt.try_clone().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(self.irq.clone())),
        };
        (ctx, rx_evt, tx_evt)
    }

    fn worker(&self, acked: u64, backend: Arc<SocketBackend>) -> (Worker, Arc<NetStats>) {
        let stats = Arc::new(NetStats::default());
        let (ctx, _, _) = self.activate_ctx(acked);
        let w = Worker::new(ctx.split().0, backend, stats.clone()).unwrap();
        (w, stats)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn irqs(&self) -> usize {
        self.irq.count()
    }
}

/// A header (with garbage in `num_buffers`, as the kernel leaves it) and `len` bytes of
/// frame with a recognizable pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f[NUM_BUFFERS_OFFSET] = 0xaa;
    f[NUM_BUFFERS_OFFSET + 1] = 0xbb;
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn num_buffers(hdr: &[u8]) -> u16 {
    u16::from_le_bytes([hdr[NUM_BUFFERS_OFFSET], hdr[NUM_BUFFERS_OFFSET + 1]])
}

const BASE_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1;

#[test]
fn header_layout() {
    // virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
    // num_buffers: 12 bytes, num_buffers last.
    assert_eq!(
        std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>(),
        NET_HDR_LEN
    );
    assert_eq!(NUM_BUFFERS_OFFSET, NET_HDR_LEN - 2);
    assert_eq!(MAX_RX_LEN_NO_OFFLOAD, 1526);
}

#[test]
fn features_follow_backend_offloads() {
    let (all, _p1) = backend_pair(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO);
    let net = Net::with_backend(all.clone(), [2, 0, 0, 0, 0, 1]).unwrap();
    let f = net.features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
    ] {
        assert_ne!(f & bit(b), 0, "feature bit {b} missing");
    }
    // Probing leaves the backend with no offloads.
    assert_eq!(all.offload_calls.lock().unwrap().last(), Some(&0));

    let (no_ufo, _p2) = backend_pair(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    let f = Net::with_backend(no_ufo, [2, 0, 0, 0, 0, 1])
        .unwrap()
        .features();
    assert_ne!(f & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
    assert_eq!(f & bit(VIRTIO_NET_F_GUEST_UFO), 0);
    assert_eq!(f & bit(VIRTIO_NET_F_HOST_UFO), 0);

    let (csum_only, _p3) = backend_pair(TUN_F_CSUM);
    let f = Net::with_backend(csum_only, [2, 0, 0, 0, 0, 1])
        .unwrap()
        .features();
    assert_ne!(f & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
    assert_eq!(
        f & (bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO4)),
        0
    );
}

#[test]
fn offload_flags_from_acked_features() {
    let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO;
    let acked = bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(offloads_for_features(acked, all), TUN_F_CSUM | TUN_F_TSO4);
    // TSO without checksum offload is not a valid TAP configuration.
    assert_eq!(offloads_for_features(bit(VIRTIO_NET_F_GUEST_TSO4), all), 0);
    // Only what the backend supports.
    let acked = acked | bit(VIRTIO_NET_F_GUEST_UFO);
    assert_eq!(
        offloads_for_features(acked, TUN_F_CSUM | TUN_F_TSO4),
        TUN_F_CSUM | TUN_F_TSO4
    );
}

#[test]
fn activate_sets_and_reset_clears_offloads() {
    let (backend, _peer) = backend_pair(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO);
    let mut net = Net::with_backend(backend.clone(), [2, 0, 0, 0, 0, 1]).unwrap();
    let g = Guest::new();
    let acked = BASE_FEATURES
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6);
    let (ctx, _, _) = g.activate_ctx(acked);
    net.activate(ctx).unwrap();
    assert_eq!(
        backend.offload_calls.lock().unwrap().last(),
        Some(&(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6))
    );
    net.reset();
    assert_eq!(backend.offload_calls.lock().unwrap().last(), Some(&0));
}

#[test]
fn config_space() {
    let (backend, _peer) = backend_pair(0);
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let mut net = Net::with_backend(backend, mac).unwrap();
    let mut b = [0u8; 6];
    net.read_config(0, &mut b);
    assert_eq!(b, mac);
    let mut s = [0u8; 2];
    net.read_config(6, &mut s);
    assert_eq!(u16::from_le_bytes(s), VIRTIO_NET_S_LINK_UP as u16);
    net.read_config(8, &mut s);
    assert_eq!(u16::from_le_bytes(s), 1);
    let mut past = [0xffu8; 4];
    net.read_config(9, &mut past);
    assert_eq!(past, [0, 0, 0, 0]);
    net.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    // Writes are ignored.
    net.write_config(0, &[0xff; 6]);
    net.read_config(0, &mut b);
    assert_eq!(b, mac);
}

#[test]
fn rejects_multicast_and_zero_mac() {
    let (backend, _peer) = backend_pair(0);
    let e = Net::with_backend(backend.clone(), [0x03, 0, 0, 0, 0, 1])
        .err()
        .unwrap();
    assert!(e.to_string().contains("03:00:00:00:00:01"), "{e}");
    assert!(Net::with_backend(backend, [0; 6]).is_err());
}

#[test]
fn rx_frame_into_one_buffer() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut rxq = g.rxq;
    let head = rxq.add_chain(&g.mem, &[(0x10000, 2048, true)]);
    let f = frame(100, 1);
    peer.send(&f).unwrap();

    w.handle_rx();

    assert_eq!(rxq.used_idx(&g.mem), 1);
    assert_eq!(rxq.used_elem(&g.mem, 0), (u32::from(head), 112));
    let got = g.read(0x10000, 112);
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    assert_eq!(g.irqs(), 1);
    let s = stats.snapshot();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 100, 0));
    // Nothing held, and the backend is watched for the next frame.
    assert_eq!(w.rx_pending, None);
    assert!(w.backend_polled);
}

#[test]
fn rx_frame_across_descriptors_of_one_chain() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, _) = g.worker(BASE_FEATURES, backend);
    let mut rxq = g.rxq;
    // Header in its own buffer, as older drivers lay it out.
    rxq.add_chain(&g.mem, &[(0x10000, 12, true), (0x20000, 1514, true)]);
    let f = frame(300, 9);
    peer.send(&f).unwrap();
    w.handle_rx();
    assert_eq!(rxq.used_elem(&g.mem, 0).1, 312);
    assert_eq!(num_buffers(&g.read(0x10000, 12)), 1);
    assert_eq!(g.read(0x20000, 300), f[NET_HDR_LEN..]);
}

#[test]
fn rx_mrg_frame_spans_several_chains() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF), backend);
    let mut rxq = g.rxq;
    let heads: Vec<u16> = (0..4)
        .map(|i| rxq.add_chain(&g.mem, &[(0x10000 + i * 0x1000, 500, true)]))
        .collect();
    let f = frame(1200, 3);
    peer.send(&f).unwrap();

    w.handle_rx();

    // 1212 bytes: 500 + 500 + 212; the fourth chain is untouched.
    assert_eq!(rxq.used_idx(&g.mem), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|i| rxq.used_elem(&g.mem, i)).collect();
    assert_eq!(
        lens,
        vec![
            (u32::from(heads[0]), 500),
            (u32::from(heads[1]), 500),
            (u32::from(heads[2]), 212)
        ]
    );
    let mut got = g.read(0x10000, 500);
    got.extend(g.read(0x11000, 500));
    got.extend(g.read(0x12000, 212));
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
    assert_eq!(stats.snapshot().rx_frames, 1);
    assert_eq!(g.irqs(), 1);
}

#[test]
fn rx_without_buffers_holds_one_frame_and_stops_polling() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend.clone());
    let mut rxq = g.rxq;
    let f1 = frame(60, 1);
    let f2 = frame(70, 2);
    peer.send(&f1).unwrap();
    peer.send(&f2).unwrap();

    w.handle_rx();

    // One frame read and held, the other still queued in the backend; the backend fd is
    // out of the epoll set until the guest adds buffers; the guest was not interrupted.
    assert_eq!(w.rx_pending, Some(72));
    assert!(backend.has_queued_frame());
    assert!(!w.backend_polled);
    assert_eq!(rxq.used_idx(&g.mem), 0);
    assert_eq!(g.irqs(), 0);

    // Nothing changes when woken again without buffers.
    w.handle_rx();
    assert_eq!(w.rx_pending, Some(72));
    assert!(backend.has_queued_frame());

    // The guest adds buffers (and notifies): both frames arrive, in order.
    rxq.add_chain(&g.mem, &[(0x10000, 2048, true)]);
    rxq.add_chain(&g.mem, &[(0x20000, 2048, true)]);
    w.handle_rx();
    assert_eq!(rxq.used_idx(&g.mem), 2);
    assert_eq!(g.read(0x10000 + 12, 60), f1[NET_HDR_LEN..]);
    assert_eq!(g.read(0x20000 + 12, 70), f2[NET_HDR_LEN..]);
    assert_eq!(w.rx_pending, None);
    assert!(w.backend_polled);
    assert!(!backend.has_queued_frame());
    assert_eq!(stats.snapshot().rx_frames, 2);
}

#[test]
fn rx_mrg_waits_for_enough_chains() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    // With TSO negotiated, so that a 2500-byte frame is allowed.
    let acked = BASE_FEATURES
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4);
    let (mut w, _) = g.worker(acked, backend);
    let mut rxq = g.rxq;
    rxq.add_chain(&g.mem, &[(0x10000, 1000, true)]);
    let f = frame(2500, 5);
    peer.send(&f).unwrap();
    w.handle_rx();
    // One chain is not enough: nothing is used, the frame and the chain are held.
    assert_eq!(rxq.used_idx(&g.mem), 0);
    assert!(!w.backend_polled);

    rxq.add_chain(&g.mem, &[(0x11000, 1000, true)]);
    rxq.add_chain(&g.mem, &[(0x12000, 1000, true)]);
    w.handle_rx();
    assert_eq!(rxq.used_idx(&g.mem), 3);
    let mut got = g.read(0x10000, 1000);
    got.extend(g.read(0x11000, 1000));
    got.extend(g.read(0x12000, 512));
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(got[NET_HDR_LEN..], f[NET_HDR_LEN..]);
}

#[test]
fn rx_oversized_frames_are_dropped_and_counted() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    // No GUEST_TSO*: at most 1514 bytes of frame.
    let (mut w, stats) = g.worker(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF), backend);
    let mut rxq = g.rxq;
    for i in 0..4 {
        rxq.add_chain(&g.mem, &[(0x10000 + i * 0x1000, 4096, true)]);
    }
    peer.send(&frame(1515, 0)).unwrap();
    peer.send(&frame(1514, 1)).unwrap();
    w.handle_rx();
    let s = stats.snapshot();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
    assert_eq!(rxq.used_elem(&g.mem, 0).1, 1526);

    // With offloads negotiated, 64 KiB frames are fine but bigger ones are not.
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let acked = BASE_FEATURES
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4);
    let (mut w, stats) = g.worker(acked, backend);
    let mut rxq = g.rxq;
    for i in 0..20 {
        rxq.add_chain(&g.mem, &[(0x10000 + i * 0x1000, 4096, true)]);
    }
    peer.send(&frame(MAX_RX_LEN_OFFLOAD - NET_HDR_LEN + 1, 0))
        .unwrap();
    peer.send(&frame(MAX_RX_LEN_OFFLOAD - NET_HDR_LEN, 1))
        .unwrap();
    w.handle_rx();
    let s = stats.snapshot();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
    // 65562 bytes in 4096-byte chains: 17 buffers.
    assert_eq!(rxq.used_idx(&g.mem), 17);
    assert_eq!(num_buffers(&g.read(0x10000, 12)), 17);
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut rxq = g.rxq;
    let head = rxq.add_chain(&g.mem, &[(0x10000, 100, true)]);
    peer.send(&frame(200, 0)).unwrap();
    peer.send(&frame(50, 1)).unwrap();
    w.handle_rx();
    assert_eq!(stats.snapshot().rx_dropped, 1);
    assert_eq!(rxq.used_idx(&g.mem), 1);
    assert_eq!(rxq.used_elem(&g.mem, 0), (u32::from(head), 62));
}

#[test]
fn rx_malformed_chains_are_returned_empty() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut rxq = g.rxq;
    let readable = rxq.add_chain(&g.mem, &[(0x10000, 2048, false)]);
    let outside = rxq.add_chain(&g.mem, &[(MEM_SIZE as u64 - 100, 2048, true)]);
    let empty = rxq.add_chain(&g.mem, &[(0x11000, 0, true)]);
    let good = rxq.add_chain(&g.mem, &[(0x12000, 2048, true)]);
    let f = frame(80, 4);
    peer.send(&f).unwrap();
    w.handle_rx();
    assert_eq!(rxq.used_idx(&g.mem), 4);
    assert_eq!(rxq.used_elem(&g.mem, 0), (u32::from(readable), 0));
    assert_eq!(rxq.used_elem(&g.mem, 1), (u32::from(outside), 0));
    assert_eq!(rxq.used_elem(&g.mem, 2), (u32::from(empty), 0));
    assert_eq!(rxq.used_elem(&g.mem, 3), (u32::from(good), 92));
    assert_eq!(g.read(0x12000 + 12, 80), f[NET_HDR_LEN..]);
    let s = stats.snapshot();
    assert_eq!((s.malformed_chains, s.rx_frames), (3, 1));
}

#[test]
fn rx_clears_checksum_flags_without_guest_csum() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, _) = g.worker(BASE_FEATURES, backend);
    let mut rxq = g.rxq;
    rxq.add_chain(&g.mem, &[(0x10000, 2048, true)]);
    let mut f = frame(60, 0);
    f[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    peer.send(&f).unwrap();
    w.handle_rx();
    assert_eq!(g.read(0x10000, 1)[0], 0);

    // With GUEST_CSUM the flags pass through.
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, _) = g.worker(BASE_FEATURES | bit(VIRTIO_NET_F_GUEST_CSUM), backend);
    let mut rxq = g.rxq;
    rxq.add_chain(&g.mem, &[(0x10000, 2048, true)]);
    peer.send(&f).unwrap();
    w.handle_rx();
    assert_eq!(g.read(0x10000, 1)[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
}

#[test]
fn tx_gathers_a_chain_into_one_frame() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut txq = g.txq;
    let f = frame(100, 7);
    g.mem.write_slice(&f[..12], GuestAddress(0x30000)).unwrap();
    g.mem
        .write_slice(&f[12..72], GuestAddress(0x31000))
        .unwrap();
    g.mem.write_slice(&f[72..], GuestAddress(0x32000)).unwrap();
    let head = txq.add_chain(
        &g.mem,
        &[
            (0x30000, 12, false),
            (0x31000, 60, false),
            (0x32000, 40, false),
        ],
    );

    w.handle_tx();

    let mut buf = vec![0u8; 70000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], f[..]);
    assert_eq!(txq.used_idx(&g.mem), 1);
    assert_eq!(txq.used_elem(&g.mem, 0), (u32::from(head), 0));
    let s = stats.snapshot();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 100, 0));
    assert_eq!(g.irqs(), 1);
}

#[test]
fn tx_malformed_chains_are_dropped_and_returned() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    peer.set_nonblocking(true).unwrap();
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut txq = g.txq;
    let good = frame(64, 1);
    g.mem.write_slice(&good, GuestAddress(0x30000)).unwrap();
    let heads = [
        // A device-writable buffer in a TX chain.
        txq.add_chain(&g.mem, &[(0x30000, 12, false), (0x31000, 64, true)]),
        // A buffer past the end of guest memory.
        txq.add_chain(&g.mem, &[(MEM_SIZE as u64 - 10, 76, false)]),
        // Longer than 64 KiB + header.
        txq.add_chain(&g.mem, &[(0x40000, 40000, false), (0x50000, 40000, false)]),
        // Shorter than the header.
        txq.add_chain(&g.mem, &[(0x30000, 8, false)]),
        // A buffer whose address + length wraps around.
        txq.add_chain(&g.mem, &[(u64::MAX - 4, 76, false)]),
        // Fine.
        txq.add_chain(&g.mem, &[(0x30000, 76, false)]),
    ];

    w.handle_tx();

    assert_eq!(txq.used_idx(&g.mem), heads.len() as u16);
    for (i, &h) in heads.iter().enumerate() {
        assert_eq!(txq.used_elem(&g.mem, i as u16), (u32::from(h), 0));
    }
    let mut buf = vec![0u8; 70000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], good[..]);
    assert!(peer.recv(&mut buf).is_err(), "only the good frame is sent");
    let s = stats.snapshot();
    assert_eq!((s.tx_frames, s.tx_dropped, s.malformed_chains), (1, 5, 5));
}

#[test]
fn tx_largest_frame_is_sent() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut txq = g.txq;
    let f = frame(65536, 3);
    g.mem.write_slice(&f, GuestAddress(0x40000)).unwrap();
    txq.add_chain(&g.mem, &[(0x40000, f.len() as u32, false)]);
    w.handle_tx();
    let mut buf = vec![0u8; 70000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(n, MAX_TX_LEN);
    assert_eq!(buf[..n], f[..]);
    assert_eq!(stats.snapshot().tx_frames, 1);
}

#[test]
fn tx_backend_errors_are_counted() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    drop(peer); // Sends now fail with ECONNREFUSED.
    let (mut w, stats) = g.worker(BASE_FEATURES, backend);
    let mut txq = g.txq;
    txq.add_chain(&g.mem, &[(0x30000, 76, false)]);
    w.handle_tx();
    assert_eq!(txq.used_idx(&g.mem), 1);
    let s = stats.snapshot();
    assert_eq!((s.tx_frames, s.tx_dropped, s.malformed_chains), (0, 1, 0));
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn worker_thread_end_to_end() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    let mut net = Net::with_backend(backend, [2, 0, 0, 0, 0, 7]).unwrap();
    let thread_name = format!("virtio-net{}", net.id);
    let stats = net.stats();
    let acked = BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF);
    let (ctx, rx_evt, tx_evt) = g.activate_ctx(acked);
    // The thread exists from the device's creation (the VMM builds devices; a vCPU thread
    // that writes DRIVER_OK never spawns one). The thread names itself as it starts.
    assert!(wait_for(|| thread_names().contains(&thread_name)));
    net.activate(ctx).unwrap();

    // A frame arrives before the guest has buffers: it waits.
    let f = frame(500, 1);
    peer.send(&f).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.rxq.used_idx(&g.mem), 0);

    // The guest posts a buffer and notifies: the frame arrives and the guest is interrupted.
    let mut rxq = g.rxq;
    rxq.add_chain(&g.mem, &[(0x10000, 4096, true)]);
    rx_evt.write(1).unwrap();
    assert!(wait_for(|| rxq.used_idx(&g.mem) == 1));
    assert_eq!(g.read(0x10000 + 12, 500), f[NET_HDR_LEN..]);
    assert!(wait_for(|| g.irqs() >= 1));

    // Now a frame arriving with a buffer available is delivered without a notification.
    rxq.add_chain(&g.mem, &[(0x11000, 4096, true)]);
    rx_evt.write(1).unwrap();
    let f2 = frame(40, 2);
    peer.send(&f2).unwrap();
    assert!(wait_for(|| rxq.used_idx(&g.mem) == 2));
    assert_eq!(g.read(0x11000 + 12, 40), f2[NET_HDR_LEN..]);

    // TX.
    let mut txq = g.txq;
    let t = frame(64, 3);
    g.mem.write_slice(&t, GuestAddress(0x30000)).unwrap();
    txq.add_chain(&g.mem, &[(0x30000, t.len() as u32, false)]);
    tx_evt.write(1).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], t[..]);
    assert!(wait_for(|| txq.used_idx(&g.mem) == 1));
    let s = stats.snapshot();
    assert_eq!((s.rx_frames, s.tx_frames), (2, 1));

    // Reset only tells the worker to drop its queues: the thread stays (a vCPU thread that
    // resets a device never waits for, or joins, a worker).
    net.reset();
    assert!(thread_names().contains(&thread_name));
    // Frames sent now are not delivered: the worker has no queues.
    peer.send(&frame(30, 4)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(stats.snapshot().rx_frames, 2);

    // And the device can be activated again (fresh rings, as after a driver reset).
    let g2 = Guest::new();
    let (ctx, rx_evt2, _tx_evt2) = g2.activate_ctx(acked);
    net.activate(ctx).unwrap();
    let mut rxq2 = g2.rxq;
    rxq2.add_chain(&g2.mem, &[(0x10000, 4096, true)]);
    rx_evt2.write(1).unwrap();
    assert!(wait_for(|| rxq2.used_idx(&g2.mem) == 1));
    // Dropping the device stops and joins its thread.
    drop(net);
    assert!(!thread_names().contains(&thread_name));
}

#[test]
fn activate_rejects_missing_queues() {
    let g = Guest::new();
    let (backend, _peer) = backend_pair(0);
    let mut net = Net::with_backend(backend, [2, 0, 0, 0, 0, 1]).unwrap();
    let (mut ctx, _, _) = g.activate_ctx(BASE_FEATURES);
    ctx.queues.pop();
    assert!(matches!(
        net.activate(ctx),
        Err(ActivateError::BadConfig(_))
    ));
    let (mut ctx, _, _) = g.activate_ctx(BASE_FEATURES);
    ctx.queues[1].set_ready(false);
    assert!(matches!(
        net.activate(ctx),
        Err(ActivateError::QueueNotReady(1))
    ));
}

/// Test-only host configuration for the real-TAP test: bring `name` up with `ip`/`prefix`.
fn configure_host_side(name: &str, ip: [u8; 4]) {
    // SAFETY: socket() with constant arguments; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(sock >= 0);
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: sockaddr_in fits in the ifreq union's sockaddr (both 16 bytes); zeroed is valid.
    unsafe {
        let sin = &mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
        (*sin).sin_addr.s_addr = u32::from_ne_bytes(ip);
    }
    // SAFETY: SIOCSIFADDR reads one ifreq, which lives across the call.
    assert_eq!(unsafe { libc::ioctl(sock, libc::SIOCSIFADDR, &ifr) }, 0);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write one ifreq.
    unsafe {
        assert_eq!(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr), 0);
        libc::close(sock);
    }
}

/// An ARP request "who has `target`? tell `sender_ip` (`sender_mac`)", with a zero header.
fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend([0xff; 6]);
    f.extend(sender_mac);
    f.extend([0x08, 0x06]); // ARP
    f.extend([0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend(sender_mac);
    f.extend(sender_ip);
    f.extend([0; 6]);
    f.extend(target);
    f
}

#[test]
fn real_tap_arp_round_trip() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipping real_tap_arp_round_trip: /dev/net/tun does not exist");
        return;
    }
    // Everything runs in a fresh network namespace, entered by a thread of its own: the
    // TAP and its traffic never touch the host's interfaces, and the namespace goes away
    // with the thread and the TAP's fds.
    std::thread::spawn(|| {
        // SAFETY: unshare only changes this thread's network namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );

        let tap = Tap::create_unnamed().unwrap();
        assert!(tap.if_name().starts_with("tap"), "{}", tap.if_name());
        let name = tap.if_name().to_string();
        configure_host_side(&name, [10, 11, 12, 1]);

        let mac = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
        let mut net = Net::new(tap, mac).unwrap();
        assert_eq!(net.backend_name(), name);
        // Every Linux since 2.6 accepts checksum offload on a TAP.
        assert_ne!(net.features() & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
        let g = Guest::new();
        let acked = net.features();
        let (ctx, rx_evt, tx_evt) = g.activate_ctx(acked);
        net.activate(ctx).unwrap();

        let mut rxq = g.rxq;
        for i in 0..16u64 {
            rxq.add_chain(&g.mem, &[(0x10000 + i * 0x1000, 4096, true)]);
        }
        rx_evt.write(1).unwrap();
        let mut txq = g.txq;
        let req = arp_request(mac, [10, 11, 12, 2], [10, 11, 12, 1]);
        g.mem.write_slice(&req, GuestAddress(0x30000)).unwrap();
        txq.add_chain(&g.mem, &[(0x30000, req.len() as u32, false)]);
        tx_evt.write(1).unwrap();

        // The host kernel answers; other frames (IPv6 neighbour discovery) may come first.
        let mut seen = 0u16;
        let found = wait_for(|| {
            while seen < rxq.used_idx(&g.mem) {
                let (head, len) = rxq.used_elem(&g.mem, seen);
                seen += 1;
                let f = g.read(0x10000 + u64::from(head) * 0x1000, len as usize);
                let eth = &f[NET_HDR_LEN..];
                if eth.len() >= 42
                    && eth[12..14] == [0x08, 0x06]
                    && eth[20..22] == [0, 2]
                    && eth[0..6] == mac
                    && eth[28..32] == [10, 11, 12, 1]
                {
                    return true;
                }
            }
            false
        });
        assert!(found, "no ARP reply from the host side of {name}");
        let s = net.stats().snapshot();
        assert_eq!(s.tx_frames, 1);
        assert!(s.rx_frames >= 1);
        net.reset();
    })
    .join()
    .unwrap();
}

#[test]
fn broken_rings_neither_hang_nor_panic() {
    let g = Guest::new();
    let (backend, peer) = backend_pair(0);
    peer.set_nonblocking(true).unwrap();
    let (mut w, _) = g.worker(BASE_FEATURES, backend);
    // A descriptor that chains to itself: the walk stops after queue-size steps.
    let at = TX_RING;
    g.mem.write_obj(0x30000u64, GuestAddress(at)).unwrap();
    g.mem.write_obj(100u32, GuestAddress(at + 8)).unwrap();
    g.mem
        .write_obj(VRING_DESC_F_NEXT, GuestAddress(at + 12))
        .unwrap();
    g.mem.write_obj(0u16, GuestAddress(at + 14)).unwrap();
    let txq = g.txq;
    g.mem.write_obj(0u16, GuestAddress(txq.avail + 4)).unwrap();
    g.mem.write_obj(1u16, GuestAddress(txq.avail + 2)).unwrap();
    w.handle_tx();
    assert_eq!(txq.used_idx(&g.mem), 1);
    assert_eq!(txq.used_elem(&g.mem, 0), (0, 0));

    assert!(!w.interrupt.needs_reset());

    // An available index far ahead of what the queue can hold: nothing is processed, and
    // the device asks for a reset (DEVICE_NEEDS_RESET, with a config-change interrupt).
    let irqs = g.irqs();
    g.mem
        .write_obj(1u16.wrapping_add(QSIZE + 1), GuestAddress(txq.avail + 2))
        .unwrap();
    w.handle_tx();
    assert_eq!(txq.used_idx(&g.mem), 1);
    assert!(w.interrupt.needs_reset());
    assert_eq!(
        w.interrupt.status() & VIRTIO_MMIO_INT_CONFIG,
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(g.irqs(), irqs + 1);
    let rxq = g.rxq;
    g.mem
        .write_obj(QSIZE + 5, GuestAddress(rxq.avail + 2))
        .unwrap();
    peer.send(&frame(60, 0)).unwrap();
    w.handle_rx();
    assert_eq!(rxq.used_idx(&g.mem), 0);
    assert!(!w.backend_polled);
}

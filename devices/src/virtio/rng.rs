//! virtio-rng, the entropy device (virtio 1.2, section 5.4): the guest posts empty buffers
//! on its one queue, the device fills them with random bytes from a host source
//! (`/dev/urandom` by default) and returns them. Linux's `virtio_rng` driver feeds them to
//! `/dev/hwrng` and to the kernel's entropy pool, which is why a guest with this device
//! does not wait for entropy at boot.
//!
//! This is also the worked example of a minivmm device (docs/architecture.md, "How to add
//! a device"): the smallest [`VirtioDevice`] (no features beyond `VERSION_1`, no config
//! space) and the smallest [`QueueHandler`] on the shared [`Worker`] thread.
//!
//! The guest is untrusted: a request is capped at [`MAX_REQUEST_BYTES`] whatever buffers it
//! offers, a buffer the device may not write (device-readable, or outside guest memory)
//! makes the chain come back unused (length 0, counted, logged rate-limited), and the
//! worker returns to its other events after [`BATCH`] requests.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::worker::{
    ActiveQueues, Control, QueueHandler, QueuePosition, SingleQueue, Worker, WorkerContext,
};
use super::{ActivateContext, ActivateError, GuestMemoryMmap, VirtioDevice, VIRTIO_F_VERSION_1};

/// The virtio device ID of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets, however large its buffers (Linux asks for at most a
/// page at a time; a guest asking for more only gets this much).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Requests handled per wake-up before the worker looks at its other events again.
pub const BATCH: usize = 64;

/// Names the worker threads `virtio-rng0`, ... in creation order.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Why an entropy device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The source could not be opened.
    #[error("cannot open entropy source {}: {source}", path.display())]
    Open {
        /// The source.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The source is a directory.
    #[error("entropy source {} is a directory", path.display())]
    IsADirectory {
        /// The source.
        path: PathBuf,
    },
    /// The worker thread could not be started.
    #[error("cannot start the entropy device's thread: {0}")]
    Worker(#[source] io::Error),
}

/// What the device has done.
#[derive(Debug, Default)]
pub struct RngCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    bad_requests: AtomicU64,
}

/// A virtio entropy device.
pub struct Rng {
    source: PathBuf,
    counters: Arc<RngCounters>,
    worker: Worker,
}

impl Rng {
    /// An entropy device reading from `source` (opened now, non-blocking: a source with
    /// nothing to give, such as an empty FIFO, answers with short requests instead of
    /// stalling the device).
    pub fn new(source: &Path) -> Result<Rng, RngError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(source)
            .map_err(|e| RngError::Open {
                path: source.to_path_buf(),
                source: e,
            })?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(RngError::IsADirectory {
                path: source.to_path_buf(),
            });
        }
        let counters = Arc::new(RngCounters::default());
        let handler = RngHandler {
            source: file,
            counters: counters.clone(),
            buf: vec![0; MAX_REQUEST_BYTES],
            active: None,
        };
        let name = format!("virtio-rng{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let worker = Worker::spawn(name, handler).map_err(RngError::Worker)?;
        Ok(Rng {
            source: source.to_path_buf(),
            counters,
            worker,
        })
    }

    /// The host source.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // No configuration space: every byte reads 0.
        super::worker::read_config_space(&[], offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::warn_ratelimited!(
            "virtio-rng: ignoring a {}-byte config write at offset {offset}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let (queues, events) = ctx.take_queues("virtio-rng", 1)?;
        self.worker.activate(queues, events)
    }

    fn reset(&mut self) {
        self.worker.reset();
    }

    fn worker(&self) -> Option<Arc<Control>> {
        Some(self.worker.control())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", get(&self.counters.requests)),
            ("bytes", get(&self.counters.bytes)),
            ("bad_requests", get(&self.counters.bad_requests)),
        ]
    }
}

/// What the entropy device's worker thread does.
struct RngHandler {
    source: File,
    counters: Arc<RngCounters>,
    buf: Vec<u8>,
    active: Option<SingleQueue>,
}

impl QueueHandler for RngHandler {
    fn activate(&mut self, q: ActiveQueues, _ctx: &mut WorkerContext) {
        self.active = q.into_single();
    }

    fn queue_event(&mut self, _index: usize, ctx: &mut WorkerContext) {
        let Some((mem, queue, interrupt)) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let mut handled = 0;
        while handled < BATCH && !ctx.control().should_yield() {
            let chain = match queue.iter(&*mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    crate::warn_ratelimited!("virtio-rng: bad available ring: {e}");
                    if interrupt.signal_needs_reset() {
                        log::warn!("virtio-rng: queue is broken: device needs a reset");
                    }
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = fill(mem, chain, &mut self.source, &mut self.buf, &self.counters);
            if let Err(e) = queue.add_used(&*mem, head, len) {
                crate::error_ratelimited!("virtio-rng: add_used({head}) failed: {e}");
            }
            used = true;
            handled += 1;
        }
        if used {
            interrupt.signal_used_queue();
        }
        if handled == BATCH || ctx.control().should_yield() {
            ctx.renotify(0);
        }
    }

    fn queue_positions(&self) -> Vec<QueuePosition> {
        self.active
            .iter()
            .map(|(_, q, _)| QueuePosition::of(q))
            .collect()
    }

    fn reset(&mut self, _ctx: &mut WorkerContext) {
        self.active = None;
    }
}

/// Fill one request's buffers (capped at [`MAX_REQUEST_BYTES`]) from `source`; returns the
/// used length. A chain the device may not write comes back with 0.
fn fill(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    source: &mut File,
    buf: &mut [u8],
    counters: &RngCounters,
) -> u32 {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let bad = |why: &str| {
        counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        crate::warn_ratelimited!("virtio-rng: bad request: {why}");
        0
    };
    // Validate the whole chain first: all device-writable, all in guest memory.
    let mut descs = Vec::new();
    let mut want = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return bad("device-readable buffer");
        }
        let len = desc.len() as usize;
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return bad("buffer outside guest memory");
        }
        if want < MAX_REQUEST_BYTES {
            let take = len.min(MAX_REQUEST_BYTES - want);
            descs.push((desc.addr(), take));
            want += take;
        }
    }
    let got = match read_some(source, &mut buf[..want]) {
        Ok(n) => n,
        Err(e) => {
            crate::error_ratelimited!("virtio-rng: reading the source failed: {e}");
            0
        }
    };
    let mut done = 0usize;
    for (addr, len) in descs {
        if done == got {
            break;
        }
        let n = len.min(got - done);
        if mem.write_slice(&buf[done..done + n], addr).is_err() {
            // Checked above; guest memory does not shrink.
            return bad("write to guest memory failed");
        }
        done += n;
    }
    counters.bytes.fetch_add(done as u64, Ordering::Relaxed);
    done as u32
}

/// Read up to `buf.len()` bytes: as many as the source gives now (a short read, EOF or
/// `EAGAIN` ends it early).
fn read_some(source: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if n > 0 => {
                log::debug!("virtio-rng: source read ended early: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{CountingInterrupt, DriverQueue};
    use crate::virtio::VirtioInterrupt;
    use vm_memory::GuestAddress;

    const MEM: usize = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
    }

    #[test]
    fn fills_buffers_caps_requests_and_rejects_bad_chains() {
        let mem = mem();
        let mut q = DriverQueue::new(0x1000, QUEUE_SIZE);
        let mut source = File::open("/dev/urandom").unwrap();
        let mut buf = vec![0; MAX_REQUEST_BYTES];
        let counters = RngCounters::default();

        // Two buffers: both filled.
        q.add_chain(&mem, &[(0x10000, 100, true), (0x20000, 28, true)]);
        // A huge buffer: capped.
        q.add_chain(&mem, &[(0x30000, 0x80000, true)]);
        // A device-readable buffer: unused.
        q.add_chain(&mem, &[(0x40000, 16, false)]);
        // Outside guest memory: unused.
        q.add_chain(&mem, &[(MEM as u64 - 8, 64, true)]);
        let mut queue = q.queue();
        let mut lens = Vec::new();
        while let Some(chain) = queue.iter(&mem).unwrap().next() {
            lens.push(fill(&mem, chain, &mut source, &mut buf, &counters));
        }
        assert_eq!(lens, vec![128, MAX_REQUEST_BYTES as u32, 0, 0]);
        let mut a = [0u8; 100];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        assert!(a.iter().any(|&b| b != 0), "random bytes were written");
        assert_eq!(counters.bad_requests.load(Ordering::Relaxed), 2);
        assert_eq!(
            counters.bytes.load(Ordering::Relaxed),
            128 + MAX_REQUEST_BYTES as u64
        );
    }

    #[test]
    fn an_empty_source_answers_short_requests() {
        let mem = mem();
        let mut q = DriverQueue::new(0x1000, QUEUE_SIZE);
        q.add_chain(&mem, &[(0x10000, 64, true)]);
        let mut queue = q.queue();
        let chain = queue.iter(&mem).unwrap().next().unwrap();
        let mut empty = File::open("/dev/null").unwrap();
        let counters = RngCounters::default();
        let mut buf = vec![0; MAX_REQUEST_BYTES];
        assert_eq!(fill(&mem, chain, &mut empty, &mut buf, &counters), 0);
    }

    #[test]
    fn worker_serves_the_queue_and_the_device_can_be_reset() {
        let mem = mem();
        let mut rng = Rng::new(Path::new("/dev/urandom")).unwrap();
        let line = Arc::new(CountingInterrupt::default());
        let mut q = DriverQueue::new(0x1000, QUEUE_SIZE);
        q.add_chain(&mem, &[(0x10000, 256, true)]);
        let evt = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        rng.activate(ActivateContext {
            mem: mem.clone(),
            acked_features: 1 << VIRTIO_F_VERSION_1,
            queues: vec![q.queue()],
            queue_events: vec![evt.try_clone().unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(line.clone())),
        })
        .unwrap();
        // The request queued before activation is served without a notification.
        assert!(crate::test_util::wait_for(|| q.used_idx(&mem) == 1));
        assert_eq!(q.used_elem(&mem, 0), (0, 256));
        assert!(crate::test_util::wait_for(|| line.count() >= 1));
        // A notified one too.
        q.add_chain(&mem, &[(0x20000, 16, true)]);
        evt.write(1).unwrap();
        assert!(crate::test_util::wait_for(|| q.used_idx(&mem) == 2));
        rng.reset();
        assert_eq!(rng.counters()[1], ("bytes", 256 + 16));
    }

    #[test]
    fn missing_source_is_refused() {
        assert!(matches!(
            Rng::new(Path::new("/nonexistent/rng")),
            Err(RngError::Open { .. })
        ));
        assert!(matches!(
            Rng::new(Path::new("/")),
            Err(RngError::IsADirectory { .. })
        ));
    }
}

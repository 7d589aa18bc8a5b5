//! Draining the request queue: pop each descriptor chain, parse it, run it against the disk,
//! write the status byte and return the chain to the used ring.
//!
//! This is the code the worker thread runs on every queue notification; it is also callable
//! directly (tests, fuzzing) through [`Block::process_queue`](super::Block::process_queue).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::disk::DiskImage;
use super::request::{parse_request, Request, RequestKind};
use super::{BlockCounters, SECTOR_SHIFT, SECTOR_SIZE};
use crate::rate_limiter::RateLimiter;
use crate::virtio::GuestMemoryMmap;

/// Why the queue could not be drained.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Reading or writing the rings failed (the driver set them up wrongly).
    #[error("virtio-blk: queue access failed: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The available ring announces chains that cannot be read.
    #[error("virtio-blk: available ring announces requests that cannot be read")]
    NoProgress,
}

/// What a request handler needs, shared by the device and its worker thread.
pub(crate) struct Engine {
    pub(crate) disk: DiskImage,
    /// Capacity in sectors.
    pub(crate) capacity: u64,
    /// The GET_ID answer: the serial, zero-padded to 20 bytes.
    pub(crate) id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// What the device has done.
    pub(crate) counters: BlockCounters,
    /// Bytes and requests per second, if limited (only the worker thread takes it).
    pub(crate) limiter: Option<Mutex<RateLimiter>>,
}

impl Engine {
    /// Handle every available chain of `queue`, then re-enable notifications, looping while
    /// the driver added more meanwhile (the virtio-queue crate's recommended sequence, which
    /// cannot lose a wakeup). Returns whether the driver wants an interrupt. `stop`, when set,
    /// makes it return early, at a request boundary (a pause, reset or stop waits); `abort`,
    /// when set, makes a long request give up in the middle (reset, stop).
    pub(crate) fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        stop: Option<&AtomicBool>,
        abort: Option<&AtomicBool>,
    ) -> Result<bool, QueueError> {
        self.process_queue_limited(mem, queue, stop, abort)
            .map(|(notify, _)| notify)
    }

    /// [`Engine::process_queue`], under the device's rate limit: when the limit is reached
    /// it stops before the next request and also returns how long to wait before calling
    /// again (the queue keeps its requests; notifications stay off until then).
    pub(crate) fn process_queue_limited(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        stop: Option<&AtomicBool>,
        abort: Option<&AtomicBool>,
    ) -> Result<(bool, Option<Duration>), QueueError> {
        let mut used_any = false;
        let mut pass = 0u32;
        loop {
            queue.disable_notification(mem)?;
            let mut handled = 0u32;
            loop {
                if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return Ok((used_any && queue.needs_notification(mem)?, None));
                }
                if let Some(wait) = self.limit_wait() {
                    return Ok((used_any && queue.needs_notification(mem)?, Some(wait)));
                }
                let Some(chain) = queue.iter(mem)?.next() else {
                    break;
                };
                let head = chain.head_index();
                let len = self.handle_chain(mem, chain, abort);
                queue.add_used(mem, head, len)?;
                used_any = true;
                handled += 1;
            }
            if !queue.enable_notification(mem)? {
                break;
            }
            // More chains are announced. On the first pass that can be a driver racing us;
            // on a later pass that made no progress the ring entries cannot be read, and
            // looping again would spin forever.
            if pass > 0 && handled == 0 {
                return Err(QueueError::NoProgress);
            }
            pass += 1;
        }
        Ok((used_any && queue.needs_notification(mem)?, None))
    }

    fn limit_wait(&self) -> Option<Duration> {
        let l = self.limiter.as_ref()?;
        l.lock().unwrap_or_else(|e| e.into_inner()).wait()
    }

    fn limit_charge(&self, bytes: u64) {
        if let Some(l) = &self.limiter {
            l.lock().unwrap_or_else(|e| e.into_inner()).charge(1, bytes);
        }
    }

    /// Handle one chain; returns the used length (bytes written into device-writable buffers).
    fn handle_chain(
        &self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        abort: Option<&AtomicBool>,
    ) -> u32 {
        let count = |c: &std::sync::atomic::AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        count(&self.counters.requests, 1);
        match parse_request(mem, chain, self.capacity) {
            Ok(req) => {
                self.limit_charge(req.data_len);
                let (status, written) = self.execute(mem, &req, abort);
                if status != VIRTIO_BLK_S_OK as u8 {
                    count(&self.counters.errors, 1);
                } else {
                    match req.kind {
                        RequestKind::In { .. } => {
                            count(&self.counters.read_bytes, u64::from(written))
                        }
                        RequestKind::Out { .. } => count(
                            &self.counters.write_bytes,
                            req.data.iter().map(|d| u64::from(d.len)).sum(),
                        ),
                        _ => {}
                    }
                }
                complete(mem, req.status, status, written)
            }
            Err(failure) => {
                count(&self.counters.errors, 1);
                crate::warn_ratelimited!(
                    "virtio-blk {}: bad request: {}",
                    self.disk.path().display(),
                    failure.error
                );
                match failure.status {
                    Some(addr) => complete(mem, addr, failure.error.status(), 0),
                    None => 0,
                }
            }
        }
    }

    /// Run a validated request. Returns the status byte and the number of data bytes written
    /// into guest buffers.
    fn execute(
        &self,
        mem: &GuestMemoryMmap,
        req: &Request,
        abort: Option<&AtomicBool>,
    ) -> (u8, u32) {
        let ok = VIRTIO_BLK_S_OK as u8;
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        let path = self.disk.path();
        let read_only_refusal = || {
            crate::warn_ratelimited!(
                "virtio-blk {}: write-type request on a read-only disk",
                path.display()
            );
            (ioerr, 0)
        };
        let io_failure = |what: &str, e: io::Error| {
            crate::warn_ratelimited!("virtio-blk {}: {what} failed: {e}", path.display());
        };

        match req.kind {
            RequestKind::In { sector } => {
                let mut offset = sector << SECTOR_SHIFT;
                let mut written: u32 = 0;
                for buf in &req.data {
                    if let Err(e) = self
                        .disk
                        .read_to_guest(mem, buf.addr, buf.len as usize, offset)
                    {
                        io_failure("read", e);
                        return (ioerr, written);
                    }
                    offset += u64::from(buf.len);
                    // The chain walker caps a chain at 2^32 - 1 bytes in total.
                    written = written.saturating_add(buf.len);
                }
                (ok, written)
            }
            RequestKind::Out { sector } => {
                if self.disk.read_only() {
                    return read_only_refusal();
                }
                let mut offset = sector << SECTOR_SHIFT;
                for buf in &req.data {
                    if let Err(e) =
                        self.disk
                            .write_from_guest(mem, buf.addr, buf.len as usize, offset)
                    {
                        io_failure("write", e);
                        return (ioerr, 0);
                    }
                    offset += u64::from(buf.len);
                }
                (ok, 0)
            }
            RequestKind::Flush => match self.disk.flush() {
                Ok(()) => (ok, 0),
                Err(e) => {
                    io_failure("flush", e);
                    (ioerr, 0)
                }
            },
            RequestKind::GetId => {
                let mut id: &[u8] = &self.id;
                let mut written: u32 = 0;
                for buf in &req.data {
                    if id.is_empty() {
                        break;
                    }
                    let n = id.len().min(buf.len as usize);
                    let (now, later) = id.split_at(n);
                    if mem.write_slice(now, buf.addr).is_err() {
                        return (ioerr, written);
                    }
                    written += n as u32;
                    id = later;
                }
                (ok, written)
            }
            RequestKind::Discard {
                sector,
                num_sectors,
            } => {
                if self.disk.read_only() {
                    return read_only_refusal();
                }
                let (offset, len) = (sector << SECTOR_SHIFT, u64::from(num_sectors) * SECTOR_SIZE);
                match self.disk.punch_hole(offset, len) {
                    Ok(()) => (ok, 0),
                    // Discard is a hint: a backend that cannot deallocate just keeps the data.
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => (ok, 0),
                    Err(e) => {
                        io_failure("discard", e);
                        (ioerr, 0)
                    }
                }
            }
            RequestKind::WriteZeroes {
                sector,
                num_sectors,
                unmap,
            } => {
                if self.disk.read_only() {
                    return read_only_refusal();
                }
                let (offset, len) = (sector << SECTOR_SHIFT, u64::from(num_sectors) * SECTOR_SIZE);
                match self.disk.write_zeroes(offset, len, unmap, abort) {
                    Ok(()) => (ok, 0),
                    Err(e) => {
                        io_failure("write zeroes", e);
                        (ioerr, 0)
                    }
                }
            }
        }
    }
}

/// Write `status` at `addr`; returns the used length (`written` data bytes plus the status
/// byte, or 0 when even the status byte cannot be written).
fn complete(mem: &GuestMemoryMmap, addr: GuestAddress, status: u8, written: u32) -> u32 {
    match mem.write_obj(status, addr) {
        Ok(()) => written.saturating_add(1),
        Err(e) => {
            crate::warn_ratelimited!("virtio-blk: cannot write status byte at {addr:?}: {e}");
            0
        }
    }
}

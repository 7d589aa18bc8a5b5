//! The thread that serves a virtio-blk queue, so disk I/O never runs on a vCPU thread.
//!
//! It sleeps in `epoll_wait` on two eventfds: the queue's notify eventfd (KVM signals it when
//! the guest writes the notify register) and a stop eventfd (device reset or drop). On a
//! notification it drains the queue and, if the driver wants one, raises the interrupt.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handler::Engine;
use crate::virtio::{GuestMemoryMmap, VirtioInterrupt};

const QUEUE_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

/// A running worker; dropping it does not stop it, [`WorkerHandle::stop`] does.
pub(crate) struct WorkerHandle {
    stop_flag: Arc<AtomicBool>,
    stop_evt: EventFd,
    thread: JoinHandle<()>,
}

/// Everything the worker thread owns.
struct Worker {
    engine: Arc<Engine>,
    mem: GuestMemoryMmap,
    queue: Queue,
    queue_evt: EventFd,
    stop_evt: EventFd,
    stop_flag: Arc<AtomicBool>,
    interrupt: Arc<VirtioInterrupt>,
}

impl WorkerHandle {
    /// Start a worker thread called `name` serving `queue`.
    pub(crate) fn spawn(
        name: String,
        engine: Arc<Engine>,
        mem: GuestMemoryMmap,
        queue: Queue,
        queue_evt: EventFd,
        interrupt: Arc<VirtioInterrupt>,
    ) -> io::Result<Self> {
        let stop_evt = EventFd::new(EFD_NONBLOCK)?;
        let stop_flag = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            engine,
            mem,
            queue,
            queue_evt,
            stop_evt: stop_evt.try_clone()?,
            stop_flag: stop_flag.clone(),
            interrupt,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            stop_flag,
            stop_evt,
            thread,
        })
    }

    /// Ask the worker to stop and wait until it has. It finishes at most the request it is
    /// executing.
    pub(crate) fn stop(self) {
        self.stop_flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.stop_evt.write(1) {
            // The flag alone still stops it at its next wakeup; the join below then waits for
            // that, which is the best we can do.
            log::error!("virtio-blk: cannot signal the worker to stop: {e}");
        }
        if self.thread.join().is_err() {
            log::error!("virtio-blk: the worker thread panicked");
        }
    }
}

impl Worker {
    fn run(mut self) {
        let epoll = match self.setup_epoll() {
            Ok(epoll) => epoll,
            Err(e) => {
                log::error!("virtio-blk: worker cannot set up epoll: {e}");
                return;
            }
        };
        let mut events = [EpollEvent::default(); 2];
        // The driver may have queued requests before activation; look once before sleeping.
        self.drain();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk: worker epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in events.iter().take(n) {
                match ev.data() {
                    STOP_TOKEN => return,
                    QUEUE_TOKEN => {
                        // Clear the counter first, so a notification arriving while we drain
                        // wakes us again rather than being lost.
                        if let Err(e) = self.queue_evt.read() {
                            if e.kind() != io::ErrorKind::WouldBlock {
                                log::error!("virtio-blk: reading the queue eventfd failed: {e}");
                            }
                        }
                        self.drain();
                    }
                    _ => {}
                }
            }
            if self.stop_flag.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn setup_epoll(&self) -> io::Result<Epoll> {
        use std::os::fd::AsRawFd;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.queue_evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, QUEUE_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            self.stop_evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(epoll)
    }

    fn drain(&mut self) {
        match self
            .engine
            .process_queue(&self.mem, &mut self.queue, Some(&self.stop_flag))
        {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                crate::error_ratelimited!("{e}");
                // Some chains may have been used before the failure; let the driver look.
                self.interrupt.signal_used_queue();
            }
        }
    }
}

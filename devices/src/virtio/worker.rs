//! The one shape every virtio device's I/O takes: a worker thread per device.
//!
//! What this module owns, so that devices do not each write it again:
//!
//! - **the thread**, started when the VMM builds the device (never on a vCPU thread), idle
//!   until the driver sets `DRIVER_OK`, and stopped when the device is dropped;
//! - **the epoll set**: the control eventfd, the queue eventfds (KVM signals them when the
//!   guest writes `QueueNotify`) and whatever fds the device adds itself (a TAP);
//! - **the control channel**: activate (here are your queues), reset (drop them), pause
//!   (park at the next request boundary and say so), resume, stop. The vCPU thread that
//!   writes `Status` only *sends* activate or reset; it never waits for the worker. The VMM
//!   thread that pauses the VM waits for each worker's acknowledgement.
//!
//! A device supplies a [`QueueHandler`]: what to do with its queues when they arrive, when
//! one is notified, when one of its own fds is ready, and on reset. Long operations look at
//! [`Control::should_yield`] between requests (and [`Control::should_abort`] inside one that
//! can take long, such as writing a gigabyte of zeroes), so that pause, reset and stop are
//! never stuck behind them.
//!
//! ```text
//!  vCPU thread            VMM thread                 worker thread (one per device)
//!  Status = DRIVER_OK --> send(Activate) ----------> handler.activate(queues)
//!  QueueNotify (ioeventfd, no exit) ----------------> handler.queue_event(i)
//!                         pause(): send(Pause) ----> parks, acks ----> pause() returns
//!  Status = 0 ---------> send(Reset) --------------> handler.reset()
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, GuestMemoryMmap, VirtioInterrupt};

/// epoll token of the control eventfd.
const TOKEN_CONTROL: u64 = 0;
/// Queue `i` is `TOKEN_QUEUE_BASE + i`.
const TOKEN_QUEUE_BASE: u64 = 1 << 16;
/// A handler's own fd with token `t` is `TOKEN_HANDLER_BASE + t`.
const TOKEN_HANDLER_BASE: u64 = 1 << 32;

/// What a device's worker receives when the driver sets `DRIVER_OK`.
pub struct ActiveQueues {
    /// Guest memory, for the rings and the buffers they point to.
    pub mem: GuestMemoryMmap,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// The queues, in index order, checked by the transport.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// One queue with what it needs: the state of a single-queue device's handler.
pub type SingleQueue = (GuestMemoryMmap, Queue, Arc<VirtioInterrupt>);

impl ActiveQueues {
    /// The first queue, for single-queue devices (block, rng); `None` if there is none.
    /// Event-index suppression is already set on it by the transport.
    pub fn into_single(self) -> Option<SingleQueue> {
        let queue = self.queues.into_iter().next()?;
        Some((self.mem, queue, self.interrupt))
    }
}

/// A device's I/O, run on its worker thread.
pub trait QueueHandler: Send + 'static {
    /// The driver set `DRIVER_OK`: take the queues and start. The worker calls
    /// [`QueueHandler::queue_event`] for every queue right after, for requests the driver
    /// queued before.
    fn activate(&mut self, queues: ActiveQueues, ctx: &mut WorkerContext);
    /// Queue `index` was notified (its eventfd has been read).
    fn queue_event(&mut self, index: usize, ctx: &mut WorkerContext);
    /// An fd this handler added with [`WorkerContext::add_fd`] is readable.
    fn fd_event(&mut self, _token: u32, _ctx: &mut WorkerContext) {}
    /// The driver reset the device: drop the queues (and remove fds added for them).
    fn reset(&mut self, ctx: &mut WorkerContext);
    /// Where each queue the handler holds is, in index order (empty when it holds none),
    /// for a snapshot. Called between requests, while the worker is paused. A chain popped
    /// but not yet used (a held frame's buffers) is counted as not popped: a restored device
    /// pops it again.
    fn queue_positions(&self) -> Vec<QueuePosition> {
        Vec::new()
    }
}

/// Where a device is in one queue's rings: the next available entry it will read and the
/// next used entry it will write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePosition {
    /// The next index of the available ring to read.
    pub next_avail: u16,
    /// The next index of the used ring to write.
    pub next_used: u16,
}

impl QueuePosition {
    /// Where `q` is.
    pub fn of(q: &Queue) -> Self {
        use virtio_queue::QueueT;
        Self {
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }
}

/// Requests from the transport and the VMM to a worker.
enum Message {
    Activate(ActiveQueues, Vec<EventFd>),
    Reset,
    RunOnThread(ThreadTask, Sender<Result<(), String>>),
    Positions(Sender<Vec<QueuePosition>>),
    Pause(Sender<()>),
    Resume,
    Stop,
}

/// Work the VMM runs on a worker's own thread (installing its seccomp filter).
pub type ThreadTask = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The shared half of a worker: how others talk to it.
pub struct Control {
    sender: Mutex<Sender<Message>>,
    wake: EventFd,
    /// Set while a message waits: handlers return at the next request boundary.
    yield_now: AtomicBool,
    /// Set by reset and stop: a long request may give up in the middle (it completes
    /// with an error the driver, which is resetting, never looks at).
    abort: AtomicBool,
    name: String,
    /// Why the worker stopped serving its device (a panic in the handler), once it has.
    failure: Mutex<Option<String>>,
    /// Written once when `failure` is set: the VMM's event loop watches it.
    fault: EventFd,
}

impl Control {
    fn send(&self, m: Message) -> io::Result<()> {
        if matches!(m, Message::Reset | Message::Stop) {
            self.abort.store(true, Ordering::SeqCst);
        }
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(m)
            .map_err(|_| io::Error::other(format!("{}: worker is gone", self.name)))?;
        self.yield_now.store(true, Ordering::SeqCst);
        self.wake.write(1)
    }

    /// The worker's (thread's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the worker stopped serving its device, if it has: its handler panicked. The
    /// device is dead from then on; the VMM ends the VM.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Readable once [`Control::failure`] is set.
    pub fn fault_event(&self) -> &EventFd {
        &self.fault
    }

    fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        let _ = self.fault.write(1);
    }

    /// Whether the handler should return at the next request boundary (a message waits).
    pub fn should_yield(&self) -> bool {
        self.yield_now.load(Ordering::Relaxed)
    }

    /// Whether a long request should give up now (the device is being reset or stopped).
    pub fn should_abort(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// The yield flag itself, for code that takes an `&AtomicBool`.
    pub fn yield_flag(&self) -> &AtomicBool {
        &self.yield_now
    }

    /// The abort flag itself, for code that takes an `&AtomicBool`.
    pub fn abort_flag(&self) -> &AtomicBool {
        &self.abort
    }

    /// Ask the worker to park at its next request boundary, and wait (at most `timeout`)
    /// until it has. Returns whether it parked in time.
    pub fn pause(&self, timeout: Duration) -> io::Result<bool> {
        let (tx, rx) = channel();
        self.send(Message::Pause(tx))?;
        Ok(rx.recv_timeout(timeout).is_ok())
    }

    /// Run `task` on the worker's thread, between two requests, and wait (at most
    /// `timeout`) for its result. The VMM installs the worker's seccomp filter this way
    /// before the guest starts, so the filter is on before any queue is served.
    pub fn run_on_thread(&self, task: ThreadTask, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = channel();
        self.send(Message::RunOnThread(task, tx))
            .map_err(|e| e.to_string())?;
        rx.recv_timeout(timeout)
            .map_err(|_| format!("{}: no answer from the worker", self.name))?
    }

    /// Where the handler's queues are (see [`QueueHandler::queue_positions`]), asked on the
    /// worker's thread between two requests; waits at most `timeout`.
    pub fn queue_positions(&self, timeout: Duration) -> Result<Vec<QueuePosition>, String> {
        let (tx, rx) = channel();
        self.send(Message::Positions(tx))
            .map_err(|e| e.to_string())?;
        rx.recv_timeout(timeout)
            .map_err(|_| format!("{}: no answer from the worker", self.name))
    }

    /// Let a parked worker go on.
    pub fn resume(&self) -> io::Result<()> {
        self.send(Message::Resume)
    }
}

/// What a handler can do with its worker while it runs: watch its own fds, re-raise a
/// queue's notification, look at the control flags.
pub struct WorkerContext {
    epoll: Epoll,
    queue_evts: Vec<EventFd>,
    control: Arc<Control>,
}

impl WorkerContext {
    /// Watch `fd` for input; [`QueueHandler::fd_event`] gets `token`.
    pub fn add_fd(&mut self, fd: RawFd, token: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, TOKEN_HANDLER_BASE + u64::from(token)),
        )
    }

    /// Stop watching `fd`.
    pub fn remove_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Come back to queue `index` after the other events: a handler that stopped early (a
    /// full batch, a yield) calls this so that the work left is not forgotten.
    pub fn renotify(&self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            if let Err(e) = evt.write(1) {
                log::error!("{}: cannot re-raise queue {index}: {e}", self.control.name);
            }
        }
    }

    /// The worker's control flags.
    pub fn control(&self) -> &Control {
        &self.control
    }
}

/// A device's worker thread. Dropping it stops the thread and waits for it.
pub struct Worker {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
    /// Whether the worker holds queues (between `activate` and `reset`).
    active: bool,
}

impl Worker {
    /// Start thread `name` running `handler`; it waits for [`Worker::activate`].
    pub fn spawn(name: String, handler: impl QueueHandler) -> io::Result<Worker> {
        let (tx, rx) = channel();
        let control = Arc::new(Control {
            sender: Mutex::new(tx),
            wake: EventFd::new(EFD_NONBLOCK)?,
            yield_now: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            name: name.clone(),
            failure: Mutex::new(None),
            fault: EventFd::new(EFD_NONBLOCK)?,
        });
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            control.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CONTROL),
        )?;
        let ctx = WorkerContext {
            epoll,
            queue_evts: Vec::new(),
            control: control.clone(),
        };
        let shared = control.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // A panic in the handler (a bug, maybe one the guest found) must not leave a
            // half-alive VM: record it for the VMM, which ends the VM, and keep answering
            // the control channel (pause, stop) so that nobody waits for us forever.
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(handler, ctx, &rx)));
            if let Err(payload) = run {
                let why = crate::panic_message(payload.as_ref());
                log::error!("{}: device worker panicked: {why}", shared.name);
                shared.fail(why);
                for m in rx.iter() {
                    match m {
                        Message::Pause(ack) => {
                            let _ = ack.send(());
                        }
                        Message::RunOnThread(_, reply) => {
                            let _ = reply.send(Err("the worker panicked".into()));
                        }
                        Message::Stop => break,
                        _ => {}
                    }
                }
            }
        })?;
        Ok(Worker {
            control,
            thread: Some(thread),
            active: false,
        })
    }

    /// Hand the worker its queues (and their notification eventfds, in the same order).
    /// Returns at once; the worker starts on them as soon as it reads the message. A
    /// second activation without a reset in between is refused.
    pub fn activate(
        &mut self,
        queues: ActiveQueues,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::BadConfig(format!(
                "{} is already active",
                self.control.name
            )));
        }
        self.control
            .send(Message::Activate(queues, queue_evts))
            .map_err(ActivateError::Worker)?;
        self.active = true;
        Ok(())
    }

    /// Tell the worker to drop its queues. Returns at once: a request in progress finishes
    /// (or gives up, if long) on the worker, and a later [`Worker::activate`] is handled
    /// after the reset, in order. A worker that cannot be reached is logged, not fatal:
    /// the device is reset from the guest's side either way.
    pub fn reset(&mut self) {
        if let Err(e) = self.control.send(Message::Reset) {
            log::error!("{}: reset: {e}", self.control.name);
        }
        self.active = false;
    }

    /// Whether the worker holds queues (activated and not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The control half, for the VMM (pause and resume).
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.control.send(Message::Stop) {
            log::error!("{}: cannot stop the worker: {e}", self.control.name);
            return;
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("{}: the worker thread panicked", self.control.name);
            }
        }
    }
}

/// The worker thread's loop.
fn run(mut handler: impl QueueHandler, mut ctx: WorkerContext, rx: &Receiver<Message>) {
    let name = ctx.control.name.clone();
    let mut events = [EpollEvent::default(); 16];
    let mut paused = false;
    loop {
        // Messages first: a pause or reset must not wait behind queue work.
        ctx.control.yield_now.store(false, Ordering::SeqCst);
        loop {
            let msg = if paused {
                // Parked: nothing but the control channel until resume (or stop).
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(m) => m,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            };
            match msg {
                Message::Activate(queues, evts) => {
                    ctx.control.abort.store(false, Ordering::SeqCst);
                    deregister_queues(&mut ctx);
                    for (i, evt) in evts.iter().enumerate() {
                        let token = TOKEN_QUEUE_BASE + i as u64;
                        let add = EpollEvent::new(EventSet::IN, token);
                        if let Err(e) = ctx.epoll.ctl(ControlOperation::Add, evt.as_raw_fd(), add) {
                            log::error!("{name}: cannot watch queue {i}: {e}");
                        }
                    }
                    ctx.queue_evts = evts;
                    let n = queues.queues.len();
                    handler.activate(queues, &mut ctx);
                    // Requests the driver queued before it set DRIVER_OK.
                    for i in 0..n {
                        ctx.renotify(i);
                    }
                }
                Message::Reset => {
                    deregister_queues(&mut ctx);
                    handler.reset(&mut ctx);
                    ctx.control.abort.store(false, Ordering::SeqCst);
                }
                Message::Pause(ack) => {
                    paused = true;
                    let _ = ack.send(());
                }
                Message::RunOnThread(task, reply) => {
                    let _ = reply.send(task());
                }
                Message::Positions(reply) => {
                    let _ = reply.send(handler.queue_positions());
                }
                Message::Resume => paused = false,
                Message::Stop => return,
            }
        }
        let n = match ctx.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll_wait failed, worker exits: {e}");
                return;
            }
        };
        let ready = events.get(..n).unwrap_or(&[]);
        if ready.iter().any(|e| e.data() == TOKEN_CONTROL) {
            let _ = ctx.control.wake.read();
            // Back to the messages; the other events are level-triggered and come again.
            continue;
        }
        for ev in ready {
            let token = ev.data();
            if token >= TOKEN_HANDLER_BASE {
                handler.fd_event((token - TOKEN_HANDLER_BASE) as u32, &mut ctx);
            } else if token >= TOKEN_QUEUE_BASE {
                let i = (token - TOKEN_QUEUE_BASE) as usize;
                if let Some(evt) = ctx.queue_evts.get(i) {
                    // Cleared before the work, so a notification during it wakes us again.
                    let _ = evt.read();
                    handler.queue_event(i, &mut ctx);
                }
            }
            if ctx.control.should_yield() {
                break;
            }
        }
    }
}

fn deregister_queues(ctx: &mut WorkerContext) {
    for evt in std::mem::take(&mut ctx.queue_evts) {
        let _ = ctx.epoll.ctl(
            ControlOperation::Delete,
            evt.as_raw_fd(),
            EpollEvent::default(),
        );
    }
}

/// The config-space read every device does: `data.len()` bytes of `config` from `offset`,
/// zero where they fall outside it (the spec lets a driver read any offset).
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::CountingInterrupt;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;

    /// A handler with a bug the guest can reach: it panics on the first notification.
    struct Buggy;

    impl QueueHandler for Buggy {
        fn activate(&mut self, _q: ActiveQueues, _ctx: &mut WorkerContext) {}
        fn queue_event(&mut self, _index: usize, _ctx: &mut WorkerContext) {
            panic!("bug reached by the guest");
        }
        fn reset(&mut self, _ctx: &mut WorkerContext) {}
    }

    #[test]
    fn a_panicking_handler_is_reported_and_the_worker_still_stops() {
        let mut worker = Worker::spawn("buggy-test".into(), Buggy).unwrap();
        let control = worker.control();
        let queues = ActiveQueues {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
            acked_features: 0,
            queues: vec![Queue::new(16).unwrap()],
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(CountingInterrupt::default()))),
        };
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        // Activation itself renotifies queue 0: the handler panics right away.
        worker
            .activate(queues, vec![evt.try_clone().unwrap()])
            .unwrap();
        assert!(crate::test_util::wait_for(|| control.failure().is_some()));
        assert_eq!(
            control.failure().as_deref(),
            Some("bug reached by the guest")
        );
        assert_eq!(control.fault_event().read().unwrap(), 1);
        // The dead worker still answers the VMM: pause is acknowledged, reset does not
        // fail, and dropping the worker joins its thread.
        assert!(control.pause(Duration::from_secs(5)).unwrap());
        control.resume().unwrap();
        worker.reset();
        drop(worker);
    }
}

//! The VMM thread: the one place that decides what happens to a running VM.
//!
//! It sleeps in `epoll_wait` on a few eventfds and acts on each:
//!
//! | eventfd                 | raised by                         | action                      |
//! |-------------------------|-----------------------------------|-----------------------------|
//! | commands                | the [`Vm`](crate::Vm) handle      | pause, resume, power button, stop, console input |
//! | i8042 reset             | the guest (`reboot`)              | end: [`VmOutcome::Reset`]   |
//! | ACPI power-off          | the guest (`poweroff`, S5)        | end: [`VmOutcome::PowerOff`] |
//! | exit slot               | a vCPU thread (crash, halt, ...)  | end with its outcome        |
//! | worker fault            | a device worker that panicked     | end: [`VmOutcome::VmmFailure`] |
//! | input retry timer       | itself                            | feed queued console input   |
//!
//! When the VM ends it stops the vCPUs (state `Stop`, kicked out of `KVM_RUN`, joined) and
//! publishes the outcome. vCPU threads and device workers never decide the VM's fate
//! themselves: they raise one of these events.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::DeviceHandles;
use crate::vcpu::{kick_until, RunState, VcpuControl};
use crate::vm::{ExitSlot, Shared, VmOutcome, VmState};
use crate::Error;

/// How long pause waits for the vCPUs and for each device worker to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Console input waiting for room in the guest's UART is capped at this many bytes; more is
/// dropped (and logged): a guest that never reads its console must not grow the VMM.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Bytes waiting for room in the guest's receive FIFO are retried this often.
const INPUT_RETRY: Duration = Duration::from_millis(5);

/// A request from the [`Vm`](crate::Vm) handle; each carries where to send the answer.
pub enum Command {
    /// Park every vCPU and device worker.
    Pause(Sender<Result<(), Error>>),
    /// Let them go on.
    Resume(Sender<Result<(), Error>>),
    /// Press the ACPI power button.
    PowerButton(Sender<Result<(), Error>>),
    /// End the VM now.
    Stop(Sender<Result<(), Error>>),
    /// Bytes for the guest's serial console.
    ConsoleInput(Vec<u8>),
}

const TOKEN_COMMAND: u64 = 0;
const TOKEN_RESET: u64 = 1;
const TOKEN_POWEROFF: u64 = 2;
const TOKEN_EXIT: u64 = 3;
const TOKEN_INPUT_TIMER: u64 = 4;
/// Device worker `i`'s fault eventfd is `TOKEN_WORKER_FAULT + i`.
const TOKEN_WORKER_FAULT: u64 = 1 << 16;

/// Everything the VMM thread owns.
pub struct EventLoop {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: Receiver<Command>,
    pub(crate) wake: Arc<EventFd>,
    pub(crate) devices: DeviceHandles,
    pub(crate) exit: Arc<ExitSlot>,
    pub(crate) vcpus: Vec<JoinHandle<()>>,
    pub(crate) control: Arc<VcpuControl>,
    pub(crate) acpi: bool,
    pending: Vec<u8>,
    input_timer: Option<TimerFd>,
}

impl EventLoop {
    /// Everything the thread will own, handed over by [`Vm::start`](crate::Vm::start).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
        devices: DeviceHandles,
        exit: Arc<ExitSlot>,
        vcpus: Vec<JoinHandle<()>>,
        control: Arc<VcpuControl>,
        acpi: bool,
    ) -> Self {
        Self {
            shared,
            commands,
            wake,
            devices,
            exit,
            vcpus,
            control,
            acpi,
            pending: Vec::new(),
            input_timer: TimerFd::new().ok(),
        }
    }

    /// Run until the VM ends; then stop the vCPUs and publish the outcome.
    pub fn run(mut self) {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
        let outcome = match served {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => VmOutcome::Crash(format!("the VMM's event loop failed: {e}")),
            Err(payload) => {
                let why = devices::panic_message(payload.as_ref());
                log::error!("the VMM thread panicked: {why}");
                VmOutcome::VmmFailure(format!("the VMM thread panicked: {why}"))
            }
        };
        // A vCPU waiting for room in a blocked console output stops waiting.
        if let Some(c) = &self.devices.console {
            c.close();
        }
        self.stop_vcpus();
        // Parked workers must be able to hear their stop when the devices are dropped.
        for w in &self.devices.workers {
            let _ = w.resume();
        }
        // The guest's last words reach the console's output before anyone hears that the
        // VM ended (a front-end that reads the output after `wait` sees all of it), unless
        // the output is blocked: then they are given up after a bounded wait.
        if let Some(c) = &self.devices.console {
            c.finish_or_warn(crate::vm::CONSOLE_DRAIN_TIMEOUT);
        }
        self.shared.set_state(VmState::Ended(outcome));
    }

    fn serve(&mut self) -> std::io::Result<VmOutcome> {
        let epoll = Epoll::new()?;
        let watch = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(self.wake.as_raw_fd(), TOKEN_COMMAND)?;
        watch(self.devices.reset_evt.as_raw_fd(), TOKEN_RESET)?;
        watch(self.devices.poweroff_evt.as_raw_fd(), TOKEN_POWEROFF)?;
        watch(self.exit.event.as_raw_fd(), TOKEN_EXIT)?;
        if let Some(t) = &self.input_timer {
            watch(t.as_raw_fd(), TOKEN_INPUT_TIMER)?;
        }
        for (i, w) in self.devices.workers.iter().enumerate() {
            watch(w.fault_event().as_raw_fd(), TOKEN_WORKER_FAULT + i as u64)?;
        }
        let mut events = [EpollEvent::default(); 8];
        loop {
            if let Some(o) = self.exit.get() {
                return Ok(o);
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_COMMAND => {
                        let _ = self.wake.read();
                        while let Ok(cmd) = self.commands.try_recv() {
                            self.command(cmd);
                        }
                    }
                    TOKEN_RESET => {
                        let _ = self.devices.reset_evt.read();
                        self.exit.set(VmOutcome::Reset);
                    }
                    TOKEN_POWEROFF => {
                        let _ = self.devices.poweroff_evt.read();
                        self.exit.set(VmOutcome::PowerOff);
                    }
                    TOKEN_EXIT => {
                        // The slot holds the outcome; the eventfd only woke us up.
                        let _ = self.exit.event.read();
                    }
                    TOKEN_INPUT_TIMER => {
                        if let Some(t) = &mut self.input_timer {
                            let _ = t.wait(); // readable: returns at once
                        }
                        self.flush_input();
                    }
                    token if token >= TOKEN_WORKER_FAULT => {
                        let i = (token - TOKEN_WORKER_FAULT) as usize;
                        if let Some(w) = self.devices.workers.get(i) {
                            let _ = w.fault_event().read();
                            let why = w.failure().unwrap_or_default();
                            self.exit.set(VmOutcome::VmmFailure(format!(
                                "device worker {} panicked: {why}",
                                w.name()
                            )));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Pause(reply) => {
                let _ = reply.send(self.pause());
            }
            Command::Resume(reply) => {
                let _ = reply.send(self.resume());
            }
            Command::PowerButton(reply) => {
                let _ = reply.send(self.power_button());
            }
            Command::Stop(reply) => {
                self.exit.set(VmOutcome::Stopped);
                let _ = reply.send(Ok(()));
            }
            Command::ConsoleInput(bytes) => {
                let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
                if bytes.len() > room {
                    devices::warn_ratelimited!(
                        "console: the guest does not read its console; dropping {} bytes of input",
                        bytes.len() - room
                    );
                }
                self.pending
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
                self.flush_input();
            }
        }
    }

    fn pause(&mut self) -> Result<(), Error> {
        match self.shared.state() {
            VmState::Paused => return Ok(()),
            VmState::Running | VmState::ShuttingDown => {}
            other => return Err(Error::NotRunning("pause", other.name())),
        }
        // vCPUs first (no new requests), then the devices (finish the request in progress).
        let n = self.vcpus.iter().filter(|t| !t.is_finished()).count();
        self.control.set(RunState::Pause);
        let control = self.control.clone();
        if !kick_until(&self.vcpus, PAUSE_TIMEOUT, || {
            control.wait_parked(n, Duration::from_millis(2))
        }) {
            self.control.set(RunState::Run);
            return Err(Error::Timeout("vCPUs did not park"));
        }
        for (i, w) in self.devices.workers.iter().enumerate() {
            match w.pause(PAUSE_TIMEOUT) {
                Ok(true) => {}
                _ => {
                    for w in &self.devices.workers[..=i] {
                        let _ = w.resume();
                    }
                    self.control.set(RunState::Run);
                    return Err(Error::Timeout("a device did not park"));
                }
            }
        }
        self.shared.set_paused(true);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), Error> {
        match self.shared.state() {
            VmState::Running | VmState::ShuttingDown => return Ok(()),
            VmState::Paused => {}
            other => return Err(Error::NotRunning("resume", other.name())),
        }
        for w in &self.devices.workers {
            w.resume()
                .map_err(|e| Error::Host(format!("resuming a device: {e}")))?;
        }
        self.control.set(RunState::Run);
        self.shared.set_paused(false);
        Ok(())
    }

    fn power_button(&mut self) -> Result<(), Error> {
        match self.shared.state() {
            VmState::Running | VmState::ShuttingDown => {}
            other => return Err(Error::NotRunning("press the power button of", other.name())),
        }
        if !self.acpi {
            return Err(Error::NoPowerButton);
        }
        self.devices
            .acpi_pm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_power_button()
            .map_err(|e| Error::Host(format!("power button: {e}")))?;
        self.shared.set_shutting_down();
        Ok(())
    }

    /// Move pending input into the guest's FIFO as far as it has room.
    fn flush_input(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let taken = self
            .devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..taken);
        if !self.pending.is_empty() {
            if let Some(t) = &mut self.input_timer {
                if let Err(e) = t.reset(INPUT_RETRY, None) {
                    log::error!("console: cannot arm the input retry timer: {e}");
                }
            }
        }
    }

    /// Tell every vCPU thread to stop and kick it out of `KVM_RUN` until it has.
    fn stop_vcpus(&mut self) {
        self.control.set(RunState::Stop);
        let threads = std::mem::take(&mut self.vcpus);
        if !kick_until(&threads, Duration::from_secs(2), || {
            threads.iter().all(|t| t.is_finished())
        }) {
            log::warn!("a vCPU thread did not stop; leaving it behind");
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Shared;
    use devices::legacy::{AcpiPm, BootTimer, SerialDevice};
    use devices::virtio::worker::{ActiveQueues, QueueHandler, Worker, WorkerContext};
    use devices::virtio::{GuestMemoryMmap, VirtioInterrupt};
    use devices::Interrupt;
    use std::sync::Mutex;
    use std::time::Instant;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct NoLine;
    impl Interrupt for NoLine {
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A device whose worker panics at the first notification.
    struct Buggy;
    impl QueueHandler for Buggy {
        fn activate(&mut self, _q: ActiveQueues, _ctx: &mut WorkerContext) {}
        fn queue_event(&mut self, _i: usize, _ctx: &mut WorkerContext) {
            panic!("boom");
        }
        fn reset(&mut self, _ctx: &mut WorkerContext) {}
    }

    #[test]
    fn a_panicking_device_worker_ends_the_vm_with_a_vmm_panic() {
        let mut worker = Worker::spawn("virtio-test0".into(), Buggy).unwrap();
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let devices = DeviceHandles {
            serial: Arc::new(Mutex::new(SerialDevice::new(
                Arc::new(NoLine),
                Box::new(std::io::sink()),
            ))),
            reset_evt: evt(),
            poweroff_evt: evt(),
            acpi_pm: Arc::new(Mutex::new(AcpiPm::new(evt(), Arc::new(NoLine)))),
            i8042: Arc::new(Mutex::new(devices::legacy::I8042::new(evt()))),
            boot_timer: Arc::new(Mutex::new(BootTimer::new(Instant::now()))),
            workers: vec![worker.control()],
            virtio: Vec::new(),
            console: None,
        };
        let shared = Arc::new(Shared::new().unwrap());
        shared.set_state(VmState::Running);
        let (_tx, rx) = std::sync::mpsc::channel();
        let event_loop = EventLoop::new(
            shared.clone(),
            rx,
            Arc::new(evt()),
            devices,
            Arc::new(ExitSlot::new().unwrap()),
            Vec::new(),
            Arc::new(VcpuControl::default()),
            false,
        );
        let thread = std::thread::spawn(move || event_loop.run());
        worker
            .activate(
                ActiveQueues {
                    mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
                    acked_features: 0,
                    queues: vec![Queue::new(16).unwrap()],
                    interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoLine))),
                },
                vec![evt()],
            )
            .unwrap();
        thread.join().unwrap();
        assert_eq!(
            shared.state(),
            VmState::Ended(VmOutcome::VmmFailure(
                "device worker virtio-test0 panicked: boom".into()
            ))
        );
    }
}

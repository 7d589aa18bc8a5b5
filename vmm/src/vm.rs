//! A VM you can hold: [`Vm`], made by [`VmBuilder`](crate::VmBuilder), started, paused,
//! resumed, powered off (ACPI button) or stopped, asked how it is, waited for.
//!
//! ```text
//!             start()          pause()            power_button()
//!  Created ----------> Running <-------> Paused   Running ---------> ShuttingDown
//!                         |    resume()                                  |
//!                         +--- the guest resets/powers off/crashes, ----+---> Ended(outcome)
//!                              or stop() (from any state but Ended)
//! ```
//!
//! The handle is cheap to share between threads (`&Vm` is `Sync`): every request goes to
//! the VMM thread ([`event_loop`](crate::event_loop)) as a message plus an eventfd write,
//! and the answer comes back on a channel. State changes go out to every
//! [`Vm::subscribe`]r as [`VmEvent`]s, and make [`Vm::event_fd`] readable for front-ends
//! that poll.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::console_out::ConsoleDrain;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use std::time::{Duration, Instant};

use devices::legacy::BootTimer;
use devices::virtio::mmio::MmioTransport;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::Bus;
use crate::device_manager::VirtioDeviceInfo;
use crate::event_loop::{Command, EventLoop};
use crate::stats::{ExitCounters, ExitSnapshot};
use crate::vcpu::{Vcpu, VcpuControl};
use crate::{Error, VmConfig};

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest asked for a reset (i8042 command 0xFE, or a KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// [`Vm::stop`] ended it.
    Stopped,
    /// The guest crashed: triple fault, KVM internal or emulation error, failed entry.
    Crash(String),
    /// minivmm itself failed: a vCPU thread, a device worker or the VMM thread panicked
    /// (a bug) or could not install its seccomp filter. The VM was stopped like any other;
    /// the text names the thread and what happened.
    VmmFailure(String),
}

/// Where a VM is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Built, not started: no guest instruction has run.
    Created,
    /// Running.
    Running,
    /// Every vCPU and device worker parked; no guest instruction runs.
    Paused,
    /// The power button was pressed; the guest is (maybe) shutting down.
    ShuttingDown,
    /// Over.
    Ended(VmOutcome),
}

impl VmState {
    /// A word for messages: "created", "running", ...
    pub fn name(&self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting down",
            VmState::Ended(_) => "ended",
        }
    }
}

/// What a subscriber hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The VM entered this state.
    State(VmState),
}

/// A VM's description.
#[derive(Clone, Debug)]
pub struct VmInfo {
    /// What it was built from.
    pub config: VmConfig,
    /// The virtio devices, in bus order.
    pub devices: Vec<VirtioDeviceInfo>,
    /// Time since [`Vm::start`] (None before).
    pub uptime: Option<Duration>,
    /// The state now.
    pub state: VmState,
}

/// One device's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's name (`vda`, `eth0`, `rng0`).
    pub name: String,
    /// (counter, value) pairs.
    pub counters: Vec<(&'static str, u64)>,
}

/// What a VM has done so far.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// KVM exits (by reason; by address too with `detailed_counters`).
    pub exits: ExitSnapshot,
    /// Port accesses no device claimed (reads, writes).
    pub unclaimed_pio: (u64, u64),
    /// MMIO accesses no device claimed (reads, writes).
    pub unclaimed_mmio: (u64, u64),
    /// Per virtio device.
    pub devices: Vec<DeviceCounters>,
    /// From the VMM's start to the guest's write to the boot timer.
    pub boot_time: Option<Duration>,
}

impl Counters {
    /// The `--stats` report.
    pub fn report(&self) -> String {
        let mut out = crate::stats::report(&self.exits, self.unclaimed_pio, self.unclaimed_mmio);
        if let Some(t) = self.boot_time {
            out += &format!("  guest boot time: {} ms\n", t.as_millis());
        }
        for d in &self.devices {
            let c: Vec<String> = d.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out += &format!("  {}: {}\n", d.name, c.join(", "));
        }
        out
    }
}

/// Start thread `name` running `body`, whose outcome (if any) ends the VM. A panic in
/// `body` is caught and ends the VM too, as [`VmOutcome::VmmFailure`]: the other threads are
/// stopped and joined by the event loop, the terminal, taps and locks are released by the
/// usual drops, instead of a half-alive VM with one dead vCPU.
pub(crate) fn spawn_contained(
    name: String,
    exit: Arc<ExitSlot>,
    body: impl FnOnce() -> Option<VmOutcome> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(
            move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(Some(o)) => exit.set(o),
                Ok(None) => {}
                Err(payload) => {
                    let why = devices::panic_message(payload.as_ref());
                    log::error!("{name} panicked: {why}");
                    exit.set(VmOutcome::VmmFailure(format!("{name} panicked: {why}")));
                }
            },
        )
}

/// Where the first vCPU or device to decide that the VM ends writes the outcome.
pub(crate) struct ExitSlot {
    outcome: Mutex<Option<VmOutcome>>,
    /// Written when the outcome is set, to wake the event loop.
    pub(crate) event: EventFd,
}

impl ExitSlot {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Record `o` unless an outcome is already there, and wake the event loop.
    pub(crate) fn set(&self, o: VmOutcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(o);
        }
        let _ = self.event.write(1);
    }

    pub(crate) fn get(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The state everybody reads, and who wants to hear about changes.
pub(crate) struct Shared {
    state: Mutex<(VmState, bool)>,
    changed: Condvar,
    subscribers: Mutex<Vec<Sender<VmEvent>>>,
    event: EventFd,
    started: Mutex<Option<Instant>>,
}

impl Shared {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new((VmState::Created, false)),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
            event: EventFd::new(EFD_NONBLOCK)?,
            started: Mutex::new(None),
        })
    }

    pub(crate) fn state(&self) -> VmState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub(crate) fn set_state(&self, s: VmState) {
        {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 == s || matches!(g.0, VmState::Ended(_)) {
                return;
            }
            if matches!(s, VmState::ShuttingDown) {
                g.1 = true;
            }
            g.0 = s.clone();
            // Still under the state lock: whoever sees the new state (wait(), state())
            // finds the event already queued.
            self.subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|tx| tx.send(VmEvent::State(s.clone())).is_ok());
        }
        self.changed.notify_all();
        let _ = self.event.write(1);
    }

    /// Paused, or back to Running (or ShuttingDown if the button was pressed before).
    pub(crate) fn set_paused(&self, paused: bool) {
        let shutting_down = self.state.lock().unwrap_or_else(|e| e.into_inner()).1;
        self.set_state(match (paused, shutting_down) {
            (true, _) => VmState::Paused,
            (false, true) => VmState::ShuttingDown,
            (false, false) => VmState::Running,
        });
    }

    pub(crate) fn set_shutting_down(&self) {
        self.set_state(VmState::ShuttingDown);
    }
}

/// What a built VM needs to start: its vCPUs and the VMM thread's devices.
pub(crate) struct Startable {
    /// The VM itself. Kept open for the VM's whole life: closing it makes KVM drop every
    /// irqfd (`kvm_vm_release`), and the devices' interrupts with them.
    pub(crate) kvm: (kvm_ioctls::Kvm, kvm_ioctls::VmFd),
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) devices: crate::device_manager::DeviceHandles,
    pub(crate) acpi: bool,
}

/// A VM.
pub struct Vm {
    shared: Arc<Shared>,
    commands: Mutex<Sender<Command>>,
    receiver: Mutex<Option<Receiver<Command>>>,
    wake: Arc<EventFd>,
    startable: Mutex<Option<Startable>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) config: VmConfig,
    pub(crate) virtio: Vec<(VirtioDeviceInfo, Arc<Mutex<MmioTransport>>)>,
    exits: Arc<ExitCounters>,
    buses: (Arc<Bus>, Arc<Bus>),
    boot_timer: Arc<Mutex<BootTimer>>,
    /// The console output's writer thread, drained when the VM is dropped.
    console: Option<Arc<ConsoleDrain>>,
    /// The KVM VM, once the vCPUs run (see [`Startable`]); dropped last.
    pub(crate) kvm: Mutex<Option<(kvm_ioctls::Kvm, kvm_ioctls::VmFd)>>,
    /// What a snapshot reads: guest memory, the vCPUs' control, the legacy devices.
    pub(crate) snap: SnapshotSources,
}

/// What [`Vm::snapshot`](crate::Vm::snapshot) reads besides the virtio transports.
pub(crate) struct SnapshotSources {
    pub(crate) mem: devices::virtio::GuestMemoryMmap,
    /// Guest memory is mapped from an earlier snapshot's file (not anonymous).
    pub(crate) mem_from_file: bool,
    pub(crate) control: Mutex<Option<Arc<VcpuControl>>>,
    pub(crate) serial: Arc<Mutex<devices::legacy::SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<devices::legacy::I8042>>,
    pub(crate) acpi_pm: Arc<Mutex<devices::legacy::AcpiPm>>,
    /// Serialises snapshots of this VM.
    pub(crate) busy: Mutex<()>,
}

impl Vm {
    pub(crate) fn new(
        config: VmConfig,
        startable: Startable,
        exits: Arc<ExitCounters>,
        buses: (Arc<Bus>, Arc<Bus>),
        mem: (devices::virtio::GuestMemoryMmap, bool),
    ) -> Result<Self, Error> {
        let host = |e: std::io::Error| Error::Host(format!("eventfd: {e}"));
        let (tx, rx) = channel();
        Ok(Self {
            shared: Arc::new(Shared::new().map_err(host)?),
            commands: Mutex::new(tx),
            receiver: Mutex::new(Some(rx)),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(host)?),
            snap: SnapshotSources {
                mem: mem.0,
                mem_from_file: mem.1,
                control: Mutex::new(None),
                serial: startable.devices.serial.clone(),
                i8042: startable.devices.i8042.clone(),
                acpi_pm: startable.devices.acpi_pm.clone(),
                busy: Mutex::new(()),
            },
            virtio: startable.devices.virtio.clone(),
            boot_timer: startable.devices.boot_timer.clone(),
            console: startable.devices.console.clone(),
            startable: Mutex::new(Some(startable)),
            thread: Mutex::new(None),
            config,
            exits,
            buses,
            kvm: Mutex::new(None),
        })
    }

    /// Start the guest: one thread per vCPU and the VMM thread. From here on guest code runs.
    pub fn start(&self) -> Result<(), Error> {
        let Some(s) = self
            .startable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Err(Error::NotRunning("start", self.state().name()));
        };
        *self.kvm.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.kvm);
        crate::vcpu::install_kick_handler()
            .map_err(|e| Error::Host(format!("signal handler: {e}")))?;
        // Every thread's seccomp filter goes on before the guest runs: device workers
        // (which exist since the build) now, vCPUs and the VMM thread first thing.
        let mode = self.config.seccomp;
        if mode != SeccompMode::Off {
            seccomp::install_sigsys_handler()
                .map_err(|e| Error::Host(format!("SIGSYS handler: {e}")))?;
        }
        let sandbox = |e: seccomp::SeccompError| Error::Host(e.to_string());
        for (info, transport) in &self.virtio {
            let Some(kind) = ThreadKind::for_virtio_device(info.device_type) else {
                continue;
            };
            let Some(worker) = transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .device()
                .worker()
            else {
                continue;
            };
            let program = seccomp::filter(kind, mode).map_err(sandbox)?;
            let name = worker.name().to_string();
            worker
                .run_on_thread(
                    Box::new(move || {
                        seccomp::apply(kind, &name, program.as_ref()).map_err(|e| e.to_string())
                    }),
                    Duration::from_secs(10),
                )
                .map_err(|e| Error::Host(format!("{}: {e}", info.name)))?;
        }
        let vcpu_filter = seccomp::filter(ThreadKind::Vcpu, mode).map_err(sandbox)?;
        let vmm_filter = seccomp::filter(ThreadKind::Vmm, mode).map_err(sandbox)?;
        let exit = Arc::new(ExitSlot::new().map_err(|e| Error::Host(format!("eventfd: {e}")))?);
        let control = Arc::new(VcpuControl::default());
        *self.snap.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(control.clone());
        let mut threads = Vec::new();
        for (i, v) in s.vcpus.into_iter().enumerate() {
            let (control, exit) = (control.clone(), exit.clone());
            let (name, program) = (format!("vcpu{i}"), vcpu_filter.clone());
            let t = spawn_contained(name.clone(), exit, move || {
                if let Err(e) = seccomp::apply(ThreadKind::Vcpu, &name, program.as_ref()) {
                    return Some(VmOutcome::VmmFailure(format!("{name}: {e}")));
                }
                v.run(&control)
            })
            .map_err(|e| Error::Host(format!("spawning a vCPU thread: {e}")))?;
            threads.push(t);
        }
        *self
            .shared
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.shared.set_state(VmState::Running);
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::Host("the VM was started twice".into()))?;
        let event_loop = EventLoop::new(
            self.shared.clone(),
            receiver,
            self.wake.clone(),
            s.devices,
            exit.clone(),
            threads,
            control.clone(),
            s.acpi,
        );
        let thread = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::Vmm, "vmm", vmm_filter.as_ref()) {
                    event_loop
                        .exit
                        .set(VmOutcome::VmmFailure(format!("vmm: {e}")));
                }
                event_loop.run()
            });
        match thread {
            Ok(t) => {
                *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                Ok(())
            }
            Err(e) => {
                // No VMM thread: stop the vCPUs we started (they see Stop at their next
                // exit; the event loop that would kick them does not exist).
                control.set(crate::vcpu::RunState::Stop);
                exit.set(VmOutcome::Stopped);
                self.shared.set_state(VmState::Ended(VmOutcome::Stopped));
                Err(Error::Host(format!("spawning the VMM thread: {e}")))
            }
        }
    }

    fn request(
        &self,
        what: &'static str,
        make: impl FnOnce(Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        match self.state() {
            VmState::Created | VmState::Ended(_) => {
                return Err(Error::NotRunning(what, self.state().name()))
            }
            _ => {}
        }
        let (tx, rx) = channel();
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(make(tx))
            .map_err(|_| Error::NotRunning(what, "ended"))?;
        self.wake
            .write(1)
            .map_err(|e| Error::Host(format!("waking the VMM thread: {e}")))?;
        rx.recv()
            .map_err(|_| Error::NotRunning(what, self.state().name()))?
    }

    /// Park every vCPU and device worker: no guest instruction runs, no device touches
    /// guest memory, until [`Vm::resume`]. Returns once they are parked. Pausing a paused
    /// VM does nothing.
    pub fn pause(&self) -> Result<(), Error> {
        self.request("pause", Command::Pause)
    }

    /// Let a paused VM go on. Resuming a running VM does nothing.
    pub fn resume(&self) -> Result<(), Error> {
        self.request("resume", Command::Resume)
    }

    /// Press the ACPI power button: a guest that listens shuts down and powers off.
    pub fn power_button(&self) -> Result<(), Error> {
        self.request("press the power button of", Command::PowerButton)
    }

    /// Stop the VM now (hard), paused or not; [`Vm::wait`] then returns
    /// [`VmOutcome::Stopped`] (or the outcome that came first).
    pub fn stop(&self) -> Result<(), Error> {
        if matches!(self.state(), VmState::Created) {
            // Never started: nothing runs; just drop what was built.
            self.startable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            self.shared.set_state(VmState::Ended(VmOutcome::Stopped));
            return Ok(());
        }
        self.request("stop", Command::Stop)
    }

    /// Bytes for the guest's serial console (COM1), as if typed on its serial line. What the
    /// UART cannot take yet waits (up to 64 KiB) and is retried.
    pub fn console_input(&self, bytes: &[u8]) -> Result<(), Error> {
        if !matches!(
            self.state(),
            VmState::Running | VmState::Paused | VmState::ShuttingDown
        ) {
            return Err(Error::NotRunning("type into", self.state().name()));
        }
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::ConsoleInput(bytes.to_vec()))
            .map_err(|_| Error::NotRunning("type into", "ended"))?;
        self.wake
            .write(1)
            .map_err(|e| Error::Host(format!("waking the VMM thread: {e}")))
    }

    /// The state now.
    pub fn state(&self) -> VmState {
        self.shared.state()
    }

    /// Wait until the VM has ended; how it ended. By then the guest's console output has
    /// been written to the builder's output (unless that output stayed blocked for
    /// [`CONSOLE_DRAIN_TIMEOUT`]).
    pub fn wait(&self) -> VmOutcome {
        let mut g = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let VmState::Ended(o) = &g.0 {
                return o.clone();
            }
            g = self
                .shared
                .changed
                .wait(g)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hear about every state change from now on.
    pub fn subscribe(&self) -> Receiver<VmEvent> {
        let (tx, rx) = channel();
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// An fd that becomes readable at every state change (read it to clear it), for
    /// front-ends that poll.
    pub fn event_fd(&self) -> RawFd {
        self.shared.event.as_raw_fd()
    }

    /// Clear [`Vm::event_fd`].
    pub fn clear_event(&self) {
        let _ = self.shared.event.read();
    }

    /// The VM's configuration, devices, uptime and state.
    pub fn info(&self) -> VmInfo {
        VmInfo {
            config: self.config.clone(),
            devices: self.virtio.iter().map(|(i, _)| i.clone()).collect(),
            uptime: self
                .shared
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed()),
            state: self.state(),
        }
    }

    /// What the VM has done so far.
    pub fn counters(&self) -> Counters {
        Counters {
            exits: self.exits.snapshot(10),
            unclaimed_pio: self.buses.0.unclaimed(),
            unclaimed_mmio: self.buses.1.unclaimed(),
            devices: self
                .virtio
                .iter()
                .map(|(info, t)| DeviceCounters {
                    name: info.name.clone(),
                    counters: t
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .device()
                        .counters(),
                })
                .collect(),
            boot_time: self
                .boot_timer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .boot_time(),
        }
    }
}

impl Drop for Vm {
    /// A VM dropped while it runs is stopped, and its threads joined, here.
    fn drop(&mut self) {
        if !matches!(self.state(), VmState::Ended(_)) {
            let _ = self.stop();
        }
        // A VM that ran had its console drained by the event loop as it ended; one that
        // never started may still have its writer thread waiting.
        let event_loop = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = event_loop {
            let _ = t.join();
            return;
        }
        if let Some(c) = &self.console {
            c.finish_or_warn(CONSOLE_DRAIN_TIMEOUT);
        }
    }
}

/// How long dropping a VM waits for its buffered console output to be written.
pub const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_vcpu_thread_ends_the_vm_with_a_vmm_panic() {
        let exit = Arc::new(ExitSlot::new().unwrap());
        let t = spawn_contained("vcpu7".into(), exit.clone(), || {
            panic!("unexpected exit reason");
        })
        .unwrap();
        // The thread ends normally (the panic is caught), the outcome names it, and the
        // event loop is woken.
        t.join().unwrap();
        assert_eq!(
            exit.get(),
            Some(VmOutcome::VmmFailure(
                "vcpu7 panicked: unexpected exit reason".into()
            ))
        );
        assert_eq!(exit.event.read().unwrap(), 1);

        // An outcome already set wins over a later panic: the first to decide ends the VM.
        let exit = Arc::new(ExitSlot::new().unwrap());
        spawn_contained("vcpu0".into(), exit.clone(), || Some(VmOutcome::PowerOff))
            .unwrap()
            .join()
            .unwrap();
        spawn_contained("vcpu1".into(), exit.clone(), || panic!("late"))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(exit.get(), Some(VmOutcome::PowerOff));
    }
}

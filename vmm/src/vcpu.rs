//! A vCPU: its boot state, and the run loop that turns KVM exits into bus accesses.
//!
//! `KVM_RUN` executes guest code until something needs the VMM: an I/O port or MMIO
//! access that no in-kernel device handles, a shutdown (triple fault), or an error. Each
//! vCPU runs this loop on its own thread; the buses are shared.
//!
//! Pause and stop: the VMM thread sets the [`VcpuControl`] state and kicks every vCPU
//! thread with a signal, which makes `KVM_RUN` return `EINTR`; before every `KVM_RUN` a
//! vCPU looks at the state and parks (pause) or returns (stop). A kick can arrive just
//! before the thread enters `KVM_RUN` and be lost, so the VMM thread kicks again until each
//! vCPU has parked or ended.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_lapic_state, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::bus::Bus;
use crate::stats::{ExitCounters, ExitReason};
use crate::vm::VmOutcome;
use devices::virtio::GuestMemoryMmap;

/// Why a vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// The operation.
        what: &'static str,
        /// The error from KVM.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing the boot GDT/page tables failed.
    #[error("vCPU {0}: setting up boot registers: {1}")]
    Regs(u8, String),
}

/// What the vCPUs should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Run the guest.
    Run,
    /// Park before the next `KVM_RUN` until the state changes.
    Pause,
    /// Leave the run loop.
    Stop,
}

/// Work for a parked vCPU, run on its own thread (reading its state for a snapshot).
pub type VcpuTask = Box<dyn FnOnce(&mut Vcpu) + Send>;

struct ControlState {
    run: RunState,
    parked: usize,
    /// (vCPU index, task) for parked vCPUs to run.
    tasks: Vec<(u8, VcpuTask)>,
}

/// The run state shared by the VMM thread and all vCPU threads, how many vCPUs are
/// parked, and work for parked vCPUs.
pub struct VcpuControl {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            state: Mutex::new(ControlState {
                run: RunState::Run,
                parked: 0,
                tasks: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the state (the caller kicks the vCPU threads so that they notice).
    pub fn set(&self, s: RunState) {
        self.lock().run = s;
        self.changed.notify_all();
    }

    /// The state.
    pub fn get(&self) -> RunState {
        self.lock().run
    }

    /// Wait up to `timeout` until `n` vCPUs are parked; whether they are.
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |s| s.parked < n)
            .unwrap_or_else(|e| e.into_inner());
        g.parked >= n
    }

    /// Have vCPU `index` run `task` on its thread while it is parked (it runs it as soon as
    /// it parks, or at once if it is parked already). The task reports back itself.
    pub fn run_on_vcpu(&self, index: u8, task: VcpuTask) {
        self.lock().tasks.push((index, task));
        self.changed.notify_all();
    }

    /// Called by vCPU `index`'s thread before `KVM_RUN`: parks while paused, running the
    /// tasks given to it meanwhile; `false` once it must stop.
    fn may_run(&self, index: u8, mut run_task: impl FnMut(VcpuTask)) -> bool {
        let mut g = self.lock();
        let mut parked = false;
        loop {
            match g.run {
                RunState::Run | RunState::Stop => {
                    if parked {
                        g.parked -= 1;
                    }
                    return g.run == RunState::Run;
                }
                RunState::Pause => {
                    if !parked {
                        parked = true;
                        g.parked += 1;
                        self.changed.notify_all();
                    }
                    if let Some(pos) = g.tasks.iter().position(|(i, _)| *i == index) {
                        let (_, task) = g.tasks.remove(pos);
                        drop(g);
                        run_task(task);
                        g = self.lock();
                        continue;
                    }
                    g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

/// Kick every thread in `threads` out of `KVM_RUN` until `done()` or `timeout`; whether
/// `done()` became true.
pub fn kick_until(
    threads: &[std::thread::JoinHandle<()>],
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    use vmm_sys_util::signal::Killable;
    let deadline = Instant::now() + timeout;
    // A kicked vCPU usually leaves KVM_RUN within a fraction of a millisecond: look again
    // soon, then less and less often (a lost kick is retried at the latest every 2 ms).
    let mut nap = Duration::from_micros(50);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(2));
    }
}

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) handler for [`kick_signal`]: its only job is to interrupt `KVM_RUN`.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// LAPIC register offsets for the local interrupt pins.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
/// Delivery modes (bits 10:8 of an LVT entry).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *byte as _;
    }
}

/// Wire LINT0 to ExtINT (the legacy PIC's output, as on a PC) and LINT1 to NMI. Linux's
/// virtual-wire mode expects this wiring when it boots without ACPI.
fn set_lint(l: &mut kvm_lapic_state) {
    let lint0 = lapic_reg(l, APIC_LVT_LINT0);
    set_lapic_reg(
        l,
        APIC_LVT_LINT0,
        (lint0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lint1 = lapic_reg(l, APIC_LVT_LINT1);
    set_lapic_reg(l, APIC_LVT_LINT1, (lint1 & !0x700) | (APIC_MODE_NMI << 8));
}

/// One vCPU and what its run loop needs.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    counters: Arc<ExitCounters>,
    /// The MSRs a snapshot saves (KVM's list, read once by the builder).
    msr_index: Arc<Vec<u32>>,
}

/// What [`Vcpu::configure`] needs to know about the machine.
pub struct BootSetup<'a> {
    /// CPUID as KVM supports it; each vCPU gets its own copy, edited.
    pub cpuid: &'a kvm_bindings::CpuId,
    /// CPUID template.
    pub template: arch::cpuid::CpuTemplate,
    /// Number of vCPUs in the VM.
    pub num_cpus: u8,
    /// Kernel entry point (boot CPU only).
    pub entry: GuestAddress,
}

impl Vcpu {
    /// Create vCPU `index` in `vm`.
    pub fn new(
        vm: &VmFd,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        counters: Arc<ExitCounters>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(index.into())
            .map_err(|source| VcpuError::Kvm {
                index,
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        Ok(Self {
            fd,
            index,
            pio,
            mmio,
            mem,
            counters,
            msr_index: Arc::new(Vec::new()),
        })
    }

    /// The MSRs a snapshot of this vCPU saves.
    pub fn set_msr_index(&mut self, list: Arc<Vec<u32>>) {
        self.msr_index = list;
    }

    /// Read this vCPU's whole state (it must not be running: call it from a
    /// [`VcpuTask`] or before the vCPU is started).
    pub fn save_state(
        &mut self,
    ) -> Result<crate::snapshot::vcpu::VcpuState, crate::snapshot::vcpu::StateError> {
        let list = self.msr_index.clone();
        crate::snapshot::vcpu::VcpuState::save(&mut self.fd, &list)
    }

    /// This vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU, for callers that set up their own state (tests with tiny guests).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Kvm {
            index,
            what,
            source,
        }
    }

    /// Give the vCPU its CPUID, MSRs and LAPIC wiring; the boot CPU also gets the 64-bit
    /// entry state (registers, segments, page tables). Application processors stay in
    /// their reset state: the in-kernel LAPIC starts them when the boot CPU sends
    /// INIT/SIPI.
    pub fn configure(&self, setup: &BootSetup) -> Result<(), VcpuError> {
        let mut cpuid = setup.cpuid.clone();
        arch::cpuid::setup_cpuid(
            &mut cpuid,
            setup.template,
            self.index.into(),
            setup.num_cpus.into(),
        );
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("KVM_SET_CPUID2"))?;

        let entries = arch::msr::boot_msrs();
        let msrs = Msrs::from_entries(&entries)
            .map_err(|e| VcpuError::Regs(self.index, format!("MSR list: {e:?}")))?;
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.kvm_err("KVM_SET_MSRS"))?;
        if n != entries.len() {
            log::warn!(
                "vCPU {}: KVM accepted {n} of {} boot MSRs",
                self.index,
                entries.len()
            );
        }

        let mut lapic = self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC"))?;
        set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("KVM_SET_LAPIC"))?;

        if self.index == 0 {
            let sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
            let sregs = arch::regs::boot_sregs(&self.mem, sregs)
                .map_err(|e| VcpuError::Regs(self.index, e.to_string()))?;
            self.fd
                .set_sregs(&sregs)
                .map_err(self.kvm_err("KVM_SET_SREGS"))?;
            self.fd
                .set_fpu(&arch::regs::boot_fpu())
                .map_err(self.kvm_err("KVM_SET_FPU"))?;
            let regs = arch::regs::boot_regs(setup.entry.0, arch::layout::ZERO_PAGE_START);
            self.fd
                .set_regs(&regs)
                .map_err(self.kvm_err("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    fn count(&self, reason: ExitReason) {
        self.counters.exit(reason);
    }

    /// Run the guest until it resets, powers off or crashes (the outcome), or until the
    /// control says stop (None). Parks in between while the control says pause.
    pub fn run(mut self, control: &VcpuControl) -> Option<VmOutcome> {
        // Taken once: the exit borrows `self.fd` mutably, so the arms use these copies.
        let counters = self.counters.clone();
        let index = self.index;
        loop {
            if !control.may_run(index, |task| task(&mut self)) {
                return None;
            }
            let exit = self.fd.run();
            match exit {
                Ok(VcpuExit::IoIn(port, data)) => {
                    counters.exit(ExitReason::IoIn);
                    counters.pio(port);
                    self.pio.read(port.into(), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    counters.exit(ExitReason::IoOut);
                    counters.pio(port);
                    self.pio.write(port.into(), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    counters.exit(ExitReason::MmioRead);
                    counters.mmio(addr);
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    counters.exit(ExitReason::MmioWrite);
                    counters.mmio(addr);
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel irqchip KVM handles HLT itself; a HLT exit means
                    // the vCPU halted with interrupts it can never get: treat as power off.
                    self.count(ExitReason::Hlt);
                    log::info!("vCPU {} halted", self.index);
                    return Some(VmOutcome::PowerOff);
                }
                Ok(VcpuExit::Shutdown) => {
                    self.count(ExitReason::Shutdown);
                    return Some(VmOutcome::Crash(format!(
                        "vCPU {}: triple fault (KVM_EXIT_SHUTDOWN){}",
                        self.index,
                        self.where_am_i()
                    )));
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    self.count(ExitReason::SystemEvent);
                    return Some(match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmOutcome::PowerOff,
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmOutcome::Reset,
                        other => {
                            VmOutcome::Crash(format!("vCPU {}: system event {other}", self.index))
                        }
                    });
                }
                Ok(VcpuExit::InternalError) => {
                    self.count(ExitReason::InternalError);
                    // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal`
                    // member of the exit union.
                    let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                    let what = match internal.suberror {
                        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
                        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => {
                            "exception while delivering one"
                        }
                        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
                        _ => "internal error",
                    };
                    return Some(VmOutcome::Crash(format!(
                        "vCPU {}: KVM internal error, suberror {} ({what}){}",
                        self.index,
                        internal.suberror,
                        self.where_am_i()
                    )));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.count(ExitReason::FailEntry);
                    return Some(VmOutcome::Crash(format!(
                        "vCPU {}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}",
                        self.index
                    )));
                }
                Ok(VcpuExit::Intr) => self.count(ExitReason::Intr),
                Ok(other) => {
                    let what = format!("{other:?}");
                    counters.exit(ExitReason::Other);
                    return Some(VmOutcome::Crash(format!(
                        "vCPU {index}: unexpected KVM exit {what}"
                    )));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.count(ExitReason::Intr);
                }
                Err(e) => {
                    return Some(VmOutcome::Crash(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.index
                    )));
                }
            }
        }
    }

    /// " at RIP ... (code: ...)" for crash messages: the guest's instruction pointer and
    /// the bytes there, found by translating RIP through the guest's page tables.
    fn where_am_i(&self) -> String {
        let Ok(regs) = self.fd.get_regs() else {
            return String::new();
        };
        let mut s = format!(" at RIP {:#x}", regs.rip);
        if let Ok(sregs) = self.fd.get_sregs() {
            s += &format!(" (CS {:#x}, CR0 {:#x})", sregs.cs.selector, sregs.cr0);
        }
        if let Ok(t) = self.fd.translate_gva(regs.rip) {
            if t.valid != 0 {
                let mut code = [0u8; 16];
                // Read as much as lies inside guest RAM; bytes past the end stay zero.
                let n = (0..code.len())
                    .take_while(|&i| {
                        self.mem
                            .read_slice(
                                &mut code[i..i + 1],
                                GuestAddress(t.physical_address + i as u64),
                            )
                            .is_ok()
                    })
                    .count();
                if n > 0 {
                    s += &format!(", code: {}", hex(&code[..n]));
                }
            }
        }
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_wiring() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT_LINT0, 0x0001_0000); // masked, fixed
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT_LINT1), 0x0000_0400);
    }
}

//! One vCPU's state in a snapshot: everything KVM keeps for it, read by the vCPU's own
//! thread while it is parked, and written back into a new vCPU before it first runs.
//!
//! What is saved, and the order it is restored in (each step may depend on the ones
//! before: CPUID decides which MSRs and XSAVE features exist, the special registers decide
//! the mode the general ones are read in, the LAPIC comes before the MSRs that program its
//! timer, pending events last):
//!
//! | field | KVM ioctl | what |
//! |---|---|---|
//! | `cpuid` | `KVM_SET_CPUID2` | the CPUID table the guest saw |
//! | `mp_state` | `KVM_SET_MP_STATE` | running, halted, waiting for SIPI |
//! | `regs`, `sregs` | `KVM_SET_REGS`, `KVM_SET_SREGS` | general, segment and control registers |
//! | `xsave` | `KVM_SET_XSAVE` | FPU, SSE and AVX state (every x86 KVM host since Linux 2.6.36 has it) |
//! | `xcrs` | `KVM_SET_XCRS` | XCR0 |
//! | `debugregs` | `KVM_SET_DEBUGREGS` | DR0-DR7 |
//! | `lapic` | `KVM_SET_LAPIC` | the local APIC's registers |
//! | `msrs` | `KVM_SET_MSRS` | every MSR KVM lists (`KVM_GET_MSR_INDEX_LIST`): TSC, kvmclock, syscall entry, APIC timer deadline, ... |
//! | `events` | `KVM_SET_VCPU_EVENTS` | an exception, interrupt or NMI being delivered |
//!
//! On PVM hosts `KVM_SET_VCPU_EVENTS` can be refused (EINVAL). A snapshot is therefore
//! taken at a moment when no event is being delivered (see [`VcpuState::has_pending_event`]);
//! then the events carry nothing, and a refused `KVM_SET_VCPU_EVENTS` loses nothing.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::kvm_bytes;

/// One CPUID entry, readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Everything KVM keeps for one vCPU (see the module documentation).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// The CPUID table.
    pub cpuid: Vec<CpuidEntry>,
    /// `struct kvm_mp_state`.
    #[serde(with = "kvm_bytes")]
    pub mp_state: kvm_mp_state,
    /// `struct kvm_regs`.
    #[serde(with = "kvm_bytes")]
    pub regs: kvm_regs,
    /// `struct kvm_sregs`.
    #[serde(with = "kvm_bytes")]
    pub sregs: kvm_sregs,
    /// `struct kvm_xsave` (the legacy 4 KiB area).
    #[serde(with = "kvm_bytes")]
    pub xsave: kvm_xsave,
    /// `struct kvm_xcrs`.
    #[serde(with = "kvm_bytes")]
    pub xcrs: kvm_xcrs,
    /// `struct kvm_debugregs`.
    #[serde(with = "kvm_bytes")]
    pub debugregs: kvm_debugregs,
    /// `struct kvm_lapic_state`.
    #[serde(with = "kvm_bytes")]
    pub lapic: kvm_lapic_state,
    /// (index, value) of each MSR.
    pub msrs: Vec<(u32, u64)>,
    /// `struct kvm_vcpu_events`.
    #[serde(with = "kvm_bytes")]
    pub events: kvm_vcpu_events,
}

/// A vCPU ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StateError {
    /// The ioctl.
    pub what: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError { what, source }
}

impl VcpuState {
    /// Whether an exception, interrupt or NMI is being delivered: state that only
    /// `KVM_SET_VCPU_EVENTS` could restore.
    pub fn has_pending_event(&self) -> bool {
        let e = &self.events;
        e.exception.injected != 0
            || e.exception.pending != 0
            || e.interrupt.injected != 0
            || e.nmi.injected != 0
            || e.nmi.pending != 0
    }

    /// Read everything from a vCPU that is not running. `msr_index` lists the MSRs to
    /// save (those KVM refuses to read are skipped). Any I/O the vCPU's last exit left
    /// half-done is completed first (`KVM_RUN` with `immediate_exit`), so the registers are
    /// those after the instruction.
    pub fn save(fd: &mut VcpuFd, msr_index: &[u32]) -> Result<Self, StateError> {
        fd.set_kvm_immediate_exit(1);
        let flushed = fd.run().map(|_| ());
        fd.set_kvm_immediate_exit(0);
        match flushed {
            Err(e) if e.errno() == libc::EINTR => {}
            Ok(()) => {}
            Err(e) => return Err(err("KVM_RUN (immediate exit)")(e)),
        }
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_CPUID2"))?
            .as_slice()
            .iter()
            .map(|e| CpuidEntry {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .collect();
        Ok(Self {
            cpuid,
            mp_state: fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, msr_index)?,
            events: fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Write everything into a new vCPU, in the order of the module documentation.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), StateError> {
        let entries: Vec<_> = self
            .cpuid
            .iter()
            .map(|e| kvm_bindings::kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            })
            .collect();
        let cpuid = CpuId::from_entries(&entries).map_err(|_| StateError {
            what: "CPUID table",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(err("KVM_SET_SREGS"))?;
        set_xsave(fd, &self.xsave)?;
        fd.set_xcrs(&self.xcrs).map_err(err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(err("KVM_SET_LAPIC"))?;
        write_msrs(fd, &self.msrs)?;
        if let Err(e) = fd.set_vcpu_events(&self.events) {
            if self.has_pending_event() {
                return Err(err("KVM_SET_VCPU_EVENTS")(e));
            }
            // Nothing was being delivered: nothing is lost (PVM refuses this ioctl).
            log::info!("KVM_SET_VCPU_EVENTS refused ({e}); no event was pending, so none is lost");
        }
        Ok(())
    }
}

fn set_xsave(fd: &VcpuFd, x: &kvm_xsave) -> Result<(), StateError> {
    // SAFETY: `x` is a whole `struct kvm_xsave` (4 KiB region); without KVM_CAP_XSAVE2
    // negotiated KVM reads exactly that much.
    unsafe { fd.set_xsave(x) }.map_err(err("KVM_SET_XSAVE"))
}

/// The MSRs of `index` that KVM lets us read, with their values.
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(index.len());
    let mut rest = index;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        // KVM reads in order and stops at the first MSR it refuses.
        let n = fd.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        if n < rest.len() {
            log::debug!("MSR {:#x} cannot be read; not saved", rest[n]);
        }
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Write `msrs`; an MSR KVM refuses is logged and skipped.
fn write_msrs(fd: &VcpuFd, msrs: &[(u32, u64)]) -> Result<(), StateError> {
    let mut rest = msrs;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| StateError {
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.set_msrs(&list).map_err(err("KVM_SET_MSRS"))?;
        if n < rest.len() {
            log::warn!(
                "restore: KVM refused MSR {:#x} = {:#x}; skipped",
                rest[n].0,
                rest[n].1
            );
        }
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(())
}

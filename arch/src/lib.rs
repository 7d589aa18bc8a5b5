//! x86_64 architecture support for minivmm: the guest address map, and everything that
//! turns a blank vCPU into one that can enter a 64-bit Linux kernel (registers, GDT, page
//! tables, MSRs), plus the tables a kernel reads to find its CPUs and devices (MP table,
//! ACPI, CPUID).
//!
//! Nothing here talks to KVM: functions build `kvm-bindings` structures or write guest
//! memory, and the `vmm` crate applies them with ioctls. That keeps it unit-testable.
#![deny(missing_docs)]

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

/// Guest memory as minivmm uses it: anonymous mmap regions without dirty tracking.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[cfg(test)]
mod test_util;

//! Model-specific registers (MSRs) set on every vCPU before it runs.
//!
//! # The hardware concept
//! MSRs are numbered registers outside the normal register file, read and written with the
//! `rdmsr`/`wrmsr` instructions (and by a VMM with `KVM_SET_MSRS`). They hold per-CPU
//! configuration: where `syscall`/`sysenter` jump, the GS base swapped by `swapgs`, the
//! time-stamp counter, feature switches.
//!
//! A freshly created KVM vCPU already has reset values, but a VMM that may also *reuse* a
//! vCPU (or just wants a documented start) sets the ones the kernel relies on explicitly:
//! the fast-system-call MSRs are zeroed (Linux programs them in `syscall_init()`), the TSC
//! starts at 0, and `IA32_MISC_ENABLE` has "fast strings" on, as firmware leaves it on real
//! hardware (Linux warns when it is off, and `rep movs`/`rep stos` are slower without it).

use kvm_bindings::kvm_msr_entry;

/// `IA32_TIME_STAMP_COUNTER`: the TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`: code segment for `sysenter`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`: stack for `sysenter`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`: entry point for `sysenter`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`: miscellaneous feature switches.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_STAR`: segment selectors for `syscall`/`sysret`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`: 64-bit `syscall` entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`: compatibility-mode `syscall` entry point.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK`: RFLAGS bits cleared by `syscall`.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE`: the GS base `swapgs` exchanges with the current one.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE` bit 0: fast-string operations enabled.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;

fn entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSR values every vCPU starts with, for `KVM_SET_MSRS`.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_values() {
        let msrs = boot_msrs();
        assert_eq!(msrs.len(), 10);
        let mut indices: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), msrs.len(), "duplicate MSR");
        for m in &msrs {
            let expect = if m.index == 0x1a0 { 1 } else { 0 };
            assert_eq!(m.data, expect, "MSR {:#x}", m.index);
        }
        assert!(msrs.iter().any(|m| m.index == 0xc000_0082));
        assert!(msrs.iter().any(|m| m.index == 0x10));
    }
}

//! What the guest sees when it executes `CPUID`: topology, the hypervisor bit, and the CPU
//! templates that hide features.
//!
//! # The hardware concept
//! `CPUID` takes a *leaf* number in EAX (and for some leaves a *subleaf* in ECX) and returns
//! four registers of information: vendor, family/model, feature bits, cache and topology
//! descriptions. Under KVM the instruction traps to the hypervisor, which answers from a
//! table the VMM installs with `KVM_SET_CPUID2` (one table per vCPU). The VMM starts from
//! `KVM_GET_SUPPORTED_CPUID` — everything the host CPU *and* KVM can offer — and edits it.
//!
//! Edits made for every template ([`setup_cpuid`]):
//! - **leaf 1** EBX: initial APIC id (bits 31:24) = the vCPU index, so it matches the MP
//!   table; logical processor count (23:16) = number of vCPUs; CLFLUSH line size (15:8) =
//!   8 (x 8 bytes = 64). EDX bit 28 (HTT, "the count field is valid") is set when there is
//!   more than one vCPU. ECX bit 31 (*hypervisor present*) is set so the guest knows it is
//!   virtualised and looks at the hypervisor leaves.
//! - **leaf 4** (deterministic cache parameters, Intel): EAX 31:26 = cores per package - 1
//!   (every vCPU is one core of one package); EAX 25:14 = logical CPUs sharing the cache - 1:
//!   0 for per-core caches (levels 1 and 2), all vCPUs for level 3 and above.
//! - **leaves 0xB and 0x1F** (extended topology): subleaf 0 is the SMT level (one thread
//!   per core: shift 0, 1 CPU), subleaf 1 the core level (shift = bits needed for the vCPU
//!   count, `num_cpus` CPUs), subleaf 2 terminates the list; EDX is the x2APIC id (= vCPU
//!   index) in every subleaf. Leaf 0x1F is only edited if KVM offers it.
//! - **leaf 6** (thermal and power management) is cleared: the guest cannot control host
//!   frequency or read host thermal sensors.
//! - **leaf 0x4000_0000** (hypervisor identification, "KVMKVMKVM\0\0\0") and the KVM
//!   feature leaf 0x4000_0001 are kept: Linux uses them to find kvmclock and
//!   paravirtual features. Its EAX (highest hypervisor leaf) is made to match the highest
//!   0x4000_00xx leaf actually in the table.
//!
//! # Templates
//! [`CpuTemplate::Host`] passes everything else through. [`CpuTemplate::Pvm`] is for hosts
//! whose KVM is PVM (no hardware virtualisation: guest kernel code runs in KVM's
//! instruction emulator, which cannot execute XSAVE/XRSTOR, SMAP's CLAC/STAC, CMPXCHG16B
//! and more; see the project's notes on the PVM host). It reduces leaf 1 ECX to SSE3,
//! x2APIC, TSC-deadline and hypervisor, clears leaf 7 (all subleaves, including the
//! subleaf count) and leaf 0xD (XSAVE state components). On PVM, host feature bits also
//! show through CPUID regardless of the table, so the template comes with extra kernel
//! command-line options ([`CpuTemplate::extra_kernel_cmdline`]) that make Linux ignore
//! them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX bit 0: SSE3.
pub const LEAF1_ECX_SSE3: u32 = 1 << 0;
/// Leaf 1 ECX bit 21: x2APIC.
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX bit 24: TSC-deadline timer mode of the local APIC.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 31: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, the logical processor count in EBX 23:16 is valid.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size reported in leaf 1 EBX 15:8, in 8-byte units (64 bytes).
pub const CLFLUSH_SIZE: u32 = 8;
/// First hypervisor leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// Topology level type "SMT" in leaves 0xB/0x1F ECX 15:8.
const LEVEL_SMT: u32 = 1;
/// Topology level type "core" in leaves 0xB/0x1F ECX 15:8.
const LEVEL_CORE: u32 = 2;

/// Errors about CPU templates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not a known template.
    #[error("unknown CPU template {0:?} (expected \"host\", \"pvm\" or \"auto\")")]
    UnknownTemplate(String),
}

/// A named set of CPUID edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTemplate {
    /// What KVM supports, plus topology and the hypervisor bit.
    Host,
    /// [`CpuTemplate::Host`] minus the features the PVM host's emulator cannot run.
    Pvm,
}

impl CpuTemplate {
    /// Kernel command-line options the template needs (empty for `Host`).
    ///
    /// For `Pvm`: on a PVM host, feature bits of the host CPU show through `CPUID` even
    /// when the table clears them, so Linux is told to ignore them with `clearcpuid=` (the
    /// features whose instructions the emulator cannot run or which make the kernel use
    /// them: SMAP's `clac`/`stac`, XSAVE, AVX, ...). (`noxsave` is not needed: Linux 6.1
    /// no longer knows it, and `clearcpuid=xsave` does the same.)
    ///
    /// `erms`, `fsrm` and `rep_good` (a flag Linux sets itself for Intel family 6) are
    /// cleared too, so that the guest kernel copies and clears memory with plain moves
    /// (`copy_user_generic_unrolled`, `clear_page_orig`, `memcpy_orig`, `copy_page_regs`)
    /// instead of `rep movsb`/`rep stosb`: the emulator runs a `rep` string instruction
    /// one element at a time, each costing about as much as a whole instruction, so a
    /// 4 KiB copy with `rep movsb` is 4 096 emulated steps and with plain moves ~1 100.
    /// Measured in the Debian guest (resources/bench/guest-ops.py, 2026-12-04): reading
    /// a cached page 12.6 ms -> 6.3 ms, zeroing a page 6.5 -> 4.2 ms, the boot to
    /// systemd-networkd's start 177 -> 162 s, although a kernel build ran beside the
    /// second boot (factor 4.37 against 3.41). On 2026-12-03 `erms,fsrm` alone (`rep
    /// movsq`/`rep stosq`) was the default for a few hours and Debian guests then showed
    /// more bad reads; that was before the vector guard (the guest README, "vminit")
    /// ended user processes overwriting each other's AVX registers, and with plain moves
    /// the emulator runs no `rep` string instruction for these at all.
    pub fn extra_kernel_cmdline(&self) -> &'static str {
        match self {
            CpuTemplate::Host => "",
            CpuTemplate::Pvm => {
                "clearcpuid=smap,smep,pcid,popcnt,xsave,avx,fsgsbase,invpcid,rdrand,erms,fsrm,rep_good"
            }
        }
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuTemplate::Host => "host",
            CpuTemplate::Pvm => "pvm",
        })
    }
}

impl FromStr for CpuTemplate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "host" => Ok(CpuTemplate::Host),
            "pvm" => Ok(CpuTemplate::Pvm),
            _ => Err(Error::UnknownTemplate(s.to_string())),
        }
    }
}

/// What the user asked for: a fixed template, or "pick one for this host".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTemplateChoice {
    /// `pvm` when the host's KVM is PVM, `host` otherwise.
    Auto,
    /// This template, whatever the host.
    Fixed(CpuTemplate),
}

impl fmt::Display for CpuTemplateChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuTemplateChoice::Auto => f.write_str("auto"),
            CpuTemplateChoice::Fixed(t) => t.fmt(f),
        }
    }
}

impl FromStr for CpuTemplateChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(CpuTemplateChoice::Auto),
            _ => s.parse().map(CpuTemplateChoice::Fixed),
        }
    }
}

/// Where the PVM KVM module shows up when loaded.
const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Whether the host's KVM is PVM (the `kvm_pvm` module is loaded).
pub fn host_is_pvm() -> bool {
    Path::new(PVM_MODULE_PATH).exists()
}

/// Turns a choice into a template, with a sentence saying why (for the log).
pub fn resolve(choice: CpuTemplateChoice) -> (CpuTemplate, String) {
    resolve_with(choice, host_is_pvm())
}

fn resolve_with(choice: CpuTemplateChoice, is_pvm: bool) -> (CpuTemplate, String) {
    match choice {
        CpuTemplateChoice::Fixed(t) => (t, format!("CPU template {t}: chosen by the user")),
        CpuTemplateChoice::Auto if is_pvm => (
            CpuTemplate::Pvm,
            format!("CPU template pvm: auto, because {PVM_MODULE_PATH} exists (PVM host)"),
        ),
        CpuTemplateChoice::Auto => (
            CpuTemplate::Host,
            format!("CPU template host: auto, {PVM_MODULE_PATH} does not exist"),
        ),
    }
}

/// Number of bits needed to number `n` items (`ceil(log2(n))`, 0 for n <= 1).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Replaces bits `lo..=hi` of `reg` with `value` (truncated to fit).
fn set_bits(reg: &mut u32, hi: u32, lo: u32, value: u32) {
    let mask = (u32::MAX >> (31 - (hi - lo))) << lo;
    *reg = (*reg & !mask) | ((value << lo) & mask);
}

/// Rewrites (or adds) one subleaf of an indexed leaf.
fn put_subleaf(cpuid: &mut CpuId, entry: kvm_cpuid_entry2) {
    if let Some(e) = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == entry.function && e.index == entry.index)
    {
        *e = entry;
    } else if cpuid.push(entry).is_err() {
        log::warn!(
            "CPUID table full: cannot add leaf {:#x} subleaf {}",
            entry.function,
            entry.index
        );
    }
}

/// Leaves 0xB / 0x1F for one vCPU: SMT level, core level, terminator.
fn write_topology_leaf(cpuid: &mut CpuId, function: u32, cpu_index: u32, num_cpus: u32) {
    let core_shift = bits_for(num_cpus);
    let levels = [
        (0, 1, LEVEL_SMT),                  // one thread per core
        (core_shift, num_cpus, LEVEL_CORE), // num_cpus cores per package
        (0, 0, 0),                          // invalid level: end of list
    ];
    for (index, (shift, count, level)) in levels.into_iter().enumerate() {
        let index = index as u32;
        put_subleaf(
            cpuid,
            kvm_cpuid_entry2 {
                function,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: count,
                ecx: (level << 8) | index,
                edx: cpu_index,
                padding: [0; 3],
            },
        );
    }
    // Drop any further host subleaves: the list ended at subleaf 2.
    for e in cpuid.as_mut_slice() {
        if e.function == function && e.index > 2 {
            *e = kvm_cpuid_entry2 {
                function,
                index: e.index,
                flags: e.flags,
                ecx: e.index,
                edx: cpu_index,
                ..Default::default()
            };
        }
    }
}

/// Edits the table from `KVM_GET_SUPPORTED_CPUID` for vCPU `cpu_index` of `num_cpus`,
/// applying `template` (see the module docs for every edit and why).
pub fn setup_cpuid(cpuid: &mut CpuId, template: CpuTemplate, cpu_index: u32, num_cpus: u32) {
    let num_cpus = num_cpus.max(1);
    if template == CpuTemplate::Pvm && cpu_index == 0 {
        log::info!("CPU template pvm: CPUID leaf 1 ECX reduced, leaves 7 and 0xD cleared");
    }
    let has = |cpuid: &CpuId, f: u32| cpuid.as_slice().iter().any(|e| e.function == f);
    let has_0b = has(cpuid, 0xb);
    let has_1f = has(cpuid, 0x1f);
    let max_hv_leaf = cpuid
        .as_slice()
        .iter()
        .map(|e| e.function)
        .filter(|f| (HYPERVISOR_LEAF + 1..=HYPERVISOR_LEAF + 0xff).contains(f))
        .max();

    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                set_bits(&mut e.ebx, 31, 24, cpu_index);
                set_bits(&mut e.ebx, 23, 16, num_cpus.min(0xff));
                set_bits(&mut e.ebx, 15, 8, CLFLUSH_SIZE);
                if num_cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if template == CpuTemplate::Pvm {
                    e.ecx &= LEAF1_ECX_SSE3
                        | LEAF1_ECX_X2APIC
                        | LEAF1_ECX_TSC_DEADLINE
                        | LEAF1_ECX_HYPERVISOR;
                }
            }
            // Subleaves with cache type 0 (EAX 4:0) end the list: left as they are.
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { num_cpus - 1 } else { 0 };
                set_bits(&mut e.eax, 31, 26, (num_cpus - 1).min(0x3f));
                set_bits(&mut e.eax, 25, 14, sharing.min(0xfff));
            }
            6 => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            7 | 0xd if template == CpuTemplate::Pvm => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            HYPERVISOR_LEAF => {
                if let Some(max) = max_hv_leaf {
                    e.eax = max;
                }
            }
            _ => {}
        }
    }
    if has_0b {
        write_topology_leaf(cpuid, 0xb, cpu_index, num_cpus);
    }
    if has_1f {
        write_topology_leaf(cpuid, 0x1f, cpu_index, num_cpus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    /// A table shaped like KVM_GET_SUPPORTED_CPUID's on a modern Intel host.
    fn fake_table() -> CpuId {
        CpuId::from_entries(&[
            leaf(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            // Leaf 1: host APIC id 0x11, count 0x40, all ECX features but hypervisor.
            leaf(1, 0, [0x806f8, 0x1140_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
            leaf(4, 0, [0xfc00_4121, 0x01c0_003f, 0x3f, 0]), // L1d
            leaf(4, 1, [0xfc00_4122, 0x01c0_003f, 0x3f, 0]), // L1i
            leaf(4, 2, [0xfc01_c143, 0x03c0_003f, 0x7ff, 0]), // L2
            leaf(4, 3, [0xfc3f_c163, 0x0380_003f, 0xffff, 6]), // L3
            leaf(4, 4, [0, 0, 0, 0]),                        // end of list
            leaf(6, 0, [0x77, 2, 9, 0]),
            leaf(7, 0, [2, 0xf3bf_b7ff, 0x1bc0_5ffe, 0xbc18_4410]),
            leaf(7, 1, [0x1c30, 0, 0, 0]),
            leaf(0xb, 0, [1, 2, 0x100, 0x11]),
            leaf(0xb, 1, [7, 0x40, 0x201, 0x11]),
            leaf(0xd, 0, [0x2e7, 0xa88, 0xa88, 0]),
            leaf(0xd, 1, [0xf, 0, 0, 0]),
            leaf(0x1f, 0, [1, 2, 0x100, 0x11]),
            leaf(0x1f, 1, [7, 0x40, 0x201, 0x11]),
            leaf(0x1f, 2, [0, 0, 2, 0x11]),
            leaf(0x1f, 3, [9, 0x80, 0x503, 0x11]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]),
            leaf(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
        ])
        .unwrap()
    }

    fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    fn check_common(c: &CpuId, cpu: u32, n: u32) {
        let l1 = get(c, 1, 0);
        assert_eq!(l1.ebx >> 24, cpu, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, n, "logical count");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "clflush");
        assert_eq!(l1.edx & LEAF1_EDX_HTT != 0, n > 1, "HTT");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        for sub in 0..4 {
            let l4 = get(c, 4, sub);
            assert_eq!(l4.eax >> 26, n - 1, "cores per package");
            let sharing = (l4.eax >> 14) & 0xfff;
            assert_eq!(sharing, if sub == 3 { n - 1 } else { 0 });
            assert_eq!(l4.eax & 0x3fff, get(&fake_table(), 4, sub).eax & 0x3fff);
        }
        assert_eq!(
            get(c, 4, 4),
            leaf(4, 4, [0; 4]),
            "null cache subleaf untouched"
        );
        assert_eq!(get(c, 6, 0), leaf(6, 0, [0; 4]));
        for f in [0xb, 0x1f] {
            let smt = get(c, f, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, cpu));
            let core = get(c, f, 1);
            assert_eq!(core.ebx, n);
            assert_eq!(core.ecx, 0x201);
            assert_eq!(core.edx, cpu);
            assert!(1u32 << core.eax >= n, "shift covers {n} cpus");
            assert!(core.eax == 0 || 1u32 << (core.eax - 1) < n, "shift minimal");
            let end = get(c, f, 2);
            assert_eq!((end.ecx >> 8) & 0xff, 0, "terminator level type");
            assert_eq!(end.edx, cpu);
        }
        // The host's 4th topology level is gone.
        assert_eq!((get(c, 0x1f, 3).ecx >> 8) & 0xff, 0);
        // KVM's signature and max hypervisor leaf.
        let hv = get(c, HYPERVISOR_LEAF, 0);
        assert_eq!(hv, get(&fake_table(), HYPERVISOR_LEAF, 0));
        let mut sig = Vec::new();
        for r in [hv.ebx, hv.ecx, hv.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        // Untouched leaves.
        assert_eq!(get(c, 0, 0), get(&fake_table(), 0, 0));
        assert_eq!(get(c, 0x8000_0001, 0), get(&fake_table(), 0x8000_0001, 0));
    }

    #[test]
    fn host_template() {
        for n in [1, 2, 8] {
            for cpu in [0, n - 1] {
                let mut c = fake_table();
                setup_cpuid(&mut c, CpuTemplate::Host, cpu, n);
                check_common(&c, cpu, n);
                // Host features pass through.
                assert_eq!(get(&c, 1, 0).ecx, 0x7ffa_fbff | LEAF1_ECX_HYPERVISOR);
                assert_eq!(get(&c, 7, 0), get(&fake_table(), 7, 0));
                assert_eq!(get(&c, 0xd, 0), get(&fake_table(), 0xd, 0));
            }
        }
    }

    #[test]
    fn pvm_template() {
        for n in [1, 2, 8] {
            for cpu in [0, n - 1] {
                let mut c = fake_table();
                setup_cpuid(&mut c, CpuTemplate::Pvm, cpu, n);
                check_common(&c, cpu, n);
                assert_eq!(
                    get(&c, 1, 0).ecx,
                    LEAF1_ECX_SSE3
                        | LEAF1_ECX_X2APIC
                        | LEAF1_ECX_TSC_DEADLINE
                        | LEAF1_ECX_HYPERVISOR
                );
                // Leaf 1 EDX (SSE2 etc.) is kept.
                assert_eq!(
                    get(&c, 1, 0).edx & !LEAF1_EDX_HTT,
                    0xbfeb_fbff & !LEAF1_EDX_HTT
                );
                for (f, i) in [(7, 0), (7, 1), (0xd, 0), (0xd, 1)] {
                    assert_eq!(get(&c, f, i), leaf(f, i, [0; 4]), "leaf {f:#x}.{i}");
                }
            }
        }
    }

    #[test]
    fn adds_missing_topology_subleaves_and_fixes_hv_max() {
        let mut c = CpuId::from_entries(&[
            leaf(1, 0, [0; 4]),
            leaf(0xb, 0, [1, 2, 0x100, 0]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x4000_0001, 0, [0; 4]),
            leaf(0x4000_0010, 0, [0; 4]),
        ])
        .unwrap();
        setup_cpuid(&mut c, CpuTemplate::Host, 3, 4);
        assert_eq!(get(&c, 0xb, 1).eax, 2);
        assert_eq!(get(&c, 0xb, 1).edx, 3);
        assert_eq!(get(&c, 0xb, 2).ecx, 2);
        assert_eq!(get(&c, HYPERVISOR_LEAF, 0).eax, 0x4000_0010);
        // No 0x1F was offered, none is invented.
        assert!(!c.as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 255].map(bits_for),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }

    #[test]
    fn names() {
        assert_eq!("host".parse::<CpuTemplate>().unwrap(), CpuTemplate::Host);
        assert_eq!("pvm".parse::<CpuTemplate>().unwrap(), CpuTemplate::Pvm);
        assert_eq!(CpuTemplate::Pvm.to_string(), "pvm");
        assert_eq!(CpuTemplate::Host.to_string(), "host");
        let err = "intel".parse::<CpuTemplate>().unwrap_err();
        assert!(err.to_string().contains("\"intel\""), "{err}");
        assert_eq!(
            "auto".parse::<CpuTemplateChoice>().unwrap(),
            CpuTemplateChoice::Auto
        );
        assert_eq!(
            "pvm".parse::<CpuTemplateChoice>().unwrap(),
            CpuTemplateChoice::Fixed(CpuTemplate::Pvm)
        );
        assert_eq!(CpuTemplateChoice::Auto.to_string(), "auto");
    }

    #[test]
    fn resolve_choices() {
        let (t, why) = resolve_with(CpuTemplateChoice::Auto, true);
        assert_eq!(t, CpuTemplate::Pvm);
        assert!(why.contains("kvm_pvm"), "{why}");
        assert_eq!(
            resolve_with(CpuTemplateChoice::Auto, false).0,
            CpuTemplate::Host
        );
        let fixed = CpuTemplateChoice::Fixed(CpuTemplate::Host);
        assert_eq!(resolve_with(fixed, true).0, CpuTemplate::Host);
        // The real probe agrees with the file system.
        let expect = if Path::new(PVM_MODULE_PATH).exists() {
            CpuTemplate::Pvm
        } else {
            CpuTemplate::Host
        };
        assert_eq!(resolve(CpuTemplateChoice::Auto).0, expect);
    }

    #[test]
    fn cmdline_extras() {
        assert_eq!(CpuTemplate::Host.extra_kernel_cmdline(), "");
        let pvm = CpuTemplate::Pvm.extra_kernel_cmdline();
        assert!(pvm.starts_with("clearcpuid=smap,"));
        for f in ["smap", "xsave", "avx", "rdrand", "erms", "fsrm", "rep_good"] {
            assert!(pvm.contains(f), "{pvm}");
        }
    }
}

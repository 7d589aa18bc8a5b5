//! How fast this host runs guest *kernel* code, measured once per test run, and the
//! deadlines derived from it.
//!
//! On a PVM host (no VT-x/AMD-V) KVM runs every guest kernel instruction in its instruction
//! emulator, and that emulator's speed differs several times between machines and days
//! (0.45 s per million loop iterations one week, 1.95 s the next, on the same kind of
//! machine). A Linux boot is almost all kernel code, so a deadline written in wall-clock
//! seconds for one machine fails on the next. The end-to-end tests therefore never use a
//! fixed wall-clock deadline for guest work. Instead:
//!
//! 1. **Calibration**: [`measure`] runs a hand-assembled loop (`dec rcx; jnz`) at CPL 0 in a
//!    bare KVM VM (long mode, no kernel, no devices) and times it. Its result,
//!    nanoseconds per iteration, divided by the [`REFERENCE_NS_PER_ITER`] of the machine the
//!    base budgets were written on, is the **speed factor** (never below 1: a faster host,
//!    VT-x included, keeps the base budgets). `./test.sh` measures it once, prints it and
//!    hands it to every test binary in `MINIVMM_TEST_SPEED` (ns per iteration); a test run
//!    on its own measures it itself (once per test binary, ~1 s).
//! 2. **A clock that follows the guest**: a [`Budget`] is spent in CPU time of the minivmm
//!    process (vCPU threads in `KVM_RUN`, where the emulator runs, plus device threads),
//!    read from `/proc/PID/stat`, not in wall time. A machine that gives the VM only half a
//!    core (another guest, a build, a CPU-bound neighbour) stretches the wall-clock length
//!    of the deadline accordingly. A guest that waits (sleeps, idles, waits for a peer)
//!    burns no CPU, so each budget also has a wall-clock cap, [`WALL_CAP`] times longer,
//!    which only a stuck guest ever reaches.
//!
//! A slow or busy machine thus makes the suite slower, never red. `MINIVMM_TEST_SLACK`
//! (a number, default 1) multiplies every budget, for debugging under a profiler.

use std::fs::File;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

/// Nanoseconds per iteration of the calibration loop on the machine the base budgets were
/// measured on (a PVM host on 2026-11-25: 0.45 s per million iterations).
pub const REFERENCE_NS_PER_ITER: f64 = 450.0;

/// How many times longer than its CPU budget a VM may take in wall-clock time.
pub const WALL_CAP: u32 = 4;

/// Iterations of the loop per measurement: ~0.1 s on the reference PVM host.
const ITERATIONS: u32 = 200_000;

/// Where the loop starts in guest memory (above the boot page tables and GDT).
const CODE: u64 = 0x10_0000;

/// Time one run of `ITERATIONS` iterations of `dec rcx; jnz` at CPL 0 in long mode, in
/// nanoseconds per iteration (the best of five runs: the floor is the emulator's speed,
/// anything above it is another process taking the core).
pub fn measure() -> f64 {
    let kvm = Kvm::new().expect("opening /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let layout = vmm::memory::layout(16 << 20, None).expect("memory layout");
    let mem = vmm::memory::create(&layout).expect("guest memory");
    vmm::memory::register(&vm, &mem).expect("KVM_SET_USER_MEMORY_REGION");
    let n = ITERATIONS.to_le_bytes();
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xb9, n[0], n[1], n[2], n[3], // mov ecx, ITERATIONS
        0x48, 0xff, 0xc9,             // again: dec rcx
        0x75, 0xfb,                   // jnz again
        0xf4,                         // hlt
    ];
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let sregs = arch::regs::boot_sregs(&mem, vcpu.get_sregs().unwrap()).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&arch::regs::boot_regs(CODE, 0)).unwrap();
        let start = Instant::now();
        loop {
            match vcpu.run().expect("KVM_RUN") {
                VcpuExit::Hlt => break,
                // A host signal or a timer can bring the vCPU out early: keep running.
                VcpuExit::Intr => continue,
                other => panic!("calibration guest: unexpected exit {other:?}"),
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
        best = best.min(ns);
    }
    best
}

/// This host's nanoseconds per calibration iteration: `MINIVMM_TEST_SPEED` if set (what
/// `./test.sh` measured), else measured now (once per process).
pub fn ns_per_iter() -> f64 {
    static NS: OnceLock<f64> = OnceLock::new();
    *NS.get_or_init(|| {
        if let Some(v) = std::env::var("MINIVMM_TEST_SPEED")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
        {
            return v;
        }
        let v = measure();
        eprintln!(
            "minivmm tests: guest kernel speed {v:.0} ns per loop iteration, factor {:.2} \
             (measured now; ./test.sh measures once and sets MINIVMM_TEST_SPEED)",
            factor_of(v)
        );
        v
    })
}

/// The speed factor for a measurement: how many times slower than the reference host,
/// at least 1.
pub fn factor_of(ns_per_iter: f64) -> f64 {
    (ns_per_iter / REFERENCE_NS_PER_ITER).max(1.0)
}

/// This host's speed factor times `MINIVMM_TEST_SLACK`.
pub fn factor() -> f64 {
    let slack = std::env::var("MINIVMM_TEST_SLACK")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(1.0);
    factor_of(ns_per_iter()) * slack
}

/// A deadline for a VM's work: `cpu` of CPU time of its minivmm process, or `cpu` times
/// [`WALL_CAP`] of wall-clock time, whichever comes first. Both are the base value (what
/// the reference host needs, with margin) times [`factor`].
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// CPU time the VM may use.
    pub cpu: Duration,
    /// Wall-clock time it may take.
    pub wall: Duration,
}

impl Budget {
    /// A budget of `base` on the reference host, scaled for this one.
    pub fn scaled(base: Duration) -> Self {
        let cpu = base.mul_f64(factor());
        Self {
            cpu,
            wall: cpu * WALL_CAP,
        }
    }

    /// The sum of two budgets (a boot and the work after it).
    pub fn plus(self, other: Budget) -> Self {
        Self {
            cpu: self.cpu + other.cpu,
            wall: self.wall + other.wall,
        }
    }
}

/// The clock a [`Budget`] is spent on: CPU time of one process, and wall time since
/// [`BudgetClock::start`].
pub struct BudgetClock {
    stat: Option<File>,
    start: Instant,
    tick: f64,
    last_cpu: Duration,
}

impl BudgetClock {
    /// Start counting for process `pid`.
    pub fn start(pid: u32) -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            stat: File::open(format!("/proc/{pid}/stat")).ok(),
            start: Instant::now(),
            tick: 1.0 / if hz > 0 { hz as f64 } else { 100.0 },
            last_cpu: Duration::ZERO,
        }
    }

    /// CPU time (user + system, all threads) the process has used so far; the last value
    /// read once it has ended.
    pub fn cpu(&mut self) -> Duration {
        use std::io::{Read, Seek};
        let Some(f) = self.stat.as_mut() else {
            return self.last_cpu;
        };
        let mut s = String::new();
        if f.rewind().is_err() || f.read_to_string(&mut s).is_err() {
            return self.last_cpu;
        }
        // "pid (comm) state ppid ...": fields after the ')' ; utime and stime are the 14th
        // and 15th fields of the whole line, the 12th and 13th after the comm.
        let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
            return self.last_cpu;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu = Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 * self.tick);
        self.last_cpu = self.last_cpu.max(cpu);
        self.last_cpu
    }

    /// Wall time since the start.
    pub fn wall(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether `budget` is spent (CPU or wall).
    pub fn spent(&mut self, budget: &Budget) -> bool {
        self.wall() > budget.wall || self.cpu() > budget.cpu
    }
}

//! What the guest made the VMM do: KVM exits by reason (always, one atomic add per exit),
//! and with [`ExitCounters::new`]`(true)` (`--stats`) by I/O port and MMIO address too.
//! Counting exits is the quickest way for a learner to see where a VMM spends its time (and
//! why virtio moved data off the exit path).
//!
//! The per-address maps are bounded: a guest can touch every address there is, and the
//! VMM's memory must not grow with that. Past [`MAX_ADDRESSES`] distinct addresses, further
//! new ones are counted together as "other".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinct ports (and, separately, MMIO addresses) counted one by one.
pub const MAX_ADDRESSES: usize = 4096;

/// Why a vCPU came back from `KVM_RUN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// An `in` from a port no in-kernel device handles.
    IoIn,
    /// An `out` to such a port.
    IoOut,
    /// A read of an MMIO address KVM does not handle.
    MmioRead,
    /// A write to one.
    MmioWrite,
    /// `hlt` without an in-kernel irqchip.
    Hlt,
    /// A triple fault.
    Shutdown,
    /// A system event (reset, shutdown) from KVM.
    SystemEvent,
    /// KVM could not run or emulate the guest.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// A signal (a kick: pause, stop) interrupted `KVM_RUN`.
    Intr,
    /// Anything else.
    Other,
}

impl ExitReason {
    /// All reasons, in report order.
    pub const ALL: [ExitReason; 11] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::InternalError,
        ExitReason::FailEntry,
        ExitReason::Intr,
        ExitReason::Other,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io-in",
            ExitReason::IoOut => "io-out",
            ExitReason::MmioRead => "mmio-read",
            ExitReason::MmioWrite => "mmio-write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system-event",
            ExitReason::InternalError => "internal-error",
            ExitReason::FailEntry => "fail-entry",
            ExitReason::Intr => "intr",
            ExitReason::Other => "other",
        }
    }
}

/// A bounded map of counts by address.
#[derive(Default)]
struct AddressCounts {
    counts: HashMap<u64, u64>,
    other: u64,
}

impl AddressCounts {
    fn add(&mut self, addr: u64) {
        if let Some(n) = self.counts.get_mut(&addr) {
            *n += 1;
        } else if self.counts.len() < MAX_ADDRESSES {
            self.counts.insert(addr, 1);
        } else {
            self.other += 1;
        }
    }
}

/// Exit counters shared by all vCPU threads.
pub struct ExitCounters {
    by_reason: [AtomicU64; ExitReason::ALL.len()],
    /// Per port and per MMIO address, when asked for.
    detailed: Option<(Mutex<AddressCounts>, Mutex<AddressCounts>)>,
}

/// Exit counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitSnapshot {
    /// (reason, count), every reason, in [`ExitReason::ALL`] order.
    pub by_reason: Vec<(&'static str, u64)>,
    /// The busiest I/O ports, busiest first (empty unless detailed).
    pub busiest_ports: Vec<(u16, u64)>,
    /// The busiest MMIO addresses, busiest first (empty unless detailed).
    pub busiest_mmio: Vec<(u64, u64)>,
    /// Accesses to addresses past the per-address limit (ports, MMIO).
    pub other_addresses: (u64, u64),
}

impl ExitCounters {
    /// Counters; per-address ones too when `detailed`.
    pub fn new(detailed: bool) -> Self {
        Self {
            by_reason: Default::default(),
            detailed: detailed.then(Default::default),
        }
    }

    /// Count one exit.
    pub fn exit(&self, reason: ExitReason) {
        let i = ExitReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(ExitReason::ALL.len() - 1);
        self.by_reason[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Count one port access (when detailed).
    pub fn pio(&self, port: u16) {
        if let Some((pio, _)) = &self.detailed {
            lock(pio).add(port.into());
        }
    }

    /// Count one MMIO access (when detailed).
    pub fn mmio(&self, addr: u64) {
        if let Some((_, mmio)) = &self.detailed {
            lock(mmio).add(addr);
        }
    }

    /// The counts now, with the `top` busiest addresses of each kind.
    pub fn snapshot(&self, top: usize) -> ExitSnapshot {
        let by_reason = ExitReason::ALL
            .iter()
            .zip(&self.by_reason)
            .map(|(r, c)| (r.name(), c.load(Ordering::Relaxed)))
            .collect();
        let busiest = |m: &Mutex<AddressCounts>| {
            let m = lock(m);
            let mut v: Vec<(u64, u64)> = m.counts.iter().map(|(a, n)| (*a, *n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(top);
            (v, m.other)
        };
        match &self.detailed {
            None => ExitSnapshot {
                by_reason,
                ..Default::default()
            },
            Some((pio, mmio)) => {
                let (ports, other_pio) = busiest(pio);
                let (addrs, other_mmio) = busiest(mmio);
                ExitSnapshot {
                    by_reason,
                    busiest_ports: ports.into_iter().map(|(p, n)| (p as u16, n)).collect(),
                    busiest_mmio: addrs,
                    other_addresses: (other_pio, other_mmio),
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `--stats` report: exits by reason (non-zero ones), the busiest ports and MMIO
/// addresses, and the unclaimed accesses.
pub fn report(
    exits: &ExitSnapshot,
    unclaimed_pio: (u64, u64),
    unclaimed_mmio: (u64, u64),
) -> String {
    let mut out = String::from("minivmm stats\n  KVM exits by reason:\n");
    let mut reasons: Vec<_> = exits.by_reason.iter().filter(|(_, n)| *n > 0).collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total: u64 = exits.by_reason.iter().map(|(_, n)| n).sum();
    for (reason, n) in reasons {
        let _ = writeln!(out, "    {reason:<16} {n:>10}");
    }
    let _ = writeln!(out, "    {:<16} {total:>10}", "total");
    out.push_str("  busiest I/O ports:\n");
    for (port, n) in &exits.busiest_ports {
        let _ = writeln!(out, "    {:<16} {n:>10}", format!("{port:#06x}"));
    }
    out.push_str("  busiest MMIO addresses:\n");
    for (addr, n) in &exits.busiest_mmio {
        let _ = writeln!(out, "    {:<16} {n:>10}", format!("{addr:#x}"));
    }
    if exits.other_addresses != (0, 0) {
        let _ = writeln!(
            out,
            "  accesses past the {MAX_ADDRESSES}-address limit: ports {}, MMIO {}",
            exits.other_addresses.0, exits.other_addresses.1
        );
    }
    let _ = writeln!(
        out,
        "  unclaimed accesses: I/O ports {} reads, {} writes; MMIO {} reads, {} writes",
        unclaimed_pio.0, unclaimed_pio.1, unclaimed_mmio.0, unclaimed_mmio.1
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_orders_by_count() {
        let s = ExitCounters::new(true);
        s.exit(ExitReason::IoOut);
        s.exit(ExitReason::IoOut);
        s.exit(ExitReason::MmioWrite);
        s.pio(0x3f8);
        s.pio(0x3fd);
        s.pio(0x3fd);
        s.mmio(0xc000_0000);
        let r = report(&s.snapshot(10), (1, 2), (3, 4));
        let io = r.find("io-out").unwrap();
        let mmio = r.find("mmio-write").unwrap();
        assert!(io < mmio, "{r}");
        assert!(r.find("0x03fd").unwrap() < r.find("0x03f8").unwrap(), "{r}");
        assert!(r.contains("total                     3"), "{r}");
        assert!(r.contains("0xc0000000"), "{r}");
        assert!(
            r.contains("I/O ports 1 reads, 2 writes; MMIO 3 reads, 4 writes"),
            "{r}"
        );
    }

    #[test]
    fn per_address_counts_are_bounded_and_optional() {
        let s = ExitCounters::new(true);
        for a in 0..(MAX_ADDRESSES as u64 + 100) {
            s.mmio(a);
        }
        s.mmio(5);
        let snap = s.snapshot(3);
        assert_eq!(snap.busiest_mmio[0], (5, 2));
        assert_eq!(snap.other_addresses, (0, 100));
        let plain = ExitCounters::new(false);
        plain.pio(1);
        plain.exit(ExitReason::IoIn);
        let snap = plain.snapshot(3);
        assert!(snap.busiest_ports.is_empty());
        assert_eq!(snap.by_reason[0], ("io-in", 1));
    }
}

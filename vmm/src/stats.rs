//! `--stats`: what the guest made the VMM do. Counting KVM exits by reason and by address
//! is the quickest way for a learner to see where a VMM spends its time (and why virtio
//! moved data off the exit path). Counting only happens when asked for.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Exit counters shared by all vCPU threads.
#[derive(Default)]
pub struct Stats {
    exits: Mutex<HashMap<&'static str, u64>>,
    pio: Mutex<HashMap<u16, u64>>,
    mmio: Mutex<HashMap<u64, u64>>,
}

impl Stats {
    /// Count one exit of kind `reason`.
    pub fn exit(&self, reason: &'static str) {
        *lock(&self.exits).entry(reason).or_default() += 1;
    }

    /// Count one port access.
    pub fn pio(&self, port: u16) {
        *lock(&self.pio).entry(port).or_default() += 1;
    }

    /// Count one MMIO access.
    pub fn mmio(&self, addr: u64) {
        *lock(&self.mmio).entry(addr).or_default() += 1;
    }

    /// Human-readable report: exits by reason, then the ten busiest ports and MMIO addresses.
    pub fn report(&self, unclaimed_pio: (u64, u64), unclaimed_mmio: (u64, u64)) -> String {
        let mut out = String::from("minivmm stats\n  KVM exits by reason:\n");
        let exits = sorted(lock(&self.exits).iter().map(|(k, v)| (k.to_string(), *v)));
        let total: u64 = exits.iter().map(|(_, n)| n).sum();
        for (reason, n) in &exits {
            let _ = writeln!(out, "    {reason:<16} {n:>10}");
        }
        let _ = writeln!(out, "    {:<16} {total:>10}", "total");
        out.push_str("  busiest I/O ports:\n");
        for (port, n) in sorted(
            lock(&self.pio)
                .iter()
                .map(|(k, v)| (format!("{k:#06x}"), *v)),
        )
        .into_iter()
        .take(10)
        {
            let _ = writeln!(out, "    {port:<16} {n:>10}");
        }
        out.push_str("  busiest MMIO addresses:\n");
        for (addr, n) in sorted(
            lock(&self.mmio)
                .iter()
                .map(|(k, v)| (format!("{k:#x}"), *v)),
        )
        .into_iter()
        .take(10)
        {
            let _ = writeln!(out, "    {addr:<16} {n:>10}");
        }
        let _ = writeln!(
            out,
            "  unclaimed accesses: I/O ports {} reads, {} writes; MMIO {} reads, {} writes",
            unclaimed_pio.0, unclaimed_pio.1, unclaimed_mmio.0, unclaimed_mmio.1
        );
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sort by count, busiest first, then by name for a stable order.
fn sorted(it: impl Iterator<Item = (String, u64)>) -> Vec<(String, u64)> {
    let mut v: Vec<_> = it.collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_orders_by_count() {
        let s = Stats::default();
        s.exit("io");
        s.exit("io");
        s.exit("mmio");
        s.pio(0x3f8);
        s.pio(0x3fd);
        s.pio(0x3fd);
        s.mmio(0xc000_0000);
        let r = s.report((1, 2), (3, 4));
        let io = r.find("io  ").unwrap();
        let mmio = r.find("mmio").unwrap();
        assert!(io < mmio, "{r}");
        assert!(r.find("0x03fd").unwrap() < r.find("0x03f8").unwrap(), "{r}");
        assert!(r.contains("total                     3"), "{r}");
        assert!(r.contains("0xc0000000"), "{r}");
        assert!(
            r.contains("I/O ports 1 reads, 2 writes; MMIO 3 reads, 4 writes"),
            "{r}"
        );
    }
}

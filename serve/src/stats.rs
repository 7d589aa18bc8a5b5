//! What each running VM costs and does, sampled once a second by one thread: CPU (from
//! `/proc/PID/stat`, 100 = one core), resident memory (`VmRSS` of `/proc/PID/status`),
//! and disk and network throughput from the VM's own counters (`GET /vm/counters`: the
//! block devices' `read_bytes`/`write_bytes`, the network devices' `rx_bytes`/`tx_bytes`,
//! summed over devices). The last [`HISTORY`] samples of each VM are kept for the page's
//! charts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::manager::{Manager, Vm};

/// Samples kept per VM: a minute.
pub const HISTORY: usize = 60;
/// Time between samples.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Totals read at one moment, to compute the next sample's rates from.
#[derive(Clone, Copy, Debug)]
pub struct Raw {
    at: Instant,
    cpu_ticks: u64,
    io: Io,
}

/// Byte totals from the VM's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    disk_read: u64,
    disk_write: u64,
    net_rx: u64,
    net_tx: u64,
}

/// One sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    t: f64,
    cpu_percent: f64,
    rss_bytes: u64,
    disk_read_bps: u64,
    disk_write_bps: u64,
    net_rx_bps: u64,
    net_tx_bps: u64,
}

impl Sample {
    /// The `stats` object of a VM (its last sample).
    pub fn stats_json(&self) -> Value {
        json!({
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
            "disk_read_bps": self.disk_read_bps,
            "disk_write_bps": self.disk_write_bps,
            "net_rx_bps": self.net_rx_bps,
            "net_tx_bps": self.net_tx_bps,
        })
    }

    /// `stats` before the first sample.
    pub fn zero() -> Value {
        Sample::default().stats_json()
    }

    /// A `history` entry.
    pub fn json(&self) -> Value {
        let mut v = self.stats_json();
        v["t"] = json!(self.t);
        v
    }
}

/// The sums of the counters in `GET /vm/counters`'s answer.
pub fn io_of(counters: &Value) -> Io {
    let mut io = Io::default();
    let Some(devices) = counters.get("devices").and_then(Value::as_object) else {
        return io;
    };
    for d in devices.values() {
        let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
        io.disk_read += n("read_bytes");
        io.disk_write += n("write_bytes");
        io.net_rx += n("rx_bytes");
        io.net_tx += n("tx_bytes");
    }
    io
}

/// User + system CPU time of process `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": utime and stime are the 12th and 13th fields after
    // the comm, which may itself hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Take one sample of `vm`, if it runs.
fn sample(vm: &Vm, hz: f64) {
    let Some((pid, number, since)) = vm.process() else {
        return;
    };
    let (Some(ticks), Some(rss)) = (cpu_ticks(pid), rss_bytes(pid)) else {
        return;
    };
    // A VM still starting, or busy with a request, has no counters this time: its I/O
    // counts as none, and the next sample takes it from there.
    let io = vm
        .api("GET", "/vm/counters", Duration::from_secs(2))
        .ok()
        .map(|c| io_of(&c));
    let now = Instant::now();
    let prev = vm.lock().last_raw;
    let (since_at, since_ticks, since_io) = match prev {
        Some(p) => (p.at, p.cpu_ticks, Some(p.io)),
        None => (since, 0, None),
    };
    let dt = now.duration_since(since_at).as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round() as u64;
    let (io_now, rates) = match (io, since_io) {
        (Some(i), Some(p)) => (
            i,
            [
                rate(i.disk_read, p.disk_read),
                rate(i.disk_write, p.disk_write),
                rate(i.net_rx, p.net_rx),
                rate(i.net_tx, p.net_tx),
            ],
        ),
        (Some(i), None) if prev.is_none() => (
            i,
            [
                rate(i.disk_read, 0),
                rate(i.disk_write, 0),
                rate(i.net_rx, 0),
                rate(i.net_tx, 0),
            ],
        ),
        (Some(i), None) => (i, [0; 4]),
        (None, p) => (p.unwrap_or_default(), [0; 4]),
    };
    let cpu = ticks.saturating_sub(since_ticks) as f64 / hz / dt * 100.0;
    let s = Sample {
        t: (Manager::unix_now() * 1000.0).round() / 1000.0,
        cpu_percent: (cpu * 10.0).round() / 10.0,
        rss_bytes: rss,
        disk_read_bps: rates[0],
        disk_write_bps: rates[1],
        net_rx_bps: rates[2],
        net_tx_bps: rates[3],
    };
    vm.push_sample(
        number,
        s,
        Raw {
            at: now,
            cpu_ticks: ticks,
            io: io_now,
        },
    );
}

/// The sampler thread's loop: every [`PERIOD`], a sample of each running VM, until the
/// manager shuts down.
pub fn run(manager: Arc<Manager>) {
    let hz = ticks_per_second();
    let mut next = Instant::now() + PERIOD;
    while !manager.shutting_down() {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += PERIOD;
        // Behind (a slow VM API): skip the missed periods rather than hurry.
        if next < Instant::now() {
            next = Instant::now() + PERIOD;
        }
        for vm in manager.list() {
            sample(&vm, hz);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_devices() {
        let c = json!({"devices": {
            "vda": {"requests": 3, "read_bytes": 100, "write_bytes": 10, "errors": 0},
            "vdb": {"read_bytes": 1, "write_bytes": 2},
            "eth0": {"rx_bytes": 7, "tx_bytes": 9, "rx_frames": 1},
            "rng0": {"bytes": 64}
        }});
        assert_eq!(
            io_of(&c),
            Io {
                disk_read: 101,
                disk_write: 12,
                net_rx: 7,
                net_tx: 9
            }
        );
        assert_eq!(io_of(&json!({})), Io::default());
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(u32::MAX).is_none());
    }
}

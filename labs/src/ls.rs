//! `minivmm ls [LAB]`: every lab VM in the state directory, with its state, address, pid,
//! uptime, CPU use (over a quarter-second sample) and resident memory. Addresses come from
//! the copy of the lab file `up` keeps, so `ls` works whatever happened to the original.

use std::path::Path;
use std::time::Duration;

use crate::model::LabFile;
use crate::state::{lab_names, proc_stats, LabDir, VmState};
use crate::Error;

/// One VM, as `ls` shows it.
#[derive(Clone, Debug)]
pub struct Row {
    /// Its lab.
    pub lab: String,
    /// Its name.
    pub vm: String,
    /// Its state.
    pub state: VmState,
    /// Its addresses, comma-separated.
    pub address: String,
    /// Its minivmm's pid, when running.
    pub pid: Option<u32>,
    /// How long it has run.
    pub uptime: Option<Duration>,
    /// CPU use over the sample, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory of its minivmm process.
    pub rss: Option<u64>,
}

/// The lab file as `up` copied it (structure only: its files are not checked again).
pub fn lab_copy(ld: &LabDir) -> Option<LabFile> {
    let text = crate::state::read(&ld.file("lab.toml"))?;
    toml::from_str(&text).ok()
}

/// The addresses of `vm` in the lab copy.
pub fn addresses(lab: Option<&LabFile>, vm: &str) -> Vec<String> {
    lab.and_then(|l| l.vms.iter().find(|v| v.name == vm))
        .map(|v| v.nics.iter().map(|n| n.address.clone()).collect())
        .unwrap_or_default()
}

/// The rows for `lab` (or every lab), sampled over `sample`.
pub fn rows(state: &Path, lab: Option<&str>, sample: Duration) -> Result<Vec<Row>, Error> {
    let labs = match lab {
        Some(l) => {
            let name = crate::lab_name(l)?;
            if !LabDir::new(state, &name).file("lab.toml").is_file() {
                return Err(Error::BadInput(format!(
                    "no lab '{name}' in {}",
                    state.display()
                )));
            }
            vec![name]
        }
        None => lab_names(state),
    };
    let mut rows = Vec::new();
    for name in labs {
        let ld = LabDir::new(state, &name);
        let copy = lab_copy(&ld);
        // In the lab file's order when it can be read, else by name.
        let mut vms: Vec<String> = copy
            .as_ref()
            .map(|l| l.vms.iter().map(|v| v.name.clone()).collect())
            .unwrap_or_default();
        for v in ld.vm_names() {
            if !vms.contains(&v) {
                vms.push(v);
            }
        }
        for vm in vms {
            let vd = ld.vm(&vm);
            let pid = vd.pid();
            rows.push(Row {
                lab: name.clone(),
                address: addresses(copy.as_ref(), &vm).join(","),
                state: vd.state(),
                pid,
                uptime: None,
                cpu_percent: None,
                rss: None,
                vm,
            });
        }
    }
    let before: Vec<Option<Duration>> = rows
        .iter()
        .map(|r| r.pid.and_then(proc_stats).map(|s| s.cpu))
        .collect();
    if rows.iter().any(|r| r.pid.is_some()) {
        std::thread::sleep(sample);
    }
    for (r, b) in rows.iter_mut().zip(before) {
        if let (Some(pid), Some(b)) = (r.pid, b) {
            if let Some(s) = proc_stats(pid) {
                r.uptime = Some(s.uptime);
                r.rss = Some(s.rss);
                r.cpu_percent =
                    Some(100.0 * s.cpu.saturating_sub(b).as_secs_f64() / sample.as_secs_f64());
            }
        }
    }
    Ok(rows)
}

/// `1h02m`, `3m04s`, `12s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `512M`, `1.5G`.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / f64::from(1u32 << 30))
    } else {
        format!("{}M", b >> 20)
    }
}

/// Columns padded to their widest cell, two spaces apart.
pub fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The table `ls` prints.
pub fn table(rows: &[Row]) -> String {
    let mut t = vec![[
        "LAB".to_string(),
        "VM".into(),
        "STATE".into(),
        "ADDRESS".into(),
        "PID".into(),
        "UPTIME".into(),
        "CPU%".into(),
        "RSS".into(),
    ]];
    let dash = || "-".to_string();
    for r in rows {
        t.push([
            r.lab.clone(),
            r.vm.clone(),
            r.state.to_string(),
            if r.address.is_empty() {
                dash()
            } else {
                r.address.clone()
            },
            r.pid.map_or_else(dash, |p| p.to_string()),
            r.uptime.map_or_else(dash, human_duration),
            r.cpu_percent.map_or_else(dash, |c| format!("{c:.0}")),
            r.rss.map_or_else(dash, human_bytes),
        ]);
    }
    format_table(&t)
}

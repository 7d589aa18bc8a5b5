//! Snapshot and restore: a running VM written to a directory, and a VM made from one.
//!
//! A snapshot directory holds two files:
//!
//! - `memory`: guest RAM, sparse ([`memory`]): zero pages are holes;
//! - `snapshot.json`: everything else, in the [`SnapshotFile`] format (version
//!   [`VERSION`]): the machine's configuration (memory layout, vCPUs, disks, NICs), each
//!   vCPU's KVM state ([`vcpu`]), the in-kernel interrupt controllers, PIT and clock, and
//!   each device's registers (COM1, i8042, ACPI PM, every virtio-mmio transport with its
//!   queues' addresses and positions). KVM structures are stored as the bytes of their C
//!   layout in hex ([`kvm_bytes`]). `snapshot.json` is written last, through a rename: a
//!   directory without it is not a snapshot.
//!
//! Taking one ([`Vm::snapshot`]): pause the VM (vCPUs parked between two `KVM_RUN`s, device
//! workers between two requests), have each vCPU read its own state on its own thread,
//! read the devices and the VM-wide KVM state, write the files, then resume, stay paused
//! or stop. On PVM hosts `KVM_SET_VCPU_EVENTS` is refused, so the snapshot is taken at a
//! moment when no vCPU is in the middle of delivering an exception or interrupt: if one
//! is, the VM runs a millisecond longer and the vCPUs are read again.
//!
//! Restoring ([`crate::VmBuilder::restore`]): the same machine is built as for a boot (same
//! device order, so the same addresses and IRQs), but guest memory is the `memory` file
//! mapped copy-on-write, no kernel is loaded, and every piece of state is written back
//! before the vCPUs first run. Disks are reopened by path; NICs get new taps (or the
//! `--net` given) and, with a new `--name`, new derived MACs in the device's configuration.
//!
//! What is not restored, and why:
//! - the guest's idea of its MAC address: Linux reads it once when its driver starts, so a
//!   clone with a new MAC must be told inside (`ip link set eth0 address ...`);
//! - frames a NIC had read from its tap but not yet given to the guest (lost, like frames
//!   on a wire), and rate limiters' budgets (they start full);
//! - console input typed but not yet read by the guest's UART beyond its 16-byte FIFO;
//! - the boot timer's measurement.

pub mod kvm_bytes;
pub mod memory;
pub mod vcpu;

use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use crate::config::{HostInterface, NetConfig, RateLimit, SerialMode};
use crate::seccomp::SeccompMode;
use crate::vm::VmState;
use crate::{Error, Vm, VmConfig};
use devices::legacy::acpi_pm::AcpiPmSnapshot;
use devices::legacy::i8042::I8042Snapshot;
use devices::legacy::serial::SerialSnapshot;
use devices::virtio::mmio::TransportSnapshot;
use vcpu::VcpuState;

/// `format` in every `snapshot.json`.
pub const FORMAT: &str = "minivmm-snapshot";
/// The format version this minivmm writes and reads.
pub const VERSION: u32 = 1;
/// The state file's name.
pub const STATE_FILE: &str = "snapshot.json";

/// What the VM does once its snapshot is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// Run on (the default).
    Resume,
    /// Stay paused.
    Pause,
    /// End ([`crate::VmOutcome::Stopped`]).
    Stop,
}

/// What a snapshot took.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    /// The directory written.
    pub dir: PathBuf,
    /// Guest memory bytes written (pages that are not zero).
    pub memory_written: u64,
    /// Space the snapshot takes on disk (allocated blocks), in bytes.
    pub disk_usage: u64,
    /// From the request to the files being on disk.
    pub took: Duration,
    /// How long the guest was paused by it.
    pub paused_for: Duration,
}

/// What a restored VM may change from the snapshot's configuration.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// A new name (`--name`).
    pub name: Option<String>,
    /// New network interfaces (`--net`): as many as the snapshot has, in the same order.
    /// None keeps the snapshot's (a tap on a bridge gets a new tap; `tap=` the same tap).
    pub nets: Option<Vec<NetConfig>>,
    /// Other disk images (`--disk`): as many as the snapshot has, in the same order, each
    /// with the same read-only setting; for clones, each with its own copy. None reopens
    /// the snapshot's paths.
    pub disks: Option<Vec<crate::config::BlockConfig>>,
    /// Where the console goes.
    pub serial: Option<SerialMode>,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// Count exits per address too.
    pub detailed_counters: bool,
}

/// One disk as saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: Option<String>,
    pub bytes_per_sec: Option<u64>,
    pub ops_per_sec: Option<u64>,
}

/// One NIC as saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedNet {
    /// `tap=NAME`: this tap.
    pub tap: Option<String>,
    /// `bridge=BR`: a new tap on this bridge.
    pub bridge: Option<String>,
    /// The MAC the device had (`aa:bb:...`).
    pub mac: String,
    /// Whether the user chose it (`mac=`) rather than minivmm deriving it from the name.
    pub mac_given: bool,
    /// Bytes per second per direction.
    pub bytes_per_sec: Option<u64>,
    /// Frames per second per direction.
    pub frames_per_sec: Option<u64>,
}

/// The machine, as saved: what a restore builds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SavedConfig {
    pub name: Option<String>,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub memory: u64,
    pub cpus: u8,
    pub acpi: bool,
    pub disks: Vec<SavedDisk>,
    pub nets: Vec<SavedNet>,
    pub rng: Option<PathBuf>,
}

/// The VM-wide KVM state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmVmState {
    /// `struct kvm_irqchip` of the master PIC.
    #[serde(with = "kvm_bytes")]
    pub pic_master: kvm_irqchip,
    /// `struct kvm_irqchip` of the slave PIC.
    #[serde(with = "kvm_bytes")]
    pub pic_slave: kvm_irqchip,
    /// `struct kvm_irqchip` of the IOAPIC.
    #[serde(with = "kvm_bytes")]
    pub ioapic: kvm_irqchip,
    /// `struct kvm_pit_state2`.
    #[serde(with = "kvm_bytes")]
    pub pit: kvm_pit_state2,
    /// The KVM clock (guest nanoseconds), `KVM_GET_CLOCK`.
    pub clock_ns: u64,
}

/// One virtio device as saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedVirtio {
    /// `vda`, `eth0 (tap0)`, `rng0`.
    pub name: String,
    /// Its transport and queues.
    pub transport: TransportSnapshot,
}

/// The devices' registers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SavedDevices {
    pub serial: SerialSnapshot,
    pub i8042: I8042Snapshot,
    pub acpi_pm: AcpiPmSnapshot,
    pub virtio: Vec<SavedVirtio>,
}

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written.
    pub version: u32,
    /// `x86_64`.
    pub arch: String,
    /// The minivmm version that wrote it.
    pub minivmm: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// The machine.
    pub config: SavedConfig,
    /// Guest RAM regions in the `memory` file.
    pub memory: Vec<memory::RegionEntry>,
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: KvmVmState,
    /// Device registers.
    pub devices: SavedDevices,
}

/// How long a vCPU may take to read its state.
const VCPU_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a snapshot looks for a moment without an event being delivered.
const QUIET_TRIES: u32 = 50;

fn host(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Host(format!("snapshot: {what}: {e}"))
}

impl Vm {
    /// Pause the VM (if it runs), write its memory and state to `dir` (created: it must
    /// not exist, its parent must), then resume, stay paused or stop, as `then` says. A
    /// snapshot that fails leaves no directory behind and the VM as it was.
    pub fn snapshot(&self, dir: &Path, then: AfterSnapshot) -> Result<SnapshotReport, Error> {
        let _one_at_a_time = self.snap.busy.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let was_paused = match self.state() {
            VmState::Running | VmState::ShuttingDown => false,
            VmState::Paused => true,
            other => return Err(Error::NotRunning("snapshot", other.name())),
        };
        if dir.exists() {
            return Err(Error::Config(format!(
                "snapshot directory {} already exists",
                dir.display()
            )));
        }
        std::fs::create_dir(dir).map_err(|e| Error::File {
            what: "snapshot directory",
            path: dir.display().to_string(),
            source: e,
        })?;
        let paused_at = Instant::now();
        let result = self
            .pause()
            .and_then(|()| self.write_snapshot(dir))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(dir);
            });
        let after = match (&result, then) {
            (Err(_), _) if was_paused => Ok(()),
            (Err(_), _) => self.resume(),
            (Ok(_), AfterSnapshot::Resume) => self.resume(),
            (Ok(_), AfterSnapshot::Pause) => Ok(()),
            (Ok(_), AfterSnapshot::Stop) => self.stop(),
        };
        let paused_for = paused_at.elapsed();
        let written = result?;
        after?;
        Ok(SnapshotReport {
            dir: dir.to_path_buf(),
            memory_written: written,
            disk_usage: disk_usage(dir),
            took: t0.elapsed(),
            paused_for,
        })
    }

    /// Everything but memory and files: read while paused. Retries (running the VM briefly
    /// in between) until no vCPU is delivering an event.
    fn collect(&self) -> Result<SnapshotFile, Error> {
        let mut vcpus = self.read_vcpus()?;
        let mut tries = 0;
        while vcpus.iter().any(VcpuState::has_pending_event) {
            tries += 1;
            if tries > QUIET_TRIES {
                return Err(Error::Host(
                    "snapshot: a vCPU was always delivering an event; try again".into(),
                ));
            }
            self.resume()?;
            std::thread::sleep(Duration::from_millis(1));
            self.pause()?;
            vcpus = self.read_vcpus()?;
        }
        if tries > 0 {
            log::info!("snapshot: waited for {tries} event deliveries to finish");
        }
        let vm = self.read_kvm_vm()?;
        let devices = self.read_devices()?;
        Ok(SnapshotFile {
            format: FORMAT.into(),
            version: VERSION,
            arch: std::env::consts::ARCH.into(),
            minivmm: env!("CARGO_PKG_VERSION").into(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config: self.saved_config(),
            memory: Vec::new(),
            vcpus,
            vm,
            devices,
        })
    }

    fn write_snapshot(&self, dir: &Path) -> Result<u64, Error> {
        let mut file = self.collect()?;
        let saved = memory::save(
            &self.snap.mem,
            &dir.join(memory::MEMORY_FILE),
            !self.snap.mem_from_file,
        )
        .map_err(host("writing guest memory"))?;
        file.memory = saved.regions;
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Host(format!("snapshot: encoding the state: {e}")))?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(host("writing the state"))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(host("syncing the state"))?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(host("naming the state"))?;
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(host("syncing the directory"))?;
        Ok(saved.written)
    }

    fn read_vcpus(&self) -> Result<Vec<VcpuState>, Error> {
        let control = self
            .snap
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::NotRunning("snapshot", "created"))?;
        let mut answers = Vec::new();
        for index in 0..self.config.cpus {
            let (tx, rx) = channel();
            control.run_on_vcpu(
                index,
                Box::new(move |v| {
                    let _ = tx.send(v.save_state());
                }),
            );
            answers.push(rx);
        }
        answers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| match rx.recv_timeout(VCPU_TIMEOUT) {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(Error::Host(format!("snapshot: vCPU {i}: {e}"))),
                Err(_) => Err(Error::Timeout("a vCPU did not answer")),
            })
            .collect()
    }

    fn read_kvm_vm(&self) -> Result<KvmVmState, Error> {
        let guard = self.kvm.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, vm)) = guard.as_ref() else {
            return Err(Error::NotRunning("snapshot", "created"));
        };
        let kvm = |what| move |source| Error::Kvm { what, source };
        let chip = |id| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map(|()| c)
                .map_err(kvm("KVM_GET_IRQCHIP"))
        };
        Ok(KvmVmState {
            pic_master: chip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock_ns: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?.clock,
        })
    }

    fn read_devices(&self) -> Result<SavedDevices, Error> {
        let mut virtio = Vec::new();
        for (info, transport) in &self.virtio {
            let t = transport.lock().unwrap_or_else(|e| e.into_inner());
            let positions = match t.device().worker() {
                Some(w) => w
                    .queue_positions(VCPU_TIMEOUT)
                    .map_err(|e| Error::Host(format!("snapshot: {}: {e}", info.name)))?,
                None => Vec::new(),
            };
            virtio.push(SavedVirtio {
                name: info.name.clone(),
                transport: t.save(&positions),
            });
        }
        Ok(SavedDevices {
            serial: self
                .snap
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save(),
            i8042: self
                .snap
                .i8042
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save(),
            acpi_pm: self
                .snap
                .acpi_pm
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save(),
            virtio,
        })
    }

    fn saved_config(&self) -> SavedConfig {
        let c = &self.config;
        let macs: Vec<[u8; 6]> = self
            .virtio
            .iter()
            .filter(|(info, _)| info.device_type == 1)
            .map(|(_, t)| {
                let mut mac = [0u8; 6];
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .device()
                    .read_config(0, &mut mac);
                mac
            })
            .collect();
        SavedConfig {
            name: c.name.clone(),
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            cmdline: c.cmdline.clone(),
            memory: c.memory,
            cpus: c.cpus,
            acpi: c.acpi,
            disks: c
                .disks
                .iter()
                .map(|d| SavedDisk {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                    bytes_per_sec: d.limit.bytes_per_sec,
                    ops_per_sec: d.limit.ops_per_sec,
                })
                .collect(),
            nets: c
                .nets
                .iter()
                .zip(macs)
                .map(|(n, mac)| SavedNet {
                    tap: match &n.host {
                        HostInterface::Tap(t) => Some(t.clone()),
                        HostInterface::Bridge(_) => None,
                    },
                    bridge: match &n.host {
                        HostInterface::Bridge(b) => Some(b.clone()),
                        HostInterface::Tap(_) => None,
                    },
                    mac: devices::virtio::net::format_mac(&mac),
                    mac_given: n.mac.is_some(),
                    bytes_per_sec: n.limit.bytes_per_sec,
                    frames_per_sec: n.limit.ops_per_sec,
                })
                .collect(),
            rng: c.rng.clone(),
        }
    }
}

/// Bytes the files in `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// A snapshot directory, read and checked.
pub struct Loaded {
    /// Where it is.
    pub dir: PathBuf,
    /// `snapshot.json`.
    pub file: SnapshotFile,
}

/// Read `dir/snapshot.json` and check that this minivmm can restore it. Every problem is
/// bad input ([`Error::Snapshot`]): one line naming the file and what is wrong.
pub fn load(dir: &Path) -> Result<Loaded, Error> {
    let bad = |what: String| Error::Snapshot(format!("{}: {what}", dir.display()));
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let state = dir.join(STATE_FILE);
    let text = std::fs::read(&state).map_err(|e| {
        bad(if e.kind() == std::io::ErrorKind::NotFound {
            format!("no {STATE_FILE}: not a minivmm snapshot (or one that was never finished)")
        } else {
            format!("{STATE_FILE}: {e}")
        })
    })?;
    // Format and version first, so that a foreign or newer file gets a clear message.
    let head: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{STATE_FILE} is not valid JSON (truncated?): {e}")))?;
    if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(bad(format!("{STATE_FILE} is not a minivmm snapshot")));
    }
    match head.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        v => {
            return Err(bad(format!(
                "snapshot format version {}, this minivmm reads version {VERSION}",
                v.map_or("?".to_string(), |v| v.to_string())
            )))
        }
    }
    let file: SnapshotFile =
        serde_json::from_value(head).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    if file.arch != std::env::consts::ARCH {
        return Err(bad(format!(
            "taken on {}, this is {}",
            file.arch,
            std::env::consts::ARCH
        )));
    }
    let c = &file.config;
    if file.vcpus.len() != usize::from(c.cpus) || c.cpus == 0 {
        return Err(bad(format!(
            "{} vCPU states for {} vCPUs",
            file.vcpus.len(),
            c.cpus
        )));
    }
    // The regions must be the ones this minivmm lays out for that much RAM: the e820 map
    // the guest booted with, and the MMIO hole the devices sit in, depend on it.
    let layout = boot::e820::MemoryLayout::new(c.memory)
        .map_err(|e| bad(format!("memory size {}: {e}", c.memory)))?;
    let expected: Vec<(u64, u64)> = layout
        .ram_regions()
        .iter()
        .map(|(a, n)| (a.0, *n as u64))
        .collect();
    let saved: Vec<(u64, u64)> = file
        .memory
        .iter()
        .map(|r| (r.guest_address, r.size))
        .collect();
    if saved != expected {
        return Err(bad(format!(
            "memory regions {saved:x?} do not match {} bytes of RAM ({expected:x?})",
            c.memory
        )));
    }
    let mem = dir.join(memory::MEMORY_FILE);
    let len = std::fs::metadata(&mem)
        .map_err(|e| bad(format!("{}: {e}", memory::MEMORY_FILE)))?
        .len();
    if let Some(r) = file.memory.iter().find(|r| {
        r.file_offset
            .checked_add(r.size)
            .is_none_or(|end| end > len)
    }) {
        return Err(bad(format!(
            "{} is {len} bytes, too short for the region at {:#x} (truncated?)",
            memory::MEMORY_FILE,
            r.guest_address
        )));
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        file,
    })
}

impl Loaded {
    /// The configuration a restore builds: the snapshot's machine, with `opts` applied.
    pub fn config(&self, opts: &RestoreOptions) -> Result<VmConfig, Error> {
        let c = &self.file.config;
        let mut cfg = VmConfig::new(c.kernel.clone());
        cfg.initrd = c.initrd.clone();
        cfg.cmdline = c.cmdline.clone();
        cfg.memory = c.memory;
        cfg.cpus = c.cpus;
        cfg.acpi = c.acpi;
        cfg.rng = c.rng.clone();
        cfg.name = opts.name.clone().or_else(|| c.name.clone());
        cfg.seccomp = opts.seccomp;
        cfg.detailed_counters = opts.detailed_counters;
        if let Some(s) = &opts.serial {
            cfg.serial = s.clone();
        }
        cfg.disks = c
            .disks
            .iter()
            .map(|d| crate::config::BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                serial: d.serial.clone(),
                limit: RateLimit {
                    bytes_per_sec: d.bytes_per_sec,
                    ops_per_sec: d.ops_per_sec,
                },
            })
            .collect();
        // A cloud-init seed (`--cloud-init`) was an unlinked file reached through the
        // booting minivmm's descriptor: in this process that path names something else.
        if opts.disks.is_none() {
            if let Some(i) = cfg
                .disks
                .iter()
                .position(|d| d.path.starts_with("/proc/self/fd"))
            {
                return Err(Error::Snapshot(format!(
                    "{}: disk {} was a cloud-init seed ({}), a temporary file that is gone: \
                     give every disk with --disk",
                    self.dir.display(),
                    crate::builder::disk_name(i),
                    cfg.disks[i].path.display()
                )));
            }
        }
        if let Some(disks) = &opts.disks {
            if disks.len() != cfg.disks.len() {
                return Err(Error::Snapshot(format!(
                    "{}: the snapshot has {} disk(s), --disk gives {}",
                    self.dir.display(),
                    cfg.disks.len(),
                    disks.len()
                )));
            }
            for (i, (new, old)) in disks.iter().zip(&cfg.disks).enumerate() {
                if new.read_only != old.read_only {
                    return Err(Error::Snapshot(format!(
                        "{}: disk {} was {}, --disk {} is {}",
                        self.dir.display(),
                        crate::builder::disk_name(i),
                        if old.read_only {
                            "read-only"
                        } else {
                            "writable"
                        },
                        new.path.display(),
                        if new.read_only {
                            "read-only"
                        } else {
                            "writable"
                        },
                    )));
                }
            }
            cfg.disks = disks.clone();
        }
        let renamed = opts.name.is_some() && opts.name != c.name;
        cfg.nets = match &opts.nets {
            Some(nets) => {
                if nets.len() != c.nets.len() {
                    return Err(Error::Snapshot(format!(
                        "{}: the snapshot has {} network interface(s), --net gives {}",
                        self.dir.display(),
                        c.nets.len(),
                        nets.len()
                    )));
                }
                nets.clone()
            }
            None => c
                .nets
                .iter()
                .map(|n| {
                    let host = match (&n.tap, &n.bridge) {
                        (Some(t), _) => HostInterface::Tap(t.clone()),
                        (None, Some(b)) => HostInterface::Bridge(b.clone()),
                        (None, None) => {
                            return Err(Error::Snapshot(format!(
                                "{}: a network interface without tap or bridge",
                                self.dir.display()
                            )))
                        }
                    };
                    // A new name derives new MACs, unless the user chose them.
                    let mac = if renamed && !n.mac_given {
                        None
                    } else {
                        Some(parse_mac(&n.mac).ok_or_else(|| {
                            Error::Snapshot(format!("{}: bad MAC {}", self.dir.display(), n.mac))
                        })?)
                    };
                    Ok(NetConfig {
                        host,
                        mac,
                        limit: RateLimit {
                            bytes_per_sec: n.bytes_per_sec,
                            ops_per_sec: n.frames_per_sec,
                        },
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(cfg)
    }

    /// Check the devices a restore built against the snapshot's, then put them in their
    /// saved state.
    pub(crate) fn restore_devices(
        &self,
        virtio: &[(
            crate::device_manager::VirtioDeviceInfo,
            Arc<std::sync::Mutex<devices::virtio::mmio::MmioTransport>>,
        )],
        i8042: &std::sync::Mutex<devices::legacy::I8042>,
        acpi_pm: &std::sync::Mutex<devices::legacy::AcpiPm>,
    ) -> Result<(), Error> {
        let saved = &self.file.devices;
        let bad = |what: String| Error::Snapshot(format!("{}: {what}", self.dir.display()));
        if saved.virtio.len() != virtio.len() {
            return Err(bad(format!(
                "{} virtio devices saved, {} built",
                saved.virtio.len(),
                virtio.len()
            )));
        }
        for ((info, t), s) in virtio.iter().zip(&saved.virtio) {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(&s.transport)
                .map_err(|e| bad(format!("{} (saved as {}): {e}", info.name, s.name)))?;
        }
        i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&saved.i8042)
            .map_err(bad)?;
        acpi_pm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&saved.acpi_pm);
        Ok(())
    }

    /// Interrupt controllers, PIT and clock into a new VM (after its vCPUs exist).
    pub(crate) fn restore_kvm_vm(&self, vm: &kvm_ioctls::VmFd) -> Result<(), Error> {
        let kvm = |what| move |source| Error::Kvm { what, source };
        let s = &self.file.vm;
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
        let clock = kvm_bindings::kvm_clock_data {
            clock: s.clock_ns,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        Ok(())
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

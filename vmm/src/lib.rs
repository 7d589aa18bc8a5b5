//! The VM's life, from `open("/dev/kvm")` to the guest's last instruction.
//!
//! [`run`] is the whole story, in order:
//! 1. open `/dev/kvm`, create a VM, give it the in-kernel interrupt controllers (PIC,
//!    IOAPIC, per-vCPU LAPIC) and timer (PIT);
//! 2. allocate guest RAM ([`memory`]) and register it with KVM;
//! 3. load the kernel and initrd and write the boot tables (`boot` and `arch` crates);
//! 4. create the devices and put them on the buses ([`device_manager`]);
//! 5. create the vCPUs, give the boot CPU its 64-bit entry state ([`vcpu`]), and start one
//!    thread per vCPU: from here on the guest runs;
//! 6. wait in the event loop ([`event_loop`]) until the guest resets, powers off or crashes,
//!    the user quits, or a signal arrives; then stop the vCPUs and report.

pub mod bus;
pub mod config;
pub mod device_manager;
pub mod event_loop;
pub mod memory;
pub mod network;
pub mod stats;
pub mod terminal;
pub mod vcpu;

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use config::{CpuTemplateChoice, SerialMode, VmConfig};

/// Guest memory, as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest asked for a reset (i8042 command 0xFE, or a KVM reset event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The user typed the quit key on the console.
    Quit,
    /// A host signal (SIGINT, SIGTERM, ...) stopped the VM.
    Signal(i32),
    /// The guest crashed: triple fault, KVM internal or emulation error, failed entry.
    Crash(String),
}

/// Where the first vCPU or device to decide that the VM ends writes the outcome.
pub struct ExitSlot {
    outcome: Mutex<Option<VmOutcome>>,
    /// Written when the outcome is set, to wake the event loop.
    pub event: EventFd,
}

impl ExitSlot {
    /// An empty slot.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Record `o` unless an outcome is already there, and wake the event loop.
    pub fn set(&self, o: VmOutcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(o);
        }
        let _ = self.event.write(1);
    }

    /// The outcome, once there is one.
    pub fn get(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything that can go wrong building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user named cannot be used.
    #[error("{what} {path}: {source}")]
    File {
        /// "kernel", "initrd", ...
        what: &'static str,
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is impossible (sizes, counts).
    #[error("{0}")]
    Config(String),
    /// The kernel image is not a kernel minivmm can load.
    #[error("kernel {path}: {source}")]
    Kernel {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: boot::loader::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {path}: {source}")]
    Initrd {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: boot::initrd::Error,
    },
    /// The kernel command line is refused.
    #[error("kernel command line: {0}")]
    Cmdline(#[source] boot::cmdline::Error),
    /// A disk could not be opened or is unusable (the message names the path).
    #[error("--disk: {source}")]
    Disk {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: devices::virtio::block::BlockError,
    },
    /// A network interface could not be set up on the host.
    #[error("--net #{index}: {source}")]
    Net {
        /// Which `--net` (0-based).
        index: usize,
        /// Why.
        #[source]
        source: network::NetworkError,
    },
    /// The virtio-net device refused its tap.
    #[error("--net #{index}: {source}")]
    NetDevice {
        /// Which `--net` (0-based).
        index: usize,
        /// Why.
        #[source]
        source: devices::virtio::net::NetError,
    },
    /// `/dev/kvm` cannot be used.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// The failed step.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(#[from] memory::MemoryError),
    /// Writing the boot tables failed.
    #[error("writing boot data: {0}")]
    BootData(String),
    /// A device could not be created.
    #[error("device setup: {0}")]
    Device(#[from] device_manager::DeviceError),
    /// A vCPU could not be created or configured.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Host resources (threads, terminal, event loop) failed.
    #[error("{0}")]
    Host(String),
}

impl Error {
    /// Whether the error is the user's input (exit code 2) rather than the host (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::File { .. }
                | Error::Config(_)
                | Error::Kernel { .. }
                | Error::Initrd { .. }
                | Error::Cmdline(_)
                | Error::Disk { .. }
                | Error::Net { .. }
        ) || matches!(self, Error::Memory(m) if m.is_bad_input())
    }
}

fn open(what: &'static str, path: &std::path::Path) -> Result<File, Error> {
    let file = File::open(path).map_err(|source| Error::File {
        what,
        path: path.display().to_string(),
        source,
    })?;
    // Opening a directory succeeds; reading it does not. Say so now.
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(Error::File {
            what,
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory"),
        }),
        _ => Ok(file),
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Choose the CPUID template and log why.
fn cpu_template(choice: CpuTemplateChoice) -> arch::cpuid::CpuTemplate {
    let (template, why) = arch::cpuid::resolve(choice);
    log::info!("{why} (--cpu-template overrides)");
    template
}

/// The VM being built: what [`run`] needs after setup.
struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

fn create_vm() -> Result<Vm, Error> {
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::Host(format!(
            "KVM API version {version}, expected {}",
            kvm_bindings::KVM_API_VERSION
        )));
    }
    let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    // Intel VT-x needs three pages for a real-mode TSS somewhere the guest won't use.
    fd.set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    // PIC + IOAPIC + LAPICs in the kernel: interrupts never need a trip to user space.
    fd.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(Vm { kvm, fd })
}

/// Build the VM described by `cfg`, run it to the end, and say how it ended.
pub fn run(cfg: &VmConfig) -> Result<VmOutcome, Error> {
    let start = Instant::now();
    check_config(cfg)?;

    // Open every file first: bad input is reported before anything is created.
    let mut kernel_file = open("kernel", &cfg.kernel)?;
    let mut initrd_file = cfg
        .initrd
        .as_deref()
        .map(|p| open("initrd", p))
        .transpose()?;
    let mut disks = Vec::new();
    for d in &cfg.disks {
        let block = devices::virtio::block::Block::new(devices::virtio::block::BlockConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            serial: d.serial.clone(),
        })
        .map_err(|source| Error::Disk {
            path: d.path.display().to_string(),
            source,
        })?;
        disks.push(block);
    }

    // Network interfaces: a tap per --net. Taps minivmm creates are not persistent, so
    // they disappear with their last file descriptor, on every way out of the process.
    let mut nets = Vec::new();
    let mut net_stats = Vec::new();
    for (index, n) in cfg.nets.iter().enumerate() {
        let tap = match &n.backend {
            config::NetBackend::Tap(name) => network::ManagedTap::open_existing(name),
            config::NetBackend::Bridge(br) => network::ManagedTap::create(br, index as u32),
        }
        .map_err(|source| Error::Net { index, source })?;
        let mac = n
            .mac
            .unwrap_or_else(|| network::derive_mac(&cfg.mac_seed(), index as u32));
        let tap_name = tap.name().to_string();
        let net = devices::virtio::net::Net::new(tap.into_tap(), mac)
            .map_err(|source| Error::NetDevice { index, source })?;
        log::info!(
            "eth{index}: tap {tap_name}, MAC {}",
            devices::virtio::net::format_mac(&mac)
        );
        net_stats.push((format!("eth{index} ({tap_name})"), net.stats()));
        nets.push(net);
    }

    let template = cpu_template(cfg.cpu_template);
    let vm = create_vm()?;
    let kvm_max = vm.kvm.get_max_vcpus();
    if usize::from(cfg.cpus) > kvm_max {
        return Err(Error::Config(format!(
            "--cpus {}: this host's KVM allows at most {kvm_max} vCPUs",
            cfg.cpus
        )));
    }
    let mem = memory::create(cfg.memory)?;
    memory::register(&vm.fd, &mem)?;

    // The kernel, then the initrd above it.
    let kernel =
        boot::loader::load_kernel(&mem, &mut kernel_file).map_err(|source| Error::Kernel {
            path: cfg.kernel.display().to_string(),
            source,
        })?;
    log::info!(
        "kernel {}: {:?}, entry {:#x}",
        cfg.kernel.display(),
        kernel.format,
        kernel.entry.0
    );
    let initrd = match (&mut initrd_file, &cfg.initrd) {
        (Some(f), Some(path)) => Some(
            boot::initrd::load_initrd(
                &mem,
                f,
                kernel.end,
                boot::zeropage::initrd_addr_max(kernel.setup_header.as_ref()),
            )
            .map_err(|source| Error::Initrd {
                path: path.display().to_string(),
                source,
            })?,
        ),
        _ => None,
    };

    // Devices.
    let serial_out: Box<dyn std::io::Write + Send> = match &cfg.serial {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| Error::File {
                    what: "serial output file",
                    path: p.display().to_string(),
                    source,
                })?,
        ),
        SerialMode::None => Box::new(std::io::sink()),
    };
    let mut devices = device_manager::DeviceManager::new(&vm.fd, serial_out, start)?;
    for disk in disks {
        devices.add_virtio(&vm.fd, &mem, Box::new(disk))?;
    }
    for net in nets {
        devices.add_virtio(&vm.fd, &mem, Box::new(net))?;
    }

    // The command line: defaults, what the PVM template needs, the devices, then the user's.
    let user = cfg.cmdline.as_deref().unwrap_or("");
    // The first disk is the root file system unless the user says otherwise; mounted
    // read-only when the disk is.
    let root = match cfg.disks.first() {
        Some(_) if user.split_whitespace().any(|w| w.starts_with("root=")) => "",
        Some(d) if d.read_only => "root=/dev/vda ro",
        Some(_) => "root=/dev/vda rw",
        None => "",
    };
    let mut parts = vec![
        boot::cmdline::DEFAULT_CMDLINE,
        template.extra_kernel_cmdline(),
    ];
    // With ACPI the DSDT describes the virtio devices: listing them here as well would make
    // Linux probe each twice, and on a hardware-reduced ACPI machine the ISA IRQ numbers of
    // these entries are not even mapped.
    if !cfg.acpi {
        parts.extend(devices.cmdline_entries.iter().map(String::as_str));
    }
    parts.push(root);
    parts.push(user);
    let cmdline = boot::cmdline::build(&parts).map_err(Error::Cmdline)?;
    log::info!("kernel command line: {cmdline}");
    boot::cmdline::check_fits(&cmdline, kernel.setup_header.as_ref()).map_err(Error::Cmdline)?;
    let (cmdline_addr, cmdline_size) =
        boot::cmdline::write_cmdline(&mem, &cmdline).map_err(Error::Cmdline)?;

    // Boot tables: MP table (CPUs and IOAPIC; Linux ignores it when it finds ACPI), ACPI
    // tables, zero page (e820, command line, initrd, where the ACPI tables are).
    arch::mptable::setup_mptable(&mem, cfg.cpus, arch::layout::IRQ_MAX)
        .map_err(|e| Error::BootData(format!("MP table: {e}")))?;
    let acpi_rsdp = if cfg.acpi {
        let acpi = arch::acpi::AcpiConfig {
            num_cpus: cfg.cpus,
            virtio_devices: devices
                .virtio_slots
                .iter()
                .map(|s| (s.base, s.irq))
                .collect(),
        };
        Some(
            arch::acpi::setup_acpi(&mem, &acpi)
                .map_err(|e| Error::BootData(format!("ACPI tables: {e}")))?,
        )
    } else {
        None
    };
    boot::zeropage::write_zero_page(
        &mem,
        boot::zeropage::ZeroPageParams {
            setup_header: kernel.setup_header,
            cmdline_addr,
            cmdline_size,
            initrd,
            e820: boot::e820::e820_map(cfg.memory).map_err(memory::MemoryError::Layout)?,
            mem_size: cfg.memory,
            acpi_rsdp,
        },
    )
    .map_err(|e| Error::BootData(format!("zero page: {e}")))?;

    // vCPUs.
    let stats = cfg.stats.then(|| Arc::new(stats::Stats::default()));
    let pio = Arc::new(std::mem::take(&mut devices.pio));
    let mmio = Arc::new(std::mem::take(&mut devices.mmio));
    let supported = vm
        .kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let setup = vcpu::BootSetup {
        cpuid: &supported,
        template,
        num_cpus: cfg.cpus,
        entry: kernel.entry,
    };
    let mut vcpus = Vec::new();
    for index in 0..cfg.cpus {
        let v = vcpu::Vcpu::new(
            &vm.fd,
            index,
            pio.clone(),
            mmio.clone(),
            mem.clone(),
            stats.clone(),
        )?;
        v.configure(&setup)?;
        vcpus.push(v);
    }

    // From here on the terminal is ours: put it back whatever happens.
    let interactive = cfg.serial == SerialMode::Stdio;
    let _raw = if interactive {
        Some(terminal::RawModeGuard::new().map_err(|e| Error::Host(format!("terminal: {e}")))?)
    } else {
        None
    };
    event_loop::block_exit_signals().map_err(|e| Error::Host(format!("signal mask: {e}")))?;
    vcpu::install_kick_handler().map_err(|e| Error::Host(format!("signal handler: {e}")))?;

    let exit = Arc::new(ExitSlot::new().map_err(|e| Error::Host(format!("eventfd: {e}")))?);
    let control = Arc::new(vcpu::VcpuControl::default());
    let mut threads = Vec::new();
    for v in vcpus {
        let (control, exit) = (control.clone(), exit.clone());
        let name = format!("vcpu{}", threads.len());
        let t = std::thread::Builder::new()
            .name(name)
            .spawn(move || v.run(control, exit))
            .map_err(|e| Error::Host(format!("spawning a vCPU thread: {e}")))?;
        threads.push(t);
    }
    log::debug!("VM set up in {:?}", start.elapsed());

    // The event loop: until some part of the VM fills the exit slot.
    let controller = event_loop::Controller::new(
        devices.serial.clone(),
        interactive.then_some(libc::STDIN_FILENO),
        devices
            .reset_evt
            .try_clone()
            .map_err(|e| Error::Host(format!("eventfd: {e}")))?,
        devices
            .poweroff_evt
            .try_clone()
            .map_err(|e| Error::Host(format!("eventfd: {e}")))?,
        cfg.acpi
            .then(|| (devices.acpi_pm.clone(), cfg.shutdown_timeout)),
        exit.clone(),
    )
    .map_err(|e| Error::Host(format!("event loop: {e}")))?;
    use event_manager::SubscriberOps;
    let mut events = event_manager::EventManager::<Arc<Mutex<event_loop::Controller>>>::new()
        .map_err(|e| Error::Host(format!("event loop: {e:?}")))?;
    events.add_subscriber(Arc::new(Mutex::new(controller)));
    let outcome = loop {
        if let Some(o) = exit.get() {
            break o;
        }
        events
            .run_with_timeout(1000)
            .map_err(|e| Error::Host(format!("event loop: {e:?}")))?;
    };

    stop_vcpus(&control, threads);
    drop(_raw);
    if let Some(s) = &stats {
        eprint!("{}", s.report(pio.unclaimed(), mmio.unclaimed()));
        if let Some(t) = devices
            .boot_timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .boot_time()
        {
            eprintln!("  guest boot time: {} ms", t.as_millis());
        }
        for (name, st) in &net_stats {
            let s = st.snapshot();
            eprintln!(
                "  {name}: rx {} frames {} bytes ({} dropped), tx {} frames {} bytes ({} dropped), {} malformed chains",
                s.rx_frames, s.rx_bytes, s.rx_dropped, s.tx_frames, s.tx_bytes, s.tx_dropped, s.malformed_chains
            );
        }
    }
    Ok(outcome)
}

/// Tell every vCPU thread to stop and kick it out of `KVM_RUN` until it has.
fn stop_vcpus(control: &vcpu::VcpuControl, threads: Vec<std::thread::JoinHandle<()>>) {
    use vmm_sys_util::signal::Killable;
    control
        .stop
        .store(true, std::sync::atomic::Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(2);
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::warn!("a vCPU thread did not stop; leaving it behind");
        }
    }
}

/// Checks that need no file or KVM access.
fn check_config(cfg: &VmConfig) -> Result<(), Error> {
    let max = arch::mptable::max_cpus().min(usize::from(u8::MAX));
    if cfg.cpus == 0 || usize::from(cfg.cpus) > max {
        return Err(Error::Config(format!(
            "--cpus {}: must be between 1 and {max}",
            cfg.cpus
        )));
    }
    memory::check_size(cfg.memory, memory::host_ram())?;
    Ok(())
}

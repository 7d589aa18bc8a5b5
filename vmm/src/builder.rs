//! From a [`VmConfig`] to a [`Vm`] ready to start, in small steps, in this order:
//!
//! 1. [`VmBuilder::new`]: the checks that need nothing (vCPU count, the memory layout,
//!    computed once);
//! 2. [`open_inputs`]: every file and host resource the user named (kernel, initrd, disks,
//!    taps, entropy source), so that bad input is reported before anything is created;
//! 3. [`create_vm`]: `/dev/kvm`, a VM with the in-kernel interrupt controllers and PIT;
//! 4. [`memory::create`]: guest RAM, registered with KVM ([`memory::register`]) on a
//!    helper thread while the next steps run (KVM makes the first registration wait
//!    for a grace period of its own locking; nothing before the first `KVM_RUN` needs it);
//! 5. [`load_kernel`]: the kernel and the initrd into guest memory;
//! 6. [`attach_devices`]: COM1, i8042, ACPI PM, boot timer, then every virtio device;
//! 7. [`kernel_cmdline`] and [`write_boot_tables`]: the command line (with the root file
//!    system [`root_device`] found on the first disk), the MP table, the ACPI tables, the
//!    zero page;
//! 8. [`create_vcpus`]: one vCPU per `--cpus`, the boot CPU at the kernel's entry point.
//!
//! Each step is a function of what the earlier ones made; the pure ones are unit tested
//! here, the others by the KVM tests (tests/vm_handle.rs) and every boot.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use boot::e820::MemoryLayout;
use boot::partition::Layout;
use devices::virtio::block::Block;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use kvm_ioctls::{Kvm, VmFd};

use crate::config::{CpuTemplate, CpuTemplateChoice, HostInterface, SerialMode};
use crate::device_manager::DeviceManager;
use crate::stats::ExitCounters;
use crate::vcpu::{BootSetup, Vcpu};
use crate::vm::{Startable, Vm};
use crate::{console_out, memory, network, Error, VmConfig};
use arch::layout;

/// Builds one [`Vm`] from a [`VmConfig`].
pub struct VmBuilder {
    cfg: VmConfig,
    layout: MemoryLayout,
    console: Option<Box<dyn Write + Send>>,
    start: Instant,
    /// Restore this snapshot instead of booting.
    snapshot: Option<crate::snapshot::Loaded>,
}

/// How many virtio devices fit: one IRQ line each (the IOAPIC's pins between the legacy
/// ones and the GED's) and one MMIO window each.
pub const MAX_VIRTIO_DEVICES: usize = {
    let lines = (layout::VIRTIO_IRQ_END - layout::VIRTIO_IRQ_START + 1) as usize;
    let windows = layout::VIRTIO_MMIO_MAX_DEVICES as usize;
    if lines < windows {
        lines
    } else {
        windows
    }
};

/// Refuse device lists that cannot work, before anything is opened: more virtio devices
/// than there are IRQ lines, or one disk image given twice (its lock would make the second
/// open look like another process's, and two devices writing one file corrupt it).
fn check_devices(cfg: &VmConfig) -> Result<(), Error> {
    let count = cfg.disks.len() + cfg.nets.len() + usize::from(cfg.rng.is_some());
    if count > MAX_VIRTIO_DEVICES {
        return Err(Error::Config(format!(
            "{count} virtio devices ({} disks, {} network interfaces{}): at most \
             {MAX_VIRTIO_DEVICES} fit",
            cfg.disks.len(),
            cfg.nets.len(),
            if cfg.rng.is_some() { ", rng" } else { "" }
        )));
    }
    use std::os::unix::fs::MetadataExt;
    let mut seen: Vec<((u64, u64), usize)> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        // A disk that cannot be looked at fails with its own message when opened.
        let Ok(meta) = std::fs::metadata(&d.path) else {
            continue;
        };
        let id = (meta.dev(), meta.ino());
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id) {
            return Err(Error::Config(format!(
                "--disk {} is given twice (as {} and {})",
                d.path.display(),
                disk_name(*first),
                disk_name(i)
            )));
        }
        seen.push((id, i));
    }
    Ok(())
}

impl VmBuilder {
    /// Check what needs no file and no KVM: the vCPU count and the memory size (against
    /// the layout's limits and the host's RAM), once.
    pub fn new(cfg: VmConfig) -> Result<Self, Error> {
        let max = arch::mptable::max_cpus().min(usize::from(u8::MAX));
        if cfg.cpus == 0 || usize::from(cfg.cpus) > max {
            return Err(Error::Config(format!(
                "--cpus {}: must be between 1 and {max}",
                cfg.cpus
            )));
        }
        let layout = memory::layout(cfg.memory, memory::host_ram())?;
        check_devices(&cfg)?;
        Ok(Self {
            cfg,
            layout,
            console: None,
            start: Instant::now(),
            snapshot: None,
        })
    }

    /// Where the guest's console output goes with `SerialMode::Stdio` (the front-end's
    /// terminal, a pipe, ...). Without one it is discarded.
    pub fn console_output(mut self, out: Box<dyn Write + Send>) -> Self {
        self.console = Some(out);
        self
    }

    /// A builder for a VM restored from the snapshot in `dir` (see [`crate::snapshot`]):
    /// no kernel is loaded and nothing boots; the VM resumes where the snapshot was taken
    /// once started.
    pub fn restore(dir: &Path, opts: crate::RestoreOptions) -> Result<Self, Error> {
        let loaded = crate::snapshot::load(dir)?;
        let cfg = loaded.config(&opts)?;
        let mut builder = Self::new(cfg)?;
        builder.snapshot = Some(loaded);
        Ok(builder)
    }

    /// Count from `start` for the boot time (default: when the builder was made).
    pub fn started_at(mut self, start: Instant) -> Self {
        self.start = start;
        self
    }

    /// Build the VM (state `Created`: nothing runs until [`Vm::start`]).
    pub fn build(self) -> Result<Vm, Error> {
        let VmBuilder {
            cfg,
            layout,
            console,
            start,
            snapshot,
        } = self;
        if let Some(snapshot) = snapshot {
            return build_restored(cfg, console, start, snapshot);
        }
        let inputs = open_inputs(&cfg, console)?;
        let root = root_device(&cfg);
        let kernel_file = inputs
            .kernel
            .ok_or_else(|| Error::Host("no kernel".into()))?;
        let serial_created = inputs.serial_created;
        let template = cpu_template(cfg.cpu_template);
        let (kvm, vm) = open_kvm()?;
        let kvm_max = kvm.get_max_vcpus();
        if usize::from(cfg.cpus) > kvm_max {
            return Err(Error::Config(format!(
                "--cpus {}: this host's KVM allows at most {kvm_max} vCPUs",
                cfg.cpus
            )));
        }
        let mem = memory::create(&layout)?;
        // Registering guest RAM with KVM waits for the new VM's first SRCU grace period
        // (milliseconds, idle): do it on a helper thread while this one loads the kernel
        // and makes the devices and vCPUs, none of which needs the memory slots.
        let (vcpus, exits, pio, mmio, handles) = std::thread::scope(|scope| {
            let registered = scope.spawn(|| memory::register(&vm, &mem));
            let built = (|| {
                add_interrupt_controllers(&vm)?;
                let kernel = load_kernel(&mem, &cfg, kernel_file, inputs.initrd)?;
                let devices = attach_devices(&vm, &mem, start, inputs.serial_out, inputs.virtio)?;
                let cmdline =
                    kernel_cmdline(&cfg, template, &devices.cmdline_entries(), root.as_deref())?;
                write_boot_tables(&mem, &cfg, &layout, &kernel, &cmdline, &devices)?;
                let exits = Arc::new(ExitCounters::new(cfg.detailed_counters));
                let (pio, mmio, mut handles) = devices.finish();
                handles.console = inputs.console;
                let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
                let vcpus = create_vcpus(
                    &kvm,
                    &vm,
                    &mem,
                    &cfg,
                    template,
                    &kernel,
                    (&pio, &mmio),
                    &exits,
                )?;
                Ok::<_, Error>((vcpus, exits, pio, mmio, handles))
            })();
            let registered = registered
                .join()
                .unwrap_or(Err(memory::MemoryError::RegisterPanicked));
            let built = built?;
            registered?;
            Ok::<_, Error>(built)
        })?;
        log::debug!("VM built in {:?}", start.elapsed());
        let parts = Built {
            kvm: (kvm, vm),
            vcpus,
            handles,
            exits,
            buses: (pio, mmio),
            mem: (mem, false),
        };
        parts.into_vm(cfg, serial_created)
    }
}

/// What both kinds of build end with.
struct Built {
    kvm: (Kvm, VmFd),
    vcpus: Vec<Vcpu>,
    handles: crate::device_manager::DeviceHandles,
    exits: Arc<ExitCounters>,
    buses: (Arc<crate::bus::Bus>, Arc<crate::bus::Bus>),
    /// Guest memory, and whether it is mapped from a snapshot.
    mem: (GuestMemoryMmap, bool),
}

impl Built {
    /// The [`Vm`] handle; the serial file minivmm created stays from here on.
    fn into_vm(self, cfg: VmConfig, serial_created: Option<RemoveOnDrop>) -> Result<Vm, Error> {
        let acpi = cfg.acpi;
        let vm = Vm::new(
            cfg,
            Startable {
                kvm: self.kvm,
                vcpus: self.vcpus,
                devices: self.handles,
                acpi,
            },
            self.exits,
            self.buses,
            self.mem,
        )?;
        if let Some(f) = serial_created {
            f.keep();
        }
        Ok(vm)
    }
}

/// [`VmBuilder::build`] for a snapshot: the same machine as a boot builds, with guest
/// memory mapped from the snapshot and every device, vCPU and the VM's interrupt
/// controllers, PIT and clock put back in their saved state instead of a kernel loaded.
fn build_restored(
    cfg: VmConfig,
    console: Option<Box<dyn Write + Send>>,
    start: Instant,
    snap: crate::snapshot::Loaded,
) -> Result<Vm, Error> {
    let mut inputs = open_inputs_for(&cfg, console, false)?;
    let serial_created = inputs.serial_created.take();
    let (kvm, vm) = create_vm()?;
    if usize::from(cfg.cpus) > kvm.get_max_vcpus() {
        return Err(Error::Config(format!(
            "the snapshot has {} vCPUs; this host's KVM allows {}",
            cfg.cpus,
            kvm.get_max_vcpus()
        )));
    }
    let mem = crate::snapshot::memory::map(
        &snap.dir.join(crate::snapshot::memory::MEMORY_FILE),
        &snap.file.memory,
    )
    .map_err(Error::Snapshot)?;
    memory::register(&vm, &mem)?;
    let mut devices = DeviceManager::new(
        &vm,
        inputs.serial_out,
        start,
        Some(&snap.file.devices.serial),
    )?;
    for (name, device) in inputs.virtio {
        devices.add_virtio(&vm, &mem, name, device)?;
    }
    let exits = Arc::new(ExitCounters::new(cfg.detailed_counters));
    let (pio, mmio, mut handles) = devices.finish();
    handles.console = inputs.console;
    snap.restore_devices(&handles.virtio, &handles.i8042, &handles.acpi_pm)?;
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let msr_index = Arc::new(msr_index(&kvm)?);
    let mut vcpus = Vec::new();
    for (index, state) in snap.file.vcpus.iter().enumerate() {
        let mut v = Vcpu::new(
            &vm,
            index as u8,
            pio.clone(),
            mmio.clone(),
            mem.clone(),
            exits.clone(),
        )?;
        v.set_msr_index(msr_index.clone());
        state
            .restore(v.fd())
            .map_err(|e| Error::Snapshot(format!("{}: vCPU {index}: {e}", snap.dir.display())))?;
        vcpus.push(v);
    }
    snap.restore_kvm_vm(&vm)?;
    log::info!("restored {} in {:?}", snap.dir.display(), start.elapsed());
    Built {
        kvm: (kvm, vm),
        vcpus,
        handles,
        exits,
        buses: (pio, mmio),
        mem: (mem, true),
    }
    .into_vm(cfg, serial_created)
}

/// The MSRs a snapshot saves: all KVM lists.
fn msr_index(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

/// Everything [`open_inputs`] opened.
pub struct Inputs {
    /// The kernel image (None for a restore, which loads none).
    pub kernel: Option<File>,
    /// The initrd.
    pub initrd: Option<File>,
    /// Where COM1's output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// The thread that writes `serial_out` to the real output (not with `SerialMode::None`).
    pub console: Option<Arc<console_out::ConsoleDrain>>,
    /// The serial output file, if minivmm created it (removed if the build fails).
    pub serial_created: Option<RemoveOnDrop>,
    /// The virtio devices, with the names the guest will give them, in bus order: disks,
    /// NICs, the entropy device.
    pub virtio: Vec<(String, Box<dyn VirtioDevice>)>,
}

/// Open a file minivmm reads whole (kernel, initrd). `O_NONBLOCK` keeps a FIFO from
/// blocking the open until some writer appears; anything but a regular file is refused
/// (a directory opens but cannot be read, a FIFO or device has no size to load).
fn open(what: &'static str, path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |source| Error::File {
        what,
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(bad)?;
    let meta = file.metadata().map_err(bad)?;
    if meta.is_file() {
        return Ok(file);
    }
    let kind = if meta.is_dir() {
        "is a directory"
    } else {
        "is not a regular file (a FIFO, socket or device)"
    };
    Err(bad(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        kind,
    )))
}

/// The most a VM writes to a `--serial file:` output (per run): a guest that prints
/// forever cannot fill the host's disk.
pub const SERIAL_FILE_LIMIT: u64 = 256 << 20;

/// A writer that passes on at most `limit` bytes, then drops the rest and says so once.
struct CappedWriter<W> {
    inner: W,
    name: String,
    left: u64,
    limit: u64,
}

impl<W: Write> CappedWriter<W> {
    fn new(inner: W, name: String, limit: u64) -> Self {
        Self {
            inner,
            name,
            left: limit,
            limit,
        }
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // Swallowed: the serial device must not see errors it would retry.
            return Ok(buf.len());
        }
        let take = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.write(&buf[..take])?;
        self.left -= n as u64;
        if self.left == 0 {
            log::warn!(
                "serial output file {} reached its {} MiB cap: further guest output is dropped",
                self.name,
                self.limit >> 20
            );
            return Ok(buf.len());
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Open (or create) the serial output file for appending. A FIFO without a reader would
/// block the open, and one with a reader could block the vCPU that writes to it: only a
/// regular file or a character device (`/dev/null`, a tty) is accepted.
fn open_serial_file(path: &Path) -> Result<(File, Option<RemoveOnDrop>), Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let bad = |source| Error::File {
        what: "serial output file",
        path: path.display().to_string(),
        source,
    };
    let open = |create: bool| {
        std::fs::OpenOptions::new()
            .create_new(create)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    // Created here, the file is removed again if the VM is not built after all.
    let (file, created) = match open(false) {
        Ok(f) => (f, None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            open(true).map_err(bad)?,
            Some(RemoveOnDrop(path.to_path_buf())),
        ),
        Err(e) => return Err(bad(e)),
    };
    let kind = file.metadata().map_err(bad)?.file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(bad(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file or a character device",
        )));
    }
    // Writes must not fail with EAGAIN on a tty: open the same file again, by its
    // descriptor (no race with a rename), without O_NONBLOCK.
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(bad)?;
    Ok((file, created))
}

/// A file minivmm created for this VM, removed when dropped unless [`RemoveOnDrop::keep`]
/// was called: bad input found after the file was made leaves nothing behind.
pub struct RemoveOnDrop(std::path::PathBuf);

impl RemoveOnDrop {
    /// The VM was built: the file stays.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Open every file and host resource the configuration names. Taps minivmm creates are not
/// persistent: if a later step fails, dropping them removes them again.
pub fn open_inputs(
    cfg: &VmConfig,
    console: Option<Box<dyn Write + Send>>,
) -> Result<Inputs, Error> {
    open_inputs_for(cfg, console, true)
}

/// [`open_inputs`], with or without the kernel and initrd (a restore needs neither).
fn open_inputs_for(
    cfg: &VmConfig,
    console: Option<Box<dyn Write + Send>>,
    boot: bool,
) -> Result<Inputs, Error> {
    let kernel = boot.then(|| open("kernel", &cfg.kernel)).transpose()?;
    let initrd = match (&cfg.initrd, boot) {
        (Some(p), true) => Some(open("initrd", p)?),
        _ => None,
    };
    let mut virtio: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let block = Block::new(d.clone()).map_err(Error::Disk)?;
        virtio.push((disk_name(i), Box::new(block)));
    }
    for (index, n) in cfg.nets.iter().enumerate() {
        let tap = match &n.host {
            HostInterface::Tap(name) => network::ManagedTap::open_existing(name),
            HostInterface::Bridge(br) => network::ManagedTap::create(br, index as u32),
        }
        .map_err(|source| Error::Net { index, source })?;
        let mac = n
            .mac
            .unwrap_or_else(|| network::derive_mac(&cfg.mac_seed(), index as u32));
        let tap_name = tap.name().to_string();
        let net = Net::new_limited(tap.into_tap(), mac, n.limit)
            .map_err(|source| Error::NetDevice { index, source })?;
        log::info!(
            "eth{index}: tap {tap_name}, MAC {}",
            devices::virtio::net::format_mac(&mac)
        );
        virtio.push((format!("eth{index} ({tap_name})"), Box::new(net)));
    }
    if let Some(src) = &cfg.rng {
        virtio.push(("rng0".into(), Box::new(Rng::new(src).map_err(Error::Rng)?)));
    }
    let mut serial_created = None;
    let serial_out: Box<dyn Write + Send> = match &cfg.serial {
        SerialMode::Stdio => console.unwrap_or_else(|| Box::new(std::io::sink())),
        SerialMode::File(p) => {
            let (file, created) = open_serial_file(p)?;
            serial_created = created;
            Box::new(CappedWriter::new(
                file,
                p.display().to_string(),
                SERIAL_FILE_LIMIT,
            ))
        }
        SerialMode::None => Box::new(std::io::sink()),
    };
    // Through the console-out thread, so that a blocked output never blocks a vCPU.
    let (serial_out, console) = match &cfg.serial {
        SerialMode::None => (serial_out, None),
        _ => {
            let (out, drain) = console_out::spawn(serial_out, cfg.seccomp)
                .map_err(|e| Error::Host(format!("console output thread: {e}")))?;
            (
                Box::new(out) as Box<dyn Write + Send>,
                Some(Arc::new(drain)),
            )
        }
    };
    Ok(Inputs {
        kernel,
        initrd,
        serial_out,
        console,
        serial_created,
        virtio,
    })
}

/// `vda`, `vdb`, ..., `vdz`, `vdaa`, ...: what Linux calls disk `i`.
pub fn disk_name(i: usize) -> String {
    let mut name = String::new();
    let mut n = i;
    loop {
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// Choose the CPUID template and log why.
fn cpu_template(choice: CpuTemplateChoice) -> CpuTemplate {
    let (template, why) = arch::cpuid::resolve(choice);
    log::info!("{why} (--cpu-template overrides)");
    template
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Open `/dev/kvm` and create a VM with the in-kernel PIC, IOAPIC, LAPICs and PIT.
pub fn create_vm() -> Result<(Kvm, VmFd), Error> {
    let (kvm, fd) = open_kvm()?;
    add_interrupt_controllers(&fd)?;
    Ok((kvm, fd))
}

/// Open `/dev/kvm` and create an empty VM.
pub fn open_kvm() -> Result<(Kvm, VmFd), Error> {
    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::Host(format!(
            "KVM API version {version}, expected {}",
            kvm_bindings::KVM_API_VERSION
        )));
    }
    let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    Ok((kvm, fd))
}

/// The in-kernel PIC, IOAPIC, LAPICs and PIT (and the TSS VT-x needs), before any vCPU.
pub fn add_interrupt_controllers(fd: &VmFd) -> Result<(), Error> {
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
    Ok(())
}

/// The kernel, then the initrd above it.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    mut kernel_file: File,
    initrd_file: Option<File>,
) -> Result<LoadedKernel, Error> {
    let kernel =
        boot::loader::load_kernel(mem, &mut kernel_file).map_err(|source| Error::Kernel {
            path: cfg.kernel.display().to_string(),
            source,
        })?;
    log::info!(
        "kernel {}: {:?}, entry {:#x}",
        cfg.kernel.display(),
        kernel.format,
        kernel.entry.0
    );
    let initrd = match (initrd_file, &cfg.initrd) {
        (Some(mut f), Some(path)) => Some(
            boot::initrd::load_initrd(
                mem,
                &mut f,
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
    Ok(LoadedKernel { kernel, initrd })
}

/// What [`load_kernel`] put in guest memory.
pub struct LoadedKernel {
    /// The kernel: entry point, end, setup header.
    pub kernel: boot::loader::LoadedKernel,
    /// Where the initrd went (address, size).
    pub initrd: Option<(vm_memory::GuestAddress, usize)>,
}

/// The legacy devices, then each virtio device, on their buses.
pub fn attach_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    start: Instant,
    serial_out: Box<dyn Write + Send>,
    virtio: Vec<(String, Box<dyn VirtioDevice>)>,
) -> Result<DeviceManager, Error> {
    let mut devices = DeviceManager::new(vm, serial_out, start, None)?;
    for (name, device) in virtio {
        devices.add_virtio(vm, mem, name, device)?;
    }
    Ok(devices)
}

/// Whether the user's command line names the root file system itself.
fn user_gives_root(cfg: &VmConfig) -> bool {
    let user = cfg.cmdline.as_deref().unwrap_or("");
    user.split_whitespace().any(|w| w.starts_with("root="))
}

/// The root file system minivmm names on the command line, when the user boots from a
/// disk without a `root=` of their own: the first disk (`/dev/vda`) if it holds a whole
/// file system, or its first Linux partition if it has a partition table
/// (`PARTUUID=...`, or `/dev/vdaN` when the PARTUUID would not be unique: an MBR without
/// a disk signature, or another disk with a partition of the same PARTUUID, such as a
/// second copy of the same image). A table that cannot be read, or one without a Linux
/// partition, leaves `/dev/vda`, with a warning. See [`boot::partition`].
pub fn root_device(cfg: &VmConfig) -> Option<String> {
    let disks = cfg.user_disks();
    let first = disks.first()?;
    if user_gives_root(cfg) {
        return None;
    }
    let path = first.path.display();
    let whole = "/dev/vda".to_string();
    let root = match probe_disk(&first.path) {
        Ok(Layout::Whole { filesystem }) => {
            log::info!(
                "root file system: /dev/vda ({path}: {}; --cmdline root= overrides)",
                filesystem.map_or("no partition table".to_string(), |fs| format!(
                    "{fs}, no partition table"
                ))
            );
            whole
        }
        Ok(Layout::Partitioned {
            table,
            linux: Some(p),
        }) => {
            // Linux takes the first partition it finds with the PARTUUID asked for.
            let same_uuid = |d: &crate::config::BlockConfig| {
                matches!(probe_disk(&d.path), Ok(Layout::Partitioned { linux: Some(q), .. })
                    if q.part_uuid == p.part_uuid)
            };
            let twin = if p.has_unique_uuid() {
                disks.iter().enumerate().skip(1).find(|(_, d)| same_uuid(d))
            } else {
                None
            };
            let root = match twin {
                Some((i, _)) => {
                    log::info!(
                        "{} has a partition with the same PARTUUID {} as vda's: naming the \
                         root by its device instead",
                        disk_name(i),
                        p.part_uuid
                    );
                    p.device("vda")
                }
                None => p.root("vda"),
            };
            log::info!(
                "root file system: {root} (partition {} of the {table} on vda, {path}; \
                 --cmdline root= overrides)",
                p.number
            );
            root
        }
        Ok(Layout::Partitioned { table, linux: None }) => {
            log::warn!(
                "{path} has a {table} partition table without a Linux partition: root=/dev/vda \
                 will not mount; give the root with --cmdline root="
            );
            whole
        }
        Err(e) => {
            log::warn!(
                "{path}: {e}; Linux will see no partitions on it: root=/dev/vda (give the \
                 root with --cmdline root=)"
            );
            whole
        }
    };
    Some(root)
}

/// Read the partition table of the disk image at `path` ([`boot::partition`]): its first
/// 16 KiB, and a GPT's partition array if it lies beyond them.
pub fn probe_disk(path: &Path) -> Result<Layout, String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let io = |e: std::io::Error| e.to_string();
    // O_NONBLOCK, as for every disk: the image has been checked to be a file or a block
    // device when the disk was opened, but it is opened again here.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let size = file.seek(SeekFrom::End(0)).map_err(io)?;
    let read = |len: u64| {
        let mut buf = vec![0u8; len.min(size) as usize];
        file.read_exact_at(&mut buf, 0).map(|()| buf)
    };
    let head = read(boot::partition::HEAD_LEN as u64).map_err(io)?;
    let needed = boot::partition::bytes_needed(&head);
    let data = if needed > head.len() as u64 && size > head.len() as u64 {
        read(needed).map_err(io)?
    } else {
        head
    };
    boot::partition::probe(&data, size).map_err(|e| e.to_string())
}

/// The kernel command line: defaults, what the PVM template needs, the devices (without
/// ACPI), the root file system, then the user's. `root` is the device [`root_device`]
/// chose; it is mounted read-only when the first disk is, and left out when the user's
/// command line has a `root=`.
pub fn kernel_cmdline(
    cfg: &VmConfig,
    template: CpuTemplate,
    device_entries: &[String],
    root: Option<&str>,
) -> Result<String, Error> {
    let user = cfg.cmdline.as_deref().unwrap_or("");
    let root = match (root, cfg.user_disks().first()) {
        (Some(dev), Some(d)) if !user_gives_root(cfg) => {
            format!("root={dev} {}", if d.read_only { "ro" } else { "rw" })
        }
        _ => String::new(),
    };
    let mut parts = vec![
        boot::cmdline::DEFAULT_CMDLINE,
        template.extra_kernel_cmdline(),
    ];
    // With ACPI the DSDT describes the virtio devices: listing them here as well would make
    // Linux probe each twice, and on a hardware-reduced ACPI machine the ISA IRQ numbers of
    // these entries are not even mapped.
    if !cfg.acpi {
        parts.extend(device_entries.iter().map(String::as_str));
    }
    parts.push(&root);
    parts.push(user);
    let cmdline = boot::cmdline::build(&parts).map_err(Error::Cmdline)?;
    log::info!("kernel command line: {cmdline}");
    Ok(cmdline)
}

/// Command line, MP table (CPUs and IOAPIC; Linux ignores it when it finds ACPI), ACPI
/// tables, zero page (e820, command line, initrd, where the ACPI tables are).
pub fn write_boot_tables(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    layout: &MemoryLayout,
    loaded: &LoadedKernel,
    cmdline: &str,
    devices: &DeviceManager,
) -> Result<(), Error> {
    let kernel = &loaded.kernel;
    boot::cmdline::check_fits(cmdline, kernel.setup_header.as_ref()).map_err(Error::Cmdline)?;
    let (cmdline_addr, cmdline_size) =
        boot::cmdline::write_cmdline(mem, cmdline).map_err(Error::Cmdline)?;
    arch::mptable::setup_mptable(mem, cfg.cpus, arch::layout::IRQ_MAX)
        .map_err(|e| Error::BootData(format!("MP table: {e}")))?;
    let acpi_rsdp = if cfg.acpi {
        let acpi = arch::acpi::AcpiConfig {
            num_cpus: cfg.cpus,
            virtio_devices: devices
                .virtio_slots()
                .iter()
                .map(|s| (s.base, s.irq))
                .collect(),
        };
        Some(
            arch::acpi::setup_acpi(mem, &acpi)
                .map_err(|e| Error::BootData(format!("ACPI tables: {e}")))?,
        )
    } else {
        None
    };
    boot::zeropage::write_zero_page(
        mem,
        boot::zeropage::ZeroPageParams {
            setup_header: kernel.setup_header,
            cmdline_addr,
            cmdline_size,
            initrd: loaded.initrd,
            e820: layout.e820_map(),
            mem_size: layout.size(),
            acpi_rsdp,
        },
    )
    .map_err(|e| Error::BootData(format!("zero page: {e}")))
}

/// One vCPU per `--cpus`, each with its CPUID, MSRs and LAPIC; the boot CPU at the entry.
#[allow(clippy::too_many_arguments)]
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    template: CpuTemplate,
    loaded: &LoadedKernel,
    buses: (&Arc<crate::bus::Bus>, &Arc<crate::bus::Bus>),
    exits: &Arc<ExitCounters>,
) -> Result<Vec<Vcpu>, Error> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let setup = BootSetup {
        cpuid: &supported,
        template,
        num_cpus: cfg.cpus,
        entry: loaded.kernel.entry,
    };
    let msrs = Arc::new(msr_index(kvm)?);
    (0..cfg.cpus)
        .map(|index| {
            let mut v = Vcpu::new(
                vm,
                index,
                buses.0.clone(),
                buses.1.clone(),
                mem.clone(),
                exits.clone(),
            )?;
            v.configure(&setup)?;
            v.set_msr_index(msrs.clone());
            Ok(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockConfig;

    fn cfg() -> VmConfig {
        VmConfig::new("/vmlinux".into())
    }

    fn disk(read_only: bool) -> BlockConfig {
        BlockConfig {
            path: "/disk".into(),
            read_only,
            serial: None,
            limit: Default::default(),
        }
    }

    #[test]
    fn checks_cpus_and_memory_once() {
        assert!(VmBuilder::new(cfg()).is_ok());
        let bad = |f: fn(&mut VmConfig)| {
            let mut c = cfg();
            f(&mut c);
            VmBuilder::new(c).err().unwrap()
        };
        assert!(bad(|c| c.cpus = 0).to_string().contains("--cpus 0"));
        assert!(bad(|c| c.memory = 1 << 20).is_bad_input());
        assert!(bad(|c| c.memory = 64 << 40).is_bad_input());
    }

    /// A scratch image in the temp dir, removed on drop.
    struct Image(std::path::PathBuf);
    impl Image {
        fn new(tag: &str, bytes: &[u8], size: u64) -> Self {
            let p =
                std::env::temp_dir().join(format!("minivmm-root-{tag}-{}.img", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(size)
                .unwrap();
            Self(p)
        }
        fn disk(&self, read_only: bool) -> BlockConfig {
            BlockConfig {
                path: self.0.clone(),
                ..disk(read_only)
            }
        }
    }
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn line(c: &VmConfig) -> String {
        kernel_cmdline(c, CpuTemplate::Host, &[], root_device(c).as_deref()).unwrap()
    }

    /// A first sector with the MBR signature and `entries` (slot, type, start, sectors).
    fn mbr(entries: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 512];
        for &(slot, kind, start, len) in entries {
            let e = &mut d[446 + 16 * slot..462 + 16 * slot];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        }
        d[510..].copy_from_slice(&[0x55, 0xaa]);
        d
    }

    #[test]
    fn root_follows_the_first_disk() {
        let mut c = cfg();
        assert!(!line(&c).contains("root="));
        // A whole-disk image (no partition table): the disk itself.
        let whole = Image::new("whole", &[], 1 << 20);
        c.disks.push(whole.disk(false));
        assert!(line(&c).contains("root=/dev/vda rw"), "{}", line(&c));
        c.disks[0].read_only = true;
        assert!(line(&c).contains("root=/dev/vda ro"));
        // A disk that cannot be read at all is refused when opened; here it just leaves
        // the default.
        c.disks[0] = disk(true);
        assert!(line(&c).contains("root=/dev/vda ro"));
        c.cmdline = Some("root=/dev/vdb".into());
        assert_eq!(root_device(&c), None);
        let l = line(&c);
        assert!(
            l.contains("root=/dev/vdb") && !l.contains("/dev/vda"),
            "{l}"
        );
    }

    #[test]
    fn a_cloud_init_seed_is_never_the_root() {
        let seed = Image::new("seed", &[], 1 << 20);
        let mut c = cfg();
        c.disks.push(seed.disk(true));
        c.seed_disk = true;
        assert_eq!(root_device(&c), None);
        assert!(!line(&c).contains("root="), "{}", line(&c));
        // With a disk of the user's before it, that one is the root.
        let whole = Image::new("before-seed", &[], 1 << 20);
        c.disks.insert(0, whole.disk(false));
        assert!(line(&c).contains("root=/dev/vda rw"));
    }

    #[test]
    fn root_on_a_partition() {
        // MBR without a disk signature: the partition's device node.
        let img = Image::new("mbr", &mbr(&[(1, 0x83, 2048, 2048)]), 4 << 20);
        let mut c = cfg();
        c.disks.push(img.disk(false));
        assert_eq!(root_device(&c).as_deref(), Some("/dev/vda2"));
        assert!(line(&c).contains("root=/dev/vda2 rw"));
        // With a signature: its PARTUUID.
        let mut sector = mbr(&[(0, 0x83, 2048, 2048)]);
        sector[440..444].copy_from_slice(&0xcafe_f00du32.to_le_bytes());
        let img = Image::new("mbr-sig", &sector, 4 << 20);
        c.disks[0] = img.disk(true);
        assert!(line(&c).contains("root=PARTUUID=cafef00d-01 ro"));
        // The same image twice (two copies): PARTUUID would be ambiguous.
        let twin = Image::new("mbr-twin", &sector, 4 << 20);
        c.disks.push(twin.disk(false));
        assert_eq!(root_device(&c).as_deref(), Some("/dev/vda1"));
    }

    #[test]
    fn corrupt_tables_fall_back_to_the_whole_disk() {
        // A protective MBR announcing a GPT whose header is garbage.
        let mut bytes = mbr(&[(0, 0xee, 1, 8191)]);
        bytes.extend_from_slice(b"EFI PART garbage");
        let img = Image::new("corrupt-gpt", &bytes, 4 << 20);
        let mut c = cfg();
        c.disks.push(img.disk(false));
        assert_eq!(root_device(&c).as_deref(), Some("/dev/vda"));
        // A table without a Linux partition.
        let img = Image::new("swap-only", &mbr(&[(0, 0x82, 2048, 2048)]), 4 << 20);
        c.disks[0] = img.disk(false);
        assert_eq!(root_device(&c).as_deref(), Some("/dev/vda"));
    }

    #[test]
    fn device_entries_only_without_acpi() {
        let entries = vec!["virtio_mmio.device=4K@0xc0001000:5".to_string()];
        let mut c = cfg();
        let with_acpi = kernel_cmdline(&c, CpuTemplate::Host, &entries, None).unwrap();
        assert!(!with_acpi.contains("virtio_mmio"));
        c.acpi = false;
        let without = kernel_cmdline(&c, CpuTemplate::Host, &entries, None).unwrap();
        assert!(without.contains("virtio_mmio.device=4K@0xc0001000:5"));
    }

    #[test]
    fn disk_names_are_linux_names() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
    }

    #[test]
    fn inputs_are_opened_before_anything_else() {
        let mut c = cfg();
        c.kernel = "/nonexistent/vmlinux".into();
        let e = open_inputs(&c, None).err().unwrap();
        assert!(e.is_bad_input() && e.to_string().contains("/nonexistent/vmlinux"));
        let mut c = VmConfig::new("/".into());
        c.rng = None;
        let e = open_inputs(&c, None).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let mut c = VmConfig::new("/proc/self/exe".into());
        c.rng = Some("/nonexistent/rng".into());
        let e = open_inputs(&c, None).err().unwrap();
        assert!(e.is_bad_input() && e.to_string().contains("/nonexistent/rng"));
    }

    #[test]
    fn too_many_devices_and_a_disk_twice_are_bad_input() {
        let img = std::env::temp_dir().join(format!("minivmm-twice-{}.img", std::process::id()));
        std::fs::write(&img, [0u8; 512]).unwrap();
        let link = img.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&img, &link).unwrap();
        let with = |paths: &[&Path]| {
            let mut c = cfg();
            for p in paths {
                let mut d = disk(true);
                d.path = p.to_path_buf();
                c.disks.push(d);
            }
            VmBuilder::new(c)
        };
        // The same image under another name (a hard link) is still the same image.
        let e = with(&[&img, Path::new("/nonexistent"), &link])
            .err()
            .unwrap();
        assert!(e.is_bad_input());
        assert!(
            e.to_string().contains("given twice (as vda and vdc)"),
            "{e}"
        );
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&img);

        let mut c = cfg();
        c.disks = (0..MAX_VIRTIO_DEVICES).map(|_| disk(true)).collect();
        let e = VmBuilder::new(c).err().unwrap();
        assert!(e.is_bad_input());
        assert!(
            e.to_string()
                .starts_with(&format!("{} virtio devices", MAX_VIRTIO_DEVICES + 1)),
            "{e}"
        );
        let mut c = cfg();
        c.rng = None;
        c.disks = (0..MAX_VIRTIO_DEVICES).map(|_| disk(true)).collect();
        assert!(VmBuilder::new(c).is_ok());
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("minivmm-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        let _ = std::fs::remove_file(&fifo);
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Nobody writes to the FIFO: a blocking open would hang this test.
        let e = open("kernel", &fifo).err().unwrap();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(open("initrd", Path::new("/dev/zero")).is_err());
        // Nobody reads it either: a blocking open for writing would hang too.
        let e = open_serial_file(&fifo).err().unwrap();
        assert!(e.is_bad_input(), "{e}");
        assert!(open_serial_file(Path::new("/dev/null")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_serial_file_stops_growing_at_its_cap() {
        let mut w = CappedWriter::new(Vec::new(), "test".into(), 10);
        assert_eq!(w.write(b"0123456").unwrap(), 7);
        // The rest of the write is dropped but reported written: the UART never retries.
        assert_eq!(w.write(b"789abc").unwrap(), 6);
        assert_eq!(w.write(b"more").unwrap(), 4);
        assert_eq!(w.inner, b"0123456789");
    }
}

//! The `minivmm` command: parse the command line into a [`vmm::VmConfig`], set up logging,
//! build and start the VM, drive it from the terminal and the signals ([`console`]), and
//! turn how it ended into an exit code.
//!
//! This is where a learner starts: `main` → [`vmm::VmBuilder::build`]
//! (vmm/src/builder.rs), which opens `/dev/kvm` and walks the VM from creation to the
//! guest's first instruction, then [`vmm::Vm::start`].

mod console;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use console::Ending;
use minivmm_cli::flags::{
    parse_cidr, parse_disk, parse_duration, parse_net, parse_rng, parse_serial, parse_size_arg,
    RngArg,
};
use vmm::config::{BlockConfig, CpuTemplate, CpuTemplateChoice, NetConfig, SerialMode, VmConfig};
use vmm::seccomp::{SeccompMode, ThreadKind};
use vmm::VmOutcome;

/// Exit codes, as documented in the README.
mod exit {
    /// The guest rebooted or powered off, or the user quit from the console.
    pub const OK: u8 = 0;
    /// minivmm failed on the host side (KVM, memory, threads).
    pub const VMM_ERROR: u8 = 1;
    /// Bad input: a flag, file or size that cannot be used.
    pub const BAD_INPUT: u8 = 2;
    /// The guest crashed: triple fault, KVM internal or emulation error, failed entry.
    pub const GUEST_CRASH: u8 = 3;
    /// minivmm itself failed while the VM ran: a thread panicked (a bug; please report it).
    pub const VMM_PANIC: u8 = 4;
    /// Stopped by signal N: 128 + N, as shells report it.
    pub const SIGNAL_BASE: u8 = 128;
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CpuTemplateArg {
    /// `pvm` on a PVM host, `host` otherwise (logged at info level).
    Auto,
    /// The CPU features the host's KVM supports.
    Host,
    /// Hide what the PVM instruction emulator cannot run (see the README, "PVM hosts").
    Pvm,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SeccompArg {
    /// Every thread gets its filter; a forbidden system call ends minivmm (exit code 4).
    On,
    /// Filters let everything through; the kernel logs what they would refuse (dmesg).
    Log,
    /// No filters.
    Off,
}

/// Boot a Linux kernel directly on KVM.
#[derive(Parser, Debug)]
#[command(
    name = "minivmm",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Kernel image: ELF vmlinux (with or without a PVH note) or bzImage.
    #[arg(long, value_name = "PATH", required = true)]
    kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs cpio archive).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Extra kernel command line, appended to the default
    /// "console=ttyS0 reboot=k panic=1" and to minivmm's device entries. Repeatable.
    #[arg(long, value_name = "STR")]
    cmdline: Vec<String>,

    /// Guest RAM, e.g. 256M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size_arg)]
    memory: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,

    /// A raw disk image or block device: PATH[,readonly=on][,serial=ID]. Repeatable: the
    /// guest sees /dev/vda, /dev/vdb, ... in order. With a disk and no root= in --cmdline,
    /// "root=/dev/vda rw" is added.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<BlockConfig>,

    /// A network interface: tap=NAME[,mac=MAC] uses an existing tap as it is;
    /// bridge=BR[,mac=MAC] creates a tap on bridge BR, removed when the VM ends.
    /// Repeatable: eth0, eth1, ... in order. Without mac=, a stable MAC is derived from
    /// --name (or the kernel, initrd, disks and command line) and the interface's index.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    net: Vec<NetConfig>,

    /// A name for the VM (seeds derived MAC addresses).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// The entropy device (virtio-rng, the guest's /dev/hwrng): src=PATH reads PATH
    /// (default src=/dev/urandom), none leaves the device out.
    #[arg(long, value_name = "SPEC", default_value = "src=/dev/urandom", value_parser = parse_rng)]
    rng: RngArg,

    /// Where the guest's serial console goes: stdio, file:PATH or none.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    serial: SerialMode,

    /// CPUID template.
    #[arg(long, value_enum, default_value = "auto")]
    cpu_template: CpuTemplateArg,

    /// Do not write ACPI tables: describe the machine with the MP table, and the virtio
    /// devices with virtio_mmio.device= entries on the kernel command line (for kernels
    /// without CONFIG_ACPI). With ACPI (the default), poweroff in the guest ends the VM
    /// and SIGTERM presses the guest's power button.
    #[arg(long)]
    no_acpi: bool,

    /// After SIGTERM has pressed the ACPI power button, how long to wait for the guest to
    /// power off before stopping it hard (exit code 143): e.g. 30s, 500ms, 10 (seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: std::time::Duration,

    /// Print KVM exit statistics (by reason, port and MMIO address) and device counters
    /// when the VM ends.
    #[arg(long)]
    stats: bool,

    /// Seccomp filters, one per thread kind (vCPU, VMM, each device worker, this console):
    /// only the system calls that thread needs.
    #[arg(long, value_enum, default_value = "on")]
    seccomp: SeccompArg,

    /// Log level (messages go to stderr). RUST_LOG overrides it.
    #[arg(long, value_enum, default_value = "warn")]
    log_level: LogLevel,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Host bridges for VM networks (no ip(8) knowledge needed).
    Network {
        #[command(subcommand)]
        action: NetworkAction,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkAction {
    /// Create bridge BR and bring it up, optionally with a host address.
    Create {
        /// Bridge name (at most 15 bytes).
        bridge: String,
        /// Host address on the bridge, e.g. 10.0.0.1/24.
        #[arg(long, value_name = "ADDR/LEN", value_parser = parse_cidr)]
        cidr: Option<(std::net::Ipv4Addr, u8)>,
    },
    /// Delete bridge BR.
    Delete {
        /// Bridge name.
        bridge: String,
    },
}

/// clap's message up to its usage section, on one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn init_logger(level: LogLevel) {
    let filter = match level {
        LogLevel::Off => "off",
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    env_logger::Builder::new()
        .parse_filters(filter)
        .parse_env("RUST_LOG")
        .format_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() {
                exit::BAD_INPUT
            } else {
                exit::OK
            };
            if e.use_stderr() {
                eprintln!("minivmm: {}", one_line(&e.to_string()));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    init_logger(args.log_level);
    terminal::install_panic_hook();

    if let Some(Command::Network { action }) = args.command {
        let result = match &action {
            NetworkAction::Create { bridge, cidr } => vmm::network::create_bridge(bridge, *cidr),
            NetworkAction::Delete { bridge } => vmm::network::delete_bridge(bridge),
        };
        return match result {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => {
                eprintln!("minivmm: {e}");
                ExitCode::from(exit::BAD_INPUT)
            }
        };
    }
    let Some(kernel) = args.kernel else {
        // clap enforces --kernel when there is no subcommand.
        eprintln!("minivmm: --kernel is required");
        return ExitCode::from(exit::BAD_INPUT);
    };

    let interactive = args.serial == SerialMode::Stdio;
    let cfg = VmConfig {
        initrd: args.initrd,
        cmdline: (!args.cmdline.is_empty()).then(|| args.cmdline.join(" ")),
        memory: args.memory,
        cpus: args.cpus,
        serial: args.serial,
        cpu_template: match args.cpu_template {
            CpuTemplateArg::Auto => CpuTemplateChoice::Auto,
            CpuTemplateArg::Host => CpuTemplateChoice::Fixed(CpuTemplate::Host),
            CpuTemplateArg::Pvm => CpuTemplateChoice::Fixed(CpuTemplate::Pvm),
        },
        disks: args.disk,
        nets: args.net,
        rng: match args.rng {
            RngArg::None => None,
            RngArg::Source(p) => Some(p),
        },
        detailed_counters: args.stats,
        name: args.name,
        acpi: !args.no_acpi,
        seccomp: match args.seccomp {
            SeccompArg::On => SeccompMode::Enforce,
            SeccompArg::Log => SeccompMode::Log,
            SeccompArg::Off => SeccompMode::Off,
        },
        ..VmConfig::new(kernel)
    };
    match run(cfg, interactive, args.shutdown_timeout, args.stats) {
        Ok(ending) => exit_code(ending),
        Err(e) => {
            eprintln!("minivmm: {e}");
            ExitCode::from(if e.is_bad_input() {
                exit::BAD_INPUT
            } else {
                exit::VMM_ERROR
            })
        }
    }
}

/// Build, start and drive the VM to its end.
fn run(
    cfg: VmConfig,
    interactive: bool,
    shutdown_timeout: std::time::Duration,
    stats: bool,
) -> Result<Ending, vmm::Error> {
    let host =
        |what: &'static str| move |e: std::io::Error| vmm::Error::Host(format!("{what}: {e}"));
    // Before any thread exists: the VM's threads inherit the blocked signals, so only the
    // signalfd sees them.
    let signals = console::take_signals().map_err(host("signal mask"))?;
    let seccomp = cfg.seccomp;
    let vm = vmm::VmBuilder::new(cfg)?
        .console_output(Box::new(std::io::stdout()))
        .build()?;
    // From here on the terminal is ours: put it back whatever happens.
    let _raw = if interactive {
        Some(terminal::RawModeGuard::new().map_err(host("terminal"))?)
    } else {
        None
    };
    vmm::seccomp::set_violation_hook(terminal::restore);
    vm.start()?;
    // This thread only drives the console from here on: it gets its filter too.
    vmm::seccomp::apply_kind(ThreadKind::Frontend, "minivmm", seccomp)
        .map_err(|e| vmm::Error::Host(e.to_string()))?;
    let stdin = interactive.then_some(libc::STDIN_FILENO);
    let ending = console::run(&vm, stdin, &signals, shutdown_timeout).map_err(host("console"))?;
    drop(_raw);
    if stats {
        eprint!("{}", vm.counters().report());
    }
    Ok(ending)
}

fn exit_code(ending: Ending) -> ExitCode {
    match ending {
        Ending::Vm(VmOutcome::Reset) => {
            log::info!("guest reset: exiting");
            ExitCode::from(exit::OK)
        }
        Ending::Vm(VmOutcome::PowerOff) => {
            log::info!("guest powered off: exiting");
            ExitCode::from(exit::OK)
        }
        Ending::Vm(VmOutcome::Stopped) => ExitCode::from(exit::OK),
        Ending::Quit => {
            eprintln!("\r\nminivmm: quit from the console");
            ExitCode::from(exit::OK)
        }
        Ending::Signal(n) => {
            eprintln!("\r\nminivmm: stopped by signal {n}");
            ExitCode::from(exit::SIGNAL_BASE.saturating_add(n as u8))
        }
        Ending::Vm(VmOutcome::Crash(why)) => {
            eprintln!("minivmm: guest crashed: {why}");
            ExitCode::from(exit::GUEST_CRASH)
        }
        Ending::Vm(VmOutcome::VmmFailure(why)) => {
            eprintln!("minivmm: internal error, the VM was stopped: {why}");
            ExitCode::from(exit::VMM_PANIC)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}

//! The `minivmm` command: parse the command line into a [`vmm::VmConfig`] (or, with
//! `--restore`, the options of a VM restored from a snapshot), set up logging, build and
//! start the VM, serve its control API (`--api-sock`, the `api` crate) on a thread of its
//! own, drive it from the terminal and the signals ([`console`]), and turn how it ended
//! into an exit code. The `snapshot`, `pause`, `resume`, `stop` and `status` subcommands
//! are clients of another minivmm's API ([`client`]).
//!
//! This is where a learner starts: `main` → [`vmm::VmBuilder::build`]
//! (vmm/src/builder.rs), which opens `/dev/kvm` and walks the VM from creation to the
//! guest's first instruction, then [`vmm::Vm::start`].

mod client;
mod console;
mod lab_console;
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
use vmm::{RestoreOptions, VmOutcome};

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
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    kernel: Option<PathBuf>,

    /// Restore the VM snapshotted in DIR (`minivmm snapshot`) instead of booting a kernel.
    /// The machine comes from the snapshot: --kernel, --initrd, --cmdline, --memory,
    /// --cpus, --rng, --no-acpi, --cpu-template and --cloud-init are refused with it.
    /// --disk, if given, replaces the snapshot's images (as many, in the same order, each
    /// with the same readonly= setting: a clone's own copies); --net its interfaces.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = [
            "kernel", "initrd", "cmdline", "memory", "cpus", "rng", "no_acpi", "cpu_template",
            "cloud_init",
        ]
    )]
    restore: Option<PathBuf>,

    /// Serve the VM's control API (HTTP/1.1 and JSON, see docs/api.json) on a Unix socket
    /// at PATH, mode 0600, removed when minivmm exits. A stale socket file is replaced; a
    /// path where something listens is refused.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,

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
    /// minivmm adds the first disk's root: "root=/dev/vda rw" for a whole-disk file
    /// system, or its first Linux partition ("root=PARTUUID=... rw") when it has a GPT or
    /// MBR partition table; "ro" instead of "rw" with readonly=on.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    disk: Vec<BlockConfig>,

    /// A cloud-init NoCloud seed, attached as a read-only disk after the --disk ones (a
    /// FAT file system labelled CIDATA, made in memory and never left on the host): DIR
    /// holds user-data and optionally meta-data, network-config and vendor-data (as for
    /// cloud-localds); a FILE is the user-data. meta-data, when not given, is generated:
    /// "instance-id: iid-NAME" and "local-hostname: NAME" from --name. At most 16 MiB.
    #[arg(long, value_name = "DIR|FILE")]
    cloud_init: Option<PathBuf>,

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
    /// Snapshot a running minivmm (started with --api-sock) into DIR, for --restore.
    Snapshot {
        /// The VM's API socket.
        #[arg(long, value_name = "PATH", required = true)]
        api_sock: PathBuf,
        /// The directory to write (created; must not exist or be empty).
        dir: PathBuf,
        /// What the VM does once the snapshot is written.
        #[arg(long, value_enum, default_value = "resume")]
        then: client::Then,
    },
    /// Pause a running minivmm (started with --api-sock).
    Pause {
        /// The VM's API socket.
        #[arg(long, value_name = "PATH", required = true)]
        api_sock: PathBuf,
    },
    /// Resume a paused minivmm.
    Resume {
        /// The VM's API socket.
        #[arg(long, value_name = "PATH", required = true)]
        api_sock: PathBuf,
    },
    /// Stop a minivmm now (hard; it exits 0).
    Stop {
        /// The VM's API socket.
        #[arg(long, value_name = "PATH", required = true)]
        api_sock: PathBuf,
    },
    /// Print a minivmm's state, configuration and devices (GET /vm, as JSON).
    Status {
        /// The VM's API socket.
        #[arg(long, value_name = "PATH", required = true)]
        api_sock: PathBuf,
    },
    /// Manage many VMs from a web page and a REST API on a loopback address (see
    /// docs/serve.md). Prints the page's URL, with its access token, on its first line.
    Serve {
        /// Where to listen: a loopback address only (127.0.0.0/8, ::1); port 0 picks one.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the VMs' sockets, consoles and configurations live while it runs
        /// (default: $MINIVMM_STATE_DIR, /run/minivmm as root, else
        /// $XDG_RUNTIME_DIR/minivmm).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The built test guest, offered as images (default: $MINIVMM_TEST_GUEST, else the
        /// newest build under ~/.cache/minivmm/guest).
        #[arg(long, value_name = "DIR")]
        guest_dir: Option<PathBuf>,
    },
    /// Bring a lab up: its networks and VMs, described in a lab file (see docs/labs.md).
    /// Waits until cloud-init has finished in every VM, then prints a table. Running it
    /// again on a lab that is up changes nothing.
    Up {
        /// A lab file (a path, or NAME for labs/NAME.toml).
        lab: String,
        #[command(flatten)]
        state: StateDirArg,
        /// How long each VM may take, from its start, to finish cloud-init.
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_lab_duration)]
        timeout: std::time::Duration,
        /// At most N vCPUs boot at once; the next VM starts when one is ready (0: the
        /// host's core count).
        #[arg(long, value_name = "N", default_value_t = 0)]
        jobs: usize,
    },
    /// Take a lab down: ACPI shutdown of every VM (hard stop after --timeout), and the
    /// bridges it made removed. Works from the state directory alone; twice is harmless.
    Down {
        /// The lab (its name, or its lab file).
        lab: String,
        #[command(flatten)]
        state: StateDirArg,
        /// How long the guests get to power off before they are stopped hard.
        #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_lab_duration)]
        timeout: std::time::Duration,
        /// Also remove the lab's disks, keys and logs.
        #[arg(long)]
        purge: bool,
    },
    /// List lab VMs: state, address, pid, uptime, CPU %, resident memory.
    Ls {
        /// Only this lab.
        lab: Option<String>,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Log in to a lab VM (VM or LAB/VM) with the lab's key, or run CMD there.
    Ssh {
        /// The VM.
        vm: String,
        #[command(flatten)]
        state: StateDirArg,
        /// The command to run (after --).
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Attach to a lab VM's serial console (Ctrl-A x detaches; the VM runs on).
    Console {
        /// The VM (VM or LAB/VM).
        vm: String,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Internal: runs one lab VM and records how it ended (started by `up`).
    #[command(hide = true)]
    LabKeeper {
        /// The VM's state directory.
        dir: PathBuf,
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

/// A lab command's duration: `--shutdown-timeout`'s forms, or whole minutes (`30m`) or
/// hours (`2h`).
fn parse_lab_duration(s: &str) -> Result<std::time::Duration, String> {
    let whole = |n: &str, unit: u64| {
        n.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(std::time::Duration::from_secs)
    };
    if let Some(d) = s.strip_suffix('h').and_then(|n| whole(n, 3600)) {
        return Ok(d);
    }
    match s.strip_suffix('m') {
        Some(n) if !n.ends_with('m') => whole(n, 60)
            .ok_or_else(|| format!("'{s}': expected a duration such as 30m, 90s or 500ms")),
        _ => parse_duration(s),
    }
}

/// `--state-dir` of the lab commands.
#[derive(clap::Args, Debug)]
struct StateDirArg {
    /// Where labs keep their state (default: $MINIVMM_STATE_DIR, else /var/lib/minivmm as
    /// root, else $XDG_STATE_HOME/minivmm).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    /// The directory, absolute (the VMs' socket paths are made from it).
    fn dir(&self) -> PathBuf {
        let d = self
            .state_dir
            .clone()
            .unwrap_or_else(labs::state::default_dir);
        std::path::absolute(&d).unwrap_or(d)
    }
}

/// Print a lab command's error (each problem of a lab file on a line of its own) and
/// turn it into an exit code.
fn lab_error(e: labs::Error) -> ExitCode {
    for line in e.to_string().lines() {
        eprintln!("minivmm: {line}");
    }
    ExitCode::from(if e.is_bad_input() {
        exit::BAD_INPUT
    } else {
        exit::VMM_ERROR
    })
}

/// The lab subcommands (`up`, `down`, `ls`, `ssh`, `console`, and the keeper).
fn lab_command(cmd: Command) -> ExitCode {
    match cmd {
        Command::Up {
            lab,
            state,
            timeout,
            jobs,
        } => {
            let minivmm = std::env::current_exe().unwrap_or_else(|_| "minivmm".into());
            let opts = labs::up::UpOptions {
                state_dir: state.dir(),
                timeout,
                jobs,
                minivmm,
                progress: |line| eprintln!("minivmm: {line}"),
            };
            match labs::up::up(&lab, &opts) {
                Ok(report) => {
                    print!("{}", report.table());
                    if report.vms.iter().all(|v| v.ok) {
                        ExitCode::from(exit::OK)
                    } else {
                        eprintln!(
                            "minivmm: lab {} is not all up; `minivmm ls` shows it, `minivmm \
                             down {}` takes it down",
                            report.lab, report.lab
                        );
                        ExitCode::from(exit::VMM_ERROR)
                    }
                }
                Err(e) => lab_error(e),
            }
        }
        Command::Down {
            lab,
            state,
            timeout,
            purge,
        } => {
            let opts = labs::down::DownOptions {
                state_dir: state.dir(),
                timeout,
                purge,
            };
            match labs::down::down(&lab, &opts) {
                Ok(report) => {
                    print!("{}", report.summary());
                    ExitCode::from(exit::OK)
                }
                Err(e) => lab_error(e),
            }
        }
        Command::Ls { lab, state } => {
            match labs::ls::rows(
                &state.dir(),
                lab.as_deref(),
                std::time::Duration::from_millis(250),
            ) {
                Ok(rows) => {
                    print!("{}", labs::ls::table(&rows));
                    ExitCode::from(exit::OK)
                }
                Err(e) => lab_error(e),
            }
        }
        Command::Ssh { vm, state, cmd } => match labs::ssh::command(&state.dir(), &vm, &cmd) {
            Ok(mut c) => {
                use std::os::unix::process::CommandExt;
                let e = c.exec();
                eprintln!("minivmm: running ssh: {e}");
                ExitCode::from(exit::VMM_ERROR)
            }
            Err(e) => lab_error(e),
        },
        Command::Console { vm, state } => ExitCode::from(lab_console::attach(&state.dir(), &vm)),
        Command::LabKeeper { dir } => match labs::keeper::run(&dir) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(exit::VMM_ERROR)),
            Err(e) => lab_error(e),
        },
        _ => ExitCode::from(exit::VMM_ERROR),
    }
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

    match args.command {
        Some(Command::Network { action }) => {
            let result = match &action {
                NetworkAction::Create { bridge, cidr } => {
                    vmm::network::create_bridge(bridge, *cidr)
                }
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
        Some(Command::Snapshot {
            api_sock,
            dir,
            then,
        }) => return ExitCode::from(client::snapshot(&api_sock, &dir, then)),
        Some(Command::Pause { api_sock }) => {
            return ExitCode::from(client::action(&api_sock, "pause"))
        }
        Some(Command::Resume { api_sock }) => {
            return ExitCode::from(client::action(&api_sock, "resume"))
        }
        Some(Command::Stop { api_sock }) => {
            return ExitCode::from(client::action(&api_sock, "stop"))
        }
        Some(Command::Status { api_sock }) => return ExitCode::from(client::status(&api_sock)),
        Some(Command::Serve {
            listen,
            state_dir,
            guest_dir,
        }) => {
            use clap::CommandFactory;
            let cloud_init = Args::command()
                .get_arguments()
                .any(|a| a.get_long() == Some("cloud-init"));
            let opts = serve::ServeOptions {
                listen,
                state_dir,
                guest_dir,
                cloud_init,
            };
            return match serve::run(opts) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("minivmm: {e}");
                    ExitCode::from(if e.is_bad_input() {
                        exit::BAD_INPUT
                    } else {
                        exit::VMM_ERROR
                    })
                }
            };
        }
        Some(
            cmd @ (Command::Up { .. }
            | Command::Down { .. }
            | Command::Ls { .. }
            | Command::Ssh { .. }
            | Command::Console { .. }
            | Command::LabKeeper { .. }),
        ) => return lab_command(cmd),
        None => {}
    }
    let seccomp = match args.seccomp {
        SeccompArg::On => SeccompMode::Enforce,
        SeccompArg::Log => SeccompMode::Log,
        SeccompArg::Off => SeccompMode::Off,
    };
    let source = match (args.restore, args.kernel) {
        (Some(dir), _) => {
            // Said here in the flag's words; what is inside is the VMM's to check.
            if let Err(why) = std::fs::metadata(&dir).and_then(|m| {
                if m.is_dir() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a directory"))
                }
            }) {
                eprintln!("minivmm: --restore {}: {why}", dir.display());
                return ExitCode::from(exit::BAD_INPUT);
            }
            Source::Restore(
                dir,
                RestoreOptions {
                    name: args.name,
                    nets: (!args.net.is_empty()).then_some(args.net),
                    disks: (!args.disk.is_empty()).then_some(args.disk),
                    serial: Some(args.serial),
                    seccomp,
                    detailed_counters: args.stats,
                },
            )
        }
        (None, Some(kernel)) => {
            let mut cfg = VmConfig {
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
                seccomp,
                ..VmConfig::new(kernel)
            };
            // The seed exists from here on only as a descriptor: every way out of main
            // closes it, and the kernel frees it (see the cloudinit crate).
            let seed = match args.cloud_init.as_deref().map(|p| attach_seed(&mut cfg, p)) {
                Some(Ok(file)) => Some(file),
                Some(Err(e)) => {
                    eprintln!("minivmm: {e}");
                    return ExitCode::from(if e.is_bad_input() {
                        exit::BAD_INPUT
                    } else {
                        exit::VMM_ERROR
                    });
                }
                None => None,
            };
            Source::Boot(Box::new(cfg), seed)
        }
        (None, None) => {
            // clap enforces --kernel without --restore or a subcommand.
            eprintln!("minivmm: --kernel or --restore is required");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    // The socket before the VM: a path in use is bad input, found before anything exists.
    // Dropped (the file removed) on every way out of main; see ApiServer::serve.
    let api = match args
        .api_sock
        .as_deref()
        .map(api::ApiServer::bind)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("minivmm: {e}");
            return ExitCode::from(if e.is_bad_input() {
                exit::BAD_INPUT
            } else {
                exit::VMM_ERROR
            });
        }
    };
    let opts = RunOptions {
        seccomp,
        shutdown_timeout: args.shutdown_timeout,
        stats: args.stats,
    };
    match run(source, api.as_ref(), &opts) {
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

/// Read `--cloud-init PATH`, write its seed to an unnamed temporary file and append it to
/// `cfg`'s disks, read-only, as `/proc/self/fd/N`; the returned file must stay open until
/// the VM is built (the block device then holds its own descriptor).
fn attach_seed(
    cfg: &mut VmConfig,
    path: &std::path::Path,
) -> Result<std::fs::File, cloudinit::SeedError> {
    // Named: its name. Unnamed: what its MACs are derived from, the kernel, initrd,
    // disks and command line (taken before the seed is one of the disks).
    let identity = cloudinit::Identity::new(cfg.name.as_deref(), &cfg.mac_seed());
    let seed = cloudinit::Seed::read(path, &identity)?;
    let file = seed.write_temp(&std::env::temp_dir())?;
    log::info!(
        "cloud-init seed from {}: {} ({} bytes of FAT16, label {}) as {}",
        path.display(),
        seed.files().map(|f| f.0).collect::<Vec<_>>().join(", "),
        file.metadata().map_or(0, |m| m.len()),
        cloudinit::LABEL,
        vmm::builder::disk_name(cfg.disks.len())
    );
    cfg.disks.push(BlockConfig {
        path: cloudinit::fd_path(&file),
        read_only: true,
        serial: Some("cidata".into()),
        limit: Default::default(),
    });
    cfg.seed_disk = true;
    Ok(file)
}

/// What the VM is made from.
enum Source {
    /// A kernel to boot, and the cloud-init seed's file (`--cloud-init`) if any.
    Boot(Box<VmConfig>, Option<std::fs::File>),
    /// A snapshot directory to restore, and what may change.
    Restore(PathBuf, RestoreOptions),
}

/// How to run it.
struct RunOptions {
    seccomp: SeccompMode,
    shutdown_timeout: std::time::Duration,
    stats: bool,
}

/// Stops the API server when dropped (however the console loop ends), so that the scope
/// that runs it can join its thread.
struct StopApi<'a>(Option<&'a api::ApiServer>);

impl Drop for StopApi<'_> {
    fn drop(&mut self) {
        if let Some(api) = self.0 {
            api.stop();
        }
    }
}

/// Build (or restore), start and drive the VM to its end, serving `api` meanwhile.
fn run(
    source: Source,
    api: Option<&api::ApiServer>,
    opts: &RunOptions,
) -> Result<Ending, vmm::Error> {
    let host =
        |what: &'static str| move |e: std::io::Error| vmm::Error::Host(format!("{what}: {e}"));
    // Before any thread exists: the VM's threads inherit the blocked signals, so only the
    // signalfd sees them.
    let signals = console::take_signals().map_err(host("signal mask"))?;
    let seccomp = opts.seccomp;
    let (builder, seed) = match source {
        Source::Boot(cfg, seed) => (vmm::VmBuilder::new(*cfg)?, seed),
        Source::Restore(dir, restore) => (vmm::VmBuilder::restore(&dir, restore)?, None),
    };
    let vm = builder
        .console_output(Box::new(std::io::stdout()))
        .build()?;
    // The seed's disk has opened it again: the inode lives as long as the VM's descriptor.
    drop(seed);
    let interactive = vm.info().config.serial == SerialMode::Stdio;
    // From here on the terminal is ours: put it back whatever happens.
    let _raw = if interactive {
        Some(terminal::RawModeGuard::new().map_err(host("terminal"))?)
    } else {
        None
    };
    vmm::seccomp::set_violation_hook(terminal::restore);
    vm.start()?;
    std::thread::scope(|scope| {
        // Whatever ends the console loop (or fails before it) stops the API thread, and
        // the scope joins it: the socket file is gone when run returns.
        let _stop_api = StopApi(api);
        if let Some(api) = api {
            let vm = &vm;
            std::thread::Builder::new()
                .name("api".into())
                .spawn_scoped(scope, move || {
                    // A failure or a panic (a bug) of the API costs the API, not the VM;
                    // either way serve has removed the socket file.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        api.serve(vm, seccomp)
                    }));
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("{e}; the VM runs on without its API"),
                        Err(_) => log::error!("the API thread panicked; the VM runs on"),
                    }
                })
                .map_err(host("spawning the API thread"))?;
        }
        // This thread only drives the console from here on: it gets its filter too.
        vmm::seccomp::apply_kind(ThreadKind::Frontend, "minivmm", seccomp)
            .map_err(|e| vmm::Error::Host(e.to_string()))?;
        let stdin = interactive.then_some(libc::STDIN_FILENO);
        let ending =
            console::run(&vm, stdin, &signals, opts.shutdown_timeout).map_err(host("console"))?;
        drop(_raw);
        if opts.stats {
            eprint!("{}", vm.counters().report());
        }
        Ok(ending)
    })
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
    fn lab_durations() {
        use std::time::Duration;
        assert_eq!(parse_lab_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_lab_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_lab_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lab_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_lab_duration("m").is_err());
        assert!(parse_lab_duration("xm").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}

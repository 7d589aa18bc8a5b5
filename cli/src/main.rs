//! The `minivmm` command: parse the command line into a [`vmm::VmConfig`], set up logging,
//! run the VM, and turn how it ended into an exit code.
//!
//! This is where a learner starts: `main` → [`vmm::run`] (vmm/src/lib.rs), which opens
//! `/dev/kvm` and walks the VM from creation to the guest's first instruction.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use vmm::config::{parse_size, CpuTemplate, CpuTemplateChoice, DiskConfig, SerialMode, VmConfig};
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
    /// Hide what the PVM instruction emulator cannot run (see docs/pvm.md).
    Pvm,
}

/// Boot a Linux kernel directly on KVM.
#[derive(Parser, Debug)]
#[command(name = "minivmm", version, about, max_term_width = 100)]
struct Args {
    /// Kernel image: ELF vmlinux (with or without a PVH note) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

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
    disk: Vec<DiskConfig>,

    /// Where the guest's serial console goes: stdio, file:PATH or none.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    serial: SerialMode,

    /// CPUID template.
    #[arg(long, value_enum, default_value = "auto")]
    cpu_template: CpuTemplateArg,

    /// Print KVM exit statistics when the VM ends.
    #[arg(long)]
    stats: bool,

    /// Log level (messages go to stderr). RUST_LOG overrides it.
    #[arg(long, value_enum, default_value = "warn")]
    log_level: LogLevel,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_serial(s: &str) -> Result<SerialMode, String> {
    match s {
        "stdio" => Ok(SerialMode::Stdio),
        "none" => Ok(SerialMode::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
            _ => Err(format!("'{s}': expected stdio, file:PATH or none")),
        },
    }
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty disk path")?;
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("readonly", "on")) => disk.read_only = true,
            Some(("readonly", "off")) => disk.read_only = false,
            Some(("serial", id)) => disk.serial = Some(id.to_string()),
            _ => {
                return Err(format!(
                    "unknown disk option '{opt}' (readonly=on|off, serial=ID)"
                ))
            }
        }
    }
    Ok(disk)
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
                // One line: clap's first line names the problem.
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid arguments");
                eprintln!("minivmm: {}", first.trim_start_matches("error: "));
                eprintln!("(run minivmm --help for usage)");
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    init_logger(args.log_level);
    vmm::terminal::install_panic_hook();

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
        nets: Vec::new(),
        stats: args.stats,
        ..VmConfig::new(args.kernel)
    };

    match vmm::run(&cfg) {
        Ok(VmOutcome::Reset) => {
            log::info!("guest reset: exiting");
            ExitCode::from(exit::OK)
        }
        Ok(VmOutcome::PowerOff) => {
            log::info!("guest powered off: exiting");
            ExitCode::from(exit::OK)
        }
        Ok(VmOutcome::Quit) => {
            eprintln!("\r\nminivmm: quit from the console");
            ExitCode::from(exit::OK)
        }
        Ok(VmOutcome::Signal(n)) => {
            eprintln!("\r\nminivmm: stopped by signal {n}");
            ExitCode::from(exit::SIGNAL_BASE.saturating_add(n as u8))
        }
        Ok(VmOutcome::Crash(why)) => {
            eprintln!("minivmm: guest crashed: {why}");
            ExitCode::from(exit::GUEST_CRASH)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("a.img,readonly=on,serial=xyz").unwrap();
        assert_eq!(d.path, PathBuf::from("a.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("xyz"));
        assert!(!parse_disk("b.img").unwrap().read_only);
        assert!(parse_disk("").is_err());
        assert!(parse_disk("a.img,bogus=1").is_err());
        assert!(parse_disk("a.img,readonly=maybe").is_err());
    }

    #[test]
    fn serial_modes() {
        assert_eq!(parse_serial("stdio"), Ok(SerialMode::Stdio));
        assert_eq!(parse_serial("none"), Ok(SerialMode::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialMode::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1234").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}

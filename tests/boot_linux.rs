//! End to end: the project's test guest (resources/guest) boots under minivmm, runs a
//! command from the kernel command line, and reboots or powers off; minivmm exits 0.
//!
//! Each boot costs tens of seconds of emulated guest kernel time on PVM hosts, so one boot
//! checks several independent things (see tests/README.md): the `vmlinux` boot through an
//! initramfs also checks `--stats`; the `bzImage` boot from a disk also checks the ACPI
//! tables and power-off through the ACPI sleep registers.

use std::time::Duration;

use minivmm_tests::{seccomp_of_threads, Finished, Guest, MARKER};

fn assert_clean_boot(f: &Finished) {
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout.contains("Linux version 6.1"),
        "kernel banner missing: {f}"
    );
    assert!(f.stdout.contains(MARKER), "init marker missing: {f}");
    assert!(
        f.has_line("computed 42"),
        "the command's output is missing: {f}"
    );
    assert!(
        f.stderr.contains("guest boot time: "),
        "boot timer line missing: {f}"
    );
}

/// `vmlinux` with the initramfs (the `--initrd` path), `reboot -f` ends the VM with 0, and
/// `--stats` prints the exit reasons, the busiest ports (the serial port among them) and
/// the boot time.
#[test]
fn vmlinux_with_an_initramfs_boots_runs_a_command_reboots_and_prints_stats() {
    let f = Guest::new()
        .initrd()
        .args(&["--stats"])
        .run("echo computed $((6*7)); reboot -f")
        // The initramfs is unpacked by the emulated kernel: ~10 s more on the reference host.
        .work(Duration::from_secs(40))
        .boot();
    assert_clean_boot(&f);
    assert!(f.stderr.contains("KVM exits by reason"), "{f}");
    assert!(
        f.stderr.contains("0x03f8") || f.stderr.contains("0x03fd"),
        "{f}"
    );
}

/// The LZ4 `bzImage` (its decompressor runs in the guest) boots from the root disk; the
/// guest sees the ACPI tables minivmm wrote, and `poweroff -f` goes through the FADT's
/// sleep registers: minivmm logs the power-off and exits 0, without a panic.
#[test]
fn bzimage_boots_from_a_disk_and_powers_off_through_the_acpi_sleep_registers() {
    let f = Guest::new()
        .kernel("bzImage")
        .run("echo computed $((6*7)); echo TABLES: /sys/firmware/acpi/tables/*; poweroff -f")
        // Decompressing ~10 MiB under emulation: ~25 s on the reference host.
        .work(Duration::from_secs(100))
        .boot();
    assert_clean_boot(&f);
    let tables = f
        .stdout
        .lines()
        .find(|l| l.starts_with("TABLES:"))
        .unwrap_or_else(|| panic!("no TABLES line: {f}"));
    for t in ["/APIC", "/DSDT", "/FACP"] {
        assert!(tables.contains(t), "{t} missing from {tables}: {f}");
    }
    assert!(f.stderr.contains("guest powered off"), "{f}");
    assert!(!f.stdout.contains("Kernel panic"), "{f}");
}

#[test]
fn guest_panic_ends_the_vm() {
    // init exits: the kernel panics ("Attempted to kill init"), and with the default
    // panic=1 it reboots one second later, which ends minivmm with 0 (see README).
    let f = Guest::new().args(&["--cmdline", "init=/bin/true"]).boot();
    assert!(
        f.status.is_some(),
        "minivmm did not end after the panic: {f}"
    );
    assert!(f.stdout.contains("Kernel panic"), "{f}");
    assert_eq!(f.code(), 0, "{f}");
}

/// Pause and resume from the console (Ctrl-A p) stall a running Linux guest and let it go
/// on: a shell loop printing a counter every 0.2 s prints nothing for the 3 s the VM is
/// paused, then goes on. The same boot reads 64 KiB from `/dev/hwrng` twice (virtio-rng):
/// two different full reads, and minivmm's counters show the bytes served.
#[test]
fn console_pause_stalls_a_linux_guest_and_hwrng_gives_random_bytes() {
    let cmd = "mvtool sha256 -l HWRNG1 /dev/hwrng 0 65536; \
               mvtool sha256 -l HWRNG2 /dev/hwrng 0 65536; \
               i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo C$i; \
               read -t 0.2 x <> /etc/wait.fifo; done";
    let mut vm = Guest::new()
        .args(&["--stats"])
        .run(cmd)
        .work(Duration::from_secs(60))
        .start();
    assert!(
        vm.wait_for("C5\r"),
        "the loop never started: {}",
        vm.console()
    );
    let count = |console: &str| console.matches("\nC").count();

    // While the guest runs, every thread of minivmm is under its seccomp filter.
    let threads = seccomp_of_threads(vm.pid());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["minivmm", "vcpu0", "vmm", "virtio-blk", "virtio-rng"] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "no {want} thread in {threads:?}"
        );
    }
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} has Seccomp: {mode}: {threads:?}");
    }

    vm.type_in(b"\x01p");
    assert!(vm.wait_for_log("minivmm: paused"), "no pause: {}", vm.log());
    std::thread::sleep(Duration::from_millis(300));
    let frozen = vm.console();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vm.console(),
        frozen,
        "the guest printed while the VM was paused"
    );

    vm.type_in(b"\x01p");
    assert!(
        vm.wait_for_log("minivmm: resumed"),
        "no resume: {}",
        vm.log()
    );
    let before = count(&frozen);
    let more = format!("C{}\r", before + 3);
    assert!(
        vm.wait_for(&more),
        "no output after resume: {}",
        vm.console()
    );

    vm.type_in(b"\x01x");
    let f = vm.finish();
    assert_eq!(f.code(), 0, "{f}");
    let (h1, h2) = (f.value("HWRNG1"), f.value("HWRNG2"));
    assert_eq!(h1.len(), 64, "{f}");
    assert_ne!(h1, h2, "two reads of /dev/hwrng gave the same bytes: {f}");
    assert!(
        f.stdout.contains(&format!("HWRNG1={h1} 65536")),
        "a short read: {f}"
    );
    let served: u64 = f
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("rng0: "))
        .and_then(|l| l.split(", ").find_map(|kv| kv.strip_prefix("bytes ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rng0 counters: {f}"));
    assert!(served >= 2 * 65536, "rng0 served {served} bytes: {f}");
}

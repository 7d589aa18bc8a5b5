//! ACPI end to end: power off through the FADT's sleep registers, SIGTERM through the
//! power button, device discovery from the DSDT alone (the `vmlinux-acpi-only` kernel),
//! and the `--no-acpi` path (MP table and command-line devices).

use std::time::Duration;

use minivmm_tests::{boot_deadline, guest_dir, run, NetNs, TempDir, Watched};

const MARKER: &str = "minivmm-guest: init ready";

/// A private, writable copy of the test guest's root filesystem.
fn rootfs_copy(dir: &TempDir) -> String {
    let p = dir.join("rootfs.ext4");
    std::fs::copy(guest_dir().join("rootfs.ext4"), &p).unwrap();
    p.display().to_string()
}

fn path(name: &str) -> String {
    guest_dir().join(name).display().to_string()
}

#[test]
fn poweroff_uses_the_acpi_sleep_registers() {
    let f = run(
        &[
            "--kernel",
            &path("vmlinux"),
            "--initrd",
            &path("initramfs.cpio"),
            "--log-level",
            "info",
            "--cmdline",
            "minivmm_run=\"ls /sys/firmware/acpi/tables; poweroff -f\"",
        ],
        boot_deadline(),
    );
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout.contains("DSDT") && f.stdout.contains("APIC"),
        "{f}"
    );
    assert!(f.stderr.contains("guest powered off"), "{f}");
    assert!(!f.stdout.contains("Kernel panic"), "{f}");
}

#[test]
fn sigterm_presses_the_power_button_and_the_guest_shuts_down() {
    let dir = TempDir::new("minivmm-acpi");
    let disk = rootfs_copy(&dir);
    let mut vm = Watched::start(&[
        "--kernel",
        &path("vmlinux"),
        "--disk",
        &disk,
        "--log-level",
        "info",
        "--shutdown-timeout",
        "120s",
        "--cmdline",
        "minivmm_run=\"sleep 1000\"",
    ]);
    assert!(vm.wait_for(MARKER, boot_deadline()), "guest never came up");
    // acpid is started before the marker; give it a moment to open the input device.
    std::thread::sleep(Duration::from_secs(2));
    vm.signal(libc::SIGTERM);
    let f = vm.finish(boot_deadline() + Duration::from_secs(120));
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.contains("power button pressed"), "{f}");
    assert!(f.stderr.contains("pressed the ACPI power button"), "{f}");
    assert!(f.stderr.contains("guest powered off"), "{f}");
}

#[test]
fn sigterm_stops_a_guest_that_ignores_the_button_after_the_timeout() {
    // ACPI is on, but nothing in the guest listens to the button (rdinit runs a plain
    // shell loop instead of /init, so no acpid): after the timeout minivmm stops it hard
    // with 128 + SIGTERM.
    let mut vm = Watched::start(&[
        "--kernel",
        &path("vmlinux"),
        "--initrd",
        &path("initramfs.cpio"),
        "--log-level",
        "info",
        "--shutdown-timeout",
        "3s",
        "--cmdline",
        "rdinit=/bin/sh -- -c \"echo NO-ACPID-$((40+2)); while :; do sleep 1; done\"",
    ]);
    // The marker as the shell prints it, not as the kernel echoes its command line.
    assert!(
        vm.wait_for("NO-ACPID-42", boot_deadline()),
        "guest never came up"
    );
    vm.signal(libc::SIGTERM);
    let f = vm.finish(boot_deadline() + Duration::from_secs(60));
    assert_eq!(f.code(), 128 + libc::SIGTERM, "{f}");
    assert!(f.stderr.contains("did not shut down in time"), "{f}");
}

#[test]
fn acpi_only_kernel_finds_disk_and_network_card() {
    let dir = TempDir::new("minivmm-acpi");
    let disk = rootfs_copy(&dir);
    let ns = NetNs::new("acpi");
    ns.run(
        minivmm_tests::minivmm_bin().to_str().unwrap(),
        &["network", "create", "br0"],
    );
    let vm = Watched::start_in(
        Some(&ns),
        &[
            "--kernel",
            &path("vmlinux-acpi-only"),
            "--disk",
            &disk,
            "--net",
            "bridge=br0",
            "--cmdline",
            "minivmm_run=\"cat /proc/cmdline; echo BLOCK: $(ls /sys/block); echo NET: $(ls /sys/class/net)\"",
        ],
    );
    let f = vm.finish(boot_deadline());
    assert_eq!(f.code(), 0, "{f}");
    assert!(!f.stdout.contains("virtio_mmio.device="), "{f}");
    let block = f
        .stdout
        .lines()
        .find(|l| l.starts_with("BLOCK:"))
        .unwrap_or("");
    let net = f
        .stdout
        .lines()
        .find(|l| l.starts_with("NET:"))
        .unwrap_or("");
    assert!(block.contains("vda"), "{f}");
    assert!(net.contains("eth0"), "{f}");
}

#[test]
fn no_acpi_uses_the_mp_table_and_command_line_devices() {
    let dir = TempDir::new("minivmm-acpi");
    let disk = rootfs_copy(&dir);
    let f = run(
        &[
            "--kernel",
            &path("vmlinux"),
            "--disk",
            &disk,
            "--cpus",
            "2",
            "--no-acpi",
            "--cmdline",
            "minivmm_run=\"echo CPUS: $(grep -c ^processor /proc/cpuinfo); echo BLOCK: $(ls /sys/block); ls /sys/firmware/acpi 2>/dev/null || echo NO-ACPI; reboot -f\"",
        ],
        boot_deadline(),
    );
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout.contains("virtio_mmio.device=4K@0xc0001000:5"),
        "{f}"
    );
    assert!(f.stdout.contains("CPUS: 2"), "{f}");
    assert!(f.stdout.contains("BLOCK: vda"), "{f}");
    assert!(f.stdout.contains("NO-ACPI"), "{f}");
}

//! End to end: the project's test guest (resources/guest) boots under minivmm, runs a
//! command from the kernel command line, and reboots; minivmm exits 0. On PVM hosts each
//! boot takes tens of seconds, so the tests run in parallel (one per core).

use minivmm_tests::{boot_deadline, guest_dir, run, Finished};

const MARKER: &str = "minivmm-guest: init ready";

fn boot(kernel: &str, run_cmd: &str, extra: &[&str]) -> Finished {
    let dir = guest_dir();
    let kernel = dir.join(kernel).display().to_string();
    let initrd = dir.join("initramfs.cpio").display().to_string();
    let cmdline = format!("minivmm_run=\"{run_cmd}\"");
    let mut args = vec![
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &cmdline,
        "--log-level",
        "info",
    ];
    args.extend_from_slice(extra);
    run(&args, boot_deadline())
}

fn assert_clean_boot(f: &Finished) {
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout.contains("Linux version 6.1"),
        "kernel banner missing: {f}"
    );
    assert!(f.stdout.contains(MARKER), "init marker missing: {f}");
    assert!(
        f.stdout.contains("computed 42"),
        "the command's output is missing: {f}"
    );
    assert!(
        f.stderr.contains("guest boot time: "),
        "boot timer line missing: {f}"
    );
}

#[test]
fn vmlinux_boots_runs_a_command_and_reboots() {
    let f = boot("vmlinux", "echo computed $((6*7)); reboot -f", &[]);
    assert_clean_boot(&f);
}

#[test]
fn bzimage_boots_runs_a_command_and_reboots() {
    let f = boot("bzImage", "echo computed $((6*7)); reboot -f", &[]);
    assert_clean_boot(&f);
}

#[test]
fn stats_are_printed() {
    let f = boot("vmlinux", "echo computed $((6*7)); reboot -f", &["--stats"]);
    assert_clean_boot(&f);
    assert!(f.stderr.contains("KVM exits by reason"), "{f}");
    assert!(
        f.stderr.contains("0x03f8") || f.stderr.contains("0x03fd"),
        "{f}"
    );
}

#[test]
fn guest_panic_ends_the_vm() {
    // init exits: the kernel panics ("Attempted to kill init"), and with the default
    // panic=1 it reboots one second later, which ends minivmm with 0 (see README).
    let f = boot("vmlinux", "exit 0", &["--cmdline", "rdinit=/bin/true"]);
    assert!(
        f.status.is_some(),
        "minivmm did not end after the panic: {f}"
    );
    assert!(f.stdout.contains("Kernel panic"), "{f}");
    assert_eq!(f.code(), 0, "{f}");
}

//! ACPI end to end: SIGTERM through the power button, a guest that ignores the button,
//! and the `--no-acpi` path (MP table and command-line devices) with two vCPUs.
//!
//! Power-off through the sleep registers is checked by the bzImage boot in boot_linux.rs,
//! device discovery from the DSDT alone (the `vmlinux-acpi-only` kernel) by the host/guest
//! TCP test in net.rs: one boot checks several things (tests/README.md).

use std::time::Duration;

use minivmm_tests::{Guest, MARKER};

#[test]
fn sigterm_presses_the_power_button_and_the_guest_shuts_down() {
    let mut vm = Guest::new()
        .args(&["--shutdown-timeout", "120s"])
        // Waits on the console (no input comes): idle, no process started every second.
        .run("read x")
        // The power-off after the button: acpid's action script, sync, poweroff.
        .work(Duration::from_secs(40))
        .start();
    assert!(vm.wait_for(MARKER), "guest never came up: {}", vm.console());
    // acpid is started before the marker; give it a moment to open the input device.
    std::thread::sleep(Duration::from_secs(2));
    vm.signal(libc::SIGTERM);
    let f = vm.finish();
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.contains("power button pressed"), "{f}");
    assert!(f.stderr.contains("pressed the ACPI power button"), "{f}");
    assert!(f.stderr.contains("guest powered off"), "{f}");
}

#[test]
fn sigterm_stops_a_guest_that_ignores_the_button_after_the_timeout() {
    // ACPI is on, but nothing in the guest listens to the button (init is a plain shell
    // waiting on the console instead of /init, so no acpid): after the timeout minivmm
    // stops it hard with 128 + SIGTERM.
    let mut vm = Guest::new()
        .args(&[
            "--shutdown-timeout",
            "3s",
            "--cmdline",
            "init=/bin/sh -- -c \"echo NO-ACPID-$((40+2)); while :; do read x; done\"",
        ])
        .work(Duration::from_secs(10))
        .start();
    // The marker as the shell prints it, not as the kernel echoes its command line.
    assert!(vm.wait_for("NO-ACPID-42"), "guest never came up");
    vm.signal(libc::SIGTERM);
    let f = vm.finish();
    assert_eq!(f.code(), 128 + libc::SIGTERM, "{f}");
    assert!(f.stderr.contains("did not shut down in time"), "{f}");
}

/// The `user` ticks of cpu0 and cpu1 in a /proc/stat dump that follows `tag`.
fn cpu_user_ticks(out: &str, tag: &str) -> (u64, u64) {
    // The tag alone on a line: the kernel also echoes the command (with the tags in it).
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == tag)
        .unwrap_or_else(|| panic!("{tag} missing:\n{out}"));
    let mut ticks = [None, None];
    for line in &lines[start..] {
        for (i, name) in ["cpu0 ", "cpu1 "].iter().enumerate() {
            if let Some(rest) = line.trim_start().strip_prefix(name) {
                if ticks[i].is_none() {
                    ticks[i] = rest.split_whitespace().next().and_then(|v| v.parse().ok());
                }
            }
        }
    }
    (ticks[0].expect("cpu0 line"), ticks[1].expect("cpu1 line"))
}

/// `--no-acpi` with two vCPUs: the guest finds both CPUs through the MP table and its disk
/// through the `virtio_mmio.device=` entry minivmm adds to the command line, has no ACPI,
/// and both vCPUs run work: a busy loop pinned to each (`mvtool spin`: two threads of one
/// process, in user mode only, so native speed even on PVM hosts, where a shell loop makes
/// system calls; one process, see tests/README.md, "A PVM host bug") adds at
/// least 0.3 s (30 ticks at HZ=100) of user time to each CPU. The loops' times are printed
/// for the record, not asserted: on a loaded host they vary.
#[test]
fn two_vcpus_without_acpi_come_from_the_mp_table_and_both_run_work() {
    // Shell builtins where they do: every process costs emulated kernel time.
    let cmd = "show() { while read -r l; do echo $l; done < $1; }; \
         n=0; while read -r k rest; do case $k in processor) n=$((n+1));; esac; done < /proc/cpuinfo; \
         echo CPUS: $n; echo BLOCK: /sys/block/*; \
         [ -e /sys/firmware/acpi ] || echo NO-ACPI; \
         echo STAT0; show /proc/stat; \
         mvtool spin 600 0; mvtool spin 600 0,1; \
         echo STAT1; show /proc/stat; reboot -f";
    let f = Guest::new()
        .cpus(2)
        // isolcpus=1: the kernel starts and runs no process on CPU 1 unless it is pinned
        // there (mvtool pins a thread): programs never start on CPU 1 while another one
        // runs there (see tests/README.md, "A PVM host bug").
        .args(&["--no-acpi", "--cmdline", "isolcpus=1"])
        .run(cmd)
        .work(Duration::from_secs(40))
        .boot();
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout.contains("virtio_mmio.device=4K@0xc0001000:5"),
        "{f}"
    );
    assert!(f.has_line("CPUS: 2"), "{f}");
    assert!(f.has_line("BLOCK: /sys/block/vda"), "{f}");
    assert!(f.has_line("NO-ACPI"), "{f}");
    let (a0, b0) = cpu_user_ticks(&f.stdout, "STAT0");
    let (a1, b1) = cpu_user_ticks(&f.stdout, "STAT1");
    assert!(
        a1 >= a0 + 30 && b1 >= b0 + 30,
        "cpu0 {a0}->{a1}, cpu1 {b0}->{b1}\n{f}"
    );
    let times: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("spin "))
        .collect();
    eprintln!("busy loops, one alone, then one on each vCPU: {times:?}; user ticks cpu0 {a0}->{a1}, cpu1 {b0}->{b1}");
}

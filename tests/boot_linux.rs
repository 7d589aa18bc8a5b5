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

#[test]
fn two_vcpus_both_run_work() {
    // One busy loop pinned to each vCPU (user mode: native speed even on PVM hosts). Both
    // CPUs' user time must grow by at least 0.3 s (30 ticks at HZ=100). The loops' wall
    // times are printed for the record, not asserted: on a loaded 2-core host they vary.
    let lp = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done";
    let cmd = format!(
        "grep -c ^processor /proc/cpuinfo | sed s/^/cpus=/; echo STAT0; cat /proc/stat; \
         t0=$(cut -d. -f1 /proc/uptime); taskset 1 sh -c '{lp}'; t1=$(cut -d. -f1 /proc/uptime); \
         taskset 1 sh -c '{lp}' & taskset 2 sh -c '{lp}' & wait; t2=$(cut -d. -f1 /proc/uptime); \
         echo STAT1; cat /proc/stat; echo one=$((t1-t0))s two=$((t2-t1))s; reboot -f"
    );
    let f = boot("vmlinux", &cmd, &["--cpus", "2"]);
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.contains("cpus=2"), "{f}");
    let (a0, b0) = cpu_user_ticks(&f.stdout, "STAT0");
    let (a1, b1) = cpu_user_ticks(&f.stdout, "STAT1");
    assert!(
        a1 >= a0 + 30 && b1 >= b0 + 30,
        "cpu0 {a0}->{a1}, cpu1 {b0}->{b1}\n{f}"
    );
    let times = f.stdout.lines().find(|l| l.contains("one=")).unwrap_or("");
    eprintln!("busy loops: {times}");
}

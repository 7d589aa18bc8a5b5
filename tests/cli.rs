//! Bad input: each gets one line on stderr naming the problem and exit code 2, before any
//! VM is created.

use std::time::Duration;

use minivmm_tests::{run, TempDir};

const BAD_INPUT: i32 = 2;

fn bad(args: &[&str], needle: &str) {
    let f = run(args, Duration::from_secs(30));
    assert_eq!(f.code(), BAD_INPUT, "{f}");
    let first = f.stderr.lines().next().unwrap_or("");
    assert!(first.starts_with("minivmm: "), "{f}");
    assert!(
        first.contains(needle),
        "first stderr line should mention {needle:?}: {f}"
    );
    assert!(f.stdout.is_empty(), "{f}");
}

/// A kernel-sized file that is not a kernel.
fn text_file(dir: &TempDir) -> String {
    let p = dir.join("not-a-kernel.txt");
    std::fs::write(&p, "hello, I am a text file\n".repeat(100)).unwrap();
    p.display().to_string()
}

#[test]
fn missing_kernel() {
    bad(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn text_file_as_kernel() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    bad(&["--kernel", &k], "not-a-kernel.txt");
}

#[test]
fn directory_as_kernel() {
    let d = TempDir::new("minivmm-cli");
    bad(&["--kernel", &d.0.display().to_string()], "directory");
}

#[test]
fn zero_memory() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    bad(&["--kernel", &k, "--memory", "0"], "--memory");
}

#[test]
fn memory_above_host_ram() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    bad(&["--kernel", &k, "--memory", "64T"], "more than this host");
}

#[test]
fn malformed_memory() {
    bad(&["--kernel", "x", "--memory", "lots"], "invalid size");
}

#[test]
fn unknown_flag() {
    bad(&["--kernel", "x", "--frobnicate"], "--frobnicate");
}

#[test]
fn missing_initrd() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    bad(
        &["--kernel", &k, "--initrd", "/nonexistent/initrd"],
        "/nonexistent/initrd",
    );
}

#[test]
fn bad_serial_mode() {
    bad(&["--kernel", "x", "--serial", "tcp:1"], "tcp:1");
}

#[test]
fn help_is_not_an_error() {
    let f = run(&["--help"], Duration::from_secs(30));
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.contains("--kernel"), "{f}");
}

/// A FIFO nobody writes to, where a file is expected: a blocking open would hang minivmm
/// (and this test, past `run`'s deadline).
#[test]
fn fifo_as_kernel_initrd_or_disk() {
    let d = TempDir::new("minivmm-cli");
    let fifo = d.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let fifo = fifo.display().to_string();
    let k = text_file(&d);
    bad(&["--kernel", &fifo], "not a regular file");
    bad(&["--kernel", &k, "--initrd", &fifo], "not a regular file");
    bad(
        &["--kernel", &k, "--disk", &format!("{fifo},readonly=on")],
        "neither a regular file nor a block device",
    );
    bad(&["--kernel", &k, "--disk", &fifo], "neither a regular file");
}

#[test]
fn the_same_disk_twice() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    let img = d.join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let img = img.display().to_string();
    bad(
        &[
            "--kernel",
            &k,
            "--disk",
            &img,
            "--disk",
            &format!("{img},readonly=on"),
        ],
        "is given twice (as vda and vdb)",
    );
}

#[test]
fn more_virtio_devices_than_irq_lines() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    let mut args = vec!["--kernel".to_string(), k];
    for i in 0..18 {
        args.push("--disk".into());
        args.push(format!("/nonexistent/{i}.img"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // 18 disks and the default entropy device.
    bad(
        &args,
        "19 virtio devices (18 disks, 0 network interfaces, rng): at most 18",
    );
}

#[test]
fn bad_rate_limits() {
    bad(
        &["--kernel", "x", "--disk", "d.img,bw=0"],
        "rate '0' must be above zero",
    );
    bad(
        &["--kernel", "x", "--disk", "d.img,iops=fast"],
        "rate 'fast'",
    );
    bad(
        &["--kernel", "x", "--net", "bridge=br0,pps=99999999999G"],
        "too large",
    );
}

/// Bad input found after the serial output file was created: the file goes again.
#[test]
fn a_bad_kernel_leaves_no_serial_file_behind() {
    let d = TempDir::new("minivmm-cli");
    let k = text_file(&d);
    let log = d.join("console.log");
    let serial = format!("file:{}", log.display());
    bad(&["--kernel", &k, "--serial", &serial], "not-a-kernel.txt");
    assert!(!log.exists(), "{} was left behind", log.display());
    // A file that was there before stays, as it was.
    std::fs::write(&log, "earlier run\n").unwrap();
    bad(&["--kernel", &k, "--serial", &serial], "not-a-kernel.txt");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "earlier run\n");
}

/// `--restore` takes the machine from the snapshot: flags that describe one are refused.
#[test]
fn restore_refuses_flags_that_describe_the_machine() {
    let d = TempDir::new("minivmm-cli");
    let dir = d.0.display().to_string();
    for (flag, value) in [
        ("--kernel", Some("vmlinux")),
        ("--initrd", Some("initrd")),
        ("--cmdline", Some("quiet")),
        ("--memory", Some("1G")),
        ("--cpus", Some("2")),
        ("--rng", Some("none")),
        ("--no-acpi", None),
        ("--cpu-template", Some("host")),
    ] {
        let mut args = vec!["--restore", &dir, flag];
        args.extend(value);
        bad(&args, &format!("'{flag}"));
    }
}

/// A restore directory that does not exist, or is a file: one line naming it. With
/// `--api-sock`, the socket made before that is gone again.
#[test]
fn a_missing_restore_directory_is_bad_input() {
    let d = TempDir::new("minivmm-cli");
    let sock = d.join("api.sock");
    let sock = sock.display().to_string();
    bad(
        &["--restore", "/nonexistent/snap", "--api-sock", &sock],
        "--restore /nonexistent/snap",
    );
    let file = d.join("file");
    std::fs::write(&file, "x").unwrap();
    bad(
        &["--restore", &file.display().to_string()],
        "not a directory",
    );
    // An empty directory is not a snapshot (found by the VMM, after the socket exists).
    bad(
        &["--restore", &d.0.display().to_string(), "--api-sock", &sock],
        "snapshot",
    );
    assert!(!std::path::Path::new(&sock).exists(), "socket left behind");
}

/// The client subcommands without a server: one line naming the socket, exit 2.
#[test]
fn clients_without_a_server_are_bad_input() {
    let d = TempDir::new("minivmm-cli");
    let sock = d.join("nobody.sock").display().to_string();
    bad(&["snapshot", "--api-sock", &sock, "/tmp/snap"], &sock);
    bad(&["status", "--api-sock", &sock], &sock);
    bad(&["pause", "--api-sock", &sock], &sock);
    bad(&["snapshot", "/tmp/snap"], "--api-sock");
}

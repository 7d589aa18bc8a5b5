//! End to end: virtio-blk disks seen from the test guest (resources/guest).
//!
//! Every booting test copies `rootfs.ext4` into a scratch directory (the cached image is
//! never booted writable), boots `vmlinux` with `--disk <copy>` (minivmm then adds
//! `root=/dev/vda rw`) plus the test's own raw images, and runs one shell command in the
//! guest through `minivmm_run="..."`; the guest's /init reboots afterwards, which ends
//! minivmm with 0. The host then checks what the guest printed and what is in the images.
//!
//! On PVM hosts guest *kernel* code is emulated (see the project's notes on the KVM host),
//! so the data sizes are a few MiB, the guest moves disk data with direct I/O, and the data
//! is generated and hashed in guest *user* space: an awk LCG for the pattern (4 MiB of
//! `/dev/urandom` took 133 s of guest kernel time here, the awk pattern a fraction of a
//! second of user time) and busybox `sha256sum`. The host hashes with `sha256sum(1)`.
//!
//! The failure cases (bad size, missing file, lock conflict) need no boot: minivmm opens
//! and locks the images before it creates the VM.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minivmm_tests::{boot_deadline, guest_dir, run, spawn, wait, Finished, TempDir};

const MARKER: &str = "minivmm-guest: init ready";
const MIB: usize = 1 << 20;
/// Time for the guest's command and its shutdown (sync, remount, reboot) on top of the
/// boot: on a busy PVM host, moving and hashing 4 MiB took up to a minute of emulated
/// guest kernel time, and the shutdown about as long.
const GUEST_WORK: Duration = Duration::from_secs(180);

/// Boot the test kernel with a private copy of rootfs.ext4 as /dev/vda, then `extra_disks`
/// (each a full `--disk` spec) as /dev/vdb, /dev/vdc, ..., running `run_cmd` in the guest.
fn boot_with_disks(scratch: &TempDir, run_cmd: &str, extra_disks: &[String]) -> Finished {
    let root = scratch.join("root.ext4");
    fs::copy(guest_dir().join("rootfs.ext4"), &root).expect("copying rootfs.ext4");
    let kernel = guest_dir().join("vmlinux").display().to_string();
    let root = root.display().to_string();
    // Kernel messages would interleave with the command's output on the console.
    let cmdline = format!("minivmm_run=\"dmesg -n 1; {run_cmd}\"");
    assert!(
        !run_cmd.contains('"'),
        "the guest command cannot contain double quotes"
    );
    let mut args = vec!["--kernel", &kernel, "--disk", &root];
    for d in extra_disks {
        args.extend_from_slice(&["--disk", d]);
    }
    args.extend_from_slice(&["--cmdline", &cmdline, "--log-level", "info"]);
    run(&args, boot_deadline() + GUEST_WORK)
}

/// The VM booted the test guest, ran the command and ended by itself with 0.
fn assert_ran(f: &Finished) {
    assert_eq!(f.code(), 0, "{f}");
    assert!(f.stdout.contains(MARKER), "init marker missing: {f}");
    assert!(
        f.stdout
            .contains("minivmm-guest: command exited with status 0"),
        "the guest command failed: {f}"
    );
}

/// The value after `key=` at the start of a line of the guest's console (first such
/// line), up to whitespace. Only line starts count: /init echoes the whole command, keys
/// included, on its "running:" line.
fn value<'a>(f: &'a Finished, key: &str) -> &'a str {
    let needle = format!("{key}=");
    f.stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(needle.as_str()))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("'{needle}' not in the guest output: {f}"))
}

/// sha256 of `data` as lowercase hex, from the host's `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// `len` bytes of a seeded xorshift64 sequence: reproducible, and different at every
/// offset, so a misplaced or dropped sector changes the hash.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Whether the file system under `dir` can punch holes (what minivmm's DISCARD does).
fn can_punch_holes(dir: &TempDir) -> bool {
    let p = dir.join("punch-probe");
    fs::write(&p, vec![1u8; 8192]).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    // SAFETY: fallocate only takes the fd (owned by `f`, open for the call) and integers.
    let ret = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    ret == 0
}

#[test]
fn boots_from_rootfs_and_sees_extra_disks_sizes_and_serials() {
    let t = TempDir::new("minivmm-disk-layout");
    let b = t.join("b.img");
    let c = t.join("c.img");
    fs::write(&b, vec![0u8; MIB]).unwrap(); // 2048 sectors
    fs::write(&c, vec![0u8; 3 * MIB + 512]).unwrap(); // 6145 sectors
    let cmd = "echo computed $((6*7)); grep -w / /proc/mounts; \
               echo blockdevs=$(ls /sys/block | grep vd | tr '\\n' ,); \
               for d in vda vdb vdc; do \
               echo $d: size=$(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro) \
               serial=$(cat /sys/block/$d/serial); done";
    let f = boot_with_disks(
        &t,
        cmd,
        &[
            format!("{},serial=disk-e2e-b", b.display()),
            // 20 bytes: the longest serial GET_ID can return.
            format!("{},serial=abcdefghij0123456789", c.display()),
        ],
    );
    assert_ran(&f);
    assert!(f.stdout.contains("computed 42"), "{f}");
    assert!(
        f.stdout.contains("/dev/root / ext4 rw"),
        "the root file system is not the writable ext4 disk: {f}"
    );
    assert_eq!(value(&f, "blockdevs"), "vda,vdb,vdc,", "{f}");
    for line in [
        "vda: size=65536 ro=0 serial=",
        "vdb: size=2048 ro=0 serial=disk-e2e-b",
        "vdc: size=6145 ro=0 serial=abcdefghij0123456789",
    ] {
        assert!(
            f.stdout.lines().any(|l| l.trim_end() == line),
            "missing '{line}': {f}"
        );
    }
}

#[test]
fn guest_writes_a_pattern_with_direct_io_and_the_host_reads_it() {
    let t = TempDir::new("minivmm-disk-gwrite");
    let img = t.join("data.img");
    // 4 MiB for the pattern, then 1 MiB the guest discards; all 0xAA to start with.
    fs::write(&img, vec![0xaau8; 5 * MIB]).unwrap();
    // 65536 lines of 64 bytes: line number (7 hex digits) and seven 32-bit LCG values
    // (exact in awk's doubles: x < 2^32, 69069 < 2^17), generated in user space.
    let cmd = "awk -v f='%07x%08x%08x%08x%08x%08x%08x%08x\\n' \
               'function r() { x = (x * 69069 + 1) % 4294967296; return x } \
               BEGIN { x = 20240611; for (i = 0; i < 65536; i++) \
               printf f, i, r(), r(), r(), r(), r(), r(), r() }' > /tmp/p; \
               echo pattern-bytes=$(wc -c < /tmp/p); \
               echo guest-sha=$(sha256sum /tmp/p); \
               dd if=/tmp/p of=/dev/vdb bs=1M oflag=direct conv=fsync; echo dd-status=$?; \
               echo discard-max=$(cat /sys/block/vdb/queue/discard_max_bytes); \
               blkdiscard -o 4194304 -l 1048576 /dev/vdb; echo discard-status=$?; sync";
    let f = boot_with_disks(&t, cmd, &[img.display().to_string()]);
    assert_ran(&f);
    assert_eq!(value(&f, "pattern-bytes"), (4 * MIB).to_string(), "{f}");
    assert_eq!(value(&f, "dd-status"), "0", "{f}");

    let data = fs::read(&img).unwrap();
    assert_eq!(data.len(), 5 * MIB, "the image changed size");
    assert!(data.starts_with(b"0000000"), "no pattern at offset 0: {f}");
    assert_eq!(
        sha256_hex(&data[..4 * MIB]),
        value(&f, "guest-sha"),
        "the image's first 4 MiB differ from what the guest wrote: {f}"
    );

    // DISCARD: offered (a non-zero limit), accepted, and on a host file system that punches
    // holes the range reads back as zeros.
    assert_ne!(value(&f, "discard-max"), "0", "DISCARD not offered: {f}");
    assert_eq!(value(&f, "discard-status"), "0", "{f}");
    if can_punch_holes(&t) {
        assert!(
            data[4 * MIB..].iter().all(|&b| b == 0),
            "the discarded MiB is not zeros"
        );
    }
}

#[test]
fn host_writes_a_pattern_and_the_guest_reads_it_with_direct_io() {
    let t = TempDir::new("minivmm-disk-gread");
    let img = t.join("data.img");
    let data = pattern(0x5eed_d15c, 4 * MIB);
    fs::write(&img, &data).unwrap();
    // The whole disk in 1 MiB requests, and one 4 KiB block in the middle (block 777).
    let cmd = "echo whole-sha=$(dd if=/dev/vdb bs=1M iflag=direct | sha256sum); \
               echo block-sha=$(dd if=/dev/vdb bs=4096 skip=777 count=1 iflag=direct \
               | sha256sum)";
    let f = boot_with_disks(&t, cmd, &[img.display().to_string()]);
    assert_ran(&f);
    assert_eq!(value(&f, "whole-sha"), sha256_hex(&data), "{f}");
    assert_eq!(
        value(&f, "block-sha"),
        sha256_hex(&data[777 * 4096..778 * 4096]),
        "{f}"
    );
    assert_eq!(fs::read(&img).unwrap(), data, "reading changed the image");
}

#[test]
fn readonly_disk_refuses_writes_and_stays_unchanged() {
    let t = TempDir::new("minivmm-disk-ro");
    let img = t.join("ro.img");
    let data = pattern(42, MIB);
    fs::write(&img, &data).unwrap();
    // A direct write, a buffered write with fsync, and a discard: all must fail.
    let cmd = "echo ro-flag=$(cat /sys/block/vdb/ro); \
               dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct; echo direct-status=$?; \
               dd if=/dev/zero of=/dev/vdb bs=4096 count=1 seek=8 conv=fsync; \
               echo buffered-status=$?; \
               blkdiscard /dev/vdb; echo discard-status=$?; \
               echo read-sha=$(dd if=/dev/vdb bs=1M iflag=direct | sha256sum)";
    let f = boot_with_disks(&t, cmd, &[format!("{},readonly=on", img.display())]);
    assert_ran(&f);
    assert_eq!(value(&f, "ro-flag"), "1", "{f}");
    for key in ["direct-status", "buffered-status", "discard-status"] {
        assert_ne!(value(&f, key), "0", "{key}: a write succeeded: {f}");
    }
    assert_eq!(value(&f, "read-sha"), sha256_hex(&data), "{f}");
    assert_eq!(fs::read(&img).unwrap(), data, "the read-only image changed");
}

/// minivmm with just a kernel and `disks`, expected to stop before booting.
fn run_without_boot(disks: &[&str]) -> Finished {
    let kernel = guest_dir().join("vmlinux").display().to_string();
    let mut args = vec!["--kernel", kernel.as_str()];
    for d in disks {
        args.extend_from_slice(&["--disk", d]);
    }
    run(&args, Duration::from_secs(60))
}

/// Exit status 2 and exactly one stderr line, which contains every one of `words`.
fn assert_bad_input(f: &Finished, words: &[&str]) {
    assert_eq!(f.code(), 2, "{f}");
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {f}");
    for w in words {
        assert!(lines[0].contains(w), "'{w}' not in the message: {f}");
    }
}

#[test]
fn disk_with_a_size_not_a_multiple_of_512_is_refused() {
    let t = TempDir::new("minivmm-disk-size");
    let img = t.join("odd.img");
    fs::write(&img, vec![0u8; 1000]).unwrap();
    let path = img.display().to_string();
    let f = run_without_boot(&[&path]);
    assert_bad_input(&f, &[&path, "512"]);
}

#[test]
fn missing_disk_is_refused() {
    let t = TempDir::new("minivmm-disk-missing");
    let path = t.join("no-such.img").display().to_string();
    let f = run_without_boot(&[&path]);
    assert_bad_input(&f, &[&path]);
}

/// Whether process `pid` holds an exclusive flock on `path` (from /proc/locks, which does
/// not disturb the lock the way a probing flock() could).
fn holds_write_flock(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(path).unwrap().ino();
    let locks = fs::read_to_string("/proc/locks").unwrap();
    locks.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        w.len() >= 6
            && w[1] == "FLOCK"
            && w[3] == "WRITE"
            && w[4] == pid.to_string()
            && w[5].rsplit(':').next() == Some(&ino.to_string())
    })
}

#[test]
fn disk_locked_by_a_running_vm_is_refused() {
    let t = TempDir::new("minivmm-disk-lock");
    let img = t.join("shared.img");
    fs::write(&img, vec![0u8; MIB]).unwrap();
    let path = img.display().to_string();
    let kernel = guest_dir().join("vmlinux").display().to_string();

    let first = spawn(&[
        "--kernel",
        &kernel,
        "--disk",
        &path,
        "--serial",
        "none",
        "--cmdline",
        "minivmm_run=\"sleep 60\"",
    ]);
    let start = Instant::now();
    while !holds_write_flock(first.id(), &img) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first VM never locked {path}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let writable = run_without_boot(&[&path]);
    let readonly_spec = format!("{path},readonly=on");
    let readonly = run_without_boot(&[&readonly_spec]);

    // End the first VM before asserting, so a failure leaves nothing running.
    let mut first = first;
    let _ = first.kill();
    let first = wait(first, Duration::from_secs(30));
    assert!(first.status.is_some(), "the first VM did not die: {first}");

    assert_bad_input(&writable, &[&path, "locked"]);
    assert_bad_input(&readonly, &[&path, "locked"]);
}

//! End to end: virtio-blk disks seen from the test guest (resources/guest).
//!
//! One boot checks every disk behaviour that needs a guest (tests/README.md says why): the
//! guest boots from a private, writable copy of `rootfs.ext4` (minivmm adds
//! `root=/dev/vda rw`) with five more raw images, runs one shell command through
//! `minivmm_run="..."` and reboots, which ends minivmm with 0; the host then checks what the
//! guest printed and what is in the images.
//!
//! On PVM hosts every byte the guest *kernel* copies is emulated (a pipe moves a few hundred
//! KB/s), so the data is generated and checked on the host, and the guest moves and hashes
//! it without a kernel copy: `dd` with `iflag=direct`/`oflag=direct` (the device writes into
//! and reads from dd's own buffer) and the test guest's `mvtool sha256`, which reads with
//! O_DIRECT and hashes in user space (natively). The guest command uses shell builtins
//! (`read`, globs) where it can: every process costs emulated kernel time too.
//!
//! The failure cases (bad size, missing file, lock conflict) need no boot: minivmm opens
//! and locks the images before it creates the VM.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use minivmm_tests::{
    guest_file, pattern, run, sha256_hex, spawn, wait, CpuSlots, Finished, Guest, TempDir, MARKER,
};

const MIB: usize = 1 << 20;

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

/// The guest's command: what it prints for each check, as `key=value` at line starts.
/// vda root (writable copy), vdb 1 MiB with a serial, vdc 3 MiB + 512 with a 20-byte
/// serial, vdd the host's 4 MiB pattern, vde 5 MiB of 0xAA to write to, vdf read-only.
const GUEST_CMD: &str = "echo computed $((6*7)); \
    while read -r dev mnt type opts rest; do [ $mnt = / ] && echo root: $dev $mnt $type $opts; done < /proc/mounts; \
    b=; for d in /sys/block/vd*; do b=$b${d#/sys/block/},; done; echo blockdevs=$b; \
    for d in vda vdb vdc vdd vde vdf; do \
      s=; ro=; ser=; read s < /sys/block/$d/size; read ro < /sys/block/$d/ro; read ser < /sys/block/$d/serial; \
      echo $d: size=$s ro=$ro serial=$ser; done; \
    mvtool sha256 -l whole-sha /dev/vdd; \
    mvtool sha256 -l block-sha /dev/vdd 3182592 4096; \
    dd if=/dev/vdd of=/dev/vde bs=1M count=4 iflag=direct oflag=direct conv=fsync 2>/dev/null; echo dd-status=$?; \
    mvtool sha256 -l written-sha /dev/vde 0 4194304; \
    read dm < /sys/block/vde/queue/discard_max_bytes; echo discard-max=$dm; \
    blkdiscard -o 4194304 -l 1048576 /dev/vde; echo discard-status=$?; \
    read rf < /sys/block/vdf/ro; echo ro-flag=$rf; \
    dd if=/dev/zero of=/dev/vdf bs=4096 count=1 oflag=direct 2>/dev/null; echo direct-status=$?; \
    dd if=/dev/zero of=/dev/vdf bs=4096 count=1 seek=8 conv=fsync 2>/dev/null; echo buffered-status=$?; \
    blkdiscard /dev/vdf; echo ro-discard-status=$?; \
    mvtool sha256 -l read-sha /dev/vdf";

/// One boot, six disks:
/// - layout: the root is the writable ext4 disk; the guest sees vda..vdf, in `--disk`
///   order, with their sizes in sectors, read-only flags and serials (20 bytes: the
///   longest GET_ID can return);
/// - the host writes a pattern, the guest reads it with direct I/O: the whole disk in
///   1 MiB requests and one 4 KiB block in the middle (block 777) hash as on the host,
///   and reading changed nothing;
/// - the guest writes 4 MiB with direct I/O and fsync: the host reads exactly those bytes
///   from the image, which keeps its size; DISCARD is offered and accepted, and on a host
///   file system that punches holes the discarded MiB reads back as zeros;
/// - a read-only disk: the guest sees it read-only, a direct write, a buffered write with
///   fsync and a discard all fail, reads work, and the image is byte-identical.
#[test]
fn guest_sees_disk_layout_reads_and_writes_with_direct_io_and_readonly_holds() {
    let t = TempDir::new("minivmm-disk");
    let b = t.join("b.img");
    let c = t.join("c.img");
    let src = t.join("src.img");
    let dst = t.join("dst.img");
    let ro = t.join("ro.img");
    fs::write(&b, vec![0u8; MIB]).unwrap(); // 2048 sectors
    fs::write(&c, vec![0u8; 3 * MIB + 512]).unwrap(); // 6145 sectors
    let src_data = pattern(0x5eed_d15c, 4 * MIB);
    fs::write(&src, &src_data).unwrap();
    // 4 MiB for the guest's copy of the pattern, then 1 MiB it discards; all 0xAA first.
    fs::write(&dst, vec![0xaau8; 5 * MIB]).unwrap();
    let ro_data = pattern(42, MIB);
    fs::write(&ro, &ro_data).unwrap();

    let disk = |p: &Path, opts: &str| format!("{}{opts}", p.display());
    let disks = [
        disk(&b, ",serial=disk-e2e-b"),
        disk(&c, ",serial=abcdefghij0123456789"),
        disk(&src, ""),
        disk(&dst, ""),
        disk(&ro, ",readonly=on"),
    ];
    let mut args = Vec::new();
    for d in &disks {
        args.extend(["--disk", d.as_str()]);
    }
    // Kernel messages would interleave with the command's output on the console.
    let cmd = format!("dmesg -n 1; {GUEST_CMD}");
    let f = Guest::new()
        .writable_root(&t)
        .args(&args)
        .run(&cmd)
        .work(Duration::from_secs(60))
        .boot();
    assert_ran(&f);

    // Layout.
    assert!(f.has_line("computed 42"), "{f}");
    assert!(
        f.stdout.contains("root: /dev/root / ext4 rw"),
        "the root file system is not the writable ext4 disk: {f}"
    );
    assert_eq!(f.value("blockdevs"), "vda,vdb,vdc,vdd,vde,vdf,", "{f}");
    for line in [
        "vda: size=65536 ro=0 serial=",
        "vdb: size=2048 ro=0 serial=disk-e2e-b",
        "vdc: size=6145 ro=0 serial=abcdefghij0123456789",
        "vdd: size=8192 ro=0 serial=",
        "vde: size=10240 ro=0 serial=",
        "vdf: size=2048 ro=1 serial=",
    ] {
        assert!(f.has_line(line), "missing '{line}': {f}");
    }

    // The host's pattern, read by the guest.
    assert_eq!(f.value("whole-sha"), sha256_hex(&src_data), "{f}");
    assert_eq!(
        f.value("block-sha"),
        sha256_hex(&src_data[777 * 4096..778 * 4096]),
        "{f}"
    );
    assert_eq!(
        fs::read(&src).unwrap(),
        src_data,
        "reading changed the image"
    );

    // The guest's direct-I/O write, read by the host.
    assert_eq!(f.value("dd-status"), "0", "{f}");
    let written = fs::read(&dst).unwrap();
    assert_eq!(written.len(), 5 * MIB, "the image changed size");
    assert!(
        written[..4 * MIB] == src_data[..],
        "the image's first 4 MiB differ from what the guest wrote: {f}"
    );
    assert_eq!(
        f.value("written-sha"),
        sha256_hex(&written[..4 * MIB]),
        "the guest read back other bytes than the host: {f}"
    );
    assert_ne!(f.value("discard-max"), "0", "DISCARD not offered: {f}");
    assert_eq!(f.value("discard-status"), "0", "{f}");
    if can_punch_holes(&t) {
        assert!(
            written[4 * MIB..].iter().all(|&b| b == 0),
            "the discarded MiB is not zeros"
        );
    }

    // The read-only disk.
    assert_eq!(f.value("ro-flag"), "1", "{f}");
    for key in ["direct-status", "buffered-status", "ro-discard-status"] {
        assert_ne!(f.value(key), "0", "{key}: a write succeeded: {f}");
    }
    assert_eq!(f.value("read-sha"), sha256_hex(&ro_data), "{f}");
    assert_eq!(
        fs::read(&ro).unwrap(),
        ro_data,
        "the read-only image changed"
    );
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

/// minivmm with just a kernel and `disks`, expected to stop before booting.
fn run_without_boot(disks: &[&str]) -> Finished {
    let kernel = guest_file("vmlinux");
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
    let kernel = guest_file("vmlinux");

    // The first VM boots (briefly) while the test looks at its lock: it takes a core.
    let _slot = CpuSlots::take(1);
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

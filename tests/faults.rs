//! End to end: the host fails under a running guest, or minivmm is killed, and nothing the
//! guest was told is done is lost.
//!
//! - The host file system of a disk fills up (ENOSPC): the guest sees I/O errors on that
//!   disk only, the VM keeps running, and the disk's error counter shows them.
//! - The tap of a NIC is deleted under the VM: the guest's traffic fails, the VM keeps
//!   running and ends normally, and the NIC's counters show the dropped frames.
//! - minivmm is SIGKILLed: data the guest wrote with O_DIRECT and fsync before it said so
//!   is in the image; an ext4 file system being written to at the kill mounts again (its
//!   journal replays) and then checks clean with the host's `e2fsck -fn`.

use std::fs;
use std::process::Command;
use std::time::Duration;

use minivmm_tests::{pattern, Guest, NetNs, TempDir};

const MIB: usize = 1 << 20;
const BRIDGE: &str = "mvbr0";

/// A small tmpfs mounted on a directory for the test's life: a host file system that fills.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &TempDir, size: &str) -> SmallFs {
        let path = dir.join("small");
        fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", path.display());
        SmallFs(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The value of `key` in a `--stats` device line (`vdc: requests 3, ..., errors 2`).
fn counter(stderr: &str, device: &str, key: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{device}: ")))
        .and_then(|l| {
            l.split(", ")
                .find_map(|kv| kv.strip_prefix(&format!("{key} ")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {device} {key} counter in:\n{stderr}"))
}

/// One boot: vdb lives on a 2 MiB tmpfs and the guest writes 4 MiB to it; then the host
/// deletes the VM's tap while the guest waits, and the guest pings into the void.
#[test]
fn a_full_host_disk_and_a_deleted_tap_do_not_stop_the_vm() {
    let t = TempDir::new("minivmm-faults");
    let small = SmallFs::mount(&t, "2m");
    let full = small.0.join("full.img");
    // Sparse: 16 MiB to the guest, 2 MiB of room on the host.
    fs::File::create(&full)
        .unwrap()
        .set_len(16 * MIB as u64)
        .unwrap();
    let ns = NetNs::new("faults");
    ns.create_bridge(BRIDGE, Some("10.98.0.1/24"));

    let cmd = "dmesg -n 1; ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0; \
        i=0; until ping -c 1 -W 2 10.98.0.1 >/dev/null 2>&1; do i=$((i+1)); \
          [ $i -ge 60 ] && break; read -t 1 x <> /etc/wait.fifo; done; echo ping-before=$i; \
        dd if=/dev/zero of=/dev/vdb bs=64k count=64 oflag=direct 2>/dev/null; \
        echo enospc-status=$?; \
        mvtool sha256 -l other-disk /dev/vda 0 65536; \
        echo TAP-DELETE-NOW; read -t 300 go; echo got=$go; \
        ping -c 2 -W 1 10.98.0.1 >/dev/null 2>&1; echo ping-after=$?";
    let full_arg = full.display().to_string();
    let mut vm = Guest::new()
        .args(&[
            "--disk",
            &full_arg,
            "--net",
            &format!("bridge={BRIDGE}"),
            "--stats",
        ])
        .run(cmd)
        .work(Duration::from_secs(90))
        .start_in(Some(&ns));
    assert!(
        vm.wait_for("\nTAP-DELETE-NOW"),
        "the guest never got to the tap: {}",
        vm.console()
    );
    let tap = format!("mvm{}n0", vm.pid());
    ns.run("ip", &["link", "del", &tap]);
    vm.type_in(b"go\r");
    let f = vm.finish();
    assert_eq!(f.code(), 0, "the VM did not end normally: {f}");

    // The guest reached the host before, wrote into a full disk and saw it fail, could
    // still read its other disk, and lost its network after the tap went.
    assert_ne!(
        f.value("ping-before"),
        "60",
        "no network to begin with: {f}"
    );
    assert_ne!(
        f.value("enospc-status"),
        "0",
        "a write to a full disk succeeded: {f}"
    );
    assert_eq!(f.value("other-disk").len(), 64, "{f}");
    assert_eq!(
        f.value("got"),
        "go",
        "the console input did not arrive: {f}"
    );
    assert_ne!(f.value("ping-after"), "0", "ping worked without a tap: {f}");
    assert!(
        counter(&f.stderr, "vdb", "errors") > 0,
        "no write error counted: {f}"
    );
    assert!(
        counter(&f.stderr, &format!("eth0 ({tap})"), "tx_dropped") > 0,
        "no dropped frame counted: {f}"
    );
    drop(small);
}

/// Two boots around a SIGKILL.
#[test]
fn sigkill_loses_no_acknowledged_write_and_ext4_recovers() {
    let t = TempDir::new("minivmm-kill");
    let src_data = pattern(0xdead_beef, MIB);
    let src = t.join("src.img");
    fs::write(&src, &src_data).unwrap();
    let dur = t.join("dur.img");
    fs::write(&dur, vec![0u8; MIB]).unwrap();
    let ext4 = t.join("ext4.img");
    fs::File::create(&ext4)
        .unwrap()
        .set_len(32 * MIB as u64)
        .unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&ext4)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4");
    let (src_a, dur_a, ext4_a) = (
        src.display().to_string(),
        dur.display().to_string(),
        ext4.display().to_string(),
    );

    // Boot 1: copy the host's pattern onto vdc with O_DIRECT and fsync, say so, then write
    // files on the ext4 disk until killed.
    let cmd = "dmesg -n 1; \
        dd if=/dev/vdb of=/dev/vdc bs=64k count=16 iflag=direct oflag=direct conv=fsync \
          2>/dev/null; echo copy-status=$?; \
        mount -t ext4 /dev/vdd /mnt || exit 1; echo WRITTEN-KILL-NOW; \
        i=0; while :; do dd if=/dev/vdb of=/mnt/f$((i % 16)) bs=64k count=16 2>/dev/null; \
          [ $i = 3 ] && echo WRITING-NOW; i=$((i+1)); done";
    let mut vm = Guest::new()
        .args(&["--disk", &src_a, "--disk", &dur_a, "--disk", &ext4_a])
        .run(cmd)
        .work(Duration::from_secs(90))
        .start();
    assert!(
        vm.wait_for("\nWRITTEN-KILL-NOW"),
        "the guest never finished its copy: {}",
        vm.console()
    );
    // The acknowledged write is in the image the moment the guest says so.
    let killed_early = fs::read(&dur).unwrap();
    assert!(
        vm.wait_for("\nWRITING-NOW"),
        "the guest never wrote files: {}",
        vm.console()
    );
    vm.signal(libc::SIGKILL);
    let f = vm.finish();
    assert_eq!(f.value("copy-status"), "0", "{f}");
    assert!(
        killed_early == src_data,
        "the pattern the guest had fsynced is not in the image at its marker"
    );
    assert!(
        fs::read(&dur).unwrap() == src_data,
        "the pattern is not in the image after the kill"
    );

    // Boot 2: the file system mounts (its journal replays) and unmounts cleanly.
    let cmd = "dmesg -n 1; mount -t ext4 /dev/vdb /mnt; echo mount-status=$?; \
        n=0; for x in /mnt/f*; do n=$((n+1)); done; echo files=$n; \
        umount /mnt; echo umount-status=$?";
    let f = Guest::new()
        .args(&["--disk", &ext4_a])
        .run(cmd)
        .work(Duration::from_secs(60))
        .boot();
    assert_eq!(f.code(), 0, "{f}");
    assert_eq!(f.value("mount-status"), "0", "{f}");
    assert_eq!(f.value("umount-status"), "0", "{f}");
    assert_ne!(f.value("files"), "0", "no file survived: {f}");
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "e2fsck -fn after the replay: {}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

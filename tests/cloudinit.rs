//! `--cloud-init` and the root on a partitioned disk, end to end.
//!
//! One boot checks both (tests/README.md says why boots are shared): the test guest's
//! root file system copied into partition 2 of a GPT disk made by `sfdisk` (partition 1
//! an EFI system partition), no `root=` given, so minivmm must find the partition and add
//! `root=PARTUUID=... ro`; and a cloud-init seed from a user-data file, which the guest
//! sees as a read-only `/dev/vdb` and reads with `mvtool` (the test kernel has no vfat
//! driver: the guest hashes the raw device and the user-data's bytes in it, and the host
//! compares with the image the `cloudinit` crate makes from the same inputs, itself
//! checked against `fsck.fat`, `blkid` and `mtools` in that crate's tests). While the VM
//! runs, the seed exists only as a deleted file held open by minivmm.
//!
//! The bad inputs need no boot: one line, exit code 2, and nothing left in `$TMPDIR`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use minivmm_tests::{guest_file, minivmm_bin, sha256_hex, Finished, Guest, TempDir, MARKER};

const MIB: u64 = 1 << 20;

/// minivmm with `args` and `$TMPDIR` set to `tmp`, expected to stop before booting.
fn run_in(tmp: &TempDir, args: &[&str]) -> Finished {
    let child = Command::new(minivmm_bin())
        .args(args)
        .env("TMPDIR", &tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting minivmm");
    minivmm_tests::wait(child, Duration::from_secs(30))
}

fn entries(dir: &TempDir) -> Vec<String> {
    fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every bad `--cloud-init`: exit 2, one line naming the problem, no file left in the
/// temp directory (the seed is never named there; a good seed with a bad kernel neither).
#[test]
fn bad_seeds_exit_2_with_one_line_and_leave_nothing() {
    let inputs = TempDir::new("minivmm-ci-inputs");
    let empty_dir = inputs.join("empty");
    fs::create_dir(&empty_dir).unwrap();
    let dir_as_user_data = inputs.join("dir-ud");
    fs::create_dir_all(dir_as_user_data.join("user-data")).unwrap();
    let big = inputs.join("big");
    fs::File::create(&big)
        .unwrap()
        .set_len(16 * MIB + 1)
        .unwrap();
    let good = inputs.join("user-data");
    fs::write(&good, "#cloud-config\n").unwrap();
    let kernel = guest_file("vmlinux");
    let p = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--cloud-init".into(), "/nonexistent/seed".into()],
            "--cloud-init /nonexistent/seed: No such file".into(),
        ),
        (
            vec!["--cloud-init".into(), p(&empty_dir)],
            "no user-data in the directory".into(),
        ),
        (
            vec!["--cloud-init".into(), p(&dir_as_user_data)],
            "user-data is not a regular file".into(),
        ),
        (
            vec!["--cloud-init".into(), "/dev/null".into()],
            "not a regular file or a directory".into(),
        ),
        (
            vec!["--cloud-init".into(), p(&big)],
            format!(
                "cloud-init seed too large: {} bytes (limit 16 MiB)",
                16 * MIB + 1
            ),
        ),
        (
            vec![
                "--cloud-init".into(),
                p(&good),
                "--disk".into(),
                "/nonexistent/disk.img".into(),
            ],
            "/nonexistent/disk.img".into(),
        ),
    ];
    for (extra, needle) in cases {
        let tmp = TempDir::new("minivmm-ci-tmp");
        let mut args = vec!["--kernel", kernel.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let f = run_in(&tmp, &args);
        assert_eq!(f.code(), 2, "{args:?}: {f}");
        let lines: Vec<&str> = f.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {f}");
        assert!(
            lines[0].starts_with("minivmm: ") && lines[0].contains(&needle),
            "{args:?}: wanted {needle:?}: {f}"
        );
        assert!(f.stdout.is_empty(), "{f}");
        assert!(
            entries(&tmp).is_empty(),
            "{args:?} left {:?}",
            entries(&tmp)
        );
    }
    // With --restore it is refused by the flag parser (the machine comes from the
    // snapshot).
    let tmp = TempDir::new("minivmm-ci-tmp");
    let f = run_in(
        &tmp,
        &["--restore", &p(&inputs.0), "--cloud-init", &p(&good)],
    );
    assert_eq!(f.code(), 2, "{f}");
    assert!(f.stderr.contains("--cloud-init"), "{f}");
    assert_eq!(f.stderr.lines().count(), 1, "{f}");
    assert!(entries(&tmp).is_empty());
}

/// The test guest's `rootfs.ext4` as partition 2 of a GPT disk `sfdisk` makes (partition
/// 1: a 1 MiB EFI system partition). Returns the image and partition 2's PARTUUID as
/// sfdisk reports it, or None (with a message) when sfdisk is not installed.
fn gpt_disk(dir: &TempDir) -> Option<(PathBuf, String)> {
    if Command::new("sfdisk").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: sfdisk is not installed (Debian package fdisk; ./test.sh installs \
             it): the partitioned-root boot did not run"
        );
        return None;
    }
    let root = fs::read(guest_file("rootfs.ext4")).unwrap();
    let img = dir.join("gpt.img");
    let start = 4096u64; // sectors: 2 MiB
    let file = fs::File::create(&img).unwrap();
    file.set_len(start * 512 + root.len() as u64 + MIB).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let script = format!(
        "label: gpt\nstart=2048, size=2048, type=U\nstart={start}, size={}, type=L\n",
        root.len() / 512
    );
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
    // The file system into the partition, leaving its holes holes.
    for (i, block) in root.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, start * 512 + i as u64 * 4096)
                .unwrap();
        }
    }
    let out = Command::new("sfdisk")
        .arg("--part-uuid")
        .arg(&img)
        .arg("2")
        .output()
        .unwrap();
    assert!(out.status.success());
    let uuid = String::from_utf8(out.stdout).unwrap().trim().to_lowercase();
    Some((img, uuid))
}

/// What the guest prints: the root's device number and vda2's, the seed disk's serial,
/// read-only flag and size, and SHA-256 of the whole seed and of the user-data's bytes in
/// it (offset and length filled in by the test).
const GUEST_CMD: &str = "dmesg -n 1; \
    while read -r id parent mm rest; do set -- $rest; [ $2 = / ] && echo rootdev=$mm; done < /proc/self/mountinfo; \
    read d < /sys/block/vda/vda2/dev; echo vda2=$d; \
    read s < /sys/block/vdb/serial; echo seed-serial=$s; \
    read ro < /sys/block/vdb/ro; echo seed-ro=$ro; \
    read sz < /sys/block/vdb/size; echo seed-size=$sz; \
    mvtool sha256 -l seed-sha /dev/vdb; \
    mvtool sha256 -l ud-sha /dev/vdb OFFSET LENGTH";

#[test]
fn boots_from_a_gpt_partition_and_reads_its_cloud_init_seed() {
    let t = TempDir::new("minivmm-ci");
    let Some((disk, uuid)) = gpt_disk(&t) else {
        return;
    };
    let user_data = format!(
        "#cloud-config\n# minivmm test seed {}\nruncmd: [echo, hello]\n",
        std::process::id()
    );
    let ud = t.join("user-data.yaml");
    fs::write(&ud, &user_data).unwrap();
    // The image minivmm should attach: the crate's, from the same inputs and name.
    let name = "ci-e2e";
    let seed = cloudinit::Seed::read(&ud, &cloudinit::Identity::new(Some(name), ""))
        .unwrap()
        .image()
        .unwrap();
    let offset = seed
        .windows(user_data.len())
        .position(|w| w == user_data.as_bytes())
        .expect("the user-data is stored in one piece");
    let cmd = GUEST_CMD
        .replace("OFFSET", &offset.to_string())
        .replace("LENGTH", &user_data.len().to_string());
    let disk_arg = format!("{},readonly=on", disk.display());
    let ud_arg = ud.display().to_string();
    let mut vm = Guest::new()
        .no_root()
        .args(&["--disk", &disk_arg, "--cloud-init", &ud_arg, "--name", name])
        .run(&cmd)
        .work(Duration::from_secs(20))
        .start();

    // While it runs the seed has no name: minivmm holds it open as a deleted file.
    assert!(vm.wait_for(MARKER), "no init marker: {}", vm.console());
    let links: Vec<String> = fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .unwrap()
        .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let tmp = std::env::temp_dir().display().to_string();
    assert!(
        links
            .iter()
            .any(|l| l.starts_with(&tmp) && l.ends_with(" (deleted)")),
        "no deleted seed file among minivmm's descriptors: {links:?}"
    );
    let f = vm.finish();
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout
            .contains("minivmm-guest: command exited with status 0"),
        "the guest command failed: {f}"
    );

    // The root: found by minivmm, named by PARTUUID, mounted from vda2.
    assert!(
        f.stderr.contains(&format!(
            "root file system: PARTUUID={uuid} (partition 2 of the GPT on vda"
        )),
        "{f}"
    );
    assert!(
        f.stderr.contains(&format!("root=PARTUUID={uuid} ro")),
        "{f}"
    );
    assert_eq!(f.value("rootdev"), f.value("vda2"), "{f}");

    // The seed: read-only vdb, the crate's image byte for byte, the user-data in it.
    assert_eq!(f.value("seed-serial"), "cidata", "{f}");
    assert_eq!(f.value("seed-ro"), "1", "{f}");
    assert_eq!(f.value("seed-size"), (seed.len() / 512).to_string(), "{f}");
    assert_eq!(f.value("seed-sha"), sha256_hex(&seed), "{f}");
    assert_eq!(f.value("ud-sha"), sha256_hex(user_data.as_bytes()), "{f}");
}

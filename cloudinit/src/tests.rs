//! Seeds from files and directories, and their images checked by the tools a person would
//! use: `fsck.fat` (dosfstools), `blkid` (util-linux) and `mtools`, each skipped with a
//! message when not installed.

use super::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "minivmm-cloudinit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id() -> Identity {
    Identity::new(Some("web1"), "")
}

#[test]
fn identity_from_the_name_or_the_inputs() {
    assert_eq!(
        id().meta_data(),
        "instance-id: iid-web1\nlocal-hostname: web1\n"
    );
    let odd = Identity::new(Some("My VM: \"#1\"_x"), "");
    assert_eq!(odd.hostname, "my-vm----1--x");
    assert_eq!(
        odd.meta_data(),
        "instance-id: \"iid-My VM: \\\"#1\\\"_x\"\nlocal-hostname: my-vm----1--x\n"
    );
    assert_eq!(Identity::new(Some("---"), "").hostname, "minivmm");
    assert_eq!(Identity::new(Some(&"a".repeat(70)), "").hostname.len(), 63);
    assert_eq!(
        Identity::new(Some("a\nb"), "").meta_data(),
        "instance-id: \"iid-a\\x0ab\"\nlocal-hostname: a-b\n"
    );
    // Unnamed: a stable hash of the inputs, different for different inputs.
    let a = Identity::new(None, "vmlinux\0disk.img\0");
    assert_eq!(a, Identity::new(None, "vmlinux\0disk.img\0"));
    assert_ne!(a, Identity::new(None, "vmlinux\0other.img\0"));
    assert!(a.instance_id.starts_with("iid-") && a.instance_id.len() == 20);
    assert!(a.hostname.starts_with("minivmm-") && a.hostname.len() == 16);
    // FNV-1a's published test vector.
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn a_file_is_the_user_data() {
    let d = Dir::new("file");
    let ud = d.file("config.yaml", b"#cloud-config\nhostname: x\n");
    let seed = Seed::read(&ud, &id()).unwrap();
    let files: Vec<_> = seed.files().collect();
    assert_eq!(
        files,
        vec![
            ("user-data", &b"#cloud-config\nhostname: x\n"[..]),
            ("meta-data", id().meta_data().as_bytes()),
        ]
    );
}

#[test]
fn a_directory_as_cloud_localds_lays_it_out() {
    let d = Dir::new("dir");
    d.file("user-data", b"#cloud-config\n");
    d.file("meta-data", b"instance-id: mine\n");
    d.file("network-config", b"version: 2\n");
    d.file("vendor-data", b"");
    d.file("README", b"not part of the seed");
    let seed = Seed::read(&d.0, &id()).unwrap();
    let files: Vec<_> = seed.files().collect();
    assert_eq!(
        files,
        vec![
            ("user-data", &b"#cloud-config\n"[..]),
            ("meta-data", &b"instance-id: mine\n"[..]),
            ("network-config", &b"version: 2\n"[..]),
            ("vendor-data", &b""[..]),
        ]
    );
    // Without meta-data: generated, after user-data.
    std::fs::remove_file(d.0.join("meta-data")).unwrap();
    let seed = Seed::read(&d.0, &id()).unwrap();
    let names: Vec<_> = seed.files().map(|f| f.0).collect();
    assert_eq!(
        names,
        ["user-data", "meta-data", "network-config", "vendor-data"]
    );
}

#[test]
fn bad_inputs_are_bad_input() {
    let d = Dir::new("bad");
    let check = |p: &Path, needle: &str| {
        let e = Seed::read(p, &id()).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(needle), "{msg} (wanted {needle:?})");
        assert!(!msg.contains('\n'), "{msg}");
    };
    check(&d.0.join("missing"), "No such file");
    check(&d.0, "no user-data in the directory");
    std::fs::create_dir(d.0.join("user-data")).unwrap();
    check(&d.0, "user-data is not a regular file");
    check(Path::new("/dev/null"), "not a regular file or a directory");
    // Too large: measured, not read (a sparse file).
    let big = d.file("big", b"");
    File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(MAX_INPUT + 1)
        .unwrap();
    check(
        &big,
        &format!(
            "cloud-init seed too large: {} bytes (limit 16 MiB)",
            MAX_INPUT + 1
        ),
    );
    // Exactly the limit is fine, counted over all the files.
    let dir2 = Dir::new("limit");
    let ud = dir2.file("user-data", b"");
    File::options()
        .write(true)
        .open(&ud)
        .unwrap()
        .set_len(MAX_INPUT - 100)
        .unwrap();
    dir2.file("vendor-data", &[b'x'; 100]);
    assert!(Seed::read(&dir2.0, &id()).is_ok());
    dir2.file("network-config", b"!");
    check(&dir2.0, "too large");
}

#[test]
fn the_temporary_file_has_no_name() {
    let d = Dir::new("temp");
    let ud = d.file("ud", b"#cloud-config\n");
    let seed = Seed::read(&ud, &id()).unwrap();
    std::fs::remove_file(&ud).unwrap();
    let file = seed.write_temp(&d.0).unwrap();
    assert!(d.entries().is_empty(), "{:?}", d.entries());
    let meta = file.metadata().unwrap();
    assert_eq!(meta.nlink(), 0);
    assert_eq!(meta.mode() & 0o777, 0o600);
    // Reopened read-only through its descriptor, as the VMM opens a disk.
    let back = std::fs::read(fd_path(&file)).unwrap();
    assert_eq!(back, seed.image().unwrap());
    drop(file);
    assert!(d.entries().is_empty());
}

/// Write `seed`'s image to a named file in `d` for the tools.
fn image_file(d: &Dir, seed: &Seed) -> PathBuf {
    d.file("seed.img", &seed.image().unwrap())
}

fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool).arg("--help").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (Debian package {package})");
    }
    ok
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A seed with all four files, one of them over many clusters.
fn full_seed(d: &Dir) -> Seed {
    let big: Vec<u8> = (0..70_000u32)
        .map(|i| b"abcdefgh\n"[(i % 9) as usize])
        .collect();
    d.file("user-data", b"#cloud-config\nhostname: from-user-data\n");
    d.file("network-config", b"version: 2\nethernets: {}\n");
    d.file("vendor-data", &big);
    Seed::read(&d.0, &id()).unwrap()
}

#[test]
fn fsck_finds_nothing_wrong() {
    if !have("fsck.vfat", "dosfstools") {
        return;
    }
    let d = Dir::new("fsck");
    let img = image_file(&d, &full_seed(&d));
    let (ok, out) = run(Command::new("fsck.vfat").args(["-n", "-v"]).arg(&img));
    assert!(ok, "{out}");
    assert!(!out.to_lowercase().contains("warning"), "{out}");
    // An empty user-data and the biggest seed allowed, too.
    for (tag, size) in [("empty", 0u64), ("max", MAX_INPUT)] {
        let d = Dir::new(tag);
        let ud = d.file("user-data", b"");
        File::options()
            .write(true)
            .open(&ud)
            .unwrap()
            .set_len(size)
            .unwrap();
        let img = image_file(&d, &Seed::read(&ud, &id()).unwrap());
        let (ok, out) = run(Command::new("fsck.vfat").arg("-n").arg(&img));
        assert!(ok, "{tag}: {out}");
    }
}

#[test]
fn blkid_sees_a_vfat_labelled_cidata() {
    if !have("blkid", "util-linux") {
        return;
    }
    let d = Dir::new("blkid");
    let img = image_file(&d, &full_seed(&d));
    let (ok, out) = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l == "LABEL=CIDATA"), "{out}");
    assert!(out.lines().any(|l| l == "TYPE=vfat"), "{out}");
    assert!(out.lines().any(|l| l == "VERSION=FAT16"), "{out}");
}

#[test]
fn mtools_reads_the_files_back() {
    if !have("mtype", "mtools") {
        return;
    }
    let d = Dir::new("mtools");
    let seed = full_seed(&d);
    let img = image_file(&d, &seed);
    let mtools = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(["-i"])
            .arg(&img)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let listing = String::from_utf8(mtools(&["mdir", "-b", "::"])).unwrap();
    let mut names: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("::/"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["meta-data", "network-config", "user-data", "vendor-data"]
    );
    for (name, data) in seed.files() {
        assert_eq!(mtools(&["mtype", &format!("::{name}")]), data, "{name}");
    }
    let label = String::from_utf8(mtools(&["mlabel", "-s", "::"])).unwrap();
    assert!(label.contains("CIDATA"), "{label}");
}

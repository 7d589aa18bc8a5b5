//! The Debian image's own Python, checked on the host without a boot.
//!
//! `cloud-init-stages` (resources/guest/debian/overlay/usr/local/lib/vminit) answers some
//! of cloud-init's programs in its own process, and imports cloud-init from a byte-code
//! bundle made by `resources/guest/debian/pybundle.py`. `guest_scripts/check_stages.py`
//! compares each answer with the program's on this host (lsb_release, dpkg, ssh-keygen,
//! ip) and imports through a bundle of this host's Python: see its docstring. It runs
//! under Debian's `/usr/bin/python3`, the same Python 3.11 as the image's. The image
//! build's `debian/no-avx512.py` (MariaDB's server without its AVX-512 CRC-32C) is
//! checked on synthetic binaries. The benchmark scripts' `clearcpuid=` list for QEMU's
//! guests (`resources/bench/boot.py`) is checked against minivmm's PVM template.

use std::path::Path;
use std::process::Command;

#[test]
fn cloud_init_stages_answers_match_the_programs_and_the_bundle_imports() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest_scripts/check_stages.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .output()
        .expect("running /usr/bin/python3 (Debian's python3 package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "check_stages.py failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

/// `debian/no-avx512.py` replaces the `xgetbv` of MariaDB's `os_have_avx512()` (the
/// pattern once, anywhere in the file) and nothing else, and writes nothing when the
/// pattern is missing or there twice.
#[test]
fn no_avx512_replaces_one_xgetbv_or_writes_nothing() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/guest/debian/no-avx512.py");
    let dir = minivmm_tests::TempDir::new("no-avx512");
    let function: &[u8] = &[
        0x31, 0xc9, 0x0f, 0x01, 0xd0, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0xf7, 0xd0,
        0xa8, 0xe6, 0x0f, 0x94, 0xc0, 0xc3,
    ];
    let run = |binary: &[u8]| {
        let (src, dst) = (dir.join("mariadbd"), dir.join("out/mariadbd-no-avx512"));
        let _ = std::fs::remove_file(&dst);
        std::fs::write(&src, binary).unwrap();
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&src)
            .arg(&dst)
            .output()
            .expect("running no-avx512.py");
        (out.status.code(), std::fs::read(&dst).ok())
    };
    // Another xgetbv elsewhere (0f 01 d0) stays as it is.
    let mut binary = b"\x7fELF other code \x0f\x01\xd0 ".to_vec();
    let at = binary.len();
    binary.extend_from_slice(function);
    binary.extend_from_slice(b" more");
    let (code, out) = run(&binary);
    assert_eq!(code, Some(0));
    let mut want = binary.clone();
    want[at + 2..at + 5].copy_from_slice(&[0x31, 0xc0, 0x99]);
    assert_eq!(out.as_deref(), Some(want.as_slice()));

    let (code, out) = run(&binary[..at + 10]);
    assert_eq!((code, out), (Some(3), None), "pattern missing");
    let twice = [binary.as_slice(), function].concat();
    let (code, out) = run(&twice);
    assert_eq!((code, out), (Some(3), None), "pattern twice");
}

/// The benchmark scripts give QEMU's guests the same `clearcpuid=` list as minivmm's PVM
/// template adds: `resources/bench/boot.py` holds the one copy (the other scripts import
/// it, or read it from there in shell), and it must equal the template's.
#[test]
fn bench_scripts_give_qemu_the_pvm_template_list() {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/bench");
    let out = Command::new("/usr/bin/python3")
        .args([
            "-B",
            "-c",
            "from boot import PVM_CMDLINE; print(PVM_CMDLINE)",
        ])
        .current_dir(&bench)
        .output()
        .expect("running /usr/bin/python3");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        arch::cpuid::CpuTemplate::Pvm.extra_kernel_cmdline(),
        "resources/bench/boot.py's PVM_CMDLINE differs from the pvm template's"
    );
    // No script keeps a copy of its own.
    for entry in std::fs::read_dir(&bench).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "boot.py" || !path.is_file() {
            continue;
        }
        // A list is `clearcpuid=` followed by a feature name (the docs' "`clearcpuid=`
        // list" and "clearcpuid= keeps" are prose).
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let has_list = text
            .match_indices("clearcpuid=")
            .any(|(i, m)| text[i + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(
            !has_list,
            "{} has its own clearcpuid= list; import boot.py's",
            path.display()
        );
    }
}

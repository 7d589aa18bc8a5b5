//! The Debian image's own Python, checked on the host without a boot.
//!
//! `cloud-init-stages` (resources/guest/debian/overlay/usr/local/lib/vminit) answers some
//! of cloud-init's programs in its own process, and imports cloud-init from a byte-code
//! bundle made by `resources/guest/debian/pybundle.py`. `guest_scripts/check_stages.py`
//! compares each answer with the program's on this host (lsb_release, dpkg, ssh-keygen,
//! ip) and imports through a bundle of this host's Python: see its docstring. It runs
//! under Debian's `/usr/bin/python3`, the same Python 3.11 as the image's.

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

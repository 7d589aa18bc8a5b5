//! Fuzz reading a snapshot (`vmm/src/snapshot/mod.rs: load`, `Loaded::config`): a
//! `snapshot.json` is a file a user may have been handed, so whatever it holds must be
//! refused with an error, never a panic, and a snapshot that is accepted must describe a
//! machine the builder's own checks accept or refuse cleanly.
//!
//! The input is the JSON text (a real `snapshot.json` is a good seed); the `memory` file
//! beside it is a sparse 64 MiB file.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("minivmm-fuzz-snap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::File::create(d.join("memory"))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(d.join("snapshot.json"), data).unwrap();
    let Ok(loaded) = vmm::snapshot::load(d) else {
        return;
    };
    if let Ok(cfg) = loaded.config(&vmm::RestoreOptions::default()) {
        let _ = vmm::VmBuilder::new(cfg);
    }
});

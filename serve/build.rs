//! Embeds the web page of `minivmm serve` in the binary.
//!
//! `serve/web/` holds the hand-written page (`index.html`, `app.js`, `app.css`) and the
//! npm manifest and lockfile of its only dependencies, xterm.js and its fit add-on. This
//! script installs those with `npm ci` into a copy of the manifest in `OUT_DIR` (again
//! only when the lockfile changed), and checks that every file `src/assets.rs` embeds is
//! there, so that a missing file or a missing npm is one clear build error rather than a
//! page that fails in the browser.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The page's own files, embedded as they are.
const WEB_FILES: &[&str] = &["index.html", "app.js", "app.css"];
/// The npm files, copied to OUT_DIR for `npm ci`.
const NPM_FILES: &[&str] = &["package.json", "package-lock.json"];
/// What is embedded from the installed packages (paths under node_modules).
const VENDOR_FILES: &[&str] = &[
    "@xterm/xterm/lib/xterm.js",
    "@xterm/xterm/css/xterm.css",
    "@xterm/addon-fit/lib/addon-fit.js",
];

fn fail(msg: String) -> ! {
    // A panic in a build script shows its message as the build error.
    panic!("\n\nminivmm serve's web page: {msg}\n");
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let web = manifest.join("web");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    for f in WEB_FILES.iter().chain(NPM_FILES) {
        let p = web.join(f);
        println!("cargo:rerun-if-changed={}", p.display());
        if !p.is_file() {
            fail(format!("{} is missing", p.display()));
        }
    }
    let deps = out.join("web-deps");
    install(&web, &deps);
    for f in VENDOR_FILES {
        let p = deps.join("node_modules").join(f);
        if !p.is_file() {
            fail(format!(
                "{} is missing after npm ci: does serve/web/package-lock.json still name \
                 @xterm/xterm and @xterm/addon-fit?",
                p.display()
            ));
        }
    }
}

/// `npm ci` in `deps` on a copy of the manifest and lockfile, unless the lockfile there
/// is the same as in `web` and its packages are installed.
fn install(web: &Path, deps: &Path) {
    let lock = std::fs::read(web.join("package-lock.json")).unwrap();
    let stamp = deps.join("installed-lock.json");
    let installed = std::fs::read(&stamp).ok();
    let complete = VENDOR_FILES
        .iter()
        .all(|f| deps.join("node_modules").join(f).is_file());
    if installed.as_deref() == Some(&lock[..]) && complete {
        return;
    }
    std::fs::create_dir_all(deps).unwrap();
    for f in NPM_FILES {
        std::fs::copy(web.join(f), deps.join(f)).unwrap();
    }
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    let status = Command::new(&npm)
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefer-offline",
        ])
        .current_dir(deps)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => fail(format!(
            "`{npm} ci` in {} failed ({s}); its output is above",
            deps.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(format!(
            "`{npm}` was not found: install Node.js and npm (Debian: apt-get install nodejs \
             npm) to build minivmm"
        )),
        Err(e) => fail(format!("running `{npm} ci`: {e}")),
    }
    std::fs::write(&stamp, &lock).unwrap();
}

//! The web console of `minivmm serve` (serve/web/) in a real headless Chromium.
//!
//! Each test starts `target/<profile>/minivmm serve` on a free loopback port with its own
//! state directory, and runs `tests/browser/drive.py` (Playwright driving Debian's
//! `/usr/bin/chromium`; `resources/web/setup-browser.sh` installs both, and is run here
//! first: quick once done). The driver does what a person does on the page and checks
//! what they would see; this file owns the process side: the server, the CPU slots (the
//! one Linux VM the flow boots; the eight tiny guests of the list test, from
//! `minivmm_tests::tiny_kernel`), the deadlines (scaled by the host's speed, see
//! tests/README.md), and cleaning up.
//!
//! Screenshots go to `target/web-screenshots/` (`MINIVMM_WEB_SHOTS=docs/screenshots`
//! refreshes the ones in the docs).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use minivmm_tests::{
    boot_budget, guest_dir, minivmm_bin, repo_root, tiny_kernel, Budget, CpuSlots, TempDir,
};

/// The virtual environment's python with Playwright (from the setup script).
fn browser_python() -> &'static PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("resources/web/setup-browser.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running resources/web/setup-browser.sh");
        assert!(
            out.status.success(),
            "resources/web/setup-browser.sh failed ({}): the browser tests need Debian's \
             chromium and Playwright from PyPI",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().expect("setup printed nothing").trim())
    })
}

/// Where the screenshots go.
fn shots_dir() -> PathBuf {
    match std::env::var_os("MINIVMM_WEB_SHOTS") {
        Some(d) => repo_root().join(d),
        None => repo_root().join("target/web-screenshots"),
    }
}

/// Seconds, for the driver's arguments.
fn secs(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64().ceil())
}

/// A running `minivmm serve`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Serve {
    child: Option<Child>,
    url: String,
    dir: TempDir,
}

impl Serve {
    fn start() -> Serve {
        let dir = TempDir::new("minivmm-browser");
        let state = dir.join("state");
        let log = std::fs::File::create(dir.join("serve.log")).unwrap();
        let mut child = Command::new(minivmm_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--guest-dir")
            .arg(guest_dir())
            // Console viewers attaching, leaving and dropped are logged at info.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting minivmm serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so that the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut serve = Serve {
            child: Some(child),
            url: String::new(),
            dir,
        };
        let first = rx.recv_timeout(Duration::from_secs(30));
        let line = match first {
            Ok(Some(Ok(l))) => l,
            other => panic!(
                "minivmm serve printed no first line ({other:?}); its log:\n{}",
                serve.log()
            ),
        };
        let url = line
            .strip_prefix("minivmm serve: ")
            .unwrap_or_else(|| panic!("unexpected first line of minivmm serve: {line:?}"));
        assert!(
            url.starts_with("http://127.0.0.1:") && url.contains("/#token="),
            "unexpected address: {url}"
        );
        serve.url = url.to_string();
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// SIGTERM, and the exit status it ends with (it stops its VMs first).
    fn shutdown(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs the driver in `mode` against `serve`, echoing its output; panics with the driver's
/// failure line and the server's log unless it passes. Returns its output.
fn drive(serve: &Serve, mode: &str, extra: &[String], limit: Duration) -> String {
    let shots = shots_dir();
    let mut child = Command::new(browser_python())
        .arg(repo_root().join("tests/browser/drive.py"))
        .arg(mode)
        .arg("--url")
        .arg(&serve.url)
        .arg("--shots")
        .arg(&shots)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tests/browser/drive.py");
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        })
    })
    .collect();
    drop(tx);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in readers {
        let _ = r.join();
    }
    let out: Vec<String> = rx.into_iter().collect();
    let out = out.join("\n");
    match status {
        Some(s) if s.success() => out,
        _ => {
            let fail = out
                .lines()
                .find(|l| l.starts_with("drive: FAIL"))
                .unwrap_or("drive: no FAIL line (see the output above)");
            panic!(
                "the browser driver ({mode}) failed: {}\n{fail}\nminivmm serve's log:\n{}",
                match status {
                    Some(s) => format!("{s}"),
                    None => format!("killed after {} s", limit.as_secs()),
                },
                serve.log()
            );
        }
    }
}

/// The page as a person uses it, with one VM booted from the busybox image: the token,
/// the create form, the list with its charts, the console (a command typed, its computed
/// output read back), pause, resume, stop and delete; the page without a token, and
/// requests from another origin refused.
#[test]
fn web_console_flow() {
    let python = browser_python();
    assert!(python.exists());
    let mut serve = Serve::start();
    // The busybox test guest from its ext4 image (shared read-only: no initramfs to
    // unpack, ~20 s less on the reference host), to the init marker, then the shell.
    let boot = boot_budget(Duration::from_secs(10));
    let command = Budget::scaled(Duration::from_secs(20));
    let step = Budget::scaled(Duration::from_secs(15)).cpu;
    let name = format!("web{}", std::process::id() % 100_000);
    let extra = [
        "--name".to_string(),
        name,
        "--image".into(),
        "busybox-disk".into(),
        "--step".into(),
        secs(step),
        "--boot-cpu".into(),
        secs(boot.cpu),
        "--boot-wall".into(),
        secs(boot.wall),
        "--cmd-wall".into(),
        secs(command.wall),
    ];
    let limit = boot.wall + command.wall * 2 + step * 20 + Duration::from_secs(120);
    // The one VM this test boots takes a core for the whole flow.
    let slots = CpuSlots::take(1);
    let out = drive(&serve, "flow", &extra, limit);
    drop(slots);
    assert!(out.contains("drive: flow: all checks passed"), "{out}");
    let status = serve.shutdown();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "minivmm serve on SIGTERM: {status:?}; its log:\n{}",
        serve.log()
    );
}

/// Eight running VMs in the list (tiny guests: each prints a line and halts, so they stay
/// running at no CPU cost), once each chart holds 20 s of samples: each list update
/// (measured in the page) stays cheap, rows are updated in place, never rebuilt, and the
/// manager's RSS stays small next to its VMs'. A second measurement feeds the same page a
/// list whose charts are full of varying data (the tiny guests' are flat).
#[test]
fn eight_vms_list_updates() {
    let serve = Serve::start();
    let kernel = tiny_kernel(&serve.dir);
    let step = Budget::scaled(Duration::from_secs(15)).cpu;
    // A list update of 8 rows takes a few ms; 50 ms (median) means something is rebuilt
    // or recomputed that should not be, whatever else the host runs. The manager with 8
    // VMs and a page polling it is ~5 MiB; 32 MiB (as in tests/serve.rs) is a leak or bloat.
    let extra = [
        "--step".to_string(),
        secs(step),
        "--seconds".into(),
        "10".into(),
        "--render-ms".into(),
        "50".into(),
        "--kernel".into(),
        kernel.display().to_string(),
        "--manager-rss-mib".into(),
        "32".into(),
    ];
    // The boots are quick and the guests then halt, but the 8 boots, the browser and the
    // measurement want the cores: no guest kernel of another test on them meanwhile.
    let slots = CpuSlots::take(2);
    let out = drive(&serve, "perf", &extra, step * 10 + Duration::from_secs(180));
    drop(slots);
    let perf: Vec<&str> = out.lines().filter(|l| l.starts_with("perf: ")).collect();
    assert_eq!(perf.len(), 3, "{out}");
    assert!(perf[0].contains("tiny guests, the real API"), "{out}");
    assert!(
        perf[1].starts_with("perf: memory manager_rss_mib="),
        "{out}"
    );
    assert!(perf[2].contains("synthetic list"), "{out}");
    eprintln!("eight_vms_list_updates:\n  {}", perf.join("\n  "));
}

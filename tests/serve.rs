//! `minivmm serve` end to end: the manager process, its REST API and console WebSocket,
//! on real VMs.
//!
//! - Without Linux: refused `--listen` addresses and state directories, the security
//!   checks (token, Host, Origin, tickets), bad bodies and unknown VMs, a kernel the VM's
//!   process refuses (400 in its words, nothing left), eight tiny hand-assembled guests at
//!   once (each prints a line and halts: no CPU) with the manager's memory measured, two
//!   clients at once, kill and stop, and SIGTERM leaving no process, socket or directory.
//! - One Linux boot (the test guest's shared read-only root): its `/init` marker in
//!   `console.log`, two console viewers over WebSockets (scrollback, a typed command's
//!   computed output), pause (the guest's counter stalls) and resume (it goes on), the
//!   counters, the ACPI power button (stopped, exit code 0), delete.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minivmm_tests::speed::{factor, BudgetClock};
use minivmm_tests::{boot_budget, guest_dir, minivmm_bin, tiny_kernel, CpuSlots, TempDir, MARKER};
use serde_json::{json, Value};

// --- the manager process ---------------------------------------------------------------------

/// A running `minivmm serve`; killed (and so its VMs, by their parent-death signal) if the
/// test fails before it stops it.
struct Serve {
    child: Option<Child>,
    host: String,
    token: String,
    state: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// A wall-clock wait for things that need no guest work, scaled to the host's speed.
fn patience(base: u64) -> Duration {
    Duration::from_secs(base).mul_f64(factor())
}

impl Serve {
    fn start(dir: &TempDir) -> Serve {
        let state = dir.join("state");
        let mut child = Command::new(minivmm_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .arg("--guest-dir")
            .arg(guest_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting minivmm serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("reading serve's first line");
        // Keep reading (nothing more is expected) so that serve never blocks on stdout.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let rest = line
            .trim()
            .strip_prefix("minivmm serve: http://")
            .unwrap_or_else(|| panic!("first line: {line:?}; stderr: {}", stderr.lock().unwrap()));
        let (host, token) = rest.split_once("/#token=").expect("URL with #token=");
        assert!(host.starts_with("127.0.0.1:"), "{host}");
        assert_eq!(token.len(), 32, "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        Serve {
            child: Some(child),
            host: host.to_string(),
            token: token.to_string(),
            state,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Send `raw` (a whole request) and read the answer until the server closes.
    fn raw(&self, raw: &[u8]) -> Answer {
        let mut s = TcpStream::connect(&self.host).unwrap();
        s.set_read_timeout(Some(patience(60))).unwrap();
        s.write_all(raw).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading the answer");
        Answer::parse(&buf)
    }

    /// A request with the token, a JSON body if any, and `extra` header lines.
    fn call_with(&self, method: &str, path: &str, body: Option<&str>, extra: &str) -> Answer {
        let body = body.unwrap_or("");
        self.raw(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n{extra}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.host,
                self.token,
                body.len()
            )
            .as_bytes(),
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_with(method, path, body, "")
    }

    fn vm(&self, name: &str) -> Value {
        let a = self.call("GET", &format!("/api/v1/vms/{name}"), None);
        assert_eq!(a.status, 200, "{a:?}");
        a.json()
    }

    fn console_log(&self, name: &str) -> String {
        let a = self.call("GET", &format!("/api/v1/vms/{name}/console.log"), None);
        assert_eq!(a.status, 200, "{a:?}");
        String::from_utf8_lossy(&a.body).into_owned()
    }

    /// Wait (`patience`) until VM `name` is in `state`.
    fn wait_state(&self, name: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.vm(name);
            if v["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "VM {name} never got {state}: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + patience(60);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not exit after SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An answer: status, headers (names lowercased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Answer {
    fn parse(buf: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(buf);
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end: {text:?}"));
        let head = String::from_utf8_lossy(&buf[..end]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = buf[end + 4..].to_vec();
        let a = Answer {
            status,
            headers,
            body,
        };
        if let Some(n) = a.header("content-length") {
            assert_eq!(n.parse::<usize>().unwrap(), a.body.len(), "{a:?}");
        }
        a
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The error text of a `status` answer.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let e = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {self:?}"))
            .to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        e
    }
}

// --- a console viewer ------------------------------------------------------------------------

/// A WebSocket console viewer: what it received so far, collected by a thread.
struct Viewer {
    stream: TcpStream,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Viewer {
    /// Get a ticket and open the console of VM `name`.
    fn attach(serve: &Serve, name: &str) -> Viewer {
        let t = serve.call("POST", &format!("/api/v1/vms/{name}/console-ticket"), None);
        assert_eq!(t.status, 200, "{t:?}");
        let ticket = t.json()["ticket"].as_str().unwrap().to_string();
        let (stream, rest) = open_console(serve, name, &ticket, &format!("http://{}", serve.host))
            .unwrap_or_else(|a| panic!("WebSocket refused: {a:?}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let mut r = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = rest;
            let mut chunk = [0u8; 8192];
            loop {
                // Whole frames from the front of `buf`.
                while buf.len() >= 2 {
                    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
                    let (len, head) = match buf[1] & 0x7f {
                        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                        127 if buf.len() >= 10 => (
                            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                            10,
                        ),
                        126 | 127 => break,
                        n => (n as usize, 2),
                    };
                    if buf.len() < head + len {
                        break;
                    }
                    if buf[0] & 0x0f == 0x2 {
                        sink.lock()
                            .unwrap()
                            .extend_from_slice(&buf[head..head + len]);
                    }
                    buf.drain(..head + len);
                }
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Viewer { stream, received }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// Send `bytes` as one masked text frame.
    fn type_in(&mut self, bytes: &[u8]) {
        assert!(bytes.len() < 126);
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        let mut f = vec![0x81, 0x80 | bytes.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f).unwrap();
    }
}

/// The WebSocket handshake for VM `name`'s console: the stream and what followed the
/// answer's headers, or the refusal.
fn open_console(
    serve: &Serve,
    name: &str,
    ticket: &str,
    origin: &str,
) -> Result<(TcpStream, Vec<u8>), Answer> {
    let mut s = TcpStream::connect(&serve.host).unwrap();
    s.set_read_timeout(Some(patience(30))).unwrap();
    write!(
        s,
        "GET /api/v1/vms/{name}/console?ticket={ticket} HTTP/1.1\r\nHost: {}\r\n\
         Origin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        serve.host
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no answer")
        + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101 ") {
        // The refusal closes the connection: read the rest of its body.
        let _ = s.read_to_end(&mut buf);
        return Err(Answer::parse(&buf));
    }
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s.set_read_timeout(None).unwrap();
    Ok((s, buf[end..].to_vec()))
}

// --- tiny guests -----------------------------------------------------------------------------

fn tiny_body(name: &str, kernel: &str) -> String {
    json!({"name": name, "kernel": kernel, "memory_mib": 32}).to_string()
}

fn alive(pid: u64) -> bool {
    // A zombie is not alive: it has ended, its parent has not reaped it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

// --- the OpenAPI description ------------------------------------------------------------------

/// Check that `v` has exactly the fields of schema `name` in docs/serve-api.json (all of
/// them required there) and what is inside `VmInfo` likewise.
fn conforms(v: &Value, name: &str) {
    let path = minivmm_tests::repo_root().join("docs/serve-api.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let schema = &doc["components"]["schemas"][name];
    let mut want: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut got: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{name}: {v}");
    if name == "VmInfo" {
        conforms(&v["config"], "CreateVm");
        conforms(&v["stats"], "Stats");
        for s in v["history"].as_array().unwrap() {
            conforms(s, "Sample");
        }
    }
}

// --- tests -----------------------------------------------------------------------------------

/// `--listen` beyond loopback, and a state directory another manager holds: one line,
/// exit code 2, nothing made.
#[test]
fn refused_command_lines_exit_2_with_one_line() {
    let dir = TempDir::new("minivmm-serve-cli");
    for listen in ["0.0.0.0:8080", "192.168.1.1:80", "[::]:80", "nonsense"] {
        let state = dir.join("never");
        let out = Command::new(minivmm_bin())
            .args(["serve", "--listen", listen, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listen}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("minivmm: --listen {listen}: ")),
            "{err}"
        );
        assert!(out.stdout.is_empty());
        assert!(!state.exists(), "{listen}: the state directory was made");
    }
    let first = Serve::start(&dir);
    let out = Command::new(minivmm_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&first.state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another minivmm serve"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The first one is unharmed.
    assert_eq!(first.call("GET", "/api/v1/vms", None).json(), json!([]));
    assert!(first.terminate().success());
}

/// Token, Host, Origin and tickets; bad bodies and unknown VMs; the page without a token;
/// a kernel the VM's process refuses.
#[test]
fn requests_are_checked_and_bad_ones_answered_in_one_line() {
    // The few VMs this starts are tiny guests that halt at once, or processes that refuse
    // their kernel: no vCPU stays busy, so no CPU slot is taken.
    let dir = TempDir::new("minivmm-serve-checks");
    let serve = Serve::start(&dir);
    let kernel = tiny_kernel(&dir).display().to_string();
    let h = serve.host.clone();

    // No token, a wrong one: 401, and nothing about the VMs.
    let get = |extra: &str| {
        serve.raw(format!("GET /api/v1/vms HTTP/1.1\r\nHost: {h}\r\n{extra}\r\n").as_bytes())
    };
    let a = get("");
    assert!(a.error(401).contains("token"), "{a:?}");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    get("Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n").error(401);
    get(&format!("Authorization: Basic {}\r\n", serve.token)).error(401);
    // DNS rebinding: another name for this address.
    let a = serve.raw(
        format!(
            "GET /api/v1/vms HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {}\r\n\r\n",
            h.split(':').nth(1).unwrap(),
            serve.token
        )
        .as_bytes(),
    );
    assert!(a.error(421).contains("evil.example"), "{a:?}");
    serve
        .raw(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .error(421);
    // Another site's page, even with the token.
    let a = serve.call_with(
        "GET",
        "/api/v1/vms",
        None,
        "Origin: http://evil.example\r\n",
    );
    assert!(a.error(403).contains("Origin"), "{a:?}");
    let a = serve.call_with(
        "GET",
        "/api/v1/vms",
        None,
        &format!("Origin: http://{h}\r\n"),
    );
    assert_eq!(a.status, 200, "{a:?}");
    // Never a CORS header.
    assert!(
        a.headers
            .iter()
            .all(|(n, _)| !n.starts_with("access-control")),
        "{a:?}"
    );

    // The page, without a token, with its headers.
    let a = serve.raw(
        format!(
            "GET / HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            h.split(':').nth(1).unwrap()
        )
        .as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(a
        .header("content-security-policy")
        .unwrap()
        .starts_with("default-src 'self'"));
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
    for (path, ty) in [
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/vendor/xterm.js", "text/javascript"),
        ("/vendor/xterm.css", "text/css"),
        ("/vendor/addon-fit.js", "text/javascript"),
    ] {
        let a = serve.raw(format!("GET {path} HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("content-type").unwrap().starts_with(ty),
            "{path}: {a:?}"
        );
        assert!(a.body.len() > 100, "{path}");
    }
    serve
        .raw(format!("GET /nothing HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes())
        .error(404);

    // Bad bodies: 400, naming the field in the command line's words.
    let post = |body: &str| serve.call("POST", "/api/v1/vms", Some(body));
    let e = post("{\"name\": ").error(400);
    assert!(e.starts_with("bad request body"), "{e}");
    let e = post(&json!({"name": "a", "kernel": kernel, "cpu": 1}).to_string()).error(400);
    assert!(e.contains("unknown field `cpu`"), "{e}");
    let e = post(&json!({"name": "Bad_Name", "kernel": kernel}).to_string()).error(400);
    assert!(e.starts_with("name 'Bad_Name'"), "{e}");
    let e = post(&json!({"name": "a", "kernel": kernel, "cpus": 0}).to_string()).error(400);
    assert!(e.starts_with("cpus 0: must be between 1 and "), "{e}");
    let e =
        post(&json!({"name": "a", "kernel": kernel, "memory_mib": "lots"}).to_string()).error(400);
    assert!(e.starts_with("memory_mib: invalid size 'lots'"), "{e}");
    let e = post(&json!({"name": "a"}).to_string()).error(400);
    assert!(e.starts_with("kernel: missing"), "{e}");
    let e = post(&json!({"name": "a", "kernel": "/no/such/vmlinux"}).to_string()).error(400);
    assert_eq!(
        e,
        "kernel /no/such/vmlinux: No such file or directory (os error 2)"
    );
    let e = post(&json!({"name": "a", "image": "windows"}).to_string()).error(400);
    assert!(
        e.starts_with("image 'windows': no such image (this manager has: busybox"),
        "{e}"
    );
    let big = format!(
        "{{\"name\": \"a\", \"cmdline\": \"{}\"}}",
        "x".repeat(1 << 20)
    );
    serve.call("POST", "/api/v1/vms", Some(&big)).error(413);
    // A file the VM's process cannot boot: its own words, and nothing left behind.
    let e = post(&json!({"name": "notakernel", "kernel": "/etc/hostname"}).to_string()).error(400);
    assert!(e.starts_with("kernel /etc/hostname: "), "{e}");
    assert_eq!(serve.call("GET", "/api/v1/vms", None).json(), json!([]));
    assert_eq!(
        std::fs::read_dir(serve.state.join("vms")).unwrap().count(),
        0,
        "a refused VM left its directory"
    );

    // A VM made but not started: actions that need it running are 409s.
    let a = serve.call(
        "POST",
        "/api/v1/vms",
        Some(&json!({"name": "idle", "kernel": kernel, "start": false}).to_string()),
    );
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json()["state"], "created");
    conforms(&a.json(), "VmInfo");
    assert_eq!(a.json()["config"]["memory_mib"], 256);
    assert!(serve.state.join("vms/idle/config.json").is_file());
    let e = post(&json!({"name": "idle", "kernel": kernel}).to_string()).error(409);
    assert!(e.contains("'idle' exists already"), "{e}");
    for action in ["pause", "resume", "stop", "kill", "power-button"] {
        let e = serve
            .call("PUT", &format!("/api/v1/vms/idle/{action}"), None)
            .error(409);
        assert!(e.contains("it is created"), "{action}: {e}");
    }
    serve
        .call("GET", "/api/v1/vms/idle/counters", None)
        .error(409);
    let a = serve.call("GET", "/api/v1/vms/idle/console.log?offset=0", None);
    assert_eq!(
        (a.status, a.header("x-console-size")),
        (200, Some("0")),
        "{a:?}"
    );
    serve
        .call("GET", "/api/v1/vms/idle/console.log?offset=x", None)
        .error(400);
    serve
        .call("GET", "/api/v1/vms/idle/console.log?from=1", None)
        .error(400);
    let e = serve
        .call("PUT", "/api/v1/vms/idle/pause", Some("{\"now\": 1}"))
        .error(400);
    assert!(e.contains("takes no body"), "{e}");
    let a = serve.call("DELETE", "/api/v1/vms", None);
    assert_eq!(a.header("allow"), Some("GET, POST"), "{a:?}");
    a.error(405);

    // Unknown VMs: 404 naming them.
    for (m, p) in [
        ("GET", "/api/v1/vms/ghost"),
        ("DELETE", "/api/v1/vms/ghost"),
        ("PUT", "/api/v1/vms/ghost/start"),
        ("GET", "/api/v1/vms/ghost/console.log"),
        ("POST", "/api/v1/vms/ghost/console-ticket"),
    ] {
        assert_eq!(
            serve.call(m, p, None).error(404),
            "no VM named 'ghost'",
            "{m} {p}"
        );
    }
    serve
        .call("PUT", "/api/v1/vms/idle/reboot", None)
        .error(404);

    // Console tickets: needed, single use, for one VM, and the page's Origin only.
    let ticket = |vm: &str| {
        serve
            .call("POST", &format!("/api/v1/vms/{vm}/console-ticket"), None)
            .json()["ticket"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let origin = format!("http://{h}");
    open_console(&serve, "idle", "nonsense", &origin)
        .unwrap_err()
        .error(401);
    let t = ticket("idle");
    open_console(&serve, "idle", &t, "http://evil.example")
        .unwrap_err()
        .error(403);
    let (ws, _) = open_console(&serve, "idle", &t, &origin).expect("a good ticket");
    drop(ws);
    open_console(&serve, "idle", &t, &origin)
        .unwrap_err()
        .error(401);
    let a = serve.call(
        "POST",
        "/api/v1/vms",
        Some(&json!({"name": "other", "kernel": kernel, "start": false}).to_string()),
    );
    assert_eq!(a.status, 201);
    open_console(&serve, "other", &ticket("idle"), &origin)
        .unwrap_err()
        .error(401);

    // The manager's own numbers.
    let m = serve.call("GET", "/api/v1/manager", None).json();
    assert_eq!(m["pid"], serve.pid());
    assert_eq!(
        (m["vms"].as_u64(), m["running"].as_u64()),
        (Some(2), Some(0)),
        "{m}"
    );
    assert!(m["rss_bytes"].as_u64().unwrap() > 0, "{m}");
    conforms(&m, "Manager");

    // cloud-init user-data: a file of its own (0600), given as --cloud-init, when this
    // minivmm has the flag; a 400 naming the flag otherwise.
    let help = Command::new(minivmm_bin()).arg("--help").output().unwrap();
    let body = json!({"name": "ci", "kernel": kernel, "memory_mib": 32,
                      "user_data": "#cloud-config\nhostname: ci\n"});
    let a = serve.call("POST", "/api/v1/vms", Some(&body.to_string()));
    if String::from_utf8_lossy(&help.stdout).contains("--cloud-init") {
        assert_eq!(a.status, 201, "{a:?}");
        let ud = serve.state.join("vms/ci/user-data");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&ud).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(&ud).unwrap(),
            "#cloud-config\nhostname: ci\n"
        );
        let pid = a.json()["pid"].as_u64().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let want = format!("--cloud-init={}", ud.display());
        assert!(
            cmdline.split(|b| *b == 0).any(|arg| arg == want.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        assert_eq!(serve.call("DELETE", "/api/v1/vms/ci", None).status, 204);
        assert!(!alive(pid));
    } else {
        assert!(a.error(400).contains("--cloud-init"), "{a:?}");
    }

    // Delete: 204, its directory gone.
    let a = serve.call("DELETE", "/api/v1/vms/idle", None);
    assert_eq!(a.status, 204, "{a:?}");
    assert!(!serve.state.join("vms/idle").exists());
    serve.call("GET", "/api/v1/vms/idle", None).error(404);
    let state = serve.state.clone();
    assert!(serve.terminate().success());
    assert!(!state.exists(), "the state directory is left");
}

/// Eight VMs at once (tiny guests that halt), two clients at once, the sampler, kill and
/// stop, the manager's memory; SIGTERM stops them all and leaves nothing.
#[test]
fn eight_vms_two_clients_and_a_clean_sigterm() {
    let dir = TempDir::new("minivmm-serve-eight");
    let kernel = tiny_kernel(&dir).display().to_string();
    // The guests halt at once, but the boots (and the clients) want the cores.
    let _slots = CpuSlots::take(2);
    let serve = Serve::start(&dir);
    let names: Vec<String> = (1..=8).map(|i| format!("tiny{i}")).collect();
    for n in &names {
        let a = serve.call("POST", "/api/v1/vms", Some(&tiny_body(n, &kernel)));
        assert_eq!(a.status, 201, "{a:?}");
        assert_eq!(a.json()["state"], "running", "{a:?}");
    }
    let pids: Vec<u64> = names
        .iter()
        .map(|n| serve.vm(n)["pid"].as_u64().unwrap())
        .collect();
    for n in &names {
        let deadline = Instant::now() + patience(30);
        while !serve.console_log(n).contains("tiny guest up") {
            assert!(
                Instant::now() < deadline,
                "{n} never printed: {}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Two clients at once while the VMs run; a third pauses and resumes one meanwhile.
    let serve = Arc::new(serve);
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let s = serve.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    let a = s.call("GET", "/api/v1/vms", None);
                    assert_eq!(a.status, 200, "client {c}: {a:?}");
                    assert_eq!(a.json().as_array().unwrap().len(), 8);
                    let a = s.call("GET", &format!("/api/v1/vms/tiny{}", i % 8 + 1), None);
                    assert_eq!(a.status, 200, "client {c}: {a:?}");
                }
            })
        })
        .collect();
    for _ in 0..3 {
        let a = serve.call("PUT", "/api/v1/vms/tiny1/pause", None);
        assert_eq!(a.json()["state"], "paused", "{a:?}");
        let a = serve.call("PUT", "/api/v1/vms/tiny1/resume", None);
        assert_eq!(a.json()["state"], "running", "{a:?}");
    }
    for c in clients {
        c.join().unwrap();
    }
    let list = serve.call("GET", "/api/v1/vms", None).json();
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, names.iter().map(String::as_str).collect::<Vec<_>>());

    // The sampler: a second or two gives each VM samples with its memory.
    let v = {
        let deadline = Instant::now() + patience(20);
        loop {
            let v = serve.vm("tiny8");
            if v["history"].as_array().unwrap().len() >= 2 {
                break v;
            }
            assert!(Instant::now() < deadline, "no samples: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    conforms(&v, "VmInfo");
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert!(last["rss_bytes"].as_u64().unwrap() > 1 << 20, "{v}");
    assert!(last["t"].as_f64().unwrap() > 1.6e9, "{v}");
    assert!(
        v["stats"]["cpu_percent"].as_f64().unwrap() < 50.0,
        "a halted guest is busy: {v}"
    );
    assert!(v["uptime_s"].as_f64().unwrap() > 0.0, "{v}");

    // The manager's memory with eight VMs and their console threads.
    let m = serve.call("GET", "/api/v1/manager", None).json();
    assert_eq!(
        (m["vms"].as_u64(), m["running"].as_u64()),
        (Some(8), Some(8)),
        "{m}"
    );
    let rss = m["rss_bytes"].as_u64().unwrap();
    eprintln!("minivmm serve with 8 running VMs: VmRSS {} KiB", rss / 1024);
    assert!(rss < 32 << 20, "the manager uses {rss} bytes with 8 VMs");

    // Kill (SIGKILL, ours: stopped, 137) and stop (the VM's API: exit code 0).
    let v = serve.call("PUT", "/api/v1/vms/tiny2/kill", None).json();
    assert_eq!(
        (v["state"].as_str(), v["exit_code"].as_i64()),
        (Some("stopped"), Some(137)),
        "{v}"
    );
    assert!(!alive(pids[1]));
    assert!(!serve.state.join("vms/tiny2/api.sock").exists());
    let v = serve.call("PUT", "/api/v1/vms/tiny3/stop", None).json();
    assert_eq!(
        (v["state"].as_str(), v["exit_code"].as_i64()),
        (Some("stopped"), Some(0)),
        "{v}"
    );
    assert!(!alive(pids[2]));
    // Started again from its stored configuration; its console goes on.
    let v = serve.call("PUT", "/api/v1/vms/tiny3/start", None).json();
    assert_eq!(v["state"], "running", "{v}");
    let deadline = Instant::now() + patience(30);
    while serve.console_log("tiny3").matches("tiny guest up").count() < 2 {
        assert!(Instant::now() < deadline, "tiny3 did not print again");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A crash: a process that dies by a signal the manager did not send.
    let pid4 = serve.vm("tiny4")["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on a VM process this test started (through the manager).
    unsafe { libc::kill(pid4 as i32, libc::SIGKILL) };
    let v = serve.wait_state("tiny4", "crashed", patience(10));
    assert_eq!(v["exit_code"], 137, "{v}");

    // SIGTERM: every VM stopped, nothing left.
    let pids: Vec<u64> = names
        .iter()
        .filter_map(|n| serve.vm(n)["pid"].as_u64())
        .chain(pids)
        .collect();
    let state = serve.state.clone();
    let serve = Arc::try_unwrap(serve).ok().expect("clients done");
    let status = serve.terminate();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!alive(pid), "VM process {pid} outlived serve");
    }
    assert!(!state.exists(), "{} is left", state.display());
}

/// The test guest through the manager: console, viewers, pause and resume, counters, the
/// power button, delete.
#[test]
fn a_linux_guest_through_the_manager_and_its_web_console() {
    let dir = TempDir::new("minivmm-serve-linux");
    let serve = Serve::start(&dir);
    let images = serve.call("GET", "/api/v1/images", None).json();
    let image = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "busybox-disk")
        .unwrap_or_else(|| panic!("{images}"));
    assert!(
        Path::new(image["kernel"].as_str().unwrap()).is_file(),
        "{image}"
    );
    conforms(image, "Image");
    assert!(images
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == "busybox"
            && i["initrd"]
                .as_str()
                .is_some_and(|p| p.ends_with("initramfs.cpio"))));

    let _slot = CpuSlots::take(1);
    let a = serve.call(
        "POST",
        "/api/v1/vms",
        Some(&json!({"name": "lin", "image": "busybox-disk", "memory_mib": 128}).to_string()),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let pid = a.json()["pid"].as_u64().unwrap() as u32;
    // The boot, and the guest's work after it (typed commands, the power-off), under the
    // usual budget of the VM's CPU time.
    let budget = boot_budget(Duration::from_secs(60));
    let mut clock = BudgetClock::start(pid);
    let mut wait = |what: &str, cond: &mut dyn FnMut() -> bool| {
        while !cond() {
            assert!(
                !clock.spent(&budget),
                "{what}: not within {budget:?} (CPU {:?}, wall {:?}); console: {}\nlog: {}",
                clock.cpu(),
                clock.wall(),
                serve.console_log("lin"),
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // A viewer from the start sees the boot live.
    let mut early = Viewer::attach(&serve, "lin");
    wait("the init marker in console.log", &mut || {
        serve.console_log("lin").contains(MARKER)
    });
    wait("the shell prompt", &mut || {
        serve.console_log("lin").contains("/ # ")
    });
    // A second viewer gets the scrollback, marker included.
    let late = Viewer::attach(&serve, "lin");
    wait("the scrollback", &mut || late.text().contains(MARKER));

    // A typed command's computed output, on both viewers.
    let tok = format!("tok-{:x}", std::process::id() ^ 0x5eed);
    early.type_in(format!("echo {tok}-$((6*7))\r").as_bytes());
    let want = format!("{tok}-42");
    wait("the typed command's output", &mut || {
        early.text().contains(&want) && late.text().contains(&want)
    });
    assert!(
        early.text().contains(MARKER),
        "the early viewer missed the boot"
    );

    // A counter of shell builtins, until a line is typed.
    early.type_in(b"i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo C$i; read -t 1 x && break; done; echo DONE-$((40+2))\r");
    wait("the counter", &mut || {
        serve.console_log("lin").contains("C3\r")
    });
    let count = |c: &str| c.matches("\nC").count();
    let v = serve.call("PUT", "/api/v1/vms/lin/pause", None).json();
    assert_eq!(v["state"], "paused", "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let frozen = serve.console_log("lin");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        serve.console_log("lin"),
        frozen,
        "the guest printed while paused"
    );
    serve.call("PUT", "/api/v1/vms/lin/pause", None).error(409);
    let v = serve.call("PUT", "/api/v1/vms/lin/resume", None).json();
    assert_eq!(v["state"], "running", "{v}");
    let more = format!("C{}\r", count(&frozen) + 3);
    wait("the counter after resume", &mut || {
        serve.console_log("lin").contains(&more)
    });

    // Counters and samples of a real guest.
    let c = serve.call("GET", "/api/v1/vms/lin/counters", None).json();
    assert!(
        c["devices"]["vda"]["read_bytes"].as_u64().unwrap() > 0,
        "{c}"
    );
    let v = serve.vm("lin");
    assert!(!v["history"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["stats"]["rss_bytes"].as_u64().unwrap() > 16 << 20, "{v}");

    // End the loop; the power button powers the idle guest off: stopped, exit code 0.
    early.type_in(b"\r");
    wait("the end of the counter", &mut || {
        serve.console_log("lin").contains("DONE-42")
    });
    std::thread::sleep(Duration::from_secs(1));
    let v = serve
        .call("PUT", "/api/v1/vms/lin/power-button", None)
        .json();
    assert_eq!(v["state"], "running", "{v}");
    wait("the power-off", &mut || {
        serve.vm("lin")["state"] != "running"
    });
    let v = serve.vm("lin");
    assert_eq!(
        (v["state"].as_str(), v["exit_code"].as_i64()),
        (Some("stopped"), Some(0)),
        "{v}"
    );
    assert!(serve.console_log("lin").contains("reboot: Power down"));
    assert!(!alive(u64::from(pid)));

    let a = serve.call("DELETE", "/api/v1/vms/lin", None);
    assert_eq!(a.status, 204, "{a:?}");
    assert!(!serve.state.join("vms/lin").exists());
    serve.call("GET", "/api/v1/vms/lin", None).error(404);
    drop((early, late));
    assert!(serve.terminate().success());
}

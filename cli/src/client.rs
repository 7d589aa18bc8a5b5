//! The client subcommands: `minivmm snapshot|pause|resume|stop|status --api-sock PATH`,
//! each one request to another minivmm's control API (the `api` crate), its answer turned
//! into a line (or the JSON of `status`) and an exit code: 0 done, 2 bad input (no socket
//! there, nobody listening, a request the server refused as bad: 4xx but 409), 1 the VM
//! could not do it (409: its state forbids it; 5xx: the host failed).

use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::{json, Value};

/// What the VM does after its snapshot (`--then`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Then {
    /// Run on.
    Resume,
    /// Stay paused.
    Pause,
    /// End (the minivmm that ran it exits 0).
    Stop,
}

/// How long a snapshot may take before the client gives up waiting (the VM's memory is
/// written to disk meanwhile).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the other requests may take (a pause waits for every vCPU and device).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const OK: u8 = 0;
const FAILED: u8 = 1;
const BAD_INPUT: u8 = 2;

fn send(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    t: Duration,
) -> Result<Value, u8> {
    match api::client::request(sock, method, path, body, t) {
        Ok(reply) if reply.ok() => Ok(reply.body),
        Ok(reply) => {
            eprintln!("minivmm: {}", reply.error_text());
            Err(match reply.status {
                409 => FAILED,
                400..=499 => BAD_INPUT,
                _ => FAILED,
            })
        }
        Err(e) => {
            eprintln!("minivmm: {e}");
            Err(if e.is_bad_input() { BAD_INPUT } else { FAILED })
        }
    }
}

fn exit_of(r: Result<(), u8>) -> u8 {
    r.err().unwrap_or(OK)
}

/// `minivmm snapshot --api-sock PATH DIR [--then ...]`.
pub fn snapshot(sock: &Path, dir: &Path, then: Then) -> u8 {
    exit_of((|| {
        // The server's working directory is not ours.
        let dir = std::path::absolute(dir).map_err(|e| {
            eprintln!("minivmm: snapshot directory {}: {e}", dir.display());
            BAD_INPUT
        })?;
        let then = match then {
            Then::Resume => "resume",
            Then::Pause => "pause",
            Then::Stop => "stop",
        };
        let body = json!({ "path": dir.display().to_string(), "then": then });
        let r = send(sock, "PUT", "/vm/snapshot", Some(&body), SNAPSHOT_TIMEOUT)?;
        let num = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let mib = |k: &str| num(k) / (1024.0 * 1024.0);
        println!(
            "minivmm: snapshot written to {}: {:.1} MiB of guest memory, {:.1} MiB on disk; \
             took {:.3} s, the guest paused {:.3} s; the VM is {}",
            r.get("dir").and_then(Value::as_str).unwrap_or("?"),
            mib("memory_written"),
            mib("disk_usage"),
            num("took_ms") / 1e3,
            num("paused_for_ms") / 1e3,
            r.get("state").and_then(Value::as_str).unwrap_or("?"),
        );
        Ok(())
    })())
}

/// `minivmm pause|resume|stop --api-sock PATH`.
pub fn action(sock: &Path, what: &str) -> u8 {
    exit_of((|| {
        let r = send(sock, "PUT", &format!("/vm/{what}"), None, REQUEST_TIMEOUT)?;
        let state = r.get("state").and_then(Value::as_str).unwrap_or("?");
        println!("minivmm: the VM is {}", state.replace('_', " "));
        Ok(())
    })())
}

/// `minivmm status --api-sock PATH`: `GET /vm`, pretty JSON.
pub fn status(sock: &Path) -> u8 {
    exit_of((|| {
        let r = send(sock, "GET", "/vm", None, REQUEST_TIMEOUT)?;
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        Ok(())
    })())
}

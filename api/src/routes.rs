//! The endpoints: which paths and methods exist ([`ROUTES`], the same list as
//! `docs/api.json`), what each does with the [`Vm`], and how its answer and the VMM's errors
//! become JSON and status codes.
//!
//! Errors carry the VMM's own words (the `Display` of [`vmm::Error`], what the command line
//! prints) and a status: 400 for a bad body or bad input (a snapshot directory that cannot
//! be used), 404 for an unknown path, 405 for a method the path does not have, 409 when
//! the VM's state forbids the request (pause an ended VM, the power button without ACPI),
//! 500 when the host failed.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use vmm::config::{HostInterface, SerialMode};
use vmm::seccomp::SeccompMode;
use vmm::{AfterSnapshot, Vm, VmOutcome, VmState};

use crate::http::{Request, Response};

/// Every path the API serves and its methods (the `Allow` header of a 405).
pub const ROUTES: &[(&str, &str)] = &[
    ("/vm", "GET"),
    ("/vm/counters", "GET"),
    ("/vm/pause", "PUT"),
    ("/vm/resume", "PUT"),
    ("/vm/power-button", "PUT"),
    ("/vm/stop", "PUT"),
    ("/vm/snapshot", "PUT"),
];

/// The status code for a VMM error.
pub fn status_of(e: &vmm::Error) -> u16 {
    match e {
        vmm::Error::NotRunning(..) | vmm::Error::NoPowerButton => 409,
        e if e.is_bad_input() => 400,
        _ => 500,
    }
}

/// Answer `req` on `vm`.
pub fn handle(vm: &Vm, req: &Request) -> Response {
    let Some(&(_, allow)) = ROUTES.iter().find(|(p, _)| *p == req.path) else {
        return Response::error(404, format!("no such path: {}", req.path));
    };
    if req.method != allow {
        let mut r = Response::error(
            405,
            format!(
                "{} {}: method not allowed (use {allow})",
                req.method, req.path
            ),
        );
        r.allow = Some(allow);
        return r;
    }
    let result = match req.path.as_str() {
        "/vm" => Ok(vm_info(vm)),
        "/vm/counters" => Ok(counters(vm)),
        "/vm/pause" => no_body(req).and_then(|()| action(vm, Vm::pause)),
        "/vm/resume" => no_body(req).and_then(|()| action(vm, Vm::resume)),
        "/vm/power-button" => no_body(req).and_then(|()| action(vm, Vm::power_button)),
        // Answered once the VM has ended (its threads stopped), so that the state says so.
        "/vm/stop" => no_body(req).and_then(|()| {
            action(vm, |vm| {
                vm.stop()?;
                vm.wait();
                Ok(())
            })
        }),
        "/vm/snapshot" => snapshot(vm, &req.body),
        _ => Err(Response::error(404, format!("no such path: {}", req.path))),
    };
    match result {
        Ok(v) => Response::json(200, &v),
        Err(r) => r,
    }
}

/// The body of the actions without parameters: nothing, or an empty JSON object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParameters {}

fn no_body(req: &Request) -> Result<(), Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<NoParameters>(&req.body)
        .map(|_| ())
        .map_err(|e| Response::error(400, format!("bad request body: {e}")))
}

fn action(vm: &Vm, f: fn(&Vm) -> Result<(), vmm::Error>) -> Result<Value, Response> {
    f(vm).map_err(|e| Response::error(status_of(&e), e))?;
    Ok(json!({ "state": state_name(&vm.state()) }))
}

/// `PUT /vm/snapshot`'s body.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    /// The directory to write (absolute: the server's working directory is not the
    /// client's).
    path: String,
    /// What the VM does afterwards.
    #[serde(default)]
    then: Then,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
enum Then {
    #[default]
    Resume,
    Pause,
    Stop,
}

fn snapshot(vm: &Vm, body: &[u8]) -> Result<Value, Response> {
    let req: SnapshotRequest = serde_json::from_slice(body)
        .map_err(|e| Response::error(400, format!("bad request body: {e}")))?;
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(Response::error(
            400,
            format!("snapshot path {:?} is not absolute", req.path),
        ));
    }
    let then = match req.then {
        Then::Resume => AfterSnapshot::Resume,
        Then::Pause => AfterSnapshot::Pause,
        Then::Stop => AfterSnapshot::Stop,
    };
    let r = vm
        .snapshot(path, then)
        .map_err(|e| Response::error(status_of(&e), e))?;
    if then == AfterSnapshot::Stop {
        // Answered once the VM has ended, as for `/vm/stop`.
        vm.wait();
    }
    Ok(json!({
        "dir": r.dir.display().to_string(),
        "memory_written": r.memory_written,
        "disk_usage": r.disk_usage,
        "took_ms": ms(r.took),
        "paused_for_ms": ms(r.paused_for),
        "state": state_name(&vm.state()),
    }))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The state's name in JSON: `created`, `running`, `paused`, `shutting_down`, `ended`.
pub fn state_name(s: &VmState) -> &'static str {
    match s {
        VmState::Created => "created",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting_down",
        VmState::Ended(_) => "ended",
    }
}

fn outcome(o: &VmOutcome) -> Value {
    let (kind, detail) = match o {
        VmOutcome::Reset => ("reset", None),
        VmOutcome::PowerOff => ("power_off", None),
        VmOutcome::Stopped => ("stopped", None),
        VmOutcome::Crash(why) => ("crash", Some(why)),
        VmOutcome::VmmFailure(why) => ("vmm_failure", Some(why)),
    };
    json!({ "kind": kind, "detail": detail })
}

fn vm_info(vm: &Vm) -> Value {
    let info = vm.info();
    let c = &info.config;
    let disks: Vec<Value> = c
        .disks
        .iter()
        .map(|d| {
            json!({
                "path": d.path.display().to_string(),
                "read_only": d.read_only,
                "serial": d.serial,
            })
        })
        .collect();
    let nets: Vec<Value> = c
        .nets
        .iter()
        .map(|n| {
            let (kind, name) = match &n.host {
                HostInterface::Tap(t) => ("tap", t),
                HostInterface::Bridge(b) => ("bridge", b),
            };
            json!({
                kind: name,
                "mac": n.mac.map(|m| vmm_mac(&m)),
            })
        })
        .collect();
    let devices: Vec<Value> = info
        .devices
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "type": match d.device_type { 1 => "net", 2 => "block", 4 => "rng", _ => "other" },
                "mmio_base": format!("{:#x}", d.slot.base),
                "irq": d.slot.irq,
            })
        })
        .collect();
    json!({
        "state": state_name(&info.state),
        "outcome": match &info.state { VmState::Ended(o) => outcome(o), _ => Value::Null },
        "pid": std::process::id(),
        "uptime_ms": info.uptime.map(|u| u.as_millis() as u64),
        "config": {
            "name": c.name,
            "kernel": c.kernel.display().to_string(),
            "initrd": c.initrd.as_ref().map(|p| p.display().to_string()),
            "cmdline": c.cmdline,
            "memory": c.memory,
            "cpus": c.cpus,
            "acpi": c.acpi,
            "cpu_template": c.cpu_template.to_string(),
            "serial": match &c.serial {
                SerialMode::Stdio => "stdio".to_string(),
                SerialMode::File(p) => format!("file:{}", p.display()),
                SerialMode::None => "none".to_string(),
            },
            "rng": c.rng.as_ref().map(|p| p.display().to_string()),
            "seccomp": match c.seccomp {
                SeccompMode::Enforce => "on",
                SeccompMode::Log => "log",
                SeccompMode::Off => "off",
            },
            "disks": disks,
            "nets": nets,
        },
        "devices": devices,
    })
}

fn vmm_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn counters(vm: &Vm) -> Value {
    let c = vm.counters();
    let by_reason: serde_json::Map<String, Value> = c
        .exits
        .by_reason
        .iter()
        .map(|(r, n)| (r.to_string(), json!(n)))
        .collect();
    let devices: serde_json::Map<String, Value> = c
        .devices
        .iter()
        .map(|d| {
            let m: serde_json::Map<String, Value> = d
                .counters
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            (d.name.clone(), Value::Object(m))
        })
        .collect();
    json!({
        "exits": {
            "by_reason": by_reason,
            "busiest_ports": c.exits.busiest_ports.iter()
                .map(|(p, n)| json!({ "port": format!("{p:#06x}"), "count": n }))
                .collect::<Vec<_>>(),
            "busiest_mmio": c.exits.busiest_mmio.iter()
                .map(|(a, n)| json!({ "address": format!("{a:#x}"), "count": n }))
                .collect::<Vec<_>>(),
            "other_ports": c.exits.other_addresses.0,
            "other_mmio": c.exits.other_addresses.1,
        },
        "unclaimed": {
            "pio_reads": c.unclaimed_pio.0,
            "pio_writes": c.unclaimed_pio.1,
            "mmio_reads": c.unclaimed_mmio.0,
            "mmio_writes": c.unclaimed_mmio.1,
        },
        "devices": devices,
        "boot_time_ms": c.boot_time.map(|t| t.as_millis() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_errors_map_to_status_codes() {
        assert_eq!(status_of(&vmm::Error::NotRunning("pause", "ended")), 409);
        assert_eq!(status_of(&vmm::Error::NoPowerButton), 409);
        assert_eq!(status_of(&vmm::Error::Snapshot("x".into())), 400);
        assert_eq!(status_of(&vmm::Error::Config("x".into())), 400);
        assert_eq!(status_of(&vmm::Error::Host("x".into())), 500);
        assert_eq!(status_of(&vmm::Error::Timeout("vcpu0")), 500);
    }

    #[test]
    fn snapshot_bodies_are_checked_strictly() {
        let parse = |b: &str| serde_json::from_str::<SnapshotRequest>(b);
        assert!(parse(r#"{"path": "/a"}"#).is_ok());
        assert!(parse(r#"{"path": "/a", "then": "stop"}"#).is_ok());
        let e = parse(r#"{"path": "/a", "than": "stop"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `than`"), "{e}");
        assert!(parse(r#"{"path": "/a", "then": "later"}"#).is_err());
        assert!(parse(r#"{"then": "stop"}"#).is_err());
        assert!(parse(r#"{"path": 3}"#).is_err());
        assert!(parse("").is_err());
    }

    /// docs/api.json lists exactly the paths and methods the server routes.
    #[test]
    fn the_openapi_file_lists_exactly_the_routes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut listed: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (p.clone(), m.to_uppercase()))
            })
            .collect();
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        listed.sort();
        routed.sort();
        assert_eq!(listed, routed);
    }
}

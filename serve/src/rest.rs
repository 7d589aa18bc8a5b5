//! The REST API under `/api/v1` (described in OpenAPI 3 by `docs/serve-api.json`, which a
//! test checks against [`ROUTES`]): which paths and methods exist, and what each asks of
//! the [`Manager`]. The caller has checked the Host, the Origin and the token; the
//! console WebSocket, which authenticates with a ticket instead, is `server.rs`'s.

use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::manager::{Failure, Manager};

/// Every path (with `{name}` and `{action}` for the variable parts) and its methods.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/images", &["GET"]),
    ("/api/v1/manager", &["GET"]),
    ("/api/v1/vms", &["GET", "POST"]),
    ("/api/v1/vms/{name}", &["GET", "DELETE"]),
    ("/api/v1/vms/{name}/start", &["PUT"]),
    ("/api/v1/vms/{name}/stop", &["PUT"]),
    ("/api/v1/vms/{name}/pause", &["PUT"]),
    ("/api/v1/vms/{name}/resume", &["PUT"]),
    ("/api/v1/vms/{name}/power-button", &["PUT"]),
    ("/api/v1/vms/{name}/kill", &["PUT"]),
    ("/api/v1/vms/{name}/counters", &["GET"]),
    ("/api/v1/vms/{name}/console.log", &["GET"]),
    ("/api/v1/vms/{name}/console-ticket", &["POST"]),
    ("/api/v1/vms/{name}/console", &["GET"]),
];

/// The route `path` matches: its pattern and the VM name in it, if any.
pub fn route(path: &str) -> Option<(&'static str, Option<&str>)> {
    let rest = path.strip_prefix("/api/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    ROUTES.iter().find_map(|(pattern, _)| {
        let want: Vec<&str> = pattern.trim_start_matches("/api/v1/").split('/').collect();
        if want.len() != parts.len() {
            return None;
        }
        let mut name = None;
        for (w, p) in want.iter().zip(&parts) {
            if *w == "{name}" {
                if p.is_empty() {
                    return None;
                }
                name = Some(*p);
            } else if w != p {
                return None;
            }
        }
        Some((*pattern, name))
    })
}

fn fail(f: Failure) -> Response {
    Response::error(f.status, f.message)
}

/// The body of requests that take none: nothing, or `{}`.
fn no_body(req: &Request) -> Result<(), Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) if m.is_empty() => Ok(()),
        Ok(_) => Err(Response::error(
            400,
            format!("{} {} takes no body", req.method, req.path),
        )),
        Err(e) => Err(Response::error(400, format!("bad request body: {e}"))),
    }
}

/// Answer an authenticated request under `/api/v1` (but the console WebSocket).
pub fn handle(m: &Manager, req: &Request) -> Response {
    match answer(m, req) {
        Ok(r) | Err(r) => r,
    }
}

fn answer(m: &Manager, req: &Request) -> Result<Response, Response> {
    let Some((pattern, name)) = route(&req.path) else {
        return Err(Response::error(404, format!("no such path: {}", req.path)));
    };
    let methods = ROUTES
        .iter()
        .find(|(p, _)| *p == pattern)
        .map_or(&[][..], |(_, m)| *m);
    if !methods.contains(&req.method.as_str()) {
        let allow = methods.join(", ");
        return Err(Response::error(
            405,
            format!(
                "{} {}: method not allowed (use {allow})",
                req.method, req.path
            ),
        )
        .with_header("Allow", allow));
    }
    let params: &[&str] = if pattern.ends_with("/console.log") {
        &["offset"]
    } else {
        &[]
    };
    req.only_params(params)?;
    let vm = match name {
        Some(n) => Some(m.get(n).map_err(fail)?),
        None => None,
    };
    let ok = |v: Value| Ok(Response::json(200, &v));
    match (req.method.as_str(), pattern, vm) {
        ("GET", "/api/v1/images", _) => ok(json!(m.images)),
        ("GET", "/api/v1/manager", _) => ok(m.info()),
        ("GET", "/api/v1/vms", _) => ok(Value::Array(m.list().iter().map(|v| v.info()).collect())),
        ("POST", "/api/v1/vms", _) => {
            let vm = m.create(&req.body).map_err(fail)?;
            Ok(Response::json(201, &vm.info()))
        }
        ("GET", "/api/v1/vms/{name}", Some(vm)) => ok(vm.info()),
        ("DELETE", "/api/v1/vms/{name}", Some(vm)) => {
            no_body(req)?;
            m.delete(&vm.name).map_err(fail)?;
            Ok(Response::no_content())
        }
        ("GET", "/api/v1/vms/{name}/counters", Some(vm)) => {
            if !vm.state().alive() {
                return Err(Response::error(
                    409,
                    format!(
                        "VM '{}' is {}: it has no counters",
                        vm.name,
                        vm.state().name()
                    ),
                ));
            }
            ok(vm
                .api("GET", "/vm/counters", std::time::Duration::from_secs(10))
                .map_err(fail)?)
        }
        ("GET", "/api/v1/vms/{name}/console.log", Some(vm)) => {
            let offset = match req.param("offset") {
                None => 0,
                Some(o) => o.parse::<u64>().map_err(|_| {
                    Response::error(
                        400,
                        format!("offset '{o}': expected a byte offset (0, 1, ...)"),
                    )
                })?,
            };
            let (start, bytes, total) = vm.console.read_from(offset).map_err(|e| {
                Response::error(500, format!("reading the console of VM '{}': {e}", vm.name))
            })?;
            Ok(Response::bytes(200, "text/plain; charset=utf-8", bytes)
                .with_header("X-Console-Size", total.to_string())
                .with_header("X-Console-Offset", start.to_string()))
        }
        ("POST", "/api/v1/vms/{name}/console-ticket", Some(vm)) => {
            no_body(req)?;
            ok(json!({ "ticket": m.ticket(&vm).map_err(fail)? }))
        }
        ("PUT", action, Some(vm)) => {
            no_body(req)?;
            let action = action.rsplit('/').next().unwrap_or_default();
            m.act(&vm, action).map_err(fail)?;
            ok(vm.info())
        }
        _ => Err(Response::error(404, format!("no such path: {}", req.path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_their_patterns() {
        assert_eq!(route("/api/v1/vms"), Some(("/api/v1/vms", None)));
        assert_eq!(
            route("/api/v1/vms/a1/pause"),
            Some(("/api/v1/vms/{name}/pause", Some("a1")))
        );
        assert_eq!(
            route("/api/v1/vms/a1/console.log"),
            Some(("/api/v1/vms/{name}/console.log", Some("a1")))
        );
        assert_eq!(route("/api/v1/vms/a1/reboot"), None);
        assert_eq!(route("/api/v1/vms//pause"), None);
        assert_eq!(route("/api/v2/vms"), None);
        assert_eq!(route("/api/v1/vms/"), None);
    }

    /// docs/serve-api.json lists exactly the paths and methods routed here.
    #[test]
    fn the_openapi_file_lists_exactly_the_routes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/serve-api.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut listed: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(move |m| (format!("/api/v1{p}"), m.to_uppercase()))
            })
            .collect();
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string())))
            .collect();
        listed.sort();
        routed.sort();
        assert_eq!(listed, routed);
    }
}

//! Fuzz the control API's HTTP parser (`api/src/http.rs`): what a client sends on the API
//! socket. It must never panic; a request it accepts is whole (every shorter prefix is
//! incomplete, never an error nor another request), within the limits, and with the body
//! its Content-Length says; the client's response parser must never panic either.

#![no_main]

use api::http::{parse_request, parse_response, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        header_bytes: 512,
        headers: 8,
        body_bytes: 256,
    };
    let _ = parse_response(data);
    let Ok(Parsed::Complete(req, used)) = parse_request(data, &limits) else {
        return;
    };
    assert!(used <= data.len());
    assert!(req.path.starts_with('/'), "{:?}", req.path);
    assert!(req.body.len() <= limits.body_bytes);
    assert!(req.headers.len() <= limits.headers);
    let length = req
        .header("content-length")
        .map_or(0, |v| v.parse::<usize>().unwrap());
    assert_eq!(req.body.len(), length);
    assert_eq!(&data[used - req.body.len()..used], &req.body[..]);
    for cut in 0..used {
        assert_eq!(
            parse_request(&data[..cut], &limits),
            Ok(Parsed::Incomplete),
            "prefix of {cut} bytes"
        );
    }
});

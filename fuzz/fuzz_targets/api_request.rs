//! Control socket requests: any line parses to a request or a "bad request" error; a parsed
//! request that names a port or FDB entry validates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::api::{parse_request, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(Request::PortAdd { port }) => {
            let _ = port.validate("port");
        }
        Ok(req) => {
            let text = serde_json::to_string(&req).expect("serializes");
            assert_eq!(parse_request(&text).expect("round trip"), req);
        }
        Err(e) => assert!(e.starts_with("bad request")),
    }
});

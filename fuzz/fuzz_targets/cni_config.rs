//! The CNI plugin's reading of its network configuration (stdin), fed arbitrary bytes:
//! `cni::check_config` must return `Ok` or a CNI error with one of the codes a runtime may get
//! at that stage (1 version, 6 undecodable, 7 invalid) and a message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::cni;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = cni::check_config(data) {
        assert!(matches!(e.code, 1 | 6 | 7), "code {}", e.code);
        assert!(!e.msg.is_empty());
    }
});

//! The state directory's loaders: `running.json` (`state::parse_running`) and
//! `checkpoint.bin` (`checkpoint::decode`) fed arbitrary bytes. The first byte picks the
//! loader. Either must return a value or a reason, never panic; what loads must survive a
//! round trip through the writer (`running_bytes`, `encode`) unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::checkpoint;
use tapswitch_control::state::{self, ParseError};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        match state::parse_running(bytes) {
            Ok(s) => {
                let again =
                    state::parse_running(&state::running_bytes(&s.base, &s.running, &s.deleting))
                        .expect("a loaded state round-trips");
                assert_eq!(again, s);
            }
            Err(ParseError::Bad(reason)) => assert!(!reason.is_empty()),
            Err(ParseError::Future(v)) => assert!(v > u64::from(state::RUNNING_VERSION)),
        }
    } else {
        match checkpoint::decode(bytes) {
            Ok(c) => {
                let again = checkpoint::decode(&checkpoint::encode(&c))
                    .expect("a loaded checkpoint round-trips");
                assert_eq!(again, c);
            }
            Err(ParseError::Bad(reason)) => assert!(!reason.is_empty()),
            Err(ParseError::Future(v)) => {
                assert!(v > u64::from(checkpoint::CHECKPOINT_VERSION))
            }
        }
    }
});

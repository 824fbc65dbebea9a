//! Configuration text: parsing and validation must return a value or an error naming a field,
//! never panic; a valid configuration must survive a TOML round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapswitch_control::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    match config.validate() {
        Ok(_) => {
            let again = Config::from_toml(&config.to_toml()).expect("round trip parses");
            assert_eq!(again, config);
            assert!(again.validate().is_ok());
        }
        Err(e) => assert!(!e.field.is_empty()),
    }
});

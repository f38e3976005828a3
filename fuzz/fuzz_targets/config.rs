//! Any input: `Config::parse` never panics; it either returns a config or at least one error,
//! and every error points inside the text (line and column within bounds).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match l4relay::config::Config::parse(Path::new("fuzz.toml"), text) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without an error");
            let lines = text.lines().count().max(1);
            for e in &errors {
                assert!(
                    e.line <= lines + 1,
                    "line {} past the end ({lines})",
                    e.line
                );
            }
        }
    }
});

//! A machine config as cairnd reads it from STATE or the API: parsed and checked (see
//! src/config.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::facts::config::check_config(data);
});

//! The first bytes an HTTP health check's server sends: the probe's search for the final
//! status line, on the whole input and on its prefixes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::facts::check_head(data);
});

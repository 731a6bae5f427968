//! A whole `.cairn` file, as a device would receive it: inspect, open, verify, read every payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The length picks the payload read mode, so the input stays a plain bundle file.
    cairn_fuzz::bundle::check_bundle(data, data.len() as u8);
});

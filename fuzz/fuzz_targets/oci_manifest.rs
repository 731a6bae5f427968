//! A registry's manifest or index as the OCI client reads it (and the same bytes as a
//! reference): parsed, written back and parsed again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::api::check_manifest(data);
});

//! A certificate's DER, read the ways the device reads its kept server certificate and its CA.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::api::check_cert(data);
});

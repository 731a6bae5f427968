//! The DER subject Name of a client certificate, as webpki hands it over (without the outer
//! SEQUENCE): walked, and written as a log line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::api::check_subject(data);
});

//! What an HTTPS server sends the bundle fetcher after the TLS handshake: the answer to the
//! first request and, when the input holds one, the answer to the request that resumes it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::api::check_answers(data);
});

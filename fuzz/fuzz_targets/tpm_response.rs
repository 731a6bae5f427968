//! What a TPM answers, response after response: unmarshalled by the commands that sealing,
//! unsealing and the PCR reads send.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::tpm::check_responses(data);
});

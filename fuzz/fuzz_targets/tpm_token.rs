//! A `systemd-tpm2` token's JSON as a LUKS2 header holds it (untrusted once a disk moves to
//! another machine): read, checked against its promises, written back and read again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::tpm::check_token(data);
});

//! A UDP datagram answering an SNTP request: parsed, checked and measured (see src/sntp.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::netcfg::sntp::check_reply(data);
});

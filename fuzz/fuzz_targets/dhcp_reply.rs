//! A DHCP message as a server would send it (the UDP payload): parsed, checked against the
//! parser's promises, then handed to the client's state machine in every phase.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::netcfg::check_reply(data);
});

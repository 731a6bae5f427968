//! An IPv4 packet as the link-layer socket receives it before the client has an address: the
//! IPv4 and UDP headers are read, then the payload goes through the same checks as
//! `dhcp_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::netcfg::check_frame(data);
});

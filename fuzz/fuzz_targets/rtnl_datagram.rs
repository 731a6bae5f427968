//! A datagram on the NETLINK_ROUTE socket: decoded as the kernel state and link events are,
//! then planned on (see src/rtnl.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::netcfg::rtnl::check_datagram(data);
});

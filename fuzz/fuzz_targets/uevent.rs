//! One datagram from the kernel's uevent netlink group (or from anything that can send to it):
//! parsed, and an accepted event checked against what the daemon relies on.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::daemon::check_uevent(data);
});

//! The first bytes of a device as they are: both binary headers, checksums and all.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::luks::check_image(data);
});

//! The JSON area of a LUKS2 header: placed in a valid binary header whose checksum is fixed up,
//! so every input reaches the metadata parser and its checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::luks::check_json(data);
});

//! The two copies of a U-Boot environment as they lie on the disk: read, the boot state taken
//! from them, and written back (see src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::boot::check_env(data);
});

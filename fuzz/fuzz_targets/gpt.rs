//! A whole disk: its GPT read as the SD card reader reads it (see src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::image::check_disk(data);
});

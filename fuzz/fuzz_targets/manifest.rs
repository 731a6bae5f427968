//! Manifest CBOR, signed with the fixed test key and followed by the fixed payloads, so every
//! input passes the signature check and reaches the strict manifest decoder and the payload reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let bundle = cairn_fuzz::bundle::signed_bundle(data);
    cairn_fuzz::bundle::check_bundle(&bundle, data.len() as u8);
});

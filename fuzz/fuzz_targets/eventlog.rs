//! An event log file as a power cut or a damaged STATE may leave it: the records read back are
//! a whole prefix of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cairn_fuzz::daemon::check_eventlog(data);
});

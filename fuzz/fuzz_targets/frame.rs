//! Fuzz target `frame`: see `ledger_fuzz::frame` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::frame(data));

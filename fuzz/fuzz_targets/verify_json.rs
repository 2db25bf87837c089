//! Fuzz target `verify_json`: see `ledger_fuzz::verify_json` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::verify_json(data));

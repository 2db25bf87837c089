//! Fuzz target `messages`: see `ledger_fuzz::messages` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::messages(data));

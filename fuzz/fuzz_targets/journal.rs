//! Fuzz target `journal`: see `ledger_fuzz::journal` for what it feeds and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ledger_fuzz::journal(data));
